"""The request flow, written once: every step of a call in order, and not one line of I/O.

:func:`call_flow` is a generator in the sans-I/O style (as h11's state machine, or the Redis
ledger's ``_reserve_steps``): it *yields* an effect (load the history, reserve, make one
upstream attempt, read a stream's next chunk, sleep before a retry, run tools, settle and
store, deliver a stream event) and is *sent* the effect's result, or has the effect's
exception thrown into it. The decisions on a call's state (what to reserve, whether to retry
or fall back, what to store) are :class:`~llmproxy.call.Call`'s. Two short drivers in
:mod:`llmproxy.proxy` perform the effects, one blocking and one async; the whole and streamed
faces differ only in a flag here and in whether the driver hands delivered events to a caller.
Each effect carries its sync and async I/O side by side (:meth:`Effect.run`,
:meth:`Effect.arun`), so a new kind of I/O is one class.

Adding a step to the flow (a check before the call, a new store, a new event) is a change in
:func:`call_flow` or one of the sub-flows beside it, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from llmproxy.budget.base import Claim, Reservation
from llmproxy.cache import (
    CachedReply,
    call_key,
    call_target,
    decode_reply,
    encode_reply,
    reply_to_store,
)
from llmproxy.call import Call, EmbedCall, LimitWaiter, StreamState
from llmproxy.errors import (
    BudgetExceeded,
    LLMProxyError,
    ProviderTimeout,
    RateLimited,
    SchemaError,
    StoreError,
    ToolLoopError,
)
from llmproxy.history.base import HistoryRecord
from llmproxy.pipelining import aload_reserving, load_reserving, stale_early, take_early
from llmproxy.provider import EmbeddingProvider, Provider
from llmproxy.tools import ToolResult
from llmproxy.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    Completion,
    EmbeddingResult,
    Embeddings,
    EmbedRequest,
    StreamEvent,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from llmproxy.proxy import Proxy

log = logging.getLogger("llmproxy")


# -- effects: the I/O the flow asks for ---------------------------------------------------------


class Effect:
    """One piece of I/O the flow asks its driver for; the result is sent back into the flow."""

    __slots__ = ()

    def run(self, proxy: Proxy) -> Any:
        """Perform the effect, blocking."""
        raise NotImplementedError

    async def arun(self, proxy: Proxy) -> Any:
        """Perform the effect in the event loop."""
        raise NotImplementedError


class LoadHistory(Effect):
    """Load a session's last ``limit`` messages.

    With the call given and its ledger on the history store's server, the call's reserve may
    go in the same round trip (:func:`llmproxy.pipelining.load_reserving`).
    """

    __slots__ = ("call", "limit", "session_id")

    def __init__(self, session_id: str, limit: int, call: Call | None = None) -> None:
        self.session_id = session_id
        self.limit = limit
        self.call = call

    def run(self, proxy: Proxy) -> list[HistoryRecord]:
        if self.call is not None:
            return load_reserving(proxy, self.call, self.session_id, self.limit)
        return proxy.history.load(self.session_id, self.limit)

    async def arun(self, proxy: Proxy) -> list[HistoryRecord]:
        if self.call is not None:
            return await aload_reserving(proxy, self.call, self.session_id, self.limit)
        return await proxy.history.aload(self.session_id, self.limit)


class Reserve(Effect):
    """Hold budget in the ledger (raises BudgetExceeded / RateLimited when there is no room).

    A reserve already sent with the history load for exactly these arguments is used instead
    of a new one; one sent for other arguments is released first (:mod:`llmproxy.pipelining`).
    """

    __slots__ = ("args", "call", "claims")

    def __init__(
        self, claims: Sequence[Claim], args: dict[str, Any], call: Call | None = None
    ) -> None:
        self.claims = claims
        self.args = args
        self.call = call

    def run(self, proxy: Proxy) -> Reservation:
        early = take_early(self.call, self.args) if self.call is not None else None
        reservation = early.result() if early is not None else None
        if reservation is None:
            stale = stale_early(self.call) if self.call is not None else None
            if stale is not None:
                stale.discard()
            reservation = proxy.ledger.reserve(self.claims, **self.args)
        proxy._renewer.hold(reservation)
        return reservation

    async def arun(self, proxy: Proxy) -> Reservation:
        early = take_early(self.call, self.args) if self.call is not None else None
        reservation = await early.aresult() if early is not None else None
        if reservation is None:
            stale = stale_early(self.call) if self.call is not None else None
            if stale is not None:
                await stale.adiscard()
            reservation = await proxy.ledger.areserve(self.claims, **self.args)
        proxy._renewer.hold(reservation)
        return reservation


class DiscardEarly(Effect):
    """Give up a reserve sent with the history load that no Reserve took (the call failed first).

    Its hold is released (a round trip), so a call that ends before reserving never leaves
    budget held until its lease expires and is charged (:mod:`llmproxy.pipelining`).
    """

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def run(self, proxy: Proxy) -> None:
        early = stale_early(self.call)
        if early is not None:
            early.discard()

    async def arun(self, proxy: Proxy) -> None:
        early = stale_early(self.call)
        if early is not None:
            await early.adiscard()


class Settle(Effect):
    """Replace a hold with what was really used.

    A settle that cannot reach the ledger is journaled and applied when the ledger answers
    again (settles are idempotent, so a settle that did land is not counted twice); the call
    goes on.
    """

    __slots__ = ("args", "reservation")

    def __init__(self, reservation: Reservation, args: dict[str, Any]) -> None:
        self.reservation = reservation
        self.args = args

    def run(self, proxy: Proxy) -> None:
        proxy._renewer.release(self.reservation)
        try:
            proxy.ledger.settle(self.reservation, **self.args)
        except StoreError as exc:
            proxy._keep(exc, reservation=self.reservation, settle=self.args)

    async def arun(self, proxy: Proxy) -> None:
        proxy._renewer.release(self.reservation)
        try:
            await proxy.ledger.asettle(self.reservation, **self.args)
        except StoreError as exc:
            proxy._keep(exc, reservation=self.reservation, settle=self.args)


class SettleAndStore(Effect):
    """Settle the last hold and append the exchange: one write when both stores share a server.

    What cannot reach its store is journaled and written when the store answers again: the
    caller keeps the answer the upstream already produced, and it is counted and stored once.
    """

    __slots__ = ("call", "records", "settle")

    def __init__(
        self, call: Call, settle: dict[str, Any] | None, records: list[HistoryRecord] | None
    ) -> None:
        self.call = call
        self.settle = settle
        self.records = records

    def run(self, proxy: Proxy) -> None:
        reservation = self._held(proxy)
        joint = proxy._joint(self.call, self.settle, self.records)
        if joint is not None:
            try:
                joint[0].append_with(self.records or [], joint[1])
            except StoreError as exc:
                proxy._keep(exc, reservation=reservation, settle=self.settle)
                proxy._keep(exc, records=self.records)
            return
        if reservation is not None:
            try:
                proxy.ledger.settle(reservation, **(self.settle or {}))
            except StoreError as exc:
                proxy._keep(exc, reservation=reservation, settle=self.settle)
        if self.records:
            try:
                proxy.history.append(self.records)
            except StoreError as exc:
                proxy._keep(exc, records=self.records)

    async def arun(self, proxy: Proxy) -> None:
        reservation = self._held(proxy)
        joint = proxy._joint(self.call, self.settle, self.records)
        if joint is not None:
            try:
                await joint[0].aappend_with(self.records or [], joint[1])
            except StoreError as exc:
                proxy._keep(exc, reservation=reservation, settle=self.settle)
                proxy._keep(exc, records=self.records)
            return
        if reservation is not None:
            try:
                await proxy.ledger.asettle(reservation, **(self.settle or {}))
            except StoreError as exc:
                proxy._keep(exc, reservation=reservation, settle=self.settle)
        if self.records:
            try:
                await proxy.history.aappend(self.records)
            except StoreError as exc:
                proxy._keep(exc, records=self.records)

    def _held(self, proxy: Proxy) -> Reservation | None:
        """The hold to settle (no longer renewed from here on), or None."""
        reservation = self.call.reservation
        if self.settle is None or reservation is None:
            return None
        proxy._renewer.release(reservation)
        return reservation


class Sleep(Effect):
    """Wait before a retry or before reserving again."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, proxy: Proxy) -> None:
        time.sleep(self.seconds)

    async def arun(self, proxy: Proxy) -> None:
        await asyncio.sleep(self.seconds)


