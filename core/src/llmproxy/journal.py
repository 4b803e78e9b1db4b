"""A local, durable journal of writes that could not reach their store, replayed when it is back.

When the last write of a call (a ledger's settle, a history append, or both) raises
:class:`~llmproxy.errors.StoreError`, the answer was already produced and paid for upstream: the
Proxy writes what it could not write into this journal and still returns the answer, and
:func:`replay` (or :func:`areplay`) applies the entries once the store answers again. Both
writes are idempotent (a ledger's settle per reservation id, a history append per
:attr:`~llmproxy.history.base.HistoryRecord.id`), so replaying a write the store did apply (a
client timeout while a frozen Redis applied it later) changes nothing: the spend is recorded
and the messages stored exactly once, late rather than never, across a restart too.

The journal is one SQLite file, ``journal.db`` in the data dir (``LLMPROXY_DATA_DIR``), in WAL
mode with ``synchronous=FULL``: once :meth:`Journal.add` returns, the entry survives the process
being killed and the machine losing power. Several processes and threads on one machine may
share it (each entry is applied by whoever replays it first; a second application is a no-op
by idempotence). It is created readable by its owner only (it holds prompts and answers).

Entries are keyed by the URL of the store they are for (a password in it is replaced by
``***``), so a replay applies an entry only to the ledger and history store it was meant for.
``memory://`` stores are never journaled: their data dies with the process, so an entry for
them could never be applied; :meth:`Journal.add` refuses them (:func:`journaled` says which
URLs qualify).

Bounded: at most ``max_entries`` (default :data:`MAX_ENTRIES`) entries and ``max_bytes``
(default :data:`MAX_BYTES`) of encoded entries are kept; beyond either, :meth:`Journal.add`
raises :class:`~llmproxy.errors.StoreError` (the write is lost and the caller is told; nothing
is ever dropped silently).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import cattrs
from attrs import frozen

from llmproxy.budget.base import Ledger, Reservation
from llmproxy.env import data_dir
from llmproxy.errors import InvalidRequest, LLMProxyError, StoreError
from llmproxy.history.base import HistoryRecord, HistoryStore
from llmproxy.history.codec import decode_parts, encode_parts
from llmproxy.history.sqlite import _Database, immediate
from llmproxy.types import Part

log = logging.getLogger("llmproxy.journal")

FILE_NAME: Final = "journal.db"
"""The journal's file name in the data dir."""
MAX_ENTRIES: Final = 100_000
"""The default cap on pending entries."""
MAX_BYTES: Final = 1 << 30
"""The default cap on the encoded size of pending entries (1 GiB)."""
FORMAT: Final = 1
"""The version of an entry's encoding, stored with it (a newer one is left for a newer llmproxy)."""

_SETTLE_KEYS: Final = frozenset(("tokens", "requests", "cost"))

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ledger_url TEXT,
    history_url TEXT,
    format INTEGER NOT NULL,
    reservation TEXT,
    settle TEXT,
    records TEXT,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS journal_totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO journal_totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS journal_added AFTER INSERT ON journal BEGIN
    UPDATE journal_totals SET entries = entries + 1, bytes = bytes + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS journal_removed AFTER DELETE ON journal BEGIN
    UPDATE journal_totals SET entries = entries - 1, bytes = bytes - OLD.size;
