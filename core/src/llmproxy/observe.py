"""What a tracer follows of a call: its start and end, and each step of I/O in between.

A *call observer* (the ``llmproxy-otel`` plugin's, or your own) is given to a Proxy as one of
its ``observers`` (``Proxy(observers=[MyObserver()])``) or registered by a plugin
(``register_observers``). For every call, :meth:`CallObserver.start_call` is asked first; it
returns a :class:`CallTrace` to follow that call, or None to let it run unobserved. The trace
then hears, in order: :meth:`~CallTrace.began`, every history and ledger round trip, every
upstream attempt (a retry or a fallback is one more attempt; it may return headers to send
upstream, such as a W3C ``traceparent``), the first chunk of a stream, every tool execution,
every wait before a retry, and :meth:`~CallTrace.call_ended` with a :class:`CallEnd`.

It costs nothing when unused: a Proxy with no call observer runs the flow as it is, and an
observer that returns None from ``start_call`` (the OpenTelemetry plugin does while no SDK is
configured) leaves the call unwrapped. A followed call's flow is wrapped by :func:`follow`, a
generator between the flow (:mod:`llmproxy.flow`) and the driver that sees every effect go out
and its result come back; nothing in the flow or the drivers changes.

A trace's methods are called from the thread or task running the call (for a stream, the one
reading it); tools of one round may run concurrently, so :meth:`CallTrace.tool_started` returns
a handle given back to :meth:`CallTrace.tool_ended`. An exception a trace raises is logged and
never fails the call.

A server that takes requests carrying a trace context (the gateway) makes the calls it serves
part of the client's trace with :func:`inbound`: the headers reach
:attr:`CallStart.inbound`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import attrs
from attrs import frozen

from llmproxy.call import Call, EmbedCall
from llmproxy.errors import StreamInterrupted
from llmproxy.flow import (
    END,
    Attempt,
    CacheGet,
    CachePut,
    Closed,
    Deliver,
    Embed,
    EmbedFlow,
    Flow,
    LoadHistory,
    NextChunk,
    OpenStream,
    Reserve,
    RunTools,
    Settle,
    SettleAndStore,
    Sleep,
)
from llmproxy.tools import Tool, ToolResult
from llmproxy.types import (
    ChatRequest,
    ChatResponse,
    Completion,
    EmbeddingResult,
    Embeddings,
    EmbedRequest,
    Message,
    ToolCall,
    Usage,
)

log = logging.getLogger("llmproxy")

RoundTrip = Literal[
    "history.load",
    "history.append",
    "ledger.reserve",
    "ledger.settle",
    "ledger.settle+history",
    "cache.get",
    "cache.put",
]
"""A round trip to a store: loading a session, reserving or settling budget, storing the
exchange, the last settle and the exchange in one write (both stores on one server), or
looking a reply up in the response cache and keeping one there."""

Outcome = Literal["ok", "error", "interrupted"]

TRACE_HEADERS: frozenset[str] = frozenset(("traceparent", "tracestate", "baggage"))
"""The request headers that carry a trace context (W3C Trace Context and Baggage)."""

_EMPTY: Mapping[str, str] = MappingProxyType({})

_INBOUND: ContextVar[Mapping[str, str] | None] = ContextVar("llmproxy_inbound", default=None)


@contextlib.contextmanager
def inbound(headers: Mapping[str, str]) -> Iterator[None]:
    """Calls started inside continue the trace of the request ``headers`` came with.

    ``headers`` are the incoming request's (names lower-cased); only :data:`TRACE_HEADERS`
    are kept, and they reach each call's :attr:`CallStart.inbound`::

        with inbound({"traceparent": "00-...-01"}):
            await proxy.achat("Hello")
    """
    carrier = {k: v for k, v in headers.items() if k in TRACE_HEADERS}
    token = _INBOUND.set(carrier or None)
    try:
        yield
    finally:
        _INBOUND.reset(token)


class CallStart(NamedTuple):
    """What a call is about to do, as :meth:`CallObserver.start_call` is told.

    ``operation`` is ``chat`` or ``embed``; ``provider`` and ``model`` the first model aimed
    at (a fallback's attempts name their own); ``started_at`` the wall-clock start (seconds
    since the epoch). ``max_output_tokens`` and ``temperature`` are what the call asked for
    (None: not given); ``system`` the call's system prompt; ``tools`` the names of the tools
    offered; ``structured`` whether a ``schema`` asks for JSON. For an embed call, ``inputs``
    is the number of texts and ``dimensions`` the vector size asked for. ``inbound`` holds the
    trace headers of the request the call serves (see :func:`inbound`), else nothing.

    An immutable tuple (made for every call while a call observer is installed, so it is
    cheap to build), fields by name.
    """

    operation: Literal["chat", "embed"]
    provider: str
    model: str
    streamed: bool = False
    started_at: float = 0.0
    session_id: str | None = None
    user: str | None = None
    key: str | None = None
    tags: Mapping[str, str] = _EMPTY
    max_output_tokens: int | None = None
    temperature: float | None = None
    system: str | None = None
    tools: tuple[str, ...] = ()
    structured: bool = False
    inputs: int = 0
    dimensions: int | None = None
    inbound: Mapping[str, str] = _EMPTY


@frozen
class CallEnd:
    """How a call ended, as :meth:`CallTrace.call_ended` is told.

    ``outcome`` is ``ok``, ``error`` (``error`` holds the exception) or ``interrupted`` (a
    stream broken or closed after part of the answer arrived; ``error`` the break, or None
    when the caller stopped reading). ``usage`` is every attempt's; ``provider``/``model``
    the ones that answered (after fallbacks; the upstream's own model name when it gave one);
    ``message`` the answer's message (None for an embed call or a failure); ``attempts`` the
    upstream attempts made; ``duration`` the seconds from the start; ``first_chunk`` the
    seconds from the start to a stream's first chunk (None for a whole call, or a stream that
    received none). ``cache_hit`` is True when the response cache answered (no attempt was
    made); ``alias`` the alias the caller named when one of its deployments answered.
    """

    outcome: Outcome
    usage: Usage
    provider: str
    model: str
    duration: float
    attempts: int = 0
    error: BaseException | None = None
    finish_reason: str | None = None
    response_id: str | None = None
    message: Message | None = None
    first_chunk: float | None = None
    cache_hit: bool = False
    alias: str | None = None


class CallTrace:
    """Follows one call; every method does nothing here: override those you need."""

    def began(self) -> None:
        """The call's first step is about to run."""

    def round_trip_started(self, kind: RoundTrip) -> None:
        """A round trip to a store starts (they never overlap within a call)."""

    def round_trip_ended(self, kind: RoundTrip, error: BaseException | None) -> None:
        """The round trip ended (``error`` when it failed)."""

    def attempt_started(
        self, request: ChatRequest | EmbedRequest, number: int, streamed: bool
    ) -> Mapping[str, str] | None:
        """An upstream attempt starts (``number`` counts the call's attempts from 1).

        Return headers to send with this attempt's upstream request (a ``traceparent``), or
        None. ``request.provider``/``request.model`` name the model tried (a fallback's own).
        """
        return None

    def first_chunk(self, seconds: float) -> None:
        """A stream's first chunk arrived, ``seconds`` after the call started."""

    def attempt_ended(
        self, result: Completion | EmbeddingResult | None, error: BaseException | None
    ) -> None:
        """The attempt ended: ``result`` for a whole answer (None for a stream), or ``error``."""

    def waiting(self, seconds: float) -> None:
        """The call waits ``seconds`` (a retry's backoff, or budget held by calls in flight)."""

    def tool_started(self, call: ToolCall, tool: Tool | None) -> object:
        """A tool the model asked for starts; return a handle for :meth:`tool_ended`.

        ``tool`` is None for a name the call does not offer (the model gets an error output).
        """
        return None

    def tool_ended(
        self, handle: object, result: ToolResult | None, error: BaseException | None
    ) -> None:
        """The tool ended: ``result`` (whose ``error`` flag marks a failed tool), or ``error``."""

    def call_ended(self, end: CallEnd) -> None:
        """The call ended; nothing more is heard of it."""


