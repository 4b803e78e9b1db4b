"""The Proxy: one object an app uses for every LLM call.

The request flow (see DESIGN): resolve the model to a provider, load the session's history,
reserve budget (the output cap sent upstream is what the budget allows), call the provider with
retries, settle with the real usage, write the exchange to history, notify observers. The
decisions live in :class:`_Call` and :class:`_StreamState`; ``chat``/``achat`` and the two
stream classes are thin sync and async shells around them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs

from llmproxy import env as envvars
from llmproxy.budget.base import Claim, ClaimUsage, Ledger, Rates, Reservation
from llmproxy.budget.policy import BudgetPolicy, CallScope
from llmproxy.config import ProxyConfig, load_config, structure
from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    LLMProxyError,
    PluginError,
    ProviderError,
    RateLimited,
    StreamInterrupted,
    ToolLoopError,
)
from llmproxy.history.base import HistoryRecord, HistoryStore
from llmproxy.history.handler import HandlerStore, LLMMessageHandler
from llmproxy.pipelining import PipelinedHistory, PipelinedLedger, QueuedSettle, shared
from llmproxy.plugins import Plugins, load_plugins
from llmproxy.provider import Provider
from llmproxy.registry import ProviderSettings
from llmproxy.retry import next_delay
from llmproxy.secret import Secret, redact
from llmproxy.tokens import messages_upper_bound, text_upper_bound
from llmproxy.tools import HostedTool, Tool, ToolResult
from llmproxy.types import (
    CallEvent,
    ChatRequest,
    ChatResponse,
    Chunk,
    Citation,
    Completion,
    HostedOutput,
    Message,
    StreamEvent,
    ToolCall,
    Usage,
)
from llmproxy.urls import scheme_of

log = logging.getLogger("llmproxy")

_Counted = TypeVar("_Counted")
"""What a provider counts tokens of: messages or a text."""

Prompt = str | Message | Sequence[Message | Mapping[str, Any]]
Observer = Callable[[CallEvent], None]

_COMMON_PROVIDER_KEYS = frozenset(("api_key", "base_url", "timeout"))


def _as_messages(prompt: Prompt) -> list[Message]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRequest("prompt is empty: pass the text to send", field="prompt")
        return [Message("user", prompt)]
    if isinstance(prompt, Message):
        return [prompt]
    if isinstance(prompt, Mapping) or not isinstance(prompt, Sequence):
        raise InvalidRequest(
            "prompt must be a string, a Message, or a list of messages"
            f" ({{'role': ..., 'content': ...}} dicts or Message objects);"
            f" got {type(prompt).__name__}",
            field="prompt",
        )
    if not prompt:
        raise InvalidRequest("prompt is an empty list: pass at least one message", field="prompt")
    out: list[Message] = []
    for index, item in enumerate(prompt):
        if isinstance(item, Message):
            out.append(item)
        elif isinstance(item, Mapping):
            unknown = set(item) - {
                "role",
                "content",
                "name",
                "tool_call_id",
                "tool_calls",
                "reasoning",
            }
            if unknown:
                raise InvalidRequest(
                    f"prompt[{index}] has unknown keys {sorted(unknown)}", field=f"prompt[{index}]"
                )
            if "role" not in item:
                raise InvalidRequest(
                    f"prompt[{index}] has no 'role'", field=f"prompt[{index}].role"
                )
            calls = tuple(
                c if isinstance(c, ToolCall) else ToolCall(**c) for c in item.get("tool_calls", ())
            )
            try:
                out.append(
                    Message(
                        item["role"],
                        item.get("content") or "",
                        name=item.get("name"),
                        tool_calls=calls,
                        tool_call_id=item.get("tool_call_id"),
                        reasoning=item.get("reasoning"),
                    )
                )
            except InvalidRequest as exc:
                raise InvalidRequest(
                    f"prompt[{index}]: {exc}", field=f"prompt[{index}].{exc.field}"
                ) from None
        else:
            raise InvalidRequest(
                f"prompt[{index}] must be a Message or a dict, got {type(item).__name__}",
                field=f"prompt[{index}]",
            )
    if all(m.role == "system" for m in out):
        raise InvalidRequest("prompt has only system messages: add a user message", field="prompt")
    return out


def _default_url(environ: Mapping[str, str], filename: str) -> str:
    """The embedded store's URL: a SQLite file in the data dir of this Proxy's environment."""
    return "sqlite:///" + str((envvars.data_dir(environ) / filename).absolute())


class _Call:
    """The state and decisions of one call, shared by the sync and async shells."""

    __slots__ = (
        "attempts",
        "claims",
        "extra",
        "fallbacks",
        "function_tools",
        "history",
        "input_estimate",
        "key",
        "max_output_tokens",
        "max_tool_rounds",
        "model",
        "new_messages",
        "provider",
        "provider_name",
        "proxy",
        "request",
        "reservation",
        "rounds",
        "scope",
        "session_id",
        "settled",
        "spent",
        "started",
        "started_at",
        "steps",
        "system",
        "tags",
        "temperature",
        "tool_choice",
        "tools",
        "total_attempts",
        "use_history",
        "user",
    )

    def __init__(
        self,
        proxy: Proxy,
        prompt: Prompt,
        model: str | None,
        system: str | None,
        session_id: str | None,
        user: str | None,
        max_output_tokens: int | None,
        temperature: float | None,
        use_history: bool | None,
        extra: dict[str, Any],
        fallbacks: Sequence[str] | None = None,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        tools: Sequence[Tool | HostedTool | str | Callable[..., Any]] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
    ) -> None:
        self.started = time.perf_counter()
        self.started_at = time.time()
        self.proxy = proxy
        self.new_messages = _as_messages(prompt)
        if system is not None and not isinstance(system, str):
            raise InvalidRequest("system must be a string", field="system")
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise InvalidRequest("session_id must be a non-empty string", field="session_id")
        if user is not None and not isinstance(user, str):
            raise InvalidRequest("user must be a string", field="user")
        if max_output_tokens is not None and (
            isinstance(max_output_tokens, bool)
            or not isinstance(max_output_tokens, int)
            or max_output_tokens < 1
        ):
            raise InvalidRequest(
                "max_output_tokens must be a whole number of at least 1,"
                f" got {max_output_tokens!r}",
                field="max_output_tokens",
            )
        if temperature is not None and (
            isinstance(temperature, bool) or not isinstance(temperature, (int, float))
        ):
            raise InvalidRequest("temperature must be a number", field="temperature")
        self.system = system
        self.session_id = session_id
        self.user = user
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.extra = extra
        if key is not None and not isinstance(key, str):
            raise InvalidRequest("key must be a string (a key id, never a secret)", field="key")
        if tags is not None and not (
            isinstance(tags, Mapping) and all(isinstance(v, str) for v in tags.values())
        ):
            raise InvalidRequest("tags must map names to strings", field="tags")
        self.key = key
        self.tags: Mapping[str, str] = tags or {}
        self.tools = proxy._resolve_tools(tools)
        self.function_tools = {t.name: t for t in self.tools if isinstance(t, Tool)}
        if tool_choice is not None and not isinstance(tool_choice, str):
            raise InvalidRequest(
                "tool_choice must be auto, none, required or a tool name", field="tool_choice"
            )
        self.tool_choice = tool_choice
        rounds = proxy.config.max_tool_rounds if max_tool_rounds is None else max_tool_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise InvalidRequest(
                "max_tool_rounds must be a whole number >= 0", field="max_tool_rounds"
            )
        self.max_tool_rounds = rounds
        self.rounds = 0
        self.spent = Usage()
        self.steps: list[Message] = []
        self.fallbacks = proxy._fallbacks_for(model, fallbacks)
        self.total_attempts = 0
        self._target(proxy._resolve(model))
        self.use_history = (proxy.config.use_history if use_history is None else use_history) and (
            session_id is not None
        )
        self.history: list[Message] = []

    def _target(self, resolved: tuple[str, str, Provider]) -> None:
        """Aim the call at one model: its provider, the claims its policies make, a fresh count."""
        self.provider_name, self.model, self.provider = resolved
        self.scope = CallScope(
            f"{self.provider_name}/{self.model}",
            self.provider_name,
            self.user,
            self.session_id,
            self.key,
            self.tags,
        )
        claims: list[Claim] = []
        for policy in self.proxy.policies:
            claim = policy.claim(self.scope)
            if claim is not None:
                claims.append(claim)
        self.claims = claims
        self.reservation: Reservation | None = None
        self.input_estimate = 0
        self.attempts = 0
        self.settled = False
        self.request: ChatRequest | None = None

    def advance(self, error: BaseException) -> bool:
        """After ``error`` on this model (retries spent), aim at the next fallback model.

        Only retryable failures (429, 5xx, timeouts, connection errors) fall back; a fallback
        whose provider cannot be set up (no key) is skipped. Returns False when none is left.
        The caller must have settled this model's reservation first.
        """
        if not isinstance(error, ProviderError) or not error.retryable:
            return False
        while self.fallbacks:
            name = self.fallbacks.pop(0)
            try:
                resolved = self.proxy._resolve(name)
            except LLMProxyError as exc:
                log.warning("skipping fallback %s: %s", name, exc)
                continue
            log.warning(
                "falling back from %s/%s to %s after: %s",
                self.provider_name,
                self.model,
                name,
                error,
            )
            self._target(resolved)
            return True
        return False

    # -- planning --------------------------------------------------------------------------------

    def set_history(self, records: list[HistoryRecord]) -> None:
        self.history = [r.message for r in records]

    def messages(self) -> tuple[Message, ...]:
        head = [Message("system", self.system)] if self.system else []
        return (*head, *self.history, *self.new_messages)

    def reserve_args(self) -> dict[str, Any] | None:
        """Return the ledger.reserve arguments, or None when no policy applies."""
        if not self.claims:
            return None
        token_claims = any(c.unit != "requests" for c in self.claims)
        cap = self._cap(token_claims)
        if token_claims:
            self.input_estimate = self.count_messages()
            if self.tools:
                # Tool definitions are input too; providers render them more tersely than JSON.
                self.input_estimate += sum(
                    self.count_text(json.dumps(t.wire(), separators=(",", ":"))) for t in self.tools
                )
        args: dict[str, Any] = {
            "input_tokens": self.input_estimate,
            "max_output_tokens": cap or 0,
            "min_output_tokens": 1 if token_claims else 0,
            "lease": self.proxy.config.reservation_lease,
        }
        usd = next((c for c in self.claims if c.unit == "usd"), None)
        if usd is not None:
            price = self.proxy.prices.get(self.provider_name, self.model, at=self.started_at)
            if price is None:
                raise ConfigError(
                    f"model '{self.provider_name}/{self.model}' has no price, so cost budget"
                    f" '{usd.policy}' cannot count it: add it to the prices table"
                    f' (prices."{self.provider_name}/{self.model}" = {{input = ..., output = ...}},'
                    " USD per 1M tokens)",
                    path="prices",
                )
            args["rates"] = Rates(price.input / 1_000_000, price.output / 1_000_000)
        return args

    def _cap(self, budgeted: bool) -> int | None:
        cap = self.max_output_tokens
        if cap is None and budgeted:
            cap = self.proxy.config.default_max_output_tokens
        model_limit = self.provider.max_output_tokens(self.model)
        if cap is not None and model_limit is not None and model_limit < cap:
            cap = model_limit
        return cap

    def build_request(self) -> ChatRequest:
        if self.reservation is not None and any(c.unit == "tokens" for c in self.claims):
            cap: int | None = self.reservation.output_tokens
        else:
            cap = self._cap(False)
        self.request = ChatRequest(
            self.messages(),
            self.model,
            self.provider_name,
            cap,
            self.temperature,
            self.extra,
            self.session_id,
            self.user,
            self.tools,
            self.tool_choice,
        )
        return self.request

    # -- tool rounds -----------------------------------------------------------------------------

    def wants_tools(self, message: Message) -> bool:
        """Whether the model asked for tool calls the Proxy should run and answer."""
        return bool(self.function_tools) and bool(message.tool_calls)

    def tool_round(self, assistant: Message) -> list[ToolCall]:
        """Start a tool round for ``assistant``'s calls; raise when ``max_tool_rounds`` is spent."""
        self.rounds += 1
        if self.rounds > self.max_tool_rounds:
            raise ToolLoopError(
                f"the model asked for tools in more than {self.max_tool_rounds} rounds;"
                " raise max_tool_rounds or check the tools' answers",
                rounds=self.max_tool_rounds,
            )
        return list(assistant.tool_calls)

    def add_tool_results(self, assistant: Message, results: Sequence[ToolResult]) -> None:
        """Add a round's messages (the calls and their outputs) and get ready for the next round."""
        outputs = [Message("tool", r.output, name=r.name, tool_call_id=r.call_id) for r in results]
        self.new_messages.extend([assistant, *outputs])
        self.steps.extend([assistant, *outputs])
        self.reservation = None
        self.settled = False
        self.attempts = 0
        self.request = None

    def veto(self, name: str, arguments: str) -> bool:
        """Ask ``before_tool_call`` plugins whether a call may run (False from any blocks it)."""
        hook = self.proxy.plugins.pm.hook.before_tool_call
        if not hook.get_hookimpls():
            return True
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            args = {}
        answer = hook(
            tool_name=name,
            arguments=args if isinstance(args, dict) else {},
            session_id=self.session_id,
        )
        return answer is not False

    def blocked_or_unknown(self, call: ToolCall) -> ToolResult | None:
        """The error output for a call that must not run (unknown tool or vetoed), else None."""
        if call.name not in self.function_tools:
            known = ", ".join(sorted(self.function_tools))
            return ToolResult(
                call.id, call.name, f"unknown tool {call.name!r}; available: {known}", True
            )
        if not self.veto(call.name, call.arguments):
            return ToolResult(
                call.id, call.name, f"tool call {call.name!r} was blocked by policy", True
            )
        return None

    # -- outcomes --------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def count_messages(self) -> int:
        """The provider's count of the request's input tokens (see :meth:`_counted`)."""
        return self._counted(
            self.provider.count_tokens, messages_upper_bound, self.messages(), "request"
        )

    def count_text(self, text: str) -> int:
        """The provider's count of ``text``'s tokens (see :meth:`_counted`)."""
        return self._counted(self.provider.count_text_tokens, text_upper_bound, text, "text")

    def _counted(
        self,
        count: Callable[[_Counted, str], int],
        bound: Callable[[_Counted], int],
        what: _Counted,
        kind: str,
    ) -> int:
        """``count(what, model)``; if the provider plugin fails (its bug), ``bound(what)``.

        The failure is logged and the byte count, an upper bound, is used: the call is budgeted
        high rather than not at all, and a stream that ended without usage is still settled and
        stored.
        """
        try:
            return count(what, self.model)
        except Exception:
            log.exception(
                "provider %r failed to count the tokens of a %s %s; using the byte count",
                self.provider_name,
                self.model,
                kind,
            )
            return bound(what)

    def estimate_usage(self, text: str) -> Usage:
        """Count a reply that arrived without usage: the input estimate plus the text's tokens."""
        input_tokens = self.input_estimate or self.count_messages()
        return Usage(input_tokens, self.count_text(text), estimated=True)

    def priced(self, usage: Usage) -> Usage:
        """Return ``usage`` with its USD cost, when the model is priced."""
        price = self.proxy.prices.get(self.provider_name, self.model, at=self.started_at)
        if price is None:
            return usage
        return attrs.evolve(usage, cost=price.cost(usage))

    def response(self, completion: Completion, usage: Usage) -> ChatResponse:
        return ChatResponse(
            completion.message.content,
            completion.message,
            usage,
            completion.model or self.model,
            self.provider_name,
            completion.finish_reason,
            self.elapsed(),
            self.session_id,
            completion.id,
            tuple(self.steps),
        )

    def records(self, reply: Message, usage: Usage, model: str) -> list[HistoryRecord] | None:
        if not self.use_history or self.session_id is None:
            return None
        now = time.time()
        sid = self.session_id
        out: list[HistoryRecord] = []
        first = True
        for m in self.new_messages:
            if m.role == "system":
                continue
            out.append(
                HistoryRecord(
                    sid,
                    m,
                    model,
                    self.provider_name,
                    now,
                    usage.input_tokens if first else 0,
                    0,
                    self.user,
                )
            )
            first = False
        out.append(
            HistoryRecord(
                sid, reply, model, self.provider_name, now, 0, usage.output_tokens, self.user
            )
        )
        return out

    def settle_args(self, usage: Usage | None) -> dict[str, Any] | None:
        if self.reservation is None or self.settled:
            return None
        self.settled = True
        args: dict[str, Any] = {
            "tokens": usage.total_tokens if usage is not None else 0,
            "requests": self.attempts,
        }
        if any(c.unit == "usd" for c in self.claims):
            args["cost"] = (usage.cost or 0.0) if usage is not None else 0.0
        return args

    def event(
        self, usage: Usage, outcome: str, error: BaseException | None, streamed: bool, model: str
    ) -> CallEvent:
        return CallEvent(
            model,
            self.provider_name,
            usage,
            self.elapsed(),
            self.session_id,
            self.user,
            outcome,
            error,
            self.total_attempts,
            streamed,
            self.started_at,
            self.key,
            self.tags,
        )