END;
"""
# AUTOINCREMENT: an id is never reused, so a replayer marking an entry done can never delete a
# newer entry another process added under the same id meanwhile.

_PENDING: Final = (
    "SELECT id, ledger_url, history_url, format, reservation, settle, records, created_at,"
    " attempts FROM journal WHERE id > ? AND (ledger_url IS NULL OR ledger_url = ?)"
    " AND (history_url IS NULL OR history_url = ?) ORDER BY id LIMIT ?"
)

_converter = cattrs.Converter()
_PARTS_TYPE: Final = tuple[Part, ...]


def _unstructure_parts(parts: tuple[Part, ...]) -> dict[str, Any] | None:
    # The history codec's JSON, with the blobs inline in base64 (a journal entry is one row).
    text, blobs = encode_parts(parts)
    if text is None:
        return None
    return {"parts": text, "blobs": {k: base64.b64encode(v).decode() for k, v in blobs.items()}}


def _structure_parts(value: dict[str, Any] | None, _type: object) -> tuple[Part, ...]:
    if not value:  # None, or [] from an entry written before parts had this form
        return ()
    blobs = {k: base64.b64decode(v, validate=True) for k, v in value["blobs"].items()}
    return decode_parts(value["parts"], blobs.get)


_converter.register_unstructure_hook_func(lambda t: t == _PARTS_TYPE, _unstructure_parts)
_converter.register_structure_hook_func(lambda t: t == _PARTS_TYPE, _structure_parts)


def journaled(url: str | None) -> bool:
    """Whether writes to the store at ``url`` can be journaled (not None, not ``memory://``)."""
    return bool(url) and urllib.parse.urlsplit(str(url)).scheme.lower() != "memory"


def store_key(url: str) -> str:
    """The URL an entry is keyed by: ``url`` with a password replaced by ``***``.

    >>> store_key("redis://:secret@cache:6379/0")
    'redis://:***@cache:6379/0'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def encode_reservation(reservation: Reservation) -> str:
    """A reservation as JSON text (what the journal stores)."""
    return json.dumps(_converter.unstructure(reservation), separators=(",", ":"))


def decode_reservation(text: str) -> Reservation:
    """The reservation :func:`encode_reservation` encoded."""
    result: Reservation = _converter.structure(json.loads(text), Reservation)
    return result


def encode_records(records: Sequence[HistoryRecord]) -> str:
    """History records as JSON text (every field, message parts included)."""
    return json.dumps(
        _converter.unstructure(list(records), list[HistoryRecord]), separators=(",", ":")
    )


def decode_records(text: str) -> tuple[HistoryRecord, ...]:
    """The records :func:`encode_records` encoded."""
    return tuple(_converter.structure(json.loads(text), list[HistoryRecord]))


@frozen
class Pending:
    """One journaled entry: a settle for ``ledger_url`` and/or records for ``history_url``.

    ``reservation`` and ``settle`` (the keyword arguments of ``Ledger.settle``: ``tokens``,
    ``requests``, ``cost``) are None when there is no settle to apply (or it was applied
    already); ``records`` is empty when there is no history write. ``attempts`` counts failed
    replays. The URLs are as keyed (see :func:`store_key`).
    """

    id: int
    ledger_url: str | None
    history_url: str | None
    reservation: Reservation | None
    settle: Mapping[str, Any] | None
    records: tuple[HistoryRecord, ...]
    created_at: float
    attempts: int


class _JournalFile(_Database):
    """The journal's connection: the shared SQLite helper, with ``synchronous=FULL``."""

    def _open(self) -> sqlite3.Connection:
        conn = super()._open()
        try:
            # FULL: a commit returns only once the WAL is on disk (survives power loss).
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc) from exc
        return conn


