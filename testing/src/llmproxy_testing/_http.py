"""A small, fast HTTP/1.1 server for fake upstreams in tests and benchmarks.

The server runs an asyncio event loop in a background thread and listens on
``127.0.0.1`` only, on a free port chosen by the operating system. It speaks
just enough HTTP/1.1 for API clients: keep-alive connections, request bodies
framed by ``Content-Length`` (chunked request bodies are refused with 411),
full responses with ``Content-Length`` and streamed responses with
``Transfer-Encoding: chunked``. A handler may also drop the connection in the
middle of a response to simulate a broken upstream.

Subclasses register one coroutine per ``(method, path)`` with
:meth:`FakeServer.add_route`. Every request is recorded (thread-safely) in
:attr:`FakeServer.requests`, and a FIFO queue of scripted :class:`Fault` and
:class:`Reply` items lets tests decide how the next requests are answered.

Only the standard library is used.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, cast
from urllib.parse import parse_qsl

__all__ = [
    "FakeServer",
    "Fault",
    "FaultKind",
    "Handler",
    "RecordedRequest",
    "Reply",
    "ResponseWriter",
    "Scripted",
    "stream_cut",
    "wait_released",
]

_log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_SHUTDOWN_TIMEOUT = 5.0
_LINGER = 2.0
#: How often a hanging handler looks at its release event (cancelled at once if the client goes).
_HANG_POLL = 0.01

# Headers whose values the writer computes itself; handler-supplied copies are dropped.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

_REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request as received by a :class:`FakeServer`.

    Attributes:
        method: Request method, upper case as sent (e.g. ``"POST"``).
        path: Request path without the query string, not percent-decoded.
        query: Query parameters; for a repeated name the last value wins.
        headers: Header names lower-cased; repeated headers joined with ``", "``.
        body: Raw request body (empty when there was none).

    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON.

        Returns:
            The decoded JSON value.

        Raises:
            ValueError: If the body is not valid JSON.

        """
        return json.loads(self.body)


# --------------------------------------------------------------------------- scripting

