"""The OpenAI provider: Chat Completions and the Responses API through the official SDK.

The provider builds the JSON body in wire form itself: the typed ``create`` methods would walk
every parameter through the SDK's type-driven transform first, about a third of a millisecond
per call that changes nothing in a body made of plain JSON. The fields are checked against
those ``create`` methods' own signatures, so the same keyword arguments work and an unknown one
is refused by name. Sync calls send the body through the SDK's public ``post`` (the SDK's
documented way to send a body it does not model: auth, headers, timeouts). Async calls send it
straight on aiohttp with the async SDK client's own URL, headers and auth
(:mod:`llmproxy_openai.direct`), which skips the SDK's per-request pipeline. The provider reads
the raw JSON body and the raw SSE lines itself instead of letting the SDK build its response
models, which is most of the SDK's own cost per call. The SDK's retries are off: the Proxy owns
retries, so every attempt is seen and budgeted.

Which API answers: Chat Completions, unless the request offers a hosted tool (file search, code
interpreter: only the Responses API runs them) or the provider is configured with
``api = "responses"`` (see :mod:`llmproxy_openai.responses`). ``api = "chat"`` keeps every call
on Chat Completions and makes hosted tools a ConfigError.

Time limits: a connection must open within ``connect_timeout`` seconds (default 10) and the
service must send something within ``timeout`` seconds (the read timeout, default 60): for a
stream, each chunk within that of the one before, the first one included. A request's
``timeout`` (the call's deadline left, set by the Proxy) bounds the whole attempt: a whole
answer must arrive within it (the read timeout then gives way to it), and a stream's last
chunk too. Running out raises :class:`~llmproxy.errors.ProviderTimeout` and closes the
connection. The async paths enforce the deadline exactly; the sync path checks it between
reads, each read waiting at most what was left of it when the attempt began.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import functools
import inspect
import json
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, ClassVar, Final, Literal, cast

import aiohttp
import httpx2
import openai

from llmproxy import env as envvars
from llmproxy.errors import (
    ConfigError,
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
from llmproxy.provider import EmbedLimits, deadline_passed, no_embeddings, within_deadline
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret, redact
from llmproxy.tokens import InputMargin
from llmproxy.tools import HostedTool, Tool
from llmproxy.tools.offer import read_tool_choice, refuse_hosted, split_tools
from llmproxy.types import (
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingResult,
    EmbedRequest,
    Message,
    ResponseSchema,
    ToolCall,
    Usage,
)
from llmproxy_openai import env, models, parts, responses, tokenizer
from llmproxy_openai.direct import DirectSession, Prepared, error_message, message_in
from llmproxy_openai.responses import wire_schema

#: Seconds the service may stay silent: for a whole answer when the call has no deadline, and
#: between two chunks of a stream.
DEFAULT_TIMEOUT = 60.0
#: Seconds to open a connection (TCP and TLS) or to wait for a free one in the pool.
DEFAULT_CONNECT_TIMEOUT = 10.0
CHAT_PATH: Final = "/chat/completions"
#: What one ``/v1/embeddings`` request may hold: 2048 inputs, 300,000 tokens in all.
EMBED_LIMITS: Final = EmbedLimits(max_inputs=2048, max_tokens=300_000)
RESPONSES_PATH: Final = "/responses"

#: The values of the ``api`` option: which OpenAI API answers (see the module's note).
API = Literal["auto", "chat", "responses"]
_APIS: tuple[str, ...] = ("auto", "chat", "responses")
#: The values of the ``async_http`` option: the HTTP client under the async SDK client.
AsyncHTTP = Literal["aiohttp", "httpx"]
_ASYNC_HTTPS: tuple[str, ...] = ("aiohttp", "httpx")
#: The shortest transport timeout an attempt gets (a deadline already past still tries to
#: connect this long rather than pass zero, which means "no timeout" to some transports).
_MIN_SECONDS = 0.001


@functools.cache
def chat_fields() -> frozenset[str]:
    """The keyword arguments the SDK's ``chat.completions.create`` takes."""
    from openai.resources.chat.completions import Completions

    return frozenset(inspect.signature(Completions.create).parameters) - {"self"}


@functools.cache
def responses_fields() -> frozenset[str]:
    """The keyword arguments the SDK's ``responses.create`` takes."""
    from openai.resources.responses import Responses

    return frozenset(inspect.signature(Responses.create).parameters) - {"self"}


_REQUEST_OPTIONS: dict[str, str] = {
    "extra_headers": "headers",
    "extra_query": "params",
    "extra_body": "extra_json",
    "timeout": "timeout",
}