class _LimitWaiter:
    """Decides whether a refused reservation is worth waiting for, and how long to sleep.

    Busy is not spent: a BudgetExceeded that only happened because calls in flight hold part
    of the budget (what is settled plus what this call needs still fits the limit) is waited
    out, polling with a growing interval, since those calls will settle and release. A
    RateLimited is waited out for its ``retry_after`` when ``on_limit="wait"``. Both stop at
    the ``limit_wait`` deadline and re-raise.
    """

    __slots__ = ("config", "deadline", "poll")

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.deadline = time.monotonic() + config.limit_wait
        self.poll = 0.002

    def delay(self, exc: BudgetExceeded | RateLimited) -> float | None:
        left = self.deadline - time.monotonic()
        if isinstance(exc, RateLimited):
            if self.config.on_limit != "wait" or exc.retry_after > left:
                return None
            return exc.retry_after
        if exc.reserved <= 0 or exc.used + exc.requested > exc.limit or left <= 0:
            return None
        delay, self.poll = min(self.poll, left), min(self.poll * 2, 0.1)
        return delay


class _StreamState:
    """What a stream has delivered so far; turns provider chunks into stream events."""

    __slots__ = (
        "citations",
        "delivered",
        "finish_reason",
        "hosted_outputs",
        "id",
        "model",
        "reasoning",
        "received",
        "text",
        "tool_calls",
        "usage",
    )

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.id: str | None = None
        self.tool_calls: list[ToolCall] = []
        self.citations: list[Citation] = []
        self.hosted_outputs: list[HostedOutput] = []
        self.received = False
        self.delivered = False

    def feed(self, chunk: Chunk) -> StreamEvent | None:
        self.received = True
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.model is not None:
            self.model = chunk.model
        if chunk.id is not None:
            self.id = chunk.id
        if chunk.tool_calls:
            self.tool_calls.extend(chunk.tool_calls)
        if chunk.citations:
            self.citations.extend(chunk.citations)
        if chunk.hosted_outputs:
            self.hosted_outputs.extend(chunk.hosted_outputs)
        if chunk.text or chunk.reasoning:
            if chunk.text:
                self.text.append(chunk.text)
            if chunk.reasoning:
                self.reasoning.append(chunk.reasoning)
            self.delivered = True
            return StreamEvent(chunk.text, chunk.reasoning)
        return None

    def message(self, interrupted: bool) -> Message:
        return Message(
            "assistant",
            "".join(self.text),
            tool_calls=tuple(self.tool_calls),
            reasoning="".join(self.reasoning) or None,
            citations=tuple(self.citations),
            hosted_outputs=tuple(self.hosted_outputs),
            interrupted=interrupted,
        )

    def completion(self, call: _Call, interrupted: bool) -> tuple[Completion, Usage]:
        message = self.message(interrupted)
        usage = self.usage
        if usage is None:
            usage = call.estimate_usage(message.content) if self.received else Usage()
        usage = call.priced(usage)
        return Completion(
            message, usage, self.model or call.model, self.finish_reason, self.id
        ), usage


