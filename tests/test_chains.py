"""Chains in the resumable listing: one row per chain, at its newest activity.

The rule: a chain's tip is its newest created member (greatest ``created_at``,
then id), and its activity is the newest activity of any member, at the
listing's resolution (``ACTIVITY_RESOLUTION``, one second).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tether
from tether.store.writes import ACTIVITY_RESOLUTION

DAY = 86_400.0


@pytest.fixture
def clocked(db_url: str, clock: tether.ManualClock) -> Iterator[tether.Store]:
    s = tether.open_store(db_url, clock=clock, load_plugins=False)
    yield s
    s.close()


def _order(store: tether.Store) -> list[str]:
    return [c.root_id for c in store.list_sessions().items]


def test_a_chain_continued_a_day_later_is_listed_at_its_new_activity(
    clocked: tether.Store, clock: tether.ManualClock
) -> None:
    """The continuation writes within a second of its creation: the chain
    still moves to the top (it used to stay at its first activity)."""
    old = clocked.session(source="cli", title="old chain")
    old.append("user", "day one")
    old.end("compression")
    clock.advance(3600)
    other = clocked.session(source="cli", title="other chain")
    other.append("user", "an hour later")
    other.end()
    clock.advance(DAY)
    cont = clocked.session(source="cli", parent_id=old.id)
    clock.advance(0.2)
    cont.append("user", "continued the next day")
    assert _order(clocked) == [old.id, other.id]
    [top, _] = clocked.list_sessions().items
    assert top.session.id == cont.id  # the tip
    assert top.chain_message_count == 2
    assert top.chain_last_active_at == pytest.approx(clock.now(), abs=ACTIVITY_RESOLUTION)
    cont.end()


def test_the_tip_stays_the_newest_member_when_an_older_one_writes(
    clocked: tether.Store, clock: tether.ManualClock
) -> None:
    root = clocked.session(source="cli")
    root.append("user", "root")
    clock.advance(5)
    child = clocked.session(source="cli", parent_id=root.id)
    child.append("user", "child")
    clock.advance(5)
    root.append("user", "the root writes again")  # still open: it may
    [chain] = clocked.list_sessions().items
    assert chain.session.id == child.id
    assert chain.chain_message_count == 3
    assert chain.chain_last_active_at == clock.now()
    assert [s.id for s in clocked.get_chain(root.id)][-1] == child.id
    root.end()
    child.end()


def test_chain_activity_never_moves_backwards(
    clocked: tether.Store, clock: tether.ManualClock
) -> None:
    """A buffered message flushed late carries its own (older) time."""
    root = clocked.session(source="cli")
    root.buffer("user", "buffered early")
    root.persist()
    clock.advance(10)
    child = clocked.session(source="cli", parent_id=root.id)
    child.append("user", "later")
    root.flush()  # its row time is ten seconds older
    [chain] = clocked.list_sessions().items
    assert chain.chain_last_active_at == clock.now()
    root.end()
    child.end()