FaultKind: TypeAlias = Literal["status", "delay", "drop_after", "malformed", "hang"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted misbehaviour for the next request to a scripted endpoint.

    Build instances with the class methods (:meth:`status`, :meth:`delay`,
    :meth:`drop_after`, :meth:`malformed`, :meth:`hang`); each fake server decides how a
    fault looks on its own wire format (for example its error-body shape).

    Attributes:
        kind: What to do: answer with an error ``"status"``; ``"delay"`` then
            answer normally; ``"drop_after"`` a number of stream chunks (or
            before any response when not streaming); send a ``"malformed"``
            body; ``"hang"`` until ``release`` is set, then drop the connection.
        status_code: HTTP status for ``"status"`` faults.
        message: Error message for ``"status"`` faults (``None``: a default
            message for the status).
        retry_after: Seconds for the ``retry-after`` headers, if any.
        chunks: For ``"drop_after"`` and ``"hang"``: how many delta chunks to stream
            first (``"hang"``: -1 hangs before any response).
        seconds: Sleep before answering (the whole point of ``"delay"``; an
            extra pre-delay for the other kinds).
        error_type: Overrides the provider's error ``type`` field.
        error_code: Overrides the provider's error ``code`` field.
        headers: Extra response headers as ``(name, value)`` pairs.
        release: For ``"hang"``: the event that ends the hang.

    """

    kind: FaultKind
    status_code: int = 200
    message: str | None = None
    retry_after: float | None = None
    chunks: int = 0
    seconds: float = 0.0
    error_type: str | None = None
    error_code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    release: threading.Event | None = field(default=None, compare=False)

    @classmethod
    def status(
        cls,
        status_code: int,
        *,
        message: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer with an HTTP error status and the provider's error body.

        Args:
            status_code: HTTP status to send (e.g. 429, 500, 400).
            message: Error message; ``None`` picks a default for the status.
            retry_after: If given, send ``retry-after`` (seconds, may be
                fractional) and ``retry-after-ms`` headers.
            error_type: Overrides the error ``type`` field.
            error_code: Overrides the error ``code`` field.
            headers: Extra response headers.
            delay: Seconds to wait before answering.

        Returns:
            The fault.

        """
        if not 100 <= status_code <= 999:
            raise ValueError(f"invalid HTTP status {status_code!r}")
        return cls(
            kind="status",
            status_code=status_code,
            message=message,
            retry_after=retry_after,
            seconds=delay,
            error_type=error_type,
            error_code=error_code,
            headers=tuple((headers or {}).items()),
        )

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep, then answer normally (other connections are not blocked).

        Args:
            seconds: How long to wait before answering.

        Returns:
            The fault.

        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def drop_after(cls, chunks: int, *, delay: float = 0.0) -> Fault:
        """Abort the connection abruptly.

        A streaming request gets its headers, the initial role chunk and then
        ``chunks`` delta chunks before the connection is aborted (no final
        chunk, no terminating zero-size chunk). A non-streaming request is
        aborted without any response.

        Args:
            chunks: Number of delta chunks to stream before dropping.
            delay: Seconds to wait before answering.

        Returns:
            The fault.

        """
        if chunks < 0:
            raise ValueError("chunks must be >= 0")
        return cls(kind="drop_after", chunks=chunks, seconds=delay)

    @classmethod
    def malformed(cls, *, delay: float = 0.0) -> Fault:
        """Answer 200 with an invalid JSON body (or an invalid JSON stream event).

        Args:
            delay: Seconds to wait before answering.

        Returns:
            The fault.

        """
        return cls(kind="malformed", seconds=delay)

    @classmethod
    def hang(cls, release: threading.Event, *, after: int | None = None) -> Fault:
        """Hang without a word until ``release`` is set, then drop the connection.

        The upstream that never answers: a test of timeouts sets ``release`` when it is done
        (a fixture's teardown), so nothing waits on a long sleep. The hang also ends when the
        client closes the connection (:attr:`FakeServer.connection_count` then drops).

        Args:
            release: The event that ends the hang.
            after: None hangs before any response. A number: a streaming request gets its
                headers, the initial chunk and ``after`` delta chunks first (a stream that
                stalls); a non-streaming request still hangs before any response.

        Returns:
            The fault.

        """
        if after is not None and after < 0:
            raise ValueError("after must be >= 0")
        return cls(kind="hang", chunks=-1 if after is None else after, release=release)


async def wait_released(item: Scripted | None, response: ResponseWriter) -> None:
    """Wait until a ``hang`` fault is released or the client closes its side; else return."""
    if isinstance(item, Fault) and item.kind == "hang" and item.release is not None:
        # A threading.Event set by the test's thread: polled, so the handler stays cancellable
        # and sees a client that goes away, without a worker thread left blocked on it.
        while not item.release.is_set() and not response.client_gone:  # noqa: ASYNC110
            await asyncio.sleep(_HANG_POLL)


def stream_cut(item: Scripted | None) -> int | None:
    """After how many delta chunks a streamed answer breaks off (``drop_after``, ``hang``)."""
    if isinstance(item, Fault) and item.kind in ("drop_after", "hang"):
        return max(item.chunks, 0)
    return None


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted successful answer for the next request to a scripted endpoint.

    Attributes:
        text: Reply text; ``None`` uses the server's default reply (unless
            ``tool_calls`` are given, in which case the content is empty/null).
        reasoning: Optional reasoning text (``reasoning_content`` on the wire).
        finish_reason: Overrides the computed finish reason.
        usage: Overrides merged into the computed usage; nested mappings are
            merged one level deep. ``total_tokens`` is recomputed from prompt
            and completion tokens unless given explicitly.
        tool_calls: Tool calls, either in the provider's wire shape or the
            short form ``{"name": ..., "arguments": str_or_json_value}``
            (optionally with ``"id"``). Several make parallel calls.
        delay: Seconds to wait before answering.
        chunk_delay: Seconds between streamed chunks, on a fixed schedule from the
            start of the stream (see :class:`Pacer`).
        hosted_outputs: Output items of hosted tools the answer reports before
            its text, in the Responses API's shape (``{"type":
            "file_search_call", "queries": [...], "results": [...]}``,
            ``{"type": "code_interpreter_call", "code": ..., "outputs": [...]}``);
            the server fills in ``id``, ``status`` and other required fields.
            Only the Responses API endpoint sends them.
        citations: Annotations of the answer's text in the Responses API's
            shape (``{"type": "file_citation", "file_id": ..., "filename":
            ...}``, ``{"type": "url_citation", "url": ..., "title": ...}``);
            missing offsets are filled in (the end of the text). Only the
            Responses API endpoint sends them.
        model: The model name the answer reports, in the whole body and in
            every streamed chunk (OpenAI answers with the resolved snapshot:
            ``gpt-4o-2024-08-06`` for a request naming ``gpt-4o``); ``None``
            echoes the request's. Only the Chat Completions endpoint uses it.

    """

    text: str | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    tool_calls: Sequence[Mapping[str, Any]] = field(default=())
    delay: float = 0.0
    chunk_delay: float = 0.0
    hosted_outputs: Sequence[Mapping[str, Any]] = field(default=())
    citations: Sequence[Mapping[str, Any]] = field(default=())
    model: str | None = None

    def __post_init__(self) -> None:
        """Freeze the sequences into tuples."""
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        object.__setattr__(self, "hosted_outputs", tuple(self.hosted_outputs))
        object.__setattr__(self, "citations", tuple(self.citations))


Scripted: TypeAlias = Fault | Reply


# --------------------------------------------------------------------------- responses


class Pacer:
    """Paces a stream's chunks on a fixed schedule: chunk ``i`` is due ``i * interval`` after start.

    Like a model producing tokens at a steady rate: a chunk that leaves late (a busy machine, a
    slow reader) does not push every later one back, as sleeping ``interval`` after each write
    would; a late stream catches up. ``interval <= 0`` never waits.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._due: float | None = None

    async def wait(self) -> None:
        """Wait until the next chunk is due."""
        if self.interval <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._due = (now if self._due is None else self._due) + self.interval
        if self._due > now:
            await asyncio.sleep(self._due - now)


