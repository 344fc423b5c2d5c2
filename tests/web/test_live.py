"""Live states as pure logic: facts and owner verdicts in, state and why out (no I/O, no sleep)."""

from __future__ import annotations

import dataclasses

import pytest

from tether.liveness.identity import Probe
from tether.liveness.policy import OwnerInfo, judge
from tether.store.views import LiveFacts, OpenGroup
from tether.web.live import LiveRow, OwnerView, counts, dead_owners, derive, derive_all

NOW = 1_800_000_000.0

OWNER = OwnerInfo(
    "o1", "hostA", "boot", 4242, 99, "gateway", NOW - 3600, NOW - 4.0, pid_ns="ns", lease=30.0
)
FACTS = LiveFacts(
    id="s1",
    source="gateway",
    title="t",
    root_id="s1",
    origin=None,
    created_at=NOW - 600,
    last_active_at=NOW - 5,
    owner_id="o1",
    detached_at=None,
    message_count=3,
    turn_running=False,
)


def seen_from(
    owner: OwnerInfo, *, host: str = "hostA", probe: Probe = Probe.ALIVE, now: float = NOW
) -> OwnerView:
    """The owner as a judge on ``host`` sees it (the liveness policy, a fixed probe)."""
    verdict = judge(owner, host=host, boot_id="boot", pid_ns="ns", now=now, probe=lambda *_: probe)
    return OwnerView(owner.id, owner, verdict)


def state(facts: LiveFacts, owner: OwnerView | None, now: float = NOW) -> LiveRow:
    return derive(facts, owner, now)


def test_idle_working_detached_follow_the_facts() -> None:
    alive = seen_from(OWNER)
    assert state(FACTS, alive).state == "idle"
    assert state(dataclasses.replace(FACTS, turn_running=True), alive).state == "working"
    detached = state(dataclasses.replace(FACTS, detached_at=NOW - 30), alive)
    assert detached.state == "detached" and "no client attached for 30s" in detached.why
    # A running turn wins over a missing client: the agent is still working.
    both = dataclasses.replace(FACTS, turn_running=True, detached_at=NOW - 1)
    assert state(both, alive).state == "working"


def test_never_from_elapsed_time_alone() -> None:
    # Silent for a day, but its owner's pid is there: idle, not orphaned.
    quiet = dataclasses.replace(FACTS, last_active_at=NOW - 86400)
    row = state(quiet, seen_from(OWNER))
    assert row.state == "idle" and "heartbeat 4s ago" in row.why
    # A stale heartbeat on this host with the pid alive (Ctrl+Z, a debugger) is hung, not dead.
    stale = dataclasses.replace(OWNER, heartbeat_at=NOW - 600)
    assert state(FACTS, seen_from(stale)).state == "idle"


@pytest.mark.parametrize("probe", [Probe.GONE, Probe.REUSED])
def test_dead_owner_on_this_host_is_orphaned_at_once(probe: Probe) -> None:
    row = state(FACTS, seen_from(OWNER, probe=probe))
    assert row.state == "orphaned" and f"pid 4242 {probe.value}" in row.why
    assert "awaiting the reaper" in row.why
    # Even mid-turn: a dead owner runs nothing.
    assert state(
        dataclasses.replace(FACTS, turn_running=True), seen_from(OWNER, probe=probe)
    ).state == ("orphaned")


def test_other_host_is_judged_by_its_lease() -> None:
    fresh = seen_from(OWNER, host="hostB")
    assert state(FACTS, fresh).state == "idle"
    stale = seen_from(dataclasses.replace(OWNER, heartbeat_at=NOW - 31), host="hostB")
    assert state(FACTS, stale).state == "orphaned"


def test_no_owner_external_or_orphaned() -> None:
    imported = dataclasses.replace(FACTS, owner_id=None, origin="hermes:x")
    row = state(imported, None)
    assert row.state == "external" and row.owner is None
    assert state(dataclasses.replace(FACTS, owner_id=None), None).state == "orphaned"
    # An owner id whose row is gone (pruned) is dead.
    assert state(FACTS, None).state == "orphaned"


def test_counts_per_state_source_and_host() -> None:
    alive = seen_from(OWNER)
    other = seen_from(dataclasses.replace(OWNER, id="o2", host="hostB"), host="hostB")
    facts = [
        FACTS,
        dataclasses.replace(FACTS, id="s2", turn_running=True),
        dataclasses.replace(FACTS, id="s3", owner_id="o2", source="cli"),
        dataclasses.replace(FACTS, id="s4", owner_id=None, origin="hermes:1", source="hermes"),
    ]
    owners = {"o1": alive, "o2": other}
    rows = derive_all(facts, owners, NOW)
    assert [r.state for r in rows] == ["idle", "working", "idle", "external"]
    # The counts come from groups counted in the database (here: the rows above, plus 10
    # sessions of a dead owner in one group).
    dead = seen_from(dataclasses.replace(OWNER, id="o3"), probe=Probe.GONE)
    groups = [
        OpenGroup(f.owner_id, f.source, f.origin is not None, False, f.turn_running, 1)
        for f in facts
    ] + [OpenGroup("o3", "cli", False, True, True, 10)]
    c = counts(groups, {**owners, "o3": dead})
    assert c["open"] == 14 and c["active"] == 3
    assert c["by_state"] == {"working": 1, "idle": 2, "detached": 0, "orphaned": 10, "external": 1}
    assert c["by_source"] == {
        "cli": {"idle": 1, "orphaned": 10},
        "gateway": {"idle": 1, "working": 1},
        "hermes": {"external": 1},
    }
    assert c["by_host"] == {
        "(none)": {"external": 1},
        "hostA": {"idle": 1, "working": 1, "orphaned": 10},
        "hostB": {"idle": 1},
    }
    assert dead_owners({**owners, "o3": dead}) == ["o3"]
    d = rows[1].to_dict(NOW)
    assert d["owner"] == {
        "id": "o1",
        "host": "hostA",
        "pid": 4242,
        "kind": "gateway",
        "heartbeat_age_s": 4.0,
        "lease_s": 30.0,
        "alive": True,
        "hung": False,
    }
    assert rows[3].activity() == {
        "id": "s4",
        "source": "hermes",
        "title": "t",
        "state": "external",
        "last_active_at": d["last_active_at"],
        "host": None,
    }
