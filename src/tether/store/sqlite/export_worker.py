"""A second process that reads and spells groups of an export (SQLite, large exports).

An export of small sessions goes group by group (see :mod:`tether.store.transfer`):
each group is read in one snapshot, then spelled as JSON lines by Python. On
SQLite both halves run in the exporting process, under one GIL: a thread
reading ahead made it slower (0.38 → 0.28x of a raw ``SELECT``: the GIL
changes hands at every row). A process has a GIL of its own. So a large
export starts one worker (``python -m tether.store.sqlite.export_worker``),
and the groups alternate: while the exporting process reads and spells one,
the worker reads and spells the next and sends its text back through a pipe.

The worker is only an accelerator. It reads what the exporter claimed (the
claims are the exporter's: the worker only reads, in a read-only connection,
each group in one snapshot as the exporter would), and whatever goes wrong
with it (it cannot start, dies, is killed, reports an error) the exporter
reads that group itself and goes on without it: the output is the same line
for line. It ignores Ctrl+C (its exporter decides) and exits when its input
closes, so it never outlives its exporter.

Protocol (pickle over the worker's stdin and stdout): the worker sends
``("ready",)`` once its database is open and is the exporter's file; then for
each request (a list of session ids) it sends ``("ok", text, sessions)`` or
``("error", message)``.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import sqlite3
import subprocess
import sys
from typing import IO, Any

log = logging.getLogger(__name__)

# A response holds a group's text (about 250 KB for 2,000 messages): a pipe of
# that size takes it in one write where Linux allows it (the default is 64 KB).
_PIPE_SIZE = 1 << 20
# What reading a reply can raise when the worker is gone or broke off mid-reply.
_GONE = (EOFError, OSError, pickle.UnpicklingError, ValueError)


class ExportWorker:
    """The exporter's side of one worker process (see the module docstring).

    :meth:`send` hands it a group, :meth:`receive` takes the group's text back
    (None: the worker failed; the caller reads that group itself). After a
    failure the worker is closed and :attr:`usable` is False.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.usable = True
        self._ready = False
        self._pending = False

    @classmethod
    def start(cls, target: str, path: str, identity: tuple[int, int]) -> ExportWorker | None:
        """A worker on the database file ``path`` (opened as the URI ``target``,
        which must still be the file of ``identity``); None if it cannot start."""
        if not sys.executable or getattr(sys, "frozen", False):
            return None  # no Python to start (a frozen app's executable is the app)
        command = [
            sys.executable,
            "-m",
            __name__,
            target,
            path,
            str(identity[0]),
            str(identity[1]),
        ]
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            log.debug("export worker did not start: %s", exc)
            return None
        assert proc.stdout is not None
        _widen(proc.stdout)
        return cls(proc)

    def ready(self) -> bool:
        """Whether the worker has started and can take a group now, without waiting:
        until it has (a Python starting, a quarter of a second), the exporter reads
        its groups itself."""
        if self._ready or not self.usable:
            return self.usable
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            if not select.select([stdout], [], [], 0)[0]:
                return False
            if self._load() != ("ready",):
                self._fail("no handshake")
                return False
        except _GONE as exc:
            self._fail(f"did not start ({exc or type(exc).__name__})")
            return False
        self._ready = True
        return True

    def send(self, ids: list[str]) -> bool:
        """Ask for a group (one at a time, once :meth:`ready`); False if the worker is gone."""
        assert self._ready and not self._pending
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            pickle.dump(ids, stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()
        except (OSError, ValueError) as exc:
            self._fail(f"cannot send: {exc}")
            return False
        self._pending = True
        return True

    def receive(self) -> tuple[str, int] | None:
        """The text and session count of the group last sent; None if the worker failed."""
        assert self._pending
        self._pending = False
        try:
            reply = self._load()
        except _GONE as exc:
            self._fail(f"gone ({exc or type(exc).__name__})")
            return None
        if reply[0] == "ok":
            return reply[1], reply[2]
        self._fail(str(reply[1]))
        return None

    def _load(self) -> Any:
        stdout = self.proc.stdout
        assert stdout is not None
        return pickle.load(stdout)

    def _fail(self, why: str) -> None:
        log.debug("export worker %d: %s; the export goes on without it", self.proc.pid, why)
        self.close()

    def close(self) -> None:
        """End the worker: its input closed, it exits; killed if it does not at once."""
        self.usable = False
        proc = self.proc
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _widen(pipe: IO[bytes]) -> None:
    if sys.platform == "linux":
        import fcntl

        try:
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default size works too


def _serve(conn: sqlite3.Connection, requests: IO[bytes], replies: IO[bytes]) -> None:
    from ..transfer import group_text_sqlite, read_group_sqlite

    while True:
        try:
            ids = pickle.load(requests)
        except EOFError:
            return
        try:
            conn.execute("BEGIN")  # one snapshot for the group, as the exporter reads it
            try:
                data = read_group_sqlite(ids, conn)
            finally:
                conn.execute("COMMIT")
            reply: tuple[Any, ...] = ("ok", *group_text_sqlite(ids, *data))
        except Exception as exc:  # the exporter reads this group itself, and says why
            reply = ("error", f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main(argv: list[str]) -> int:
    """The worker: ``TARGET PATH DEVICE INODE`` (see :meth:`ExportWorker.start`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is its exporter's to handle
    target, path, device, inode = argv
    replies = sys.stdout.buffer
    requests = sys.stdin.buffer
    sys.stdout = sys.stderr  # nothing else may write into the replies
    conn = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    st = os.stat(path)
    if (st.st_dev, st.st_ino) != (int(device), int(inode)):
        return 1  # not the exporter's file any more: it reads everything itself
    pickle.dump(("ready",), replies, protocol=pickle.HIGHEST_PROTOCOL)
    replies.flush()
    try:
        _serve(conn, requests, replies)
    except BrokenPipeError:
        pass  # the exporter stopped listening
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
