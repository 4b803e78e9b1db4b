"""Plugin discovery: the built-ins, then every ``llmproxy`` entry point, once per process.

``LLMPROXY_PLUGINS`` limits which installed plugins load: a comma list of entry-point or
distribution names; set but empty, it loads none (the built-ins always load). A plugin that
fails to import, or whose registration hook raises, is reported as a :class:`PluginError`
naming it, and the others still load.

``LLMPROXY_TRACE_PLUGINS=1`` logs every hook call (logger ``llmproxy.plugins``, level INFO; to
stderr when the application set up no logging) with the plugins it reached and how long it
took, through pluggy's hook call monitoring (as datasette's ``DATASETTE_TRACE_PLUGINS`` does):
the registration hooks once per plugin at discovery, the per-call hooks (``on_response``,
``before_tool_call``...) at every call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import importlib_metadata
import pluggy
from attrs import frozen

from llmproxy import hookspecs
from llmproxy.errors import PluginError
from llmproxy.registry import Registry

log = logging.getLogger("llmproxy.plugins")

ENTRY_POINT_GROUP = "llmproxy"
DEFAULT_PLUGINS: tuple[str, ...] = ("llmproxy.builtins",)


@frozen
class PluginInfo:
    """One plugin as ``llmproxy plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    registers: tuple[str, ...]
    error: str | None = None


