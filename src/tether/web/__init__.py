"""The live view: a read-only HTTP API, server-sent events, Prometheus metrics, a dashboard.

Served by ``tether serve`` on the gateway's port (:func:`for_gateway`) and by
``tether web`` on its own (:func:`standalone`), with the gateway's token,
Host allowlist and Origin checks. See README.md, "Live view".
"""

from __future__ import annotations

from ..compose import Store
from ..gateway.runtime import Gateway
from ..gateway.security import Policy
from .api import API, Web
from .feed import EventHub
from .live import STATES, LiveRow, derive
from .service import LiveView

__all__ = [
    "API",
    "STATES",
    "EventHub",
    "LiveRow",
    "LiveView",
    "Web",
    "derive",
    "for_gateway",
    "standalone",
]


def for_gateway(gateway: Gateway, policy: Policy) -> Web:
    """The live view mounted in a gateway (``tether serve``): its numbers in /metrics."""
    return Web(LiveView(gateway.store, gateway_stats=gateway.stats), policy)


def standalone(store: Store, policy: Policy) -> Web:
    """The live view on its own (``tether web``): one page for every process on the store."""
    return Web(LiveView(store), policy)