def split_params(
    params: Mapping[str, Any], fields: frozenset[str], what: str, provider: str, model: str
) -> tuple[dict[str, Any], openai.RequestOptions]:
    """Split ``create``-style keyword arguments into the JSON body and the SDK's request options.

    ``extra_headers``, ``extra_query``, ``extra_body`` (merged into the body by the SDK) and
    ``timeout`` become request options, as ``create`` makes them; the SDK's ``NOT_GIVEN`` and
    ``omit`` are dropped. A key ``create`` does not take is a :class:`ProviderBadRequest` naming
    it (a field the SDK does not know yet goes in ``extra_body``).
    """
    body: dict[str, Any] = {}
    options: dict[str, Any] = {"security": {"bearer_auth": True}}
    for key, value in params.items():
        if isinstance(value, (openai.NotGiven, openai.Omit)):
            continue
        option = _REQUEST_OPTIONS.get(key)
        if option is not None:
            if key == "extra_headers" and value is not None:
                _check_headers(value, provider, model)
            if value is not None or key == "timeout":  # timeout=None: no timeout, as in create
                options[option] = value
        elif key in fields:
            body[key] = value
        else:
            raise ProviderBadRequest(
                f"{what} take no parameter {key!r}; check its spelling, or send a field the"
                f" openai SDK does not know yet inside extra_body={{{key!r}: ...}}",
                provider=provider,
                model=model,
            )
    return body, cast("openai.RequestOptions", options)


def _check_headers(value: object, provider: str, model: str) -> None:
    """Refuse ``extra_headers`` that are not a mapping of names to strings (or ``openai.omit``)."""
    if isinstance(value, Mapping):
        wrong = [
            f"{name!r} is {type(v).__name__}"
            for name, v in value.items()
            if not isinstance(name, str) or not isinstance(v, (str, openai.Omit))
        ]
        if not wrong:
            return
        detail = f"; {', '.join(wrong)}"
    else:
        detail = f", got {type(value).__name__}"
    raise ProviderBadRequest(
        "extra_headers must map header names to strings (openai.omit removes a header)" + detail,
        provider=provider,
        model=model,
    )


def function_tool_to_wire(tool: Tool) -> dict[str, Any]:
    """Return the Chat Completions form of a function tool.

    >>> function_tool_to_wire(Tool("lookup", "Look it up."))["function"]["name"]
    'lookup'
    """
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
            "strict": tool.strict,
        },
    }


