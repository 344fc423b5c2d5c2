"""Property test: after any sequence of operations the store's bookkeeping holds.

* every session's ``message_count`` equals the number of its stored messages,
  and their seqs are exactly 1..count;
* an ended session is never re-ended: its end time and reason never change,
  and exactly one call reported ending it;
* a session without content never has a row;
* every chain's summary on its root row holds: its tip is the newest created
  member (greatest ``created_at``, then id), its message count the sum of its
  members', and its activity the newest of any member's (creation or message)
  at the listing's resolution: within ``ACTIVITY_RESOLUTION`` below it, never
  above it. The clock moves by hand, across and within that resolution.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import tether
from tether.store.writes import ACTIVITY_RESOLUTION

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
ROLE = st.sampled_from(["user", "assistant", "tool", "system"])
REASON = st.sampled_from(["completed", "error", "cli_close", "reaped", "manual"])


class StoreMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self, db: str) -> None:
        super().__init__()
        self.clock = tether.ManualClock()
        self.store = tether.open_store(db, clock=self.clock, load_plugins=False)
        self.ended: dict[str, tuple[float, str]] = {}  # id -> (ended_at, reason) first seen
        self.end_wins: dict[str, int] = {}
        self.had_content: set[str] = set()
        self.all: list[tether.SessionHandle] = []

    def teardown(self) -> None:
        self.store.close()

    @rule(target=handles, parent=st.booleans())
    def new_session(self, parent: bool) -> tether.SessionHandle:
        parents = [h.id for h in self.all if h.persisted]
        pid = parents[-1] if parent and parents else None
        h = self.store.session(source="prop", parent_id=pid)
        self.all.append(h)
        return h

    @rule(
        h=handles,
        role=ROLE,
        content=st.one_of(st.none(), TEXT),
        key=st.sampled_from([None, "k1", "k2"]),
    )
    def append(
        self, h: tether.SessionHandle, role: str, content: str | None, key: str | None
    ) -> None:
        if h.ended:
            return
        try:
            h.append(role, content, idem_key=key)
            self.had_content.add(h.id)
        except tether.SessionEndedError:
            assert h.id in self.ended

    @rule(h=handles, content=TEXT, key=st.sampled_from([None, "k1", "k3"]))
    def buffer(self, h: tether.SessionHandle, content: str, key: str | None) -> None:
        if not h.ended:
            h.buffer("assistant", content, idem_key=key)

    @rule(h=handles)
    def flush(self, h: tether.SessionHandle) -> None:
        if h.ended:
            return
        try:
            if h.flush():
                self.had_content.add(h.id)
        except tether.SessionEndedError:
            assert h.id in self.ended

    @rule(h=handles)
    def persist(self, h: tether.SessionHandle) -> None:
        if not h.ended:
            try:
                h.persist()
            except tether.SessionEndedError:
                assert h.id in self.ended

    @rule(h=handles, reason=REASON)
    def end_handle(self, h: tether.SessionHandle, reason: str) -> None:
        pending = h.pending
        if h.end(reason):
            self.end_wins[h.id] = self.end_wins.get(h.id, 0) + 1
            if pending:
                self.had_content.add(h.id)

    @rule(h=handles, reason=REASON)
    def end_from_outside(self, h: tether.SessionHandle, reason: str) -> None:
        if not h.persisted:
            return
        if self.store.end_session(h.id, reason):
            self.end_wins[h.id] = self.end_wins.get(h.id, 0) + 1

    @rule(seconds=st.sampled_from([0.3, 0.7, 1.0, 2.5, 3600.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def chain_summaries_hold(self) -> None:
        rows = self.store.backend.read(
            lambda c: c.execute(
                """SELECT s.id, s.root_id, s.created_at, s.message_count, s.chain_tip_id,
                    s.chain_message_count, s.chain_last_active_at,
                    (SELECT max(m.created_at) FROM messages m WHERE m.session_id = s.id)
                FROM sessions s"""
            ).fetchall()
        )
        chains: dict[str, list[tuple]] = {}
        for row in rows:
            chains.setdefault(row[1], []).append(row)
        roots = {r[0]: r for r in rows if r[0] == r[1]}
        assert set(chains) == set(roots), "every chain has its root row"
        for root_id, members in chains.items():
            root = roots[root_id]
            tip = max(members, key=lambda m: (m[2], m[0]))
            assert root[4] == tip[0], ("tip", root_id, root[4], tip[0])
            assert root[5] == sum(m[3] for m in members), ("chain count", root_id)
            newest = max(max(m[2], m[7] if m[7] is not None else m[2]) for m in members)
            assert newest - ACTIVITY_RESOLUTION < root[6] <= newest, (
                "chain activity",
                root_id,
                root[6],
                newest,
            )

    @invariant()
    def bookkeeping_holds(self) -> None:
        rows = self.store.backend.read(
            lambda c: c.execute(
                "SELECT id, message_count, ended_at, end_reason FROM sessions"
            ).fetchall()
        )
        for sid, count, ended_at, reason in rows:
            seqs = [m.seq for m in self.store.get_messages(sid)]
            assert seqs == list(range(1, count + 1)), (sid, count, seqs)
            if ended_at is not None:
                first = self.ended.setdefault(sid, (ended_at, reason))
                assert first == (ended_at, reason), "an ended session was re-ended"
                assert self.end_wins.get(sid) == 1, "exactly one call reports the end"
            else:
                assert sid not in self.ended
        stored = {r[0] for r in rows}
        for h in self.all:
            if h.id in self.had_content:
                assert h.id in stored
            if h.id in stored and not h.persisted:
                raise AssertionError("a row exists for a handle that never wrote")


def test_store_properties(new_db: Callable[[], str]) -> None:
    """Each example runs on a fresh database of the test's backend."""
    run_state_machine_as_test(
        lambda: StoreMachine(new_db()),
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def _iso_by_datetime(ts: float) -> str:
    """``iso`` as datetime spells it (the definition the fast path must match)."""
    from datetime import UTC, datetime

    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=0, max_value=253402300799.4, allow_nan=False),
        # Near a second's end, where rounding to microseconds carries into the next second.
        st.integers(0, 4_102_444_800).map(lambda s: s + 0.9999995),
        st.integers(0, 4_102_444_800).map(lambda s: s - 5e-7),
    )
)
def test_iso_spells_times_as_datetime_does(ts: float) -> None:
    from tether.model import iso

    assert iso(ts) == _iso_by_datetime(ts)
    assert iso(ts) == _iso_by_datetime(ts)  # again: from the cached second this time
