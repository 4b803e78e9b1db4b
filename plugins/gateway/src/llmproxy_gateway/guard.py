"""The gateway's HTTP connections under abuse: deadlines, head size and connection caps.

uvicorn's HTTP protocols have no deadline for a request's head or body: a connection that
opens and sends nothing, or half a header line, is held until the client leaves, so a
thousand of them hold a thousand file descriptors for good. :func:`guarded_protocol` makes a
subclass of uvicorn's httptools protocol that adds, per connection:

- a head deadline: the whole request head must arrive within ``header_timeout`` seconds of the
  connection's opening (or of its next request's first byte on a kept-alive connection);
  otherwise it is answered 408 and closed (closed silently when nothing at all was sent);
- a body deadline: the whole body within ``body_timeout`` seconds of the head; otherwise 408
  (if the app has not answered yet) and closed, the app seeing the client disconnect;
- a head size limit (``max_header_bytes``; 431 and closed);
- connection caps: beyond ``max_connections`` open connections in the worker, a new one is
  answered 503 once its head arrives; beyond ``max_client_connections`` from one client
  address, 429. Either way it is closed after the answer, and its head deadline still applies.

Idle keep-alive connections are uvicorn's own ``timeout_keep_alive``. Every answer is in
OpenAI's error shape. The limits are the gateway's settings (:mod:`llmproxy_gateway.env`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

from attrs import frozen
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from llmproxy_gateway import env

log = logging.getLogger("llmproxy.gateway")

_HEAD, _BODY, _IDLE = "head", "body", "idle"


@frozen
class ServerLimits:
    """The connection limits of one gateway worker (see :mod:`llmproxy_gateway.env`)."""

    header_timeout: float = env.DEFAULT_HEADER_TIMEOUT
    body_timeout: float = env.DEFAULT_BODY_TIMEOUT
    keepalive_timeout: float = env.DEFAULT_KEEPALIVE_TIMEOUT
    max_header_bytes: int = env.DEFAULT_MAX_HEADER_BYTES
    max_connections: int = env.DEFAULT_MAX_CONNECTIONS
    max_client_connections: int = env.DEFAULT_MAX_CLIENT_CONNECTIONS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServerLimits:
        """The limits the environment sets; a bad value is a ConfigError naming its variable."""
        return cls(
            header_timeout=env.seconds(environ, env.HEADER_TIMEOUT, env.DEFAULT_HEADER_TIMEOUT),
            body_timeout=env.seconds(environ, env.BODY_TIMEOUT, env.DEFAULT_BODY_TIMEOUT),
            keepalive_timeout=env.seconds(
                environ, env.KEEPALIVE_TIMEOUT, env.DEFAULT_KEEPALIVE_TIMEOUT
            ),
            max_header_bytes=env.count(environ, env.MAX_HEADER_BYTES, env.DEFAULT_MAX_HEADER_BYTES),
            max_connections=env.count(environ, env.MAX_CONNECTIONS, env.DEFAULT_MAX_CONNECTIONS),
            max_client_connections=env.count(
                environ, env.MAX_CLIENT_CONNECTIONS, env.DEFAULT_MAX_CLIENT_CONNECTIONS
            ),
        )


def error_body(status: int, message: str, code: str) -> bytes:
    """OpenAI's ``{"error": {...}}`` JSON for an answer the protocol layer gives itself."""
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()


def error_response(status: int, message: str, code: str) -> bytes:
    """A whole ``Connection: close`` HTTP/1.1 response in OpenAI's error shape."""
    body = error_body(status, message, code)
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


REFUSED_HEAD_TIMEOUT = 1.0
"""Seconds a connection over a cap may take to send its request before it is closed."""


