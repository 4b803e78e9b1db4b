"""Optional protocols that let a ledger's reserve and settle ride in the history store's I/O.

When a call's ledger and history store live on the same server (same :meth:`pipeline_key`),
a call with history and budgets costs two network round trips:

1. the history load and the reserve, in one pipeline (:meth:`ReservingHistory.load_with`);
2. the last settle and the history append, in one transaction (:meth:`PipelinedHistory.
   append_with`).

Both sides keep their own error handling; the core only matches keys and passes the queued
commands along (it never sees a client). A store or ledger that implements none of this is
used the ordinary way (load, reserve, settle, append: one round trip each).

The reserve depends on the history (the prompt it counts holds it), so the one sent with a
load is a guess: it counts the session as empty, and is only sent when the session is not in
the store's process-local cache (a session the cache holds needs no load at all, and is
reserved exactly; the Redis store's cache also learns other processes' appends). The guessed
reserve carries a guard, the key that holds the session: when the session exists, the ledger
holds nothing, and the call reserves again the ordinary way for the prompt it really sends
(one more round trip, nothing to release). When the load finds the session empty (a new
session: the guess was right), the reserve stands (:func:`take_early`); a reserve made for
other arguments than the call's is released (:func:`stale_early`). No hold is ever smaller than
the ordinary way's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llmproxy.budget.base import Claim, Reservation
from llmproxy.errors import LLMProxyError
from llmproxy.history.base import HistoryRecord

if TYPE_CHECKING:
    from llmproxy.call import Call
    from llmproxy.proxy import Proxy


class QueuedSettle(Protocol):
    """A settle made ready to be sent inside another store's write.

    Whoever sends :attr:`commands` must then call exactly one of :meth:`done` (with one reply,
    or the exception the server answered, per command) or :meth:`failed` (the write as a whole
    failed with ``exc``), or the async twin of either. Those finish the settle the ledger's
    own way, which may mean another round trip, a local fallback, or raising.
    """

    @property
    def commands(self) -> Sequence[tuple[Any, ...]]:
        """The commands to send, each as ``execute_command`` arguments."""
        ...

    def done(self, replies: Sequence[Any]) -> None:
        """Finish with the commands' replies."""
        ...

    def failed(self, exc: BaseException) -> None:
        """Finish after the write failed as a whole."""
        ...

    async def adone(self, replies: Sequence[Any]) -> None:
        """Async :meth:`done`."""
        ...

    async def afailed(self, exc: BaseException) -> None:
        """Async :meth:`failed`."""
        ...


@runtime_checkable
class PipelinedLedger(Protocol):
    """A ledger that can queue a settle into a store on the same server."""

    def pipeline_key(self) -> str | None:
        """The server's identity (None: never shares a write)."""
        ...

    def queue_settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> QueuedSettle | None:
        """The settle, ready to send; None when it must go the ordinary way."""
        ...


@runtime_checkable
class PipelinedHistory(Protocol):
    """A history store that can carry a queued settle inside its atomic append."""

    def pipeline_key(self) -> str | None:
        """The server's identity (None: never shares a write)."""
        ...

    def append_with(self, records: Sequence[HistoryRecord], settle: QueuedSettle) -> None:
        """:meth:`~llmproxy.history.base.HistoryStore.append`, sending ``settle`` with it."""
        ...

    async def aappend_with(self, records: Sequence[HistoryRecord], settle: QueuedSettle) -> None:
        """Async :meth:`append_with`."""
        ...


class QueuedReserve(Protocol):
    """A reserve made ready to be sent inside another store's read.

    Whoever sends :attr:`commands` calls :meth:`done` with one reply per command (or the
    exception the server answered), or :meth:`failed` when the read as a whole failed; neither
    does any I/O. :meth:`result` (or :meth:`aresult`) then finishes the reserve the ledger's own
    way: it returns the :class:`~llmproxy.budget.base.Reservation`, raises its refusal
    (:class:`~llmproxy.errors.BudgetExceeded`, :class:`~llmproxy.errors.RateLimited`),
    returns None when its guard key existed (nothing held), or reserves again on its own when
    the shared read failed. :meth:`discard` gives up a reserve
    that was not sent (no I/O) or whose hold is not wanted (released: one round trip).
    """

    @property
    def commands(self) -> Sequence[tuple[Any, ...]]:
        """The commands to send, each as ``execute_command`` arguments."""
        ...

    def done(self, replies: Sequence[Any]) -> None:
        """Keep the commands' replies."""
        ...

    def failed(self, exc: BaseException) -> None:
        """Keep the failure of the shared read."""
        ...

    def result(self) -> Reservation | None:
        """The reservation (or the refusal, raised); None: the guard key existed."""
        ...

    async def aresult(self) -> Reservation | None:
        """Async :meth:`result`."""
        ...

    def discard(self) -> None:
        """Release what was held (or forget the reserve if it was never sent)."""
        ...

    async def adiscard(self) -> None:
        """Async :meth:`discard`."""
        ...


@runtime_checkable
class ReservingLedger(Protocol):
    """A ledger that can queue a reserve into a store's read on the same server."""

    def pipeline_key(self) -> str | None:
        """The server's identity (None: never shares a read)."""
        ...

    def queue_reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Any = None,
        unless_exists: str | None = None,
    ) -> QueuedReserve | None:
        """The reserve, ready to send; None when it must go the ordinary way.

        With ``unless_exists`` (a key on the same server) nothing is held when that key exists.
        """
        ...


