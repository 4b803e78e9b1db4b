"""The state of one call and every decision made on it, with no I/O.

:class:`CallOptions` holds what a call was asked with (checked once); :class:`Call` the state of
a running call (its model and provider, claims, reservation, tool rounds, what it spent) and
the decisions the flow in :mod:`llmproxy.flow` takes on it; :class:`StreamState` what one
streamed attempt has delivered; :class:`LimitWaiter` whether a refusal is worth waiting out.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import (
    Callable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from attrs import frozen

from llmproxy.budget.base import Claim, Rates, Reservation
from llmproxy.budget.policy import CallScope
from llmproxy.config import ProxyConfig
from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    LLMProxyError,
    ProviderError,
    RateLimited,
    SchemaError,
    StreamInterrupted,
    ToolLoopError,
)
from llmproxy.history.base import HistoryRecord
from llmproxy.provider import ChunkAssembler, Provider
from llmproxy.retry import next_delay
from llmproxy.secret import scrub, scrub_message
from llmproxy.structured import OutputSpec, output_spec, schema_instructions
from llmproxy.tokens import (
    DEFAULT_INPUT_MARGIN,
    InputMargin,
    messages_upper_bound,
    text_upper_bound,
)
from llmproxy.tools import HostedTool, Tool, ToolResult
from llmproxy.types import (
    PART_TYPES,
    Audio,
    CallEvent,
    ChatRequest,
    ChatResponse,
    Chunk,
    Completion,
    Document,
    EmbeddingResult,
    EmbedRequest,
    Image,
    Message,
    Part,
    StreamEvent,
    Text,
    ToolCall,
    Usage,
    text_of,
)

if TYPE_CHECKING:
    from llmproxy.proxy import Proxy

log = logging.getLogger("llmproxy")

_Counted = TypeVar("_Counted")
"""What a provider counts tokens of: messages or a text."""

Prompt = str | Message | Part | Sequence[Message | Mapping[str, Any] | str | Part]
"""A call's prompt: text, a message, a list of messages (or dicts), or a list of a user
message's parts (strings and :class:`~llmproxy.types.Image`, ``Document``, ``Audio``)."""
ToolSpec = Tool | HostedTool | str | Callable[..., Any] | Mapping[str, Any]

_MESSAGE_KEYS = frozenset(("role", "content", "name", "tool_call_id", "tool_calls", "reasoning"))


# -- the call's options ------------------------------------------------------------------------


def _check_options(options: CallOptions) -> None:
    """Refuse malformed options by name, before anything is sent."""
    if options.model is not None and not isinstance(options.model, str):
        raise InvalidRequest(
            f"model must be a string such as 'openai/gpt-5.4-mini', got {options.model!r}",
            field="model",
        )
    if options.system is not None:
        if not isinstance(options.system, str):
            raise InvalidRequest("system must be a string", field="system")
        check_text(options.system, "system")
    sid = options.session_id
    if sid is not None and (not isinstance(sid, str) or not sid):
        raise InvalidRequest("session_id must be a non-empty string", field="session_id")
    if options.user is not None and not isinstance(options.user, str):
        raise InvalidRequest("user must be a string", field="user")
    cap = options.max_output_tokens
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise InvalidRequest(
            f"max_output_tokens must be a whole number of at least 1, got {cap!r}",
            field="max_output_tokens",
        )
    temperature = options.temperature
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
    ):
        raise InvalidRequest(
            f"temperature must be a finite number, got {temperature!r}", field="temperature"
        )
    if options.key is not None and not isinstance(options.key, str):
        raise InvalidRequest("key must be a string (a key id, never a secret)", field="key")
    tags = options.tags
    if tags is not None and not (
        isinstance(tags, Mapping) and all(isinstance(v, str) for v in tags.values())
    ):
        raise InvalidRequest("tags must map names to strings", field="tags")
    if options.tool_choice is not None and not isinstance(options.tool_choice, str):
        raise InvalidRequest(
            "tool_choice must be auto, none, required or a tool name", field="tool_choice"
        )
    rounds = options.max_tool_rounds
    if rounds is not None and (
        isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0
    ):
        raise InvalidRequest("max_tool_rounds must be a whole number >= 0", field="max_tool_rounds")
    if isinstance(options.fallbacks, str):
        raise InvalidRequest("fallbacks must be a list of model names", field="fallbacks")
    if not isinstance(options.run_tools, bool):
        raise InvalidRequest(
            f"run_tools must be True or False, got {options.run_tools!r}", field="run_tools"
        )
    _check_schema_options(options)
    _check_cache_option(options.cache)


def _check_cache_option(cache: object) -> None:
    """Refuse a ``cache`` that is neither a switch nor a positive number of seconds."""
    if cache is None or isinstance(cache, bool):
        return
    if not isinstance(cache, (int, float)) or not math.isfinite(cache) or cache <= 0:
        raise InvalidRequest(
            "cache must be True, False or a time to live in seconds above 0 (cache=3600),"
            f" got {cache!r}",
            field="cache",
        )


def _check_schema_options(options: CallOptions) -> None:
    """Refuse a ``schema`` that has no JSON schema and a ``schema_retries`` that is not a count."""
    retries = options.schema_retries
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise InvalidRequest(
            f"schema_retries must be a whole number >= 0, got {retries!r}", field="schema_retries"
        )
    if options.schema is not None:
        output_spec(options.schema)  # raises InvalidRequest(field="schema")
    elif retries:
        raise InvalidRequest("schema_retries needs a schema to check against", field="schema")


