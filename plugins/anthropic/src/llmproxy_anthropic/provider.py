"""The Anthropic provider: the Messages API through the official ``anthropic`` SDK.

Calls go through the real SDK (``client.messages.create``, ``stream=True`` for streams,
``AsyncAnthropic`` for async). The SDK is told not to retry (``max_retries=0``: the Proxy owns
retries); the key and base URL are passed explicitly. A request's ``timeout`` (the call's
deadline left) goes to the SDK as the request's own timeout.

Messages: system messages go to ``system``; text, images (base64 or URL) and PDF documents
(base64 or a Files API ``file_id``) from ``Message.parts`` become content blocks; audio is
:class:`~llmproxy.errors.UnsupportedContent`. Tool calls are ``tool_use`` blocks and tool
results ``tool_result`` blocks in a user turn. Extended thinking (``extra={"thinking": ...}``):
the thinking text arrives in ``reasoning``; the thinking blocks with their signatures are kept
in ``Message.state["anthropic"]["thinking"]`` and sent back before the tool calls on the next
round, as Anthropic requires. Structured output uses ``output_config.format`` (JSON schema).

Prompt caching: ``extra={"cache": True}`` (or the ``cache`` provider option) puts a
``cache_control`` breakpoint on the last message; by default (``auto_cache``, on) a system prompt
or a tool list of at least :data:`AUTO_CACHE_CHARS` characters gets one too.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import anthropic
import attrs
import httpx2

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


CACHE_WRITE_WEIGHT = 2
"""How many input tokens a cache-write token counts as. Anthropic bills a cache write at 1.25x
(5-minute cache) or 2x (1-hour) the input price, and the core's ``Usage`` has no cache-write
field: counting each written token twice keeps a cost budget's charge at or above the bill
(never overspent), at the price of over-counting 5-minute writes and token budgets."""


def usage_of(raw: Any) -> Usage | None:
    """The core's Usage of Anthropic's: cache reads and writes are counted into input tokens.

    Anthropic's ``input_tokens`` leaves both out; reads are ``cached_input_tokens`` and writes
    count :data:`CACHE_WRITE_WEIGHT` times (see there).
    """
    if raw is None:
        return None
    read = int(getattr(raw, "cache_read_input_tokens", 0) or 0)
    write = int(getattr(raw, "cache_creation_input_tokens", 0) or 0)
    details = getattr(raw, "output_tokens_details", None)
    thinking = int(getattr(details, "thinking_tokens", 0) or 0) if details else 0
    output = int(raw.output_tokens or 0)
    billed = int(raw.input_tokens or 0) + read + CACHE_WRITE_WEIGHT * write
    return Usage(billed, output, read, min(thinking, output))


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
        cache: bool = False,
        auto_cache: bool = True,
        count_tokens_online: bool = False,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(api_key)
        self.base_url = base_url or env.DEFAULT_BASE_URL
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.cache = cache
        self.auto_cache = auto_cache
        self.count_tokens_online = count_tokens_online
        self._headers = dict(default_headers) if default_headers else None
        self._client: anthropic.Anthropic | None = None
        self._aclient: anthropic.AsyncAnthropic | None = None

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> AnthropicProvider:
        """Build the provider from configuration, else from the environment (see ``env.py``).

        Options of ``[providers.anthropic]``: ``cache`` (a breakpoint on every call's last
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
            cache=bool(options.get("cache", False)),
            auto_cache=bool(options.get("auto_cache", True)),
            count_tokens_online=bool(options.get("count_tokens", False)),
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
        return self._client

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
                    "content": self._content(m, index) or m.content,
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
                add("assistant", blocks or [{"type": "text", "text": ""}])
        return system, turns

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        system, turns = self._messages(request)
        extra = dict(request.extra)
        cache = bool(extra.pop("cache", self.cache))
        limit = request.max_output_tokens or models.output_limit(request.model)
        params: dict[str, Any] = {
            "model": request.model,
            "messages": turns,
            "max_tokens": limit or models.FALLBACK_OUTPUT_LIMIT,
        }
        if system:
            if self.auto_cache and sum(len(b.get("text", "")) for b in system) >= AUTO_CACHE_CHARS:
                system[-1]["cache_control"] = _EPHEMERAL
            params["system"] = system
        functions, hosted = split_tools(request.tools)
        refuse_hosted(hosted, self.name, "use function tools with Anthropic")
        if functions:
            tools = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
                for t in functions
            ]
            if self.auto_cache and len(json.dumps(tools)) >= AUTO_CACHE_CHARS:
                tools[-1]["cache_control"] = _EPHEMERAL
            params["tools"] = tools
            choice = request.tool_choice
            if choice == "required":
                params["tool_choice"] = {"type": "any"}
            elif choice == "none":
                params["tool_choice"] = {"type": "none"}
            elif choice and choice != "auto":
                params["tool_choice"] = {"type": "tool", "name": choice}
        if cache and turns and turns[-1]["content"]:
            turns[-1]["content"][-1]["cache_control"] = _EPHEMERAL
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.response_schema is not None:
            params["output_config"] = {
                "format": {"type": "json_schema", "schema": dict(request.response_schema.schema)}
            }
        if request.user:
            params["metadata"] = {"user_id": request.user}
        if request.timeout is not None:
            params["timeout"] = request.timeout
        if request.headers:  # a call observer's traceparent; the call's own extra_headers win
            params["extra_headers"] = {**request.headers, **extra.pop("extra_headers", {})}
        params.update(extra)
        return params

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
        """Async :meth:`chat`."""
        params = self._params(request)
        try:
            response = await self.aclient.messages.create(**params)
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        return self._completion(response, request.model)

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        """Make one streamed attempt; the last chunk carries usage, finish and tool calls."""
        params = self._params(request)
        reader = _StreamReader(self, request.model)
        try:
            events = self.client.messages.create(**params, stream=True)
            try:
                for event in events:
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
        """Async :meth:`stream`."""
        params = self._params(request)
        reader = _StreamReader(self, request.model)
        try:
            events = await self.aclient.messages.create(**params, stream=True)
            try:
                async for event in events:
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

    # -- errors ------------------------------------------------------------------------------

    def map_error(self, exc: BaseException, model: str) -> ProviderError:
        """Map an SDK error onto the core tree: status, ``retry-after``, no secret."""
        key = self._api_key
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
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
                redact(str(exc.message), key),
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
        for unused in ("max_tokens", "metadata", "temperature", "timeout"):
            params.pop(unused, None)
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
        read = self.raw_usage.get("cache_read_input_tokens", 0)
        write = self.raw_usage.get("cache_creation_input_tokens", 0)
        usage = Usage(
            self.raw_usage.get("input_tokens", 0) + read + CACHE_WRITE_WEIGHT * write,
            self.raw_usage.get("output_tokens", 0),
            read,
        )
        return Chunk(
            usage=usage,
            finish_reason=finish_reason(self.stop),
            model=self.model,
            tool_calls=tuple(calls),
            id=self.id,
            state={STATE_KEY: {"thinking": thinking}} if thinking else None,
        )
