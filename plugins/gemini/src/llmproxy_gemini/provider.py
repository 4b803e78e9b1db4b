"""The Gemini provider: the Gemini API through Google's native ``google-genai`` client.

Calls go through the real SDK (``client.models.generate_content`` and
``generate_content_stream``, ``client.aio`` for async), which makes the request (auth, headers,
timeouts, error types). The SDK is told not to retry (one attempt per call: the Proxy owns
retries, so every attempt is seen and budgeted), not to call functions by itself and not to
continue answers by itself. The key, base URL, API version and timeout are always passed to the
SDK explicitly, so it never reads the process environment behind the Proxy's ``environ``.

Reasoning: thinking models are asked for their thought summaries (``include_thoughts``, off with
the ``include_thoughts = false`` provider option or per call with
``thinking_config={"include_thoughts": False}``); they arrive on ``Message.reasoning`` /
``Chunk.reasoning``, never in the answer. Thought signatures of function calls travel with the
answer's message, in its ``state`` (``{"gemini": {"thought_signatures": {call id: base64}}}``,
see :data:`~llmproxy_gemini.convert.STATE_KEY`; a stream's last chunk carries it), are stored
in history with it and are sent back with the calls on the next turn, so a tool round can go on
in another process or after a restart.

Content parts (``Message.parts``) go out as Gemini's own parts (see
:func:`~llmproxy_gemini.convert.wire_part`) and are bounded in the token estimate by Google's
documented counts (see :func:`part_upper_bound`).

Tools: the request's function tools go out as function declarations (see
:mod:`llmproxy_gemini.convert`); hosted tools are a ConfigError naming the provider (only
OpenAI's Responses API runs them).

Token estimates: Gemini's tokenizer is not bundled (the SDK's local tokenizer downloads its model
at run time), so input is bounded by UTF-8 bytes. Gemini's SentencePiece tokenizer falls back to
bytes, so it never makes more tokens than bytes (plus the per-message overhead the bound adds);
the settle step corrects the estimate with the real usage.

Time limits: a connection must open within ``connect_timeout`` seconds (default 10) and the
service must send something within ``timeout`` seconds (the read timeout, default 60): for a
stream, each chunk within that of the one before, the first one included. A request's
``timeout`` (the call's deadline left, set by the Proxy) bounds the whole attempt: it goes to
the SDK as the request's own timeout (and to the service as its ``X-Server-Timeout``), a whole
answer may take all of it, and a stream's last chunk must arrive within it. Running out raises
:class:`~llmproxy.errors.ProviderTimeout` and closes the connection. The async calls enforce
the deadline exactly; sync streams check it between chunks, each read waiting at most the read
timeout and what was left of the deadline when the attempt began.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import attrs
import httpx2
from google import genai
from google.genai import errors, types

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
)
from llmproxy.provider import EmbedLimits, deadline_passed, within_deadline
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret, redact
from llmproxy.tokens import (
    PER_MESSAGE_OVERHEAD,
    InputMargin,
    messages_upper_bound,
    text_upper_bound,
)
from llmproxy.tools.offer import refuse_hosted, split_tools
from llmproxy.types import (
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingResult,
    EmbedRequest,
    Message,
    ToolCall,
    Usage,
)
from llmproxy_gemini import bounds, convert, env, models

#: Seconds the service may stay silent: for a whole answer when the call has no deadline, and
#: between two chunks of a stream.
DEFAULT_TIMEOUT = 60.0
#: Seconds to open a connection (TCP and TLS) or to wait for a free one in the pool.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: What one ``batchEmbedContents`` request may hold: 100 texts.
EMBED_LIMITS = EmbedLimits(max_inputs=100)
_STREAM_PATH = ":streamGenerateContent"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
#: Bytes a function response adds around a tool's output (``{"output": ...}`` and its name).
_TOOL_RESULT_OVERHEAD = 16

_SDK_ERRORS = (errors.APIError, errors.UnknownApiResponseError, httpx2.HTTPError, ValueError)


INPUT_MARGIN = InputMargin(per_message=2, overall=8, tools=32, ratio=0.0)
"""What Gemini can bill beyond :func:`count_messages`'s byte bound.

