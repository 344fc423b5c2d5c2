"""Export and import of transcripts (issue 14).

A round trip SQLite -> JSONL -> PostgreSQL -> JSONL is byte-identical
(the export is canonical: jsonb keeps no key order); import is idempotent and
all-or-nothing; bad input gets one clear error naming the line.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import tether
from tether.compose import Store

from .conftest import run_cli

DAY = 86400.0
META = {"zeta": 1, "alpha": "ünïcødé ✓ 日本", "nested": {"b": [1, 2.5, None], "a": True}}


def fill(store: Store) -> list[str]:
    """Sessions covering what a transcript can hold; their ids."""
    a = store.session(source="cli", title="first", model="m1", cwd="/tmp/é", metadata=META)
    a.append("system", "be brief")
    a.append("user", "hello ✓")
    a.append(
        "assistant",
        None,  # NULL content: a tool-call message
        tool_calls=[
            {"type": "function", "id": "c1", "function": {"name": "ls", "arguments": "{}"}}
        ],
    )
    a.append("tool", "a b", tool_call_id="c1", tool_name="ls")
    a.append("assistant", "done", meta={"turn": "t1", "z": [1], "a": {"y": 1, "x": 2}})
    a.retract_last()
    a.end("completed", "fine")
    b = store.session(source="cli", parent_id=a.id)  # a continuation: a chain
    b.append("user", "more")
    b.end("cli_close")
    c = store.session(source="web")  # open
    c.append("user", "still here")
    return [a.id, b.id, c.id]


def export(store: Store, ids: list[str] | None = None, fmt: str = "jsonl") -> str:
    return "".join(store.export_text(ids, fmt=fmt))


def count_sessions(store: Store) -> int:
    return int(
        store.backend.read(lambda c: c.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])
    )


def test_export_then_import_round_trips(store: Store, new_db: Callable[[], str]) -> None:
    ids = fill(store)
    text = export(store)
    lines = text.splitlines()
    assert [json.loads(x)["type"] for x in lines].count("session") == 3
    first = json.loads(lines[0])
    assert first["id"] == ids[0] and first["metadata"] == META and first["message_count"] == 5
    with tether.open_store(new_db(), load_plugins=False) as other:
        summary = other.import_lines(io.StringIO(text))
        assert (summary.sessions, summary.skipped, summary.messages) == (3, 0, 7)
        assert export(other) == text
        # Chains, ends, states and listings come back as they were.
        chain = other.get_chain(ids[1])
        assert [s.id for s in chain] == ids[:2]
        listed = {c.root_id: c for c in other.list_sessions().items}
        assert listed[ids[0]].session.id == ids[1] and listed[ids[0]].chain_message_count == 6
        assert other.get_session(ids[2]).ended_at is None
        assert other.get_session(ids[0]).end_detail == "fine"
        retracted = other.get_messages(ids[0], states=("retracted",))
        assert [m.content for m in retracted] == ["done"]
        # Idempotent: a second import writes nothing.
        again = other.import_lines(io.StringIO(text))
        assert (again.sessions, again.skipped, again.messages) == (0, 3, 0)
        assert export(other) == text


@pytest.mark.postgres
def test_sqlite_to_jsonl_to_postgres_to_jsonl_is_byte_identical(
    tmp_path: Path, pg_server: str
) -> None:
    from .conftest import drop_schemas, with_params

    with tether.open_store(str(tmp_path / "a.db"), load_plugins=False) as lite:
        fill(lite)
        first = export(lite)
    schema = f"tether_test_export_{tmp_path.name[-8:]}".lower().replace("-", "_")
    try:
        with tether.open_store(with_params(pg_server, schema=schema), load_plugins=False) as pg:
            pg.import_lines(io.StringIO(first))
            second = export(pg)
    finally:
        drop_schemas(schema)
    assert second.encode() == first.encode()


def test_export_by_id_takes_the_chain_and_since_filters(store: Store) -> None:
    ids = fill(store)
    only = export(store, [ids[1]])
    assert [json.loads(x)["id"] for x in only.splitlines() if '"type":"session"' in x] == ids[:2]
    nothing = "".join(store.export_text(None, since=store.clock.now() + 3600))
    assert nothing == ""


def test_openai_format_is_the_chat_completions_list(store: Store) -> None:
    ids = fill(store)
    lines = export(store, fmt="openai").splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["session_id"] == ids[0]
    roles = [m["role"] for m in first["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]  # the retracted one is left out
    assert first["messages"][2]["content"] is None and first["messages"][2]["tool_calls"]
    assert first["messages"][3]["tool_call_id"] == "c1"


def test_openai_format_answers_calls_left_unanswered_in_the_middle(store: Store) -> None:
    """A chat-completions list a model takes: a call followed by a later prompt
    gets its synthetic result right after it (issue 14); the tail is left as is."""
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "du"}} for i in (1, 2)]
    h = store.session(source="cli")
    h.append("user", "What fills the disk?")
    h.append("assistant", None, tool_calls=calls[:1])
    h.append("user", "Still there?")
    h.append("assistant", None, tool_calls=calls[1:])
    h.end("reaped")
    [line] = export(store, fmt="openai").splitlines()
    messages = json.loads(line)["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in messages] == [
        ("user", None),
        ("assistant", None),
        ("tool", "c1"),
        ("user", None),
        ("assistant", None),
    ]
    assert messages[2]["content"].startswith("no result: ")
    assert store.get_session(h.id).message_count == 4  # nothing stored


def test_bad_format_is_refused(store: Store) -> None:
    with pytest.raises(tether.InvalidInputError):
        export(store, fmt="csv")


@pytest.mark.parametrize(
    ("damage", "line", "words"),
    [
        (lambda t: t[: len(t) - 20], 8, "truncated"),  # cut inside the last line
        (lambda t: "".join(t.splitlines(True)[:-1]), 8, "has 0 of its 1 messages"),
        (lambda t: t.replace('"type":"message"', '"type":"massage"', 1), 2, "unknown line type"),
        (lambda t: t.replace("\n", "\n{not json\n", 1), 2, "not valid JSON"),
        (lambda t: t.replace('"seq":2', '"seq":3', 1), 3, "seq 3 where 2 was expected"),
        (lambda t: t.replace('"role":"user"', '"role":"boss"', 1), 3, "role"),
    ],
)
def test_bad_input_names_the_line_and_imports_nothing(
    store: Store, new_db: Callable[[], str], damage: Callable[[str], str], line: int, words: str
) -> None:
    ids = fill(store)
    store.get_session(ids[2])
    text = export(store, ids[:2])  # two sessions: 1 + 5 + 1 + 1 = 8 lines
    assert len(text.splitlines()) == 8
    bad = damage(text)
    with tether.open_store(new_db(), load_plugins=False) as other:
        with pytest.raises(tether.InvalidInputError) as info:
            other.import_lines(io.StringIO(bad), name="x.jsonl")
        message = str(info.value)
        assert message.startswith(f"x.jsonl: line {line}: "), message
        assert words in message
        assert count_sessions(other) == 0  # nothing half-imported


def test_cli_export_import(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    with tether.open_store(src, load_plugins=False) as store:
        ids = fill(store)
    out_file = str(tmp_path / "all.jsonl")
    done = run_cli("--db", src, "export", "--all", "-o", out_file)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"exported 3 sessions to {out_file}"
    imported = run_cli("--db", dst, "import", out_file)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == (
        "imported 3 sessions with 7 messages; 0 sessions already here (skipped)"
    )
    again = run_cli("--db", dst, "import", out_file, "--json")
    assert json.loads(again.stdout) == {"sessions": 0, "skipped": 3, "messages": 0}
    piped = run_cli("--db", dst, "export", ids[0], "--format", "openai")
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(x)["session_id"] for x in piped.stdout.splitlines()] == ids[:2]
    Path(out_file).write_text(Path(out_file).read_text()[:-5])
    broken = run_cli("--db", str(tmp_path / "new.db"), "import", out_file)
    assert broken.returncode == 1
    assert broken.stderr.startswith(f"error: {out_file}: line 10: truncated")
    assert len(broken.stderr.strip().splitlines()) == 1
    for args, code in (
        (["export"], 2),
        (["export", "--all", "--since", "90x"], 2),
        (["export", "--all", "--since", "nan"], 2),
        (["export", "--all", "--format", "xml"], 2),
        (["export", "01NOPE"], 1),
        (["import", str(tmp_path / "missing.jsonl")], 1),
    ):
        result = run_cli("--db", src, *args)
        assert result.returncode == code, (args, result.stderr)
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_the_fast_message_line_is_the_canonical_one(store: Store) -> None:
    from tether.model import MESSAGE_READ_COLUMNS, message_from_row
    from tether.store.transfer import message_line, message_row_line

    fill(store)
    rows = store.backend.read(
        lambda c: c.execute(f"SELECT {MESSAGE_READ_COLUMNS} FROM messages").fetchall()
    )
    assert len(rows) == 7
    for row in rows:
        assert message_row_line(row) == message_line(message_from_row(row))


def test_a_read_only_store_is_exported_without_claims(tmp_path: Path) -> None:
    """Claims are writes: a store this process cannot write is exported without them
    (nothing can prune a file nobody can write), byte for byte as a writable one."""
    from .test_errors import read_only

    path = tmp_path / "ro.db"
    with tether.open_store(path, load_plugins=False) as writable:
        ids = fill(writable)  # its open session ends when the store closes
    with tether.open_store(path, load_plugins=False) as writable:
        expected = export(writable)
        expected_one = export(writable, [ids[1]])
    with read_only(path):
        with tether.open_store(path, load_plugins=False) as store:
            assert export(store) == expected
            assert export(store, [ids[1]]) == expected_one
            assert export(store, fmt="openai").count("\n") == 3
        done = run_cli("--db", str(path), "export", "--all")
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected


# Every character the encoders could spell differently: quotes, backslashes, each
# control character, DEL, line and paragraph separators, astral and combining ones.
TRICKY = "".join(map(chr, range(1, 32))) + '"\\/\x7f\u2028\u2029 é ✓ 日本 😀 e\u0301 '


def test_database_built_lines_are_the_canonical_ones(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each exported line is the canonical encoder's line of the same session or
    message, byte for byte: in groups, and paged (a large session, pages of 3)."""
    from tether.model import MESSAGE_STATES
    from tether.store import transfer

    a = store.session(
        source="cli", title=TRICKY, model="", cwd=TRICKY[::-1], metadata={"z": TRICKY, "a": 1}
    )
    for i, role in enumerate(["system", "user", "assistant", "user", "assistant", "user"]):
        a.append(role, TRICKY * i or "", idem_key=f"k{TRICKY}{i}")
    a.append(
        "assistant",
        None,
        tool_calls=[
            {"type": "function", "id": TRICKY, "function": {"name": "f", "arguments": "{}"}}
        ],
        meta={"turn": TRICKY, "b": [0.1, 1e-7, 12345678901234567890]},
    )
    a.append("tool", "", tool_call_id=TRICKY, tool_name=TRICKY, payload={"y": None, "x": [TRICKY]})
    a.append("user", "after the nested ones")
    a.end("completed", TRICKY)
    b = store.session(source="web")
    b.append("user", "x")
    b.end("cli_close")
    expected = []
    for s in (a, b):
        expected.append(transfer.session_line(store.get_session(s.id)))
        expected += map(transfer.message_line, store.get_messages(s.id, states=MESSAGE_STATES))
    text = export(store)
    assert text.split("\n") == [*expected, ""]  # not splitlines: U+2028 is no line end
    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)  # a is now a large session, paged
    assert export(store) == text


