"""What plugins register, validated and kept in one place."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
from attrs import frozen

from llmproxy.budget.base import Ledger
from llmproxy.cache.base import CacheSettings, ResponseCache
from llmproxy.errors import ConfigError, PluginError
from llmproxy.history.base import HistoryStore
from llmproxy.pricing import Price, PriceTable
from llmproxy.provider import Provider
from llmproxy.secret import Secret
from llmproxy.tools import Tool

BUILTIN_COMMANDS = frozenset(("chat", "plugins", "history", "usage", "prices"))
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


@frozen
class ProviderSettings:
    """What a provider factory receives: its configuration and the environment to read.

    ``options`` holds the keys of the provider's ``[providers.NAME]`` configuration table other
    than the common ones; ``environ`` is the mapping the Proxy was built from (``os.environ`` by
    default), so tests never need to touch the real environment.
    """

    name: str
    api_key: Secret | None = None
    base_url: str | None = None
    timeout: float | None = None
    options: Mapping[str, Any] = attrs.Factory(dict)
    environ: Mapping[str, str] = attrs.Factory(dict)


ProviderFactory = Callable[[ProviderSettings], Provider]
StoreFactory = Callable[[str, Mapping[str, str]], HistoryStore]
LedgerFactory = Callable[[str, Mapping[str, str]], Ledger]
CacheFactory = Callable[[str, CacheSettings], ResponseCache]


class RegisterProvider(Protocol):
    """The ``register`` function passed to ``register_providers``."""

    def __call__(
        self,
        name: str,
        factory: ProviderFactory,
        *,
        description: str = "",
        env: tuple[str, ...] = (),
    ) -> None:
        """Register a provider factory under ``name`` (the prefix of ``name/model``).

        ``env`` names the environment variables the provider reads; they complete the settings
        the factory gets (see :meth:`ProviderEntry.complete`).
        """


class RegisterHistoryStore(Protocol):
    """The ``register`` function passed to ``register_history_stores``."""

    def __call__(self, scheme: str, factory: StoreFactory) -> None:
        """Register a history store factory for a URL scheme."""


class RegisterLedger(Protocol):
    """The ``register`` function passed to ``register_ledgers``."""

    def __call__(self, scheme: str, factory: LedgerFactory) -> None:
        """Register a ledger factory for a URL scheme."""


class RegisterCache(Protocol):
    """The ``register`` function passed to ``register_caches``."""

    def __call__(self, scheme: str, factory: CacheFactory) -> None:
        """Register a response cache factory for a URL scheme."""


class RegisterPolicy(Protocol):
    """The ``register`` function passed to ``register_budget_policies``."""

    def __call__(self, kind: str, policy_class: type[Any]) -> None:
        """Register a budget policy class under the kind configuration files use."""


class RegisterPrice(Protocol):
    """The ``register`` function passed to ``register_prices``."""

    def __call__(self, name: str, price: Price, *, pattern: bool = False) -> None:
        """Register the price of ``provider/model``, or of a pattern declared with ``pattern``.

        A pattern's ``*`` matches any run of characters and ``{date}`` a snapshot date
        (``openai/gpt-5.4-mini-{date}``); see :mod:`llmproxy.pricing`.
        """


@frozen
class Command:
    """A subcommand a plugin adds to the ``llmproxy`` command."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    plugin: str


class RegisterCommand(Protocol):
    """The ``register`` function passed to ``register_commands``."""

    def __call__(
        self,
        name: str,
        help: str,
        configure: Callable[[argparse.ArgumentParser], None],
        run: Callable[[argparse.Namespace], int],
    ) -> None:
        """Register a subcommand of ``llmproxy``."""


class RegisterTool(Protocol):
    """The ``register`` function passed to ``register_tools``."""

    def __call__(self, tool: Any) -> None:
        """Register a :class:`~llmproxy.tools.Tool` (or a function, made one by its hints)."""


class RegisterObserver(Protocol):
    """The ``register`` function passed to ``register_observers``."""

    def __call__(self, observer: Any) -> None:
        """Register a call observer (:class:`llmproxy.observe.CallObserver`)."""


