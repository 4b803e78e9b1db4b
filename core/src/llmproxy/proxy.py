"""The Proxy: one object an app uses for every LLM call.

The request flow (see DESIGN and :mod:`llmproxy.flow`) is written once, in
:func:`llmproxy.flow.call_flow`: resolve the model to a provider, load the session's history,
reserve budget (the output cap sent upstream is what the budget allows), call the provider with
retries and fallbacks, run tool rounds, settle with the real usage, write the exchange to
history, notify observers. This module wires the Proxy (plugins, stores, providers) and drives
that flow: :meth:`Proxy._drive` performs its effects blocking and :meth:`Proxy._adrive` in the
event loop; ``chat``/``achat`` run it whole and :class:`ChatStream`/:class:`AsyncChatStream`
hand its events to the caller as they come.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from llmproxy import env as envvars
from llmproxy.budget.base import ClaimUsage, Ledger, Reservation
from llmproxy.budget.calibration import Calibration
from llmproxy.budget.policy import BudgetPolicy, CallScope
from llmproxy.budget.renewal import Renewer
from llmproxy.budget.routed import RoutedLedger
from llmproxy.cache.base import CacheSettings, ResponseCache
from llmproxy.call import Call, CallOptions, EmbedCall, Prompt, ToolSpec
from llmproxy.config import ProxyConfig, load_config, structure
from llmproxy.errors import ConfigError, InvalidRequest, PluginError, StoreError
from llmproxy.flow import READY, Closed, Deliver, EmbedFlow, Flow, call_flow, embed_flow
from llmproxy.genai_table import GenaiPrices
from llmproxy.history.base import HistoryRecord, HistoryStore
from llmproxy.history.handler import HandlerStore, LLMMessageHandler
from llmproxy.observe import CallObserver, followed
from llmproxy.pipelining import PipelinedHistory, PipelinedLedger, QueuedSettle, shared
from llmproxy.plugins import Plugins, load_plugins
from llmproxy.provider import Provider
from llmproxy.registry import ProviderSettings
from llmproxy.routing import Route, Router, router_from_table
from llmproxy.secret import Secret, redact
from llmproxy.tools import ClientTool, HostedTool, Tool
from llmproxy.types import CallEvent, ChatResponse, Embeddings, StreamEvent
from llmproxy.urls import scheme_of

if TYPE_CHECKING:
    from llmproxy.journal import Journal

log = logging.getLogger("llmproxy")

Observer = Callable[[CallEvent], None]

_COMMON_PROVIDER_KEYS = frozenset(("api_key", "base_url", "timeout"))


def _default_url(environ: Mapping[str, str], filename: str) -> str:
    """The embedded store's URL: a SQLite file in the data dir of this Proxy's environment."""
    return "sqlite:///" + str((envvars.data_dir(environ) / filename).absolute())


class Proxy:
    """One object for every LLM call: budgets, rate limits, history, retries, observers.

    >>> proxy = Proxy.from_env(budgets=[LLMBudget(max_tokens=100_000)])   # doctest: +SKIP
    >>> proxy.chat("Hello", model="openai/gpt-5.4-mini", session_id="s1").text  # doctest: +SKIP

    ``config`` is a :class:`~llmproxy.config.ProxyConfig` or a dict of its keys. ``budgets`` adds
    policies (``LLMBudget``, ``RequestsPerMinute``...) to those configured. ``history`` and
    ``ledger`` are store objects or URLs and win over the configuration; ``message_handler``
    (the seed's :class:`~llmproxy.LLMMessageHandler`) wins over ``history``. ``providers`` maps a
    provider name to a ready provider object, bypassing its plugin. ``observers`` are called with
    the one :class:`~llmproxy.types.CallEvent` of every call; an observer with a ``start_call``
    method is a call observer instead (:mod:`llmproxy.observe`, such as the OpenTelemetry
    plugin's), which follows each step of every call. ``environ`` is what providers read
    their keys from (``os.environ`` by default). ``fallbacks`` maps a model to the models tried
    in turn when it fails with a retryable error after its retries (429, 5xx, timeout,
    connection); a call's own ``fallbacks=[...]`` wins. Each model's reservation is settled
    before the next is tried, and the response names the model that answered. ``cache`` is a
    response cache object (:class:`~llmproxy.cache.ResponseCache`), winning over ``cache.url``.
    ``routers`` maps
    an alias to a :class:`~llmproxy.routing.Router` over several deployments (with those of the
    configuration's ``[models.NAME]`` tables; see :mod:`llmproxy.routing`).
    """

    def __init__(
        self,
        config: ProxyConfig | Mapping[str, Any] | None = None,
        *,
        budgets: Iterable[BudgetPolicy] = (),
        history: HistoryStore | str | None = None,
        ledger: Ledger | str | None = None,
        message_handler: LLMMessageHandler | None = None,
        providers: Mapping[str, Provider] | None = None,
        plugins: Plugins | None = None,
        observers: Iterable[Observer | CallObserver] = (),
        environ: Mapping[str, str] | None = None,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        cache: ResponseCache | None = None,
        routers: Mapping[str, Router] | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        if config is None:
            config = ProxyConfig()
        elif not isinstance(config, ProxyConfig):
            config = load_config(config)
        self.config: ProxyConfig = config
        self.plugins = plugins if plugins is not None else load_plugins(self.environ)
        self._providers: dict[str, Provider] = dict(providers or {})
        self._lock = threading.Lock()
        policies = list(self._configured_policies())
        for policy in budgets:
            if not callable(getattr(policy, "claim", None)):
                raise ConfigError(
                    "budgets must hold budget policies such as LLMBudget(max_tokens=...);"
                    f" got {policy!r}",
                    path="budgets",
                )
            policies.append(policy)
        self.routers: dict[str, Router] = self._routers(routers or {})
        """The aliases with several deployments, each with its router (see llmproxy.routing)."""
        for router in self.routers.values():
            policies.extend(router.limits())
        self.policies: list[BudgetPolicy] = policies
        if message_handler is not None:
            if not isinstance(message_handler, LLMMessageHandler):
                raise ConfigError(
                    "message_handler must subclass llmproxy.LLMMessageHandler",
                    path="message_handler",
                )
            history = HandlerStore(message_handler)
        self._history: HistoryStore | None = (
            history if not isinstance(history, str) and history is not None else None
        )
        self._history_url = history if isinstance(history, str) else config.history_url
        given = ledger if not isinstance(ledger, str) and ledger is not None else None
        # Unnamed policies count in this Proxy's memory, named ones in the configured ledger
        # (opened on the first claim of a named policy): see llmproxy.budget.routed.
        self._ledger = RoutedLedger(given if given is not None else self._open_ledger)
        self._ledger_url = ledger if isinstance(ledger, str) else config.ledger_url
        self._ledger_given = given is not None
        self._history_given = self._history is not None
        self._shared: PipelinedHistory | Literal[False] | None = False
        if self._history is None and self._history_url:
            self._check_scheme(self._history_url, self.plugins.registry.history_stores, "history")
        if given is None:
            if self._ledger_url:
                self._check_scheme(self._ledger_url, self.plugins.registry.ledgers, "ledger")
            envvars.ledger_lease(self.environ)  # a bad value is refused now, not at the first call
        self.prices = self.plugins.registry.prices.merged(
            config.prices, defaults=GenaiPrices.for_providers(config.providers)
        )
        self.fallbacks: dict[str, list[str]] = {}
        tables: list[Mapping[str, Any]] = [config.fallbacks, fallbacks or {}]
        for table in tables:
            for name, chain in table.items():
                if isinstance(chain, str) or not all(isinstance(m, str) for m in chain):
                    raise ConfigError(
                        f"fallbacks[{name!r}] must be a list of model names", path="fallbacks"
                    )
                self.fallbacks[name] = list(chain)
        # Call observers (llmproxy.observe: tracers) follow each step; the others get the
        # one CallEvent of a call.
        self._call_observers: list[CallObserver] = list(self.plugins.registry.observers)
        self._observers: list[Observer] = []
        for observer in observers:
            if isinstance(observer, CallObserver):
                self._call_observers.append(observer)
            else:
                self._observers.append(observer)
        self._notify_on = bool(self._observers) or self.plugins.observes
        self.calibration = Calibration()
        """How this Proxy's providers bill input against their count (see
        :mod:`llmproxy.budget.calibration`), learned per provider and model from its calls."""
        self._renewer = Renewer(
            lambda: self.ledger,
            config.reservation_lease,
            max_age=config.retry.deadline,
        )
        self._cache: ResponseCache | None = cache
        if cache is None and config.cache.url:
            self._check_scheme(config.cache.url, self.plugins.registry.caches, "cache")
        self._journal: Journal | None = None
        self._replayer: threading.Thread | None = None
        self._closing = threading.Event()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        config_path: str | None = None,
        **kwargs: Any,
    ) -> Proxy:
        """Build a Proxy from ``LLMPROXY_*`` variables, ``LLMPROXY_CONFIG`` and keyword arguments.

        ``config`` holds configuration keys that win over the file and the environment; other
        keyword arguments are those of :class:`Proxy`.
        """
        env = os.environ if environ is None else environ
        return cls(load_config(config, path=config_path, environ=env), environ=env, **kwargs)

    # -- wiring ----------------------------------------------------------------------------------

    def _configured_policies(self) -> Iterator[BudgetPolicy]:
        kinds = self.plugins.registry.policies
        for index, entry in enumerate(self.config.budgets):
            data = dict(entry)
            kind = data.pop("kind", "tokens")
            cls = kinds.get(kind)
            if cls is None:
                raise ConfigError(
                    f"budgets[{index}].kind {kind!r} is not a registered policy kind;"
                    f" known: {', '.join(sorted(kinds))}",
                    path=f"$.budgets[{index}].kind",
                )
            yield structure(data, cls, where=f"budgets[{index}] ({kind})")

    def _routers(self, given: Mapping[str, Router]) -> dict[str, Router]:
        """The configured routers and ``given`` ones; one deployment's limits must agree."""
        out = {name: router_from_table(name, t) for name, t in self.config.models.items()}
        for name, router in given.items():
            if not isinstance(router, Router):
                raise ConfigError(
                    f"routers[{name!r}] must be a llmproxy.routing.Router, got {router!r}",
                    path=f"routers.{name}",
                )
            if name in self.config.aliases:
                raise ConfigError(
                    f"{name!r} is both an alias ([aliases]) and a router: keep one",
                    path=f"routers.{name}",
                )
            out[name] = router
        limits: dict[tuple[str, str], int] = {}
        for name, router in out.items():
            for limit in router.limits():
                seen = limits.setdefault((limit.model, limit.kind), limit.limit)
                if seen != limit.limit:
                    raise ConfigError(
                        f"deployment {limit.model} has {limit.kind} = {limit.limit} in {name!r}"
                        f" but {seen} elsewhere: one deployment has one limit",
                        path=f"models.{name}.deployments",
                    )
        return out

    def _route_for(self, model: str | None) -> Route | None:
        """A fresh :class:`~llmproxy.routing.Route` when ``model`` is an alias with deployments."""
        if not self.routers:
            return None
        name = model or self.config.default_model
        router = self.routers.get(name) if isinstance(name, str) else None
        return Route(name, router) if router is not None else None

    @staticmethod
    def _check_scheme(url: str, known: Mapping[str, Any], what: str) -> None:
        scheme = scheme_of(url, what=what)
        if scheme not in known:
            raise ConfigError(
                f"{what} URL scheme '{scheme}://' is not provided by any installed plugin;"
                f" known: {', '.join(s + '://' for s in sorted(known))}",
                path=f"{what}_url",
            )

    def _open(self, what: str, url: str | None, factories: Mapping[str, Any], filename: str) -> Any:
        """Open a store by URL; no URL means the embedded SQLite file in the data dir."""
        url = url or _default_url(self.environ, filename)
        return factories[scheme_of(url, what=what)](url, self.environ)

    @property
    def history(self) -> HistoryStore:
        """The history store, opened on first use (embedded SQLite unless configured)."""
        if self._history is None:
            with self._lock:
                if self._history is None:
                    stores = self.plugins.registry.history_stores
                    self._history = self._open("history", self._history_url, stores, "history.db")
        return self._history

    @property
    def cache(self) -> ResponseCache:
        """The response cache, opened on first use; a ConfigError when none is configured."""
        if self._cache is None:
            url = self.config.cache.url
            if not url:
                raise ConfigError(
                    "the call asks for the response cache (cache=...), but none is configured:"
                    " set LLMPROXY_CACHE_URL (memory://, sqlite:///path.db, redis://host:6379/0)"
                    ' or cache.url in the configuration ([cache] url = "memory://")',
                    path="cache.url",
                )
            with self._lock:
                if self._cache is None:
                    config = self.config.cache
                    settings = CacheSettings(config.max_entries, config.max_bytes, self.environ)
                    factory = self.plugins.registry.caches[scheme_of(url, what="cache")]
                    self._cache = factory(url, settings)
        return self._cache

    def _cache_ttl(self, asked: bool | float | None) -> float | None:
        """The seconds a call's cache entry lives (None: the call does not use the cache)."""
        if asked is None or asked is False:
            return None
        _ = self.cache  # no cache configured: refused before anything is sent
        return self.config.cache.ttl if asked is True else float(asked)

    @property
    def ledger(self) -> RoutedLedger:
        """The budget ledger: unnamed policies in this Proxy's memory, named ones in ``.shared``.

        ``ledger.shared`` is the configured ledger, opened on first use (embedded SQLite
        unless configured); see :mod:`llmproxy.budget.routed`.
        """
        return self._ledger

    def _open_ledger(self) -> Ledger:
        """Open the configured ledger (on the first claim of a named policy)."""
        ledger: Ledger = self._open(
            "ledger", self._ledger_url, self.plugins.registry.ledgers, "ledger.db"
        )
        self._replay_leftovers()
        return ledger

    # -- writes kept for later ------------------------------------------------------------------

    def _store_url(self, what: Literal["ledger", "history"]) -> str | None:
        """The URL a journal entry names a store by; None when writes to it are not journaled.

        A store kept in memory dies with the process, and one passed in as an object has no
        name a later process could find it by: neither is journaled.
        """
        if what == "ledger":
            given, url, filename = self._ledger_given, self._ledger_url, "ledger.db"
        else:
            given, url, filename = self._history_given, self._history_url, "history.db"
        if given:
            return None
        url = url or _default_url(self.environ, filename)
        return None if scheme_of(url, what=what) == "memory" else url

    def _journal_open(self) -> Journal:
        from llmproxy.journal import Journal

        with self._lock:
            if self._journal is None:
                self._journal = Journal.in_data_dir(self.environ)
            return self._journal

    def _keep(
        self,
        error: StoreError,
        *,
        reservation: Reservation | None = None,
        settle: Mapping[str, Any] | None = None,
        records: Sequence[HistoryRecord] | None = None,
    ) -> None:
        """Journal a settle or a history write that could not reach its store, or raise ``error``.

        The caller keeps its answer; the write is applied once the store answers again (by a
        background replay, or by the next process to open these stores after a restart).
        Settles are idempotent by reservation id and history records by their id, so a write
        that did land (a store that answered late) is not counted or stored twice.
        """
        settling = reservation is not None and settle is not None
        if not settling and not records:
            return
        ledger_url = self._store_url("ledger") if settling else None
        history_url = self._store_url("history") if records else None
        if (settling and ledger_url is None) or (records and history_url is None):
            raise error
        try:
            self._journal_open().add(
                ledger_url=ledger_url,
                history_url=history_url,
                reservation=reservation if settling else None,
                settle=settle if settling else None,
                records=tuple(records or ()),
            )
        except Exception as exc:
            raise error from exc
        log.warning(
            "%s could not be written and is kept in the journal until the store answers: %s",
            "a settle" if settling else "a history write",
            error,
        )
        self._replay_soon()

    def _replay_leftovers(self) -> None:
        """After a restart: replay what an earlier process journaled for these stores."""
        if (envvars.data_dir(self.environ) / "journal.db").exists():
            self._replay_soon()

    def _replay_soon(self) -> None:
        """Start the background replay of the journal, unless it runs already."""
        with self._lock:
            if self._closing.is_set() or (self._replayer and self._replayer.is_alive()):
                return
            self._replayer = threading.Thread(
                target=self._replay_until_done, name="llmproxy-journal-replay", daemon=True
            )
            self._replayer.start()

    def _replay_until_done(self) -> None:
        """Replay with a growing pause until nothing is left for these stores (or close)."""
        pause = 0.05
        while not self._closing.is_set():
            try:
                if self._replay_once() == 0:
                    return
            except Exception:
                log.warning("replaying the journal failed; trying again", exc_info=True)
            self._closing.wait(pause)
            pause = min(pause * 2, 5.0)

    def _replay_once(self) -> int:
        """Apply what the journal holds for this Proxy's stores; return how many are left."""
        from llmproxy.journal import replay

        ledger_url, history_url = self._store_url("ledger"), self._store_url("history")
        if ledger_url is None and history_url is None:
            return 0
        journal = self._journal_open()
        replay(
            journal,
            ledger=self.ledger if ledger_url is not None else None,
            history=self.history if history_url is not None else None,
            ledger_url=ledger_url,
            history_url=history_url,
        )
        return len(journal.pending(ledger_url=ledger_url, history_url=history_url, limit=1))

    def _resolve_tools(self, tools: Sequence[ToolSpec] | None) -> tuple[Tool | HostedTool, ...]:
        """Turn a call's ``tools`` into tool objects: names of plugin tools, callables, tools.

        A dict in OpenAI's function-tool shape is a :class:`~llmproxy.tools.ClientTool`.
        """
        if not tools:
            return ()
        if isinstance(tools, (str, Tool, HostedTool, Mapping)) or callable(tools):
            raise InvalidRequest("tools must be a list", field="tools")
        out: list[Tool | HostedTool] = []
        for index, item in enumerate(tools):
            if isinstance(item, (Tool, HostedTool)):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(ClientTool.from_openai(item, f"tools[{index}]"))
            elif isinstance(item, str):
                registered = self.plugins.registry.tools.get(item)
                if registered is None:
                    known = ", ".join(sorted(self.plugins.registry.tools)) or "none"
                    raise InvalidRequest(
                        f"tools[{index}] names {item!r}, which no plugin registers"
                        f" (registered: {known})",
                        field=f"tools[{index}]",
                    )
                out.append(registered)
            elif callable(item):
                out.append(Tool.from_function(item))
            else:
                raise InvalidRequest(
                    f"tools[{index}] must be a Tool, a HostedTool, a function, a registered"
                    f" tool's name or an OpenAI function-tool dict; got {type(item).__name__}",
                    field=f"tools[{index}]",
                )
        names = [t.name for t in out if isinstance(t, Tool)]
        if len(names) != len(set(names)):
            raise InvalidRequest(f"tool names must be unique, got {names}", field="tools")
        return tuple(out)

    def _fallbacks_for(self, model: str | None, per_call: Sequence[str] | None) -> list[str]:
        """The models to try, in order, when ``model`` fails with a retryable error."""
        if per_call is not None:
            if isinstance(per_call, str):
                raise InvalidRequest("fallbacks must be a list of model names", field="fallbacks")
            return list(per_call)
        if not self.fallbacks:
            return []
        name = model or self.config.default_model
        chain = self.fallbacks.get(name)
        if chain is None:
            chain = self.fallbacks.get(self.config.aliases.get(name, name), [])
        return list(chain)

    def _resolve(self, model: str | None) -> tuple[str, str, Provider]:
        name = model or self.config.default_model
        if not isinstance(name, str):
            raise InvalidRequest(
                f"model must be a string such as 'openai/gpt-5.4-mini', got {name!r}", field="model"
            )
        name = self.config.aliases.get(name, name)
        router = self.routers.get(name) if self.routers else None
        if router is not None:  # a call with no route of its own (embed, count): one pick
            chosen = router.choose()
            name = chosen.model if chosen is not None else name
        provider_name, sep, model_name = name.partition("/")
        if not sep:
            provider_name, model_name = self.config.default_model.partition("/")[0], name
        if not model_name:
            raise InvalidRequest(f"model {name!r} names no model after the provider", field="model")
        provider = self._providers.get(provider_name)
        if provider is None:
            provider = self._make_provider(provider_name, name)
        return provider_name, model_name, provider

    def _make_provider(self, provider_name: str, model: str) -> Provider:
        with self._lock:
            provider = self._providers.get(provider_name)
            if provider is not None:
                return provider
            table = dict(self.config.providers.get(provider_name, {}))
            # A table with a kind (openai-compatible) is served by the provider of that name.
            kind = table.get("kind")
            entry = self.plugins.registry.providers.get(kind or provider_name)
            if entry is None:
                failed = self.plugins.error_for(kind or provider_name)
                if failed is not None:
                    raise PluginError(
                        f"model '{model}' needs provider '{provider_name}',"
                        f" whose plugin failed to load: {failed}",
                        plugin=provider_name,
                    )
                known = (
                    ", ".join(sorted({*self.plugins.registry.providers, *self._providers}))
                    or "none"
                )
                raise InvalidRequest(
                    f"model '{model}' names provider '{provider_name}', which no installed plugin"
                    f" provides (installed: {known}); install llmproxy-{provider_name} or check"
                    " LLMPROXY_PLUGINS",
                    field="model",
                )
            api_key = table.get("api_key")
            timeout = table.get("timeout")
            settings = ProviderSettings(
                provider_name,
                Secret(api_key) if isinstance(api_key, str) and api_key else None,
                table.get("base_url"),
                float(timeout) if timeout is not None else None,
                {k: v for k, v in table.items() if k not in _COMMON_PROVIDER_KEYS},
                self.environ,
            )
            provider = entry.factory(settings)
            self._providers[provider_name] = provider
            return provider

    def provider(self, name: str) -> Provider:
        """Return the provider registered under ``name``, creating it on first use."""
        return self._providers.get(name) or self._make_provider(name, name)

    # -- calls -----------------------------------------------------------------------------------

    def chat(
        self,
        prompt: Prompt,
        *,
        model: str | None = None,
        system: str | None = None,
        session_id: str | None = None,
        user: str | None = None,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        use_history: bool | None = None,
        fallbacks: Sequence[str] | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        run_tools: bool = True,
        schema: Any = None,
        schema_retries: int | None = None,
        cache: bool | float | None = None,
        **extra: Any,
    ) -> ChatResponse:
        """Send ``prompt`` and return the whole answer.

        ``prompt`` is a string, a :class:`~llmproxy.types.Message` or a list of messages;
        ``model`` is ``provider/model`` or an alias (default: ``config.default_model``);
        with a ``session_id`` the session's history is sent as context and the exchange stored.
        ``fallbacks=[...]`` replaces the configured fallback chain for this call; ``key`` (a key
        id, never a secret) and ``tags`` are what ``key`` and ``tag:NAME`` budget scopes count by.
        Other keyword arguments go to the provider untouched (``top_p=...``, ``extra_body=...``).
        ``tools`` the model may call are run by the Proxy's tool-call loop, unless
        ``run_tools=False`` or a tool is offered as a definition only (a
        :class:`~llmproxy.tools.ClientTool` or an OpenAI function-tool dict): then the model's
        calls are handed back unexecuted on ``response.message.tool_calls`` (``finish_reason``
        ``tool_calls``), and the caller sends its ``Message("tool", output, tool_call_id=...)``
        answers in its next call.
        ``schema`` (an attrs class, a dataclass, a TypedDict, a pydantic model or a JSON-schema
        dict) asks for JSON that fits it: the answer's ``parsed`` holds the value, and one that
        does not fit raises :class:`~llmproxy.errors.SchemaError` after ``schema_retries``
        rounds (default 0) that send the errors back (see :mod:`llmproxy.structured`).
        ``cache=True`` (or a time to live in seconds) serves the call from the response cache
        when the same request was answered before, and keeps its reply otherwise (see
        :mod:`llmproxy.cache`; it needs ``LLMPROXY_CACHE_URL`` or ``cache.url``).

        Raises :class:`~llmproxy.errors.BudgetExceeded` or :class:`~llmproxy.errors.RateLimited`
        before any upstream call when a policy has no room, and a
        :class:`~llmproxy.errors.ProviderError` subclass when the service fails after retries.
        """
        options = CallOptions(
            model=model,
            system=system,
            session_id=session_id,
            user=user,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            use_history=use_history,
            fallbacks=fallbacks,
            key=key,
            tags=tags,
            tools=tools,
            tool_choice=tool_choice,
            max_tool_rounds=max_tool_rounds,
            extra=extra,
            run_tools=run_tools,
            schema=schema,
            schema_retries=schema_retries,
            cache=cache,
        )
        response: ChatResponse = self._drive(self._chat_flow(Call(self, prompt, options, False)))
        return response

    async def achat(
        self,
        prompt: Prompt,
        *,
        model: str | None = None,
        system: str | None = None,
        session_id: str | None = None,
        user: str | None = None,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        use_history: bool | None = None,
        fallbacks: Sequence[str] | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        run_tools: bool = True,
        schema: Any = None,
        schema_retries: int | None = None,
        cache: bool | float | None = None,
        **extra: Any,
    ) -> ChatResponse:
        """Async :meth:`chat`."""
        options = CallOptions(
            model=model,
            system=system,
            session_id=session_id,
            user=user,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            use_history=use_history,
            fallbacks=fallbacks,
            key=key,
            tags=tags,
            tools=tools,
            tool_choice=tool_choice,
            max_tool_rounds=max_tool_rounds,
            extra=extra,
            run_tools=run_tools,
            schema=schema,
            schema_retries=schema_retries,
            cache=cache,
        )
        response: ChatResponse = await self._adrive(
            self._chat_flow(Call(self, prompt, options, False))
        )
        return response

    def stream(
        self,
        prompt: Prompt,
        *,
        model: str | None = None,
        system: str | None = None,
        session_id: str | None = None,
        user: str | None = None,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        use_history: bool | None = None,
        fallbacks: Sequence[str] | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        run_tools: bool = True,
        schema: Any = None,
        schema_retries: int | None = None,
        cache: bool | float | None = None,
        **extra: Any,
    ) -> ChatStream:
        """Send ``prompt`` and iterate over the answer as it arrives (arguments as :meth:`chat`).

        Returns a :class:`ChatStream` of :class:`~llmproxy.types.StreamEvent`; the last event has
        ``done=True`` with usage and the whole response. History is loaded and budget reserved
        before this returns, so :class:`~llmproxy.errors.BudgetExceeded` is raised here. Closing
        the stream early (``break`` inside ``with proxy.stream(...) as s``) stores what arrived,
        marked interrupted, and settles the budget with what was used.
        """
        options = CallOptions(
            model=model,
            system=system,
            session_id=session_id,
            user=user,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            use_history=use_history,
            fallbacks=fallbacks,
            key=key,
            tags=tags,
            tools=tools,
            tool_choice=tool_choice,
            max_tool_rounds=max_tool_rounds,
            extra=extra,
            run_tools=run_tools,
            schema=schema,
            schema_retries=schema_retries,
            cache=cache,
        )
        return ChatStream(self, Call(self, prompt, options, True))

    def astream(
        self,
        prompt: Prompt,
        *,
        model: str | None = None,
        system: str | None = None,
        session_id: str | None = None,
        user: str | None = None,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        use_history: bool | None = None,
        fallbacks: Sequence[str] | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        run_tools: bool = True,
        schema: Any = None,
        schema_retries: int | None = None,
        cache: bool | float | None = None,
        **extra: Any,
    ) -> AsyncChatStream:
        """Async :meth:`stream`: ``async for ev in proxy.astream(...)``.

        Arguments are checked at once; history is loaded and budget reserved when iteration
        starts, so :class:`~llmproxy.errors.BudgetExceeded` is raised by the first ``anext``.
        ``async with proxy.astream(...) as s`` closes the stream on exit.
        """
        options = CallOptions(
            model=model,
            system=system,
            session_id=session_id,
            user=user,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            use_history=use_history,
            fallbacks=fallbacks,
            key=key,
            tags=tags,
            tools=tools,
            tool_choice=tool_choice,
            max_tool_rounds=max_tool_rounds,
            extra=extra,
            run_tools=run_tools,
            schema=schema,
            schema_retries=schema_retries,
            cache=cache,
        )
        return AsyncChatStream(self, Call(self, prompt, options, True))

    # -- the two drivers ----------------------------------------------------------------------

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        model: str = "openai/text-embedding-3-small",
        dimensions: int | None = None,
        user: str | None = None,
        fallbacks: Sequence[str] | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> Embeddings:
        """Embed ``texts`` (one string or a list) and return a vector per text, in order.

        ``model`` is ``provider/model`` or an alias of an embeddings model; ``dimensions`` asks
        for shorter vectors where the model can give them. Budgets and rate limits apply as for
        :meth:`chat`: the input is counted (exactly for OpenAI, an upper bound otherwise) and
        reserved as a whole, with no output, before the first of the batches the provider
        accepts is sent, so a refusal (:class:`~llmproxy.errors.BudgetExceeded`,
        :class:`~llmproxy.errors.RateLimited`) sends nothing. Retries, ``fallbacks``, ``key``,
        ``tags`` and ``user`` work as for :meth:`chat`; other keyword arguments go to the
        provider untouched (Gemini's ``task_type="RETRIEVAL_QUERY"``). A provider with no
        embeddings raises :class:`~llmproxy.errors.UnsupportedContent` naming it.
        """
        call = EmbedCall(
            self,
            texts,
            model=model,
            dimensions=dimensions,
            user=user,
            key=key,
            tags=tags,
            fallbacks=fallbacks,
            extra=extra,
        )
        result: Embeddings = self._drive(self._embed_flow(call))
        return result

    async def aembed(
        self,
        texts: str | Sequence[str],
        *,
        model: str = "openai/text-embedding-3-small",
        dimensions: int | None = None,
        user: str | None = None,
        fallbacks: Sequence[str] | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> Embeddings:
        """Async :meth:`embed`."""
        call = EmbedCall(
            self,
            texts,
            model=model,
            dimensions=dimensions,
            user=user,
            key=key,
            tags=tags,
            fallbacks=fallbacks,
            extra=extra,
        )
        result: Embeddings = await self._adrive(self._embed_flow(call))
        return result

    def _chat_flow(self, call: Call) -> Flow:
        """The flow of a chat call, followed by the call observers when there are any."""
        flow = call_flow(call)
        if self._call_observers:
            followed_flow: Flow = followed(flow, call, self._call_observers)
            return followed_flow
        return flow

    def _embed_flow(self, call: EmbedCall) -> EmbedFlow:
        """The flow of an embed call, followed by the call observers when there are any."""
        flow = embed_flow(call)
        if self._call_observers:
            followed_flow: EmbedFlow = followed(flow, call, self._call_observers)
            return followed_flow
        return flow

    def _drive(self, flow: Flow | EmbedFlow, error: BaseException | None = None) -> Any:
        """Perform ``flow``'s effects, blocking, until it delivers a stream event or ends.

        Returns the :class:`~llmproxy.flow.Deliver` effect, or what the flow returned. An
        effect's exception is thrown into the flow, which decides (retry, fall back, release,
        re-raise); ``error`` is thrown in first (a stream's :class:`~llmproxy.flow.Closed`).
        """
        value: Any = None
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            if type(effect) is Deliver:
                return effect
            try:
                value, error = effect.run(self), None
            except BaseException as exc:
                value, error = None, exc

    async def _adrive(self, flow: Flow | EmbedFlow, error: BaseException | None = None) -> Any:
        """Async :meth:`_drive`: the same flow, its effects awaited in the event loop."""
        value: Any = None
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            if type(effect) is Deliver:
                return effect
            try:
                value, error = await effect.arun(self), None
            except BaseException as exc:
                value, error = None, exc

    def _shared_history(self) -> PipelinedHistory | None:
        """The history store when it can carry the ledger's settle (both on one server)."""
        found = self._shared
        if found is False:
            found = self._shared = shared(self.ledger, self.history)
        return found

    def _joint(
        self,
        call: Call,
        settle: dict[str, Any] | None,
        records: list[HistoryRecord] | None,
    ) -> tuple[PipelinedHistory, QueuedSettle] | None:
        """The store and the queued settle when both go out in one write; else None.

        With a ledger and a history store on the same server (say one Redis), the last
        settle rides in the history append: one round trip for both.
        """
        if settle is None or call.reservation is None or not records:
            return None
        history = self._shared_history()
        if history is None:
            return None
        ledger = self.ledger
        assert isinstance(ledger, PipelinedLedger)
        queued = ledger.queue_settle(call.reservation, **settle)
        if queued is None:
            return None
        return history, queued

    # -- observers and state ---------------------------------------------------------------

    def _notify(self, event: CallEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("observer %r failed", observer)
        if self.plugins.observes:
            hook = (
                self.plugins.pm.hook.on_error
                if event.error is not None
                else self.plugins.pm.hook.on_response
            )
            try:
                hook(event=event)
            except Exception:
                log.exception("an on_response/on_error plugin hook failed")

    def count_input(
        self,
        prompt: Prompt,
        *,
        model: str | None = None,
        system: str | None = None,
        tools: Sequence[ToolSpec] | None = None,
    ) -> int:
        """The input tokens a call with ``prompt``, ``system`` and ``tools`` would be counted at.

        The provider's own count, as budgets count a call before it is sent: exact for OpenAI's
        models, an upper bound for others. No history is loaded and nothing is sent or reserved.
        """
        options = CallOptions(model=model, system=system, tools=tools, run_tools=False)
        return Call(self, prompt, options, False).count_input()

    def usage(
        self,
        *,
        model: str | None = None,
        user: str | None = None,
        session_id: str | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[ClaimUsage]:
        """Return used / reserved / limit / resets-at of every policy, for one scope.

        ``proxy.usage(user="alice")`` shows the budgets a call by alice counts against (global
        ones included); ``model`` is ``provider/model`` (default: the default model). For an
        alias with deployments, ``alias``-scoped budgets show its rollup; ask for a deployment's
        ``provider/model`` to see what is counted per deployment.
        """
        name = model or self.config.default_model
        name = self.config.aliases.get(name, name)
        provider, _, _ = name.partition("/")
        alias = name if name in self.routers else None
        scope = CallScope(name, provider, user, session_id, key, tags or {}, alias)
        claims = [c for c in (p.claim(scope) for p in self.policies) if c is not None]
        return self.ledger.usage(claims) if claims else []

    def close(self) -> None:
        """Close providers and stores this Proxy opened."""
        self._closing.set()
        self._renewer.close()
        replayer = self._replayer
        if replayer is not None and replayer is not threading.current_thread():
            replayer.join(timeout=10)
        if self._journal is not None:
            self._journal.close()
        for provider in self._providers.values():
            provider.close()
        if self._history is not None:
            self._history.close()
        self._ledger.close()
        if self._cache is not None:
            self._cache.close()

    async def aclose(self) -> None:
        """Close providers (async connections too) and stores; call it inside the event loop."""
        for provider in self._providers.values():
            await provider.aclose()
        for store in (self._history, self._ledger, self._cache):
            aclose = getattr(store, "aclose", None)
            if aclose is not None:
                await aclose()
        self.close()

    async def __aenter__(self) -> Proxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = [p.name for p in self.policies]
        return f"Proxy(default_model={self.config.default_model!r}, policies={names!r})"


class ChatStream:
    """A streamed answer: iterate for :class:`~llmproxy.types.StreamEvent`s; a context manager.

    Retries happen only before any text has been delivered. A stream that breaks afterwards
    raises :class:`~llmproxy.errors.StreamInterrupted` once what arrived is stored and counted.
    The final event (``done``) comes as soon as the answer is complete; the call is settled in
    the ledger and stored in history when the iteration ends (the next ``next()``, as a ``for``
    loop makes), on :meth:`close`, or when the stream is dropped. Until then the call's
    reservation still holds its budget.
    """

    def __init__(self, proxy: Proxy, call: Call) -> None:
        self._proxy = proxy
        self._call = call
        self._flow = proxy._chat_flow(call)
        self._done = False
        self._step(None)  # to READY: history loaded and budget reserved, or raised here

    @property
    def response(self) -> ChatResponse | None:
        """The whole response, once the stream has ended (also when it was interrupted)."""
        return self._call.final

    @property
    def model(self) -> str:
        """The model answering, as the final response's ``model`` will name it.

        The upstream's own name once a chunk gave it (OpenAI's resolved snapshot), else the
        model the Proxy resolved the call to, after any fallback.
        """
        return self._call.answering_model()

    def _step(self, error: BaseException | None) -> StreamEvent | None:
        """Run the flow to its next event (None: the stream has ended)."""
        try:
            out = self._proxy._drive(self._flow, error)
        except BaseException:
            self._done = True
            raise
        if type(out) is Deliver:
            return out.event
        self._done = True
        return None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> StreamEvent:
        if not self._done:
            event = self._step(None)
            if event is not None:
                return event
        raise StopIteration

    def close(self) -> None:
        """Stop reading: close the connection, store what arrived (interrupted), settle."""
        if not self._done:
            self._step(Closed())

    def text(self) -> str:
        """Read the stream to its end and return the whole answer."""
        return "".join(event.text for event in self)

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            try:
                self.close()
            except Exception:
                log.debug("finalising an abandoned stream failed", exc_info=True)


class AsyncChatStream:
    """Async :class:`ChatStream`: ``async for`` over it; ``async with`` closes it.

    A stream dropped without :meth:`aclose` is still settled and stored, never with blocking
    I/O in its finaliser: the rest of its flow runs as a task on the loop it was read on, or,
    when that loop has ended, on a thread with the stores' blocking methods.
    """

    def __init__(self, proxy: Proxy, call: Call) -> None:
        self._proxy = proxy
        self._call = call
        self._flow = proxy._chat_flow(call)
        self._done = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def response(self) -> ChatResponse | None:
        """The whole response, once the stream has ended (also when it was interrupted)."""
        return self._call.final

    @property
    def model(self) -> str:
        """The model answering, as the final response's ``model`` will name it.

        The upstream's own name once a chunk gave it (OpenAI's resolved snapshot), else the
        model the Proxy resolved the call to, after any fallback.
        """
        return self._call.answering_model()

    async def _step(self, error: BaseException | None) -> StreamEvent | None:
        """Run the flow to its next event (None: the stream has ended)."""
        while True:
            try:
                out = await self._proxy._adrive(self._flow, error)
            except BaseException:
                self._done = True
                raise
            if type(out) is not Deliver:
                self._done = True
                return None
            if out is not READY:
                return out.event
            error = None

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if not self._done:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            event = await self._step(None)
            if event is not None:
                return event
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading: close the connection, store what arrived (interrupted), settle."""
        if self._done:
            return
        if self._loop is None:  # never read: nothing was reserved or sent
            self._done = True
            self._flow.close()
            return
        await self._step(Closed())

    async def text(self) -> str:
        """Read the stream to its end and return the whole answer."""
        return "".join([event.text async for event in self])

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_done", True) or getattr(self, "_loop", None) is None:
            return
        self._done = True
        _finish_dropped(self._proxy, self._flow, self._loop)


_FINISHING: set[asyncio.Task[None]] = set()
"""Tasks finishing dropped async streams (held here so they are not collected midway)."""


def _finish_dropped(proxy: Proxy, flow: Flow, loop: asyncio.AbstractEventLoop | None) -> None:
    """Finish a dropped async stream's flow (close, store, settle) without blocking the caller.

    On its own loop while that runs (the provider's async stream is closed there too); else on
    a thread, with the stores' blocking twins.
    """

    async def finish() -> None:
        try:
            await proxy._adrive(flow, Closed())
        except Exception:
            log.warning("could not finish an abandoned stream", exc_info=True)

    def spawn() -> None:
        task = asyncio.ensure_future(finish())
        _FINISHING.add(task)
        task.add_done_callback(_FINISHING.discard)

    def finish_blocking() -> None:
        try:
            proxy._drive(flow, Closed())
        except Exception:
            log.warning("could not finish an abandoned stream", exc_info=True)

    if loop is not None and loop.is_running():
        try:
            loop.call_soon_threadsafe(spawn)
            return
        except RuntimeError:  # closed since the check
            pass
    threading.Thread(target=finish_blocking, name="llmproxy-stream-finish", daemon=True).start()


__all__ = ["AsyncChatStream", "CallOptions", "ChatStream", "Proxy", "redact"]