def test_a_long_export_keeps_its_claims_while_prune_and_purge_run(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims last CLAIM_TTL: an export that takes longer renews them, so prune and
    purge, running between every two chunks on the same (injected) clock, take
    only sessions it has written in full (a large session read page by page,
    then groups), and the export is complete. Once it is done, they take the rest."""
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)
    with tether.open_store(db_url, load_plugins=False) as w:
        big = w.session(source="cli")
        for i in range(8):  # 3 pages of at most 3
            big.append("user", f"page message {i}")
        big.end("completed")
        small = []
        for _ in range(3):  # groups of at most 3 messages: one session each
            h = w.session(source="cli")
            h.append("user", "a")
            h.append("assistant", "b")
            h.end("completed")
            small.append(h.id)
    clock = tether.ManualClock(time.time() + 100 * DAY)
    with (
        tether.open_store(db_url, load_plugins=False, clock=clock) as reader,
        tether.open_store(db_url, load_plugins=False, clock=clock) as pruner,
    ):
        expected = "".join(reader.export_text())
        sizes = {big.id: 8, **dict.fromkeys(small, 2)}
        chunks: list[str] = []
        taken: set[str] = set()
        step = transfer.CLAIM_TTL * 2 / 3  # each chunk "takes" 200 s: 3 outlive a claim
        for chunk in reader.export_text():
            chunks.append(chunk)
            clock.advance(step)
            pruner.prune(DAY, apply=True)
            trashed = {root for root, _ in pruner.trashed_chains()}
            so_far = "".join(chunks)
            for sid in trashed:  # only what the export has written in full
                assert so_far.count(f'"session_id":"{sid}"') == sizes[sid], len(chunks)
            taken |= trashed
            pruner.purge(0)
        assert len(chunks) >= 5
        assert "".join(chunks) == expected
        pruner.prune(DAY, apply=True)  # released: nothing protects the rest now
        taken |= {root for root, _ in pruner.trashed_chains()}
        assert taken == set(sizes)


def test_an_export_stalled_past_its_claims_says_so(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims that lapse all the same (the clock jumps past CLAIM_TTL long before the
    renewal thread's first tick, as if every renewal had failed: the store
    unreachable): a session pruned then in the middle of being written is one
    clear error, never a silently short transcript."""
    from tether.errors import StoreError
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)
    with tether.open_store(db_url, load_plugins=False) as w:
        h = w.session(source="cli")
        for i in range(8):
            h.append("user", f"m{i}")
        h.end("completed")
    clock = tether.ManualClock(time.time() + 100 * DAY)
    with (
        tether.open_store(db_url, load_plugins=False, clock=clock) as reader,
        tether.open_store(db_url, load_plugins=False, clock=clock) as pruner,
    ):
        chunks = reader.export_text()
        next(chunks)
        clock.advance(transfer.CLAIM_TTL + 1)
        assert pruner.prune(DAY, apply=True).chains == 1
        with pytest.raises(StoreError, match=f"session {h.id} was trashed while it was exported"):
            list(chunks)