_Answer = TypeVar("_Answer")


async def _held_to_deadline(
    attempt: Awaitable[_Answer], request: ChatRequest | EmbedRequest
) -> _Answer:
    """Await an upstream attempt, cut off at the deadline the provider was told.

    The provider is told the time left (``request.timeout``); this holds it to it, whatever
    the provider does with it.
    """
    if request.timeout is None:
        return await attempt
    try:
        async with asyncio.timeout(request.timeout):
            return await attempt
    except TimeoutError:
        raise _deadline_error(request) from None


class Attempt(Effect):
    """One non-streamed upstream attempt."""

    __slots__ = ("provider", "request")

    def __init__(self, provider: Provider, request: ChatRequest) -> None:
        self.provider = provider
        self.request = request

    def run(self, proxy: Proxy) -> Completion:
        return self.provider.chat(self.request)

    async def arun(self, proxy: Proxy) -> Completion:
        return await _held_to_deadline(self.provider.achat(self.request), self.request)


class Embed(Effect):
    """One upstream embeddings attempt for one batch."""

    __slots__ = ("provider", "request")

    def __init__(self, provider: EmbeddingProvider, request: EmbedRequest) -> None:
        self.provider = provider
        self.request = request

    def run(self, proxy: Proxy) -> EmbeddingResult:
        return self.provider.embed(self.request)

    async def arun(self, proxy: Proxy) -> EmbeddingResult:
        return await _held_to_deadline(self.provider.aembed(self.request), self.request)


