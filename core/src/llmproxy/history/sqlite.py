"""The embedded default history store: one SQLite file shared by threads and processes.

The file is in WAL mode with ``synchronous=NORMAL``: readers never block the writer, a commit
costs no fsync (a power loss may drop the last few commits, never corrupt the file), and
several processes may use the same file at once. WAL needs a local disk: do not put the file
on a network share.

Checkpoints (copying the WAL back into the database file, with an fsync) run on a background
thread, one per process, every :data:`CHECKPOINT_EVERY` write transactions of a file; left to
SQLite, every thousandth page written would pay for one inside somebody's call (a stall of
milliseconds, on the event loop in async code). The callers' own connection keeps SQLite's
automatic checkpoint as a backstop at :data:`AUTOCHECKPOINT_PAGES` pages, should the thread
fall behind.

The helpers :class:`_Database` and :data:`SCHEMA_VERSION` are also used by
:mod:`llmproxy.budget.sqlite`, so a history store and a ledger may share one file.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sqlite3
import threading
import time
import urllib.request
import weakref
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any, Final

from llmproxy.errors import InvalidRequest, LLMProxyError, StoreError
from llmproxy.history.base import HistoryRecord, SessionInfo
from llmproxy.history.codec import (
    blob_hashes,
    decode_parts,
    decode_state,
    encode_parts,
    encode_state,
)
from llmproxy.types import Message, ToolCall

SCHEMA_VERSION: Final = 1
"""The version of llmproxy's SQLite schema, kept in ``PRAGMA user_version``."""

CHECKPOINT_EVERY: Final = 128
"""Write transactions of one file between two background checkpoints of it."""
AUTOCHECKPOINT_PAGES: Final = 16384
"""The WAL size (pages) at which a caller's commit checkpoints itself, if the thread fell behind."""

_OPEN: weakref.WeakSet[_Database] = weakref.WeakSet()