# --- claims kept alive by the exporting process (issue 14: a live reader keeps its claims) ---


def _claim_expiry(store: Store) -> float | None:
    """The earliest expiry of the export claims in the store (None: none held)."""
    row = store.backend.read(
        lambda c: c.execute(
            "SELECT MIN(expires_at) FROM claims WHERE holder LIKE 'export:%'"
        ).fetchone()
    )
    return None if row[0] is None else float(row[0])


def _renewer_threads() -> list[threading.Thread]:
    from tether.store.transfer import RENEWER_NAME

    return [t for t in threading.enumerate() if t.name == RENEWER_NAME and t.is_alive()]


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _ended_sessions(db_url: str, n: int) -> list[str]:
    """``n`` ended sessions of two messages each; their ids."""
    ids = []
    with tether.open_store(db_url, load_plugins=False) as w:
        for i in range(n):
            h = w.session(source="cli")
            h.append("user", f"m{i}")
            h.append("assistant", "ok")
            h.end("completed")
            ids.append(h.id)
    return ids


def _one_big_session(db_url: str, n: int = 8) -> str:
    with tether.open_store(db_url, load_plugins=False) as w:
        h = w.session(source="cli")
        for i in range(n):
            h.append("user", f"m{i}")
        h.end("completed")
        return h.id


