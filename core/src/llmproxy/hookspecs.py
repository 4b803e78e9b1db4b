"""The hooks a plugin may implement, grouped by when they are called.

Registration hooks run once, when the plugin manager is built: each receives a ``register``
function and calls it for every thing it adds (the host validates and stores in one place).
Observer hooks run once per call, and only when some plugin implements them. Per-request work
never goes through pluggy: providers, stores, ledgers and policies are plain objects.

A plugin module writes::

    import llmproxy

    @llmproxy.hookimpl
    def register_providers(register):
        register("myprovider", MyProvider.from_settings)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from llmproxy.registry import (
        RegisterCache,
        RegisterCommand,
        RegisterHistoryStore,
        RegisterLedger,
        RegisterObserver,
        RegisterPolicy,
        RegisterPrice,
        RegisterProvider,
        RegisterTool,
    )
    from llmproxy.types import CallEvent

PROJECT = "llmproxy"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration: called once, at discovery -------------------------------------------------


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Register provider factories: ``register(name, factory, *, env=(), description="")``.

    ``factory(settings)`` receives a :class:`~llmproxy.registry.ProviderSettings` and returns a
    :class:`~llmproxy.provider.Provider`; it is called lazily, the first time a model of that
    provider is used. ``env`` names the variables the provider reads: the first one set fills
    ``settings.api_key`` (names ending in ``_URL`` fill ``settings.base_url`` instead) unless
    configuration gave one. Subclass :class:`~llmproxy.provider.BaseProvider` to implement one
    method.
    """


@hookspec
def register_history_stores(register: RegisterHistoryStore) -> None:
    """Register history stores by URL scheme: ``register(scheme, factory)``.

    ``factory(url, environ)`` receives the full URL (``sqlite:///path``) and the
    environment mapping the Proxy reads, and returns a
    :class:`~llmproxy.history.base.HistoryStore`.
    """


@hookspec
def register_ledgers(register: RegisterLedger) -> None:
    """Register budget ledgers by URL scheme: ``register(scheme, factory)``.

    ``factory(url, environ)`` returns a :class:`~llmproxy.budget.base.Ledger`.
    """


@hookspec
def register_caches(register: RegisterCache) -> None:
    """Register response caches by URL scheme: ``register(scheme, factory)``.

    ``factory(url, settings)`` receives the full URL (``sqlite:///path``) and a
    :class:`~llmproxy.cache.base.CacheSettings` (bounds, the environment, the clock), and
    returns a :class:`~llmproxy.cache.base.ResponseCache`.
    """


@hookspec
def register_budget_policies(register: RegisterPolicy) -> None:
    """Register budget policy kinds: ``register(kind, policy_class)``.

    The kind is the name configuration files use (``tokens``, ``requests_per_minute``); the
    class is built from the remaining keys of the configuration entry.
    """


@hookspec
def register_prices(register: RegisterPrice) -> None:
    """Register model prices over the default table (genai-prices): ``register(name, price)``.

    ``name`` is an exact ``provider/model``, or a pattern declared with
    ``register(name, price, pattern=True)`` (``*`` any run of characters, ``{date}`` a snapshot
    date: ``openai/gpt-5.4-mini-{date}``); a model is never priced by a prefix it merely starts
    with. ``price`` is a :class:`~llmproxy.pricing.Price` in USD per million tokens, with its
    ``as_of`` date (and, for a price announced to change, ``until`` and the ``then`` price).
    The configuration's ``[prices]`` wins over it; register only what genai-prices lacks or
    gets wrong.
    """


@hookspec
def register_tools(register: RegisterTool) -> None:
    """Register tools the model may call: ``register(tool)`` with a ``llmproxy.tools.Tool``.

    A plain function is made a tool from its type hints and docstring. Calls offer a registered
    tool by its name (``proxy.chat(..., tools=["name"])``); one name from two plugins is a
    PluginError.
    """


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Add subcommands to the ``llmproxy`` command: ``register(name, help, configure, run)``.

    ``configure(parser)`` adds the subcommand's arguments to its ``argparse`` parser;
    ``run(args)`` runs it and returns the exit status. Errors llmproxy raises on purpose are
    printed as one line, like the built-in commands'.
    """


@hookspec
def register_observers(register: RegisterObserver) -> None:
    """Register call observers that follow every call of every Proxy: ``register(observer)``.

    An observer is a :class:`llmproxy.observe.CallObserver`: its ``start_call(call)`` returns
    a :class:`~llmproxy.observe.CallTrace` that hears the call's steps (round trips to the
    stores, upstream attempts, a stream's first chunk, tool executions) and its end, or None
    to leave the call unobserved (then the call costs nothing more).
    """


# -- per-call hooks: called only when implemented -----------------------------------------------


@hookspec(firstresult=True)
def before_tool_call(
    tool_name: str, arguments: dict[str, Any], session_id: str | None
) -> bool | None:
    """Veto a tool call: return False to block it (stops at the first non-None result)."""


@hookspec
def on_response(event: CallEvent) -> None:
    """Observe a finished call (one event per call, streams included)."""


@hookspec
def on_error(event: CallEvent) -> None:
    """Observe a failed call; ``event.error`` holds the exception."""