@frozen
class CallOptions:
    """Everything a call was asked with, checked once; the four call methods build one each.

    The fields are the keyword arguments of :meth:`llmproxy.Proxy.chat` (``extra`` holds the
    provider-specific ones, passed through untouched; ``schema`` and ``schema_retries`` come after
    it, see :mod:`llmproxy.structured`; ``cache`` asks for the response cache, see
    :mod:`llmproxy.cache`). Malformed values raise
    :class:`~llmproxy.errors.InvalidRequest` naming the field when the value is built.

    >>> CallOptions(model="openai/gpt-5.4-mini", max_output_tokens=100).max_output_tokens
    100
    """

    model: str | None = None
    system: str | None = None
    session_id: str | None = None
    user: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    use_history: bool | None = None
    fallbacks: Sequence[str] | None = None
    key: str | None = None
    tags: Mapping[str, str] | None = None
    tools: Sequence[ToolSpec] | None = None
    tool_choice: str | None = None
    max_tool_rounds: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    run_tools: bool = True
    schema: Any = None
    schema_retries: int | None = None
    cache: bool | float | None = None

    def __attrs_post_init__(self) -> None:
        _check_options(self)


def check_text(text: str, field: str) -> None:
    """Refuse text that cannot be sent as UTF-8 (a lone surrogate such as ``"\ud800"``)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{field} holds a lone surrogate ({text[exc.start]!r} at index {exc.start}), which no"
            " service can receive: pass valid Unicode text (decode bytes with errors='replace')",
            field=field,
        ) from None


def as_messages(prompt: Prompt) -> list[Message]:
    """Turn a call's prompt into messages.

    A string, a Message, or a list of messages (Message objects or ``{'role': ..., 'content':
    ...}`` dicts); or the parts of one user message: a part alone, or a list of strings and
    parts (``["What is in this picture?", Image.from_path("cat.png")]``).
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRequest("prompt is empty: pass the text to send", field="prompt")
        check_text(prompt, "prompt")
        return [Message("user", prompt)]
    if isinstance(prompt, Message):
        _check_message_text(prompt, "prompt")
        return [prompt]
    if isinstance(prompt, PART_TYPES):
        return [_parts_message([prompt], "prompt")]
    if isinstance(prompt, Mapping) or not isinstance(prompt, Sequence):
        raise InvalidRequest(
            "prompt must be a string, a Message, a list of messages"
            f" ({{'role': ..., 'content': ...}} dicts or Message objects) or a list of a message's"
            f" parts (strings, Image, Document, Audio); got {type(prompt).__name__}",
            field="prompt",
        )
    if not prompt:
        raise InvalidRequest("prompt is an empty list: pass at least one message", field="prompt")
    if not any(isinstance(item, (Message, Mapping)) for item in prompt):
        return [_parts_message(prompt, "prompt")]
    out: list[Message] = []
    for index, item in enumerate(prompt):
        if isinstance(item, Message):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(_message_from_dict(index, item))
        else:
            raise InvalidRequest(
                f"prompt[{index}] must be a Message or a dict, got {type(item).__name__}"
                " (a list of strings and parts makes one message: do not mix it with messages)",
                field=f"prompt[{index}]",
            )
        _check_message_text(out[-1], f"prompt[{index}]")
    if all(m.role == "system" for m in out):
        raise InvalidRequest("prompt has only system messages: add a user message", field="prompt")
    return out


def _check_message_text(message: Message, where: str) -> None:
    check_text(message.content, f"{where}.content")
    for index, part in enumerate(message.parts):
        if isinstance(part, Text):
            check_text(part.text, f"{where}.parts[{index}].text")


def _parts_message(items: Sequence[Any], where: str, role: str = "user") -> Message:
    """One message of the parts ``items`` (strings become Text parts), each checked by index."""
    parts: list[Part] = []
    for index, item in enumerate(items):
        part: Part
        if isinstance(item, str):
            part = Text(item)
        elif isinstance(item, (Text, Image, Document, Audio)):
            part = item
        else:
            raise InvalidRequest(
                f"{where}[{index}] must be a string, Text, Image, Document or Audio;"
                f" got {type(item).__name__}",
                field=f"{where}[{index}]",
            )
        if isinstance(part, Text):
            check_text(part.text, f"{where}[{index}].text")
        parts.append(part)
    if not any(not isinstance(p, Text) or p.text.strip() for p in parts):
        raise InvalidRequest(f"{where} has no content: pass text or a part", field=where)
    try:
        return Message.with_parts(role, parts)  # type: ignore[arg-type]  # role checked by Message
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc}", field=f"{where}.{exc.field}") from None


def _message_from_dict(index: int, item: Mapping[str, Any]) -> Message:
    unknown = set(item) - _MESSAGE_KEYS
    if unknown:
        raise InvalidRequest(
            f"prompt[{index}] has unknown keys {sorted(unknown)}", field=f"prompt[{index}]"
        )
    if "role" not in item:
        raise InvalidRequest(f"prompt[{index}] has no 'role'", field=f"prompt[{index}].role")
    calls = tuple(
        c if isinstance(c, ToolCall) else ToolCall(**c) for c in item.get("tool_calls", ())
    )
    content = item.get("content") or ""
    if not isinstance(content, str) and isinstance(content, Sequence):
        where = f"prompt[{index}].content"
        parts = _parts_message(content, where, item["role"]).parts
        content = text_of(parts)
    else:
        parts = ()
    try:
        return Message(
            item["role"],
            content,
            parts=parts,
            name=item.get("name"),
            tool_calls=calls,
            tool_call_id=item.get("tool_call_id"),
            reasoning=item.get("reasoning"),
        )
    except InvalidRequest as exc:
        raise InvalidRequest(
            f"prompt[{index}]: {exc}", field=f"prompt[{index}].{exc.field}"
        ) from None