def test_an_export_stalled_for_longer_than_its_claims_keeps_them_while_it_lives(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that stalls between two chunks (a blocked pipe) for several claim
    lifetimes loses nothing: a thread of the exporting process renews its claims
    meanwhile, so prune and purge running all along on the same (injected) clock
    take none of what the export is half-way through, and the export is complete."""
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)
    monkeypatch.setattr(transfer, "RENEW_EVERY", 0.01)  # real seconds, the thread's period
    _one_big_session(db_url)
    clock = tether.ManualClock(time.time() + 100 * DAY)
    with (
        tether.open_store(db_url, load_plugins=False, clock=clock) as reader,
        tether.open_store(db_url, load_plugins=False, clock=clock) as pruner,
    ):
        expected = "".join(reader.export_text())
        chunks = reader.export_text()
        first = next(chunks)  # the session's row and first page: then the consumer stalls
        step = transfer.CLAIM_TTL * 5 / 6
        for _ in range(4):  # 1000 s in all, more than three claim lifetimes
            clock.advance(step)
            _wait_for(
                lambda: (_claim_expiry(reader) or 0) > clock.now() + step,
                "the claims' renewal",
            )
            assert pruner.prune(DAY, apply=True).chains == 0
            pruner.purge(0)
        assert first + "".join(chunks) == expected
        assert _claim_expiry(reader) is None  # released when done
        assert not _renewer_threads()
        assert pruner.prune(DAY, apply=True).chains == 1


@pytest.mark.parametrize("how", ["close", "collect"])
def test_an_export_closed_or_collected_stops_renewing_and_releases(
    db_url: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal lives as long as the export iterator: closing it, or dropping it
    unfinished, stops the thread and releases the claims at once."""
    import gc

    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)
    _one_big_session(db_url)
    with tether.open_store(db_url, load_plugins=False) as reader:
        chunks = reader.export_text()
        next(chunks)
        assert _claim_expiry(reader) is not None
        assert len(_renewer_threads()) == 1
        if how == "close":
            chunks.close()
        else:
            del chunks
            gc.collect()
        assert not _renewer_threads()
        assert _claim_expiry(reader) is None


