"""A Hermes conversation killed mid tool call, then resumed by Hermes without a
result (issue 14): imported into tether, the call dangles in the middle. The
census counts it, and the history a continuation's agent reads answers it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import tether
from tether.store.toolrepair import SYNTHETIC_CONTENT

from ..test_toolrepair import assert_valid_history, one_turn
from .conftest import FIXTURE, _hermes_env

KILLED_THEN_RESUMED = """
import os, sys
from pathlib import Path
path = Path(sys.argv[1])
os.environ["HERMES_HOME"] = str(path.parent)
sys.path.insert(0, sys.argv[2])
import hermes_state
from hermes_fixture import create
db = hermes_state.SessionDB(db_path=path)
create(db, "20261130_120000_abc123", "cli", model="gpt-5")
sid = "20261130_120000_abc123"
db.append_message(sid, "user", "what fills the disk?")
calls = [{"id": "call_du", "type": "function", "function": {"name": "terminal", "arguments": "{}"}}]
db.append_message(sid, "assistant", None, tool_calls=calls)
# killed here while the tool ran; Hermes resumed the session later, without a result
db.append_message(sid, "user", "still there?")
db.append_message(sid, "assistant", "yes, where were we?")
db.end_session(sid, "cli_close")
"""


def test_hermes_session_resumed_without_a_result(hermes_python: Path, tmp_path: Path) -> None:
    state = tmp_path / "hermes" / "state.db"
    state.parent.mkdir()
    made = subprocess.run(
        [str(hermes_python), "-c", KILLED_THEN_RESUMED, str(state), str(FIXTURE.parent)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_hermes_env(),
    )
    assert made.returncode == 0, made.stderr
    from tether.interop.hermes.importer import import_stores

    db = str(tmp_path / "t.db")
    with tether.open_store(db, load_plugins=False) as store:
        import_stores(store, [state])
        [session] = [chain.session for chain in store.list_sessions().items]
        assert store.count_dangling() == 0 and store.count_dangling_middle() == 1
        result = store.repair_tool_calls(session.id)
        assert (result.dangling, result.middle, result.written) == ([], ["call_du"], 0)
        history = asyncio.run(one_turn(store, "session.create", parent_id=session.id))
    assert_valid_history(history)
    tools = [m for m in history if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in tools] == [("call_du", SYNTHETIC_CONTENT)]
    assert [m.role for m in history] == ["user", "assistant", "tool", "user", "assistant", "user"]