# -- the state of one call ---------------------------------------------------------------------


class Call:
    """The state of one call and the decisions made on it; no I/O happens here."""

    __slots__ = (
        "asked_cap",
        "attempt_errors",
        "attempts",
        "cache_for",
        "cache_hit",
        "cache_key",
        "cache_ttl",
        "claims",
        "early",
        "extra",
        "fallbacks",
        "final",
        "first_chunk",
        "function_tools",
        "history",
        "input_count",
        "input_estimate",
        "key",
        "max_output_tokens",
        "max_tool_rounds",
        "model",
        "new_messages",
        "output",
        "parsed",
        "provider",
        "provider_name",
        "proxy",
        "request",
        "reservation",
        "rounds",
        "route",
        "schema_retries",
        "schema_rounds",
        "scope",
        "sent",
        "session_id",
        "settled",
        "spent",
        "started",
        "started_at",
        "steps",
        "stream",
        "streamed",
        "system",
        "tags",
        "temperature",
        "tool_choice",
        "tools",
        "total_attempts",
        "use_history",
        "user",
    )

    def __init__(self, proxy: Proxy, prompt: Prompt, options: CallOptions, streamed: bool) -> None:
        self.started = time.perf_counter()
        self.started_at = time.time()
        self.proxy = proxy
        self.streamed = streamed
        self.first_chunk: float | None = None
        self.new_messages = as_messages(prompt)
        self.sent: tuple[Message, ...] | None = None
        self.system = options.system
        self.session_id = options.session_id
        self.user = options.user
        self.max_output_tokens = options.max_output_tokens
        self.temperature = options.temperature
        self.extra = options.extra
        self.key = options.key
        self.tags: Mapping[str, str] = options.tags or {}
        self.tools = proxy._resolve_tools(options.tools)
        self.function_tools = {t.name: t for t in self.tools if isinstance(t, Tool)}
        if not options.run_tools or any(t.function is None for t in self.function_tools.values()):
            # The caller runs the tools (run_tools=False, or a tool offered as a definition
            # only): the Proxy runs none, and the model's calls are handed back.
            self.function_tools = {}
        self.tool_choice = options.tool_choice
        rounds = options.max_tool_rounds
        self.max_tool_rounds = proxy.config.max_tool_rounds if rounds is None else rounds
        self.rounds = 0
        self.spent = Usage()
        self.steps: list[Message] = []
        self.final: ChatResponse | None = None
        self.stream: StreamState | None = None
        self.fallbacks = proxy._fallbacks_for(options.model, options.fallbacks)
        self.total_attempts = 0
        self.attempt_errors: tuple[BaseException, ...] = ()
        self.route = proxy._route_for(options.model)
        self._target(self._routed() if self.route is not None else proxy._resolve(options.model))
        use_history = (
            proxy.config.use_history if options.use_history is None else options.use_history
        )
        self.use_history = use_history and options.session_id is not None
        self.history: list[Message] = []
        self.output: OutputSpec | None = (
            None if options.schema is None else output_spec(options.schema)
        )
        self.schema_retries = options.schema_retries or 0
        self.schema_rounds = 0
        self.parsed: Any = None
        self.cache_ttl = proxy._cache_ttl(options.cache)
        self.cache_key: str | None = None
        self.cache_for: tuple[str, str] | None = None
        self.cache_hit = False

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
            self.alias(),
        )
        claims: list[Claim] = []
        for policy in self.proxy.policies:
            claim = policy.claim(self.scope)
            if claim is not None:
                claims.append(claim)
        self.claims = claims
        self.reservation: Reservation | None = None
        self.early: Any = None  # a reserve sent with the history load (llmproxy.pipelining)
        self.input_estimate = 0
        self.input_count = 0
        self.attempts = 0
        self.settled = False
        self.request: ChatRequest | None = None
        self.asked_cap: int | None = None

    def advance(self, error: BaseException) -> bool:
        """After ``error`` on this model (retries spent), aim at the next fallback model.

        Only retryable failures (429, 5xx, timeouts, connection errors) fall back, and a
        content part this model's provider cannot take (an image sent to a text-only model:
        :class:`~llmproxy.errors.UnsupportedContent`, raised before anything was sent); a
        fallback whose provider cannot be set up (no key) is skipped. Returns False when none
        is left. The caller must have settled this model's reservation first.
        """
        from llmproxy.errors import UnsupportedContent  # only on a failure: not on the hot path

        route = self.route
        if route is not None and route.moving is not None:  # see failover_wait
            previous = f"{self.provider_name}/{self.model}"
            if route.next() is not None and self._retarget(previous):
                log.warning(
                    "%s: moved from %s to %s after: %s",
                    route.alias,
                    previous,
                    route.current,
                    error,
                )
                return True
        unsupported = isinstance(error, UnsupportedContent)
        if not unsupported and (not isinstance(error, ProviderError) or not error.retryable):
            return False
        while self.fallbacks:
            name = self.fallbacks.pop(0)
            try:
                self.route = self.proxy._route_for(name)
                resolved = self._routed() if self.route is not None else self.proxy._resolve(name)
            except LLMProxyError as exc:
                log.warning("skipping fallback %s: %s", name, exc)
                continue
            log.warning(
                "falling back from %s/%s to %s %s: %s",
                self.provider_name,
                self.model,
                name,
                "because it cannot take a content part" if unsupported else "after",
                error,
            )
            self._target(resolved)
            return True
        return False

    # -- routing (an alias with several deployments: llmproxy.routing) ------------------------

    def _routed(self) -> tuple[str, str, Provider]:
        """Resolve the route's current deployment, passing over those that cannot be set up."""
        route = self.route
        assert route is not None
        model = route.current or route.first()
        first_error: LLMProxyError | None = None
        while model is not None:
            try:
                return self.proxy._resolve(model)
            except LLMProxyError as exc:
                log.warning("%s: skipping deployment %s: %s", route.alias, model, exc)
                first_error = first_error or exc
                model = route.unusable_now(model)
        route.done = True
        if first_error is not None:
            raise first_error
        raise ConfigError(f"{route.alias!r} has no usable deployment", path=f"models.{route.alias}")

    def alias(self) -> str | None:
        """The alias the caller named, while the call is on one of its deployments."""
        route = self.route
        if route is None or not route.on_deployment(f"{self.provider_name}/{self.model}"):
            return None
        return route.alias

    def end_attempt(self, error: BaseException | None, *, answered: bool) -> None:
        """An attempt ended (answered, or with ``error``): the router learns from it."""
        if self.route is not None:
            self.route.end(error, answered=answered)

    def attempt_failed(self, error: BaseException) -> None:
        """An attempt failed with ``error`` (not the caller closing a stream).

        The router learns from it, and the call's event carries it (``attempt_errors``).
        """
        self.end_attempt(error, answered=False)
        self.attempt_errors += (error,)

    def failover_wait(self, error: BaseException) -> float | None:
        """After a failed attempt on a deployment: seconds to wait before the next one, or None.

        0 moves at once to a deployment not yet tried in this turn (not a retry); a delay is
        one of the caller's retries. :meth:`advance` then aims at the deployment (after the
        wait, so that the pick sees the cooldowns as they are then).
        """
        route = self.route
        if route is None:
            return None
        return route.after_failure(error, self.elapsed(), self.proxy.config.retry)

    def skip_limited(self, error: BudgetExceeded | RateLimited) -> bool:
        """A deployment's limit refused the reservation: aim at another with room, if any."""
        route = self.route
        previous = f"{self.provider_name}/{self.model}"
        if route is None or route.after_limit(error) is None or not self._retarget(previous):
            return False
        log.info(
            "%s: %s is at its limit (%s), trying %s", route.alias, previous, error, route.current
        )
        return True

    def reaim(self) -> None:
        """Before a new turn: leave a deployment that cooled down meanwhile for a healthy one."""
        route = self.route
        if route is not None and self.reservation is None and route.recheck() is not None:
            self._retarget(f"{self.provider_name}/{self.model}")

    def _retarget(self, previous: str) -> bool:
        """Aim at the route's current deployment; False (still on ``previous``) when none works."""
        route = self.route
        assert route is not None
        try:
            resolved = self._routed()
        except LLMProxyError as exc:
            log.warning("%s: no other deployment can be used: %s", route.alias, exc)
            route.current = previous
            return False
        self._target(resolved)
        return True

    # -- planning --------------------------------------------------------------------------------

    def set_history(self, records: list[HistoryRecord]) -> None:
        """Take the session's stored messages as the context sent before the new ones."""
        self.history = [r.message for r in records]
        self.sent = None

    def messages(self) -> tuple[Message, ...]:
        """Everything sent upstream: the system prompt, the history, the new messages.

        Scrubbed of the process's secrets (:func:`llmproxy.secret.scrub`): a prompt or a tool
        output holding a provider or gateway key never reaches the upstream. The history is
        sent as stored: every record was scrubbed when it was written (:meth:`records`), and
        scrubbing it again on every call would cost time in proportion to the session's length.
        Built once per round (counting, each attempt's request and a stream's estimate all
        read it).
        """
        sent = self.sent
        if sent is None:
            head = [Message("system", self.system)] if self.system else []
            fresh = (scrub_message(m) for m in (*head, *self.new_messages))
            if head:
                first = next(fresh)
                sent = (first, *self.history, *fresh)
            else:
                sent = (*self.history, *fresh)
            self.sent = sent
        return sent

    def reserve_args(self) -> dict[str, Any] | None:
        """Return the ledger.reserve arguments, or None when no policy applies."""
        if not self.claims:
            return None
        token_claims = any(c.unit != "requests" for c in self.claims)
        cap = self._cap(token_claims)
        self.asked_cap = cap
        self.input_count = 0
        if token_claims:
            self.input_estimate, self.input_count = self.margined_input()
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
            # The highest rates any usage within the reserved input could be billed at.
            input_rate, output_rate = price.bound(args["input_tokens"])
            args["rates"] = Rates(input_rate / 1_000_000, output_rate / 1_000_000)
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
        """The request for the next attempt, with the output cap the reservation granted."""
        if self.reservation is not None and any(c.unit in ("tokens", "usd") for c in self.claims):
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
            self.attempt_timeout(),
            self.output.schema if self.output is not None else None,
        )
        return self.request

    def attempt_timeout(self) -> float | None:
        """Seconds the next attempt may take in all: what is left of the call's deadline.

        Never below a millisecond, so that a provider times out rather than waits forever.
        """
        limit = self.proxy.config.retry.deadline
        if limit is None:
            return None
        return max(limit - self.elapsed(), 0.001)

    def past_deadline(self) -> bool:
        """Whether the call has run past its deadline (checked between a stream's chunks)."""
        limit = self.proxy.config.retry.deadline
        return limit is not None and self.elapsed() > limit

    def for_attempt(self, request: ChatRequest) -> ChatRequest:
        """``request`` with the deadline left for a retry (the first attempt has it already)."""
        if self.route is not None:
            self.route.begin()
        if self.attempts <= 1 or request.timeout is None:
            return request
        self.request = attrs.evolve(request, timeout=self.attempt_timeout())
        return self.request

    def budget_capped(self) -> bool:
        """Whether a budget's remaining room lowered the output cap below what was asked."""
        request, reservation = self.request, self.reservation
        if request is None or reservation is None or request.max_output_tokens is None:
            return False
        return self.asked_cap is not None and request.max_output_tokens < self.asked_cap

    # -- tool rounds -----------------------------------------------------------------------------

    def wants_tools(self, message: Message) -> bool:
        """Whether the model asked for tool calls the Proxy should run and answer.

        Never when the call hands its tool calls back (``run_tools=False``, or a tool offered
        without a function): the response carries them, for the caller to run.
        """
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
        outputs = [
            Message("tool", scrub(r.output), name=r.name, tool_call_id=r.call_id) for r in results
        ]
        assistant = scrub_message(assistant)
        self.new_messages.extend([assistant, *outputs])
        self.sent = None
        self.steps.extend([assistant, *outputs])
        self.first_chunk = self.ttft_at()
        self.stream = None
        self.reservation = None
        self.settled = False
        self.attempts = 0
        self.request = None

    # -- structured output -----------------------------------------------------------------------

    def parse_output(self, completion: Completion) -> SchemaError | None:
        """Parse a final answer when the call asked for a schema (into :attr:`parsed`).

        Returns the :class:`~llmproxy.errors.SchemaError` of an answer that does not fit (the
        flow retries or raises it), None when it fits or no schema was asked for.
        """
        if self.output is None:
            return None
        try:
            self.parsed = self.output.parse(completion.message.content)
        except SchemaError as exc:
            return exc
        return None

    def schema_retry(self, reply: Message, error: SchemaError) -> bool:
        """Start a schema retry round: the reply and the errors go back to the model.

        Returns False when ``schema_retries`` are spent (the caller raises ``error``). The round
        is set up as a tool round is: the caller has settled the last hold and reserves anew.
        """
        if self.schema_rounds >= self.schema_retries:
            return False
        self.schema_rounds += 1
        problems = "\n".join(f"- {e}" for e in error.errors)
        feedback = Message(
            "user",
            "Your answer does not fit the JSON schema:\n"
            f"{problems}\nAnswer again with only the corrected JSON.",
        )
        reply = scrub_message(reply)
        self.new_messages.extend([reply, feedback])
        self.steps.extend([reply, feedback])
        self.sent = None
        self.first_chunk = self.ttft_at()
        self.stream = None
        self.reservation = None
        self.settled = False
        self.attempts = 0
        self.request = None
        return True

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
        """Seconds since the call started."""
        return time.perf_counter() - self.started

    def retry_delay(self, error: BaseException) -> float | None:
        """How long to wait before retrying after ``error``; None to stop retrying this model.

        A stream is retried only before any of its text was delivered.
        """
        if self.stream is not None and self.stream.delivered:
            return None
        if self.route is not None and not self.route.done:
            return None  # the route moves on or retries (failover_wait)
        return next_delay(error, self.attempts, self.elapsed(), self.proxy.config.retry)

    def answering_model(self) -> str:
        """The model answering: the upstream's own name once a chunk gave it, else the resolved one.

        The same value the response's ``model`` will hold (after fallbacks).
        """
        named = self.stream.model if self.stream is not None else None
        return named or self.model

    def delivered(self) -> bool:
        """Whether part of a streamed answer has reached the caller."""
        return self.stream is not None and self.stream.delivered

    def ttft_at(self) -> float | None:
        """When (:func:`time.perf_counter`) the call's first streamed text arrived, or None.

        Kept across tool and schema rounds, each of which starts a new stream state.
        """
        if self.first_chunk is None and self.stream is not None:
            return self.stream.first_at
        return self.first_chunk

    def ttft(self) -> float | None:
        """Seconds from the call's start to its first streamed text; None when none arrived."""
        first = self.ttft_at()
        return None if first is None else first - self.started

    def count_input(self) -> int:
        """The provider's count of the request's input: its messages and its tool definitions."""
        count = self.count_messages()
        if self.tools:
            # Tool definitions are input too; providers render them more tersely than JSON.
            count += sum(
                self.count_text(json.dumps(t.wire(), separators=(",", ":"))) for t in self.tools
            )
        if self.output is not None:
            # However the provider asks for it, the schema is input: counted as the instruction
            # text (the schema with a sentence around it, as DeepSeek gets it), an upper bound.
            count += self.count_text(schema_instructions(self.output.schema))
        return count

    def input_margin(self) -> InputMargin:
        """The margin the provider declares for the model (the core default when it has none).

        A provider whose ``input_margin`` fails or returns something else is logged and gets
        :data:`~llmproxy.tokens.DEFAULT_INPUT_MARGIN`.
        """
        declared = getattr(self.provider, "input_margin", None)
        if declared is None:
            return DEFAULT_INPUT_MARGIN
        try:
            margin = declared(self.model)
        except Exception:
            log.exception(
                "provider %r failed to give its input margin for %s; using the default",
                self.provider_name,
                self.model,
            )
            return DEFAULT_INPUT_MARGIN
        if not isinstance(margin, InputMargin):
            log.error(
                "provider %r gave %r as its input margin for %s, not an InputMargin;"
                " using the default",
                self.provider_name,
                margin,
                self.model,
            )
            return DEFAULT_INPUT_MARGIN
        return margin

    def margined_input(self) -> tuple[int, int]:
        """The input tokens to reserve, and the provider's count they come from.

        The reservation is the count plus the provider's margin, corrected by what was learned
        of the model (:mod:`llmproxy.budget.calibration`). The ledger grants the output cap from
        the room left after it, so billed input up to it plus the capped output fit the hold.
        """
        count = self.count_input()
        reserve = self.proxy.calibration.reserve(
            self.provider_name,
            self.model,
            self.input_margin(),
            count,
            len(self.messages()),
            len(self.tools),
        )
        return reserve, count

    def learn_input(self, usage: Usage) -> None:
        """Compare the input the service billed with the count, for the model's next calls.

        Nothing is learned from an estimated usage, a request that was not counted, or one that
        offered hosted tools (what they retrieve is input no count can see).
        """
        if usage.estimated or self.input_count <= 0:
            return
        if any(isinstance(t, HostedTool) for t in self.tools):
            return
        billed = usage.input_tokens
        self.proxy.calibration.observe(
            self.provider_name,
            self.model,
            self.input_margin(),
            billed=billed,
            counted=self.input_count,
            messages=len(self.messages()),
            tools=len(self.tools),
        )
        if billed > self.input_estimate:
            ratio, offset = self.proxy.calibration.learned(self.provider_name, self.model)
            log.warning(
                "%s/%s billed %d input tokens, more than the %d reserved (counted %d): its"
                " provider's input margin is too small; its next reservations scale the count"
                " by %.3f and add %d tokens",
                self.provider_name,
                self.model,
                billed,
                self.input_estimate,
                self.input_count,
                ratio,
                offset,
            )

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
        """Count a reply that arrived without usage: the input estimate plus the text's tokens.

        The input is what was reserved for it (the count plus the provider's margin), so an
        unknown bill is charged high rather than low.
        """
        input_tokens = self.input_estimate or self.margined_input()[0]
        return Usage(input_tokens, self.count_text(text), estimated=True)

    def priced(self, usage: Usage) -> Usage:
        """Return ``usage`` with its USD cost, when the model is priced."""
        price = self.proxy.prices.get(self.provider_name, self.model, at=self.started_at)
        if price is None:
            return usage
        return attrs.evolve(usage, cost=price.cost(usage))

    def usage_of(self, completion: Completion) -> Usage:
        """A whole reply's usage, counted from its text when the provider sent none; priced.

        A usage the provider sent teaches the model's input calibration (:meth:`learn_input`).
        """
        if completion.usage is not None:
            self.learn_input(completion.usage)
            return self.priced(completion.usage)
        return self.priced(self.estimate_usage(completion.message.content))

    def response(self, completion: Completion, usage: Usage) -> ChatResponse:
        """The caller's answer (kept as :attr:`final` for a stream's ``response``)."""
        request = self.request
        self.final = ChatResponse(
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
            request.max_output_tokens if request is not None else None,
            self.budget_capped(),
            self.parsed,
        )
        return self.final

    def records(self, reply: Message, usage: Usage, model: str) -> list[HistoryRecord] | None:
        """The history records of the exchange, or None when it is not stored.

        Every message is scrubbed of the process's secrets (:func:`llmproxy.secret.scrub`).
        Each record has an id of its own, so that a write replayed from the journal after a
        store answered late is stored once.
        """
        if not self.use_history or self.session_id is None:
            return None
        reply = scrub_message(reply)
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
                    scrub_message(m),
                    model,
                    self.provider_name,
                    now,
                    usage.input_tokens if first else 0,
                    0,
                    self.user,
                    uuid.uuid4().hex,
                )
            )
            first = False
        out.append(
            HistoryRecord(
                sid,
                reply,
                model,
                self.provider_name,
                now,
                0,
                usage.output_tokens,
                self.user,
                uuid.uuid4().hex,
            )
        )
        return out

    def settle_args(self, usage: Usage | None) -> dict[str, Any] | None:
        """The ledger.settle arguments for this model's hold (once), or None when none is held."""
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

    def notify(self, usage: Usage, outcome: str, error: BaseException | None, model: str) -> None:
        """Send the call's one observer event, when someone listens."""
        proxy = self.proxy
        if not proxy._notify_on:
            return
        proxy._notify(
            CallEvent(
                model,
                self.provider_name,
                usage,
                self.elapsed(),
                self.session_id,
                self.user,
                outcome,
                error,
                self.total_attempts,
                self.streamed,
                self.started_at,
                self.key,
                self.tags,
                cache_hit=self.cache_hit,
                alias=self.alias(),
                ttft=self.ttft(),
                attempt_errors=earlier_errors(self.attempt_errors, error),
            )
        )

    def interrupted_error(self, error: BaseException) -> BaseException:
        """The error the caller sees: a provider failure after text arrived is an interruption."""
        if self.delivered() and isinstance(error, ProviderError):
            interrupted = StreamInterrupted(
                f"stream broke after part of the answer arrived: {error.detail}",
                provider=error.provider,
                model=error.model,
                status=error.status,
            )
            interrupted.__cause__ = error  # (raised from it; set now for earlier_errors)
            return interrupted
        return error


