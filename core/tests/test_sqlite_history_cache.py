"""The SQLite history store's cache of decoded sessions: always what the file holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy import HistoryRecord, Message
from llmproxy.history.sqlite import SQLiteHistoryStore


def _records(session: str, start: int, n: int, *, ids: bool = True) -> list[HistoryRecord]:
    return [
        HistoryRecord(
            session,
            Message("user" if i % 2 == 0 else "assistant", f"message {i}"),
            created_at=float(i),
            id=f"{session}-{i}" if ids else None,
        )
        for i in range(start, start + n)
    ]


def _texts(records: list[HistoryRecord]) -> list[str]:
    return [record.message.content for record in records]


def test_a_cached_session_sees_another_writers_appends_and_rewrites(tmp_path: Path) -> None:
    reader = SQLiteHistoryStore(tmp_path / "h.db")
    writer = SQLiteHistoryStore(tmp_path / "h.db")
    writer.append(_records("s", 0, 10))
    assert _texts(reader.load("s", 6)) == [f"message {i}" for i in range(4, 10)]
    writer.append(_records("s", 10, 2))  # another connection appends: read incrementally
    assert _texts(reader.load("s", 6)) == [f"message {i}" for i in range(6, 12)]
    assert _texts(reader.load("s")) == [f"message {i}" for i in range(12)]  # more than cached
    # Deleted and written anew with as many rows (and the same row ids): new record ids tell.
    writer.delete("s")
    rewritten = [
        HistoryRecord("s", Message("user", f"new {i}"), id=f"again-{i}") for i in range(12)
    ]
    writer.append(rewritten)
    assert _texts(reader.load("s")) == [f"new {i}" for i in range(12)]
    writer.delete("s")  # deleted: empty
    assert reader.load("s") == []
    reader.close()
    writer.close()


def test_records_without_ids_are_read_every_time(tmp_path: Path) -> None:
    reader = SQLiteHistoryStore(tmp_path / "h.db")
    writer = SQLiteHistoryStore(tmp_path / "h.db")
    writer.append(_records("s", 0, 4, ids=False))
    assert _texts(reader.load("s")) == [f"message {i}" for i in range(4)]
    writer.delete("s")
    writer.append([HistoryRecord("s", Message("user", f"other {i}")) for i in range(4)])
    assert _texts(reader.load("s")) == [f"other {i}" for i in range(4)]
    reader.close()
    writer.close()


def test_a_hit_reads_one_row_and_decodes_only_new_rows(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    store.append(_records("s", 0, 1000))
    first = store.load("s", 1000)
    statements: list[str] = []
    store._db.connection().set_trace_callback(statements.append)
    again = store.load("s", 1000)
    assert again == first and again is not first
    assert [s.split()[0] for s in statements] == ["BEGIN", "SELECT", "COMMIT"]
    store.append(_records("s", 1000, 2))
    statements.clear()
    grown = store.load("s", 1000)
    assert _texts(grown)[-3:] == ["message 999", "message 1000", "message 1001"]
    assert len(grown) == 1000
    assert sum(s.startswith("SELECT") for s in statements) == 2  # the check, the 2 new rows
    store.close()


def test_the_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmproxy.history import sqlite

    monkeypatch.setattr(sqlite, "CACHE_BYTES", 3 * 10 * (len("message 0") + 512))
    store = SQLiteHistoryStore(tmp_path / "h.db")
    for n in range(5):
        store.append(_records(f"s{n}", 0, 10))
        assert len(store.load(f"s{n}")) == 10
    cache = store._cache
    assert 0 < cache._bytes <= sqlite.CACHE_BYTES
    assert list(cache._sessions) == ["s2", "s3", "s4"]  # the least recently loaded went first
    assert len(store.load("s1", 4)) == 4  # read again, and kept trimmed to what was asked
    assert len(cache._sessions["s1"].records) == 4
    assert cache._bytes == sum(sqlite._weight(c.records) for c in cache._sessions.values())
    store.close()