def make_plugin_manager() -> pluggy.PluginManager:
    """Return a plugin manager with llmproxy's hookspecs and nothing registered."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def tracing(environ: Mapping[str, str]) -> bool:
    """Whether ``LLMPROXY_TRACE_PLUGINS`` asks for every hook call to be logged."""
    return environ.get("LLMPROXY_TRACE_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def trace_hook_calls(pm: pluggy.PluginManager) -> Callable[[], None]:
    """Log every hook call ``pm`` makes with its plugins and duration; returns the undo."""
    local = threading.local()

    def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        stack.append(time.perf_counter())

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        took = time.perf_counter() - local.stack.pop()
        plugins = ", ".join(impl.plugin_name for impl in hook_impls) or "no plugin"
        failed = " (raised)" if outcome.exception is not None else ""
        log.info("hook %s: %s in %.3f ms%s", hook_name, plugins, took * 1000, failed)

    undo: Callable[[], None] = pm.add_hookcall_monitoring(before, after)
    return undo


def _show_trace_log() -> None:
    """Let the trace reach stderr when the application set up no logging (the CLI does not)."""
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        log.addHandler(handler)


def _selected(environ: Mapping[str, str]) -> set[str] | None:
    raw = environ.get("LLMPROXY_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


class Plugins:
    """The loaded plugins: the pluggy manager, what they registered, and what failed.

    Build one with :meth:`load` (cached per ``LLMPROXY_PLUGINS`` value) or directly, passing
    ``extra`` plugin objects (a module or class with hook implementations) to test a plugin
    without installing it.
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        entry_points: bool = True,
        extra: Iterable[object] = (),
        defaults: Iterable[str] = DEFAULT_PLUGINS,
    ) -> None:
        import os

        env = os.environ if environ is None else environ
        self.pm = make_plugin_manager()
        self.tracing = tracing(env)
        if self.tracing:
            _show_trace_log()
            trace_hook_calls(self.pm)
        self.registry = Registry()
        self.errors: list[PluginError] = []
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        for module_name in defaults:
            module = __import__(module_name, fromlist=["_"])
            self.pm.register(module, name=module_name)
            self._dists[module_name] = ("llmproxy", _version("llmproxy"))
        if entry_points:
            self._load_entry_points(_selected(env))
        for index, plugin in enumerate(extra):
            name = getattr(plugin, "__name__", None) or f"extra-{index}"
            self.pm.register(plugin, name=name)
        self.pm.check_pending()
        self._collect()

    def _load_entry_points(self, selected: set[str] | None) -> None:
        names: set[str] = set()
        dists: set[str] = set()
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            dist_name = dist.name if dist is not None else None
            names.add(ep.name)
            if dist_name is not None:
                dists.add(dist_name)
            if selected is not None and ep.name not in selected and dist_name not in selected:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            self._dists[ep.name] = (dist_name, dist.version if dist is not None else None)
            try:
                plugin = ep.load()
            except Exception as exc:  # any import failure must name the plugin, not kill the host
                self.errors.append(
                    PluginError(
                        f"plugin '{ep.name}' ({dist_name or 'unknown distribution'}) failed to"
                        f" import: {type(exc).__name__}: {exc}",
                        plugin=ep.name,
                    )
                )
                continue
            self.pm.register(plugin, name=ep.name)
        for name in sorted((selected or set()) - names - dists):
            # A typo would otherwise just leave the plugin out, and its commands, providers or
            # stores missing with no word of why.
            self.errors.append(
                PluginError(
                    f"LLMPROXY_PLUGINS names '{name}', which is no installed plugin (installed:"
                    f" {', '.join(sorted(names)) or 'none'}, or their distributions' names);"
                    " check its spelling",
                    plugin=name,
                )
            )

    def _collect(self) -> None:
        reg = self.registry
        hooks: list[tuple[str, Callable[[str], Any]]] = [
            ("register_providers", reg.provider_register),
            ("register_history_stores", reg.store_register),
            ("register_ledgers", reg.ledger_register),
            ("register_caches", reg.cache_register),
            ("register_budget_policies", reg.policy_register),
            ("register_tools", reg.tool_register),
            ("register_prices", reg.price_register),
            ("register_commands", reg.command_register),
            ("register_observers", reg.observer_register),
        ]
        for hook_name, make_register in hooks:
            caller: pluggy.HookCaller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                plugin_name = impl.plugin_name
                started = time.perf_counter()
                try:
                    impl.function(register=make_register(plugin_name))
                    if self.tracing:  # called directly, not through the monitored hook
                        took = (time.perf_counter() - started) * 1000
                        log.info("hook %s: %s in %.3f ms", hook_name, plugin_name, took)
                except PluginError as exc:
                    self.errors.append(exc)
                except Exception as exc:
                    self.errors.append(
                        PluginError(
                            f"plugin '{plugin_name}' failed in {hook_name}:"
                            f" {type(exc).__name__}: {exc}",
                            plugin=plugin_name,
                        )
                    )
        self.observes = bool(
            self.pm.hook.on_response.get_hookimpls() or self.pm.hook.on_error.get_hookimpls()
        )

    def error_for(self, plugin: str) -> PluginError | None:
        """Return the load error of a plugin, if it failed."""
        for error in self.errors:
            if error.plugin == plugin:
                return error
        return None

    def infos(self) -> list[PluginInfo]:
        """Describe every plugin, loaded or failed, for ``llmproxy plugins``."""
        infos: list[PluginInfo] = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self._dists.get(name, (None, None))
            infos.append(
                PluginInfo(name, dist, version, tuple(self.registry.registered_by.get(name, ())))
            )
        for error in self.errors:
            if error.plugin is not None and self.pm.get_plugin(error.plugin) is None:
                dist, version = self._dists.get(error.plugin, (None, None))
                infos.append(PluginInfo(error.plugin, dist, version, (), str(error)))
            elif error.plugin is not None:
                infos = [
                    PluginInfo(i.name, i.distribution, i.version, i.registers, str(error))
                    if i.name == error.plugin
                    else i
                    for i in infos
                ]
        return infos


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


_cache: dict[str | None, Plugins] = {}
_cache_lock = threading.Lock()


def load_plugins(environ: Mapping[str, str] | None = None) -> Plugins:
    """Return the process-wide :class:`Plugins` for this ``LLMPROXY_PLUGINS`` value."""
    import os

    env = os.environ if environ is None else environ
    key = env.get("LLMPROXY_PLUGINS")
    with _cache_lock:
        plugins = _cache.get(key)
        if plugins is None:
            plugins = _cache[key] = Plugins(environ=env)
        return plugins