class OpenStream(Effect):
    """Start one streamed upstream attempt; the result is the provider's chunk iterator."""

    __slots__ = ("provider", "request")

    def __init__(self, provider: Provider, request: ChatRequest) -> None:
        self.provider = provider
        self.request = request

    def run(self, proxy: Proxy) -> Iterator[Chunk]:
        return iter(self.provider.stream(self.request))

    async def arun(self, proxy: Proxy) -> AsyncIterator[Chunk]:
        return aiter(self.provider.astream(self.request))


END = Chunk()
"""What :class:`NextChunk` gives back when the provider's stream has ended."""


class NextChunk(Effect):
    """Read the next chunk of a provider's stream (:data:`END` at its end)."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks

    def run(self, proxy: Proxy) -> Chunk:
        return next(self.chunks, END)

    async def arun(self, proxy: Proxy) -> Chunk:
        return await anext(self.chunks, END)


def _deadline_error(
    request: ChatRequest | EmbedRequest, seconds: float | None = None
) -> ProviderTimeout:
    """The error of an attempt cut off at the call's deadline."""
    return ProviderTimeout(
        f"no answer within the call's deadline ({seconds or request.timeout or 0:.3g} s left for"
        " this attempt); raise retry.deadline if the model needs longer",
        provider=request.provider,
        model=request.model,
    )


