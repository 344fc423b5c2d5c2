"""Which background loops run on which store, so that closing the store stops them.

Its own small module so that the owner (which stops them) and the reaper loop
(which registers itself) need not import each other.
"""

from __future__ import annotations

import weakref
from typing import Protocol


class Stoppable(Protocol):
    """A loop that can be told to stop (and waits for its thread)."""

    def stop(self, wait: float = 5.0) -> None:
        """Stop the loop and join its thread (up to ``wait`` seconds)."""
        ...


# Keyed by store, weak both ways: neither the store nor a loop is kept alive by this.
_loops: weakref.WeakKeyDictionary[object, weakref.WeakSet[Stoppable]] = weakref.WeakKeyDictionary()


def register(store: object, loop: Stoppable) -> None:
    """``loop`` runs on ``store``: :func:`stop_loops` stops it when the store closes."""
    _loops.setdefault(store, weakref.WeakSet()).add(loop)


def stop_loops(store: object) -> None:
    """Stop every loop registered on ``store`` (it is being closed)."""
    for loop in list(_loops.pop(store, ())):
        loop.stop()
