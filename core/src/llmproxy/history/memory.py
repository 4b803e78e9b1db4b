"""A history store kept in this process's memory: fast, shared by threads, lost on exit."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from llmproxy.errors import ConfigError, InvalidRequest
from llmproxy.history.base import HistoryRecord, SessionInfo


class MemoryHistoryStore:
    """Keep sessions in a dict of lists guarded by a lock; for tests, scripts and single processes.

    ``max_messages_per_session`` keeps only the newest messages of each session (the oldest are
    dropped as new ones arrive); None keeps everything. The async methods call the sync ones
    directly: every operation is a few microseconds of work under an uncontended lock, far less
    than the cost of handing it to a thread.

    A record whose ``id`` is already stored is skipped (appends are idempotent by record id);
    the ids of records dropped by the cap or a delete are forgotten with them.
    """

    def __init__(self, *, max_messages_per_session: int | None = None) -> None:
        if max_messages_per_session is not None and max_messages_per_session < 1:
            raise ConfigError(
                "max_messages_per_session must be a positive integer or None,"
                f" got {max_messages_per_session!r}",
                path="max_messages_per_session",
            )
        self._max = max_messages_per_session
        self._lock = threading.Lock()
        self._sessions: dict[str, list[HistoryRecord]] = {}
        # Session -> sequence number of its last append, to order sessions written in the same
        # second (or with equal created_at) by recency.
        self._touched: dict[str, int] = {}
        self._sequence = 0
        self._ids: set[str] = set()

    def load(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Return the last ``limit`` records of a session (all when None), oldest first."""
        if limit is not None and limit < 0:
            raise InvalidRequest(f"history limit must be >= 0 or None, got {limit}", field="limit")
        with self._lock:
            records = self._sessions.get(session_id)
            if not records:
                return []
            if limit is None:
                return records[:]
            return records[-limit:] if limit else []

    def append(self, records: Sequence[HistoryRecord]) -> None:
        """Append records atomically: no reader sees part of them."""
        if not records:
            return
        with self._lock:
            self._sequence += 1
            for record in records:
                if record.id is not None:
                    if record.id in self._ids:
                        continue
                    self._ids.add(record.id)
                stored = self._sessions.get(record.session_id)
                if stored is None:
                    stored = self._sessions[record.session_id] = []
                stored.append(record)
                self._touched[record.session_id] = self._sequence
            if self._max is not None:
                for session_id in {record.session_id for record in records}:
                    stored = self._sessions.get(session_id, [])
                    excess = len(stored) - self._max
                    if excess > 0:
                        self._forget(stored[:excess])
                        del stored[:excess]

    def sessions(self) -> list[SessionInfo]:
        """List stored sessions, most recently updated first."""
        with self._lock:
            rows = [
                (
                    SessionInfo(
                        session_id,
                        len(records),
                        min(record.created_at for record in records),
                        max(record.created_at for record in records),
                    ),
                    self._touched[session_id],
                )
                for session_id, records in self._sessions.items()
            ]
        rows.sort(key=lambda row: (row[0].updated_at, row[1]), reverse=True)
        return [info for info, _ in rows]

    def delete(self, session_id: str) -> int:
        """Delete a session; return how many messages were removed."""
        with self._lock:
            records = self._sessions.pop(session_id, None)
            self._touched.pop(session_id, None)
            if records:
                self._forget(records)
        return len(records) if records else 0

    def _forget(self, records: Sequence[HistoryRecord]) -> None:
        """Drop the ids of records no longer stored (the caller holds the lock)."""
        for record in records:
            if record.id is not None:
                self._ids.discard(record.id)

    def close(self) -> None:
        """Do nothing: there is no connection to release (the data stays readable)."""

    async def aload(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Async :meth:`load` (runs inline)."""
        return self.load(session_id, limit)

    async def aappend(self, records: Sequence[HistoryRecord]) -> None:
        """Async :meth:`append` (runs inline)."""
        self.append(records)

    async def asessions(self) -> list[SessionInfo]:
        """Async :meth:`sessions` (runs inline)."""
        return self.sessions()

    async def adelete(self, session_id: str) -> int:
        """Async :meth:`delete` (runs inline)."""
        return self.delete(session_id)
