"""Optional protocols that let a ledger's last settle ride in the history store's write.

When a call's ledger and history store live on the same server (same :meth:`pipeline_key`),
the Proxy hands the ledger's queued settle to the store, which sends it inside its own atomic
append: one network round trip instead of two. Both sides keep their own error handling; the
core only matches keys and passes the :class:`QueuedSettle` along (it never sees a client).
A store or ledger that implements none of this is used the ordinary way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from llmproxy.budget.base import Reservation
from llmproxy.history.base import HistoryRecord


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


def shared(ledger: object, history: object) -> PipelinedHistory | None:
    """``history`` as a store to send ``ledger``'s settle through, when both are on one server."""
    if not isinstance(ledger, PipelinedLedger) or not isinstance(history, PipelinedHistory):
        return None
    key = ledger.pipeline_key()
    if key is None or key != history.pipeline_key():
        return None
    return history


__all__ = ["PipelinedHistory", "PipelinedLedger", "QueuedSettle", "shared"]