def message_to_wire(m: Message, where: str = "message") -> dict[str, Any]:
    """Return the Chat Completions form of a message.

    A message with parts (images, documents, audio) gets a list ``content`` in the parts' order
    (see :mod:`llmproxy_openai.parts`); ``where`` names the message in errors (``messages[1]``).
    """
    content = parts.chat_content(m, where) if m.parts else m.content
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
        if not m.content:
            out["content"] = None
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def usage_from_wire(u: Mapping[str, Any] | None) -> Usage | None:
    """Map a Chat Completions ``usage`` object (and DeepSeek's cache fields) onto :class:`Usage`.

    ``prompt_tokens_details.cache_write_tokens`` (OpenRouter's, and llmproxy's gateway's) are
    prompt-cache writes.
    """
    if not u:
        return None
    prompt = u.get("prompt_tokens") or 0
    completion = u.get("completion_tokens") or 0
    details = u.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or u.get("prompt_cache_hit_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    out_details = u.get("completion_tokens_details") or {}
    reasoning = out_details.get("reasoning_tokens") or 0
    return Usage(
        int(prompt), int(completion), int(cached), int(reasoning), cache_write_tokens=int(written)
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Read ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date) from response headers."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
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
    if parsed.tzinfo is None:  # "-0000" parses naive but means UTC, not local time
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return max(parsed.timestamp() - time.time(), 0.0)


class OpenAIProvider:
    """Chat Completions against OpenAI or any OpenAI-compatible endpoint.

    >>> OpenAIProvider(api_key="sk-...", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP

    ``api`` picks the API: ``auto`` (Chat Completions; the Responses API for requests that
    offer hosted tools), ``chat`` or ``responses`` (every call).

    ``async_http`` picks how async calls go out: ``aiohttp`` (the default: straight on an
    aiohttp session with the SDK client's URL, headers and auth, :mod:`llmproxy_openai.direct`;
    the few requests it cannot reproduce go through the SDK's ``post`` on its aiohttp backend)
    or ``httpx`` (every call through the SDK's ``post`` on its default httpx client). Sync
    calls always go through the SDK's ``post`` on httpx.

    Subclasses for OpenAI-compatible services override :attr:`output_limit_param` (the request
    field that caps the output), :meth:`wire_message` (how a message is sent) and
    :attr:`responses_api` (False when the service has no Responses API).
    """

    #: The request field that carries ``request.max_output_tokens``.
    output_limit_param: ClassVar[str] = "max_completion_tokens"
    #: Whether the service has OpenAI's Responses API (and so runs hosted tools).
    responses_api: ClassVar[bool] = True

    def __init__(
        self,
        *,
        api_key: str | Secret,
        base_url: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        organization: str | None = None,
        project: str | None = None,
        name: str = "openai",
        default_headers: Mapping[str, str] | None = None,
        api: API = "auto",
        default_query: Mapping[str, str] | None = None,
        async_http: AsyncHTTP = "aiohttp",
    ) -> None:
        if async_http not in _ASYNC_HTTPS:
            raise ConfigError(
                f"provider '{name}': async_http must be 'aiohttp' or 'httpx', got {async_http!r}",
                path=f"providers.{name}.async_http",
            )
        if api not in _APIS or (api == "responses" and not self.responses_api):
            allowed = ", ".join(repr(a) for a in _APIS if self.responses_api or a != "responses")
            raise ConfigError(
                f"provider '{name}': api must be one of {allowed}, got {api!r}",
                path=f"providers.{name}.api",
            )
        self.name = name
        self.api: API = api
        self.async_http: AsyncHTTP = async_http
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(api_key)
        self.base_url = base_url
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.connect_timeout = connect_timeout or DEFAULT_CONNECT_TIMEOUT
        #: The transport's timeouts when a request has no deadline of its own.
        self.timeouts = httpx2.Timeout(
            self.timeout, connect=self.connect_timeout, pool=self.connect_timeout
        )
        self._client_args: dict[str, Any] = {
            "base_url": base_url,
            "timeout": self.timeouts,
            "max_retries": 0,
            "organization": organization,
            "project": project,
            "default_headers": dict(default_headers) if default_headers else None,
            "default_query": dict(default_query) if default_query else None,
        }
        self._client: openai.OpenAI | None = None
        self._aclients: _LoopClients | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._akeeper: AsyncGenerator[None, None] | None = None

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> OpenAIProvider:
        """Build the provider from configuration, else from the environment (see ``env.py``).

        Options of the ``[providers.openai]`` table: ``organization``, ``project``, ``api``
        (``auto``, ``chat`` or ``responses``), ``async_http`` (``aiohttp`` or ``httpx``;
        else ``LLMPROXY_OPENAI_ASYNC_HTTP``) and ``connect_timeout`` (seconds; else
        ``LLMPROXY_OPENAI_CONNECT_TIMEOUT``, default 10). The common ``timeout`` key is the read
        timeout (else ``LLMPROXY_OPENAI_TIMEOUT``, default 60).
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
            organization=options.get("organization") or environ.get(env.ORG_ID),
            project=options.get("project") or environ.get(env.PROJECT_ID),
            name=settings.name,
            api=options.get("api") or "auto",
            async_http=cast(
                "AsyncHTTP", options.get("async_http") or env.async_http(environ) or "aiohttp"
            ),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    # -- clients -----------------------------------------------------------------------------------

    @property
    def client(self) -> openai.OpenAI:
        """The sync SDK client, made on first use."""
        if self._client is None:
            self._client = openai.OpenAI(api_key=self._api_key.get(), **self._client_args)
        return self._client

    def _loop_clients(self) -> _LoopClients:
        loop = asyncio.get_running_loop()
        clients = self._aclients
        if clients is None or self._aloop is not loop:
            http_client = None
            if self.async_http == "aiohttp":
                http_client = openai.DefaultAioHttpClient(timeout=self.timeouts)
            sdk = openai.AsyncOpenAI(
                api_key=self._api_key.get(), http_client=http_client, **self._client_args
            )
            clients = self._aclients = _LoopClients(sdk)
            self._aloop = loop
            self._akeeper = _close_at_loop_end(clients)
        return clients

    @property
    def aclient(self) -> openai.AsyncOpenAI:
        """The async SDK client of the running event loop (its connections belong to that loop)."""
        return self._loop_clients().sdk

    def _direct(
        self, path: str, body: Mapping[str, Any], options: Mapping[str, Any]
    ) -> tuple[DirectSession, Prepared] | None:
        """The fast path's session and request, or None when the SDK's ``post`` sends it.

        Only with ``async_http="aiohttp"``; see :mod:`llmproxy_openai.direct`.
        """
        if self.async_http != "aiohttp":
            return None
        session = self._session()
        prepared = session.prepare(path, body, options)
        return None if prepared is None else (session, prepared)

    def _session(self) -> DirectSession:
        """The fast path's session of the running event loop, made on first use."""
        clients = self._loop_clients()
        session = clients.direct
        if session is None:
            session = clients.direct = DirectSession(clients.sdk, self.timeouts)
        return session

    # -- requests ----------------------------------------------------------------------------------

    def wire_message(self, m: Message, where: str = "message") -> dict[str, Any]:
        """Return the wire form of one message (:func:`message_to_wire`; subclasses extend it).

        ``where`` names the message in errors about its parts (``messages[1]``).
        """
        return message_to_wire(m, where)

    def params(self, request: ChatRequest) -> dict[str, Any]:
        """Return the keyword arguments of ``chat.completions.create`` for a request.

        Function tools go out in Chat Completions' form (:func:`function_tool_to_wire`) with
        ``tool_choice`` (a mode, or ``{"type": "function", ...}`` for a tool's name); hosted
        tools are a ConfigError here (only the Responses API runs them).
        """
        wire = self.wire_message
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [
                wire(m, f"messages[{i}]") if m.parts else wire(m)
                for i, m in enumerate(request.messages)
            ],
        }
        if request.tools or request.tool_choice is not None:
            functions, hosted = split_tools(request.tools)
            self.refuse_hosted(hosted)
            choice = read_tool_choice(request.tool_choice, functions)
            if functions:
                params["tools"] = [function_tool_to_wire(t) for t in functions]
                if choice is not None and choice.kind == "function":
                    params["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
                elif choice is not None:
                    params["tool_choice"] = choice.kind
        if request.max_output_tokens is not None:
            params[self.output_limit_param] = request.max_output_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.response_schema is not None:
            self.ask_for_json(params, request.response_schema)
        if request.extra:
            params.update(request.extra)
        return params

    def ask_for_json(self, params: dict[str, Any], schema: ResponseSchema) -> None:
        """Ask for an answer that fits ``schema``: ``response_format`` of type ``json_schema``.

        With ``schema.strict`` (the default) the schema is rewritten as OpenAI's strict mode needs
        (:func:`llmproxy.structured.strict_json_schema`). Subclasses for services without a
        schema mode override this (DeepSeek: JSON mode with the schema in the instructions).
        """
        params["response_format"] = {"type": "json_schema", "json_schema": wire_schema(schema)}

    def refuse_hosted(self, hosted: list[HostedTool]) -> None:
        """Raise ConfigError for hosted tools on Chat Completions, saying what runs them."""
        if self.responses_api:
            hint = (
                "hosted tools need the Responses API; set the provider's api option to"
                " 'auto' or 'responses'"
            )
        else:
            hint = "only OpenAI's Responses API runs hosted tools; offer function tools here"
        refuse_hosted(hosted, self.name, hint)

    def uses_responses(self, request: ChatRequest) -> bool:
        """Whether a request goes to the Responses API (see the class's ``api``)."""
        if self.api == "responses":
            return True
        if self.api == "chat" or not request.tools or not self.responses_api:
            return False
        return any(isinstance(t, HostedTool) for t in request.tools)

    def responses_params(self, request: ChatRequest) -> dict[str, Any]:
        """Return the keyword arguments of ``responses.create`` for a request.

        Hosted tools are checked first (file search without ``vector_store_ids`` is a
        ConfigError naming ``tools[i].vector_store_ids``); see :mod:`llmproxy_openai.responses`.
        """
        functions, hosted = split_tools(request.tools)
        responses.check_hosted(request.tools)
        return responses.request_params(request, functions, hosted)

    def _completion(self, body: bytes, model: str) -> Completion:
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            wire = choice["message"]
            calls = tuple(
                ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
                for c in wire.get("tool_calls") or ()
            )
            message = Message(
                "assistant",
                wire.get("content") or "",
                tool_calls=calls,
                reasoning=wire.get("reasoning_content") or None,
            )
            return Completion(
                message,
                usage_from_wire(data.get("usage")),
                data.get("model") or model,
                choice.get("finish_reason"),
                data.get("id"),
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderResponseError(
                f"the response is not a valid chat completion ({type(exc).__name__}: {exc})",
                provider=self.name,
                model=model,
            ) from None

    def _attempt(
        self, request: ChatRequest, *, stream: bool
    ) -> tuple[str, dict[str, Any], openai.RequestOptions]:
        """The path, wire-form body and SDK options of one attempt, on the API that answers it.

        Streams ask Chat Completions for usage in the last chunk. A deadline already past
        (``request.timeout <= 0``) is a ProviderTimeout before anything is sent.
        """
        if request.timeout is not None and request.timeout <= 0:
            raise self._timed_out(request)
        if self.uses_responses(request):
            params = self.responses_params(request)
            if stream:
                params["stream"] = True
            body, options = self._responses_body(params, request.model)
            path = RESPONSES_PATH
        else:
            params = self._stream_params(request) if stream else self.params(request)
            body, options = self._chat_body(params, request.model)
            path = CHAT_PATH
        if request.timeout is not None and "timeout" not in options:
            options["timeout"] = self.attempt_timeouts(request.timeout, stream=stream)
        if request.headers:  # a call observer's traceparent; the call's own extra_headers win
            options["headers"] = {**request.headers, **(options.get("headers") or {})}
        return path, body, options

    def attempt_timeouts(self, seconds: float, *, stream: bool) -> httpx2.Timeout:
        """The transport's timeouts for an attempt that may take ``seconds`` in all.

        Connecting within the connect timeout and ``seconds``; a whole answer within
        ``seconds`` (the read timeout gives way to the deadline); a stream's every read within
        the read timeout and ``seconds``. The total is the caller's to enforce (reads add up).
        """
        seconds = max(seconds, _MIN_SECONDS)
        connect = min(self.connect_timeout, seconds)
        read = min(self.timeout, seconds) if stream else seconds
        return httpx2.Timeout(read, connect=connect, pool=connect, write=seconds)

    def _timed_out(self, request: ChatRequest) -> ProviderTimeout:
        return deadline_passed(self.name, request)

    def _answer(self, path: str, content: bytes, model: str) -> Completion:
        if path == RESPONSES_PATH:
            return self._parse_response(content, model)
        return self._completion(content, model)

    def _reader(self, path: str, model: str) -> _SSEReader | responses.ResponsesStreamReader:
        if path == RESPONSES_PATH:
            return responses.ResponsesStreamReader(self.name, model, self._api_key)
        return _SSEReader(self, model)

    def chat(self, request: ChatRequest) -> Completion:
        """Make one non-streamed attempt."""
        path, body, options = self._attempt(request, stream=False)
        try:
            response = self.client.post(path, cast_to=httpx2.Response, body=body, options=options)
            content = response.content
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self.map_error(exc, request.model) from None
        return self._answer(path, content, request.model)

    async def achat(self, request: ChatRequest) -> Completion:
        """Async :meth:`chat`."""
        return await within_deadline(self.name, request, lambda: self._achat(request))

    async def _achat(self, request: ChatRequest) -> Completion:
        path, body, options = self._attempt(request, stream=False)
        model = request.model
        direct = self._direct(path, body, options)
        if direct is None:
            sent = await self._sdk_apost(path, body, options, model, stream=False)
            return self._answer(path, sent.content, model)
        response = await self._direct_apost(*direct, model)
        try:
            content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.map_error(exc, model) from None
        finally:
            response.release()
        return self._answer(path, content, model)

    async def _sdk_apost(
        self,
        path: str,
        body: dict[str, Any],
        options: openai.RequestOptions,
        model: str,
        *,
        stream: bool,
    ) -> httpx2.Response:
        """Send through the async SDK client's ``post``, its errors mapped."""
        try:
            return await self.aclient.post(
                path, cast_to=httpx2.Response, body=body, options=options, stream=stream
            )
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self.map_error(exc, model) from None

    async def _direct_apost(
        self, session: DirectSession, prepared: Prepared, model: str
    ) -> aiohttp.ClientResponse:
        """Send on the fast path: a success with its body still to read, or the mapped error.

        An error status is raised with the message of its body (none if the body cannot be
        read), and the response released.
        """
        try:
            response = await session.post(prepared)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.map_error(exc, model) from None
        if response.status < 400:
            return response
        try:
            content = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            content = b""
        finally:
            response.release()
        raise self._status_error(
            response.status, response.headers, error_message(response.status, content), model
        )

    def _chat_body(
        self, params: Mapping[str, Any], model: str
    ) -> tuple[dict[str, Any], openai.RequestOptions]:
        return split_params(params, chat_fields(), "chat completions", self.name, model)

    def _stream_params(self, request: ChatRequest) -> dict[str, Any]:
        params = self.params(request)
        params["stream"] = True
        options = dict(params.get("stream_options") or {})
        options["include_usage"] = True
        params["stream_options"] = options
        return params

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        """Make one streamed attempt (Chat Completions streams carry usage in the last chunk)."""
        path, body, options = self._attempt(request, stream=True)
        try:
            response = self.client.post(
                path, cast_to=httpx2.Response, body=body, options=options, stream=True
            )
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self.map_error(exc, request.model) from None
        reader = self._reader(path, request.model)
        chunks: Iterator[bytes] = response.iter_bytes()
        if request.timeout is not None:
            chunks = self._within(chunks, request, time.monotonic() + request.timeout)
        try:
            for line in sse_lines(chunks):
                if reader.done:
                    continue  # read the body to its end so the connection goes back to the pool
                chunk = reader.line(line)
                if chunk is not None:
                    yield chunk
        except httpx2.HTTPError as exc:
            raise self.map_error(exc, request.model) from None
        finally:
            response.close()
        reader.check_complete()

    def _within(
        self, chunks: Iterator[bytes], request: ChatRequest, deadline: float
    ) -> Iterator[bytes]:
        """``chunks`` until ``deadline`` (``time.monotonic``), then ProviderTimeout."""
        for chunk in chunks:
            if time.monotonic() > deadline:
                raise self._timed_out(request)
            yield chunk

    async def _awithin(
        self, chunks: AsyncIterator[bytes], request: ChatRequest, deadline: float
    ) -> AsyncIterator[bytes]:
        """``chunks``, each read cut off at ``deadline`` (the loop's clock): ProviderTimeout."""
        while True:
            cutoff = asyncio.timeout_at(deadline)
            try:
                async with cutoff:
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if cutoff.expired():
                    raise self._timed_out(request) from None
                raise
            yield chunk

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Async :meth:`stream`."""
        path, body, options = self._attempt(request, stream=True)
        if request.timeout is None:
            chunks, close = await self._aopen(path, body, options, request.model)
        else:
            deadline = asyncio.get_running_loop().time() + request.timeout
            cutoff = asyncio.timeout_at(deadline)
            try:
                async with cutoff:
                    chunks, close = await self._aopen(path, body, options, request.model)
            except TimeoutError:
                if cutoff.expired():
                    raise self._timed_out(request) from None
                raise
            chunks = self._awithin(chunks, request, deadline)
        reader = self._reader(path, request.model)
        try:
            async for line in asse_lines(chunks):
                if reader.done:
                    continue  # read the body to its end so the connection goes back to the pool
                chunk = reader.line(line)
                if chunk is not None:
                    yield chunk
        except (httpx2.HTTPError, aiohttp.ClientError, TimeoutError) as exc:
            raise self.map_error(exc, request.model) from None
        finally:
            await close()
        reader.check_complete()

    async def _aopen(
        self, path: str, body: dict[str, Any], options: openai.RequestOptions, model: str
    ) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[None]]]:
        """Send a streamed request: the body's chunks, and what closes the response."""
        direct = self._direct(path, body, options)
        if direct is None:
            sent = await self._sdk_apost(path, body, options, model, stream=True)
            return sent.aiter_bytes(), sent.aclose
        response = await self._direct_apost(*direct, model)

        async def close() -> None:
            # A body read to its end gives the connection back to the pool; one cut short
            # (the caller stopped early) closes it.
            response.release()

        return response.content.iter_any(), close

    # -- the Responses API ---------------------------------------------------------------------

    def _responses_body(
        self, params: Mapping[str, Any], model: str
    ) -> tuple[dict[str, Any], openai.RequestOptions]:
        return split_params(params, responses_fields(), "responses", self.name, model)

    def _parse_response(self, body: bytes, model: str) -> Completion:
        try:
            data = json.loads(body)
        except ValueError:
            raise ProviderResponseError(
                "the response is not valid JSON", provider=self.name, model=model
            ) from None
        return responses.parse_response(data, self.name, model, self._api_key)

    # -- embeddings --------------------------------------------------------------------------------

    #: Whether the service has OpenAI's ``/v1/embeddings`` (False: :meth:`embed_limits` raises).
    embeddings: ClassVar[bool] = True
    #: What to suggest when it has not.
    embeddings_hint: ClassVar[str | None] = None

    def embed_limits(self, model: str) -> EmbedLimits:
        """OpenAI's limits: 2048 inputs and 300,000 tokens per request."""
        if not self.embeddings:
            raise no_embeddings(self.name, self.embeddings_hint)
        return EMBED_LIMITS

    def _embed_args(self, request: EmbedRequest) -> dict[str, Any]:
        """The SDK's ``embeddings.create`` arguments.

        No ``encoding_format``: the SDK then asks for base64 (little-endian float32, a third of
        the bytes of JSON floats) and decodes it into floats.
        """
        args: dict[str, Any] = {"model": request.model, "input": list(request.texts)}
        if request.dimensions is not None:
            args["dimensions"] = request.dimensions
        if request.user is not None:
            args["user"] = request.user
        if request.timeout is not None:
            args["timeout"] = max(request.timeout, 0.001)
        if request.extra:
            args["extra_body"] = dict(request.extra)
        if request.headers:
            args["extra_headers"] = dict(request.headers)
        return args

    def _embedded(self, answer: Any, request: EmbedRequest) -> EmbeddingResult:
        """The SDK's ``CreateEmbeddingResponse`` as vectors in input order, with usage."""
        try:
            rows = sorted(answer.data, key=lambda row: row.index)
            vectors = tuple(tuple(float(x) for x in row.embedding) for row in rows)
            usage = Usage(int(answer.usage.prompt_tokens)) if answer.usage else None
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderResponseError(
                f"the embeddings answer is malformed: {exc}",
                provider=self.name,
                model=request.model,
            ) from None
        return EmbeddingResult(vectors, usage, getattr(answer, "model", None) or request.model)

    def embed(self, request: EmbedRequest) -> EmbeddingResult:
        """Embed one batch through ``/v1/embeddings``."""
        try:
            answer = self.client.embeddings.create(**self._embed_args(request))
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self.map_error(exc, request.model) from None
        return self._embedded(answer, request)

    async def aembed(self, request: EmbedRequest) -> EmbeddingResult:
        """Async :meth:`embed`."""
        try:
            answer = await self.aclient.embeddings.create(**self._embed_args(request))
        except (openai.OpenAIError, httpx2.HTTPError, aiohttp.ClientError) as exc:
            raise self.map_error(exc, request.model) from None
        return self._embedded(answer, request)

    # -- errors ------------------------------------------------------------------------------------

    def map_error(self, exc: BaseException, model: str) -> ProviderError:
        """Map an SDK or transport error onto the core tree: status, retry_after, no secret."""
        key = self._api_key
        if isinstance(exc, openai.APIStatusError):
            message = message_in(exc.body) or exc.message
            return self._status_error(exc.status_code, exc.response.headers, message, model)
        sdk_timeout = isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException))
        # TimeoutError: aiohttp's connect, read and pool timeouts on the fast path.
        if isinstance(exc, TimeoutError) or (sdk_timeout and not _dropped_under_aiohttp(exc)):
            return ProviderTimeout("the request timed out", provider=self.name, model=model)
        if isinstance(exc, aiohttp.ClientError):
            return ProviderConnectionError(
                redact(f"connection failed: {type(exc).__name__}: {exc}", key),
                provider=self.name,
                model=model,
            )
        if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
            cause = exc.__cause__ or exc
            return ProviderConnectionError(
                redact(f"connection failed: {type(cause).__name__}: {cause}", key),
                provider=self.name,
                model=model,
            )
        return ProviderError(
            redact(f"{type(exc).__name__}: {exc}", key), provider=self.name, model=model
        )

    def _status_error(
        self, status: int, headers: Mapping[str, str], message: str, model: str
    ) -> ProviderError:
        """The core error for an HTTP error status (``retry_after`` from its headers)."""
        cls: type[ProviderError]
        if status in (401, 403):
            cls = ProviderAuthError
        elif status == 429:
            cls = ProviderRateLimited
        elif status == 408:
            cls = ProviderTimeout
        elif status == 409 or status >= 500:
            cls = ProviderUnavailable
        else:
            cls = ProviderBadRequest
        return cls(
            redact(message, self._api_key),
            provider=self.name,
            model=model,
            status=status,
            retry_after=retry_after(headers),
        )

    # -- start-up ------------------------------------------------------------------------------

    def warm(self, model: str) -> None:
        """Do now what the first call would otherwise do: a host calls it before serving.

        Loads ``model``'s tokenizer tables and the SDK modules that check request fields. Called
        with an event loop running, it also makes that loop's clients and the fast path's
        session. About 0.1-0.2 s that the first call on a new process or loop would otherwise
        pay. Makes no request.
        """
        self.count_tokens((Message("user", "warm up"),), model)
        chat_fields()
        if self.responses_api:
            responses_fields()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.async_http == "aiohttp":
            self._session()
        else:
            self._loop_clients()

    # -- estimates and limits ----------------------------------------------------------------------

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        """Count input tokens exactly with the bundled tokenizer (upper bound if model unknown)."""
        return tokenizer.count_messages(messages, model)

    def count_text_tokens(self, text: str, model: str) -> int:
        """Count the tokens of output text."""
        return tokenizer.count_text(text, model)

    def input_margin(self, model: str) -> InputMargin:
        """How far the count can fall short of the bill (see :func:`tokenizer.input_margin`)."""
        return tokenizer.input_margin(model)

    def max_output_tokens(self, model: str) -> int | None:
        """Return the model's own output limit, None when unknown."""
        return models.output_limit(model)

    def close(self) -> None:
        """Close the sync SDK client's connections (async ones: :meth:`aclose`)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close every client; call it from the event loop the async clients were used on."""
        self.close()
        keeper, self._akeeper, self._aclients, self._aloop = self._akeeper, None, None, None
        if keeper is not None:
            await keeper.aclose()  # closes the clients