class LimitWaiter:
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
        """Seconds to wait before reserving again, or None to give up and raise ``exc``."""
        left = self.deadline - time.monotonic()
        if isinstance(exc, RateLimited):
            if self.config.on_limit != "wait" or exc.retry_after > left:
                return None
            return exc.retry_after
        if exc.reserved <= 0 or exc.used + exc.requested > exc.limit or left <= 0:
            return None
        delay, self.poll = min(self.poll, left), min(self.poll * 2, 0.1)
        return delay


class StreamState(ChunkAssembler):
    """What one streamed attempt has received and delivered; turns chunks into stream events."""

    def __init__(self) -> None:
        super().__init__()
        self.received = False
        self.delivered = False
        self.first_at: float | None = None
        """When (:func:`time.perf_counter`) the first text or reasoning was delivered."""

    def take(self, chunk: Chunk) -> StreamEvent | None:
        """Take one chunk; return the event to deliver, or None when it carries no text."""
        self.received = True
        self.feed(chunk)
        if chunk.text or chunk.reasoning:
            if not self.delivered:
                self.delivered = True
                self.first_at = time.perf_counter()
            return StreamEvent(chunk.text, chunk.reasoning)
        return None

    def outcome(self, call: Call, interrupted: bool) -> tuple[Completion, Usage]:
        """What arrived as a completion, with its usage (counted when the service sent none)."""
        completion = self.completion(call.model, interrupted=interrupted)
        usage = self.usage
        if usage is None:
            usage = call.estimate_usage(completion.message.content) if self.received else Usage()
        else:
            call.learn_input(usage)
        usage = call.priced(usage)
        return attrs.evolve(completion, usage=usage), usage