class Journal:
    """The append-only journal of writes waiting for their store; see the module docstring.

    Thread-safe (one connection under a lock), and several processes may open the same file.
    ``timeout`` is how long a write waits for another process's. Every failure of the file
    itself is a :class:`~llmproxy.errors.StoreError` naming it and what to do.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        timeout: float = 5.0,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise InvalidRequest(
                f"journal caps must be positive, got max_entries={max_entries!r},"
                f" max_bytes={max_bytes!r}",
                field="max_entries" if max_entries < 1 else "max_bytes",
            )
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        _create_private(self.path)
        self._db = _JournalFile(self.path, timeout=timeout, kind="journal", schema=_SCHEMA)
        self._warned: set[int] = set()

    @classmethod
    def in_data_dir(cls, environ: Mapping[str, str]) -> Journal:
        """The journal in the data dir (``LLMPROXY_DATA_DIR``): ``journal.db``."""
        return cls(data_dir(environ) / FILE_NAME)

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    def add(
        self,
        *,
        ledger_url: str | None,
        history_url: str | None,
        reservation: Reservation | None,
        settle: Mapping[str, Any] | None,
        records: Sequence[HistoryRecord],
    ) -> int:
        """Journal a settle and/or history records; durable on disk when it returns its id.

        ``settle`` holds ``Ledger.settle``'s keyword arguments (``tokens``, and optionally
        ``requests`` and ``cost``) and needs ``reservation`` and ``ledger_url``; ``records``
        need ``history_url``. Raises InvalidRequest for an entry that could never be replayed
        (nothing to write, a missing URL, a ``memory://`` store) and StoreError when the
        journal is full or its file cannot be written.
        """
        has_settle = settle is not None or reservation is not None
        if has_settle:
            _check_settle(reservation, settle)
            _check_url(ledger_url, "ledger_url")
        if records:
            _check_url(history_url, "history_url")
        if not has_settle and not records:
            raise InvalidRequest(
                "a journal entry needs a settle (reservation and settle) or history records",
                field="records",
            )
        reservation_text = encode_reservation(reservation) if reservation is not None else None
        settle_text = json.dumps(dict(settle), separators=(",", ":")) if settle else None
        records_text = encode_records(records) if records else None
        size = sum(len(t) for t in (reservation_text, settle_text, records_text) if t)
        row = (
            store_key(ledger_url) if has_settle and ledger_url else None,
            store_key(history_url) if records and history_url else None,
            FORMAT,
            reservation_text,
            settle_text,
            records_text,
            size,
            time.time(),
        )
        with immediate(self._db) as conn:
            assert conn is not None  # (None only without waiting)
            entries, used = conn.execute("SELECT entries, bytes FROM journal_totals").fetchone()
            if entries >= self.max_entries or used + size > self.max_bytes:
                raise StoreError(
                    f"journal {self.path} is full ({entries} entries, {used} bytes; caps"
                    f" {self.max_entries} entries, {self.max_bytes} bytes): this write is lost."
                    " Its stores have been unreachable for long: bring them back so the"
                    " journal is replayed, or open the journal with larger caps"
                )
            cursor = conn.execute(
                "INSERT INTO journal (ledger_url, history_url, format, reservation, settle,"
                " records, size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            entry_id = cursor.lastrowid
        assert entry_id is not None
        return entry_id

    def pending(
        self,
        *,
        ledger_url: str | None,
        history_url: str | None,
        limit: int = 100,
        after: int = 0,
    ) -> list[Pending]:
        """Entries for these stores (ids above ``after``), oldest first, at most ``limit``.

        An entry qualifies when each store it writes to is the given one: a settle-only entry
        for ``ledger_url`` is returned whatever ``history_url`` is, and the other way round.
        An entry this llmproxy cannot read (written by a newer one) is logged and left alone.
        """
        if limit < 1:
            raise InvalidRequest(f"limit must be a positive number, got {limit!r}", field="limit")
        ledger_key = store_key(ledger_url) if journaled(ledger_url) and ledger_url else None
        history_key = store_key(history_url) if journaled(history_url) and history_url else None
        db = self._db
        with db.lock:
            try:
                rows = (
                    db.connection()
                    .execute(_PENDING, (after, ledger_key, history_key, limit))
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise db.error(exc) from exc
        entries = []
        for row in rows:
            entry = self._decode(row)
            if entry is not None:
                entries.append(entry)
        return entries

    def _decode(self, row: tuple[Any, ...]) -> Pending | None:
        entry_id, ledger_url, history_url, fmt, reservation, settle, records, created, tries = row
        try:
            if fmt != FORMAT:
                raise ValueError(f"entry format {fmt}, this llmproxy reads format {FORMAT}")
            return Pending(
                entry_id,
                ledger_url,
                history_url,
                decode_reservation(reservation) if reservation else None,
                json.loads(settle) if settle else None,
                decode_records(records) if records else (),
                created,
                tries,
            )
        except (ValueError, TypeError, KeyError, LLMProxyError, cattrs.BaseValidationError) as exc:
            if entry_id not in self._warned:
                self._warned.add(entry_id)
                log.error(
                    "journal %s: entry %d cannot be read (%s); it is left in place for a newer"
                    " llmproxy or for you to inspect",
                    self.path,
                    entry_id,
                    exc,
                )
            return None

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        db = self._db
        with db.lock:
            try:
                db.connection().execute(sql, params)
                db.wrote()
            except sqlite3.Error as exc:
                raise db.error(exc) from exc

    def done(self, entry_id: int) -> None:
        """Remove an applied entry (no error if it is gone already: another replayer did it)."""
        self._write("DELETE FROM journal WHERE id = ?", (entry_id,))

    def settled(self, entry_id: int) -> None:
        """Record that an entry's settle was applied (its records are still to write)."""
        self._write(
            "UPDATE journal SET ledger_url = NULL, reservation = NULL, settle = NULL"
            " WHERE id = ? AND records IS NOT NULL",
            (entry_id,),
        )

    def failed(self, entry_id: int) -> None:
        """Count a failed replay of an entry."""
        self._write("UPDATE journal SET attempts = attempts + 1 WHERE id = ?", (entry_id,))

    def __len__(self) -> int:
        """How many entries are pending, for every store (one read of a running count)."""
        db = self._db
        with db.lock:
            try:
                row = db.connection().execute("SELECT entries FROM journal_totals").fetchone()
            except sqlite3.Error as exc:
                raise db.error(exc) from exc
        return int(row[0])

    def close(self) -> None:
        """Close the file; the journal is not used afterwards (its entries stay on disk)."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _create_private(path: Path) -> None:
    """Create the file (and its directory) readable by its owner only, if it is missing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise StoreError(
            f"journal {path}: cannot create it ({exc}); set LLMPROXY_DATA_DIR to a writable"
            " directory on a local disk"
        ) from exc


def _check_url(url: str | None, name: str) -> None:
    if not url:
        raise InvalidRequest(f"a journal entry needs the store's {name}", field=name)
    if not journaled(url):
        raise InvalidRequest(
            f"{name} {url!r} is a memory:// store: its data dies with the process, so a write"
            " to it is never journaled",
            field=name,
        )


def _check_settle(reservation: Reservation | None, settle: Mapping[str, Any] | None) -> None:
    if reservation is None or settle is None:
        raise InvalidRequest(
            "a journaled settle needs both the reservation and the settle's arguments",
            field="settle",
        )
    unknown = set(settle) - _SETTLE_KEYS
    if unknown or "tokens" not in settle:
        raise InvalidRequest(
            "settle must hold tokens, and optionally requests and cost (Ledger.settle's"
            f" arguments); got {sorted(settle)}",
            field="settle",
        )
    for key, value in settle.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(
                f"settle {key} must be a number, got {type(value).__name__}", field="settle"
            )


def _targets(
    ledger: Ledger | None,
    history: HistoryStore | None,
    ledger_url: str | None,
    history_url: str | None,
) -> tuple[str | None, str | None]:
    # A store not given cannot be replayed to: its entries are left for a replayer that has it.
    return (
        ledger_url if ledger is not None else None,
        history_url if history is not None else None,
    )


def _problem(journal: Journal, entry: Pending, exc: BaseException) -> None:
    log.error(
        "journal %s: entry %d (settle for %s, %d records for %s) failed with %r; it is left"
        " pending and the next entries are replayed",
        journal.path,
        entry.id,
        entry.ledger_url,
        len(entry.records),
        entry.history_url,
        exc,
    )


def replay(
    journal: Journal,
    *,
    ledger: Ledger | None,
    history: HistoryStore | None,
    ledger_url: str | None,
    history_url: str | None,
) -> int:
    """Apply the pending entries for these stores in order; return how many were applied.

    A settle goes through ``ledger.settle(reservation, **settle)``, records through
    ``history.append(records)`` (both idempotent, so an entry the store had in fact applied
    is harmless); each applied entry is removed. The first :class:`StoreError` stops the
    replay (the store is still down; that entry's ``attempts`` grows). Any other error is
    logged, counted on the entry, which stays pending, and the replay goes on with the next.
    """
    ledger_url, history_url = _targets(ledger, history, ledger_url, history_url)
    applied, after = 0, 0
    while True:
        batch = journal.pending(ledger_url=ledger_url, history_url=history_url, after=after)
        if not batch:
            return applied
        for entry in batch:
            after = entry.id
            try:
                if entry.reservation is not None and entry.settle is not None:
                    assert ledger is not None  # (the entry matched ledger_url)
                    ledger.settle(entry.reservation, **entry.settle)
                    if entry.records:
                        journal.settled(entry.id)
                if entry.records:
                    assert history is not None
                    history.append(entry.records)
            except StoreError:
                journal.failed(entry.id)
                return applied
            except Exception as exc:
                _problem(journal, entry, exc)
                journal.failed(entry.id)
                continue
            journal.done(entry.id)
            applied += 1


async def areplay(
    journal: Journal,
    *,
    ledger: Ledger | None,
    history: HistoryStore | None,
    ledger_url: str | None,
    history_url: str | None,
) -> int:
    """Async :func:`replay`: the stores' async methods; the journal's writes run in a thread.

    (A journal write waits for the disk, ``synchronous=FULL``: not on the event loop.)
    """
    ledger_url, history_url = _targets(ledger, history, ledger_url, history_url)
    applied, after = 0, 0
    while True:
        batch = await asyncio.to_thread(
            journal.pending, ledger_url=ledger_url, history_url=history_url, after=after
        )
        if not batch:
            return applied
        for entry in batch:
            after = entry.id
            try:
                if entry.reservation is not None and entry.settle is not None:
                    assert ledger is not None
                    await ledger.asettle(entry.reservation, **entry.settle)
                    if entry.records:
                        await asyncio.to_thread(journal.settled, entry.id)
                if entry.records:
                    assert history is not None
                    await history.aappend(entry.records)
            except StoreError:
                await asyncio.to_thread(journal.failed, entry.id)
                return applied
            except Exception as exc:
                _problem(journal, entry, exc)
                await asyncio.to_thread(journal.failed, entry.id)
                continue
            await asyncio.to_thread(journal.done, entry.id)
            applied += 1