class CloseStream(Effect):
    """Close a provider's stream (its connection) early; a failure to close is only logged."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks

    def run(self, proxy: Proxy) -> None:
        # An async provider stream cannot be closed without its loop (a stream dropped after
        # its loop ended): it is left to the garbage collector.
        close = getattr(self.chunks, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.debug("closing a provider stream failed", exc_info=True)

    async def arun(self, proxy: Proxy) -> None:
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.debug("closing a provider stream failed", exc_info=True)


class RunTools(Effect):
    """Run a round's tool calls (async tools concurrently); the result is their outputs."""

    __slots__ = ("call", "calls")

    def __init__(self, call: Call, calls: list[ToolCall]) -> None:
        self.call = call
        self.calls = calls

    def run(self, proxy: Proxy) -> list[ToolResult]:
        return [self._run_one(c) for c in self.calls]

    async def arun(self, proxy: Proxy) -> list[ToolResult]:
        return list(await asyncio.gather(*(self._arun_one(c) for c in self.calls)))

    def _run_one(self, tool_call: ToolCall) -> ToolResult:
        refused = self.call.blocked_or_unknown(tool_call)
        if refused is not None:
            return refused
        return self.call.function_tools[tool_call.name].run(tool_call.arguments, tool_call.id)

    async def _arun_one(self, tool_call: ToolCall) -> ToolResult:
        refused = self.call.blocked_or_unknown(tool_call)
        if refused is not None:
            return refused
        tool = self.call.function_tools[tool_call.name]
        return await tool.arun(tool_call.arguments, tool_call.id)


class CacheGet(Effect):
    """Look a reply up in the response cache (None: a miss; a failing cache is a miss too)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def run(self, proxy: Proxy) -> CachedReply | None:
        try:
            value = proxy.cache.get(self.key)
            return None if value is None else decode_reply(value)
        except StoreError as exc:
            log.warning("response cache lookup failed, calling upstream: %s", exc)
            return None

    async def arun(self, proxy: Proxy) -> CachedReply | None:
        try:
            value = await proxy.cache.aget(self.key)
            return None if value is None else decode_reply(value)
        except StoreError as exc:
            log.warning("response cache lookup failed, calling upstream: %s", exc)
            return None


class CachePut(Effect):
    """Keep a reply in the response cache.

    The call has its answer by then: a failure to keep it (the store's, or an entry that
    cannot be encoded) is only logged.
    """

    __slots__ = ("key", "reply", "ttl")

    def __init__(self, key: str, reply: CachedReply, ttl: float) -> None:
        self.key = key
        self.reply = reply
        self.ttl = ttl

    def run(self, proxy: Proxy) -> None:
        try:
            proxy.cache.put(self.key, encode_reply(self.reply), self.ttl)
        except Exception as exc:  # the answer is out: a cache never fails the call
            log.warning("could not keep a reply in the response cache: %s", exc)

    async def arun(self, proxy: Proxy) -> None:
        try:
            await proxy.cache.aput(self.key, encode_reply(self.reply), self.ttl)
        except Exception as exc:  # the answer is out: a cache never fails the call
            log.warning("could not keep a reply in the response cache: %s", exc)


class Deliver(Effect):
    """Hand a stream event to the caller (drivers of whole calls never see one).

    ``event`` None marks the point where a stream is ready (history loaded, budget reserved):
    a sync stream is returned to its caller there, so a refusal is raised by ``stream()``.
    """

    __slots__ = ("event",)

    def __init__(self, event: StreamEvent | None) -> None:
        self.event = event


READY = Deliver(None)


class Closed(Exception):
    """Thrown into a stream's flow where it delivers: the caller closed or dropped the stream."""


# -- the flow ----------------------------------------------------------------------------------

Flow = Generator[Effect, Any, ChatResponse | None]
"""A running call: yields effects, is sent their results, returns the response."""


