"""``sqlite:///path``: the default usage log, one SQLite file (WAL) shared by processes.

Each batch of calls is one transaction (one multi-row ``INSERT``) from the background writer;
queries group in SQL over the ``ts`` index. With ``retention``, rows older than that are deleted
at most once a minute, after a write.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from llmproxy.errors import StoreError
from llmproxy_usage_log.base import (
    NONE,
    Dimension,
    LimitHit,
    Point,
    Totals,
    UsageLog,
    UsageRecord,
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    "user" TEXT,
    session_id TEXT,
    "key" TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost REAL,
    latency REAL NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    limit_kind TEXT,
    policy TEXT,
    attempts INTEGER NOT NULL,
    streamed INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    tags TEXT,
    operation TEXT NOT NULL DEFAULT 'chat',
    cache_hit INTEGER NOT NULL DEFAULT 0,
    alias TEXT,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
"""
_COLUMNS: Final = (
    'ts, model, provider, "user", session_id, "key", input_tokens, output_tokens,'
    " cached_input_tokens, reasoning_tokens, cost, latency, outcome, error, limit_kind, policy,"
    " attempts, streamed, estimated, tags, operation, cache_hit, alias, cache_write_tokens"
)
_ROW: Final = "(" + ", ".join("?" * 24) + ")"
_MAX_ROWS_PER_INSERT: Final = 32  # 32 * 24 parameters stays under SQLite's 999 on old builds


def _chunk(left: int) -> int:
    """Rows for the next INSERT: the largest power of two up to ``left`` and the maximum.

    So a batch of any size is written with at most six distinct statements (32, 16, ..., 1
    rows), and the connection's statement cache holds six, not one per batch size.
    """
    return min(_MAX_ROWS_PER_INSERT, 1 << (left.bit_length() - 1))


@lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    """The INSERT of ``rows`` calls."""
    return f"INSERT INTO calls ({_COLUMNS}) VALUES " + ", ".join([_ROW] * rows)  # noqa: S608


_GROUP: Final = {
    "model": "model",
    "provider": "provider",
    "user": f"coalesce(\"user\", '{NONE}')",
    "key": f"coalesce(\"key\", '{NONE}')",
    "alias": "coalesce(alias, model)",
}
_SUMS: Final = (
    "count(*), sum(outcome = 'error'), sum(input_tokens), sum(output_tokens),"
    " sum(cached_input_tokens), sum(reasoning_tokens), coalesce(sum(cost), 0), sum(cache_hit),"
    " sum(cache_write_tokens)"
)