@frozen
class ProviderEntry:
    """A registered provider: its factory, the plugin that registered it, and its env variables.

    ``make`` is the factory as the plugin registered it; :meth:`factory` is what the Proxy
    calls: it completes the settings from ``env`` first (see :meth:`complete`).
    """

    name: str
    make: ProviderFactory
    plugin: str
    description: str = ""
    env: tuple[str, ...] = ()

    def complete(self, settings: ProviderSettings) -> ProviderSettings:
        """Fill what configuration left unset from the registered ``env`` variables.

        A variable whose name ends in ``_URL`` fills ``base_url``; any other fills ``api_key``.
        Among several of a kind, the first one set (non-empty) in ``settings.environ`` wins;
        a value from configuration (the ``[providers.NAME]`` table, or code) always wins.

        >>> entry = ProviderEntry("p", lambda s: s, "plugin", env=("P_KEY", "P_ALT", "P_URL"))
        >>> done = entry.complete(ProviderSettings("p", environ={"P_ALT": "k2", "P_URL": "u"}))
        >>> done.api_key.get(), done.base_url
        ('k2', 'u')
        """
        environ = settings.environ
        changes: dict[str, Any] = {}
        if settings.api_key is None:
            key = _first_set(environ, (n for n in self.env if not n.endswith("_URL")))
            if key is not None:
                changes["api_key"] = Secret(key)
        if settings.base_url is None:
            url = _first_set(environ, (n for n in self.env if n.endswith("_URL")))
            if url is not None:
                changes["base_url"] = url
        return attrs.evolve(settings, **changes) if changes else settings

    def factory(self, settings: ProviderSettings) -> Provider:
        """Create the provider from ``settings`` completed from the environment."""
        return self.make(self.complete(settings))


def _first_set(environ: Mapping[str, str], names: Iterable[str]) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


