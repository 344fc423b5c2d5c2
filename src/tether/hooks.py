"""Plugin hooks (pluggy).

Plugins observe the lifecycle; they never control it. Each implementation is
called on its own, so one that raises is logged and the others (and the end
being recorded) go ahead.

Write a plugin::

    import tether

    class AuditPlugin:
        @tether.hookimpl
        def on_session_end(self, session, reason, interrupted):
            print(session.id, reason, interrupted)

    store.plugins.register(AuditPlugin())

or publish it through the ``tether.plugins`` entry-point group so every store
loads it.
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

from .model import Session

PROJECT = "tether"
ENTRYPOINT_GROUP = "tether.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

log = logging.getLogger("tether.hooks")


class HookSpecs:
    """The hooks a plugin may implement."""

    @hookspec
    def on_session_start(self, session: Session) -> None:
        """A session was written to the store (its first message, or ``persist()``)."""

    @hookspec
    def on_session_end(self, session: Session, reason: str, interrupted: bool) -> None:
        """A session ended. Called once, in the process that ended it.

        ``interrupted`` is True when the session did not finish on its owner's
        terms: an error, a signal, process exit, reaping or an external end.
        ``session`` is the snapshot taken as it ended.
        """


class Plugins:
    """A store's plugin manager with fault-isolated hook calls."""

    def __init__(self, load_entrypoints: bool = True) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(HookSpecs)
        if load_entrypoints:
            try:
                self._pm.load_setuptools_entrypoints(ENTRYPOINT_GROUP)
            except Exception:  # a broken plugin must not stop the store from opening
                log.exception("could not load tether plugins from entry points")

    def register(self, plugin: Any, name: str | None = None) -> None:
        self._pm.register(plugin, name=name)

    def unregister(self, plugin: Any) -> None:
        self._pm.unregister(plugin)

    def list(self) -> list[Any]:
        return list(self._pm.get_plugins())

    def implemented(self, hook: str) -> bool:
        """True if some plugin implements ``hook`` (lets callers skip building arguments)."""
        return bool(getattr(self._pm.hook, hook).get_hookimpls())

    def call(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of ``hook``; log and swallow their errors."""
        caller = getattr(self._pm.hook, hook)
        impls = caller.get_hookimpls()
        if not impls:
            return
        for impl in reversed(impls):  # pluggy's own order: last registered first
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception:
                log.exception("tether plugin %s failed in %s", impl.plugin_name, hook)
