"""What the API reads: the live snapshot (facts + owner verdicts) and the census."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..compose import Store
from ..liveness import Reaper
from ..model import Census
from ..store.views import open_session_facts
from .live import LiveRow, OwnerView, derive_all


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    rows: list[LiveRow]
    owners: dict[str, OwnerView] = field(default_factory=dict)


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
    ) -> None:
        self.store = store
        self.reaper = reaper or Reaper(store)
        self.gateway_stats = gateway_stats

    def snapshot(self) -> Snapshot:
        # Facts first, owners second: an owner seen in the facts is in the owners read.
        facts = open_session_facts(self.store)
        owners = {
            s.owner_id: OwnerView(s.owner_id, s.info, s.verdict) for s in self.reaper.classify()
        }
        now = self.store.clock.now()
        return Snapshot(now, derive_all(facts, owners, now), owners)

    def census(self) -> tuple[Census, int]:
        return self.reaper.breakdown()

    def census_dict(self) -> dict[str, Any]:
        census, hung = self.census()
        return {**census.to_dict(), "open_hung_owner": hung}