@attrs.define
class Registry:
    """Everything the loaded plugins registered, by kind.

    ``registered_by`` maps a plugin name to the things it registered, for ``llmproxy plugins``.
    """

    providers: dict[str, ProviderEntry] = attrs.Factory(dict)
    history_stores: dict[str, StoreFactory] = attrs.Factory(dict)
    ledgers: dict[str, LedgerFactory] = attrs.Factory(dict)
    caches: dict[str, CacheFactory] = attrs.Factory(dict)
    policies: dict[str, type[Any]] = attrs.Factory(dict)
    tools: dict[str, Any] = attrs.Factory(dict)
    _tool_owners: dict[str, str] = attrs.Factory(dict)
    prices: PriceTable = attrs.Factory(PriceTable)
    commands: dict[str, Command] = attrs.Factory(dict)
    observers: list[Any] = attrs.Factory(list)
    registered_by: dict[str, list[str]] = attrs.Factory(dict)

    def _note(self, plugin: str, what: str) -> None:
        self.registered_by.setdefault(plugin, []).append(what)

    def provider_register(self, plugin: str) -> RegisterProvider:
        """Return the ``register`` function handed to one plugin's ``register_providers``."""

        def register(
            name: str, factory: ProviderFactory, *, description: str = "", env: tuple[str, ...] = ()
        ) -> None:
            _check_name(plugin, "provider", name)
            if not callable(factory):
                raise PluginError(
                    f"plugin '{plugin}' registered provider '{name}' with a non-callable factory",
                    plugin=plugin,
                )
            if name in self.providers:
                other = self.providers[name].plugin
                raise PluginError(
                    f"provider '{name}' is registered by both '{other}' and '{plugin}';"
                    " block one with LLMPROXY_PLUGINS",
                    plugin=plugin,
                )
            self.providers[name] = ProviderEntry(name, factory, plugin, description, tuple(env))
            self._note(plugin, f"provider {name}")

        return register

    def store_register(self, plugin: str) -> RegisterHistoryStore:
        """Return the ``register`` function handed to one plugin's ``register_history_stores``."""

        def register(scheme: str, factory: StoreFactory) -> None:
            _check_name(plugin, "history store scheme", scheme)
            self.history_stores[scheme] = factory
            self._note(plugin, f"history store {scheme}://")

        return register

    def ledger_register(self, plugin: str) -> RegisterLedger:
        """Return the ``register`` function handed to one plugin's ``register_ledgers``."""

        def register(scheme: str, factory: LedgerFactory) -> None:
            _check_name(plugin, "ledger scheme", scheme)
            self.ledgers[scheme] = factory
            self._note(plugin, f"ledger {scheme}://")

        return register

    def cache_register(self, plugin: str) -> RegisterCache:
        """Return the ``register`` function handed to one plugin's ``register_caches``."""

        def register(scheme: str, factory: CacheFactory) -> None:
            _check_name(plugin, "response cache scheme", scheme)
            self.caches[scheme] = factory
            self._note(plugin, f"response cache {scheme}://")

        return register

    def policy_register(self, plugin: str) -> RegisterPolicy:
        """Return the ``register`` function handed to one plugin's ``register_budget_policies``."""

        def register(kind: str, policy_class: type[Any]) -> None:
            _check_name(plugin, "budget policy kind", kind)
            self.policies[kind] = policy_class
            self._note(plugin, f"budget policy {kind}")

        return register

    def price_register(self, plugin: str) -> RegisterPrice:
        """Return the ``register`` function handed to one plugin's ``register_prices``."""

        def register(name: str, price: Price, *, pattern: bool = False) -> None:
            if not isinstance(price, Price):
                raise PluginError(
                    f"plugin '{plugin}' registered price {name!r} that is not a Price",
                    plugin=plugin,
                )
            try:
                self.prices.set(name, price, pattern=pattern, origin=f"plugin {plugin}")
            except ConfigError as exc:
                raise PluginError(f"plugin '{plugin}': {exc}", plugin=plugin) from None
            self._note(plugin, f"price {name}")

        return register

    def command_register(self, plugin: str) -> RegisterCommand:
        """Return the ``register`` function handed to one plugin's ``register_commands``."""

        def register(
            name: str,
            help: str,
            configure: Callable[[argparse.ArgumentParser], None],
            run: Callable[[argparse.Namespace], int],
        ) -> None:
            _check_name(plugin, "command", name)
            if name in self.commands or name in BUILTIN_COMMANDS:
                raise PluginError(
                    f"plugin '{plugin}' registered command {name!r}, which exists", plugin=plugin
                )
            self.commands[name] = Command(name, help, configure, run, plugin)
            self._note(plugin, f"command {name}")

        return register

    def tool_register(self, plugin: str) -> RegisterTool:
        """Return the ``register`` function handed to one plugin's ``register_tools``."""

        def register(tool: Any) -> None:
            if not isinstance(tool, Tool):
                if not callable(tool):
                    raise PluginError(
                        f"plugin '{plugin}' registered {tool!r}, which is neither a"
                        " llmproxy.tools.Tool nor a function",
                        plugin=plugin,
                    )
                try:
                    tool = Tool.from_function(tool)
                except ConfigError as exc:
                    raise PluginError(
                        f"plugin '{plugin}' registered a tool that is not valid: {exc}",
                        plugin=plugin,
                    ) from None
            name = tool.name
            owner = self._tool_owners.get(name)
            if owner is not None and owner != plugin:
                raise PluginError(
                    f"tool '{name}' is registered by both '{owner}' and '{plugin}';"
                    " block one with LLMPROXY_PLUGINS",
                    plugin=plugin,
                )
            self._tool_owners[name] = plugin
            self.tools[name] = tool
            self._note(plugin, f"tool {name}")

        return register

    def observer_register(self, plugin: str) -> RegisterObserver:
        """Return the ``register`` function handed to one plugin's ``register_observers``."""

        def register(observer: Any) -> None:
            if not callable(getattr(observer, "start_call", None)):
                raise PluginError(
                    f"plugin '{plugin}' registered {observer!r} as an observer, but it has no"
                    " start_call method (see llmproxy.observe.CallObserver)",
                    plugin=plugin,
                )
            self.observers.append(observer)
            self._note(plugin, f"observer {type(observer).__name__}")

        return register


def _check_name(plugin: str, kind: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(
            f"plugin '{plugin}' registered {kind} {name!r}: names are lower-case letters, digits,"
            " '_', '.', '-', starting with a letter",
            plugin=plugin,
        )
