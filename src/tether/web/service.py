"""What the API reads: the live snapshot (facts + owner verdicts) and the census."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..clock import SystemClock
from ..compose import Store
from ..errors import InvalidInputError
from ..liveness import Reaper
from ..liveness.policy import ALIVE
from ..model import Census
from ..store.views import LiveFacts, OwnerJudging, OwnerRow, live_read
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
    # The owners judged one by one (on this host, stale, or missing), and those the
    # database found alive (another host, a heartbeat within the lease): how many,
    # and the oldest heartbeat among them.
    owners: dict[str, OwnerView] = field(default_factory=dict)
    alive_elsewhere: int = 0
    oldest_elsewhere: float | None = None


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
        reaper = self.reaper
        # As Reaper.classify: one pause observation per judgement, and heartbeat ages
        # on the clock they are stamped with (the server's on PostgreSQL, unless the
        # reaper runs on a clock of its own, as tests do).
        quiet_for = reaper.pauses.observe(wall=reaper.clock.now(), mono=reaper.clock.monotonic())
        owners: dict[str, OwnerView] = {}

        def judge(now: float, rows: list[OwnerRow]) -> list[str]:
            owners.clear()  # a retried read judges again
            for owner_id, info, _ in rows:
                verdict = reaper.verdict(owner_id, info, now, quiet_for)
                owners[owner_id] = OwnerView(owner_id, info, verdict)
            return dead_owners(owners)

        judging = OwnerJudging(
            host=reaper.identity.host,
            grace=reaper.ttl or 0.0,
            server_time=bool(self.store.server_clock and isinstance(reaper.clock, SystemClock)),
            now=reaper.clock.now,
            judge=judge,
        )
        # One read: the followed turns caught up, the counts (owners that cannot be
        # dead settled in the database, the others judged here), and the page
        # filtered by the same verdicts.
        read = live_read(
            self.store,
            judging,
            followed=self.running() if self.running is not None else None,
            advance=moved,
            catch_up=CATCH_UP_LIMIT,
            after=after,
            limit=limit + 1,
            source=source,
            state=state,
        )
        now = self.store.clock.now()
        more = len(read.page) > limit
        page = read.page[:limit]
        shown = dict(owners)
        for owner_id, info in read.page_owners.items():
            if owner_id not in shown:  # counted alive in the database: policy.judge's ALIVE
                shown[owner_id] = OwnerView(owner_id, info, ALIVE)
        return Snapshot(
            now,
            counts(read.groups, owners),
            derive_all(page, shown, now),
            encode_cursor(page[-1]) if more and page else None,
            owners,
            read.alive_owners,
            read.oldest_alive_heartbeat,
        )

    def census(self) -> tuple[Census, int]:
        return self.reaper.breakdown()

    def census_dict(self) -> dict[str, Any]:
        census, hung = self.census()
        return {**census.to_dict(), "open_hung_owner": hung}
