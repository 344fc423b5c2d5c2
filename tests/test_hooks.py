"""pluggy hooks: start and end fire once, a failing hook never blocks an end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import tether
from tether.store import Store

from .conftest import child_env


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @tether.hookimpl
    def on_session_start(self, session: tether.Session) -> None:
        self.calls.append(("start", session.id, session.message_count))

    @tether.hookimpl
    def on_session_end(self, session: tether.Session, reason: str, interrupted: bool) -> None:
        self.calls.append(("end", session.id, reason, interrupted, session.end_reason))


class Exploding:
    @tether.hookimpl
    def on_session_start(self, session: tether.Session) -> None:
        raise RuntimeError("plugin bug")

    @tether.hookimpl
    def on_session_end(self, session: tether.Session, reason: str, interrupted: bool) -> None:
        raise RuntimeError("plugin bug")


def test_start_and_end_fire_once(store: Store) -> None:
    rec = Recorder()
    store.plugins.register(rec)
    h = store.session(source="cli")
    assert rec.calls == []  # nothing written, nothing announced
    h.append("user", "a")
    h.append("user", "b")
    h.end("completed")
    h.end("error")
    assert rec.calls == [("start", h.id, 1), ("end", h.id, "completed", False, "completed")]


def test_no_hooks_for_a_session_that_never_existed(store: Store) -> None:
    rec = Recorder()
    store.plugins.register(rec)
    with store.session(source="cli"):
        pass
    assert rec.calls == []


def test_external_end_fires_in_the_ending_process(store: Store) -> None:
    rec = Recorder()
    h = store.session(source="cli")
    h.append("user", "a")
    store.plugins.register(rec)
    assert store.end_session(h.id, "manual") is True
    assert store.end_session(h.id, "manual") is False
    assert rec.calls == [("end", h.id, "manual", True, "manual")]
    assert h.end() is False
    assert len(rec.calls) == 1


def test_failing_hooks_never_block_the_end(store: Store, caplog) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder()
    store.plugins.register(Exploding())
    store.plugins.register(rec)
    with store.session(source="cli") as h:
        h.append("user", "x")
    assert store.get_session(h.id).end_reason == "completed"
    assert [c[0] for c in rec.calls] == ["start", "end"]  # the others still ran
    assert "plugin bug" in caplog.text


def test_error_exit_is_reported_as_interrupted(store: Store) -> None:
    rec = Recorder()
    store.plugins.register(rec)
    try:
        with store.session(source="cli") as h:
            h.append("user", "x")
            raise OSError("disk")
    except OSError:
        pass
    assert rec.calls[-1] == ("end", h.id, "error", True, "error")


def test_plugins_are_discovered_through_entry_points(tmp_path: Path) -> None:
    """A plugin published in the ``tether.plugins`` group is loaded by every store."""
    site = tmp_path / "site"
    dist = site / "tether_audit-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tether-audit\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tether.plugins]\naudit = tether_audit\n")
    (site / "tether_audit.py").write_text(
        textwrap.dedent(
            """
            import tether

            @tether.hookimpl
            def on_session_end(session, reason, interrupted):
                print("AUDIT", session.id, reason, interrupted, flush=True)
            """
        )
    )
    code = textwrap.dedent(
        f"""
        import sys, tether
        s = tether.open_store({str(tmp_path / "x.db")!r})
        h = s.session(source="cli")
        h.append("user", "x")
        h.end("completed")
        print("ID", h.id)
        """
    )
    env = child_env(PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    sid = proc.stdout.split("ID ")[1].strip()
    assert f"AUDIT {sid} completed False" in proc.stdout