@runtime_checkable
class CallObserver(Protocol):
    """Decides, per call, whether to follow it (see the module docstring)."""

    def start_call(self, call: CallStart) -> CallTrace | None:
        """Return a :class:`CallTrace` for this call, or None to leave it unobserved."""
        ...


class _Guarded(CallTrace):
    """The traces of one call behind one face: each is called in turn, its failures logged."""

    __slots__ = ("traces",)

    def __init__(self, traces: list[CallTrace]) -> None:
        self.traces = traces

    def _each(self, method: str, *args: Any) -> Any:
        out: Any = None
        for trace in self.traces:
            try:
                got = getattr(trace, method)(*args)
            except Exception:
                log.exception("call trace %r failed in %s", trace, method)
                continue
            if got is not None and out is None:
                out = got
        return out

    def began(self) -> None:
        self._each("began")

    def round_trip_started(self, kind: RoundTrip) -> None:
        self._each("round_trip_started", kind)

    def round_trip_ended(self, kind: RoundTrip, error: BaseException | None) -> None:
        self._each("round_trip_ended", kind, error)

    def attempt_started(
        self, request: ChatRequest | EmbedRequest, number: int, streamed: bool
    ) -> Mapping[str, str] | None:
        headers: dict[str, str] = {}
        for trace in self.traces:
            try:
                got = trace.attempt_started(request, number, streamed)
            except Exception:
                log.exception("call trace %r failed in attempt_started", trace)
                continue
            if got:
                headers.update(got)
        return headers or None

    def first_chunk(self, seconds: float) -> None:
        self._each("first_chunk", seconds)

    def attempt_ended(
        self, result: Completion | EmbeddingResult | None, error: BaseException | None
    ) -> None:
        self._each("attempt_ended", result, error)

    def waiting(self, seconds: float) -> None:
        self._each("waiting", seconds)

    def tool_started(self, call: ToolCall, tool: Tool | None) -> object:
        handles: list[object] = []
        for trace in self.traces:
            try:
                handles.append(trace.tool_started(call, tool))
            except Exception:
                log.exception("call trace %r failed in tool_started", trace)
                handles.append(None)
        return handles

    def tool_ended(
        self, handle: object, result: ToolResult | None, error: BaseException | None
    ) -> None:
        assert isinstance(handle, list)
        for trace, one in zip(self.traces, handle, strict=True):
            try:
                trace.tool_ended(one, result, error)
            except Exception:
                log.exception("call trace %r failed in tool_ended", trace)

    def call_ended(self, end: CallEnd) -> None:
        self._each("call_ended", end)


