"""The Anthropic provider: the Messages API through the official ``anthropic`` SDK.

Calls go through the real SDK (``client.messages.create``, ``stream=True`` for streams,
``AsyncAnthropic`` for async). The SDK is told not to retry (``max_retries=0``: the Proxy owns
retries); the key and base URL are passed explicitly. Body fields the SDK has no argument for
(``temperature``, ``top_k``, fields newer than the SDK) go out in ``extra_body``.

Time limits: the service must send something within ``timeout`` seconds (the read timeout,
default 60). A request's ``timeout`` (the call's deadline left) bounds the whole attempt: a
whole answer may take all of it, a stream's every read waits at most the read timeout and the
deadline, and a stream still flowing at the deadline is cut off (async: exactly; sync: checked
between events). Running out raises :class:`~llmproxy.errors.ProviderTimeout` and closes the
connection; a deadline already past raises it before anything is sent.

Errors: statuses map onto the core's tree (529 ``overloaded_error`` is a retryable
:class:`~llmproxy.errors.ProviderUnavailable`, ``retry-after`` is kept); an ``error`` event in
a stream that began with status 200 is mapped by its error type the same way.

Messages: system messages go to ``system``; text, images (base64 or URL) and PDF documents
(base64 or a Files API ``file_id``: a request referencing a file names the Files API beta,
:data:`FILES_BETA`, in its ``anthropic-beta`` header) from ``Message.parts`` become content
blocks; audio is
:class:`~llmproxy.errors.UnsupportedContent`. Tool calls are ``tool_use`` blocks and tool
results ``tool_result`` blocks in a user turn. Extended thinking (``extra={"thinking": ...}``):
the thinking text arrives in ``reasoning``; the thinking blocks with their signatures are kept
in ``Message.state["anthropic"]["thinking"]`` and sent back before the tool calls on the next
round, as Anthropic requires. Structured output uses ``output_config.format`` (JSON schema).

Prompt caching: ``prompt_cache=True`` on a call (or the ``prompt_cache`` provider option) puts a
``cache_control`` breakpoint on the last message; by default (``auto_cache``, on) a system prompt
or a tool list of at least :data:`AUTO_CACHE_CHARS` characters gets one too. These breakpoints
are 5-minute ones (``{"type": "ephemeral"}``), billed at the price's cache write rate; writes a
caller's own ``ttl: "1h"`` breakpoints make are reported apart and billed at the 1-hour rate
(see :func:`usage_from`).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import anthropic
import attrs
import httpx2

from llmproxy import env as envvars
from llmproxy.errors import (
    InvalidRequest,
    LLMProxyError,
    MissingCredentials,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderResponseError,
    ProviderTimeout,
    ProviderUnavailable,
    UnsupportedContent,
)
from llmproxy.provider import deadline_passed, within_deadline
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret, redact
from llmproxy.tokens import InputMargin, messages_upper_bound, text_upper_bound
from llmproxy.tools.offer import refuse_hosted, split_tools
from llmproxy.types import (
    Audio,
    ChatRequest,
    Chunk,
    Completion,
    Document,
    Image,
    Message,
    Text,
    ToolCall,
    Usage,
)
from llmproxy_anthropic import env, models

#: Seconds the service may stay silent when the call has no deadline.
DEFAULT_TIMEOUT = 60.0
#: A system prompt or tool list this long (characters) gets a cache breakpoint by default:
#: about 1024 tokens, the smallest prefix Anthropic caches (Sonnet and Opus).
AUTO_CACHE_CHARS = 4096
#: Anthropic's image bound: (width * height) / 750 tokens, images resized to at most about
#: 1.15 megapixels first, so about 1600 tokens at most.
IMAGE_MAX_TOKENS = 1600
#: Tokens per PDF page: Anthropic documents 1,500-3,000 text tokens per page, plus the page
#: as an image (up to :data:`IMAGE_MAX_TOKENS`).
PAGE_TOKENS = 3000 + IMAGE_MAX_TOKENS
#: Pages assumed for a document whose pages are unknown (a ``file_id``): Anthropic's limit.
MAX_PAGES = 100
STATE_KEY = "anthropic"
_SDK_ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, ValueError)
_EPHEMERAL = {"type": "ephemeral"}
#: The beta a Messages request that references a Files API file (``file_id``) must name in its
#: ``anthropic-beta`` header (the Files API is in beta: docs.claude.com/en/api/files-content).
FILES_BETA = "files-api-2025-04-14"
#: The shortest transport timeout an attempt gets (zero means "no timeout" to transports).
_MIN_SECONDS = 0.001
_T = TypeVar("_T")

INPUT_MARGIN = InputMargin(per_message=4, overall=16, tools=400, ratio=0.0)
"""What Anthropic can bill beyond the byte bound: a few framing tokens per message and per
request, and the tool-use system prompt Anthropic adds when tools are offered (up to about 350
tokens by its docs). The byte bound is tokenizer-independent, so no ratio."""

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop: str | None) -> str | None:
    """Map an Anthropic ``stop_reason`` onto the core's finish reasons."""
    if stop is None:
        return None
    return _FINISH.get(stop, stop)


