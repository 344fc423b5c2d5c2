"""What the API reads: the live snapshot (facts + owner verdicts) and the census."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..compose import Store
from ..errors import InvalidInputError
from ..liveness import Reaper
from ..model import Census
from ..store.views import LiveFacts, events_after, open_groups, open_page
from ..validate import check_id
from .feed import moved
from .live import LiveRow, OwnerView, counts, dead_owners, derive_all

CATCH_UP_LIMIT = 1000  # events the followed turns may lag before the database decides


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The open sessions' exact counts and one page of them, judged at ``now``."""

    now: float
    counts: dict[str, Any]
    rows: list[LiveRow]
    next_cursor: str | None
    owners: dict[str, OwnerView] = field(default_factory=dict)


def encode_cursor(facts: LiveFacts) -> str:
    return f"{facts.created_at!r}~{facts.id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    at, sep, sid = cursor.partition("~")
    try:
        value = float(at)
    except ValueError:
        value = math.nan
    if not sep or not sid or not math.isfinite(value):
        raise InvalidInputError(f"not a live cursor: {cursor[:40]!r}")
    return value, check_id(sid)


class LiveView:
    """Reads the store and judges owners with this process's liveness policy.

    ``gateway_stats`` gives the numbers of the gateway this view is mounted in
    (None when it runs on its own: ``tether web``).
    """

    def __init__(
        self,
        store: Store,
        *,
        reaper: Reaper | None = None,
        gateway_stats: Callable[[], dict[str, float]] | None = None,
        running: Callable[[], tuple[frozenset[str], int] | None] | None = None,
    ) -> None:
        self.store = store
        self.reaper = reaper or Reaper(store)
        self.gateway_stats = gateway_stats
        # The running turns as followed from the events (None, or returning None:
        # the database works them out on each read, one probe per open session).
        self.running = running

    def snapshot(
        self,
        *,
        state: str | None = None,
        source: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Snapshot:
        """Exact counts of every open session, and one page of rows (``state``/``source``)."""
        after = decode_cursor(cursor) if cursor is not None else None
        # Counts and facts first, owners second: an owner seen in them is in the owners read.
        running = self._running()
        groups = open_groups(self.store, running)
        states = self.reaper.classify()
        owners = {s.owner_id: OwnerView(s.owner_id, s.info, s.verdict) for s in states}
        page = open_page(
            self.store,
            after=after,
            limit=limit + 1,
            source=source,
            state=state,
            dead_owners=dead_owners(owners),
            running=running,
        )
        now = self.store.clock.now()
        more = len(page) > limit
        page = page[:limit]
        return Snapshot(
            now,
            counts(groups, owners),
            derive_all(page, owners, now),
            encode_cursor(page[-1]) if more and page else None,
            owners,
        )

    def _running(self) -> frozenset[str] | None:
        """The running turns as of now: the followed set, moved by the events it has not
        seen yet (the feed lags commits by up to its poll), or None (ask the database)."""
        known = self.running() if self.running is not None else None
        if known is None:
            return None
        running, upto = known
        newer = events_after(self.store, upto, CATCH_UP_LIMIT)
        if len(newer) == CATCH_UP_LIMIT:
            return None  # far behind: the database works it out
        for event in newer:
            running = moved(running, event)
        return running

    def census(self) -> tuple[Census, int]:
        return self.reaper.breakdown()

    def census_dict(self) -> dict[str, Any]:
        census, hung = self.census()
        return {**census.to_dict(), "open_hung_owner": hung}