def test_a_failed_renewal_is_logged_and_retried_never_raised_into_the_consumer(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal that fails (here the first two, made to fail as an unreachable store
    would) is one warning in the log and a retry; the consumer never sees it."""
    from tether.errors import StoreError
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)
    monkeypatch.setattr(transfer, "RENEW_EVERY", 0.01)
    sid = _one_big_session(db_url)
    with tether.open_store(db_url, load_plugins=False) as reader:
        real = reader._claim_ids
        failures = []

        def claim_ids(ids: list[str], holder: str, ttl: float) -> list[str]:
            if threading.current_thread().name == transfer.RENEWER_NAME and len(failures) < 2:
                failures.append(ids)
                raise StoreError("the database is unreachable (injected)")
            return real(ids, holder, ttl)

        monkeypatch.setattr(reader, "_claim_ids", claim_ids)
        chunks = reader.export_text()
        out = next(chunks)
        before = _claim_expiry(reader)
        assert before is not None
        with caplog.at_level(logging.WARNING, logger="tether.store.transfer"):
            _wait_for(lambda: (_claim_expiry(reader) or 0) > before, "a renewal after failures")
        assert len(failures) == 2
        warnings = [r for r in caplog.records if "renewing" in r.getMessage()]
        assert len(warnings) == 2 and all(r.exc_info is None for r in warnings)
        out += "".join(chunks)
        assert out.count(f'"session_id":"{sid}"') == 8


def test_an_export_left_open_past_its_store_stops_renewing_quietly(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An iterator still open when its store closes: the renewal thread ends without
    a warning (nothing is left to keep), and closing the iterator then raises nothing
    (its claims expire by themselves)."""
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)
    monkeypatch.setattr(transfer, "RENEW_EVERY", 0.01)
    _one_big_session(db_url)
    reader = tether.open_store(db_url, load_plugins=False)
    with caplog.at_level(logging.DEBUG, logger="tether"):
        chunks = reader.export_text()
        next(chunks)
        reader.close()
        _wait_for(lambda: not _renewer_threads(), "the renewal thread's end")
        chunks.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_forked_child_leaves_the_parents_export_claims_alone(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked while an export is open (a subprocess spawned by fork) never
    releases the parent's claims, even if it closes the inherited iterator."""
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 3)
    sid = _one_big_session(db_url)
    with tether.open_store(db_url, load_plugins=False) as reader:
        chunks = reader.export_text()
        out = next(chunks)
        pid = os.fork()
        if pid == 0:  # the child: close what it inherited, then exit at once
            code = 0
            try:
                chunks.close()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _claim_expiry(reader) is not None
        assert len(_renewer_threads()) == 1
        out += "".join(chunks)
        assert out.count(f'"session_id":"{sid}"') == 8
        assert _claim_expiry(reader) is None


# Times the two databases could spell unlike Python's repr: integral values, zero,
# both sides of the 1e-4 and 1e15 switches to exponents, huge. (Not -0.0: SQLite
# stores it as 0.0.)
ODD_TIMES = [1800000000.0, 0.0, 5.0, -1.5, 1e-4, 9.999e-5, 1e-7, 999999999999999.9]
ODD_TIMES += [1e15, 1e16, 123456789012345678.0, 1e300, 1800000000.123456, 0.1 + 0.2]