The bound counts every UTF-8 byte as a token (Gemini's SentencePiece tokenizer falls back to
bytes, so it never makes more) and 4 tokens per message plus 3 per request; a turn of Gemini's
chat format takes up to 6 (start and end markers, the role, two line breaks), so 2 more per
message and per function declaration, and the request's framing a few more (8). Function
declarations come with a header of their own: 32 when tools are offered. No ratio: the byte
bound does not depend on the tokenizer."""


def count_messages(messages: Sequence[Message]) -> int:
    """Return an upper bound on the input tokens Gemini counts for ``messages``.

    The core's byte bound of the messages' text, plus what this provider sends beyond it: tool
    results are wrapped in a named function response, and each image, document and audio part
    is bounded by Google's documented counts (:func:`llmproxy_gemini.bounds.part_bound`).
    """
    # The text goes to the core's bound; the other parts are Gemini's own to bound.
    total = messages_upper_bound([attrs.evolve(m, parts=()) if m.parts else m for m in messages])
    for m in messages:
        total += sum(bounds.part_bound(p) for p in m.parts)
        if m.role == "tool":
            total += PER_MESSAGE_OVERHEAD + _TOOL_RESULT_OVERHEAD
            total += text_upper_bound(m.name or "") + text_upper_bound(m.tool_call_id or "")
    return total


def _details(exc: errors.APIError) -> list[Mapping[str, Any]]:
    body = exc.details
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            details = error.get("details")
            if isinstance(details, list):
                return [d for d in details if isinstance(d, Mapping)]
    return []


def _header_retry_after(headers: Any) -> float | None:
    try:
        raw = headers.get("retry-after") if headers is not None else None
    except AttributeError:
        return None
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (ValueError, TypeError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return max(parsed.timestamp() - time.time(), 0.0)


def retry_after(exc: errors.APIError) -> float | None:
    """Return the seconds Gemini asked us to wait: a ``Retry-After`` header, else ``RetryInfo``.

    Gemini's 429 body carries ``{"@type": ".../google.rpc.RetryInfo", "retryDelay": "12s"}`` in
    ``error.details``; a gateway in front of it may send the header instead.
    """
    after = _header_retry_after(getattr(exc.response, "headers", None))
    if after is not None:
        return after
    for detail in _details(exc):
        if detail.get("@type") == _RETRY_INFO:
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _invalid_key(exc: errors.APIError) -> bool:
    """Gemini answers a wrong API key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    return any(
        d.get("@type") == _ERROR_INFO and d.get("reason") == "API_KEY_INVALID"
        for d in _details(exc)
    )