def image_bound(image: Image) -> int:
    """Tokens an image may cost: ``width * height / 750``, at most :data:`IMAGE_MAX_TOKENS`."""
    if image.width and image.height:
        return min(math.ceil(image.width * image.height / 750), IMAGE_MAX_TOKENS)
    return IMAGE_MAX_TOKENS


def part_bound(part: Any) -> int:
    """Tokens a non-text part may cost (0 for text; audio is refused before counting)."""
    if isinstance(part, Image):
        return image_bound(part)
    if isinstance(part, Document):
        return PAGE_TOKENS * (part.pages or MAX_PAGES)
    return 0


def count_messages(messages: Sequence[Message]) -> int:
    """An upper bound on the input tokens: the core's byte bound plus per-part bounds."""
    total = messages_upper_bound([attrs.evolve(m, parts=()) if m.parts else m for m in messages])
    for m in messages:
        total += sum(part_bound(p) for p in m.parts)
        total += sum(text_upper_bound(c.arguments) + 8 for c in m.tool_calls)
        state = m.state.get(STATE_KEY) if m.state else None
        if isinstance(state, Mapping):
            total += text_upper_bound(json.dumps(state.get("thinking", [])))
    return total


def usage_of(raw: Any) -> Usage | None:
    """The core's Usage of an SDK ``Usage`` (see :func:`usage_from`); None stays None."""
    if raw is None:
        return None
    details = getattr(raw, "output_tokens_details", None)
    return usage_from(
        int(raw.input_tokens or 0),
        int(raw.output_tokens or 0),
        read=int(getattr(raw, "cache_read_input_tokens", 0) or 0),
        write=int(getattr(raw, "cache_creation_input_tokens", 0) or 0),
        write_1h=hour_writes(getattr(raw, "cache_creation", None)),
        thinking=int(getattr(details, "thinking_tokens", 0) or 0) if details else 0,
    )


def hour_writes(cache_creation: Any) -> int:
    """The 1-hour cache writes of a usage's ``cache_creation`` breakdown (0 when absent)."""
    if cache_creation is None:
        return 0
    return int(getattr(cache_creation, "ephemeral_1h_input_tokens", 0) or 0)


def usage_from(
    input_tokens: int,
    output_tokens: int,
    *,
    read: int,
    write: int,
    write_1h: int = 0,
    thinking: int = 0,
) -> Usage:
    """The core's Usage of Anthropic's counts: the one place cache reads and writes are mapped.

    Anthropic's ``input_tokens`` leaves both out; both are added, reads become
    ``cached_input_tokens`` and writes ``cache_write_tokens``, billed at the price's cache write
    rate (Anthropic's 5-minute rate, 1.25x input); the part written for an hour
    (``cache_creation.ephemeral_1h_input_tokens``, only when a breakpoint asks ``ttl: "1h"``)
    is ``cache_write_1h_tokens``, billed at the 1-hour rate (2x input).
    """
    billed = input_tokens + read + write
    return Usage(
        billed,
        output_tokens,
        read,
        min(thinking, output_tokens),
        cache_write_tokens=write,
        cache_write_1h_tokens=min(write_1h, write),
    )


