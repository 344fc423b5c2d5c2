"""``/metrics``: Prometheus text, read from the store at scrape time.

Counters (ended, reaped) are counted in the store, so they keep counting
across restarts and agree with ``tether doctor --json``; gauges are read at
scrape time. Gateway numbers appear when the view is mounted in ``tether serve``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .. import gcpolicy
from ..interop.hermes.mirror import mirrors
from ..model import Census
from .live import STATES
from .service import LiveView


class StoreCollector(Collector):
    def __init__(self, view: LiveView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        census, hung = self.view.census()
        snap = self.view.snapshot(limit=1)  # the counts are exact; no rows needed
        c = snap.counts
        yield from _census(census, hung)
        open_ = GaugeMetricFamily(
            "tether_sessions_open",
            "Open sessions by source and live state.",
            labels=["source", "state"],
        )
        for source, by_state in c["by_source"].items():
            for state in STATES:
                open_.add_metric([source, state], by_state.get(state, 0))
        yield open_
        detached = GaugeMetricFamily(
            "tether_sessions_detached", "Open sessions with no client attached."
        )
        detached.add_metric([], c["by_state"]["detached"])
        yield detached
        working = GaugeMetricFamily("tether_sessions_working", "Open sessions with a turn running.")
        working.add_metric([], c["by_state"]["working"])
        yield working
        owners = GaugeMetricFamily(
            "tether_owners", "Owners of open sessions by liveness.", labels=["state"]
        )
        alive = [o for o in snap.owners.values() if o.verdict.alive]
        owners.add_metric(["live"], len(alive) + snap.alive_elsewhere)
        owners.add_metric(["dead"], len(snap.owners) - len(alive))
        yield owners
        beat = GaugeMetricFamily(
            "tether_owner_heartbeat_age_seconds",
            "The oldest heartbeat among owners of open sessions.",
        )
        ages = [snap.now - o.info.heartbeat_at for o in snap.owners.values() if o.info]
        if snap.oldest_elsewhere is not None:
            ages.append(snap.now - snap.oldest_elsewhere)
        beat.add_metric([], max(0.0, max(ages)) if ages else 0.0)
        yield beat
        oldest = GaugeMetricFamily(
            "tether_oldest_open_session_age_seconds", "Age of the oldest open session."
        )
        first = census.oldest_open
        oldest.add_metric([], max(0.0, snap.now - first.created_at) if first else 0.0)
        yield oldest
        stats = self.view.gateway_stats() if self.view.gateway_stats else None
        if stats is not None:
            for key, name, doc in (
                ("connections", "tether_gateway_connections", "Open gateway connections."),
                ("running_turns", "tether_gateway_turns_running", "Turns running in this gateway."),
                ("live_sessions", "tether_gateway_live_sessions", "Sessions live in this gateway."),
                (
                    "replay_events",
                    "tether_gateway_replay_buffer_events",
                    "Events held in replay buffers.",
                ),
                (
                    "replay_bytes",
                    "tether_gateway_replay_buffer_bytes",
                    "Bytes held in replay buffers.",
                ),
            ):
                if key in stats:
                    g = GaugeMetricFamily(name, doc)
                    g.add_metric([], float(stats[key]))
                    yield g
        yield from _mirrors()
        yield from _collector()


def _collector() -> Iterator[Metric]:
    """This process's garbage collector, once tuned for a server (see tether.gcpolicy)."""
    stats = gcpolicy.stats()
    if not stats:
        return
    runs = CounterMetricFamily("tether_gc_collections", "Garbage collections in this process.")
    runs.add_metric([], stats["gc_collections"])
    yield runs
    pause = GaugeMetricFamily(
        "tether_gc_pause_max_seconds", "Longest garbage collection in this process."
    )
    pause.add_metric([], stats["gc_pause_max_ms"] / 1000)
    yield pause
    frozen = GaugeMetricFamily(
        "tether_gc_frozen_objects", "Objects of start-up the collector never walks."
    )
    frozen.add_metric([], stats["gc_frozen_objects"])
    yield frozen


def _mirrors() -> Iterator[Metric]:
    """The Hermes mirrors running in this process (``tether serve --mirror-hermes``)."""
    running = mirrors()
    if not running:
        return
    lag = GaugeMetricFamily(
        "tether_hermes_mirror_lag_seconds",
        "How far behind its Hermes stores a mirror's last pass was.",
        labels=["stores"],
    )
    cursor = GaugeMetricFamily(
        "tether_hermes_mirror_cursor",
        "The greatest Hermes message id mirrored (summed over the mirror's stores).",
        labels=["stores"],
    )
    passes = CounterMetricFamily(
        "tether_hermes_mirror_passes", "Mirror passes that applied changes.", labels=["stores"]
    )
    for m in running:
        status = m.status()
        label = ",".join(str(p) for p in m.paths)
        lag.add_metric([label], status.lag_seconds)
        cursor.add_metric([label], float(status.cursor))
        passes.add_metric([label], float(status.passes))
    yield lag
    yield cursor
    yield passes


def _census(c: Census, hung: int) -> Iterator[Metric]:
    sessions = GaugeMetricFamily(
        "tether_sessions", "Sessions in the store by state.", labels=["state"]
    )
    sessions.add_metric(["open"], c.open)
    sessions.add_metric(["ended"], c.ended)
    yield sessions
    owner = GaugeMetricFamily(
        "tether_sessions_open_owner", "Open sessions by their owner's liveness.", labels=["owner"]
    )
    for label, n in (
        ("live", c.open_live_owner),
        ("dead", c.open_dead_owner),
        ("none", c.open_no_owner),
        ("external", c.open_external),
        ("hung", hung),
    ):
        owner.add_metric([label], n)
    yield owner
    ghosts = GaugeMetricFamily("tether_sessions_ghosts", "Sessions without messages.")
    ghosts.add_metric([], c.ghosts)
    yield ghosts
    ended = CounterMetricFamily(
        "tether_sessions_ended",
        "Ended sessions by source and end reason.",
        labels=["source", "reason"],
    )
    reaped = CounterMetricFamily(
        "tether_sessions_reaped", "Sessions reaped, by source.", labels=["source"]
    )
    for source, sc in c.by_source.items():
        for reason, n in sc.end_reasons.items():
            ended.add_metric([source, reason], n)
        reaped.add_metric([source], sc.end_reasons.get("reaped", 0))
    yield ended
    yield reaped


def render(view: LiveView) -> bytes:
    """The exposition text (a registry per scrape: nothing global, nothing cached)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(view))
    return generate_latest(registry)
