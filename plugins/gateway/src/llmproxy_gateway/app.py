"""The gateway: OpenAI's and Anthropic's APIs in front of one :class:`llmproxy.Proxy`.

``POST /v1/chat/completions`` is a plain ASGI handler (no framework objects on the hot path):
check the key, parse the body, call the Proxy with the key's id and user and the
``X-Session-Id`` header's session, answer JSON or SSE. ``POST /v1/responses``
(:mod:`llmproxy_gateway.responses_wire`), ``POST /v1/messages``
(:mod:`llmproxy_gateway.messages_wire`) and ``POST /v1/embeddings``
(:mod:`llmproxy_gateway.embeddings`) are the same steps with their own wire formats, through
:meth:`llmproxy.Proxy.achat`/``astream``/``aembed``. Everything else (``GET /v1/models``, the
dashboard) is a Starlette app.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from llmproxy import AsyncChatStream, Proxy
from llmproxy.errors import ConfigError, LLMProxyError
from llmproxy.history.base import HistoryRecord
from llmproxy.observe import TRACE_HEADERS, inbound
from llmproxy.plugins import load_plugins
from llmproxy.secret import logger as secret_logger
from llmproxy.secret import register, scrub_message
from llmproxy.types import ChatResponse, StreamEvent
from llmproxy.types import Message as LLMMessage
from llmproxy_gateway import env, messages_wire
from llmproxy_gateway.budgets import key_policies
from llmproxy_gateway.embeddings import embeddings_body, parse_embeddings
from llmproxy_gateway.errors import HTTPError, from_exception, unauthorized
from llmproxy_gateway.keys import KeyRecord, KeyStore, admin_matches, parse_cache
from llmproxy_gateway.metrics import GatewayMetrics
from llmproxy_gateway.models import check_model
from llmproxy_gateway.responses_wire import ResponseRenderer, new_response_id
from llmproxy_gateway.responses_wire import parse as parse_responses
from llmproxy_gateway.wire import BodyLimits, ChunkWriter, completion_body, parse
from llmproxy_usage_log import UsageLog, open_usage_log, set_usage_log, usage_log

log = secret_logger("llmproxy.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_SESSION_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


_TRACE_HEADERS = frozenset(name.encode() for name in TRACE_HEADERS)


def _trace_context(scope: Scope) -> dict[str, str] | None:
    """The request's W3C trace headers (``traceparent``...), or None when it has none."""
    found: dict[str, str] | None = None
    for key, value in scope["headers"]:
        if key in _TRACE_HEADERS:
            found = found or {}
            found[key.decode("latin-1")] = value.decode("latin-1")
    return found


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header value, or None."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Gateway:
    """The gateway's state: one Proxy, the key store, the usage log and the admin key.

    ``proxy`` defaults to ``Proxy.from_env(environ, budgets=<key slots>)``, with budget leasing
    on unless ``LLMPROXY_LEDGER_LEASE`` says otherwise (:func:`.env.proxy_environ`); a Proxy
    passed in must include :func:`~llmproxy_gateway.budgets.key_policies` itself for key
    budgets to apply.
    ``usage_log`` defaults to the usage-log plugin's (from ``LLMPROXY_USAGE_LOG_URL``).
    ``metrics`` (``GET /metrics``, :mod:`llmproxy_gateway.metrics`) defaults to new ones, fed
    by the Proxy the gateway builds; a Proxy passed in feeds them only when it was built with
    ``observers=[metrics.observe]`` (build the metrics first and pass both).
    ``clock`` (wall-clock seconds, :func:`time.time`) times the dashboard's login throttle.
    """

    def __init__(
        self,
        *,
        proxy: Proxy | None = None,
        keys: KeyStore | None = None,
        usage: UsageLog | None = None,
        environ: Mapping[str, str] | None = None,
        admin_key: str | None = None,
        clock: Callable[[], float] = time.time,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.clock = clock
        self.login_attempts, self.login_window = env.login_throttle(environ)
        self.environ = environ
        self.keys = keys if keys is not None else KeyStore.from_env(environ)
        self.admin_key = admin_key if admin_key is not None else env.admin_key(environ)
        if self.admin_key:
            register(self.admin_key)  # masked wherever it might be echoed
        self.max_body = env.max_body(environ)
        self.metrics_port = env.metrics_port(environ)
        self.metrics_open = env.metrics_open(environ)
        self.metrics = (
            metrics
            if metrics is not None
            else GatewayMetrics(key_label=self.keys.label, budgets=self.budget_rows)
        )
        self.body_limits = BodyLimits.from_env(environ)
        self._own_proxy = proxy is None
        if usage is None:
            usage = usage_log() if environ is os.environ else open_usage_log(None, environ)
            if usage is None:
                usage = open_usage_log("memory://")
        self.usage = usage
        if proxy is None:
            plugins = load_plugins(environ)
            from llmproxy_usage_log import plugin as usage_plugin

            logged = plugins.pm.is_registered(usage_plugin)
            if logged:
                # The plugin's hooks record every call of every Proxy: point them at this log.
                set_usage_log(usage)
            proxy = Proxy.from_env(
                env.proxy_environ(environ),
                budgets=key_policies(self.keys),
                plugins=plugins,
                observers=(
                    (self.metrics.observe,) if logged else (usage.record, self.metrics.observe)
                ),
            )
        self.proxy = proxy

    def budget_rows(self) -> list[dict[str, Any]]:
        """Every budget's used amount and limit (the dashboard's rows; the metrics' gauges)."""
        from llmproxy_gateway.dashboard import budgets

        return budgets(self)

    def refused(self, error: BaseException, key: KeyRecord | None) -> None:
        """Count, in the metrics, a request that failed before the Proxy made a call of it.

        A call's own failures (budgets, rate limits, the upstream) are counted from its event;
        this counts the rest (no key, a bad body, a model the key may not use) as rejected.
        """
        if not self.metrics.counted(error):
            self.metrics.rejected(key.id if key is not None else None)

    # -- keys -----------------------------------------------------------------------------------

    def authenticate(self, scope: Scope) -> KeyRecord:
        """The active key of a request, or raise 401."""
        token = bearer(_header(scope, b"authorization"))
        if token is None:
            raise unauthorized(
                "You didn't provide an API key: send it as Authorization: Bearer sk-llmp-..."
            )
        record = self.keys.verify(token)
        if record is None:
            raise unauthorized()
        return record

    def check_model(self, key: KeyRecord, model: str | None) -> None:
        """Raise a 403 ``model_not_allowed`` naming ``model`` when ``key`` may not use it.

        Every route that takes a model calls it before the Proxy (see
        :func:`llmproxy_gateway.models.check_model`; ``model`` None is the default model).
        """
        if key.models:
            check_model(self, key, model)

    def authenticate_any(self, scope: Scope) -> KeyRecord:
        """The active key of a request sent as ``x-api-key`` (Anthropic's) or bearer; else 401."""
        token = _header(scope, b"x-api-key") or bearer(_header(scope, b"authorization"))
        if token is None:
            raise unauthorized(
                "You didn't provide an API key: send it as x-api-key: sk-llmp-... (or"
                " Authorization: Bearer sk-llmp-...)"
            )
        record = self.keys.verify(token)
        if record is None:
            raise unauthorized()
        return record

    def login_wait(self, address: str) -> float:
        """Count a dashboard login attempt from ``address``: 0.0, or the seconds to wait first.

        See :meth:`KeyStore.login_attempt`; the limits are ``LLMPROXY_GATEWAY_LOGIN_ATTEMPTS``
        per ``LLMPROXY_GATEWAY_LOGIN_WINDOW`` seconds.
        """
        return self.keys.login_attempt(
            address, attempts=self.login_attempts, window=self.login_window, now=self.clock()
        )

    def is_admin(self, token: str | None) -> bool:
        """Whether ``token`` is the admin key or an active admin gateway key."""
        if not token:
            return False
        if admin_matches(token, self.admin_key):
            return True
        record = self.keys.verify(token)
        return record is not None and record.admin

    def ask_cache(self, scope: Scope, key: KeyRecord, kwargs: dict[str, Any]) -> None:
        """Set the call's ``cache`` from the request's ``x-llmproxy-cache`` header or its key.

        The header (``on``, ``off`` or a time to live in seconds) wins over the key's setting
        (``llmproxy keys create --cache``); a header that asks for the cache on a gateway
        without one (``LLMPROXY_CACHE_URL``) or that is malformed is a 400. A key's setting
        is ignored on a gateway without a cache.
        """
        raw = _header(scope, b"x-llmproxy-cache")
        if raw is None:
            if key.cache is not False and self.proxy.config.cache.url:
                kwargs["cache"] = key.cache
            return
        try:
            asked = parse_cache(raw)
        except ConfigError:
            raise HTTPError(
                400,
                f"x-llmproxy-cache must be on, off or a time to live in seconds, got {raw!r}",
                param="x-llmproxy-cache",
            ) from None
        if asked is not False and not self.proxy.config.cache.url:
            raise HTTPError(
                400,
                "x-llmproxy-cache asks for the response cache, but this gateway has none"
                " (its operator sets LLMPROXY_CACHE_URL)",
                param="x-llmproxy-cache",
            )
        kwargs["cache"] = asked

    # -- the hot path ---------------------------------------------------------------------------

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/chat/completions`` (raw ASGI)."""
        if scope["method"] != "POST":
            await _send_error(send, HTTPError(405, "Use POST for /v1/chat/completions."))
            return
        key: KeyRecord | None = None
        try:
            key = self.authenticate(scope)
            body = await _read_body(scope, receive, self.max_body)
            call = parse(body, self.body_limits)
            if key.models:
                check_model(self, key, call.model)
            session = _session(scope)
            kwargs = call.kwargs
            kwargs["model"] = call.model
            kwargs["user"] = key.user
            kwargs["key"] = key.id
            self.ask_cache(scope, key, kwargs)
            if session is not None:
                kwargs["session_id"] = session
            if call.stream:
                await self._stream(receive, send, call.messages, call.include_usage, kwargs)
                return
            response = await self.proxy.achat(call.messages, **kwargs)
        except ClientGone:
            return  # nobody to answer (the connection closed, or its body was too slow)
        except Exception as exc:
            self.refused(exc, key)
            await _send_error(send, _mapped(exc))
            return
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": completion_body(response)})

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/embeddings`` (raw ASGI): the key's budgets, rate limits and usage log."""
        if scope["method"] != "POST":
            await _send_error(send, HTTPError(405, "Use POST for /v1/embeddings."))
            return
        key: KeyRecord | None = None
        try:
            key = self.authenticate(scope)
            body = await _read_body(scope, receive, self.max_body)
            call = parse_embeddings(body, self.body_limits)
            kwargs = call.kwargs
            self.check_model(key, kwargs["model"])
            kwargs["user"] = key.user
            kwargs["key"] = key.id
            result = await self.proxy.aembed(call.texts, **kwargs)
        except ClientGone:
            return
        except Exception as exc:
            self.refused(exc, key)
            await _send_error(send, _mapped(exc))
            return
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send(
            {"type": "http.response.body", "body": embeddings_body(result, call.encoding_format)}
        )

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        messages: Any,
        include_usage: bool,
        kwargs: dict[str, Any],
    ) -> None:
        stream = self.proxy.astream(messages, **kwargs)
        # The first event comes before the status line: budget and rate-limit refusals and
        # upstream failures before any text are still proper HTTP errors.
        first = await anext(stream)
        writer = ChunkWriter(answering_model(stream, first))
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        event: StreamEvent | None = first
        gone, watcher = _watch_disconnect(receive)
        # The role chunk goes out with the first event's chunk: one write, not two.
        role = writer.role()
        try:
            while event is not None:
                if event.done:
                    # Tool calls handed back (the client runs its tools) arrive whole on the
                    # final event; they go out in OpenAI's delta shape before the finish.
                    calls = event.response.message.tool_calls if event.response else ()
                    tail = role + writer.tool_calls(calls) + writer.finish(event.finish_reason)
                    if include_usage and event.usage is not None:
                        tail += writer.usage(event.usage)
                    await send(
                        {
                            "type": "http.response.body",
                            "body": tail + writer.DONE,
                            "more_body": False,
                        }
                    )
                    return
                if event.text:
                    data = writer.content(event.text)
                    if event.reasoning:
                        data = writer.reasoning(event.reasoning) + data
                elif event.reasoning:
                    data = writer.reasoning(event.reasoning)
                else:
                    data = b""
                if role:
                    data, role = role + data, b""
                if gone.is_set():
                    return  # the client left: stop reading upstream (finally stores the rest)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    event = None
            await send(
                {"type": "http.response.body", "body": role + writer.DONE, "more_body": False}
            )
        except Exception as exc:
            # The status line is sent: tell the client in the stream, as OpenAI does.
            error = _mapped(exc) if not isinstance(exc, LLMProxyError) else from_exception(exc)
            try:
                await send(
                    {
                        "type": "http.response.body",
                        "body": role + writer.error(error) + writer.DONE,
                        "more_body": False,
                    }
                )
            except Exception:
                log.debug("could not send the error to a stream's client", exc_info=True)
        finally:
            await _end_stream(stream, watcher)

    # -- Anthropic's Messages API -------------------------------------------------------------

    def provider_of(self, model: str) -> str:
        """The provider name ``model`` (an alias, ``provider/model`` or a bare name) resolves to."""
        config = self.proxy.config
        name = config.aliases.get(model, model)
        provider, sep, _ = name.partition("/")
        return provider if sep else config.default_model.partition("/")[0]

    async def messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/messages`` (raw ASGI): Anthropic's Messages API through the Proxy."""
        if scope["method"] != "POST":
            await _send_anthropic_error(send, HTTPError(405, "Use POST for /v1/messages."))
            return
        key: KeyRecord | None = None
        try:
            key = self.authenticate_any(scope)
            body = await _read_body(scope, receive, self.max_body)
            call = messages_wire.parse(body, self.body_limits)
            self.check_model(key, call.model)
            kwargs = call.kwargs
            kwargs.update(
                messages_wire.thinking_kwargs(
                    self.provider_of(call.model), call.thinking, call.budget, call.effort
                )
            )
            kwargs["model"] = call.model
            kwargs["user"] = key.user
            kwargs["key"] = key.id
            self.ask_cache(scope, key, kwargs)
            session = _session(scope)
            if session is not None:
                kwargs["session_id"] = session
            if call.stream:
                await self._stream_messages(receive, send, call.messages, kwargs)
                return
            response = await self.proxy.achat(call.messages, **kwargs)
        except ClientGone:
            return
        except Exception as exc:
            self.refused(exc, key)
            await _send_anthropic_error(send, _mapped(exc), _upstream_status(exc))
            return
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": messages_wire.message_body(response)})

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, the Proxy's count."""
        if scope["method"] != "POST":
            await _send_anthropic_error(
                send, HTTPError(405, "Use POST for /v1/messages/count_tokens.")
            )
            return
        try:
            key = self.authenticate_any(scope)
            body = await _read_body(scope, receive, self.max_body)
            model, messages, kwargs = messages_wire.parse_count(body, self.body_limits)
            self.check_model(key, model)
            count = self.proxy.count_input(messages, model=model, **kwargs)
        except ClientGone:
            return
        except Exception as exc:
            await _send_anthropic_error(send, _mapped(exc), _upstream_status(exc))
            return
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": b'{"input_tokens":%d}' % count})

    async def _stream_messages(
        self, receive: Receive, send: Send, messages: Any, kwargs: dict[str, Any]
    ) -> None:
        stream = self.proxy.astream(messages, **kwargs)
        # As for chat: refusals and failures before the first event are proper HTTP errors.
        first = await anext(stream)
        writer = messages_wire.EventWriter(answering_model(stream, first))
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        event: StreamEvent | None = first
        gone, watcher = _watch_disconnect(receive)
        head = writer.start()
        try:
            while event is not None:
                if event.done:
                    tail = writer.finish(event.response, event.finish_reason, event.usage)
                    await send(
                        {"type": "http.response.body", "body": head + tail, "more_body": False}
                    )
                    return
                data = head
                head = b""
                if event.reasoning:
                    data += writer.thinking(event.reasoning)
                if event.text:
                    data += writer.text(event.text)
                if gone.is_set():
                    return
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    event = None
            tail = writer.finish(None, None, None)
            await send({"type": "http.response.body", "body": head + tail, "more_body": False})
        except Exception as exc:
            error = _mapped(exc) if not isinstance(exc, LLMProxyError) else from_exception(exc)
            status = messages_wire.anthropic_status(error, _upstream_status(exc))
            try:
                await send(
                    {
                        "type": "http.response.body",
                        "body": head + writer.error(status, error),
                        "more_body": False,
                    }
                )
            except Exception:
                log.debug("could not send the error to a stream's client", exc_info=True)
        finally:
            await _end_stream(stream, watcher)

    async def responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/responses`` (raw ASGI): OpenAI's Responses API, any provider answering.

        The request is parsed into the core's messages and call options
        (:mod:`~llmproxy_gateway.responses_wire`) and sent through the Proxy as a chat is (the
        key's budgets, rate limits, usage log). Each stored response (``store``, the default)
        is a history session of its own, named by the response's id and holding the whole
        exchange so far: a request with ``previous_response_id`` loads it (the key's user's
        only) and continues from it; two requests continuing the same response fork cleanly.
        The gateway writes that session itself (:meth:`_keep`) rather than giving the Proxy a
        ``session_id``: a new response's session is empty, and the Proxy would read it before
        the first token to learn so.
        """
        if scope["method"] != "POST":
            await _send_error(send, HTTPError(405, "Use POST for /v1/responses."))
            return
        caller: KeyRecord | None = None
        try:
            key = caller = self.authenticate(scope)
            body = await _read_body(scope, receive, self.max_body)
            call = parse_responses(body, self.body_limits)
            self.check_model(key, call.model)
            earlier: list[LLMMessage] = []
            if call.previous_response_id is not None:
                earlier = await self._earlier(call.previous_response_id, key)
            messages = [*earlier, *call.messages]
            kwargs = call.kwargs
            kwargs["model"] = call.model
            kwargs["user"] = key.user
            kwargs["key"] = key.id
            self.ask_cache(scope, key, kwargs)
            renderer = ResponseRenderer(new_response_id(), call.model, call.echo)

            async def keep(response: ChatResponse) -> None:
                if call.store:
                    await self._keep(renderer.id, key, earlier, call.messages, response)

            if call.stream:
                await self._stream_responses(receive, send, messages, renderer, kwargs, keep)
                return
            response = await self.proxy.achat(messages, **kwargs)
            await keep(response)
        except ClientGone:
            return
        except Exception as exc:
            self.refused(exc, caller)
            await _send_error(send, _mapped(exc))
            return
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": renderer.body(response)})

    async def _earlier(self, response_id: str, key: KeyRecord) -> list[LLMMessage]:
        """The exchange a stored response ended, for its continuation by ``key``'s user."""
        records = (
            await self.proxy.history.aload(response_id)
            if response_id.startswith("resp_") and _SESSION_ID.match(response_id)
            else []
        )
        if not records or any(r.user != key.user for r in records):
            # Another user's response is as unknown as one never stored.
            raise HTTPError(
                400,
                f"Previous response with id '{response_id[:200]}' not found (responses sent"
                " with store=false are not kept).",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return [r.message for r in records]

    async def _keep(
        self,
        response_id: str,
        key: KeyRecord,
        earlier: list[LLMMessage],
        new: list[LLMMessage],
        response: ChatResponse,
    ) -> None:
        """Store a response's whole exchange as the history session ``response_id``.

        That is the exchange it continued (stored, so already scrubbed), its input and its
        answer, the new messages scrubbed of the process's secrets as the Proxy's own history
        writes are. Written before the answer's last bytes go out, so a client continuing it at
        once finds it. A failing store is logged, not raised: the answer stands, and a later
        ``previous_response_id`` naming it is a 400 saying it is not found.
        """
        now = time.time()
        model, provider, user = response.model, response.provider, key.user
        records = [
            HistoryRecord(response_id, m, model, provider, now, 0, 0, user, uuid.uuid4().hex)
            for m in earlier
        ]
        for index, message in enumerate(new):
            tokens = response.usage.input_tokens if index == 0 else 0
            records.append(
                HistoryRecord(
                    response_id,
                    scrub_message(message),
                    model,
                    provider,
                    now,
                    tokens,
                    0,
                    user,
                    uuid.uuid4().hex,
                )
            )
        records.append(
            HistoryRecord(
                response_id,
                scrub_message(response.message),
                model,
                provider,
                now,
                0,
                response.usage.output_tokens,
                user,
                uuid.uuid4().hex,
            )
        )
        try:
            await self.proxy.history.aappend(records)
        except Exception:
            log.exception("could not store response %s", response_id)

    async def _stream_responses(
        self,
        receive: Receive,
        send: Send,
        messages: Any,
        renderer: ResponseRenderer,
        kwargs: dict[str, Any],
        keep: Callable[[ChatResponse], Awaitable[None]],
    ) -> None:
        stream = self.proxy.astream(messages, **kwargs)
        # As for chat: refusals and failures before the first event are HTTP errors.
        first = await anext(stream)
        renderer.model = answering_model(stream, first)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        gone, watcher = _watch_disconnect(receive)
        head = renderer.start()
        event: StreamEvent | None = first
        try:
            while event is not None:
                if event.done:
                    assert event.response is not None
                    await keep(event.response)  # before the end: a continuation finds it
                    tail = head + renderer.finish(event.response)
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
                    return
                data = head + renderer.text(event.text) if event.text else head
                head = b""
                if gone.is_set():
                    return
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    event = None
            await send({"type": "http.response.body", "body": head, "more_body": False})
        except Exception as exc:
            error = _mapped(exc) if not isinstance(exc, LLMProxyError) else from_exception(exc)
            try:
                await send(
                    {
                        "type": "http.response.body",
                        "body": head + renderer.error(error),
                        "more_body": False,
                    }
                )
            except Exception:
                log.debug("could not send the error to a stream's client", exc_info=True)
        finally:
            await _end_stream(stream, watcher)

    # -- lifecycle ------------------------------------------------------------------------------

    def warm(self) -> None:
        """Set up the default model's provider and tokenizer before the first request.

        Loading a tokenizer's tables takes about a second; done on the first call, it would
        stall every request in flight. A provider's own ``warm(model)`` also makes its HTTP
        clients for the running loop (0.1-0.2 s). Failures (no key yet) are left for the first
        call.
        """
        warm(self.proxy)

    async def aclose(self) -> None:
        """Close the Proxy (when this gateway built it), the key store and flush the log."""
        if self._own_proxy:
            await self.proxy.aclose()
        self.usage.flush()
        self.keys.close()


def _watch_disconnect(receive: Receive) -> tuple[asyncio.Event, asyncio.Future[None]]:
    """Watch a streamed request for its client going away: the event is set when it does.

    The request's body has been read, so the next message ``receive`` gives is the disconnect.
    """
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    return gone, asyncio.ensure_future(watch())


async def _end_stream(stream: AsyncChatStream, watcher: asyncio.Future[None]) -> None:
    """Stop watching and close the Proxy's stream, even while the handler is being cancelled.

    A finished stream is settled and stored here, after its last bytes went out; a client that
    went away (or any failure) ends the stream: what arrived is stored, marked interrupted, and
    counted.
    """
    watcher.cancel()
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except Exception:
            log.exception("settling or storing a stream failed")


def answering_model(stream: AsyncChatStream, first: StreamEvent) -> str:
    """The ``model`` a stream's chunks name: the one a whole reply names, from the same place.

    That is :attr:`~llmproxy.types.ChatResponse.model`: the upstream's own name for the model
    that answered (OpenAI reports the resolved snapshot, ``gpt-4o-2024-08-06`` for ``gpt-4o``),
    else the model the Proxy resolved the request to (an alias or ``openai/...`` resolved, no
    provider prefix), after fallbacks. ``first`` is the stream's first event, which the
    upstream's first chunks (carrying its name) came before.
    """
    if first.response is not None:
        return first.response.model
    return stream.model


def warm(proxy: Proxy) -> None:
    """Set up ``proxy``'s default provider, its tokenizer and its price table.

    See :meth:`Gateway.warm`.

    A provider with a ``warm(model)`` method (optional; ``llmproxy-openai``'s has one) is asked
    to do the rest of its first call's set-up too: with the event loop running, as in the
    gateway's start-up, that includes the loop's HTTP clients.
    """
    name = proxy.config.default_model
    provider_name, _, model = name.partition("/")
    try:
        # The default price table (genai-prices) is imported on the first lookup: now, not in
        # the first call, which would stall the event loop for it (about 0.2 s).
        proxy.prices.get(provider_name, model)
        provider = proxy.provider(provider_name)
        provider_warm = getattr(provider, "warm", None)
        if callable(provider_warm):
            provider_warm(model)
        else:
            provider.count_tokens((LLMMessage("user", "warm up"),), model)
    except Exception as exc:
        log.info("could not warm up %s: %s", name, exc)


def check_config(environ: Mapping[str, str]) -> None:
    """Raise the error each worker would meet building its app from ``environ``, opening nothing.

    That is the body limits, the key store's URL and the Proxy's configuration (config file,
    plugins, the ledger's and history store's URLs; stores open on first use). ``llmproxy
    serve`` calls it before it says the gateway is up: a worker failing on it would do so after
    that line, once per worker.
    """
    env.max_body(environ)
    BodyLimits.from_env(environ)
    env.login_throttle(environ)
    KeyStore.location(env.keys_url(environ), environ)
    Proxy.from_env(env.proxy_environ(environ)).close()


def preload(environ: Mapping[str, str]) -> None:
    """Load, in a process about to fork the gateway's workers, what each would load itself.

    That is the default model's tokenizer tables (about 130 MiB for OpenAI's ``o200k_base``),
    which stay in the tokenizer's module-level cache: forked workers share those pages copy-on-
    write instead of holding a copy each, and a replacement worker starts without loading them.
    A provider's ``warm(model)`` also imports what its first call would (no event loop runs
    here, so it makes no clients). So is prometheus-client (:func:`.metrics.preload`, some 50
    ms per worker otherwise). Nothing else is opened: stores open on first use, and this
    Proxy never uses them.
    """
    from llmproxy_gateway import metrics

    metrics.preload()
    proxy = Proxy.from_env(environ)
    try:
        warm(proxy)
    finally:
        proxy.close()


def _session(scope: Scope) -> str | None:
    """The ``X-Session-Id`` header, checked; None without one."""
    session = _header(scope, b"x-session-id")
    if session is not None and not _SESSION_ID.match(session):
        raise HTTPError(
            400,
            "X-Session-Id must be 1 to 200 visible ASCII characters",
            param="X-Session-Id",
            code="invalid_request",
        )
    return session


def _upstream_status(exc: BaseException) -> int | None:
    """The upstream's HTTP status of a provider failure (503/529: overloaded), else None."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and not isinstance(exc, HTTPError) else None


def _mapped(exc: BaseException) -> HTTPError:
    error = from_exception(exc)
    if error.status >= 500:
        log.error("request failed: %s", exc, exc_info=exc if error.status == 500 else None)
    return error


class ClientGone(Exception):
    """The client closed the connection (or was cut off) before its request body arrived."""


def _too_large(limit: int) -> HTTPError:
    # Connection: close, so that the rest of a body nobody will read is not waited for.
    return HTTPError(
        413,
        f"The request body is larger than this gateway accepts ({limit} bytes; the operator"
        f" sets the limit with {env.MAX_BODY}).",
        code="request_too_large",
        headers={"connection": "close"},
    )


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, or a 413 once it is known to exceed ``limit`` bytes.

    A Content-Length over the limit is refused before anything is read; a body sent without one
    (chunked) is refused as soon as what arrived passes the limit. A client gone before the
    whole body arrived (it closed, or missed the body deadline) raises :class:`ClientGone`.
    """
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
        more = bool(message.get("more_body"))
    return b"".join(parts)  # one part: the same bytes object, not a copy


async def _send_anthropic_error(
    send: Send, error: HTTPError, upstream_status: int | None = None
) -> None:
    """``error`` in Anthropic's shape, with its headers (Retry-After on a 429)."""
    status = messages_wire.anthropic_status(error, upstream_status)
    body = messages_wire.error_body(status, error)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    headers.extend((k.encode(), v.encode()) for k, v in error.headers.items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: HTTPError) -> None:
    body = error.body()
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    headers.extend((k.encode(), v.encode()) for k, v in error.headers.items())
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _ChatEndpoint:
    """Routes ``/v1/chat/completions`` to the raw handler; Starlette handles the rest."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.chat_completions(scope, receive, send)


def create_app(
    gateway: Gateway | None = None,
    *,
    freeze_gc: bool = False,
    on_ready: Callable[[], object] | None = None,
    **kwargs: Any,
) -> Callable[..., Awaitable[None]]:
    """Build the ASGI app of a gateway (``Gateway(**kwargs)`` when none is given).

    ``on_ready`` is called once the app has started (its lifespan's start-up ran): the worker
    supervisor of ``llmproxy serve --workers`` learns from it that the worker is serving.

    ``freeze_gc`` (what ``llmproxy serve`` sets, as the owner of its process) moves every object
    alive once the app has started into the garbage collector's permanent generation
    (:func:`gc.freeze`): the modules, SDK classes and tables loaded at start-up are never
    scanned again, so a full collection no longer pauses every stream in flight for
    100-200 ms.
    """
    from llmproxy_gateway import dashboard, metrics, models

    gw = gateway if gateway is not None else Gateway(**kwargs)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        gw.warm()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await gw.aclose()

    routes = [
        Route("/metrics", metrics.endpoint(gw), methods=["GET"]),
        Route("/v1/models", models.endpoint(gw), methods=["GET"]),
        Route("/v1/models/{model:path}", models.retrieve_endpoint(gw), methods=["GET"]),
        *dashboard.routes(gw),
    ]
    starlette = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: models.not_found, 405: models.not_allowed},
    )
    chat = _ChatEndpoint(gw)
    paths = ("/v1/chat/completions", "/chat/completions")
    messages_paths = ("/v1/messages", "/messages")
    count_paths = ("/v1/messages/count_tokens", "/messages/count_tokens")
    embedding_paths = ("/v1/embeddings", "/embeddings")
    responses_paths = ("/v1/responses", "/responses")

    metrics_port = gw.metrics_port
    # The separate metrics port (LLMPROXY_GATEWAY_METRICS_PORT) serves /metrics and nothing else.
    metrics_only = Starlette(
        routes=[Route("/metrics", metrics.endpoint(gw, open_=gw.metrics_open), methods=["GET"])]
    )

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if metrics_port is not None and scope["type"] == "http":
            server = scope.get("server")
            if server is not None and server[1] == metrics_port:
                await metrics_only(scope, receive, send)
                return
        if scope["type"] == "http":
            path = scope["path"]
            if path in paths:
                await chat(scope, receive, send)
                return
            if path in messages_paths:
                await gw.messages(scope, receive, send)
                return
            if path in count_paths:
                await gw.count_tokens(scope, receive, send)
                return
            if path in embedding_paths:
                await gw.embeddings(scope, receive, send)
                return
            if path in responses_paths:
                await gw.responses(scope, receive, send)
                return
        await starlette(scope, receive, send)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        carrier = _trace_context(scope) if scope["type"] == "http" else None
        if carrier is None:
            await route(scope, receive, send)
            return
        with inbound(carrier):  # the calls it serves continue the client's trace
            await route(scope, receive, send)

    app.gateway = gw  # type: ignore[attr-defined]
    return app