class _LoopClients:
    """The async clients of one event loop: the SDK's, and the fast path's aiohttp session."""

    __slots__ = ("direct", "sdk")

    def __init__(self, sdk: openai.AsyncOpenAI) -> None:
        self.sdk = sdk
        self.direct: DirectSession | None = None

    async def aclose(self) -> None:
        try:
            await self.sdk.close()
        finally:
            if self.direct is not None:
                await self.direct.aclose()


async def _client_keeper(clients: _LoopClients) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await clients.aclose()


def _close_at_loop_end(clients: _LoopClients) -> AsyncGenerator[None, None]:
    """Tie ``clients`` to the running event loop: closed when the loop shuts down.

    An async client's connections belong to the loop that made them, and a program may run
    several loops one after another (``asyncio.run`` per call). The client is held by an async
    generator started here, which the loop registers; ``asyncio.run`` ends by closing every
    such generator on the loop, and its ``finally`` closes the client there (aiohttp's sessions
    would otherwise log "Unclosed client session" when collected).
    """
    keeper = _client_keeper(clients)
    step = keeper.asend(None)  # the running loop's first-iteration hook registers the generator
    with contextlib.suppress(StopIteration):
        step.send(None)  # run to the yield: no await before it, so it never suspends
    return keeper


def _dropped_under_aiohttp(exc: BaseException) -> bool:
    """Whether a "timeout" is really a connection aiohttp saw closed or refused.

    The SDK's aiohttp transport maps every ``aiohttp.ClientConnectionError`` (a server that
    hung up, a reset) onto httpx's ``ConnectTimeout``; the root cause tells them apart.
    """
    link: BaseException | None = exc
    for _ in range(8):
        if link is None:
            return False
        if type(link).__module__.startswith("aiohttp"):
            return not isinstance(link, TimeoutError)
        link = link.__cause__
    return False


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines of ``data`` (ended by LF, CR or CRLF, as SSE ends them) and the rest."""
    lines = data.splitlines(keepends=True)
    rest = b""
    if lines and lines[-1][-1] not in b"\r\n":
        rest = lines.pop()
    return lines, rest


def sse_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """The lines of a streamed body, without their ends, decoded as UTF-8.

    httpx's ``iter_lines`` decodes the text incrementally and then splits it, two generator
    layers per chunk; splitting the bytes first and decoding each whole line costs less per
    chunk of a stream. A CR at the end of one chunk and an LF at the start of the next give an
    extra empty line, which SSE readers skip like any other.
    """
    rest = b""
    for data in chunks:
        lines, rest = _split(rest + data if rest else data)
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if rest:
        yield rest.decode("utf-8", "replace")


async def asse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Async :func:`sse_lines`."""
    rest = b""
    async for data in chunks:
        lines, rest = _split(rest + data if rest else data)
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if rest:
        yield rest.decode("utf-8", "replace")