def test_every_time_is_exported_as_python_spells_it(store: Store) -> None:
    """Sessions and messages at odd times round-trip byte for byte (a line the
    database cannot spell exactly is written by Python); on PostgreSQL the
    server builds every message line whose time it spells as Python does."""
    from tether.store import sql_retention as q
    from tether.store.transfer import canonical

    lines = []
    for i, t in enumerate(ODD_TIMES):
        sid = f"01ODD{i:021d}"
        session = {
            "type": "session", "id": sid, "source": "cli", "model": None, "title": None,
            "cwd": None, "parent_id": None, "root_id": sid, "origin": None, "created_at": t,
            "last_active_at": t, "ended_at": None if i % 2 else t,
            "end_reason": None if i % 2 else "completed", "end_detail": None,
            "message_count": 2, "metadata": None,
        }  # fmt: skip
        lines.append(canonical(session) + "\n")
        for seq in (1, 2):
            message = {
                "type": "message", "session_id": sid, "seq": seq, "role": "user",
                "content": f"at {t!r}", "tool_calls": None, "tool_call_id": None,
                "tool_name": None, "created_at": t if seq == 1 else 1800000000.5,
                "idem_key": None, "meta": None, "state": "active", "payload": None,
            }  # fmt: skip
            lines.append(canonical(message) + "\n")
    assert store.import_lines(lines).sessions == len(ODD_TIMES)
    assert export(store) == "".join(lines)
    if store.backend.dialect == "postgresql":
        ids = [f"01ODD{i:021d}" for i in range(len(ODD_TIMES))]
        rows = store.backend.read_ordered(  # type: ignore[attr-defined]
            lambda c: c.execute(
                q.EXPORT_MESSAGE_ROWS, q.ids_json_param("postgresql", ids)
            ).fetchall()
        )
        odd = [t for t in ODD_TIMES if not (1e-4 <= abs(t) < 1e15)]  # Python's lines
        assert [r[0] for r in rows].count(q.MESSAGE_HOLE) == len(odd)
        assert len(rows) == 2 * len(ODD_TIMES)


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_postgres_spells_floats_as_python_does_where_it_is_trusted(store: Store) -> None:
    """The export's lines on PostgreSQL take the server's float8 text where
    sql_retention._pg_float trusts it: compared with repr on 100,000 values
    (times like time.time()'s, random bit patterns, every decade), which it
    must trust for every time of this century."""
    import random
    import struct

    from tether.store import sql_retention as q

    rng = random.Random(14)
    times = [rng.uniform(1e9, 4.1e9) for _ in range(40_000)]
    values = times + [rng.choice((1, -1)) * 10 ** rng.uniform(-6, 17) for _ in range(30_000)]
    while len(values) < 100_000:
        x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            values.append(x)
    values += [float(v) for v in (*ODD_TIMES, -0.0, 2**52, 2**53, 5e-324, 1 / 3, 1e15 - 0.5)]
    query = f"SELECT {q._pg_float('x')} FROM unnest(?::float8[]) AS t(x)"
    spelled = store.backend.read_ordered(  # type: ignore[attr-defined]
        lambda c: [r[0] for r in c.execute(query, [values]).fetchall()]
    )
    assert len(spelled) == len(values)
    trusted = [(x, s) for x, s in zip(values, spelled, strict=True) if s is not None]
    assert [s for _, s in trusted] == [repr(x) for x, _ in trusted]
    assert all(s is not None for s in spelled[: len(times)])
    assert len(trusted) > 60_000


def test_times_are_spelled_as_python_does_in_bulk() -> None:
    """spell_times (orjson where it agrees with repr, repr elsewhere) spells every
    value as repr does: times like time.time()'s, every decade, random bit
    patterns, and groups mixing values inside and outside orjson's range."""
    import random
    import struct

    from tether.store.transfer import spell_times

    rng = random.Random(15)
    times = [rng.uniform(1e9, 4.1e9) for _ in range(40_000)]
    decades = [10 ** rng.uniform(-4, 16) for _ in range(30_000)]
    decades = [x for x in decades if 1e-4 <= x < 1e16]
    bits = []
    while len(bits) < 30_000:
        x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            bits.append(x)
    edges = [1e-4, 1e16 - 2, 9.999999999999998e15, 1.0, 2.0**52, 2.0**53, 1 / 3, 0.1 + 0.2]
    for values in (times, decades, edges, bits, ODD_TIMES, [*times[:5], 1e-7], [5.0]):
        assert spell_times(values) == list(map(repr, values))
    assert spell_times([]) == []


def test_plain_and_odd_messages_mixed_in_a_session_export_canonically(store: Store) -> None:
    """The fast lines (plain messages: one template per session on SQLite, roles and
    states as literals on PostgreSQL) and the others, mixed within one session and
    one group, are the canonical encoder's lines; so are those of a role or state
    outside the known words (written behind the API's back)."""
    from tether.model import MESSAGE_STATES
    from tether.store import transfer

    a = store.session(source="cli", title="100% mixed")
    a.append("system", "be brief")
    a.append("user", 'plain "quoted" 50% \\ ✓')
    a.append("assistant", None, tool_calls=[{"id": "c1", "type": "function"}])
    a.append("tool", "out", tool_call_id="c1", tool_name="ls")
    a.append("user", "keyed", idem_key="k1")
    a.append("developer", None)
    a.append("assistant", "then plain again")
    a.append("user", "retracted soon")
    a.retract_last()
    a.append("user", "odd role")
    a.end("completed")
    b = store.session(source="web")  # a second session in the same group, all plain
    b.append("user", "x")
    b.end("cli_close")
    # A role no API writes (the words are a fast path, not a rule): exported all the same.
    store.backend.write(
        lambda c: c.execute(
            "UPDATE messages SET role = ? WHERE session_id = ? AND seq = ?",
            ('odd "role"', a.id, 10),
        )
    )
    expected = []
    for s in (a, b):
        expected.append(transfer.session_line(store.get_session(s.id)))
        expected += map(transfer.message_line, store.get_messages(s.id, states=MESSAGE_STATES))
    assert export(store).split("\n") == [*expected, ""]