def _refusal_app(status: int, message: str, code: str) -> Any:
    """An ASGI app answering every request with this error and closing the connection."""
    payload = error_body(status, message, code)

    async def app(_scope: Any, _receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def guarded_protocol(limits: ServerLimits) -> type[HttpToolsProtocol]:
    """A uvicorn HTTP protocol class enforcing ``limits`` (pass it as ``uvicorn.Config(http=)``).

    Each call makes a new class with its own per-address connection counts, so two servers in
    one process (tests) count separately.
    """

    class GuardedProtocol(_GuardedProtocol):
        _limits: ClassVar[ServerLimits] = limits
        _per_client: ClassVar[Counter[str]] = Counter()
        _refused: ClassVar[Counter[str]] = Counter()

    return GuardedProtocol


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head/body deadlines, a head size limit and caps."""

    _limits: ClassVar[ServerLimits]
    _per_client: ClassVar[Counter[str]]
    _refused: ClassVar[Counter[str]]
    """Connections being refused (over a cap): ``count`` under the key ``""``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._address: str | None = None
        self._refusing = False

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        limits = self._limits
        if self.client is not None:
            self._address = self.client[0]
            self._per_client[self._address] += 1
        # Connections being refused do not count against the worker's cap: one address over
        # its own cap cannot fill the worker with connections it is only being told to close.
        admitted = len(self.connections) - self._refused[""]
        if admitted > limits.max_connections:
            self._refuse(
                503,
                f"This gateway worker has {limits.max_connections} connections open, its limit"
                f" ({env.MAX_CONNECTIONS}); retry shortly.",
            )
        elif self._address is not None and (
            self._per_client[self._address] > limits.max_client_connections
        ):
            self._refuse(
                429,
                f"Your address has {limits.max_client_connections} connections open to this"
                f" gateway worker, its limit ({env.MAX_CLIENT_CONNECTIONS}): reuse connections"
                " or close some.",
            )
        self._start_head()

    def _refuse(self, status: int, message: str) -> None:
        """Answer this connection's request with ``status`` and close it.

        It waits for the request (a response before it would be lost to a reset), but at most
        :data:`REFUSED_HEAD_TIMEOUT` seconds, not the full head deadline.
        """
        self.app = _refusal_app(status, message, "too_many_connections")
        self._refusing = True
        self._refused[""] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._refusing:
            self._refusing = False
            self._refused[""] -= 1
        if self._address is not None:
            self._per_client[self._address] -= 1
            if self._per_client[self._address] <= 0:
                del self._per_client[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == _HEAD:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._phase == _HEAD
            and self._head_bytes > self._limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._answer_and_close(
                431,
                f"The request head is larger than this gateway accepts"
                f" ({self._limits.max_header_bytes} bytes, {env.MAX_HEADER_BYTES}).",
                "request_header_fields_too_large",
            )

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != _HEAD:  # a kept-alive connection's next request: a new deadline
            self._start_head()

    def on_headers_complete(self) -> None:
        self._cancel_deadline()
        self._phase = _BODY
        self._deadline = self.loop.call_later(self._limits.body_timeout, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        self._phase = _IDLE
        self._head_bytes = 0
        super().on_message_complete()

    # -- deadlines ----------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._cancel_deadline()
        self._phase = _HEAD
        timeout = self._limits.header_timeout
        if self._refusing:
            timeout = min(timeout, REFUSED_HEAD_TIMEOUT)
        self._deadline = self.loop.call_later(timeout, self._head_late)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing sent (a fresh connection left idle): just close
            return
        self._answer_and_close(
            408,
            f"The request head did not arrive within {self._limits.header_timeout:g} s"
            f" ({env.HEADER_TIMEOUT}).",
            "request_timeout",
        )

    def _body_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(
                error_response(
                    408,
                    f"The request body did not arrive within {self._limits.body_timeout:g} s"
                    f" of its headers ({env.BODY_TIMEOUT}).",
                    "request_timeout",
                )
            )
            cycle.response_started = True
        if cycle is not None:
            # The app (waiting for the rest of the body) sees the client gone; what it sends
            # from now on is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _answer_and_close(self, status: int, message: str, code: str) -> None:
        self._cancel_deadline()
        self.transport.write(error_response(status, message, code))
        self.transport.close()


def raise_open_file_limit(limits: ServerLimits, reserve: int = 256) -> None:
    """Raise this process's soft open-file limit to fit ``max_connections`` plus ``reserve``.

    The soft limit is often 1024: a worker allowed 1000 connections would run out of file
    descriptors (for its stores, its upstream connections) first. The hard limit is never
    passed; where it is lower, the worker logs a warning and the cap stays as configured.
    """
    wanted = limits.max_connections + reserve
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            if target < wanted:
                log.warning(
                    "open-file limit %d is below %s (%d) + %d: lower %s or raise the limit",
                    target,
                    env.MAX_CONNECTIONS,
                    limits.max_connections,
                    reserve,
                    env.MAX_CONNECTIONS,
                )
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit: %s", exc)


def server_config(app: Any, options: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """The ``uvicorn.Config`` a gateway worker serves ``app`` with: ``options`` plus the limits.

    The limits come from ``environ`` (:class:`ServerLimits`); the HTTP protocol is
    :func:`guarded_protocol`'s, keep-alive connections idle out after ``keepalive_timeout``.
    """
    import uvicorn

    limits = ServerLimits.from_env(environ)
    raise_open_file_limit(limits)
    return uvicorn.Config(
        app,
        **{
            **options,
            "http": guarded_protocol(limits),
            "timeout_keep_alive": limits.keepalive_timeout,
        },
    )
