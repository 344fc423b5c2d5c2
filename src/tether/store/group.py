"""Group commit: several independent writes of one thread in one transaction.

A process that funnels its writes through one thread (the gateway's writer)
can commit every queued write in one transaction instead of one after
another: :func:`write_group` runs each call (an ordinary store call, say a
handle's ``append``) with the backend in *group* mode, where each
``backend.write`` it makes becomes a savepoint of one shared transaction, and
commits once at the end.

The contract, per call:

* its result (or exception) is returned only once the shared transaction has
  committed, so a caller that acknowledges on it still acknowledges only what
  is durable;
* a call that raises is rolled back to its savepoint alone: the others commit;
* if the shared transaction itself cannot go on (an error that is not the
  call's own, such as a statement failing with an I/O error, or the commit
  failing) nothing of it is kept, and :func:`write_group` returns ``None``:
  the caller runs every call again on its own, as if there had been no group.

So a call must be one that may be run again after its transaction was rolled
back (an idempotency-keyed append, an event, a detach mark), and must make
nothing visible outside the database before it returns: only the database
and its caller learn of it. Both backends offer it (SQLite: savepoints in one
``BEGIN IMMEDIATE``; PostgreSQL: savepoints in one transaction on one pooled
connection, not on the main thread); one without it answers ``None`` at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .backend import Backend


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call of a committed group gave: its result, or the exception it raised."""

    result: Any = None
    error: BaseException | None = None


class _WriteGroup(Protocol):
    def __call__(self, calls: Sequence[Callable[[], Any]]) -> list[Outcome] | None: ...


def run_calls(calls: Sequence[Callable[[], Any]], broken: Callable[[], bool]) -> list[Outcome]:
    """Run ``calls`` in order inside a backend's open group transaction, each one's
    result or error kept; stop at the first error after which ``broken()`` says the
    transaction itself is spoiled (the backend then rolls it back and returns None)."""
    outcomes: list[Outcome] = []
    for call in calls:
        try:
            outcomes.append(Outcome(call()))
        except Exception as exc:
            if broken():
                break
            outcomes.append(Outcome(error=exc))
    return outcomes


def can_group(backend: Backend) -> bool:
    """Does ``backend`` commit several writes together (:func:`write_group`)?"""
    return getattr(backend, "write_group", None) is not None


def write_group(backend: Backend, calls: Sequence[Callable[[], Any]]) -> list[Outcome] | None:
    """Run ``calls`` (on this thread) in one write transaction; their outcomes once it
    committed, in order, or ``None`` if it could not commit (or the backend cannot
    group): then nothing of it was kept, and each call should be run on its own."""
    grouped: _WriteGroup | None = getattr(backend, "write_group", None)
    if grouped is None or not calls:
        return None
    return grouped(calls)