def test_the_next_page_is_claimed_ahead_and_every_claim_released(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a page is read the next one is claimed (on its own thread): by the time
    the first chunk is out, both pages are claimed; a page written is released
    when the one after next is claimed; closing the export midway waits for the
    claim under way and releases every claim."""
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 2)  # small groups: several chunks
    ids = _ended_sessions(db_url, 6)

    def claimed(store: Store) -> list[str]:
        rows = store.backend.read(
            lambda c: c.execute(
                "SELECT session_id FROM claims WHERE holder LIKE 'export:%' ORDER BY 1"
            ).fetchall()
        )
        return [r[0] for r in rows]

    with tether.open_store(db_url, load_plugins=False) as reader:
        chunks = reader.export_text(page=2)
        next(chunks)  # the first session of the first page
        _wait_for(lambda: len(claimed(reader)) == 4, "the second page's claims")
        assert claimed(reader) == sorted(ids[:4])
        while ids[2] not in next(chunks):  # into the second page
            pass
        # The third page claimed ahead, the first (written) released meanwhile.
        _wait_for(lambda: claimed(reader) == sorted(ids[2:]), "the first page's release")
        chunks.close()
        assert claimed(reader) == []
        assert not [t for t in threading.enumerate() if t.name == transfer.AHEAD_NAME]
        text = "".join(reader.export_text(page=2))  # whole, page after page
        assert text.count('"type":"session"') == 6
        assert claimed(reader) == []


def test_postgres_reads_the_next_group_while_this_one_is_written(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a group's read starts on the read-ahead thread before the group
    before it is handed to the consumer (the server builds it meanwhile); SQLite
    reads on the consumer's thread. The output is the same either way, and an
    export closed midway leaves no read behind."""
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 2)  # one session of two messages a group
    monkeypatch.setattr(transfer, "GROUP_PAGES", {})
    _ended_sessions(db_url, 5)
    reads: list[tuple[list[str], str]] = []
    real = transfer.Transfer._read_group

    def recorded(self: transfer.Transfer, ids: list[str]) -> object:
        reads.append((ids, threading.current_thread().name))
        return real(self, ids)

    monkeypatch.setattr(transfer.Transfer, "_read_group", recorded)
    with tether.open_store(db_url, load_plugins=False) as reader:
        whole = "".join(reader.export_text())
        assert whole.count('"type":"session"') == 5
        # By group, in id order (the reads of two groups run at once: any order).
        names = [name for _ids, name in sorted(reads)]
        if reader.backend.dialect == "postgresql":
            # The first group of each page on the consumer's thread, the rest ahead.
            assert names == ["MainThread"] + [transfer.GROUP_READER_NAME] * 4
        else:
            assert names == ["MainThread"] * 5
        read_ids = [i for ids, _name in reads for i in ids]
        assert len(read_ids) == len(set(read_ids)) == 5  # each session read once
        reads.clear()
        chunks = reader.export_text()
        first = next(chunks)
        if reader.backend.dialect == "postgresql":
            _wait_for(lambda: len(reads) == 2, "the second group's read, ahead")
        chunks.close()
        assert not [t for t in threading.enumerate() if t.name == transfer.GROUP_READER_NAME]
        assert whole.startswith(first)