def call_flow(call: Call) -> Flow:
    """Every step of a call, whole or streamed: see the module docstring and DESIGN's flow.

    Resolve (done when the :class:`Call` was built), load the history, reserve, attempt with
    retries and fallbacks, run tool rounds, parse a structured answer (with its retry rounds,
    :func:`_check_output`), settle, store, notify. A streamed call delivers its
    text as it arrives and its final event before it settles and stores; closing it early
    stores what arrived, marked interrupted, and settles with what was used.
    """
    streamed = call.streamed
    try:
        if call.use_history:
            loaded = yield LoadHistory(call.session_id or "", call.proxy.config.history_limit, call)
            call.set_history(loaded)
        if call.cache_ttl is not None:
            cached = yield from _cache_lookup(call)
            if cached is not None:
                return (yield from _cache_hit(call, cached))
        request = yield from _aim(call)
        if streamed:
            yield READY
        while True:
            completion, usage = yield from _turn(call, request)
            call.spent = call.spent + usage
            message = completion.message
            if not call.wants_tools(message):
                retry = yield from _check_output(call, completion, usage)
                if not retry:
                    break
                request = yield from _aim(call)
                continue
            settle = call.settle_args(usage)
            if settle is not None and call.reservation is not None:
                yield Settle(call.reservation, settle)
            calls = call.tool_round(message)
            call.add_tool_results(message, (yield RunTools(call, calls)))
            request = yield from _aim(call)
        response = call.response(completion, call.spent)
        settle = call.settle_args(usage)
        records = call.records(message, call.spent, response.model)
        if streamed:
            call.notify(call.spent, "ok", None, response.model)
            final = StreamEvent("", "", True, call.spent, completion.finish_reason, response)
            with contextlib.suppress(Closed):  # closed after its final event: the answer is whole
                yield Deliver(final)
    except Closed:
        yield from _abandon(call)
        return None
    except GeneratorExit:
        raise
    except BaseException as exc:
        error = call.interrupted_error(exc)
        yield from _finish(call, error)
        if error is exc:
            raise
        raise error from exc
    try:
        yield SettleAndStore(call, settle, records)
    except GeneratorExit:
        raise
    except BaseException as exc:
        if not streamed:  # a stream's observers already have its (whole) answer
            call.notify(call.spent, "error", exc, call.model)
        raise
    if not streamed:
        call.notify(call.spent, "ok", None, response.model)
    if call.cache_key is not None and call.cache_ttl is not None:
        keep = reply_to_store(call, completion, response)
        if keep is not None:
            yield CachePut(call.cache_key, keep, call.cache_ttl)
    return response


def _cache_lookup(call: Call) -> Generator[Effect, Any, CachedReply | None]:
    """Look the call's request up in the response cache (before anything is reserved)."""
    call.cache_key = call_key(call)
    call.cache_for = call_target(call)
    cached: CachedReply | None = yield CacheGet(call.cache_key)
    return cached


REPLAY_PIECE = 64
"""Characters per stream event when a cached reply is served as a stream."""


def _cache_hit(call: Call, cached: CachedReply) -> Flow:
    """Answer from the cache: nothing reserved or spent, the exchange stored as a live one's.

    A stream gets the reply's reasoning and text in pieces, then its final event.
    """
    call.cache_hit = True
    usage = Usage()
    completion = Completion(cached.message, usage, cached.model, cached.finish_reason, cached.id)
    error = call.parse_output(completion)
    if error is not None:  # (the schema is part of the key: only a changed parser gets here)
        raise error
    if call.streamed:
        yield READY
        message = cached.message
        for reasoning, text in ((True, message.reasoning or ""), (False, message.content)):
            for start in range(0, len(text), REPLAY_PIECE):
                piece = text[start : start + REPLAY_PIECE]
                yield Deliver(StreamEvent("", piece) if reasoning else StreamEvent(piece))
    response = attrs.evolve(call.response(completion, usage), cache_hit=True)
    call.final = response
    records = call.records(completion.message, usage, response.model)
    if call.streamed:
        call.notify(usage, "ok", None, response.model)
        final = StreamEvent("", "", True, usage, completion.finish_reason, response)
        with contextlib.suppress(Closed):
            yield Deliver(final)
    if records:
        yield SettleAndStore(call, None, records)
    if not call.streamed:
        call.notify(usage, "ok", None, response.model)
    return response


def _check_output(call: Call, completion: Completion, usage: Usage) -> Generator[Effect, Any, bool]:
    """Parse a structured answer (``schema=``); True when a schema retry round should follow.

    An answer that does not fit settles its round (its tokens were spent) and is then sent
    back with what failed while ``schema_retries`` last (the next round reserves anew, as a
    tool round does), else its :class:`~llmproxy.errors.SchemaError` is raised.
    """
    error = call.parse_output(completion)
    if error is None:
        return False
    settle = call.settle_args(usage)
    if settle is not None and call.reservation is not None:
        yield Settle(call.reservation, settle)
    if not call.schema_retry(completion.message, error):
        raise error
    return True