class Proxy:
    """One object for every LLM call: budgets, rate limits, history, retries, observers.

    >>> proxy = Proxy.from_env(budgets=[LLMBudget(max_tokens=100_000)])   # doctest: +SKIP
    >>> proxy.chat("Hello", model="openai/gpt-5.4-mini", session_id="s1").text  # doctest: +SKIP

    ``config`` is a :class:`~llmproxy.config.ProxyConfig` or a dict of its keys. ``budgets`` adds
    policies (``LLMBudget``, ``RequestsPerMinute``...) to those configured. ``history`` and
    ``ledger`` are store objects or URLs and win over the configuration; ``message_handler``
    (the seed's :class:`~llmproxy.LLMMessageHandler`) wins over ``history``. ``providers`` maps a
    provider name to a ready provider object, bypassing its plugin. ``observers`` are called with
    the one :class:`~llmproxy.types.CallEvent` of every call. ``environ`` is what providers read
    their keys from (``os.environ`` by default). ``fallbacks`` maps a model to the models tried
    in turn when it fails with a retryable error after its retries (429, 5xx, timeout,
    connection); a call's own ``fallbacks=[...]`` wins. Each model's reservation is settled
    before the next is tried, and the response names the model that answered.
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
        observers: Iterable[Observer] = (),
        environ: Mapping[str, str] | None = None,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
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
        self._ledger: Ledger | None = (
            ledger if not isinstance(ledger, str) and ledger is not None else None
        )
        self._ledger_url = ledger if isinstance(ledger, str) else config.ledger_url
        self._shared: PipelinedHistory | Literal[False] | None = False
        if self._history is None and self._history_url:
            self._check_scheme(self._history_url, self.plugins.registry.history_stores, "history")
        if self._ledger is None:
            if self._ledger_url:
                self._check_scheme(self._ledger_url, self.plugins.registry.ledgers, "ledger")
            envvars.ledger_lease(self.environ)  # a bad value is refused now, not at the first call
        self.prices = self.plugins.registry.prices.merged(config.prices)
        self.fallbacks: dict[str, list[str]] = {}
        tables: list[Mapping[str, Any]] = [config.fallbacks, fallbacks or {}]
        for table in tables:
            for name, chain in table.items():
                if isinstance(chain, str) or not all(isinstance(m, str) for m in chain):
                    raise ConfigError(
                        f"fallbacks[{name!r}] must be a list of model names", path="fallbacks"
                    )
                self.fallbacks[name] = list(chain)
        self._observers = list(observers)
        self._notify_on = bool(self._observers) or self.plugins.observes

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
    def ledger(self) -> Ledger:
        """The budget ledger, opened on first use (embedded SQLite unless configured)."""
        if self._ledger is None:
            with self._lock:
                if self._ledger is None:
                    ledgers = self.plugins.registry.ledgers
                    self._ledger = self._open("ledger", self._ledger_url, ledgers, "ledger.db")
        return self._ledger

    def _resolve_tools(
        self, tools: Sequence[Tool | HostedTool | str | Callable[..., Any]] | None
    ) -> tuple[Tool | HostedTool, ...]:
        """Turn a call's ``tools`` into tool objects: names of plugin tools, callables, tools."""
        if not tools:
            return ()
        if isinstance(tools, (str, Tool, HostedTool)) or callable(tools):
            raise InvalidRequest("tools must be a list", field="tools")
        out: list[Tool | HostedTool] = []
        for index, item in enumerate(tools):
            if isinstance(item, (Tool, HostedTool)):
                out.append(item)
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
                    f"tools[{index}] must be a Tool, a HostedTool, a function or a registered"
                    f" tool's name; got {type(item).__name__}",
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
            entry = self.plugins.registry.providers.get(provider_name)
            if entry is None:
                failed = self.plugins.error_for(provider_name)
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
            table = dict(self.config.providers.get(provider_name, {}))
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

    # -- sync calls --------------------------------------------------------------------------------

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
        tools: Sequence[Tool | HostedTool | str | Callable[..., Any]] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        **extra: Any,
    ) -> ChatResponse:
        """Send ``prompt`` and return the whole answer.

        ``prompt`` is a string, a :class:`~llmproxy.types.Message` or a list of messages;
        ``model`` is ``provider/model`` or an alias (default: ``config.default_model``);
        with a ``session_id`` the session's history is sent as context and the exchange stored.
        ``fallbacks=[...]`` replaces the configured fallback chain for this call; ``key`` (a key
        id, never a secret) and ``tags`` are what ``key`` and ``tag:NAME`` budget scopes count by.
        Other keyword arguments go to the provider untouched (``top_p=...``, ``extra_body=...``).

        Raises :class:`~llmproxy.errors.BudgetExceeded` or :class:`~llmproxy.errors.RateLimited`
        before any upstream call when a policy has no room, and a
        :class:`~llmproxy.errors.ProviderError` subclass when the service fails after retries.
        """
        call = _Call(
            self,
            prompt,
            model,
            system,
            session_id,
            user,
            max_output_tokens,
            temperature,
            use_history,
            extra,
            fallbacks,
            key,
            tags,
            tools,
            tool_choice,
            max_tool_rounds,
        )
        if call.use_history:
            call.set_history(self.history.load(call.session_id or "", self.config.history_limit))
        try:
            while True:
                completion, settle = self._round(call)
                if not call.wants_tools(completion.message):
                    break
                self._settle(call, settle)
                calls = call.tool_round(completion.message)
                call.add_tool_results(completion.message, [self._run_tool(call, c) for c in calls])
            response = call.response(completion, call.spent)
            records = call.records(completion.message, call.spent, response.model)
            joint = self._joint(call, settle, records)
            if joint is None:
                self._settle(call, settle)
        except BaseException as exc:
            if self._notify_on:
                self._notify(call.event(call.spent, "error", exc, False, call.model))
            raise
        if joint is not None:
            assert records
            joint[0].append_with(records, joint[1])
        elif records:
            self.history.append(records)
        if self._notify_on:
            self._notify(call.event(call.spent, "ok", None, False, response.model))
        return response

    def _round(self, call: _Call) -> tuple[Completion, dict[str, Any] | None]:
        """One model turn: reserve, call with retries and fallbacks; add to call.spent.

        Returns the completion and what to settle: the caller settles, so that the last
        round's settle can go out with the history write (see :meth:`_joint`).
        """
        while True:
            args = call.reserve_args()
            if args is not None:
                call.reservation = self._reserve(call, args)
            try:
                request = call.build_request()
                completion = self._attempts(call, request)
                usage = call.priced(
                    completion.usage or call.estimate_usage(completion.message.content)
                )
                break
            except BaseException as exc:
                self._release(call)
                if call.advance(exc):
                    continue
                raise
        settle = call.settle_args(usage)
        call.spent = call.spent + usage
        return completion, settle

    def _settle(self, call: _Call, settle: dict[str, Any] | None) -> None:
        if settle is not None and call.reservation is not None:
            self.ledger.settle(call.reservation, **settle)

    async def _asettle(self, call: _Call, settle: dict[str, Any] | None) -> None:
        if settle is not None and call.reservation is not None:
            await self.ledger.asettle(call.reservation, **settle)

    def _shared_history(self) -> PipelinedHistory | None:
        """The history store when it can carry the ledger's settle (both on one server)."""
        found = self._shared
        if found is False:
            found = self._shared = shared(self.ledger, self.history)
        return found

    def _joint(
        self,
        call: _Call,
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

    def _settle_and_store(
        self, call: _Call, settle: dict[str, Any] | None, records: list[HistoryRecord] | None
    ) -> None:
        """Settle and append the call's records: one write when the stores share a server."""
        joint = self._joint(call, settle, records)
        if joint is not None:
            assert records
            joint[0].append_with(records, joint[1])
            return
        self._settle(call, settle)
        if records:
            self.history.append(records)

    async def _asettle_and_store(
        self, call: _Call, settle: dict[str, Any] | None, records: list[HistoryRecord] | None
    ) -> None:
        """Async :meth:`_settle_and_store`."""
        joint = self._joint(call, settle, records)
        if joint is not None:
            assert records
            await joint[0].aappend_with(records, joint[1])
            return
        await self._asettle(call, settle)
        if records:
            await self.history.aappend(records)

    def _run_tool(self, call: _Call, tool_call: ToolCall) -> ToolResult:
        refused = call.blocked_or_unknown(tool_call)
        if refused is not None:
            return refused
        return call.function_tools[tool_call.name].run(tool_call.arguments, tool_call.id)

    def _attempts(self, call: _Call, request: ChatRequest) -> Completion:
        while True:
            call.attempts += 1
            call.total_attempts += 1
            try:
                return call.provider.chat(request)
            except ProviderError as exc:
                delay = next_delay(exc, call.attempts, call.elapsed(), self.config.retry)
                if delay is None:
                    raise
                log.info(
                    "retrying %s/%s in %.2fs after: %s", call.provider_name, call.model, delay, exc
                )
                time.sleep(delay)

    def _reserve(self, call: _Call, args: dict[str, Any]) -> Reservation:
        """Reserve, waiting (up to ``limit_wait``) for budget held by calls in flight.

        Rate limits are waited for too when ``on_limit="wait"``.
        """
        waiter = _LimitWaiter(self.config)
        while True:
            try:
                return self.ledger.reserve(call.claims, **args)
            except (BudgetExceeded, RateLimited) as exc:
                delay = waiter.delay(exc)
                if delay is None:
                    raise
                time.sleep(delay)

    async def _areserve(self, call: _Call, args: dict[str, Any]) -> Reservation:
        """Async :meth:`_reserve`."""
        waiter = _LimitWaiter(self.config)
        while True:
            try:
                return await self.ledger.areserve(call.claims, **args)
            except (BudgetExceeded, RateLimited) as exc:
                delay = waiter.delay(exc)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    def _release(self, call: _Call) -> None:
        """Settle a failed model's reservation: no tokens, its attempts as requests."""
        settle = call.settle_args(None)
        if settle is not None and call.reservation is not None:
            try:
                self.ledger.settle(call.reservation, **settle)
            except LLMProxyError:
                log.exception("could not release the reservation of a failed call")

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
        tools: Sequence[Tool | HostedTool | str | Callable[..., Any]] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        **extra: Any,
    ) -> ChatStream:
        """Send ``prompt`` and iterate over the answer as it arrives (arguments as :meth:`chat`).

        Returns a :class:`ChatStream` of :class:`~llmproxy.types.StreamEvent`; the last event has
        ``done=True`` with usage and the whole response. Closing the stream early (``break``
        inside ``with proxy.stream(...) as s``) stores what arrived, marked interrupted, and
        settles the budget with what was used.
        """
        call = _Call(
            self,
            prompt,
            model,
            system,
            session_id,
            user,
            max_output_tokens,
            temperature,
            use_history,
            extra,
            fallbacks,
            key,
            tags,
            tools,
            tool_choice,
            max_tool_rounds,
        )
        try:
            if call.use_history:
                call.set_history(
                    self.history.load(call.session_id or "", self.config.history_limit)
                )
            args = call.reserve_args()
            if args is not None:
                call.reservation = self._reserve(call, args)
        except BaseException as exc:
            # Refused before it started (budget, rate limit, store): still one event.
            if self._notify_on:
                self._notify(call.event(Usage(), "error", exc, True, call.model))
            raise
        return ChatStream(self, call, call.build_request())

    # -- async calls -------------------------------------------------------------------------------

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
        tools: Sequence[Tool | HostedTool | str | Callable[..., Any]] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        **extra: Any,
    ) -> ChatResponse:
        """Async :meth:`chat`."""
        call = _Call(
            self,
            prompt,
            model,
            system,
            session_id,
            user,
            max_output_tokens,
            temperature,
            use_history,
            extra,
            fallbacks,
            key,
            tags,
            tools,
            tool_choice,
            max_tool_rounds,
        )
        if call.use_history:
            call.set_history(
                await self.history.aload(call.session_id or "", self.config.history_limit)
            )
        try:
            while True:
                completion, settle = await self._around(call)
                if not call.wants_tools(completion.message):
                    break
                await self._asettle(call, settle)
                calls = call.tool_round(completion.message)
                results = await asyncio.gather(*(self._arun_tool(call, c) for c in calls))
                call.add_tool_results(completion.message, results)
            response = call.response(completion, call.spent)
            records = call.records(completion.message, call.spent, response.model)
            joint = self._joint(call, settle, records)
            if joint is None:
                await self._asettle(call, settle)
        except BaseException as exc:
            if self._notify_on:
                self._notify(call.event(call.spent, "error", exc, False, call.model))
            raise
        if joint is not None:
            assert records
            await joint[0].aappend_with(records, joint[1])
        elif records:
            await self.history.aappend(records)
        if self._notify_on:
            self._notify(call.event(call.spent, "ok", None, False, response.model))
        return response

    async def _around(self, call: _Call) -> tuple[Completion, dict[str, Any] | None]:
        """Async :meth:`_round`."""
        while True:
            args = call.reserve_args()
            if args is not None:
                call.reservation = await self._areserve(call, args)
            try:
                request = call.build_request()
                completion = await self._aattempts(call, request)
                usage = call.priced(
                    completion.usage or call.estimate_usage(completion.message.content)
                )
                break
            except BaseException as exc:
                await self._arelease(call)
                if call.advance(exc):
                    continue
                raise
        settle = call.settle_args(usage)
        call.spent = call.spent + usage
        return completion, settle

    async def _arun_tool(self, call: _Call, tool_call: ToolCall) -> ToolResult:
        refused = call.blocked_or_unknown(tool_call)
        if refused is not None:
            return refused
        return await call.function_tools[tool_call.name].arun(tool_call.arguments, tool_call.id)

    async def _aattempts(self, call: _Call, request: ChatRequest) -> Completion:
        while True:
            call.attempts += 1
            call.total_attempts += 1
            try:
                return await call.provider.achat(request)
            except ProviderError as exc:
                delay = next_delay(exc, call.attempts, call.elapsed(), self.config.retry)
                if delay is None:
                    raise
                log.info(
                    "retrying %s/%s in %.2fs after: %s", call.provider_name, call.model, delay, exc
                )
                await asyncio.sleep(delay)

    async def _arelease(self, call: _Call) -> None:
        """Async :meth:`_release`."""
        settle = call.settle_args(None)
        if settle is not None and call.reservation is not None:
            try:
                await self.ledger.asettle(call.reservation, **settle)
            except LLMProxyError:
                log.exception("could not release the reservation of a failed call")

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
        tools: Sequence[Tool | HostedTool | str | Callable[..., Any]] | None = None,
        tool_choice: str | None = None,
        max_tool_rounds: int | None = None,
        **extra: Any,
    ) -> AsyncChatStream:
        """Async :meth:`stream`: ``async for ev in proxy.astream(...)``.

        Arguments are checked at once; history is loaded and budget reserved when iteration
        starts, so :class:`~llmproxy.errors.BudgetExceeded` is raised by the first ``anext``.
        ``async with proxy.astream(...) as s`` closes the stream on exit.
        """
        call = _Call(
            self,
            prompt,
            model,
            system,
            session_id,
            user,
            max_output_tokens,
            temperature,
            use_history,
            extra,
            fallbacks,
            key,
            tags,
            tools,
            tool_choice,
            max_tool_rounds,
        )
        return AsyncChatStream(self, call, None)

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
        ones included); ``model`` is ``provider/model`` (default: the default model).
        """
        name = model or self.config.default_model
        name = self.config.aliases.get(name, name)
        provider, _, _ = name.partition("/")
        scope = CallScope(name, provider, user, session_id, key, tags or {})
        claims = [c for c in (p.claim(scope) for p in self.policies) if c is not None]
        return self.ledger.usage(claims) if claims else []

    def close(self) -> None:
        """Close providers and stores this Proxy opened."""
        for provider in self._providers.values():
            provider.close()
        if self._history is not None:
            self._history.close()
        if self._ledger is not None:
            self._ledger.close()

    async def aclose(self) -> None:
        """Close providers (async connections too) and stores; call it inside the event loop."""
        for provider in self._providers.values():
            await provider.aclose()
        for store in (self._history, self._ledger):
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


class _StreamBase:
    """The bookkeeping both stream shells share: how a stream ends, in each of its ways."""

    def __init__(self, proxy: Proxy, call: _Call, request: ChatRequest | None) -> None:
        self._proxy = proxy
        self._call = call
        self._request = request
        self._state = _StreamState()
        self._done = False
        self._unsettled: tuple[dict[str, Any] | None, list[HistoryRecord] | None] | None = None
        """What to settle and store once the final event is out (see :meth:`_complete`)."""
        self.response: ChatResponse | None = None
        """The whole response, once the stream has ended (also when it was interrupted)."""

    def _retry_delay(self, exc: BaseException) -> float | None:
        if self._state.delivered:
            return None
        return next_delay(exc, self._call.attempts, self._call.elapsed(), self._proxy.config.retry)

    def _end(
        self, interrupted: bool, error: BaseException | None
    ) -> tuple[StreamEvent | None, dict[str, Any] | None, list[HistoryRecord] | None]:
        """Mark the stream ended; return the final event and what to settle and store."""
        self._done = True
        call = self._call
        if (not self._state.delivered and error is not None) or isinstance(error, ToolLoopError):
            # No text arrived (or the tool loop ran away): the call failed as a whole.
            settle = call.settle_args(None)
            if self._proxy._notify_on:
                self._proxy._notify(call.event(call.spent, "error", error, True, call.model))
            return None, settle, None
        completion, usage = self._state.completion(call, interrupted)
        total = call.spent + usage
        response = call.response(completion, total)
        self.response = response
        settle = call.settle_args(usage)
        records = call.records(completion.message, total, response.model)
        if self._proxy._notify_on:
            outcome = "interrupted" if interrupted else "ok"
            self._proxy._notify(call.event(total, outcome, error, True, response.model))
        final = (
            None
            if interrupted
            else StreamEvent("", "", True, total, completion.finish_reason, response)
        )
        return final, settle, records

    def _complete(self) -> StreamEvent:
        """The final event of a stream that ended well; settling and storing wait for later.

        The caller gets the end of its answer at once; the ledger settle and the history
        append run when it asks for the next event (the end of a ``for`` loop), closes the
        stream, or drops it. The reservation covers the call until then, so a budget is never
        overspent in between.
        """
        final, settle, records = self._end(False, None)
        assert final is not None
        self._unsettled = (settle, records)
        return final

    def _settle_unsettled(self) -> None:
        """Settle and store what :meth:`_complete` left (blocking)."""
        pending, self._unsettled = self._unsettled, None
        if pending is not None:
            self._proxy._settle_and_store(self._call, *pending)

    def _round_done(self) -> tuple[Message, dict[str, Any] | None] | None:
        """At the end of a round that asked for tools: its message and what to settle."""
        call = self._call
        if not call.function_tools or not self._state.tool_calls:
            return None
        completion, usage = self._state.completion(call, False)
        settle = call.settle_args(usage)
        call.spent = call.spent + usage
        return completion.message, settle

    def _interrupted_error(self, exc: BaseException) -> BaseException:
        if self._state.delivered and isinstance(exc, ProviderError):
            return StreamInterrupted(
                f"stream broke after part of the answer arrived: {exc.detail}",
                provider=exc.provider,
                model=exc.model,
                status=exc.status,
            )
        return exc


class ChatStream(_StreamBase):
    """A streamed answer: iterate for :class:`~llmproxy.types.StreamEvent`s; a context manager.

    Retries happen only before any text has been delivered. A stream that breaks afterwards
    raises :class:`~llmproxy.errors.StreamInterrupted` once what arrived is stored and counted.
    The final event (``done``) comes as soon as the answer is complete; the call is settled in
    the ledger and stored in history when the iteration ends (the next ``next()``, as a ``for``
    loop makes), on :meth:`close`, or when the stream is dropped. Until then the call's
    reservation still holds its budget.
    """

    def __init__(self, proxy: Proxy, call: _Call, request: ChatRequest) -> None:
        super().__init__(proxy, call, request)
        self._sync_request = request
        self._it: Iterator[Chunk] | None = None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> StreamEvent:
        if self._done:
            self._settle_unsettled()
            raise StopIteration
        call = self._call
        while True:
            if self._it is None:
                call.attempts += 1
                call.total_attempts += 1
                self._it = iter(call.provider.stream(self._sync_request))
            try:
                chunk = next(self._it)
            except StopIteration:
                if self._tool_round():
                    continue
                return self._complete()
            except BaseException as exc:
                delay = self._retry_delay(exc)
                if delay is not None:
                    self._close_iterator()
                    self._state = _StreamState()
                    time.sleep(delay)
                    continue
                if not self._state.delivered and self._fallback(exc):
                    continue
                error = self._interrupted_error(exc)
                self._finish(True, error)
                if error is exc:
                    raise
                raise error from exc
            event = self._state.feed(chunk)
            if event is not None:
                return event

    def _tool_round(self) -> bool:
        """If the round asked for tools: settle it, run them, start the next round."""
        done = self._round_done()
        if done is None:
            return False
        assistant, settle = done
        call, proxy = self._call, self._proxy
        self._it = None
        if settle is not None and call.reservation is not None:
            proxy.ledger.settle(call.reservation, **settle)
        try:
            calls = call.tool_round(assistant)
        except ToolLoopError as exc:
            self._finish(True, exc)
            raise
        call.add_tool_results(assistant, [proxy._run_tool(call, c) for c in calls])
        self._state = _StreamState()
        args = call.reserve_args()
        if args is not None:
            try:
                call.reservation = proxy._reserve(call, args)
            except BaseException:
                self._done = True
                raise
        self._sync_request = call.build_request()
        return True

    def _fallback(self, exc: BaseException) -> bool:
        """Before any text: release this model's hold and move to the next fallback, if any."""
        call, proxy = self._call, self._proxy
        self._close_iterator()
        settle = call.settle_args(None)
        if settle is not None and call.reservation is not None:
            proxy.ledger.settle(call.reservation, **settle)
        if not call.advance(exc):
            return False
        self._state = _StreamState()
        args = call.reserve_args()
        if args is not None:
            try:
                call.reservation = proxy._reserve(call, args)
            except BaseException:
                self._done = True
                raise
        self._sync_request = call.build_request()
        return True

    def _close_iterator(self) -> None:
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.debug("closing a provider stream failed", exc_info=True)

    def _finish(self, interrupted: bool, error: BaseException | None) -> StreamEvent | None:
        final, settle, records = self._end(interrupted, error)
        self._proxy._settle_and_store(self._call, settle, records)
        return final

    def close(self) -> None:
        """Stop reading: close the connection, store what arrived (interrupted), settle."""
        if self._done:
            self._settle_unsettled()
            return
        self._close_iterator()
        if not self._state.received:
            self._done = True
            settle = self._call.settle_args(None)
            if settle is not None and self._call.reservation is not None:
                self._proxy.ledger.settle(self._call.reservation, **settle)
            return
        self._finish(True, None)

    def text(self) -> str:
        """Read the stream to its end and return the whole answer."""
        return "".join(event.text for event in self)

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True) or getattr(self, "_unsettled", None) is not None:
            try:
                self.close()
            except Exception:
                log.debug("finalising an abandoned stream failed", exc_info=True)