def test_a_failed_read_ahead_reaches_the_consumer_at_its_group(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's read that fails (here the second, on the read-ahead thread on
    PostgreSQL) raises its error in the consumer when that group is due, after
    the groups before it were written, and leaves no read behind."""
    from tether.errors import StoreError
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 2)
    monkeypatch.setattr(transfer, "GROUP_PAGES", {})
    second = sorted(_ended_sessions(db_url, 3))[1]
    real = transfer.Transfer._read_group

    def failing(self: transfer.Transfer, ids: list[str]) -> object:
        if ids == [second]:
            raise StoreError("the store went away")
        return real(self, ids)

    monkeypatch.setattr(transfer.Transfer, "_read_group", failing)
    with tether.open_store(db_url, load_plugins=False) as reader:
        chunks = reader.export_text()
        assert next(chunks).count('"type":"session"') == 1
        with pytest.raises(StoreError, match="went away"):
            next(chunks)
        assert not [t for t in threading.enumerate() if t.name == transfer.GROUP_READER_NAME]
        assert (
            reader.backend.read(lambda c: c.execute("SELECT COUNT(*) FROM claims").fetchone()[0])
            == 0
        )  # the export's claims released


# --- SQLite: every other group read and spelled by a worker process ---------------------


def _varied_store(db_path: str) -> None:
    """Sessions of every kind (chains, tool calls, NULL content, unicode, open and
    ended, a role no API writes), several times over: many small groups."""
    with tether.open_store(db_path, load_plugins=False) as w:
        for _ in range(4):
            fill(w)
        _ended_sessions(db_path, 6)
        s = w.session(source="cli")
        s.append("user", "odd")
        s.end("completed")
        w.backend.write(
            lambda c: c.execute(
                "UPDATE messages SET role = 'odd \"role\"' WHERE session_id = ?", (s.id,)
            )
        )


class _Workers:
    """The export workers started, each waited for until it is ready (so that it
    takes groups from the first it can), and the groups each sent back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, spoil: bool = False) -> None:
        from tether.store.sqlite.export_worker import ExportWorker

        self.started: list[ExportWorker] = []
        self.served = 0
        start, ready, receive = ExportWorker.start, ExportWorker.ready, ExportWorker.receive

        def started(target: str, path: str, identity: tuple[int, int]) -> ExportWorker | None:
            if spoil:  # the worker finds another file than the exporter's
                identity = (identity[0], identity[1] + 1)
            worker = start(target, path, identity)
            assert worker is not None
            self.started.append(worker)
            return worker

        def ready_soon(worker: ExportWorker) -> bool:
            deadline = time.monotonic() + 30
            while worker.usable and not ready(worker) and time.monotonic() < deadline:
                time.sleep(0.01)
            return ready(worker)

        def counted(worker: ExportWorker) -> tuple[str, int] | None:
            got = receive(worker)
            self.served += got is not None
            return got

        monkeypatch.setattr(ExportWorker, "start", staticmethod(started))
        monkeypatch.setattr(ExportWorker, "ready", ready_soon)
        monkeypatch.setattr(ExportWorker, "receive", counted)


def _export_small_groups(db_path: str, monkeypatch: pytest.MonkeyPatch, *, worker: bool) -> str:
    from tether.store import transfer

    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 6)  # a group: one session or a few
    monkeypatch.setattr(transfer, "EXPORT_WORKER", worker)
    with tether.open_store(db_path, load_plugins=False) as reader:
        return "".join(reader.export_text(page=5))


def test_a_large_sqlite_export_reads_every_other_group_in_a_worker_process(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export of more than a page of sessions on SQLite starts one worker process:
    while this process reads and spells a group, the worker reads and spells the
    next. The output is the same line for line, and the worker is gone after."""
    _varied_store(db_path)
    alone = _export_small_groups(db_path, monkeypatch, worker=False)
    workers = _Workers(monkeypatch)
    shared = _export_small_groups(db_path, monkeypatch, worker=True)
    assert shared == alone
    assert alone.count('"type":"session"') == 19
    assert len(workers.started) == 1 and workers.served >= 4
    assert workers.started[0].proc.returncode == 0  # ended with its export, on its own


def test_an_export_goes_on_without_a_worker_that_dies_or_does_not_start(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed midway (SIGKILL), or one that finds another file than the
    exporter's and exits before its handshake: the exporter reads those groups
    itself, and the output is the same."""
    import signal

    _varied_store(db_path)
    alone = _export_small_groups(db_path, monkeypatch, worker=False)
    workers = _Workers(monkeypatch)
    from tether.store.sqlite.export_worker import ExportWorker

    receive = ExportWorker.receive  # counted by _Workers

    def killed_after_one(worker: ExportWorker) -> tuple[str, int] | None:
        got = receive(worker)
        if workers.served == 1 and worker.usable:
            os.kill(worker.proc.pid, signal.SIGKILL)
        return got

    monkeypatch.setattr(ExportWorker, "receive", killed_after_one)
    assert _export_small_groups(db_path, monkeypatch, worker=True) == alone
    assert workers.served == 1 and not workers.started[0].usable
    assert workers.started[0].proc.returncode == -signal.SIGKILL  # waited for: no zombie

    spoiled = _Workers(monkeypatch, spoil=True)
    assert _export_small_groups(db_path, monkeypatch, worker=True) == alone
    assert spoiled.served == 0 and spoiled.started[0].proc.returncode == 1


def test_an_export_stopped_midway_ends_its_worker(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that stops reading (closes the export) ends the worker with it,
    whatever it was doing: nothing of the export outlives it."""
    from tether.store import transfer

    _varied_store(db_path)
    monkeypatch.setattr(transfer, "MESSAGE_PAGE", 6)
    workers = _Workers(monkeypatch)
    with tether.open_store(db_path, load_plugins=False) as reader:
        chunks = reader.export_text(page=5)
        while workers.served < 2:
            next(chunks)
        chunks.close()
        assert workers.started[0].proc.returncode is not None
        assert (
            reader.backend.read(lambda c: c.execute("SELECT COUNT(*) FROM claims").fetchone()[0])
            == 0
        )