def _aim(call: Call) -> Generator[Effect, Any, ChatRequest]:
    """Reserve for the call's current model (when a policy applies) and build its request."""
    call.reaim()
    yield from _reserve(call)
    return call.build_request()


def _reserve(call: Call | EmbedCall) -> Generator[Effect, Any, None]:
    """Hold the call's budget (when a policy applies), waiting out what is worth waiting for."""
    args = call.reserve_args()
    if args is not None:
        waiter = LimitWaiter(call.proxy.config)
        while True:
            try:
                early = call if isinstance(call, Call) else None
                call.reservation = yield Reserve(call.claims, args, early)
                break
            except (BudgetExceeded, RateLimited) as exc:
                if isinstance(call, Call) and call.skip_limited(exc):
                    args = call.reserve_args()  # another deployment, with room
                    if args is None:
                        break
                    continue
                delay = waiter.delay(exc)
                if delay is None:
                    raise
                yield Sleep(delay)


def _turn(call: Call, request: ChatRequest) -> Generator[Effect, Any, tuple[Completion, Usage]]:
    """One model turn: attempts with retries, then each fallback model after a retryable failure.

    Each model's hold is released (its attempts counted as requests) before the next is tried.
    """
    while True:
        try:
            while True:
                call.attempts += 1
                call.total_attempts += 1
                request = call.for_attempt(request)
                try:
                    if call.streamed:
                        outcome = yield from _stream_attempt(call, request)
                    else:
                        completion = yield Attempt(call.provider, request)
                        outcome = completion, call.usage_of(completion)
                    call.end_attempt(None, answered=True)
                    return outcome
                except (Closed, GeneratorExit) as exc:
                    call.end_attempt(exc, answered=False)
                    raise
                except BaseException as exc:
                    call.attempt_failed(exc)
                    delay = call.retry_delay(exc)
                    if delay is None:
                        raise
                    log.info(
                        "retrying %s/%s in %.2fs after: %s",
                        call.provider_name,
                        call.model,
                        delay,
                        exc,
                    )
                    yield Sleep(delay)
        except (Closed, GeneratorExit):
            raise
        except BaseException as exc:
            if call.delivered():
                raise  # part of the answer is out: the stream ends interrupted, no fallback
            yield from _release(call)
            wait = call.failover_wait(exc)  # an alias's next deployment (llmproxy.routing)
            if wait:
                yield Sleep(wait)
            if not call.advance(exc):
                raise
            request = yield from _aim(call)


def _stream_attempt(
    call: Call, request: ChatRequest
) -> Generator[Effect, Any, tuple[Completion, Usage]]:
    """One streamed attempt: deliver each piece of text as it arrives.

    The upstream is closed when the attempt fails or the caller stops reading.
    """
    state = call.stream = StreamState()
    chunks = yield OpenStream(call.provider, request)
    try:
        while True:
            chunk = yield NextChunk(chunks)
            if chunk is END:
                break
            event = state.take(chunk)
            if event is not None:
                yield Deliver(event)
                if call.past_deadline():  # a provider that does not hold to request.timeout
                    raise _deadline_error(request, call.proxy.config.retry.deadline)
    except GeneratorExit:
        raise
    except BaseException:
        yield CloseStream(chunks)
        raise
    return state.outcome(call, False)


def _release(call: Call) -> Generator[Effect, Any, None]:
    """Settle a failed model's hold: no tokens, its attempts as requests."""
    settle = call.settle_args(None)
    if settle is not None and call.reservation is not None:
        try:
            yield Settle(call.reservation, settle)
        except LLMProxyError:
            log.exception("could not release the reservation of a failed call")