@runtime_checkable
class ReservingHistory(Protocol):
    """A history store that can send a ledger's reserve with its load."""

    def pipeline_key(self) -> str | None:
        """The server's identity (None: never shares a read)."""
        ...

    def load_with(
        self,
        session_id: str,
        limit: int | None,
        reserve: Callable[[str], QueuedReserve | None],
    ) -> list[HistoryRecord]:
        """:meth:`~llmproxy.history.base.HistoryStore.load`, sending a reserve with the read.

        ``reserve`` is called (at most once) only when the load goes to the server, with the
        key that exists while the session holds messages (the reserve's guard); its commands
        go in the same round trip, and the store calls their :meth:`QueuedReserve.done` or
        :meth:`QueuedReserve.failed`.
        """
        ...

    async def aload_with(
        self,
        session_id: str,
        limit: int | None,
        reserve: Callable[[str], QueuedReserve | None],
    ) -> list[HistoryRecord]:
        """Async :meth:`load_with`."""
        ...


class Early:
    """A reserve sent with a call's history load: what it was asked for, and its outcome."""

    __slots__ = ("args", "queued")

    def __init__(self, args: dict[str, Any], queued: QueuedReserve) -> None:
        self.args = args
        self.queued = queued


def _early_factory(
    proxy: Proxy, call: Call, box: list[Early]
) -> Callable[[str], QueuedReserve | None] | None:
    """What builds the guessed reserve for ``call`` (its session counted as empty); None: none."""
    if not call.claims:
        return None
    ledger = proxy.ledger
    if not isinstance(ledger, ReservingLedger):
        return None

    def make(guard: str) -> QueuedReserve | None:
        call.set_history([])
        try:
            args = call.reserve_args()
            if args is None:
                return None
            queued: QueuedReserve | None = ledger.queue_reserve(
                call.claims, unless_exists=guard, **args
            )
        except LLMProxyError:  # the ordinary reserve after the load raises it again
            return None
        if queued is None:
            return None
        box.append(Early(args, queued))
        return queued

    return make


def _reserving(proxy: Proxy) -> ReservingHistory | None:
    history = proxy._shared_history()
    return history if isinstance(history, ReservingHistory) else None


def load_reserving(proxy: Proxy, call: Call, session_id: str, limit: int) -> list[HistoryRecord]:
    """Load ``call``'s history; with the ledger on the same server, reserve in the same trip.

    A reserve sent is kept on the call (``call.early``) for :func:`take_early`.
    """
    if not call.claims or call.cache_ttl is not None:
        # No budget: the ledger is not even opened. A call that may be answered from the
        # response cache reserves only once it knows it must call upstream.
        return proxy.history.load(session_id, limit)
    history = _reserving(proxy)
    box: list[Early] = []
    factory = _early_factory(proxy, call, box) if history is not None else None
    if history is None or factory is None:
        return proxy.history.load(session_id, limit)
    try:
        records = history.load_with(session_id, limit, factory)
    except BaseException:
        for early in box:
            early.queued.discard()
        raise
    call.early = box[0] if box else None
    return records


async def aload_reserving(
    proxy: Proxy, call: Call, session_id: str, limit: int
) -> list[HistoryRecord]:
    """Async :func:`load_reserving`."""
    if not call.claims or call.cache_ttl is not None:  # (as load_reserving)
        return await proxy.history.aload(session_id, limit)
    history = _reserving(proxy)
    box: list[Early] = []
    factory = _early_factory(proxy, call, box) if history is not None else None
    if history is None or factory is None:
        return await proxy.history.aload(session_id, limit)
    try:
        records = await history.aload_with(session_id, limit, factory)
    except BaseException:
        for early in box:
            await early.queued.adiscard()
        raise
    call.early = box[0] if box else None
    return records


def take_early(call: Call, args: dict[str, Any]) -> QueuedReserve | None:
    """The reserve sent with the load, when it asked for exactly ``args``; else None.

    A reserve that asked for something else (the session was not empty, so the prompt is
    longer than the guess) stays on the call: :func:`stale_early` takes it to be released.
    """
    early: Early | None = call.early
    if early is None or early.args != args:
        return None
    call.early = None
    return early.queued


def stale_early(call: Call) -> QueuedReserve | None:
    """The reserve sent with the load that is not wanted (taken off the call), or None."""
    early: Early | None = call.early
    call.early = None
    return None if early is None else early.queued


def shared(ledger: object, history: object) -> PipelinedHistory | None:
    """``history`` as a store to send ``ledger``'s settle through, when both are on one server."""
    if not isinstance(ledger, PipelinedLedger) or not isinstance(history, PipelinedHistory):
        return None
    key = ledger.pipeline_key()
    if key is None or key != history.pipeline_key():
        return None
    return history


__all__ = [
    "Early",
    "PipelinedHistory",
    "PipelinedLedger",
    "QueuedReserve",
    "QueuedSettle",
    "ReservingHistory",
    "ReservingLedger",
    "aload_reserving",
    "load_reserving",
    "shared",
    "stale_early",
    "take_early",
]