class AsyncChatStream(_StreamBase):
    """Async :class:`ChatStream`: ``async for`` over it; ``async with`` closes it."""

    def __init__(self, proxy: Proxy, call: _Call, request: ChatRequest | None) -> None:
        super().__init__(proxy, call, request)
        self._it: AsyncIterator[Chunk] | None = None

    async def _prepare(self) -> ChatRequest:
        call, proxy = self._call, self._proxy
        if call.use_history:
            call.set_history(
                await proxy.history.aload(call.session_id or "", proxy.config.history_limit)
            )
        args = call.reserve_args()
        if args is not None:
            call.reservation = await proxy._areserve(call, args)
        self._request = call.build_request()
        return self._request

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._done:
            await self._asettle_unsettled()
            raise StopAsyncIteration
        call = self._call
        request = self._request
        if request is None:
            try:
                request = await self._prepare()
            except BaseException as exc:
                self._done = True
                if self._proxy._notify_on:
                    self._proxy._notify(call.event(Usage(), "error", exc, True, call.model))
                raise
        while True:
            if self._it is None:
                call.attempts += 1
                call.total_attempts += 1
                self._it = aiter(call.provider.astream(request))
            try:
                chunk = await anext(self._it)
            except StopAsyncIteration:
                if await self._tool_round():
                    request = self._request
                    assert request is not None
                    continue
                return self._complete()
            except BaseException as exc:
                delay = self._retry_delay(exc)
                if delay is not None:
                    await self._close_iterator()
                    self._state = _StreamState()
                    await asyncio.sleep(delay)
                    continue
                if not self._state.delivered and await self._fallback(exc):
                    request = self._request
                    assert request is not None
                    continue
                error = self._interrupted_error(exc)
                await self._close_iterator()
                await self._finish(True, error)
                if error is exc:
                    raise
                raise error from exc
            event = self._state.feed(chunk)
            if event is not None:
                return event

    async def _tool_round(self) -> bool:
        """Async :meth:`ChatStream._tool_round` (the round's calls run concurrently)."""
        done = self._round_done()
        if done is None:
            return False
        assistant, settle = done
        call, proxy = self._call, self._proxy
        self._it = None
        if settle is not None and call.reservation is not None:
            await proxy.ledger.asettle(call.reservation, **settle)
        try:
            calls = call.tool_round(assistant)
        except ToolLoopError as exc:
            await self._finish(True, exc)
            raise
        results = await asyncio.gather(*(proxy._arun_tool(call, c) for c in calls))
        call.add_tool_results(assistant, results)
        self._state = _StreamState()
        args = call.reserve_args()
        if args is not None:
            try:
                call.reservation = await proxy._areserve(call, args)
            except BaseException:
                self._done = True
                raise
        self._request = call.build_request()
        return True

    async def _fallback(self, exc: BaseException) -> bool:
        """Async :meth:`ChatStream._fallback`."""
        call, proxy = self._call, self._proxy
        await self._close_iterator()
        settle = call.settle_args(None)
        if settle is not None and call.reservation is not None:
            await proxy.ledger.asettle(call.reservation, **settle)
        if not call.advance(exc):
            return False
        self._state = _StreamState()
        args = call.reserve_args()
        if args is not None:
            try:
                call.reservation = await proxy._areserve(call, args)
            except BaseException:
                self._done = True
                raise
        self._request = call.build_request()
        return True

    async def _close_iterator(self) -> None:
        it, self._it = self._it, None
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.debug("closing a provider stream failed", exc_info=True)

    async def _finish(self, interrupted: bool, error: BaseException | None) -> StreamEvent | None:
        final, settle, records = self._end(interrupted, error)
        await self._proxy._asettle_and_store(self._call, settle, records)
        return final

    async def _asettle_unsettled(self) -> None:
        pending, self._unsettled = self._unsettled, None
        if pending is not None:
            await self._proxy._asettle_and_store(self._call, *pending)

    async def aclose(self) -> None:
        """Stop reading: close the connection, store what arrived (interrupted), settle."""
        if self._done:
            await self._asettle_unsettled()
            return
        await self._close_iterator()
        if not self._state.received:
            self._done = True
            settle = self._call.settle_args(None)
            if settle is not None and self._call.reservation is not None:
                await self._proxy.ledger.asettle(self._call.reservation, **settle)
            return
        await self._finish(True, None)

    async def text(self) -> str:
        """Read the stream to its end and return the whole answer."""
        return "".join([event.text async for event in self])

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Abandoned without aclose(): settle and store synchronously (every store has sync twins).
        if getattr(self, "_unsettled", None) is not None:
            try:
                self._settle_unsettled()
            except Exception:
                log.debug("finalising an abandoned stream failed", exc_info=True)
            return
        if getattr(self, "_done", True):
            return
        self._done = True
        try:
            _final, settle, records = (
                self._end(True, None)
                if self._state.received
                else (None, self._call.settle_args(None), None)
            )
            self._proxy._settle_and_store(self._call, settle, records)
        except Exception:
            log.debug("finalising an abandoned stream failed", exc_info=True)


__all__ = ["AsyncChatStream", "ChatStream", "Proxy", "redact"]