def _abandon(call: Call) -> Generator[Effect, Any, None]:
    """The caller closed (or dropped) a stream: store what arrived, interrupted; settle."""
    if call.early is not None:
        yield DiscardEarly(call)
    state = call.stream
    if state is None or not state.received:
        settle = call.settle_args(None)
        if settle is not None and call.reservation is not None:
            yield Settle(call.reservation, settle)
        return
    yield from _finish(call, None)


def _finish(call: Call, error: BaseException | None) -> Generator[Effect, Any, None]:
    """End a call that failed or was cut short, and tell the observers.

    With no text delivered (or a runaway tool loop, or an answer that does not fit the call's
    schema) the call failed as a whole: its hold is released and nothing is stored. A stream
    cut short after text arrived is stored with what arrived, marked interrupted, and counted
    from it.
    """
    if call.early is not None:
        yield DiscardEarly(call)
    state = call.stream
    if (
        state is None
        or (not state.delivered and error is not None)
        or isinstance(error, (ToolLoopError, SchemaError))
    ):
        settle = call.settle_args(None)
        call.notify(call.spent, "error", error, call.model)
        if settle is not None and call.reservation is not None:
            yield Settle(call.reservation, settle)
        return
    completion, usage = state.outcome(call, True)
    total = call.spent + usage
    response = call.response(completion, total)
    settle = call.settle_args(usage)
    records = call.records(completion.message, total, response.model)
    call.notify(total, "interrupted", error, response.model)
    yield SettleAndStore(call, settle, records)


# -- embeddings --------------------------------------------------------------------------------

EmbedFlow = Generator[Effect, Any, Embeddings]
"""A running embed call: yields effects, is sent their results, returns the vectors."""


def embed_flow(call: EmbedCall) -> EmbedFlow:
    """Every step of an embed call: reserve the whole input, embed each batch, settle, notify.

    The texts are reserved as a whole (input only) before the first batch is sent, so a
    refusal sends nothing. Each batch is retried as a chat attempt is; when a model's retries
    are spent on a retryable failure, what its finished batches used is settled and the next
    fallback model starts again from the first batch (vectors of two models do not mix).
    """
    try:
        while True:
            yield from _reserve(call)
            vectors: list[tuple[float, ...]] = []
            usage = Usage()
            try:
                for start, end in call.batches():
                    result, used = yield from _embed_batch(call, start, end)
                    vectors.extend(result.vectors)
                    usage = usage + used
                break
            except GeneratorExit:
                raise
            except BaseException as exc:
                call.spent = call.spent + usage
                settle = call.settle_args(usage)
                if settle is not None and call.reservation is not None:
                    try:
                        yield Settle(call.reservation, settle)
                    except LLMProxyError:
                        log.exception("could not release the reservation of a failed call")
                if not call.advance(exc):
                    raise
        call.spent = call.spent + usage
        settle = call.settle_args(usage)
        if settle is not None and call.reservation is not None:
            yield Settle(call.reservation, settle)
    except GeneratorExit:
        raise
    except BaseException as exc:
        call.notify("error", exc)
        raise
    call.notify("ok", None)
    return Embeddings(tuple(vectors), call.spent, call.model, call.provider_name, call.elapsed())


def _embed_batch(
    call: EmbedCall, start: int, end: int
) -> Generator[Effect, Any, tuple[EmbeddingResult, Usage]]:
    """One batch: attempts with retries (as :func:`_turn`'s), each counted as a request."""
    tries = 0
    while True:
        tries += 1
        call.attempts += 1
        call.total_attempts += 1
        try:
            result = yield Embed(call.provider, call.request(start, end))
            return result, call.usage_of(result, start, end)
        except GeneratorExit:
            raise
        except BaseException as exc:
            call.attempt_errors += (exc,)
            delay = call.retry_delay(exc, tries)
            if delay is None:
                raise
            log.info(
                "retrying %s/%s embeddings in %.2fs after: %s",
                call.provider_name,
                call.model,
                delay,
                exc,
            )
            yield Sleep(delay)


__all__ = [
    "READY",
    "Closed",
    "Deliver",
    "Effect",
    "EmbedFlow",
    "Flow",
    "call_flow",
    "embed_flow",
]