#: The keyword arguments the SDK's ``messages.create`` and ``messages.count_tokens`` take; any
#: other body field (``temperature``, ``top_k``, a newer API field) goes in ``extra_body``.
_CREATE_PARAMETERS = frozenset(
    inspect.signature(anthropic.resources.messages.Messages.create).parameters
) - {"self"}
_COUNT_PARAMETERS = frozenset(
    inspect.signature(anthropic.resources.messages.Messages.count_tokens).parameters
) - {"self", "extra_body", "extra_headers", "extra_query", "timeout"}


def _sdk_arguments(params: dict[str, Any], accepted: frozenset[str]) -> dict[str, Any]:
    """``params`` as SDK arguments: the fields it has no argument for moved into ``extra_body``.

    The SDK has no ``temperature`` argument (the API still takes the field), and a field newer
    than the SDK is sent all the same.
    """
    unknown = {k: params.pop(k) for k in [k for k in params if k not in accepted]}
    if unknown:
        given = params.get("extra_body")
        params["extra_body"] = {**unknown, **(given if isinstance(given, Mapping) else {})}
    return params


#: The HTTP status of each Messages API error type, for ``error`` events in a stream (sent
#: after a 200): ``overloaded_error`` is the 529 that is retried.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _error_body(body: object) -> tuple[str | None, str | None]:
    """The ``(type, message)`` of a Messages API error body, None where absent."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return None, None
    kind, message = error.get("type"), error.get("message")
    return (
        kind if isinstance(kind, str) else None,
        message if isinstance(message, str) else None,
    )


#: The smallest thinking budget the API takes.
MIN_THINKING_BUDGET = 1024


def _fit_thinking(thinking: Any, max_tokens: int) -> Any:
    """``thinking`` with its ``budget_tokens`` below ``max_tokens``, as the API requires.

    Thinking counts toward ``max_tokens``, which may be a budget's cap far below the thinking
    budget asked for: the thinking budget is lowered to ``max_tokens - 1`` when that is still
    at least :data:`MIN_THINKING_BUDGET`; otherwise it is left for the API to refuse, naming it.
    """
    if not isinstance(thinking, Mapping) or thinking.get("type") != "enabled":
        return thinking
    budget = thinking.get("budget_tokens")
    if isinstance(budget, int) and budget >= max_tokens > MIN_THINKING_BUDGET:
        return {**thinking, "budget_tokens": max_tokens - 1}
    return thinking


def _thinks(params: Mapping[str, Any]) -> bool:
    thinking = params.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive")


def _references_files(blocks: Any) -> bool:
    """Whether content blocks (tool results' nested ones too) hold a Files API ``file`` source."""
    if isinstance(blocks, Mapping):
        source = blocks.get("source")
        if isinstance(source, Mapping) and source.get("type") == "file":
            return True
        return _references_files(blocks.get("content"))
    if isinstance(blocks, list):
        return any(_references_files(b) for b in blocks)
    return False


def _with_beta(headers: Mapping[str, str], beta: str) -> dict[str, str]:
    """``headers`` with ``beta`` added to its ``anthropic-beta`` list (kept once)."""
    out = {k: v for k, v in headers.items() if k.lower() != "anthropic-beta"}
    given = [v for k, v in headers.items() if k.lower() == "anthropic-beta"]
    betas = [b.strip() for v in given for b in v.split(",") if b.strip()]
    out["anthropic-beta"] = ",".join([*betas, beta] if beta not in betas else betas)
    return out


def _forced(choice: Any) -> bool:
    """Whether a wire ``tool_choice`` forces a tool (``any`` or a named one)."""
    return isinstance(choice, Mapping) and choice.get("type") in ("any", "tool")


class AnthropicProvider:
    """The Anthropic Messages API through the official SDK.

    >>> AnthropicProvider(api_key="sk-ant-...")  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        api_key: str | Secret,
        base_url: str | None = None,
        timeout: float | None = None,
        name: str = "anthropic",
        prompt_cache: bool = False,
        auto_cache: bool = True,
        count_tokens_online: bool = False,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(api_key)
        self.base_url = base_url or env.DEFAULT_BASE_URL
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.prompt_cache = prompt_cache
        self.auto_cache = auto_cache
        self.count_tokens_online = count_tokens_online
        self._headers = dict(default_headers) if default_headers else None
        self._client: anthropic.Anthropic | None = None
        self._aclient: anthropic.AsyncAnthropic | None = None

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> AnthropicProvider:
        """Build the provider from configuration, else from the environment (see ``env.py``).

        Options of ``[providers.anthropic]``: ``prompt_cache`` (a breakpoint on every call's last
        message), ``auto_cache`` (default true: long system prompts and tool lists) and
        ``count_tokens`` (count input with the API's ``messages.count_tokens``).
        """
        environ = settings.environ
        key = settings.api_key.get() if settings.api_key else env.api_key(environ)
        if not key:
            raise MissingCredentials(settings.name, env.KEY_VARIABLES)
        options = settings.options
        return cls(
            api_key=key,
            base_url=settings.base_url or env.base_url(environ),
            timeout=settings.timeout or env.timeout(environ),
            name=settings.name,
            prompt_cache=envvars.flag_option(options, "prompt_cache", False, settings.name),
            auto_cache=envvars.flag_option(options, "auto_cache", True, settings.name),
            count_tokens_online=envvars.flag_option(options, "count_tokens", False, settings.name),
        )

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def client(self) -> anthropic.Anthropic:
        """The sync SDK client, made on first use."""
        if self._client is None:
            self._client = anthropic.Anthropic(
                api_key=self._api_key.get(),
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=0,
                default_headers=self._headers,
            )
            self._own_headers(self._client)
        return self._client

    def _own_headers(self, client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> None:
        """Keep the client's extra headers to ours alone.

        The SDK adds the process's ``ANTHROPIC_CUSTOM_HEADERS`` to them, behind the Proxy's
        ``environ``; a test checks that this (private) field still holds them.
        """
        client._custom_headers = dict(self._headers or {})

    @property
    def aclient(self) -> anthropic.AsyncAnthropic:
        """The async SDK client, made on first use."""
        if self._aclient is None:
            self._aclient = anthropic.AsyncAnthropic(
                api_key=self._api_key.get(),
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=0,
                default_headers=self._headers,
            )
            self._own_headers(self._aclient)
        return self._aclient

    # -- requests ----------------------------------------------------------------------------

    def _part(self, part: Any, where: str) -> dict[str, Any]:
        if isinstance(part, Text):
            return {"type": "text", "text": part.text}
        if isinstance(part, Image):
            if part.data is not None:
                source: dict[str, Any] = {
                    "type": "base64",
                    "media_type": part.media_type,
                    "data": base64.b64encode(part.data).decode(),
                }
            elif part.url is not None and part.url.startswith("data:"):
                head, _, data = part.url.partition(",")
                media = head.removeprefix("data:").split(";")[0]
                source = {"type": "base64", "media_type": media, "data": data}
            else:
                source = {"type": "url", "url": part.url}
            return {"type": "image", "source": source}
        if isinstance(part, Document):
            if part.file_id is not None:
                source = {"type": "file", "file_id": part.file_id}
            else:
                assert part.data is not None
                source = {
                    "type": "base64",
                    "media_type": part.media_type,
                    "data": base64.b64encode(part.data).decode(),
                }
            block: dict[str, Any] = {"type": "document", "source": source}
            if part.filename:
                block["title"] = part.filename
            return block
        kind = "audio" if isinstance(part, Audio) else type(part).__name__
        raise UnsupportedContent(
            f"Claude does not take {kind} parts ({where})", provider=self.name, part=where
        )

    def _content(self, message: Message, index: int) -> list[dict[str, Any]]:
        if message.parts:
            return [
                self._part(p, f"messages[{index}].parts[{i}]") for i, p in enumerate(message.parts)
            ]
        return [{"type": "text", "text": message.content}] if message.content else []

    def _messages(self, request: ChatRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        system: list[dict[str, Any]] = []
        turns: list[dict[str, Any]] = []

        def add(role: str, blocks: list[dict[str, Any]]) -> None:
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})

        for index, m in enumerate(request.messages):
            if m.role == "system":
                system.extend(self._content(m, index))
            elif m.role == "user":
                add("user", self._content(m, index))
            elif m.role == "tool":
                result: dict[str, Any] = {
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id or "",
                    # Plain text as a string; parts (an image a tool made) as blocks.
                    "content": self._content(m, index) if m.parts else m.content,
                }
                add("user", [result])
            else:
                blocks: list[dict[str, Any]] = []
                state = m.state.get(STATE_KEY) if m.state else None
                if m.tool_calls and isinstance(state, Mapping):
                    blocks.extend(dict(b) for b in state.get("thinking") or ())
                blocks.extend(self._content(m, index))
                for call in m.tool_calls:
                    try:
                        arguments = json.loads(call.arguments or "{}")
                    except ValueError:
                        raise InvalidRequest(
                            f"tool call {call.id} has arguments that are not JSON",
                            field=f"messages[{index}].tool_calls",
                        ) from None
                    blocks.append(
                        {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}
                    )
                if blocks:  # an empty turn (a stream cut before any text) is left out
                    add("assistant", blocks)
        return system, turns

    def attempt_timeouts(self, seconds: float, *, stream: bool) -> httpx2.Timeout:
        """The transport's timeouts for an attempt that may take ``seconds`` in all.

        A whole answer may take all of ``seconds``; a stream's every read waits at most the
        read timeout and ``seconds`` (the total is enforced between events).
        """
        seconds = max(seconds, _MIN_SECONDS)
        read = min(self.timeout, seconds) if stream else seconds
        return httpx2.Timeout(read, connect=seconds, pool=seconds, write=seconds)

    def _params(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """The SDK's ``messages.create`` arguments; a deadline already past is a timeout."""
        if request.timeout is not None and request.timeout <= 0:
            raise self._timed_out(request)
        system, turns = self._messages(request)
        extra = dict(request.extra)
        cache = bool(extra.pop("prompt_cache", self.prompt_cache))
        limit = request.max_output_tokens or models.output_limit(request.model)
        params: dict[str, Any] = {
            "model": request.model,
            "messages": turns,
            "max_tokens": limit or models.FALLBACK_OUTPUT_LIMIT,
        }
        if system:
            if self.auto_cache and sum(len(b.get("text", "")) for b in system) >= AUTO_CACHE_CHARS:
                system[-1]["cache_control"] = dict(_EPHEMERAL)
            params["system"] = system
        functions, hosted = split_tools(request.tools)
        refuse_hosted(hosted, self.name, "use function tools with Anthropic")
        if functions:
            tools = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
                for t in functions
            ]
            if self.auto_cache and len(json.dumps(tools)) >= AUTO_CACHE_CHARS:
                tools[-1]["cache_control"] = dict(_EPHEMERAL)
            params["tools"] = tools
            choice = request.tool_choice
            if choice == "required":
                params["tool_choice"] = {"type": "any"}
            elif choice == "none":
                params["tool_choice"] = {"type": "none"}
            elif choice and choice != "auto":
                params["tool_choice"] = {"type": "tool", "name": choice}
        if cache and turns and turns[-1]["content"]:
            turns[-1]["content"][-1]["cache_control"] = dict(_EPHEMERAL)
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.response_schema is not None:
            params["output_config"] = {
                "format": {"type": "json_schema", "schema": dict(request.response_schema.schema)}
            }
        if request.user:
            params["metadata"] = {"user_id": request.user}
        if request.timeout is not None:
            params["timeout"] = self.attempt_timeouts(request.timeout, stream=stream)
        if request.headers:  # a call observer's traceparent; the call's own extra_headers win
            params["extra_headers"] = {**request.headers, **extra.pop("extra_headers", {})}
        params.update(extra)
        if _references_files(turns) or _references_files(system):
            # Only then: the beta header on every request would opt all calls into a beta.
            given = params.get("extra_headers")
            headers = {**(self._headers or {}), **(given if isinstance(given, Mapping) else {})}
            params["extra_headers"] = _with_beta(headers, FILES_BETA)
        params["thinking"] = _fit_thinking(params.get("thinking"), params["max_tokens"])
        if params["thinking"] is None:
            del params["thinking"]
        elif _thinks(params) and _forced(params.get("tool_choice")):
            raise InvalidRequest(
                "Claude cannot think while tool_choice forces a tool: use tool_choice 'auto' or"
                " 'none', or turn thinking off",
                field="tool_choice",
            )
        return _sdk_arguments(params, _CREATE_PARAMETERS)

    # -- responses ---------------------------------------------------------------------------

    def _completion(self, response: Any, model: str) -> Completion:
        try:
            texts: list[str] = []
            reasoning: list[str] = []
            thinking: list[dict[str, Any]] = []
            calls: list[ToolCall] = []
            for block in response.content:
                if block.type == "text":
                    texts.append(block.text)
                elif block.type == "thinking":
                    reasoning.append(block.thinking)
                    thinking.append(
                        {
                            "type": "thinking",
                            "thinking": block.thinking,
                            "signature": block.signature,
                        }
                    )
                elif block.type == "redacted_thinking":
                    thinking.append({"type": "redacted_thinking", "data": block.data})
                elif block.type == "tool_use":
                    calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
            message = Message(
                "assistant",
                "".join(texts),
                tool_calls=tuple(calls),
                reasoning="".join(reasoning) or None,
                state={STATE_KEY: {"thinking": thinking}} if thinking else {},
            )
            return Completion(
                message,
                usage_of(response.usage),
                response.model or model,
                finish_reason(response.stop_reason),
                response.id,
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderResponseError(
                f"the response is not a valid Anthropic message ({type(exc).__name__}: {exc})",
                provider=self.name,
                model=model,
            ) from None

    def chat(self, request: ChatRequest) -> Completion:
        """Make one non-streamed attempt."""
        params = self._params(request)
        try:
            response = self.client.messages.create(**params)
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        return self._completion(response, request.model)

    async def achat(self, request: ChatRequest) -> Completion:
        """Async :meth:`chat`, cut off at the request's deadline."""
        return await within_deadline(self.name, request, lambda: self._achat(request))

    async def _achat(self, request: ChatRequest) -> Completion:
        params = self._params(request)
        try:
            response = await self.aclient.messages.create(**params)
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        return self._completion(response, request.model)

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        """Make one streamed attempt; the last chunk carries usage, finish and tool calls.

        The deadline (``request.timeout``) is checked between events; each read waits at most
        the read timeout and what was left of the deadline when the attempt began.
        """
        params = self._params(request, stream=True)
        reader = _StreamReader(self, request.model)
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        try:
            events = self.client.messages.create(**params, stream=True)
            try:
                for event in events:
                    if deadline is not None and time.monotonic() > deadline:
                        raise self._timed_out(request)
                    chunk = reader.feed(event)
                    if chunk is not None:
                        yield chunk
            finally:
                events.close()
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        yield reader.last()

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Async :meth:`stream`: opening and every event cut off at the deadline exactly."""
        params = self._params(request, stream=True)
        reader = _StreamReader(self, request.model)
        deadline = None
        if request.timeout is not None:
            deadline = asyncio.get_running_loop().time() + request.timeout
        try:
            events = await self._within(
                self.aclient.messages.create(**params, stream=True), deadline, request
            )
            try:
                while True:
                    try:
                        event = await self._within(anext(events), deadline, request)
                    except StopAsyncIteration:
                        break
                    chunk = reader.feed(event)
                    if chunk is not None:
                        yield chunk
            finally:
                await events.close()
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        yield reader.last()

    async def _within(
        self, step: Awaitable[_T], deadline: float | None, request: ChatRequest
    ) -> _T:
        """Await ``step``, cut off at ``deadline`` (the loop's clock): ProviderTimeout."""
        if deadline is None:
            return await step
        cutoff = asyncio.timeout_at(deadline)
        try:
            async with cutoff:
                return await step
        except TimeoutError:
            if cutoff.expired():
                raise self._timed_out(request) from None
            raise

    def _timed_out(self, request: ChatRequest) -> ProviderTimeout:
        return deadline_passed(self.name, request)

    # -- errors ------------------------------------------------------------------------------

    def map_error(self, exc: BaseException, model: str) -> ProviderError:
        """Map an SDK error onto the core tree: status, ``retry-after``, no secret."""
        key = self._api_key
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            kind, message = _error_body(exc.body)
            if status < 400:  # an ``error`` event in a stream that began with 200
                status = _STATUS_OF_TYPE.get(kind or "", 500)
            after: float | None = None
            raw = exc.response.headers.get("retry-after")
            if raw:
                try:
                    after = max(float(raw), 0.0)
                except ValueError:
                    after = None
            cls: type[ProviderError]
            if status in (401, 403):
                cls = ProviderAuthError
            elif status == 429:
                cls = ProviderRateLimited
            elif status in (408, 504):
                cls = ProviderTimeout
            elif status >= 500 or status == 409:  # 529: overloaded
                cls = ProviderUnavailable
            else:
                cls = ProviderBadRequest
            return cls(
                redact(message or str(exc.message), key),
                provider=self.name,
                model=model,
                status=status,
                retry_after=after,
            )
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderTimeout("the request timed out", provider=self.name, model=model)
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeout("the request timed out", provider=self.name, model=model)
        if isinstance(exc, (anthropic.APIConnectionError, httpx2.HTTPError)):
            return ProviderConnectionError(
                redact(f"connection failed: {exc}", key), provider=self.name, model=model
            )
        if isinstance(exc, anthropic.APIResponseValidationError):
            return ProviderResponseError(redact(str(exc), key), provider=self.name, model=model)
        return ProviderResponseError(
            redact(f"the answer is not valid ({type(exc).__name__}: {exc})", key),
            provider=self.name,
            model=model,
        )

    # -- estimates and limits ----------------------------------------------------------------

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        """An upper bound on the input tokens (:func:`count_messages`), or the API's count.

        With ``count_tokens_online`` the SDK's ``messages.count_tokens`` counts them (a network
        call); on any failure the offline bound is used.
        """
        bound = count_messages(messages)
        if not self.count_tokens_online:
            return bound
        request = ChatRequest(tuple(messages), model, self.name)
        params = self._params(request)
        # (extra_headers carries the Files API beta when a file is referenced)
        params = {k: v for k, v in params.items() if k in _COUNT_PARAMETERS or k == "extra_headers"}
        try:
            return int(self.client.messages.count_tokens(**params).input_tokens)
        except anthropic.AnthropicError:
            return bound

    def count_text_tokens(self, text: str, model: str) -> int:
        """An upper bound on the tokens of output text: its UTF-8 byte count."""
        return text_upper_bound(text)

    def input_margin(self, model: str) -> InputMargin:
        """How far the byte bound can fall short of Anthropic's bill (:data:`INPUT_MARGIN`)."""
        return INPUT_MARGIN

    def max_output_tokens(self, model: str) -> int | None:
        """The model's own output limit (thinking included), None when unknown."""
        return models.output_limit(model)

    def close(self) -> None:
        """Close the sync connections."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close all connections."""
        self.close()
        aclient, self._aclient = self._aclient, None
        if aclient is not None:
            await aclient.close()


class _StreamReader:
    """Turns the Messages API's stream events into chunks; tool calls and usage at the end."""

    def __init__(self, provider: AnthropicProvider, model: str) -> None:
        self.provider = provider
        self.model = model
        self.id: str | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.raw_usage: dict[str, int] = {}
        self.stop: str | None = None
        self.done = False

    def feed(self, event: Any) -> Chunk | None:
        kind = event.type
        if kind == "message_start":
            self.id = event.message.id
            self.model = event.message.model or self.model
            self._usage(event.message.usage)
        elif kind == "content_block_start":
            self.blocks[event.index] = event.content_block.model_dump()
            if self.blocks[event.index].get("type") == "tool_use":
                self.blocks[event.index]["partial"] = ""
        elif kind == "content_block_delta":
            block = self.blocks.setdefault(event.index, {})
            delta = event.delta
            if delta.type == "text_delta":
                return Chunk(delta.text, model=self.model, id=self.id)
            if delta.type == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.thinking
                return Chunk(reasoning=delta.thinking, model=self.model, id=self.id)
            if delta.type == "signature_delta":
                block["signature"] = block.get("signature", "") + delta.signature
            elif delta.type == "input_json_delta":
                block["partial"] = block.get("partial", "") + delta.partial_json
        elif kind == "message_delta":
            self.stop = event.delta.stop_reason or self.stop
            self._usage(event.usage)
        elif kind == "message_stop":
            self.done = True
        return None

    def _usage(self, usage: Any) -> None:
        """Keep the counts of a ``message_start`` or ``message_delta`` usage (cumulative).

        ``output_tokens_details.thinking_tokens`` (the reasoning part of the output) comes with
        the ``message_delta``'s output count.
        """
        if usage is None:
            return
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ):
            value = getattr(usage, name, None)
            if value is not None:
                self.raw_usage[name] = int(value)
        details = getattr(usage, "output_tokens_details", None)
        thinking = getattr(details, "thinking_tokens", None) if details is not None else None
        if thinking is not None:
            self.raw_usage["thinking_tokens"] = int(thinking)
        creation = getattr(usage, "cache_creation", None)  # message_start's
        if creation is not None:
            self.raw_usage["cache_write_1h"] = hour_writes(creation)

    def last(self) -> Chunk:
        if not self.done:
            raise ProviderConnectionError(
                "the stream ended before the answer was complete",
                provider=self.provider.name,
                model=self.model,
            )
        calls: list[ToolCall] = []
        thinking: list[dict[str, Any]] = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            if block.get("type") == "tool_use":
                calls.append(ToolCall(block["id"], block["name"], block.get("partial") or "{}"))
            elif block.get("type") == "thinking":
                thinking.append(
                    {
                        "type": "thinking",
                        "thinking": block.get("thinking", ""),
                        "signature": block.get("signature", ""),
                    }
                )
            elif block.get("type") == "redacted_thinking":
                thinking.append({"type": "redacted_thinking", "data": block.get("data", "")})
        counts = self.raw_usage
        usage = usage_from(
            counts.get("input_tokens", 0),
            counts.get("output_tokens", 0),
            read=counts.get("cache_read_input_tokens", 0),
            write=counts.get("cache_creation_input_tokens", 0),
            write_1h=counts.get("cache_write_1h", 0),
            thinking=counts.get("thinking_tokens", 0),
        )
        return Chunk(
            usage=usage,
            finish_reason=finish_reason(self.stop),
            model=self.model,
            tool_calls=tuple(calls),
            id=self.id,
            state={STATE_KEY: {"thinking": thinking}} if thinking else None,
        )