class _Checkpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` for the files it is asked to.

    A passive checkpoint never waits for the writers or readers of other connections: it copies
    what it can and leaves the rest for the next one. It runs on its own short-lived connection,
    so the callers' connection and its lock are never held meanwhile; SQLite releases the GIL for
    the copy and the fsync. A failure is ignored (the next request, or the callers' automatic
    checkpoint, catches up).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._finished = threading.Condition(threading.Lock())
        self.done = 0
        self.done_by_path: collections.Counter[str] = collections.Counter()

    def request(self, path: str, timeout: float) -> None:
        """Ask for a checkpoint of ``path`` soon (requests for a file already waiting merge)."""
        with self._cond:
            self._pending[path] = timeout
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = self._thread = threading.Thread(
                    target=self._run, name="llmproxy-sqlite-checkpoint", daemon=True
                )
                thread.start()
            self._cond.notify()

    def reset_after_fork(self) -> None:
        """Forget the parent's thread and lock (a forked child starts its own on demand)."""
        self._cond = threading.Condition(threading.Lock())
        self._pending = {}
        self._thread = None
        self._finished = threading.Condition(threading.Lock())

    def wait_for(self, path: str, count: int, timeout: float) -> bool:
        """Wait until ``count`` checkpoints of ``path`` have finished; False if ``timeout`` ran out.

        The counts are the process's since it started: read :attr:`done_by_path` first and wait
        for one more.
        """
        with self._finished:
            return self._finished.wait_for(lambda: self.done_by_path[path] >= count, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                pending, self._pending = self._pending, {}
            for path, timeout in pending.items():
                self.checkpoint(path, timeout)

    def checkpoint(self, path: str, timeout: float) -> None:
        """One passive checkpoint of ``path`` on a connection of its own; errors are ignored."""
        try:
            # mode=rw: never create the file (a store's file deleted meanwhile stays deleted)
            uri = f"file:{urllib.request.pathname2url(os.path.abspath(path))}?mode=rw"
            conn = sqlite3.connect(uri, timeout=timeout, isolation_level=None, uri=True)
        except sqlite3.Error:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            with self._finished:
                self.done += 1
                self.done_by_path[path] += 1
                self._finished.notify_all()
        except sqlite3.Error:
            pass
        finally:
            conn.close()


_CHECKPOINTER: Final = _Checkpointer()


def _after_fork_in_child() -> None:
    # A connection must not cross a fork (SQLite's locks are per process), and a lock held by
    # another thread at fork time would stay held forever. Give every database in the child a
    # new lock and let it open a new connection on first use. The inherited connection is kept
    # (never used, never closed) because closing it could disturb the parent's file locks.
    _CHECKPOINTER.reset_after_fork()
    for database in list(_OPEN):
        database.lock = threading.Lock()
        if database.conn is not None:
            database.abandoned.append(database.conn)
            database.conn = None


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Database:
    """One SQLite connection shared by threads under :attr:`lock`; reopened in a forked child.

    Callers hold :attr:`lock`, take :meth:`connection` and map ``sqlite3.Error`` with
    :meth:`error`. The connection is in autocommit mode: a single statement is its own
    transaction and callers open ``BEGIN IMMEDIATE`` themselves for several. After each write
    transaction they call :meth:`wrote`, which schedules the background checkpoints.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float, kind: str, schema: str
    ) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.kind = kind
        self.lock = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        self.abandoned: list[sqlite3.Connection] = []
        self.closed = False
        self._schema = schema
        self._writes = 0
        self._on_disk = not (self.path == ":memory:" or self.path.startswith("file:"))
        self.generation = 0
        """Bumped whenever a connection is opened: ``PRAGMA data_version`` values are per
        connection, so a value read on an earlier one (before a fork) must not be compared."""
        self.conn = self._open()
        _OPEN.add(self)

    def wrote(self) -> None:
        """Count a committed write transaction; every so many, ask for a background checkpoint."""
        self._writes += 1
        if self._on_disk and not self._writes % CHECKPOINT_EVERY:
            _CHECKPOINTER.request(self.path, self.timeout)

    def connection(self) -> sqlite3.Connection:
        """Return the connection, opening a new one in a forked child; the caller holds the lock."""
        conn = self.conn
        if conn is None:
            if self.closed:
                raise StoreError(f"{self.kind} {self.path} is closed; create a new one to use it")
            conn = self.conn = self._open()
        return conn

    def error(self, exc: BaseException) -> StoreError:
        """Build the StoreError for a failure: the file, what happened and what to do."""
        text = str(exc) or type(exc).__name__
        lower = text.lower()
        if "locked" in lower or "busy" in lower:
            hint = (
                f"another connection kept the file locked for more than {self.timeout:g}s;"
                " retry, or open the store with a larger timeout"
            )
        elif "closed" in lower:
            hint = "the store was closed; create a new one"
        elif "not a database" in lower or "malformed" in lower or "corrupt" in lower:
            hint = "the file is not a usable SQLite database; move it aside or use another path"
        elif "full" in lower:
            hint = "the disk is full; free some space"
        elif "readonly" in lower or "read-only" in lower or "permission" in lower:
            hint = "make the file and its directory writable by this process"
        elif "unable to open" in lower or "i/o" in lower or "no such file" in lower:
            hint = (
                "check that the directory exists and is writable, and that the file is on a"
                " local disk (WAL mode does not work on network shares)"
            )
        else:
            hint = "check that the file is a writable SQLite database on a local disk"
        return StoreError(f"{self.kind} {self.path}: {text}; {hint}")

    def close(self) -> None:
        """Close the connection; later calls raise StoreError."""
        with self.lock:
            self.closed = True
            conn, self.conn = self.conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self.error(exc) from exc

    def _open(self) -> sqlite3.Connection:
        if self._on_disk:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"{self.kind} {self.path}: cannot create its directory ({exc});"
                    " choose a path in a writable directory"
                ) from exc
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=self.path.startswith("file:"),
            )
        except sqlite3.Error as exc:
            raise self.error(exc) from exc
        try:
            _enable_wal(conn, self.timeout)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.kind} {self.path}: the file has schema version {version} but this"
                    f" llmproxy knows version {SCHEMA_VERSION};"
                    " upgrade llmproxy or use another path"
                )
            # Idempotent, and run on every open so that a history store and a ledger can share
            # one file: each creates its own tables whatever the other did first.
            conn.executescript(
                f"BEGIN IMMEDIATE; {self._schema} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc) from exc
        except BaseException:
            conn.close()
            raise
        self.generation += 1
        return conn


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch a new file to WAL, waiting out another process doing the same.

    SQLite returns "database is locked" at once, without its busy handler, when two processes
    open a new file together and both ask for WAL (waiting could deadlock), so the switch is
    tried again, with a growing pause, until ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


# ``id`` is the rowid: a new row gets the largest id plus one, so ids follow append order
# within every session (even after deletes). AUTOINCREMENT would add a write per append.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    name TEXT,
    tool_calls TEXT,
    tool_call_id TEXT,
    reasoning TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0,
    model TEXT,
    provider TEXT,
    created_at REAL NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    user TEXT,
    record_id TEXT,
    parts TEXT,
    state TEXT
);
CREATE INDEX IF NOT EXISTS history_session ON history (session_id, id);
CREATE TABLE IF NOT EXISTS history_blobs (
    session_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (session_id, hash)
) WITHOUT ROWID;
"""
# ``parts`` and ``state`` (``llmproxy.history.codec``'s JSON, NULL when the message has none)
# came after ``record_id``: an older file gets them on open (see ``_migrate``). The binary data
# of parts is in ``history_blobs``, once per session and SHA-256: the same image sent twice in
# a session is stored once. Blobs live as long as their session (deleted with it).
# ``record_id`` (HistoryRecord.id) came after schema version 1's first release: a file made
# before it gets the column and the index on open (see ``_add_record_ids``). NULLs are distinct
# in a unique index, so records without an id are never refused.
_RECORD_ID_INDEX: Final = (
    "CREATE UNIQUE INDEX IF NOT EXISTS history_record_id ON history (record_id)"
)

_COLUMNS: Final = (
    "role, content, name, tool_calls, tool_call_id, reasoning, interrupted,"
    " model, provider, created_at, input_tokens, output_tokens, user, record_id, parts, state"
)
_INSERT_ONE: Final = "(" + ", ".join("?" * 17) + ")"
# SQL is built from the constants above only; values are always bound parameters.
_LOAD_ALL: Final = f"SELECT {_COLUMNS} FROM history WHERE session_id = ? ORDER BY id"  # noqa: S608
_LOAD_LAST: Final = f"SELECT {_COLUMNS} FROM history WHERE session_id = ? ORDER BY id DESC LIMIT ?"  # noqa: S608
_SESSIONS: Final = (
    "SELECT session_id, count(*), min(created_at), max(created_at) FROM history"
    " GROUP BY session_id ORDER BY max(created_at) DESC, max(id) DESC"
)
_DELETE: Final = "DELETE FROM history WHERE session_id = ?"
_DELETE_BLOBS: Final = "DELETE FROM history_blobs WHERE session_id = ?"
_INSERT_BLOB: Final = (
    "INSERT OR IGNORE INTO history_blobs (session_id, hash, data) VALUES (?, ?, ?)"
)
_BLOB_BATCH: Final = 500
"""Blob hashes fetched per ``SELECT ... IN (...)`` (well below SQLite's variable limit)."""
_MULTI_ROW_MAX: Final = 64
"""Appends of up to this many records are one multi-row INSERT (one statement, one round trip)."""


@contextlib.contextmanager
def immediate(db: _Database, *, wait: bool = True) -> Iterator[sqlite3.Connection | None]:
    """One ``BEGIN IMMEDIATE`` transaction under the database's lock.

    Committed when the block ends (unless the block rolled back itself), rolled back when it
    raises; SQLite's errors become :class:`~llmproxy.errors.StoreError`. Without ``wait`` it
    does not wait for another connection's write: the block gets None at once instead.
    """
    with db.lock:
        try:
            conn = db.connection()
            if not wait:
                conn.execute("PRAGMA busy_timeout = 0")
            busy = False
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if wait or "locked" not in str(exc).lower():
                    raise
                busy = True
            finally:
                if not wait:
                    conn.execute(f"PRAGMA busy_timeout = {int(db.timeout * 1000)}")
            if busy:
                yield None
                return
            try:
                yield conn
                if conn.in_transaction:
                    conn.execute("COMMIT")
                    db.wrote()
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise db.error(exc) from exc


@lru_cache(maxsize=_MULTI_ROW_MAX)
def _insert_sql(rows: int) -> str:
    values = ", ".join([_INSERT_ONE] * rows)
    # OR IGNORE: a row whose record_id is already stored is skipped (idempotent appends).
    return f"INSERT OR IGNORE INTO history (session_id, {_COLUMNS}) VALUES {values}"  # noqa: S608


def _tool_calls_json(calls: tuple[ToolCall, ...]) -> str | None:
    if not calls:
        return None
    return json.dumps(
        [{"id": call.id, "name": call.name, "arguments": call.arguments} for call in calls],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _row_values(record: HistoryRecord, blobs: dict[str, bytes]) -> tuple[Any, ...]:
    """The row of a record; the blobs its parts reference are added to ``blobs``."""
    message = record.message
    parts, found = encode_parts(message.parts)
    blobs.update(found)
    return (
        record.session_id,
        message.role,
        message.content,
        message.name,
        _tool_calls_json(message.tool_calls),
        message.tool_call_id,
        message.reasoning,
        1 if message.interrupted else 0,
        record.model,
        record.provider,
        record.created_at,
        record.input_tokens,
        record.output_tokens,
        record.user,
        record.id,
        parts,
        encode_state(message.state),
    )


def _records(
    session_id: str, rows: list[Any], blobs: dict[str, bytes] | None = None
) -> list[HistoryRecord]:
    records = []
    for (
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
        reasoning,
        interrupted,
        model,
        provider,
        created_at,
        input_tokens,
        output_tokens,
        user,
        record_id,
        parts,
        state,
    ) in rows:
        calls = (
            tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in json.loads(tool_calls))
            if tool_calls
            else ()
        )
        message = Message(
            role,
            content,
            name,
            calls,
            tool_call_id,
            reasoning,
            bool(interrupted),
            parts=decode_parts(parts, (blobs or {}).get) if parts else (),
            state=decode_state(state),
        )
        records.append(
            HistoryRecord(
                session_id,
                message,
                model,
                provider,
                created_at,
                input_tokens,
                output_tokens,
                user,
                record_id,
            )
        )
    return records


_ADDED_COLUMNS: Final = (("record_id", "TEXT"), ("parts", "TEXT"), ("state", "TEXT"))
"""Columns added to ``history`` after schema version 1's first release, in order."""


def _migrate(db: _Database) -> None:
    """Give a file made by an older release the columns and index it lacks.

    Checked without a lock first (the usual case: nothing to do), then again inside one
    ``BEGIN IMMEDIATE`` so that two processes opening an old file at once migrate it once.
    """

    def missing(conn: sqlite3.Connection) -> tuple[list[tuple[str, str]], bool]:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(history)")}
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(history)")}
        absent = [(name, kind) for name, kind in _ADDED_COLUMNS if name not in columns]
        return absent, "history_record_id" not in indexes

    with db.lock:
        try:
            columns, index = missing(db.connection())
            if not columns and not index:
                return
        except sqlite3.Error as exc:
            raise db.error(exc) from exc
    with immediate(db) as conn:
        assert conn is not None  # (None only without waiting)
        columns, index = missing(conn)
        for name, kind in columns:
            conn.execute(f"ALTER TABLE history ADD COLUMN {name} {kind}")
        if index:
            conn.execute(_RECORD_ID_INDEX)


def _fetch_blobs(conn: sqlite3.Connection, session_id: str, keys: list[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for start in range(0, len(keys), _BLOB_BATCH):
        batch = keys[start : start + _BLOB_BATCH]
        marks = ", ".join("?" * len(batch))
        sql = f"SELECT hash, data FROM history_blobs WHERE session_id = ? AND hash IN ({marks})"  # noqa: S608
        found.update(conn.execute(sql, (session_id, *batch)).fetchall())
    return found


def _referenced(rows: list[Any]) -> list[str]:
    """The blob hashes the rows' parts reference (``parts`` is the second last column)."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in blob_hashes(row[-2]):
            keys[key] = None
    return list(keys)


# Four index probes (min() and max() together would scan the session's rows).
_SIGNATURE: Final = (
    "SELECT (SELECT id FROM history WHERE session_id = ?1 ORDER BY id LIMIT 1),"
    " (SELECT id FROM history WHERE session_id = ?1 ORDER BY id DESC LIMIT 1),"
    " (SELECT record_id FROM history WHERE session_id = ?1 ORDER BY id LIMIT 1),"
    " (SELECT record_id FROM history WHERE session_id = ?1 ORDER BY id DESC LIMIT 1)"
)
_DATA_VERSION: Final = "PRAGMA data_version"
"""Changes whenever another connection (this process's or another's) commits to the file; this
connection's own commits leave it as it was."""
_LOAD_AFTER: Final = (
    f"SELECT id, {_COLUMNS} FROM history WHERE session_id = ? AND id > ? ORDER BY id"  # noqa: S608
)

CACHE_BYTES: Final = 32 * 1024 * 1024
"""About how much memory a :class:`SQLiteHistoryStore` spends on decoded records kept for reuse
(each counted as its text's length plus :data:`_RECORD_BYTES`); the least recently loaded
sessions are dropped first."""
_RECORD_BYTES: Final = 512
"""What a decoded record costs besides its text: the record, its message and their fields."""


def _weight(records: Sequence[HistoryRecord]) -> int:
    return sum(len(record.message.content) + _RECORD_BYTES for record in records)


class _Cached:
    """A session's decoded newest records, and what identifies the rows they were read from."""

    __slots__ = ("checked", "complete", "pending", "records", "signature", "version")

    def __init__(
        self,
        records: list[HistoryRecord],
        complete: bool,
        signature: tuple[Any, ...],
        version: tuple[int, int] | None,
    ) -> None:
        self.records = records  # the newest records, oldest first
        self.complete = complete  # records is the whole session
        # the session's oldest and newest row ids and their record ids, then
        self.signature = signature
        # (connection generation, PRAGMA data_version) when records were last known to be
        # the file's: while the connection reads the same value, no other connection has
        # committed since, and this one's own appends extended records (None: check the rows)
        self.version = version
        # the last ``pending`` records are this connection's own appends, not yet confirmed
        # by a load reading ``version`` unchanged (another connection may have committed
        # before them); ``checked`` is the signature without them
        self.pending = 0
        self.checked = signature


class _SessionCache:
    """Decoded records of recently loaded sessions, checked against the file on every load.

    A long session's load decoded every row on every call (a 1,000-message session: about
    2 ms). A hit costs one ``PRAGMA data_version`` when no other connection has committed to
    the file since the entry was last checked: the value changes with every other
    connection's commit (any process's), never with this connection's own, and this store's
    own appends extend the entry themselves (:meth:`appended`; confirmed by that same check),
    so an unchanged value means the entry is the file's. Otherwise the hit costs one query of
    four index probes: the session's oldest and newest row ids and their record ids. Rows are
    only ever appended to a session or deleted with the whole session, so equal values mean
    the same rows; a newer newest row, with the same oldest, means rows were appended, and
    those (``id`` above the cached newest) are read and decoded alone; anything else reloads.
    A session written anew after a delete has new record ids (the Proxy gives every record
    one); a session whose oldest or newest record has none is not cached. Bounded by
    :data:`CACHE_BYTES`.
    """

    def __init__(self) -> None:
        self._sessions: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._bytes = 0

    def fresh(
        self, conn: sqlite3.Connection, generation: int, session_id: str, limit: int | None
    ) -> list[HistoryRecord] | None:
        """The cached answer when no other connection committed since the entry's check, or None.

        One ``PRAGMA data_version`` (its own short read transaction); the caller holds the
        store's lock and has no transaction open.
        """
        cached = self._sessions.get(session_id)
        if cached is None or cached.version is None:
            return None
        (version,) = conn.execute(_DATA_VERSION).fetchone()
        if (generation, version) != cached.version:
            return None
        cached.pending = 0  # nobody else wrote: this connection's appends were the only ones
        cached.checked = cached.signature
        return self._answer(session_id, cached, limit)

    def load(
        self, conn: sqlite3.Connection, session_id: str, limit: int | None, version: tuple[int, int]
    ) -> list[HistoryRecord] | None:
        """The session's last ``limit`` records from the cache (reading new rows), or None.

        The caller holds the store's lock and has a read transaction open on ``conn``, whose
        ``(generation, data_version)`` is ``version``.
        """
        cached = self._sessions.get(session_id)
        if cached is None:
            return None
        if cached.pending:
            # Another connection wrote since (perhaps before these appends): take them back
            # and read every row after the last checked one.
            if cached.pending > len(cached.records):
                self.drop(session_id)
                return None
            taken = cached.records[-cached.pending :]
            del cached.records[-cached.pending :]
            self._bytes -= _weight(taken)
            cached.signature = cached.checked
            cached.pending = 0
        signature = conn.execute(_SIGNATURE, (session_id,)).fetchone()
        if signature != cached.signature:
            oldest, newest, oldest_record, newest_record = signature
            before = cached.signature
            if (
                newest_record is None
                or (oldest, oldest_record) != (before[0], before[2])
                or newest is None
                or newest <= before[1]
            ):
                self.drop(session_id)
                return None
            rows = conn.execute(_LOAD_AFTER, (session_id, before[1])).fetchall()
            plain = [row[1:] for row in rows]
            if not plain or rows[-1][0] != newest or plain[-1][-3] != newest_record:
                self.drop(session_id)  # not what the check saw: reload
                return None
            keys = _referenced(plain)
            blobs = _fetch_blobs(conn, session_id, keys) if keys else {}
            added = _records(session_id, plain, blobs)
            cached.records.extend(added)  # (loads return copies)
            cached.signature = signature
            self._bytes += _weight(added)
        cached.version = version
        cached.checked = cached.signature
        return self._answer(session_id, cached, limit)

    def _answer(
        self, session_id: str, cached: _Cached, limit: int | None
    ) -> list[HistoryRecord] | None:
        """The last ``limit`` records of a current entry, or None when it holds fewer."""
        if not cached.complete and (limit is None or limit > len(cached.records)):
            return None  # more asked for than is cached: the caller reloads (and stores it)
        self._sessions.move_to_end(session_id)
        self._trim(session_id, limit)
        records = cached.records
        return records[:] if limit is None else records[-limit:]

    def store(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        records: list[HistoryRecord],
        limit: int | None,
        version: tuple[int, int],
    ) -> None:
        """Keep ``records`` (the session's last ``limit``, oldest first) as read just now.

        The caller has a read transaction open on ``conn``, whose
        ``(generation, data_version)`` is ``version``.
        """
        self.drop(session_id)
        signature = conn.execute(_SIGNATURE, (session_id,)).fetchone()
        _oldest, _newest, oldest_record, newest_record = signature
        if oldest_record is None or newest_record is None:
            return
        if not records or records[-1].id != newest_record:
            return
        complete = limit is None or len(records) < limit or records[0].id == oldest_record
        self._sessions[session_id] = _Cached(records[:], complete, tuple(signature), version)
        self._bytes += _weight(records)
        while self._bytes > CACHE_BYTES and self._sessions:
            _sid, dropped = self._sessions.popitem(last=False)
            self._bytes -= _weight(dropped.records)

    def appended(self, records: Sequence[HistoryRecord], inserted: int, newest: int | None) -> None:
        """Apply this connection's append of ``records`` (committed just now) to the cache.

        ``inserted`` is how many rows the INSERT added and ``newest`` the last one's row id.
        A cached session gets the records appended, pending, when the write is exactly them,
        one session's, each with a record id: the next load confirms them when ``PRAGMA
        data_version`` still reads as at the entry's last check (no other connection committed
        in between, before or after them), and else takes them back and reads the rows after
        the last checked one. Any other write has the entry checked on its next load. The
        caller holds the store's lock.
        """
        first = records[0].session_id
        cached = self._sessions.get(first)
        single = all(record.session_id == first for record in records)
        if cached is not None and cached.version is not None:
            if (
                single
                and inserted == len(records)
                and newest is not None
                and all(record.id is not None for record in records)
            ):
                added = list(records)
                cached.records.extend(added)
                cached.pending += len(added)
                signature = cached.signature
                cached.signature = (signature[0], newest, signature[2], added[-1].id)
                self._bytes += _weight(added)
            else:
                cached.version = None
        if not single:
            self.stale({record.session_id for record in records})

    def stale(self, session_ids: Iterable[str]) -> None:
        """Have these sessions' entries checked against the rows on their next load."""
        for session_id in session_ids:
            cached = self._sessions.get(session_id)
            if cached is not None:
                cached.version = None

    def _trim(self, session_id: str, limit: int | None) -> None:
        """Keep only the records loads ask for (appends grow them by an exchange a call)."""
        cached = self._sessions[session_id]
        excess = len(cached.records) - limit if limit is not None else 0
        if excess > 0:
            self._bytes -= _weight(cached.records[:excess])
            del cached.records[:excess]
            cached.complete = False

    def drop(self, session_id: str) -> None:
        """Forget a session (deleted or changed)."""
        cached = self._sessions.pop(session_id, None)
        if cached is not None:
            self._bytes -= _weight(cached.records)


class SQLiteHistoryStore:
    """History in one SQLite file, created with its directory on first use.

    Safe for several threads (one connection under a lock) and several processes (SQLite's
    file locks; ``timeout`` is how long a writer waits for another before failing). Every
    failure is raised as :class:`~llmproxy.errors.StoreError` naming the file and what to do.

    The async methods run the sync ones inline on the event loop rather than in a thread: a
    load or append is a few tens of microseconds, well below the cost of a thread hop. The
    exception is write contention from another process, when a call may wait up to
    ``timeout`` seconds; WAL mode keeps that rare because readers never block writers.

    Appends are idempotent by record id: a unique index on ``record_id`` and ``INSERT OR
    IGNORE`` skip a record whose id is already stored (records without an id always go in).

    Loads reuse the decoded records of recently loaded sessions (about :data:`CACHE_BYTES` in
    all), checked against the file on every load, so a long session is not decoded again on
    every call: one ``PRAGMA data_version`` when no other connection wrote to the file since
    (this store's own appends extend the cached session), else four index probes, and only
    rows appended since (by any process) are read.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self._db = _Database(path, timeout=timeout, kind="history store", schema=_SCHEMA)
        self._cache = _SessionCache()
        try:
            _migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    def load(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Return the last ``limit`` records of a session (all when None), oldest first."""
        if limit is not None and limit <= 0:
            if limit < 0:
                raise InvalidRequest(
                    f"history limit must be >= 0 or None, got {limit}", field="limit"
                )
            return []
        db = self._db
        cache = self._cache
        with db.lock:
            try:
                conn = db.connection()
                found = cache.fresh(conn, db.generation, session_id, limit)
                if found is not None:
                    return found
                conn.execute("BEGIN")  # one snapshot for the check and the rows
                try:
                    try:
                        (data_version,) = conn.execute(_DATA_VERSION).fetchone()
                        version = (db.generation, data_version)
                        found = cache.load(conn, session_id, limit, version)
                        if found is not None:
                            return found
                        rows, blobs = self._read(conn, session_id, limit)
                        if limit is not None:
                            rows.reverse()
                        records = _records(session_id, rows, blobs)
                    except (ValueError, TypeError, KeyError, LLMProxyError) as exc:
                        cache.drop(session_id)
                        raise StoreError(
                            f"history store {db.path}: session {session_id!r} holds a malformed"
                            f" row ({exc}); the file was written by something other than"
                            " llmproxy: delete the session"
                        ) from exc
                    cache.store(conn, session_id, records, limit, version)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                cache.drop(session_id)
                raise db.error(exc) from exc
        return records

    @staticmethod
    def _read(
        conn: sqlite3.Connection, session_id: str, limit: int | None
    ) -> tuple[list[Any], dict[str, bytes]]:
        """The session's rows (newest first when limited) and the blobs their parts reference."""
        if limit is None:
            rows = conn.execute(_LOAD_ALL, (session_id,)).fetchall()
        else:
            rows = conn.execute(_LOAD_LAST, (session_id, limit)).fetchall()
        keys = _referenced(rows)
        return rows, _fetch_blobs(conn, session_id, keys) if keys else {}

    def append(self, records: Sequence[HistoryRecord]) -> None:
        """Append records atomically (one statement for up to 64 records, else one transaction).

        The blobs of the records' parts go in the same transaction, each once per session.
        """
        if not records:
            return
        db = self._db
        blobs: dict[str, bytes] = {}
        rows = [_row_values(record, blobs) for record in records]
        try:
            if len(records) <= _MULTI_ROW_MAX and not blobs:
                params: list[Any] = [value for row in rows for value in row]
                sql = _insert_sql(len(records))
                with db.lock:
                    own = db.connection()
                    cursor = own.execute(sql, params)
                    db.wrote()
                    self._cache.appended(records, cursor.rowcount, cursor.lastrowid)
            else:
                sessions = {record.session_id for record in records}
                with immediate(db) as conn:
                    assert conn is not None  # (None only without waiting)
                    if blobs:
                        # A blob is keyed by its session: every session of the append gets
                        # the blobs (an append holds one session's exchange in practice).
                        conn.executemany(
                            _INSERT_BLOB,
                            [(sid, key, data) for sid in sessions for key, data in blobs.items()],
                        )
                    if len(rows) <= _MULTI_ROW_MAX:
                        conn.execute(
                            _insert_sql(len(rows)), [value for row in rows for value in row]
                        )
                    else:
                        conn.executemany(_insert_sql(1), rows)
                    self._cache.stale(sessions)
        except sqlite3.Error as exc:
            raise db.error(exc) from exc

    def sessions(self) -> list[SessionInfo]:
        """List stored sessions, most recently updated first."""
        db = self._db
        with db.lock:
            try:
                rows = db.connection().execute(_SESSIONS).fetchall()
            except sqlite3.Error as exc:
                raise db.error(exc) from exc
        return [SessionInfo(sid, count, first, last) for sid, count, first, last in rows]

    def delete(self, session_id: str) -> int:
        """Delete a session and its blobs; return how many messages were removed."""
        with self._db.lock:
            self._cache.drop(session_id)
        with immediate(self._db) as conn:
            assert conn is not None  # (None only without waiting)
            removed: int = conn.execute(_DELETE, (session_id,)).rowcount
            conn.execute(_DELETE_BLOBS, (session_id,))
            # (again: a load between the drop above and this transaction may have cached it,
            # and this connection's own delete leaves PRAGMA data_version as it was)
            self._cache.drop(session_id)
        return removed

    def blob_count(self, session_id: str) -> int:
        """How many distinct blobs (binary part data) the session keeps."""
        db = self._db
        with db.lock:
            try:
                sql = "SELECT count(*) FROM history_blobs WHERE session_id = ?"
                (count,) = db.connection().execute(sql, (session_id,)).fetchone()
            except sqlite3.Error as exc:
                raise db.error(exc) from exc
        return int(count)

    def close(self) -> None:
        """Close the connection; the store is not used afterwards."""
        self._db.close()

    async def aload(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Async :meth:`load` (runs inline; see the class docstring)."""
        return self.load(session_id, limit)

    async def aappend(self, records: Sequence[HistoryRecord]) -> None:
        """Async :meth:`append` (runs inline; see the class docstring)."""
        self.append(records)

    async def asessions(self) -> list[SessionInfo]:
        """Async :meth:`sessions` (runs inline; see the class docstring)."""
        return self.sessions()

    async def adelete(self, session_id: str) -> int:
        """Async :meth:`delete` (runs inline; see the class docstring)."""
        return self.delete(session_id)
