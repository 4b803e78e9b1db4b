"""The process-local session cache and the Redis client-tracking connection that invalidates it.

How it stays right:

* A load that reached Redis fills the cache with what it read, unless the session changed (a
  write here, or an invalidation) while the load was in flight: every change bumps an epoch
  and a load only stores what it read when nothing touched its session after it began.
* A write by this store updates the cached session itself once Redis confirmed it, so the
  next read needs no round trip, but only when no other write to that session from this
  process overlapped it (their order on the server would be unknown): then it drops it.
* Every session has a version in Redis (its meta hash's ``v``), which every append that stores
  something raises by one, atomically with its messages; a load reads it with the messages,
  and a write learns the version it made. Every append also publishes the messages it stored
  on the feed channel ``P:feed`` (with the version, the session's new length and the writer).
  One RESP3 connection per store is subscribed to the feed: a store ignores its own messages
  (it applied its write itself) and, for another process's, extends the cached session when it
  holds exactly the version before (so a session another process extended costs no read at
  all), starts a new entry when the message is the whole session (a new session), and drops the
  session otherwise. A write of its own applies only on the version before, too.
* A delete sets and deletes a *mark* key naming the session and the writer. The same
  connection has ``CLIENT TRACKING ON BCAST PREFIX P:inv:``, so Redis pushes an ``invalidate``
  message naming the mark to every store that watches; a store ignores its own marks and drops
  the session for others'. ``FLUSHALL``/``FLUSHDB`` push an invalidation of everything; a lost
  tracking connection clears the whole cache (pushes may have been missed) and is reopened on
  the next call.
* Pending pushes are read without blocking (the socket is polled, no request is sent) before
  the cache answers, so a load served from the cache costs no round trip.
* With a TTL, an entry lives no longer than the oldest message it holds (Redis reports that
  message's remaining time on every load).

Changes made to a session's keys without llmproxy (a manual ``DEL``) are not seen until the
entry is dropped; use ``cache=false`` when other software writes the keys.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs

from llmproxy.history.base import HistoryRecord
from llmproxy.secret import logger as secret_logger
from llmproxy_redis_history.layout import Keys, session_of_tag

log = secret_logger("llmproxy.redis_history")


@attrs.define
class _Entry:
    records: list[HistoryRecord]
    complete: bool
    expires_at: float | None
    version: int | None = None


class SessionCache:
    """Recently used sessions' newest messages, in an LRU of ``max_sessions`` entries."""

    def __init__(self, *, max_sessions: int, max_messages: int) -> None:
        self.max_sessions = max_sessions
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._epoch = 0
        self._touched: OrderedDict[str, int] = OrderedDict()
        self._floor = 0  # sessions no longer in _touched count as touched at this epoch
        self._writing: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    # -- reads -----------------------------------------------------------------------------------

    def get(self, session_id: str, limit: int | None) -> list[HistoryRecord] | None:
        """Return the cached answer to ``load(session_id, limit)``, or None on a miss."""
        with self._lock:
            entry = self._entries.get(session_id)
            expires = entry.expires_at if entry is not None else None
            if expires is not None and time.monotonic() >= expires:
                del self._entries[session_id]
                entry = None
            if entry is None or not (
                entry.complete or (limit is not None and len(entry.records) >= limit)
            ):
                self.misses += 1
                return None
            self._entries.move_to_end(session_id)
            self.hits += 1
            records = entry.records
            return records[-limit:] if limit is not None else records[:]

    def version_of(self, session_id: str) -> int | None:
        """The session version the entry holds (None: no entry, or its version is unknown)."""
        with self._lock:
            entry = self._entries.get(session_id)
            return None if entry is None else entry.version

    def begin_load(self) -> int:
        """Return the epoch a load starts at (pass it to :meth:`store`)."""
        with self._lock:
            return self._epoch

    def store(
        self,
        session_id: str,
        records: list[HistoryRecord],
        limit: int | None,
        started: int,
        ttl_ms: int,
        version: int | None = None,
    ) -> None:
        """Keep what a load read, unless the session changed since the load ``started``.

        ``version`` is the session's version the load read with the records.
        """
        with self._lock:
            if self._last_touch(session_id) > started or session_id in self._writing:
                return
            complete = limit is None or len(records) < limit
            if len(records) > self.max_messages:
                records = records[-self.max_messages :]
                complete = False
            expires = time.monotonic() + ttl_ms / 1000 if ttl_ms >= 0 else None
            self._put(session_id, _Entry(list(records), complete, expires, version))

    def _put(self, session_id: str, entry: _Entry) -> None:
        self._entries[session_id] = entry
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)

    # -- writes ----------------------------------------------------------------------------------

    def begin_write(self, session_id: str) -> tuple[int, bool]:
        """Note a write starting; return its token and whether another write overlaps it."""
        with self._lock:
            token = self._touch(session_id)
            overlapped = session_id in self._writing
            self._writing[session_id] = self._writing.get(session_id, 0) + 1
            return token, overlapped

    def finish_write(
        self,
        session_id: str,
        token: int,
        overlapped: bool,
        added: list[HistoryRecord] | None,
        cap: int | None,
        ttl: float | None = None,
        version: int | None = None,
    ) -> None:
        """Apply a confirmed append (``added``) to the cached session, or drop the session.

        ``added=None`` means the write failed or was a delete: the entry is dropped. ``ttl`` is
        the store's message lifetime: an entry holding no expiring message starts expiring.
        ``version`` is the session's version the write made (0: it stored nothing): the entry
        is extended only when it holds the version before.
        """
        with self._lock:
            left = self._writing.get(session_id, 1) - 1
            if left:
                self._writing[session_id] = left
            else:
                self._writing.pop(session_id, None)
            entry = self._entries.get(session_id)
            alone = not overlapped and not left and self._touched.get(session_id) == token
            # Loads that began while the write was in flight may have read the session before
            # or after it: a new epoch keeps them from storing what they read.
            self._touch(session_id)
            if entry is None:
                return
            if added is None or not alone:
                del self._entries[session_id]
                return
            if version != 0:  # it stored something
                if version is None or entry.version is None or version != entry.version + 1:
                    del self._entries[session_id]
                    return
                entry.version = version
            self._extend(entry, added, cap, ttl)

    def _extend(
        self, entry: _Entry, added: list[HistoryRecord], cap: int | None, ttl: float | None
    ) -> None:
        entry.records.extend(added)
        if ttl is not None and entry.expires_at is None:
            entry.expires_at = time.monotonic() + ttl
        keep = min(cap, self.max_messages) if cap is not None else self.max_messages
        if len(entry.records) > keep:
            del entry.records[:-keep]
            if cap is None or keep < cap:
                entry.complete = False

    def feed(
        self,
        session_id: str,
        version: int,
        added: list[HistoryRecord],
        length: int,
        cap: int | None,
        ttl: float | None,
    ) -> None:
        """Apply another process's append: ``added`` made ``version``; the session holds ``length``.

        The entry is extended when it holds the version before; a session whose messages are
        all in ``added`` (a new one) gets an entry; otherwise the session is dropped. A write of
        this process to the session in flight drops it too (their order is unknown here).
        """
        with self._lock:
            self._touch(session_id)
            entry = self._entries.get(session_id)
            if session_id in self._writing:
                self._entries.pop(session_id, None)
                return
            if entry is not None and entry.version is not None and version == entry.version + 1:
                entry.version = version
                self._extend(entry, added, cap, ttl)
                return
            self._entries.pop(session_id, None)
            if length == len(added) and length <= self.max_messages:
                expires = time.monotonic() + ttl if ttl is not None else None
                self._put(session_id, _Entry(list(added), True, expires, version))

    # -- invalidation ----------------------------------------------------------------------------

    def invalidate(self, session_id: str) -> None:
        """Drop a session another process changed."""
        with self._lock:
            self._entries.pop(session_id, None)
            self._touch(session_id)

    def clear(self) -> None:
        """Drop everything (a flush, or a lost tracking connection)."""
        with self._lock:
            self._entries.clear()
            self._epoch += 1
            self._floor = self._epoch
            self._touched.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _touch(self, session_id: str) -> int:
        self._epoch += 1
        self._touched[session_id] = self._epoch
        self._touched.move_to_end(session_id)
        while len(self._touched) > 4 * self.max_sessions:
            _, epoch = self._touched.popitem(last=False)
            self._floor = max(self._floor, epoch)
        return self._epoch

    def _last_touch(self, session_id: str) -> int:
        return self._touched.get(session_id, self._floor)