def start(call: Call | EmbedCall, observers: Iterable[CallObserver]) -> CallTrace | None:
    """Ask each observer whether it follows ``call``; the traces behind one face, or None."""
    first = _start_of(call)
    traces: list[CallTrace] = []
    for observer in observers:
        try:
            trace = observer.start_call(first)
        except Exception:
            log.exception("call observer %r failed in start_call", observer)
            continue
        if trace is not None:
            traces.append(trace)
    return _Guarded(traces) if traces else None


def _start_of(call: Call | EmbedCall) -> CallStart:
    inbound = _INBOUND.get() or _EMPTY
    if isinstance(call, Call):
        return CallStart(
            "chat",
            call.provider_name,
            call.model,
            call.streamed,
            call.started_at,
            call.session_id,
            call.user,
            call.key,
            call.tags,
            call.max_output_tokens,
            call.temperature,
            call.system,
            tuple(t.name if isinstance(t, Tool) else t.type for t in call.tools)
            if call.tools
            else (),
            call.output is not None,
            inbound=inbound,
        )
    return CallStart(
        "embed",
        call.provider_name,
        call.model,
        False,
        call.started_at,
        None,
        call.user,
        call.key,
        call.tags,
        inputs=len(call.texts),
        dimensions=call.dimensions,
        inbound=inbound,
    )


class _TracedTools(RunTools):
    """A round's tools, each one followed by the call's trace."""

    __slots__ = ("trace",)

    def __init__(self, effect: RunTools, trace: CallTrace) -> None:
        super().__init__(effect.call, effect.calls)
        self.trace = trace

    def _run_one(self, tool_call: ToolCall) -> ToolResult:
        handle = self.trace.tool_started(tool_call, self.call.function_tools.get(tool_call.name))
        try:
            result = super()._run_one(tool_call)
        except BaseException as exc:
            self.trace.tool_ended(handle, None, exc)
            raise
        self.trace.tool_ended(handle, result, None)
        return result

    async def _arun_one(self, tool_call: ToolCall) -> ToolResult:
        handle = self.trace.tool_started(tool_call, self.call.function_tools.get(tool_call.name))
        try:
            result = await super()._arun_one(tool_call)
        except BaseException as exc:
            self.trace.tool_ended(handle, None, exc)
            raise
        self.trace.tool_ended(handle, result, None)
        return result


def _round_trip(effect: object) -> RoundTrip | None:
    kind = type(effect)
    if kind is LoadHistory:
        return "history.load"
    if kind is Reserve:
        return "ledger.reserve"
    if kind is Settle:
        return "ledger.settle"
    if kind is CacheGet:
        return "cache.get"
    if kind is CachePut:
        return "cache.put"
    if kind is SettleAndStore:
        assert isinstance(effect, SettleAndStore)
        settles = effect.settle is not None and effect.call.reservation is not None
        stores = bool(effect.records)
        if settles and stores:
            return "ledger.settle+history"
        return "ledger.settle" if settles else "history.append" if stores else None
    return None