# -- embeddings --------------------------------------------------------------------------------


def as_texts(texts: str | Sequence[str]) -> tuple[str, ...]:
    """The texts of an embed call: one string or a non-empty list of non-empty strings."""
    items: tuple[object, ...]
    if isinstance(texts, str):
        items, single = (texts,), True
    elif isinstance(texts, Sequence):
        items, single = tuple(texts), False
        if not items:
            raise InvalidRequest("texts is an empty list: pass at least one text", field="texts")
    else:
        raise InvalidRequest(
            f"texts must be a string or a list of strings, got {type(texts).__name__}",
            field="texts",
        )
    out: list[str] = []
    for index, text in enumerate(items):
        where = "texts" if single else f"texts[{index}]"
        if not isinstance(text, str):
            raise InvalidRequest(
                f"{where} must be a string, got {type(text).__name__}", field=where
            )
        if not text.strip():
            raise InvalidRequest(
                f"{where} is empty: every text to embed needs content", field=where
            )
        check_text(text, where)
        out.append(text)
    return tuple(out)


class EmbedCall:
    """The state of one embed call and the decisions made on it; no I/O happens here.

    The texts are counted once per model (exactly with a provider's tokenizer, else an upper
    bound), split into batches the provider accepts (:class:`~llmproxy.provider.EmbedLimits`),
    and reserved as a whole, input only, before the first batch is sent. A fallback model
    starts again from the first batch: vectors of two models do not mix.
    """

    __slots__ = (
        "attempt_errors",
        "attempts",
        "claims",
        "counts",
        "dimensions",
        "extra",
        "fallbacks",
        "key",
        "limits",
        "model",
        "provider",
        "provider_name",
        "proxy",
        "reservation",
        "scope",
        "settled",
        "spent",
        "started",
        "started_at",
        "tags",
        "texts",
        "total_attempts",
        "user",
    )

    session_id: None = None
    streamed = False

    def __init__(
        self,
        proxy: Proxy,
        texts: str | Sequence[str],
        *,
        model: str | None,
        dimensions: int | None,
        user: str | None,
        key: str | None,
        tags: Mapping[str, str] | None,
        fallbacks: Sequence[str] | None,
        extra: Mapping[str, Any],
    ) -> None:
        self.started = time.perf_counter()
        self.started_at = time.time()
        self.proxy = proxy
        self.texts = as_texts(texts)
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise InvalidRequest(
                f"dimensions must be a whole number of at least 1, got {dimensions!r}",
                field="dimensions",
            )
        # The chat options' own checks for what the two calls share.
        checked = CallOptions(model=model, user=user, key=key, tags=tags, fallbacks=fallbacks)
        self.dimensions = dimensions
        self.user = checked.user
        self.key = checked.key
        self.tags: Mapping[str, str] = checked.tags or {}
        self.extra = extra
        self.spent = Usage()
        self.total_attempts = 0
        self.attempt_errors: tuple[BaseException, ...] = ()
        self.fallbacks = proxy._fallbacks_for(model, fallbacks)
        self._target(proxy._resolve(model))

    def _target(self, resolved: tuple[str, str, Provider]) -> None:
        """Aim the call at one model: check it embeds, its limits, claims and a fresh count."""
        from llmproxy.provider import embeddings_of

        name, model, provider = resolved
        embedder, self.limits = embeddings_of(provider, name, model)
        self.provider_name, self.model, self.provider = name, model, embedder
        self.scope = CallScope(f"{name}/{model}", name, self.user, None, self.key, self.tags)
        self.claims = [c for p in self.proxy.policies if (c := p.claim(self.scope)) is not None]
        self.reservation: Reservation | None = None
        self.counts: list[int] | None = None
        self.attempts = 0
        self.settled = False

    def advance(self, error: BaseException) -> bool:
        """After ``error`` on this model (retries spent), aim at the next fallback model.

        As for chat: retryable failures and a model that cannot embed move on; a fallback that
        cannot be set up, or that has no embeddings, is skipped.
        """
        from llmproxy.errors import UnsupportedContent

        unsupported = isinstance(error, UnsupportedContent)
        if not unsupported and (not isinstance(error, ProviderError) or not error.retryable):
            return False
        while self.fallbacks:
            name = self.fallbacks.pop(0)
            try:
                resolved = self.proxy._resolve(name)
                previous = f"{self.provider_name}/{self.model}"
                self._target(resolved)
            except LLMProxyError as exc:
                log.warning("skipping embeddings fallback %s: %s", name, exc)
                continue
            log.warning("falling back from %s to %s after: %s", previous, name, error)
            return True
        return False

    # -- planning --------------------------------------------------------------------------------

    def count(self) -> list[int]:
        """Each text's input tokens by the provider's count (exact for OpenAI, else a bound)."""
        if self.counts is None:
            counter = getattr(self.provider, "count_text_tokens", None)
            out: list[int] = []
            for text in self.texts:
                try:
                    out.append(counter(text, self.model) if counter else text_upper_bound(text))
                except Exception:
                    log.exception(
                        "provider %r failed to count the tokens of a text; using the byte count",
                        self.provider_name,
                    )
                    out.append(text_upper_bound(text))
            self.counts = out
        return self.counts

    def batches(self) -> list[tuple[int, int]]:
        """``(start, end)`` slices of the texts, in order, each within the provider's limits."""
        limits = self.limits
        counts = self.count() if limits.max_tokens is not None else None
        out: list[tuple[int, int]] = []
        start, tokens = 0, 0
        for index in range(len(self.texts)):
            size = counts[index] if counts is not None else 0
            full = index - start >= limits.max_inputs or (
                limits.max_tokens is not None
                and index > start
                and tokens + size > limits.max_tokens
            )
            if full:
                out.append((start, index))
                start, tokens = index, 0
            tokens += size
        out.append((start, len(self.texts)))
        return out

    def reserve_args(self) -> dict[str, Any] | None:
        """The ledger.reserve arguments for every text at once, or None when no policy applies."""
        if not self.claims:
            return None
        token_claims = any(c.unit != "requests" for c in self.claims)
        args: dict[str, Any] = {
            "input_tokens": sum(self.count()) if token_claims else 0,
            "max_output_tokens": 0,
            "min_output_tokens": 0,
            "lease": self.proxy.config.reservation_lease,
        }
        usd = next((c for c in self.claims if c.unit == "usd"), None)
        if usd is not None:
            price = self.proxy.prices.get(self.provider_name, self.model, at=self.started_at)
            if price is None:
                raise ConfigError(
                    f"model '{self.provider_name}/{self.model}' has no price, so cost budget"
                    f" '{usd.policy}' cannot count it: add it to the prices table"
                    f' (prices."{self.provider_name}/{self.model}" = {{input = ...}},'
                    " USD per 1M tokens)",
                    path="prices",
                )
            # The highest rates any usage within the reserved input could be billed at.
            input_rate, output_rate = price.bound(args["input_tokens"])
            args["rates"] = Rates(input_rate / 1_000_000, output_rate / 1_000_000)
        return args

    def request(self, start: int, end: int) -> EmbedRequest:
        """The request for one batch, told the deadline left."""
        limit = self.proxy.config.retry.deadline
        timeout = None if limit is None else max(limit - self.elapsed(), 0.001)
        return EmbedRequest(
            self.texts[start:end],
            self.model,
            self.provider_name,
            self.dimensions,
            self.extra,
            self.user,
            timeout,
        )

    # -- outcomes --------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.perf_counter() - self.started

    def retry_delay(self, error: BaseException, tries: int) -> float | None:
        """How long to wait before retrying a batch after its ``tries``-th failure; None to stop."""
        return next_delay(error, tries, self.elapsed(), self.proxy.config.retry)

    def usage_of(self, result: EmbeddingResult, start: int, end: int) -> Usage:
        """A batch's usage (counted when the service sent none), priced; input tokens only."""
        if not isinstance(result, EmbeddingResult) or len(result.vectors) != end - start:
            got = len(result.vectors) if isinstance(result, EmbeddingResult) else result
            raise ProviderError(
                f"asked for {end - start} vectors, got {got!r}",
                provider=self.provider_name,
                model=self.model,
            )
        usage = result.usage
        if usage is None:
            usage = Usage(sum(self.count()[start:end]), estimated=True)
        return self.priced(usage)

    def priced(self, usage: Usage) -> Usage:
        """Return ``usage`` with its USD cost, when the model is priced."""
        price = self.proxy.prices.get(self.provider_name, self.model, at=self.started_at)
        if price is None:
            return usage
        return attrs.evolve(usage, cost=price.cost(usage))

    def settle_args(self, usage: Usage | None) -> dict[str, Any] | None:
        """The ledger.settle arguments for this model's hold (once), or None when none is held."""
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

    def notify(self, outcome: str, error: BaseException | None) -> None:
        """Send the call's one observer event (``operation`` ``embed``), when someone listens."""
        proxy = self.proxy
        if not proxy._notify_on:
            return
        proxy._notify(
            CallEvent(
                self.model,
                self.provider_name,
                self.spent,
                self.elapsed(),
                None,
                self.user,
                outcome,
                error,
                self.total_attempts,
                False,
                self.started_at,
                self.key,
                self.tags,
                "embed",
                attempt_errors=earlier_errors(self.attempt_errors, error),
            )
        )


def earlier_errors(
    failed: tuple[BaseException, ...], error: BaseException | None
) -> tuple[BaseException, ...]:
    """The attempts' errors of ``failed`` but the one that ended the call as ``error``.

    ``error`` is that attempt's own error re-raised, or a
    :class:`~llmproxy.errors.StreamInterrupted` made from it (its ``__cause__``); any other
    error (a budget refusing a fallback, a store failing) leaves every attempt's error.
    """
    if failed and error is not None:
        last = failed[-1]
        if error is last or error.__cause__ is last:
            return failed[:-1]
    return failed


__all__ = [
    "Call",
    "CallOptions",
    "EmbedCall",
    "LimitWaiter",
    "Prompt",
    "StreamState",
    "ToolSpec",
    "as_messages",
    "as_texts",
    "earlier_errors",
]