class ResponseWriter:
    """Writes the response to one request; handed to every handler.

    A handler calls exactly one of :meth:`send` / :meth:`send_json` (a full
    response), or :meth:`start_stream` followed by :meth:`write` calls and
    :meth:`end` (a chunked response), or :meth:`abort` at any point. After the
    connection is gone all writes are silently ignored (see :attr:`closed`).
    """

    __slots__ = ("_conn", "_finished", "_keep_alive", "_started", "_streaming")

    def __init__(self, conn: _Connection, keep_alive: bool) -> None:
        self._conn = conn
        self._keep_alive = keep_alive
        self._started = False
        self._streaming = False
        self._finished = False

    @property
    def client_gone(self) -> bool:
        """Whether the client closed its side of the connection (or it was lost)."""
        return self._conn._eof or self._conn._lost

    @property
    def started(self) -> bool:
        """Whether the status line and headers have been written."""
        return self._started

    @property
    def finished(self) -> bool:
        """Whether the response is complete (or the connection was aborted)."""
        return self._finished

    @property
    def closed(self) -> bool:
        """Whether the client connection is closed or closing."""
        return self._conn.closing

    def _head(self, status: int, headers: Mapping[str, str] | None, framing: str) -> bytes:
        if self._started:
            raise RuntimeError("response already started")
        self._started = True
        parts = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        if headers:
            for name, value in headers.items():
                if name.lower() not in _FRAMING_HEADERS:
                    parts.append(f"{name}: {value}\r\n")
        parts.append(framing)
        if not self._keep_alive:
            parts.append("connection: close\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Write a complete response with a ``Content-Length`` header.

        Args:
            status: HTTP status code.
            body: Response body.
            headers: Response headers (framing headers are set automatically).

        """
        head = self._head(status, headers, f"content-length: {len(body)}\r\n")
        self._finished = True
        self._conn.write(head + body)

    def send_json(
        self,
        status: int,
        obj: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Write a complete ``application/json`` response.

        Args:
            status: HTTP status code.
            obj: Value to encode as JSON.
            headers: Extra response headers.

        """
        body = json.dumps(obj, separators=(",", ":")).encode()
        all_headers = {"content-type": "application/json"}
        if headers:
            all_headers.update(headers)
        self.send(status, body, all_headers)

    def start_stream(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        """Write the status line and headers of a ``Transfer-Encoding: chunked`` response.

        Args:
            status: HTTP status code.
            headers: Response headers (framing headers are set automatically).

        """
        head = self._head(status, headers, "transfer-encoding: chunked\r\n")
        self._streaming = True
        self._conn.write(head)

    def write(self, data: bytes) -> None:
        """Write one chunk of a streamed response (empty data is ignored).

        Args:
            data: Chunk payload.

        """
        if not self._streaming or self._finished:
            raise RuntimeError("write() needs an open streamed response")
        if data:
            self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self) -> None:
        """Finish a streamed response with the terminating zero-size chunk."""
        if not self._streaming:
            raise RuntimeError("end() needs a streamed response")
        if not self._finished:
            self._finished = True
            self._conn.write(b"0\r\n\r\n")

    async def drain(self) -> None:
        """Wait until everything written so far has been handed to the kernel."""
        await self._conn.drain()

    async def abort(self, *, flush: bool = True) -> None:
        """Drop the connection abruptly (no further bytes, no terminating chunk).

        Args:
            flush: First wait until already-written bytes have been handed to
                the kernel, so the client sees them before the connection dies.

        """
        if flush:
            await self._conn.drain()
        self._finished = True
        self._keep_alive = False
        self._conn.abort()


Handler: TypeAlias = Callable[[RecordedRequest, ResponseWriter], Awaitable[None]]


# --------------------------------------------------------------------------- protocol


def _make_request(
    method: str, target: str, headers: dict[str, str], body: bytes
) -> RecordedRequest:
    path, _, raw_query = target.partition("?")
    query = dict(parse_qsl(raw_query, keep_blank_values=True)) if raw_query else {}
    return RecordedRequest(method, path, query, headers, body)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs them one at a time."""

    def __init__(self, server: FakeServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False
        self._eof = False
        self._lost = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # Parsed head of a request whose body has not fully arrived yet.
        self._pending: tuple[str, str, str, dict[str, str], int, int, bool] | None = None
        # Set after a protocol-level rejection: ignore further input, then close.
        self._discard = False

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's does not subclass asyncio.Transport, so no isinstance.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        # high=0: pause_writing() whenever anything is buffered, so drain()
        # means "everything handed to the kernel". Not under TLS: asyncio's SSL
        # transport does not call resume_writing() again once its own buffer
        # has gone to the socket, so drain() would wait forever; there drain()
        # only waits while more than the default limit is buffered.
        if self._server._tls is None:
            transport.set_write_buffer_limits(high=0)
        self._server._connections.add(self)
        self._server._accepted += 1

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        self._buf += data
        if not self._busy:
            self._process()

    def eof_received(self) -> bool:
        self._eof = True
        # Keep the transport open until the current response is written.
        return self._busy

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._server._connections.discard(self)
        self._wake_drain()
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    # -- output helpers used by ResponseWriter ----------------------------------

    @property
    def closing(self) -> bool:
        transport = self._transport
        return self._lost or transport is None or transport.is_closing()

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not self._lost and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        while self._paused and not self._lost:
            waiter = self._drain_waiter
            if waiter is None or waiter.done():
                waiter = self._drain_waiter = self._loop.create_future()
            await waiter

    def abort(self) -> None:
        transport = self._transport
        if transport is not None and not self._lost:
            transport.abort()

    def close(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- request parsing --------------------------------------------------------

    def _reject(self, status: int, message: str) -> None:
        body = message.encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.write(head.encode("latin-1") + body)
        self._buf.clear()
        self._pending = None
        # Lingering close: stop sending but keep reading (and discarding) for a
        # moment, so a client still uploading does not get a reset that could
        # destroy the error response before it has been read.
        transport = self._transport
        if transport is None or self._lost or not transport.can_write_eof():
            self.close()
            return
        self._discard = True
        transport.write_eof()
        self._loop.call_later(_LINGER, self.close)

    def _process(self) -> None:
        """Parse the next complete request from the buffer and start handling it."""
        if self._lost:
            return
        buf = self._buf
        pending = self._pending
        if pending is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._reject(431, "request header too large")
                return
            if end > _MAX_HEAD:
                self._reject(431, "request header too large")
                return
            head = buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            request_line = lines[0]
            if not request_line and len(lines) == 1:
                # Stray CRLF between requests (tolerated by RFC 9112).
                del buf[:2]
                self._process()
                return
            try:
                method, target, version = request_line.split(" ")
            except ValueError:
                self._reject(400, "malformed request line")
                return
            if version not in ("HTTP/1.1", "HTTP/1.0"):
                self._reject(505, "unsupported HTTP version")
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name[-1] in " \t":
                    self._reject(400, "malformed header line")
                    return
                key = name.lower()
                value = value.strip()
                old = headers.get(key)
                headers[key] = value if old is None else f"{old}, {value}"
            if "transfer-encoding" in headers:
                self._server._record(_make_request(method, target, headers, b""))
                self._reject(411, "chunked request bodies are not supported; send Content-Length")
                return
            raw_length = headers.get("content-length", "0")
            if not raw_length.isdigit():
                self._reject(400, "invalid Content-Length")
                return
            length = int(raw_length)
            if length > _MAX_BODY:
                self._reject(413, "request body too large")
                return
            # HTTP/1.0 clients always get "connection: close" (no keep-alive negotiation).
            keep_alive = (
                version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
            )
            body_start = end + 4
            pending = (method, target, version, headers, body_start, length, keep_alive)
            if len(buf) < body_start + length:
                self._pending = pending
                if headers.get("expect", "").lower() == "100-continue":
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
        method, target, _version, headers, body_start, length, keep_alive = pending
        if len(buf) < body_start + length:
            return
        self._pending = None
        body = bytes(buf[body_start : body_start + length])
        del buf[: body_start + length]
        request = _make_request(method, target, headers, body)
        self._busy = True
        self._task = self._loop.create_task(self._run(request, keep_alive))

    async def _run(self, request: RecordedRequest, keep_alive: bool) -> None:
        response = ResponseWriter(self, keep_alive)
        try:
            await self._server._handle(request, response)
        except Exception as exc:
            _log.exception("fake server handler failed for %s %s", request.method, request.path)
            if not response.started:
                response.send(
                    500,
                    f"handler error: {type(exc).__name__}: {exc}".encode(),
                    {"content-type": "text/plain; charset=utf-8"},
                )
            else:
                self.abort()
                return
        finally:
            self._task = None
            self._busy = False
        if not response.started:
            response.send(500, b"handler sent no response", {"content-type": "text/plain"})
        elif not response.finished:
            response.end()
        if self._lost:
            return
        if not response._keep_alive:
            self.close()
        elif self._buf:
            self._process()
        elif self._eof:
            self.close()


# --------------------------------------------------------------------------- server


class FakeServer:
    """Base class of the fake upstream servers: HTTP/1.1 on a background thread.

    Use as a context manager (``with FakeServer() as server:``) or call
    :meth:`start` / :meth:`stop`. Register handlers with :meth:`add_route`. ``tls`` (a server
    ``ssl.SSLContext``) serves HTTPS instead.

    Attributes:
        host: Always ``"127.0.0.1"``.

    """

    host: str = "127.0.0.1"

    def __init__(self, *, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self._bind_port = port
        self._tls = tls
        self._routes: dict[tuple[str, str], Handler] = {}
        self._data_lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: collections.deque[Scripted] = collections.deque()
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: set[_Connection] = set()
        self._accepted = 0
        # Holding requests at the gate (see hold()): the rule, the event that releases the
        # requests held under it, how many wait, and what to run for those whose client left.
        self._hold_lock = threading.Condition()
        self._hold_match: Callable[[RecordedRequest], bool] | None = None
        self._hold_event: asyncio.Event | None = None
        self._held = 0
        self._abandoned: list[Callable[[], None]] = []

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a background thread (no-op if already running).

        Returns:
            The server itself.

        Raises:
            OSError: If the listening socket cannot be created.

        """
        with self._state_lock:
            if self._thread is not None:
                return self
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            failure: list[BaseException] = []

            def run() -> None:
                asyncio.set_event_loop(loop)
                try:
                    server = loop.run_until_complete(
                        loop.create_server(
                            lambda: _Connection(self, loop),
                            self.host,
                            self._bind_port,
                            backlog=1024,
                            ssl=self._tls,
                        )
                    )
                except BaseException as exc:
                    failure.append(exc)
                    ready.set()
                    loop.close()
                    return
                self._server = server
                self._port = server.sockets[0].getsockname()[1]
                ready.set()
                try:
                    loop.run_forever()
                finally:
                    self._finish_loop(loop)

            thread = threading.Thread(target=run, name=f"{type(self).__name__}-loop", daemon=True)
            thread.start()
            ready.wait()
            if failure:
                thread.join()
                raise failure[0]
            self._loop = loop
            self._thread = thread
            return self

    def stop(self) -> None:
        """Stop serving: close the listener, abort all connections, join the thread.

        Handlers still running are cancelled. Calling ``stop()`` again (or on a
        server that was never started) does nothing. The server may be started
        again afterwards (on a new port).
        """
        with self._state_lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            if thread is threading.current_thread():
                raise RuntimeError("stop() must not be called from the server thread")
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_SHUTDOWN_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                self._loop = None
                self._thread = None
                self._server = None

    async def _shutdown(self) -> None:
        server = self._server
        if server is not None:
            server.close()
        tasks: list[asyncio.Task[None]] = []
        for conn in list(self._connections):
            task = conn._task
            if task is not None and not task.done():
                task.cancel()
                tasks.append(task)
            conn.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        # Let the transports' connection_lost callbacks run.
        await asyncio.sleep(0)

    @staticmethod
    def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server thread is running."""
        return self._thread is not None

    @property
    def port(self) -> int:
        """The TCP port the server listens on.

        Raises:
            RuntimeError: If the server has not been started.

        """
        if self._thread is None or self._port is None:
            raise RuntimeError("server is not running; call start() or use it as a context manager")
        return self._port

    @property
    def url(self) -> str:
        """Root URL of the server, e.g. ``"http://127.0.0.1:PORT"`` (``https`` with ``tls``)."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def connection_count(self) -> int:
        """Number of currently open client connections."""
        return len(self._connections)

    @property
    def accepted_count(self) -> int:
        """Number of client connections accepted since the server started."""
        return self._accepted

    # -- routing -------------------------------------------------------------------

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Register the handler coroutine for a method and an exact path.

        Args:
            method: HTTP method, e.g. ``"POST"``.
            path: Exact path without query string, e.g. ``"/v1/models"``.
            handler: ``async def handler(request, response)``.

        """
        self._routes[(method.upper(), path)] = handler

    async def dispatch(self, request: RecordedRequest, response: ResponseWriter) -> None:
        """Route a request to its handler; answer 404/405 when there is none.

        Subclasses may override this to add checks (such as authentication)
        before calling ``super().dispatch``.

        Args:
            request: The recorded request.
            response: Writer for the response.

        """
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            await handler(request, response)
        elif any(path == request.path for _, path in self._routes):
            self.send_error(
                response, 405, f"Method {request.method} not allowed for {request.path}"
            )
        else:
            self.send_error(response, 404, f"Invalid URL ({request.method} {request.path})")

    def send_error(self, response: ResponseWriter, status: int, message: str) -> None:
        """Send an error response; subclasses override it for their wire shape.

        Args:
            response: Writer for the response.
            status: HTTP status code.
            message: Human-readable error message.

        """
        response.send_json(status, {"error": {"message": message}})

    async def _handle(self, request: RecordedRequest, response: ResponseWriter) -> None:
        self._record(request)
        await self.dispatch(request, response)

    # -- recording and scripting ----------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._data_lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (copy) of all requests received so far, oldest first."""
        with self._data_lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request.

        Raises:
            LookupError: If no request has been received.

        """
        with self._data_lock:
            if not self._requests:
                raise LookupError("no request received yet")
            return self._requests[-1]

    def enqueue(self, *items: Scripted) -> None:
        """Append scripted faults/replies, consumed FIFO, one per scripted request.

        Args:
            items: :class:`Fault` or :class:`Reply` instances.

        """
        for item in items:
            if not isinstance(item, Fault | Reply):
                raise TypeError(f"expected Fault or Reply, got {type(item).__name__}")
        with self._data_lock:
            self._script.extend(items)

    @property
    def pending(self) -> int:
        """Number of scripted items not consumed yet."""
        with self._data_lock:
            return len(self._script)

    def next_scripted(self) -> Scripted | None:
        """Pop the next scripted item (for handlers).

        Returns:
            The oldest queued item, or ``None`` when the queue is empty.

        """
        with self._data_lock:
            return self._script.popleft() if self._script else None

    async def take_scripted(
        self,
        response: ResponseWriter,
        *,
        streaming: bool,
        malformed: bytes,
        send_fault: Callable[[ResponseWriter, Fault], None],
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Scripted | None, bool]:
        """Take the next scripted item for a handler and play what needs no answer body.

        Waits the item's delay, then answers a ``status`` fault with ``send_fault``, aborts a
        non-streamed ``drop_after`` and sends ``malformed`` (with ``headers``) for a
        non-streamed ``malformed`` fault. Returns the item and whether the request is answered
        (streamed faults are left to the handler).
        """
        item = self.next_scripted()
        delay = item.seconds if isinstance(item, Fault) else item.delay if item else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        if isinstance(item, Fault):
            if item.kind == "hang" and (not streaming or item.chunks < 0):
                await wait_released(item, response)
                await response.abort()
                return item, True
            if item.kind == "status":
                send_fault(response, item)
                return item, True
            if item.kind == "drop_after" and not streaming:
                await response.abort()
                return item, True
            if item.kind == "malformed" and not streaming:
                response.send(
                    200, malformed, {"content-type": "application/json", **(headers or {})}
                )
                return item, True
        return item, False

    # -- holding requests ------------------------------------------------------

    def hold(self, match: Callable[[RecordedRequest], bool] | None = None) -> None:
        """Hold the requests that arrive from now on (those ``match`` accepts) until release.

        A held request has been received and, for a fake that bills (see
        :attr:`~llmproxy_testing.fake_openai.FakeOpenAI.billed_tokens`), its answer decided;
        it is answered only after :meth:`release`. If its client goes away meanwhile (a killed
        process), the answer is still "produced" at release, as a real upstream finishes and
        bills a request whose client vanished. Holding again replaces the rule for requests
        that arrive later; those already held stay held until :meth:`release`.

        Args:
            match: Which requests to hold (default: every request that reaches the gate).

        """
        with self._hold_lock:
            self._hold_match = match if match is not None else _hold_everything
            if self._hold_event is None:
                self._hold_event = asyncio.Event()

    def release(self) -> None:
        """Stop holding and let every held request go on (no-op when nothing is held)."""
        with self._hold_lock:
            self._hold_match = None
            event, self._hold_event = self._hold_event, None
            abandoned, self._abandoned = self._abandoned, []
        loop = self._loop
        if event is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)
        for produce in abandoned:
            produce()

    @property
    def held(self) -> int:
        """Number of requests waiting at the gate now (whose client is still connected)."""
        with self._hold_lock:
            return self._held

    def wait_held(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` requests are held at the gate.

        Raises:
            TimeoutError: If fewer than ``count`` are held after ``timeout`` seconds.

        """
        with self._hold_lock:
            if not self._hold_lock.wait_for(lambda: self._held >= count, timeout):
                raise TimeoutError(
                    f"{self._held} request(s) held after {timeout} s, expected {count}"
                )

    async def gate(self, request: RecordedRequest, produced: Callable[[], None]) -> None:
        """Wait at the gate while ``request`` is held (handlers call this); then ``produced()``.

        ``produced`` runs once the request goes on (its answer is produced), also when the
        client went away while the request was held: it then runs at :meth:`release`.
        """
        with self._hold_lock:
            match, event = self._hold_match, self._hold_event
            held = match is not None and event is not None and match(request)
            if held:
                self._held += 1
                self._hold_lock.notify_all()
        if not held or event is None:
            produced()
            return
        try:
            await event.wait()
        except asyncio.CancelledError:
            with self._hold_lock:
                if self._hold_event is event:  # not released yet: produce it at release
                    self._abandoned.append(produced)
                    abandoned = True
                else:
                    abandoned = False
            if not abandoned:
                produced()
            raise
        finally:
            with self._hold_lock:
                self._held -= 1
        produced()

    def clear(self) -> None:
        """Forget all recorded requests and drop all queued scripted items."""
        with self._data_lock:
            self._requests.clear()
            self._script.clear()


def serve_from_command_line(
    make: Callable[[int, str | None], FakeServer], prog: str, argv: Sequence[str] | None
) -> int:
    """Run a fake upstream until SIGTERM or Ctrl-C, printing its base URL first.

    ``make(port, reply)`` builds the server; ``--port`` (default: any free one) and
    ``--reply`` (a fixed reply; default: echo the last user message) come from ``argv``.
    """
    import argparse
    import contextlib
    import signal
    import sys

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)"
    )
    parser.add_argument("--reply", help="a fixed reply (default: echo the last user message)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with make(args.port, args.reply) as server:
        sys.stdout.write(getattr(server, "base_url", server.url) + "\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


def json_object(request: RecordedRequest) -> dict[str, Any] | None:
    """The request body as a JSON object, or None when it is not one."""
    try:
        decoded = json.loads(request.body)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _hold_everything(_request: RecordedRequest) -> bool:
    return True


ReplyFunction: TypeAlias = Callable[[dict[str, Any]], "str | Reply"]
"""A fake's default reply as a function of the request's JSON body."""


def resolve_reply(
    default: str | ReplyFunction | None,
    body: dict[str, Any],
    scripted: Reply | None,
    default_text: Callable[[dict[str, Any]], str],
) -> Reply:
    """The reply to a request, shared by the fakes.

    A scripted reply with text or tool calls is used as it is; else the server's ``default``
    (None: ``default_text(body)``, a string, or a function of the body) gives the text, and a
    scripted reply's other fields (usage, delays...) are kept with it.
    """
    if scripted is not None and (scripted.text is not None or scripted.tool_calls):
        return scripted
    if default is None:
        resolved = Reply(text=default_text(body))
    elif isinstance(default, str):
        resolved = Reply(text=default)
    else:
        produced = default(body)
        resolved = Reply(text=produced) if isinstance(produced, str) else produced
    if scripted is None:
        return resolved
    return dataclasses.replace(scripted, text=resolved.text)