def follow(flow: Any, call: Call | EmbedCall, trace: CallTrace) -> Any:
    """``flow`` as the driver sees it, with every step told to ``trace`` (see the module)."""
    value: Any = None
    error: BaseException | None = None
    attempt_open = False
    first: float | None = None
    trace.began()
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                if attempt_open:
                    trace.attempt_ended(None, None)
                trace.call_ended(_end(call, stop.value, None, first))
                return stop.value
            except BaseException as exc:
                if attempt_open:
                    trace.attempt_ended(None, exc)
                trace.call_ended(_end(call, None, exc, first))
                raise
            kind = type(effect)
            trip: RoundTrip | None = None
            if kind is Attempt or kind is Embed or kind is OpenStream:
                if attempt_open:  # a stream left without its end (closed after a failure)
                    trace.attempt_ended(None, None)
                request = effect.request
                headers = trace.attempt_started(request, call.total_attempts, kind is OpenStream)
                if headers:
                    effect.request = attrs.evolve(request, headers={**request.headers, **headers})
                attempt_open = True
            elif kind is RunTools:
                effect = _TracedTools(effect, trace)
            elif kind is Sleep:
                trace.waiting(effect.seconds)
            elif kind is not Deliver and kind is not NextChunk:
                trip = _round_trip(effect)
                if trip is not None:
                    trace.round_trip_started(trip)
            try:
                value, error = (yield effect), None
            except GeneratorExit:
                raise
            except BaseException as exc:
                value, error = None, exc
            if kind is NextChunk:
                if error is not None or value is END:
                    trace.attempt_ended(None, error)
                    attempt_open = False
                elif first is None:
                    first = time.perf_counter() - call.started
                    trace.first_chunk(first)
            elif kind is Attempt or kind is Embed:
                trace.attempt_ended(value if error is None else None, error)
                attempt_open = False
            elif kind is OpenStream:
                if error is not None:
                    trace.attempt_ended(None, error)
                    attempt_open = False
            elif trip is not None:
                trace.round_trip_ended(trip, error)
            elif kind is Deliver and attempt_open and type(error) is Closed:
                trace.attempt_ended(None, error)
                attempt_open = False
    except GeneratorExit:
        flow.close()
        if attempt_open:
            trace.attempt_ended(None, None)
        trace.call_ended(_end(call, None, None, first))
        raise


def _end(
    call: Call | EmbedCall, result: object, error: BaseException | None, first: float | None
) -> CallEnd:
    """How ``call`` ended: with ``result`` (what the flow returned) or ``error``."""
    outcome: Outcome = "ok"
    if error is not None:
        outcome = "interrupted" if isinstance(error, StreamInterrupted) else "error"
    elif result is None:
        outcome = "interrupted"  # a stream closed by its caller, or a flow closed unfinished
    duration = time.perf_counter() - call.started
    if isinstance(result, Embeddings):
        return CallEnd(
            outcome, result.usage, result.provider, result.model, duration, call.total_attempts
        )
    response = result if isinstance(result, ChatResponse) else None
    if response is None and isinstance(call, Call):
        response = call.final  # an interrupted stream's answer, as far as it came
    if response is None:
        return CallEnd(
            outcome,
            call.spent,
            call.provider_name,
            call.model,
            duration,
            call.total_attempts,
            error,
            first_chunk=first,
        )
    return CallEnd(
        outcome,
        response.usage,
        response.provider,
        response.model,
        duration,
        call.total_attempts,
        error,
        response.finish_reason,
        response.id,
        response.message,
        first,
        response.cache_hit,
        call.alias() if isinstance(call, Call) else None,
    )


def followed(
    flow: Flow | EmbedFlow, call: Call | EmbedCall, observers: Iterable[CallObserver]
) -> Any:
    """``flow``, followed by the traces ``observers`` start for ``call``, or ``flow`` itself."""
    trace = start(call, observers)
    return flow if trace is None else follow(flow, call, trace)


__all__ = [
    "TRACE_HEADERS",
    "CallEnd",
    "CallObserver",
    "CallStart",
    "CallTrace",
    "Outcome",
    "RoundTrip",
    "follow",
    "followed",
    "inbound",
    "start",
]
