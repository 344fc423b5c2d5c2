"""Why each open session is in its state: pure logic over facts, never over elapsed time alone.

A session's state comes from what the store and the liveness policy know:

========== ==============================================================
state      condition (first that holds)
========== ==============================================================
external   no owner and an origin: imported, its source ends it
orphaned   no owner, or its owner is dead (the reaper will end it)
working    owner alive and its newest turn event is ``turn_started``
detached   owner alive, no turn, no client attached (``detached_at``)
idle       owner alive, no turn, a client attached
========== ==============================================================

"active" is ``working + idle + detached``: exact at any number of sessions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..liveness.policy import OwnerInfo, Verdict
from ..model import iso
from ..store.views import LiveFacts, OpenGroup

STATES = ("working", "idle", "detached", "orphaned", "external")
ACTIVE_STATES = frozenset({"working", "idle", "detached"})


@dataclass(frozen=True, slots=True)
class OwnerView:
    """An owner as judged by this process's liveness policy."""

    id: str
    info: OwnerInfo | None  # None: its row is missing
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class LiveRow:
    facts: LiveFacts
    state: str
    why: str
    owner: OwnerView | None

    def host(self) -> str | None:
        return self.owner.info.host if self.owner and self.owner.info else None

    def to_dict(self, now: float) -> dict[str, Any]:
        f = self.facts
        owner: dict[str, Any] | None = None
        if self.owner is not None:
            info = self.owner.info
            owner = {
                "id": self.owner.id,
                "host": info.host if info else None,
                "pid": info.pid if info else None,
                "kind": info.kind if info else None,
                "heartbeat_age_s": round(max(0.0, now - info.heartbeat_at), 3) if info else None,
                "lease_s": info.lease if info else None,
                "alive": self.owner.verdict.alive,
                "hung": self.owner.verdict.hung,
            }
        return {
            "id": f.id,
            "source": f.source,
            "title": f.title,
            "chain_id": f.root_id,
            "origin": f.origin,
            "state": self.state,
            "why": self.why,
            "owner": owner,
            "created_at": iso(f.created_at),
            "last_active_at": iso(f.last_active_at),
            "detached_at": iso(f.detached_at),
            "message_count": f.message_count,
        }

    def activity(self) -> dict[str, Any]:
        """The stable projection for visualizers (``/api/v1/activity``)."""
        f = self.facts
        return {
            "id": f.id,
            "source": f.source,
            "title": f.title,
            "state": self.state,
            "last_active_at": iso(f.last_active_at),
            "host": self.host(),
        }


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def state_of(
    owner_id: str | None,
    imported: bool,
    detached: bool,
    turn_running: bool,
    owner: OwnerView | None,
) -> str:
    """The state from the facts (see the module docstring); ``owner`` judged by liveness."""
    if owner_id is None:
        return "external" if imported else "orphaned"
    if owner is None or not owner.verdict.alive:
        return "orphaned"
    return alive_state(detached, turn_running)


def alive_state(detached: bool, turn_running: bool) -> str:
    """The state of a session whose owner is alive."""
    if turn_running:
        return "working"
    return "detached" if detached else "idle"


def derive(facts: LiveFacts, owner: OwnerView | None, now: float) -> LiveRow:
    """The state of one open session and why, from its facts and its owner's verdict."""
    state = state_of(
        facts.owner_id,
        facts.origin is not None,
        facts.detached_at is not None,
        facts.turn_running,
        owner,
    )
    if state == "external":
        return LiveRow(facts, state, f"imported from {facts.origin}; its source ends it", None)
    if state == "orphaned" and facts.owner_id is None:
        return LiveRow(facts, state, "no owner: awaiting repair", None)
    if state == "orphaned":
        detail = owner.verdict.detail if owner is not None else "owner record missing"
        return LiveRow(facts, state, f"owner dead ({detail}): awaiting the reaper", owner)
    assert owner is not None
    info = owner.info
    who = f"{info.kind} pid {info.pid} on {info.host}" if info else owner.id
    beat = f", heartbeat {_ago(now - info.heartbeat_at)} ago" if info else ""
    if state == "working":
        return LiveRow(facts, state, f"a turn is running; owner {who} alive{beat}", owner)
    if state == "detached":
        assert facts.detached_at is not None
        gone = _ago(now - facts.detached_at)
        return LiveRow(
            facts, state, f"no client attached for {gone}; owner {who} alive{beat}", owner
        )
    return LiveRow(facts, state, f"no turn running; owner {who} alive{beat}", owner)


def derive_all(
    facts: Iterable[LiveFacts], owners: Mapping[str, OwnerView], now: float
) -> list[LiveRow]:
    return [derive(f, owners.get(f.owner_id) if f.owner_id else None, now) for f in facts]


def counts(groups: Iterable[OpenGroup], owners: Mapping[str, OwnerView]) -> dict[str, Any]:
    """Exact counts per state, and per state within each source and host (the truthful
    footer), from the open sessions grouped in the database."""
    by_state: Counter[str] = Counter({s: 0 for s in STATES})
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    by_host: dict[str, Counter[str]] = defaultdict(Counter)
    for g in groups:
        if g.alive_on is not None:  # owners the database found alive
            state = alive_state(g.detached, g.turn_running)
            host = g.alive_on
        else:
            owner = owners.get(g.owner_id) if g.owner_id else None
            state = state_of(g.owner_id, g.imported, g.detached, g.turn_running, owner)
            host = owner.info.host if owner is not None and owner.info is not None else "(none)"
        by_state[state] += g.count
        by_source[g.source][state] += g.count
        by_host[host][state] += g.count
    return {
        "open": sum(by_state.values()),
        "active": sum(by_state[s] for s in ACTIVE_STATES),
        "by_state": dict(by_state),
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "by_host": {k: dict(v) for k, v in sorted(by_host.items())},
    }


def dead_owners(owners: Mapping[str, OwnerView]) -> list[str]:
    """Ids of the owners judged dead (their sessions are orphaned)."""
    return sorted(k for k, o in owners.items() if not o.verdict.alive)