class GeminiProvider:
    """The Gemini API (``generateContent``) through the google-genai SDK.

    >>> GeminiProvider(api_key="AIza...", base_url="http://127.0.0.1:8000")  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        api_key: str | Secret,
        base_url: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        api_version: str | None = None,
        include_thoughts: bool = True,
        name: str = "gemini",
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(api_key)
        self.base_url = base_url or env.DEFAULT_BASE_URL
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.connect_timeout = connect_timeout or DEFAULT_CONNECT_TIMEOUT
        self.api_version = api_version or env.DEFAULT_API_VERSION
        self.include_thoughts = include_thoughts
        self._headers = dict(default_headers) if default_headers else None
        self._client: genai.Client | None = None
        self._http: httpx2.Client | None = None
        self._aclient: genai.Client | None = None
        self._ahttp: httpx2.AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        # Streamed responses by the task that opened them; a task that never closes its
        # stream drops out with the task.
        self._streams: weakref.WeakKeyDictionary[asyncio.Task[Any], httpx2.Response] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> GeminiProvider:
        """Build the provider from configuration, else from the environment (see ``env.py``).

        Options of the ``[providers.gemini]`` table: ``api_version``, ``include_thoughts`` and
        ``connect_timeout`` (seconds; else ``LLMPROXY_GEMINI_CONNECT_TIMEOUT``, default 10). The
        common ``timeout`` key is the read timeout (else ``LLMPROXY_GEMINI_TIMEOUT``, default 60).
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
            connect_timeout=envvars.seconds_option(options, "connect_timeout", settings.name)
            or env.connect_timeout(environ),
            api_version=options.get("api_version") or env.api_version(environ),
            include_thoughts=envvars.flag_option(options, "include_thoughts", True, settings.name),
            name=settings.name,
        )

    def __repr__(self) -> str:
        return f"GeminiProvider(name={self.name!r}, base_url={self.base_url!r})"

    # -- clients -----------------------------------------------------------------------------

    def _make_client(self, http: httpx2.Client, ahttp: httpx2.AsyncClient) -> genai.Client:
        """Build an SDK client on our own httpx2 clients.

        Owning the transport keeps it httpx2 whatever else is installed (the SDK would pick
        aiohttp for async calls when present), so transport errors are always httpx2's, and lets
        an abandoned stream close its response at once (the SDK's async stream holds it in a
        reference cycle until the garbage collector runs). No client-wide timeout: a request
        carries its deadline, if any, and :meth:`_limit` sets the transport's timeouts.
        """
        options = types.HttpOptions(
            base_url=self.base_url,
            api_version=self.api_version,
            headers=self._headers,
            # One attempt: without retry options the SDK makes exactly one; attempts=1 says so.
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_client=http,
            httpx_async_client=ahttp,
        )
        return genai.Client(api_key=self._api_key.get(), vertexai=False, http_options=options)

    @property
    def client(self) -> genai.Client:
        """The SDK client of sync calls, made on first use."""
        if self._client is None:
            self._http = httpx2.Client(
                follow_redirects=True, event_hooks={"request": [self._limit]}
            )
            # The async side of this client is never used, so never opens a connection.
            self._client = self._make_client(self._http, httpx2.AsyncClient())
        return self._client

    @property
    def aclient(self) -> genai.Client:
        """The SDK client of async calls on the running event loop (connections are per loop)."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            self._ahttp = httpx2.AsyncClient(
                follow_redirects=True,
                event_hooks={"request": [self._alimit], "response": [self._remember_stream]},
            )
            self._aclient = self._make_client(httpx2.Client(), self._ahttp)
            self._aloop = loop
        return self._aclient

    def _limit(self, request: httpx2.Request) -> None:
        """Set a request's transport timeouts from its deadline (the SDK's timeout) if any.

        Connecting within the connect timeout (and the deadline); a whole answer within the
        deadline, else the read timeout; a stream's every read within the read timeout (and
        the deadline).
        """
        given = request.extensions.get("timeout", {}).get("read")
        stream = request.url.path.endswith(_STREAM_PATH)
        if given is None:
            connect, read, write = self.connect_timeout, self.timeout, self.timeout
        else:
            connect = min(self.connect_timeout, given)
            read = min(self.timeout, given) if stream else given
            write = given
        request.extensions["timeout"] = {
            "connect": connect,
            "read": read,
            "write": write,
            "pool": connect,
        }

    async def _alimit(self, request: httpx2.Request) -> None:
        """Async :meth:`_limit` (an async client's hooks are coroutines)."""
        self._limit(request)

    def _timed_out(self, request: ChatRequest) -> ProviderTimeout:
        return deadline_passed(self.name, request)

    def _take_stream(self) -> httpx2.Response | None:
        task = asyncio.current_task()
        return self._streams.pop(task, None) if task is not None else None

    async def _remember_stream(self, response: httpx2.Response) -> None:
        """Keep a streamed response by the task that asked for it, for :meth:`astream` to close."""
        task = asyncio.current_task()
        if task is not None and response.request.url.path.endswith(":streamGenerateContent"):
            self._streams[task] = response

    # -- requests ----------------------------------------------------------------------------

    def _prepare(
        self, request: ChatRequest
    ) -> tuple[list[types.Content], types.GenerateContentConfig]:
        functions, hosted = split_tools(request.tools)
        refuse_hosted(
            hosted,
            self.name,
            "only OpenAI's Responses API runs hosted tools; offer function tools here",
        )
        if request.timeout is not None and request.timeout <= 0:
            raise self._timed_out(request)
        contents, system = convert.build_contents(request.messages)
        include = self.include_thoughts and models.thinks(request.model)
        http_options = None
        if request.timeout is not None or request.headers:
            http_options = types.HttpOptions(
                timeout=None if request.timeout is None else max(round(request.timeout * 1000), 1),
                headers=dict(request.headers) or None,
            )
        config = convert.build_config(
            request,
            system,
            include_thoughts=include,
            functions=functions,
            http_options=http_options,
        )
        return contents, config

    def _completion(self, response: types.GenerateContentResponse, model: str) -> Completion:
        try:
            usage = convert.usage_from_metadata(response.usage_metadata)
            if convert.blocked(response):
                message = Message("assistant", "")
                finish: str | None = "content_filter"
            else:
                candidate = response.candidates[0] if response.candidates else None
                content = candidate.content if candidate is not None else None
                signatures: dict[str, bytes] = {}
                text, reasoning, calls = convert.read_parts(
                    content.parts if content is not None else None, signatures
                )
                message = Message(
                    "assistant",
                    text,
                    tool_calls=tuple(calls),
                    reasoning=reasoning or None,
                    state=convert.state_of(signatures),
                )
                finish = convert.finish_reason(
                    candidate.finish_reason if candidate is not None else None,
                    has_calls=bool(calls),
                )
            return Completion(
                message, usage, response.model_version or model, finish, response.response_id
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderResponseError(
                f"the response is not a valid Gemini answer ({type(exc).__name__}: {exc})",
                provider=self.name,
                model=model,
            ) from None

    def chat(self, request: ChatRequest) -> Completion:
        """Make one non-streamed attempt."""
        contents, config = self._prepare(request)
        try:
            response = self.client.models.generate_content(
                model=request.model, contents=contents, config=config
            )
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        return self._completion(response, request.model)

    async def achat(self, request: ChatRequest) -> Completion:
        """Async :meth:`chat`."""
        return await within_deadline(self.name, request, lambda: self._achat(request))

    async def _achat(self, request: ChatRequest) -> Completion:
        contents, config = self._prepare(request)
        try:
            response = await self.aclient.aio.models.generate_content(
                model=request.model, contents=contents, config=config
            )
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        return self._completion(response, request.model)

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        """Make one streamed attempt; the last chunk carries usage and the finish reason."""
        contents, config = self._prepare(request)
        reader = _StreamReader(self, request.model)
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        try:
            responses = self.client.models.generate_content_stream(
                model=request.model, contents=contents, config=config
            )
            try:
                for response in responses:
                    if deadline is not None and time.monotonic() > deadline:
                        raise self._timed_out(request)
                    chunk = reader.feed(response)
                    if chunk is not None:
                        yield chunk
            finally:
                close = getattr(responses, "close", None)
                if close is not None:
                    close()
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        yield reader.last()

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Async :meth:`stream`."""
        contents, config = self._prepare(request)
        reader = _StreamReader(self, request.model)
        http_response: httpx2.Response | None = None
        deadline = None
        if request.timeout is not None:
            deadline = asyncio.get_running_loop().time() + request.timeout
        try:
            responses = await self.aclient.aio.models.generate_content_stream(
                model=request.model, contents=contents, config=config
            )
            try:
                # The SDK sends the request on the first step; the hook files the response
                # under the task that stepped.
                async for response in _within(responses, deadline, request, self):
                    http_response = http_response or self._take_stream()
                    chunk = reader.feed(response)
                    if chunk is not None:
                        yield chunk
            finally:
                http_response = http_response or self._take_stream()
                close = getattr(responses, "aclose", None)
                if close is not None:
                    await close()
                if http_response is not None:
                    await http_response.aclose()
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        yield reader.last()

    # -- errors --------------------------------------------------------------------------------

    # -- embeddings ------------------------------------------------------------------------

    def embed_limits(self, model: str) -> EmbedLimits:
        """The Gemini API's ``batchEmbedContents`` limit: 100 texts per request."""
        return EMBED_LIMITS

    @staticmethod
    def _embed_config(request: EmbedRequest) -> types.EmbedContentConfig:
        """The request's ``EmbedContentConfig``.

        ``dimensions`` becomes ``output_dimensionality``; ``extra`` (``task_type``, ``title``)
        is passed through as the config's own fields; the deadline left is the request's
        timeout, as for chat.
        """
        config: dict[str, Any] = dict(request.extra)
        if request.dimensions is not None:
            config["output_dimensionality"] = request.dimensions
        if request.timeout is not None or request.headers:  # the deadline left, in milliseconds
            config["http_options"] = types.HttpOptions(
                timeout=None if request.timeout is None else max(round(request.timeout * 1000), 1),
                headers=dict(request.headers) or None,
            )
        try:
            return types.EmbedContentConfig(**config)
        except ValueError as exc:  # pydantic's ValidationError: an unknown or malformed field
            raise InvalidRequest(
                f"gemini embeddings take task_type, title and dimensions: {exc}", field="extra"
            ) from None

    def _embedded(self, response: Any, request: EmbedRequest) -> EmbeddingResult:
        try:
            vectors = tuple(tuple(float(x) for x in e.values) for e in response.embeddings)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderResponseError(
                f"the embeddings answer is malformed ({type(exc).__name__}: {exc})",
                provider=self.name,
                model=request.model,
            ) from None
        return EmbeddingResult(vectors, None, request.model)

    def embed(self, request: EmbedRequest) -> EmbeddingResult:
        """Embed one batch with ``embed_content`` (``batchEmbedContents``)."""
        config = self._embed_config(request)
        try:
            response = self.client.models.embed_content(
                model=request.model, contents=list(request.texts), config=config
            )
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        return self._embedded(response, request)

    async def aembed(self, request: EmbedRequest) -> EmbeddingResult:
        """Async :meth:`embed`."""
        config = self._embed_config(request)
        try:
            response = await self.aclient.aio.models.embed_content(
                model=request.model, contents=list(request.texts), config=config
            )
        except LLMProxyError:
            raise
        except _SDK_ERRORS as exc:
            raise self.map_error(exc, request.model) from None
        return self._embedded(response, request)

    def map_error(self, exc: BaseException, model: str) -> ProviderError:
        """Map an SDK or transport error onto the core tree: status, retry_after, no secret."""
        key = self._api_key
        if isinstance(exc, errors.APIError):
            code: Any = exc.code  # typed int, but None when the body had no code
            status = int(code) if isinstance(code, int) else None
            message = redact(str(exc.message or exc), key)
            after = retry_after(exc)
            cls: type[ProviderError]
            if status in (401, 403) or (status == 400 and _invalid_key(exc)):
                cls = ProviderAuthError
            elif status == 429:
                cls = ProviderRateLimited
            elif status in (408, 504):
                cls = ProviderTimeout
            elif status is not None and (status in (409, 499) or status >= 500):
                cls = ProviderUnavailable
            elif status is None:
                cls = ProviderResponseError
            else:
                cls = ProviderBadRequest
            return cls(message, provider=self.name, model=model, status=status, retry_after=after)
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeout("the request timed out", provider=self.name, model=model)
        if isinstance(exc, httpx2.HTTPError):
            return ProviderConnectionError(
                redact(f"connection failed: {type(exc).__name__}: {exc}", key),
                provider=self.name,
                model=model,
            )
        if isinstance(exc, (errors.UnknownApiResponseError, ValueError)):
            return ProviderResponseError(
                redact(f"the answer is not valid JSON ({type(exc).__name__}: {exc})", key),
                provider=self.name,
                model=model,
            )
        return ProviderError(
            redact(f"{type(exc).__name__}: {exc}", key), provider=self.name, model=model
        )

    # -- estimates and limits ----------------------------------------------------------------

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        """Return an upper bound on the input tokens (see :func:`count_messages`)."""
        return count_messages(messages)

    def count_text_tokens(self, text: str, model: str) -> int:
        """Return an upper bound on the tokens of output text: its UTF-8 byte count."""
        return text_upper_bound(text)

    def input_margin(self, model: str) -> InputMargin:
        """How far the byte bound can fall short of Gemini's bill (:data:`INPUT_MARGIN`)."""
        return INPUT_MARGIN

    def max_output_tokens(self, model: str) -> int | None:
        """Return the model's own output limit (thinking included), None when unknown."""
        return models.output_limit(model)

    def close(self) -> None:
        """Close the sync connections (async ones: :meth:`aclose`)."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            http.close()

    async def aclose(self) -> None:
        """Close all connections; call it from the event loop the async client was used on."""
        self.close()
        ahttp, self._ahttp, self._aclient, self._aloop = self._ahttp, None, None, None
        if ahttp is not None:
            await ahttp.aclose()


class _StreamReader:
    """Turns streamed Gemini responses into chunks; the finish and usage come out at the end."""

    __slots__ = ("calls", "finish", "id", "model", "provider", "signatures", "usage")

    def __init__(self, provider: GeminiProvider, model: str) -> None:
        self.provider = provider
        self.model = model
        self.calls: list[ToolCall] = []
        self.signatures: dict[str, bytes] = {}
        self.finish: Any = None
        self.usage: Usage | None = None
        self.id: str | None = None

    def feed(self, response: types.GenerateContentResponse) -> Chunk | None:
        usage = convert.usage_from_metadata(response.usage_metadata)
        if usage is not None:
            self.usage = usage  # streams may repeat running totals: the last one counts
        self.id = response.response_id or self.id
        if response.model_version:
            self.model = response.model_version
        if convert.blocked(response):
            self.finish = "SAFETY"
            return None
        candidate = response.candidates[0] if response.candidates else None
        if candidate is None:
            return None
        if candidate.finish_reason is not None:
            self.finish = candidate.finish_reason
        content = candidate.content
        text, reasoning, calls = convert.read_parts(
            content.parts if content is not None else None, self.signatures
        )
        self.calls.extend(calls)
        if not (text or reasoning):
            return None
        return Chunk(text, reasoning, model=self.model, id=self.id)

    def last(self) -> Chunk:
        if self.finish is None:
            raise ProviderConnectionError(
                "the stream ended before the answer was complete",
                provider=self.provider.name,
                model=self.model,
            )
        return Chunk(
            usage=self.usage,
            finish_reason=convert.finish_reason(self.finish, has_calls=bool(self.calls)),
            model=self.model,
            tool_calls=tuple(self.calls),
            id=self.id,
            state=convert.state_of(self.signatures) or None,
        )


async def _within(
    responses: AsyncIterator[types.GenerateContentResponse],
    deadline: float | None,
    request: ChatRequest,
    provider: GeminiProvider,
) -> AsyncIterator[types.GenerateContentResponse]:
    """``responses``, each step cut off at ``deadline`` (the loop's clock): ProviderTimeout."""
    if deadline is None:
        async for response in responses:
            yield response
        return
    while True:
        cutoff = asyncio.timeout_at(deadline)
        try:
            async with cutoff:
                response = await anext(responses)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if cutoff.expired():
                raise provider._timed_out(request) from None
            raise
        yield response
