"""The history codec, and SQLite files made before parts: migrated on open, rows kept."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given

from llmproxy import Audio, Document, HistoryRecord, Image, InvalidRequest, Message, StoreError
from llmproxy.history.codec import (
    blob_hash,
    blob_hashes,
    decode_parts,
    decode_state,
    encode_parts,
    encode_state,
)
from llmproxy.history.sqlite import SQLiteHistoryStore
from llmproxy.types import MAX_PART_BYTES, Part
from llmproxy_testing.parts import PARTS, STATES, pdf, png, wav

NONE: dict[str, bytes] = {}


@given(parts=PARTS)
def test_parts_round_trip_exactly(parts: tuple[Part, ...]) -> None:
    text, blobs = encode_parts(parts)
    assert text is not None
    assert decode_parts(text, blobs.get) == parts
    assert set(blob_hashes(text)) == set(blobs)
    for key, data in blobs.items():
        assert blob_hash(data) == key


@given(state=STATES)
def test_state_round_trips_exactly(state: dict[str, object]) -> None:
    assert decode_state(encode_state(state)) == state


def test_the_same_data_is_one_blob() -> None:
    image = png(3, 3)
    text, blobs = encode_parts((Image(data=image), Image(data=bytes(image), detail="low")))
    assert list(blobs) == [blob_hash(image)]
    assert [e.get("detail") for e in json.loads(text or "")] == [None, "low"]


def test_no_parts_and_no_state_are_none() -> None:
    assert encode_parts(()) == (None, {})
    assert encode_state({}) is None
    assert decode_parts(None, NONE.get) == ()
    assert decode_state(None) == {}


def test_data_grown_past_the_limit_after_the_part_was_made_is_refused() -> None:
    data = bytearray(png(2, 2))
    image = Image(data=data)  # type: ignore[arg-type]  # a bytearray is accepted as bytes
    data.extend(b"\x00" * (MAX_PART_BYTES + 1 - len(data)))
    with pytest.raises(InvalidRequest, match="more than a stored part may carry") as caught:
        encode_parts((image,))
    assert caught.value.field == "parts[0].data"


def test_state_that_json_cannot_hold_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="JSON values") as caught:
        encode_state({"x": object()})
    assert caught.value.field == "state"


def test_missing_or_altered_blobs_are_store_errors() -> None:
    text, blobs = encode_parts((Audio(wav(0.01)),))
    with pytest.raises(StoreError, match="not stored"):
        decode_parts(text, NONE.get)
    (key,) = blobs
    with pytest.raises(StoreError, match="does not match its hash"):
        decode_parts(text, {key: b"RIFF-but-not-the-same"}.get)
    with pytest.raises(StoreError, match="unknown type"):
        decode_parts('[{"type": "video"}]', NONE.get)
    with pytest.raises(StoreError, match="not JSON"):
        decode_parts("[", NONE.get)


# -- SQLite files made by earlier releases ------------------------------------------------------

_BEFORE_PARTS = """
CREATE TABLE history (
    id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
    name TEXT, tool_calls TEXT, tool_call_id TEXT, reasoning TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0, model TEXT, provider TEXT, created_at REAL NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    user TEXT{record_id}
);
CREATE INDEX history_session ON history (session_id, id);
INSERT INTO history (session_id, role, content, created_at) VALUES ('old', 'user', 'hello', 1.0);
PRAGMA user_version = 1;
"""


@pytest.mark.parametrize("record_ids", [True, False], ids=["with-record-ids", "before-them"])
def test_an_older_file_gains_the_columns_once_with_two_openers(
    tmp_path: Path, record_ids: bool
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_BEFORE_PARTS.format(record_id=", record_id TEXT" if record_ids else ""))
    conn.close()
    start = threading.Barrier(2)
    opened: list[SQLiteHistoryStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            opened.append(SQLiteHistoryStore(path))
        except BaseException as exc:  # the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    first, second = opened
    try:
        assert [r.content for r in first.load("old")] == ["hello"]
        message = Message.with_parts(
            "user", ["see", Image(data=png(2, 2)), Document(pdf(1))], state={"g": [1]}
        )
        first.append([HistoryRecord("old", message, created_at=2.0, id="new")])
        assert second.load("old")[-1].message == message
        assert second.blob_count("old") == 2
    finally:
        first.close()
        second.close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(history)")]
    conn.close()
    assert columns[-3:] == ["record_id", "parts", "state"]
    assert columns.count("parts") == 1


def test_a_message_with_parts_is_one_row_and_its_text_stays_in_content(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    try:
        image = png(5, 5)
        store.append(
            [
                HistoryRecord("s", Message.with_parts("user", ["a", Image(data=image), "b"])),
                HistoryRecord("s", Message("assistant", "plain")),
            ]
        )
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        rows = conn.execute("SELECT content, parts, state FROM history ORDER BY id").fetchall()
        blobs = conn.execute("SELECT hash, data FROM history_blobs").fetchall()
    conn.close()
    assert rows[0][0] == "a\n\nb" and rows[0][2] is None
    assert rows[1] == ("plain", None, None)
    assert blobs == [(blob_hash(image), image)]