class _SSEReader:
    """Turns Chat Completions SSE lines into chunks, gathering streamed tool calls."""

    __slots__ = ("calls", "done", "finished", "model", "provider")

    def __init__(self, provider: OpenAIProvider, model: str) -> None:
        self.provider = provider
        self.model = model
        self.done = False
        self.finished = False
        self.calls: dict[int, list[str]] = {}

    def line(self, line: str) -> Chunk | None:
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            if self.calls and not self.finished:
                # Some gateways end with [DONE] and no finish_reason: still deliver the calls.
                self.finished = True
                return Chunk(tool_calls=self._tool_calls(), finish_reason="tool_calls")
            return None
        try:
            data = json.loads(payload)
        except ValueError:
            raise ProviderResponseError(
                "the stream sent an event that is not JSON",
                provider=self.provider.name,
                model=self.model,
            ) from None
        if not isinstance(data, dict):
            raise ProviderResponseError(
                "the stream sent a non-object event", provider=self.provider.name, model=self.model
            )
        error = data.get("error")
        if error:
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise ProviderUnavailable(
                redact(f"the stream reported an error: {message}", self.provider._api_key),
                provider=self.provider.name,
                model=self.model,
            )
        text = reasoning = ""
        finish = None
        calls: tuple[ToolCall, ...] = ()
        choices = data.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or ""
            for part in delta.get("tool_calls") or ():
                entry = self.calls.setdefault(int(part.get("index", 0)), ["", "", ""])
                entry[0] = part.get("id") or entry[0]
                function = part.get("function") or {}
                entry[1] += function.get("name") or ""
                entry[2] += function.get("arguments") or ""
            finish = choice.get("finish_reason")
            if finish is not None:
                self.finished = True
                if self.calls:
                    calls = self._tool_calls()
        return Chunk(
            text,
            reasoning,
            usage_from_wire(data.get("usage")),
            finish,
            data.get("model"),
            calls,
            data.get("id"),
        )

    def _tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(i, n, a or "{}") for _, (i, n, a) in sorted(self.calls.items()))

    def check_complete(self) -> None:
        if not self.done and not self.finished:
            raise ProviderConnectionError(
                "the stream ended before the answer was complete",
                provider=self.provider.name,
                model=self.model,
            )
