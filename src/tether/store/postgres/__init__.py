"""The PostgreSQL backend, for fleets of hosts sharing one store (psycopg 3).

``tether.open_store("postgresql://user@host/db?schema=tether")`` uses it; see
:mod:`.url` for the URL's options and :mod:`.listen` for following lifecycle
events live.
"""

from .backend import CLOCK_SKEW_WARNING, PostgresBackend
from .listen import EventListener, LifecycleEvent

__all__ = ["CLOCK_SKEW_WARNING", "EventListener", "LifecycleEvent", "PostgresBackend"]
