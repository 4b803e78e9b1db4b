"""A response cache in an SQLite file (``sqlite:///path``), shared by the processes using it.

One table of entries (key, value, size, expiry) in insertion order (``rowid``), and a row of
totals kept by triggers, so that the bounds are checked without a scan. A write replaces the
key's entry, drops expired entries, then the oldest ones while the bounds are exceeded, in one
transaction. Operations are short and run inline, in async code too (as the SQLite history
store's).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Final

from llmproxy.cache.base import CacheSettings, ResponseCache
from llmproxy.errors import StoreError

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS response_cache (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS response_cache_expiry ON response_cache (expires_at);
CREATE TABLE IF NOT EXISTS response_cache_totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO response_cache_totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS response_cache_added AFTER INSERT ON response_cache BEGIN
    UPDATE response_cache_totals SET entries = entries + 1, bytes = bytes + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS response_cache_removed AFTER DELETE ON response_cache BEGIN
    UPDATE response_cache_totals SET entries = entries - 1, bytes = bytes - OLD.size;
END;
"""


class SQLiteCache(ResponseCache):
    """Entries in an SQLite file (WAL mode), one connection per store under a lock."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: CacheSettings | None = None,
        *,
        timeout: float = 5.0,
    ) -> None:
        self.settings = settings or CacheSettings()
        self.path = Path(path)
        self._clock = self.settings.clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        """A connection of this process (a forked child opens its own, see :attr:`_db`)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the response cache {self.path}: {exc}") from exc
        self._pid = os.getpid()
        return conn

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection (call with the lock held); reopened in a forked child."""
        if self._pid != os.getpid():  # a connection must not cross a fork
            self._conn = self._open()
        return self._conn

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"response cache {self.path} failed: {exc}")

    def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None (absent or expired)."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT value FROM response_cache WHERE key = ? AND expires_at > ?",
                    (key, self._clock()),
                ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds, evicting expired then oldest entries."""
        settings = self.settings
        now = self._clock()
        try:
            with self._lock:
                conn = self._db
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("DELETE FROM response_cache WHERE key = ?", (key,))
                    if len(value) <= settings.max_bytes:
                        conn.execute(
                            "INSERT INTO response_cache (key, value, size, expires_at)"
                            " VALUES (?, ?, ?, ?)",
                            (key, value, len(value), now + ttl),
                        )
                    conn.execute("DELETE FROM response_cache WHERE expires_at <= ?", (now,))
                    while True:
                        entries, size = conn.execute(
                            "SELECT entries, bytes FROM response_cache_totals"
                        ).fetchone()
                        surplus = entries - settings.max_entries
                        if surplus <= 0 and size <= settings.max_bytes:
                            break
                        conn.execute(
                            "DELETE FROM response_cache WHERE id IN"
                            " (SELECT id FROM response_cache ORDER BY id LIMIT ?)",
                            (max(surplus, 1) if surplus > 0 else 1,),
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def clear(self) -> None:
        """Drop every entry."""
        try:
            with self._lock:
                self._db.execute("DELETE FROM response_cache")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def stats(self) -> tuple[int, int]:
        """Entries kept and their bytes."""
        with self._lock:
            entries, size = self._db.execute(
                "SELECT entries, bytes FROM response_cache_totals"
            ).fetchone()
        return int(entries), int(size)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
