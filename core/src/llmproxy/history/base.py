"""The history store protocol and the records it keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from attrs import frozen

from llmproxy.types import Message


@frozen
class HistoryRecord:
    """One stored message of a session, with what the store keeps beside it.

    ``created_at`` is a Unix time in seconds; token counts are those of the exchange the message
    belongs to (input on the user message, output on the assistant message). ``id`` is the
    record's own stable id (the Proxy gives each a uuid4 hex): a store keeps at most one record
    per id, so appending the same records again (a replay from the journal after a write whose
    fate was unknown) stores nothing twice. None means no id: such records are always appended.
    """

    session_id: str
    message: Message
    model: str | None = None
    provider: str | None = None
    created_at: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    user: str | None = None
    id: str | None = None

    @property
    def role(self) -> str:
        """The message's role."""
        return self.message.role

    @property
    def content(self) -> str:
        """The message's text."""
        return self.message.content


@frozen
class SessionInfo:
    """A stored session: its id, its message count, and when it was first and last written."""

    session_id: str
    message_count: int
    created_at: float
    updated_at: float


@runtime_checkable
class HistoryStore(Protocol):
    """Where conversations are kept. Every method has an async twin prefixed with ``a``.

    Implementations must make :meth:`append` atomic (all records of the call or none), keep
    messages in the order they were appended, and make it idempotent by record id: a record
    whose :attr:`HistoryRecord.id` is already stored is skipped (records without an id are
    always appended). ``llmproxy_testing.contracts.HistoryStoreContract`` checks all three.
    """

    def load(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Return the last ``limit`` records of a session (all when None), oldest first."""
        ...

    def append(self, records: Sequence[HistoryRecord]) -> None:
        """Append records (one exchange, one session) atomically, skipping ids already stored."""
        ...

    def sessions(self) -> list[SessionInfo]:
        """List stored sessions, most recently updated first."""
        ...

    def delete(self, session_id: str) -> int:
        """Delete a session; return how many messages were removed."""
        ...

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...

    async def aload(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Async :meth:`load`."""
        ...

    async def aappend(self, records: Sequence[HistoryRecord]) -> None:
        """Async :meth:`append`."""
        ...

    async def asessions(self) -> list[SessionInfo]:
        """Async :meth:`sessions`."""
        ...

    async def adelete(self, session_id: str) -> int:
        """Async :meth:`delete`."""
        ...