class Tracker:
    """One RESP3 connection with ``CLIENT TRACKING ON BCAST`` on the mark prefix, on the feed.

    ``connect`` makes a new (unconnected) ``redis-py`` connection; :meth:`ready` opens it on
    first use and reads pending invalidations and feed messages without blocking; ``feed`` is
    given each feed message's payload (it raises on one it cannot read). ``writer`` returns the
    store's writer id (it changes in a forked child, whose writes the parent must see). While the
    connection is down the cache is not used (every load goes to Redis); a failed open is
    retried after ``retry_after`` seconds.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        keys: Keys,
        writer: Callable[[], str],
        cache: SessionCache,
        *,
        retry_after: float = 1.0,
        feed: Callable[[str], None] | None = None,
    ) -> None:
        self._connect = connect
        self._feed = feed
        self._keys = keys
        self._writer = writer
        self._cache = cache
        self._retry_after = retry_after
        self._conn: Any = None
        self._failed_at: float | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.closed = False

    def ready(self) -> bool:
        """Open the tracking connection if needed and apply pending pushes; True when usable."""
        with self._lock:
            if self.closed:
                return False
            if self._pid != os.getpid():
                # A forked child must not read the parent's pushes from the shared socket: it
                # leaves that connection to the parent and opens its own.
                self._pid = os.getpid()
                self._conn = None
                self._cache.clear()
            if self._conn is None and not self._open():
                return False
            try:
                while self._conn.can_read(0):
                    self._conn.read_response(push_request=True)
            except Exception as exc:  # any failure: the pushes may be lost
                log.warning("redis history: cache tracking connection lost (%s)", exc)
                self._drop()
                return False
            return True

    def _open(self) -> bool:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self._retry_after:
            return False
        conn = self._connect()
        try:
            conn.connect()
            # redis-py hands RESP3 ``invalidate`` pushes to this hook of the connection's parser
            # (the hook its own client-side cache uses); the message is passed to us.
            conn._parser.set_invalidation_push_handler(self._on_push)
            conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._keys.marks)
            reply = conn.read_response()
            if reply not in ("OK", b"OK"):
                raise ConnectionError(f"CLIENT TRACKING answered {reply!r}")
            if self._feed is not None:
                conn._parser.set_pubsub_push_handler(self._on_message)
                conn.send_command("SUBSCRIBE", self._keys.feed)
                reply = conn.read_response(push_request=True)
                if not reply or _text(reply[0]) != "subscribe":
                    raise ConnectionError(f"SUBSCRIBE answered {reply!r}")
        except Exception as exc:
            log.warning("redis history: cache disabled for now, no tracking connection (%s)", exc)
            self._failed_at = time.monotonic()
            with contextlib.suppress(Exception):  # already failing; the socket is dropped
                conn.disconnect()
            return False
        # Nothing seen before tracking started can be trusted.
        self._cache.clear()
        self._conn = conn
        self._failed_at = None
        return True

    def _on_message(self, message: list[Any]) -> list[Any]:
        """A pub/sub push: hand a feed message's payload on (a bad one clears the cache)."""
        if len(message) == 3 and _text(message[0]) == "message" and self._feed is not None:
            try:
                self._feed(_text(message[2]))
            except Exception as exc:  # unreadable: which session it changed is unknown
                log.warning("redis history: unreadable feed message (%s); cache cleared", exc)
                self._cache.clear()
        return message

    def _on_push(self, message: list[Any]) -> None:
        keys = message[1] if len(message) > 1 else None
        if keys is None:
            self._cache.clear()
            return
        for key in keys:
            text = key.decode() if isinstance(key, bytes) else str(key)
            parsed = self._keys.parse_mark(text)
            if parsed is None:
                continue
            tag, writer = parsed
            if writer != self._writer():
                self._cache.invalidate(session_of_tag(tag))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._cache.clear()
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken socket may refuse; it is gone
                conn.disconnect()

    def close(self) -> None:
        """Close the tracking connection; the cache is not used afterwards."""
        with self._lock:
            self.closed = True
            self._drop()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
