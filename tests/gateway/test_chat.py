"""``tether chat`` as a user runs it: a real process, a real gateway, stdin and signals."""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether

from ..conftest import child_env, run_cli
from .conftest import TOKEN, Served, serve

pytestmark = pytest.mark.slow


class Output:
    """Collects a stream on a thread, so tests can wait for text without blocking reads."""

    def __init__(self, stream: object) -> None:
        self.text = ""
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        while chunk := stream.read1(4096):  # type: ignore[attr-defined]
            with self._cond:
                self.text += chunk.decode(errors="replace")
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 20, count: int = 1) -> str:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.text.count(needle) >= count, timeout)
        assert ok, f"never saw {needle!r} in {self.text!r}"
        return self.text


@contextlib.contextmanager
def chat(url: str, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Output, Output]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "chat", "--url", url, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(TETHER_TOKEN=TOKEN),
    )
    try:
        yield proc, Output(proc.stdout), Output(proc.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def send(proc: subprocess.Popen[bytes], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()


def only_session(db: str) -> tether.Session:
    with tether.open_store(db, load_plugins=False) as store:
        [item] = store.list_sessions(include_empty=True).items
        return item.session


def test_chat_exchange_then_continue_the_session(tmp_path: Path) -> None:
    with serve(tmp_path, "-o", "delay=0") as served:
        with chat(served.url) as (proc, out, _):
            send(proc, "hello there")
            out.wait_for("echo: hello there\n")
            send(proc, "/tool count me")
            out.wait_for("echo: /tool count me (3 words)\n")
            proc.stdin.close()  # type: ignore[union-attr]
            assert proc.wait(timeout=20) == 0
        first = only_session(served.db)
        assert first.end_reason == "cli_close" and first.message_count == 6
        assert "[word_count -> 3]" in out.text
        assert f"tether chat --resume {first.id}" in out.text
        with chat(served.url, "--resume", first.id) as (proc, out, _):
            out.wait_for(f"(continues {first.id}, which ended (cli_close))")
            assert "you> hello there\n   > echo: hello there\n" in out.text
            send(proc, "again")
            out.wait_for("echo: again\n")
            proc.stdin.close()  # type: ignore[union-attr]
            assert proc.wait(timeout=20) == 0
        tip = only_session(served.db)  # the chain is listed once, by its newest tip
        assert tip.parent_id == first.id and tip.end_reason == "cli_close"


def test_ctrl_c_interrupts_the_reply_and_a_second_one_leaves(tmp_path: Path) -> None:
    with serve(tmp_path, "-o", "delay=0.05") as served:
        with chat(served.url) as (proc, out, _):
            send(proc, " ".join(f"w{i}" for i in range(200)))
            out.wait_for("echo: w0")
            proc.send_signal(signal.SIGINT)
            out.wait_for("[interrupted]")
            assert proc.poll() is None  # still here after the first Ctrl+C
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
        s = only_session(served.db)
        assert s.end_reason == "cli_close"
        with tether.open_store(served.db, load_plugins=False) as store:
            msgs = store.get_messages(s.id)
        assert msgs[-1].role == "assistant" and msgs[-1].meta["interrupted"] is True


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection through it at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the gateway is down: so is this connection
            w.close()
            return
        self.writers |= {w, uw}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self.writers -= {w, uw}

    def drop_all(self) -> None:
        def cut() -> None:
            for w in list(self.writers):
                w.transport.abort()

        self.loop.call_soon_threadsafe(cut)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            self.drop_all()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_chat_reconnects_after_a_drop_without_losing_or_repeating_output(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "-o", "delay=0.03") as served:
        proxy = DroppingProxy(served.port)
        try:
            words = " ".join(f"w{i}" for i in range(60))
            with chat(f"ws://127.0.0.1:{proxy.port}/rpc") as (proc, out, err):
                send(proc, words)
                out.wait_for(" w5")
                proxy.drop_all()
                err.wait_for("[reconnected]")
                out.wait_for(f"echo: {words}\n")
                send(proc, "after")
                out.wait_for("echo: after\n")
                time.sleep(0.2)  # anything repeated would have arrived by now
                proc.stdin.close()  # type: ignore[union-attr]
                assert proc.wait(timeout=20) == 0
            assert out.text.count(f"echo: {words}\n") == 1
            assert out.text.count(" w5 ") == 1
        finally:
            proxy.close()
        assert only_session(served.db).message_count == 4


def _chat_once(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", "chat", "--url", url, *args],
        capture_output=True,
        text=True,
        env=child_env(TETHER_TOKEN=token),
        timeout=30,
    )


def test_chat_errors_are_one_line_and_say_what_to_do(tmp_path: Path, gateway: Served) -> None:
    bad = _chat_once(gateway.url, "wrong")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        f"error: the gateway at {gateway.url} refused the token (HTTP 401); it was read from "
        "$TETHER_TOKEN: pass the gateway's token with --token-file PATH or $TETHER_TOKEN"
    )
    wrong_path = gateway.url.removesuffix("/rpc") + "/chat"
    lost = _chat_once(wrong_path, TOKEN)
    assert lost.returncode == 1
    assert lost.stderr.strip() == (
        "error: nothing answers at path /chat of the gateway (HTTP 403): "
        "the gateway serves /rpc, as in ws://127.0.0.1:8765/rpc"
    )
    started = time.monotonic()
    down = _chat_once("ws://127.0.0.1:1/rpc", "x")
    assert time.monotonic() - started < 10  # at once, not after a reconnect window
    assert down.returncode == 1
    assert down.stderr.strip() == (
        "error: cannot reach the gateway at ws://127.0.0.1:1/rpc: nothing listens there "
        "(start it with: tether serve)"
    )
    for proc in (bad, lost, down):
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_wrong_token_file_is_named(tmp_path: Path, gateway: Served) -> None:
    token_file = tmp_path / "[other] token"
    token_file.write_text("not-the-token\n")
    token_file.chmod(0o600)
    env = child_env()
    env.pop("TETHER_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "chat", "--url", gateway.url,
         "--token-file", str(token_file)],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"it was read from {token_file}: pass the gateway's token" in proc.stderr


def test_chat_resume_accepts_a_unique_prefix(tmp_path: Path) -> None:
    with serve(tmp_path, "-o", "delay=0") as served:
        with chat(served.url) as (proc, out, _):
            send(proc, "remember me")
            out.wait_for("echo: remember me\n")
            proc.stdin.close()  # type: ignore[union-attr]
            assert proc.wait(timeout=20) == 0
        first = only_session(served.db)
        with chat(served.url, "--resume", first.id[:12].lower()) as (proc, out, _):
            out.wait_for(f"(continues {first.id}, which ended (cli_close))")
            assert "you> remember me\n" in out.text
            send(proc, "and more")
            out.wait_for("echo: and more\n")
            proc.stdin.close()  # type: ignore[union-attr]
            assert proc.wait(timeout=20) == 0
        with chat(served.url, "--resume", "0") as (proc, out, err):  # every id starts so
            assert proc.wait(timeout=20) == 1
            err.wait_for("give more of the id")


def test_chat_says_at_once_when_its_session_is_ended_elsewhere(tmp_path: Path) -> None:
    with serve(tmp_path, "-o", "delay=0") as served:
        with chat(served.url) as (proc, out, err):
            send(proc, "hello")
            out.wait_for("echo: hello\n")
            sid = out.text.split("session ", 1)[1].split(" ", 1)[0]

            async def close_from_another_client() -> None:
                other = await served.client()
                try:
                    await other.call("session.resume", session_id=sid)
                    await other.call("session.close", session_id=sid, reason="manual")
                finally:
                    await other.close()

            asyncio.run(asyncio.wait_for(close_from_another_client(), 30))
            err.wait_for(f"[session {sid} was ended (manual)]")
            assert proc.wait(timeout=20) == 0  # it leaves by itself, without a prompt lost
            out.wait_for(f"continue with: tether chat --resume {sid}")
        assert only_session(served.db).end_reason == "manual"


def test_ctrl_c_while_reconnecting_leaves_at_once(tmp_path: Path) -> None:
    with serve(tmp_path, "-o", "delay=0") as served:
        proxy = DroppingProxy(served.port)
        try:
            with chat(f"ws://127.0.0.1:{proxy.port}/rpc") as (proc, out, err):
                send(proc, "hello")
                out.wait_for("echo: hello\n")
                sid = out.text.split("session ", 1)[1].split(" ", 1)[0]
                proxy.target_port = 1  # the gateway is gone: every reconnect fails
                proxy.drop_all()
                err.wait_for("[connection lost; reconnecting")
                proc.send_signal(signal.SIGINT)
                started = time.monotonic()
                assert proc.wait(timeout=20) == 0
                assert time.monotonic() - started < 3
                out.wait_for(f"continue with: tether chat --resume {sid}")
        finally:
            proxy.close()


def test_chat_carries_on_across_a_gateway_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    with serve(tmp_path, "-o", "delay=0", db=db, name="a") as a:
        proxy = DroppingProxy(a.port)
        try:
            with chat(f"ws://127.0.0.1:{proxy.port}/rpc") as (proc, out, err):
                send(proc, "before")
                out.wait_for("echo: before\n")
                assert a.stop() == 0  # graceful: the session ends with gateway_shutdown
                with serve(tmp_path, "-o", "delay=0", db=db, name="b") as b:
                    proxy.target_port = b.port
                    err.wait_for("(gateway_shutdown); continuing it as")
                    send(proc, "after")
                    out.wait_for("echo: after\n")
                    proc.stdin.close()  # type: ignore[union-attr]
                    assert proc.wait(timeout=20) == 0
        finally:
            proxy.close()
    tip = only_session(db)
    assert tip.parent_id is not None and tip.message_count == 2


def test_a_turn_that_ends_before_its_reply_is_handled_does_not_hang_the_chat(
    tmp_path: Path,
) -> None:
    """A busy client handles the prompt.submit reply after the whole turn already arrived."""
    from tether.cli.chatloop import Chat

    class BusyChat(Chat):
        async def call(self, method: str, **params: Any) -> Any:
            if method != "prompt.submit":
                return await super().call(method, **params)
            reply = asyncio.ensure_future(super().call(method, **params))
            await asyncio.sleep(0)  # the request is sent...
            time.sleep(0.3)  # ...and the client is busy while the whole turn arrives
            return await reply

    async def main(url: str) -> str:
        out = io.StringIO()
        c = BusyChat(url, TOKEN, out=out)
        await c.open()
        try:
            await c.start(None)
            for i in range(3):
                await c.submit(f"p{i}")
                await asyncio.wait_for(c.wait_turn(), 10)  # the old client hung here
            return out.getvalue()
        finally:
            await c.drop()

    with serve(tmp_path, "-o", "delay=0") as served:
        said = asyncio.run(main(served.url))
    assert [line for line in said.splitlines() if line.startswith("echo:")] == [
        "echo: p0",
        "echo: p1",
        "echo: p2",
    ]


def test_a_gateway_that_stays_down_is_reported_with_the_way_back(tmp_path: Path) -> None:
    from tether.cli.chatloop import Chat, GatewayGone

    async def main(url: str, proxy: DroppingProxy) -> str:
        c = Chat(url, TOKEN, out=io.StringIO(), reconnect_for=1.0)
        await c.open()
        try:
            await c.start(None)
            await c.submit("hello")
            await c.wait_turn()
            proxy.target_port = 1  # the gateway is gone: every reconnect fails
            proxy.drop_all()
            lines: asyncio.Queue[str | None] = asyncio.Queue()
            with pytest.raises(GatewayGone) as gone:
                await asyncio.wait_for(c.next_line(lines), 20)
            assert c.session_id is not None
            return str(gone.value).replace(c.session_id, "SID")
        finally:
            await c.drop()

    with serve(tmp_path, "-o", "delay=0") as served:
        proxy = DroppingProxy(served.port)
        try:
            url = f"ws://127.0.0.1:{proxy.port}/rpc"
            said = asyncio.run(main(url, proxy))
        finally:
            proxy.close()
    assert said == (
        f"lost the gateway at {url} and could not reconnect within 1 s; "
        "continue with: tether chat --resume SID once it is back"
    )


def test_quit_only_detaches_while_another_client_is_attached(tmp_path: Path) -> None:
    """/quit ends the session only when this chat is its last client (issue 10, bug 6)."""
    # The other client lives on a loop of its own thread, so that it keeps answering
    # the gateway (pings, events) while the test waits on the chat process.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_other_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, 30), loop).result(40)

    try:
        with serve(tmp_path, "-o", "delay=0") as served:
            with chat(served.url) as (proc, out, _):
                send(proc, "hello")
                out.wait_for("echo: hello\n")
                sid = out.text.split("session ", 1)[1].split(" ", 1)[0]
                other = on_other_loop(served.client())
                on_other_loop(other.call("session.resume", session_id=sid))
                send(proc, "/quit")
                assert proc.wait(timeout=20) == 0
                out.wait_for(
                    "detached; the session stays open because 1 other client is attached; "
                    f"continue with: tether chat --resume {sid}\n"
                )
            s = only_session(served.db)
            assert s.id == sid and s.ended_at is None  # the other client still has it
            # The other client still talks to it: the chat's /quit did not end it under it.
            turn = on_other_loop(other.call("prompt.submit", session_id=sid, text="still"))
            assert turn["turn_id"]
            on_other_loop(other.close())
            # Now alone: /quit ends it.
            with chat(served.url, "--resume", sid) as (proc, out, _):
                out.wait_for(f"session {sid} (resumed)")
                send(proc, "/quit")
                assert proc.wait(timeout=20) == 0
                out.wait_for(f"left; continue with: tether chat --resume {sid}\n")
                assert "detached" not in out.text
            assert only_session(served.db).end_reason == "cli_close"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_tether_end_from_outside_is_said_at_once_in_the_chat(tmp_path: Path) -> None:
    """`tether end ID --db X` in another terminal: the attached chat says so and leaves."""
    with serve(tmp_path, "-o", "delay=0") as served:
        with chat(served.url) as (proc, out, err):
            send(proc, "hello")
            out.wait_for("echo: hello\n")
            sid = out.text.split("session ", 1)[1].split(" ", 1)[0]
            ended = run_cli("end", sid[:10], "--db", served.db, "--detail", "from [outside]")
            assert ended.returncode == 0, ended.stderr
            assert f"ended {sid} (manual)" in ended.stdout
            started = time.monotonic()
            err.wait_for(f"[session {sid} was ended (manual: from [outside])]", timeout=10)
            assert time.monotonic() - started < 2.5  # at once: no prompt needed to find out
            assert proc.wait(timeout=20) == 0  # it leaves by itself
            out.wait_for(f"left; continue with: tether chat --resume {sid}\n")
        s = only_session(served.db)
        assert (s.end_reason, s.end_detail) == ("manual", "from [outside]")