def _where(since: float | None, until: float | None) -> tuple[str, list[float]]:
    parts: list[str] = []
    args: list[float] = []
    if since is not None:
        parts.append("ts >= ?")
        args.append(since)
    if until is not None:
        parts.append("ts < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def _totals(group: str, row: Sequence[Any]) -> Totals:
    calls, errors, inp, out, cached, reasoning, cost, hits, writes = row
    return Totals(
        group,
        int(calls),
        int(errors or 0),
        int(inp or 0),
        int(out or 0),
        int(cached or 0),
        int(reasoning or 0),
        float(cost or 0.0),
        int(hits or 0),
        int(writes or 0),
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a log written by an older version up to the schema.

    Adds ``operation`` (as chat), ``cache_hit`` (no), ``alias`` (none) and
    ``cache_write_tokens`` (0) to a log written before them.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
    added = {
        "operation": "TEXT NOT NULL DEFAULT 'chat'",
        "cache_hit": "INTEGER NOT NULL DEFAULT 0",
        "alias": "TEXT",
        "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
    }
    for column, kind in added.items():
        if column in columns:
            continue
        try:
            conn.execute(f"ALTER TABLE calls ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process migrated it first
                raise


class SQLiteUsageLog(UsageLog):
    """A usage log in one SQLite file; ``retention`` seconds of calls are kept (None: all)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float | None = None,
        flush_interval: float = 0.25,
        batch: int = 256,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(flush_interval=flush_interval, batch=batch)
        self.path = Path(path)
        self.retention = retention
        self._lock = threading.Lock()
        self._last_prune = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            _migrate(conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"usage log {self.path}: {exc}; check that the directory is writable and the"
                " file is an SQLite database on a local disk"
            ) from exc
        self._conn = conn

    def describe(self) -> str:
        """``sqlite:///<path>``."""
        return f"sqlite:///{self.path}"

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"usage log {self.path}: {exc}") from exc

    def _write(self, records: Sequence[UsageRecord]) -> None:
        rows: list[Any] = []
        for r in records:
            rows.append(
                (
                    r.ts,
                    r.model,
                    r.provider,
                    r.user,
                    r.session_id,
                    r.key,
                    r.input_tokens,
                    r.output_tokens,
                    r.cached_input_tokens,
                    r.reasoning_tokens,
                    r.cost,
                    r.latency,
                    r.outcome,
                    r.error,
                    r.limit,
                    r.policy,
                    r.attempts,
                    int(r.streamed),
                    int(r.estimated),
                    json.dumps(dict(r.tags)) if r.tags else None,
                    r.operation,
                    int(r.cache_hit),
                    r.alias,
                    r.cache_write_tokens,
                )
            )
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    start = 0
                    while start < len(rows):
                        size = _chunk(len(rows) - start)
                        chunk = rows[start : start + size]
                        start += size
                        conn.execute(_insert_sql(size), [v for row in chunk for v in row])
                    now = time.time()
                    if self.retention is not None and now - self._last_prune > 60:
                        self._last_prune = now
                        conn.execute("DELETE FROM calls WHERE ts < ?", (now - self.retention,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"usage log {self.path}: {exc}") from exc

    def _totals(self, by: Dimension, since: float | None, until: float | None) -> list[Totals]:
        where, args = _where(since, until)
        group = _GROUP[by]
        rows = self._query(
            f"SELECT {group}, {_SUMS} FROM calls{where} GROUP BY 1",  # noqa: S608
            args,
        )
        return [_totals(str(row[0]), row[1:]) for row in rows]

    def _summary(self, since: float | None, until: float | None) -> Totals:
        where, args = _where(since, until)
        (row,) = self._query(f"SELECT {_SUMS} FROM calls{where}", args)  # noqa: S608
        return _totals("*", row)

    def _series(
        self, by: Dimension, since: float, until: float | None, bucket: float
    ) -> list[Point]:
        where, args = _where(since, until)
        group = _GROUP[by]
        rows = self._query(
            f"SELECT CAST(ts / ? AS INTEGER) AS b, {group}, {_SUMS} FROM calls{where}"  # noqa: S608
            " GROUP BY 1, 2",
            [bucket, *args],
        )
        return [Point(float(row[0]) * bucket, _totals(str(row[1]), row[2:])) for row in rows]

    def _recent(self, limit: int, key: str | None, user: str | None) -> list[UsageRecord]:
        parts: list[str] = []
        args: list[Any] = []
        if key is not None:
            parts.append('"key" = ?')
            args.append(key)
        if user is not None:
            parts.append('"user" = ?')
            args.append(user)
        where = (" WHERE " + " AND ".join(parts)) if parts else ""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM calls{where} ORDER BY ts DESC, id DESC LIMIT ?",  # noqa: S608
            [*args, limit],
        )
        out: list[UsageRecord] = []
        for row in rows:
            values = list(row)
            values[17] = bool(values[17])
            values[18] = bool(values[18])
            values[19] = json.loads(values[19]) if values[19] else {}
            values[21] = bool(values[21])
            out.append(UsageRecord(*values))
        return out

    def _limit_hits(self, since: float | None, until: float | None) -> list[LimitHit]:
        where, args = _where(since, until)
        where = (where + " AND" if where else " WHERE") + " limit_kind IS NOT NULL"
        rows = self._query(
            f"SELECT limit_kind, coalesce(policy, '{NONE}'), count(*), max(ts)"  # noqa: S608
            f" FROM calls{where} GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
            args,
        )
        return [LimitHit(str(k), str(p), int(n), float(last)) for k, p, n, last in rows]

    def _close(self) -> None:
        with self._lock:
            self._conn.close()
