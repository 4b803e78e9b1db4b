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
    other = SQLiteHistoryStore(tmp_path / "h.db")
    store.append(_records("s", 0, 1000))
    first = store.load("s", 1000)
    statements: list[str] = []
    store._db.connection().set_trace_callback(statements.append)
    again = store.load("s", 1000)
    assert again == first and again is not first
    assert statements == ["PRAGMA data_version"]  # nobody else wrote: no row read
    statements.clear()
    store.append(_records("s", 1000, 2))  # its own append extends the cached session
    assert [s.split()[0] for s in statements] == ["INSERT"]
    statements.clear()
    grown = store.load("s", 1000)
    assert _texts(grown)[-3:] == ["message 999", "message 1000", "message 1001"]
    assert len(grown) == 1000
    assert statements == ["PRAGMA data_version"]
    other.append(_records("s", 1002, 2))  # another connection's append: the rows are checked
    statements.clear()
    grown = store.load("s", 1000)
    assert _texts(grown)[-3:] == ["message 1001", "message 1002", "message 1003"]
    assert [s.split()[0] for s in statements] == [
        "PRAGMA",  # changed: check the rows
        "BEGIN",
        "PRAGMA",
        "SELECT",  # the check
        "SELECT",  # the 2 new rows
        "COMMIT",
    ]
    statements.clear()
    assert store.load("s", 1000) == grown
    assert statements == ["PRAGMA data_version"]  # checked at the new value: trusted again
    store.close()
    other.close()


def test_an_own_append_after_another_writers_is_not_taken_for_the_whole_change(
    tmp_path: Path,
) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    other = SQLiteHistoryStore(tmp_path / "h.db")
    store.append(_records("s", 0, 10))
    assert len(store.load("s")) == 10
    other.append(_records("s", 10, 2))  # not seen by this store yet
    store.append(_records("s", 12, 2))  # its own, after the other's
    assert _texts(store.load("s")) == [f"message {i}" for i in range(14)]
    store.append(_records("s", 14, 2))  # its own, then another's after it
    other.append(_records("s", 16, 2))
    assert _texts(store.load("s", 5)) == [f"message {i}" for i in range(13, 18)]
    assert _texts(store.load("s")) == [f"message {i}" for i in range(18)]
    store.close()
    other.close()


def test_appends_that_are_not_exactly_the_rows_are_checked(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    store.append(_records("s", 0, 4))
    assert len(store.load("s")) == 4
    store.append(_records("s", 2, 4))  # two already stored (same ids): only 4 and 5 go in
    assert _texts(store.load("s")) == [f"message {i}" for i in range(6)]
    store.append([*_records("s", 6, 1), *_records("t", 0, 1)])  # two sessions in one write
    store.append(_records("s", 7, 1, ids=False))  # a record without an id
    assert _texts(store.load("s")) == [f"message {i}" for i in range(8)]
    assert _texts(store.load("t")) == ["message 0"]
    store.close()


def test_an_own_delete_empties_the_cached_session(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    store.append(_records("s", 0, 4))
    assert len(store.load("s")) == 4
    assert store.delete("s") == 4
    assert store.load("s") == []
    store.append(_records("s", 4, 2))
    assert _texts(store.load("s")) == ["message 4", "message 5"]
    store.close()


def test_a_new_connection_checks_the_rows_again(tmp_path: Path) -> None:
    """data_version values are per connection: one read on the connection before (a forked
    child's parent) is not compared with the new one's."""
    store = SQLiteHistoryStore(tmp_path / "h.db")
    store.append(_records("s", 0, 4))
    assert len(store.load("s")) == 4
    assert store._db.conn is not None
    store._db.abandoned.append(store._db.conn)  # what a forked child does
    store._db.conn = None
    statements: list[str] = []
    store._db.connection().set_trace_callback(statements.append)
    assert len(store.load("s")) == 4
    assert "BEGIN" in statements
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
