"""The seed's ``LLMMessageHandler``: the simple face a user subclasses to keep history elsewhere."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from llmproxy.history.base import HistoryRecord, SessionInfo


class LLMMessageHandler:
    """Subclass and override :meth:`push_message` to store messages anywhere.

    Pass an instance as ``Proxy(message_handler=...)`` or ``OpenAIService(config,
    message_handler=...)``. Every message of an exchange is pushed once the reply ends (the
    user's message, then the assistant's). Override :meth:`get_messages` too for the Proxy to
    send earlier messages of a session as context.

    >>> class Printer(LLMMessageHandler):
    ...     def push_message(self, message):
    ...         print(message.role, message.content)
    """

    def push_message(self, message: HistoryRecord) -> None:
        """Store one message (a :class:`HistoryRecord`: role, content, session_id, model...)."""
        raise NotImplementedError("subclass LLMMessageHandler and override push_message(message)")

    def push_messages(self, messages: Sequence[HistoryRecord]) -> None:
        """Store the messages of one exchange; override to write them in one step.

        The default pushes each in turn with :meth:`push_message`.
        """
        for message in messages:
            self.push_message(message)

    def get_messages(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Return the last ``limit`` messages of a session, oldest first (default: none kept)."""
        return []

    async def apush_message(self, message: HistoryRecord) -> None:
        """Async :meth:`push_message`; by default calls it."""
        self.push_message(message)

    async def apush_messages(self, messages: Sequence[HistoryRecord]) -> None:
        """Async :meth:`push_messages`; by default pushes each with :meth:`apush_message`."""
        for message in messages:
            await self.apush_message(message)

    async def aget_messages(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Async :meth:`get_messages`; by default calls it."""
        return self.get_messages(session_id, limit)


REMEMBERED_IDS: Final = 100_000
"""How many record ids a :class:`HandlerStore` remembers to skip a record pushed again."""


class HandlerStore:
    """Adapts an :class:`LLMMessageHandler` to the ``HistoryStore`` protocol.

    A handler cannot be asked whether it holds a record, so the store remembers the ids of the
    last :data:`REMEMBERED_IDS` records it pushed (in this process) and skips a record pushed
    again with one of them: a journal replay in the same process never pushes a message twice.
    After a restart a handler that must never see a message twice deduplicates by
    ``HistoryRecord.id`` itself.
    """

    def __init__(self, handler: LLMMessageHandler) -> None:
        self.handler = handler
        self._lock = threading.Lock()
        self._pushed: OrderedDict[str, None] = OrderedDict()

    def _new(self, records: Sequence[HistoryRecord]) -> list[HistoryRecord]:
        """The records whose id was not pushed before (or that have none), in order."""
        with self._lock:
            seen: set[str] = set()
            fresh = []
            for record in records:
                if record.id is not None and (record.id in self._pushed or record.id in seen):
                    continue
                if record.id is not None:
                    seen.add(record.id)
                fresh.append(record)
            return fresh

    def _pushed_ok(self, records: Sequence[HistoryRecord]) -> None:
        with self._lock:
            for record in records:
                if record.id is not None:
                    self._pushed[record.id] = None
            while len(self._pushed) > REMEMBERED_IDS:
                self._pushed.popitem(last=False)

    def load(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Ask the handler for the session's messages."""
        return self.handler.get_messages(session_id, limit)

    def append(self, records: Sequence[HistoryRecord]) -> None:
        """Push the exchange's records to the handler, in order (ids pushed before skipped)."""
        fresh = self._new(records)
        if fresh:
            self.handler.push_messages(fresh)
            self._pushed_ok(fresh)

    def sessions(self) -> list[SessionInfo]:
        """A handler cannot list sessions: return none."""
        return []

    def delete(self, session_id: str) -> int:
        """A handler cannot delete: return 0."""
        return 0

    def close(self) -> None:
        """Nothing to release."""

    async def aload(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Async :meth:`load`."""
        return await self.handler.aget_messages(session_id, limit)

    async def aappend(self, records: Sequence[HistoryRecord]) -> None:
        """Async :meth:`append`."""
        fresh = self._new(records)
        if fresh:
            await self.handler.apush_messages(fresh)
            self._pushed_ok(fresh)

    async def asessions(self) -> list[SessionInfo]:
        """Async :meth:`sessions`."""
        return []

    async def adelete(self, session_id: str) -> int:
        """Async :meth:`delete`."""
        return 0
