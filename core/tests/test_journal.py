"""The journal of writes that could not reach their store: encoding, durability, caps, replay."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmproxy.budget.base import Claim, Reservation
from llmproxy.budget.memory import MemoryLedger
from llmproxy.errors import InvalidRequest, StoreError
from llmproxy.history.base import HistoryRecord
from llmproxy.history.memory import MemoryHistoryStore
from llmproxy.history.sqlite import SQLiteHistoryStore
from llmproxy.journal import (
    FILE_NAME,
    Journal,
    areplay,
    decode_records,
    decode_reservation,
    encode_records,
    encode_reservation,
    journaled,
    replay,
)
from llmproxy.types import ROLES, Citation, HostedOutput, Message, ToolCall

LEDGER = "redis://:secret@cache:6379/0"
HISTORY = "sqlite:///var/history.db"

# --- encoding -----------------------------------------------------------------------------

_TEXT = st.text(max_size=40)  # any code point, lone surrogates included
_OPT = st.none() | _TEXT
_FLOATS = st.floats(allow_nan=False)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _FLOATS | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_MESSAGES = st.builds(
    Message,
    role=st.sampled_from(sorted(ROLES)),
    content=_TEXT,
    name=_OPT,
    tool_calls=st.lists(st.builds(ToolCall, id=_TEXT, name=_TEXT, arguments=_TEXT), max_size=2).map(
        tuple
    ),
    tool_call_id=_OPT,
    reasoning=_OPT,
    interrupted=st.booleans(),
    citations=st.lists(
        st.builds(
            Citation,
            type=_TEXT,
            text=_OPT,
            file_id=_OPT,
            filename=_OPT,
            url=_OPT,
            start=st.none() | st.integers(),
            end=st.none() | st.integers(),
        ),
        max_size=2,
    ).map(tuple),
    hosted_outputs=st.lists(
        st.builds(
            HostedOutput,
            type=_TEXT,
            id=_OPT,
            status=_OPT,
            data=st.dictionaries(_TEXT, _JSON, max_size=3),
        ),
        max_size=2,
    ).map(tuple),
)
_RECORDS = st.builds(
    HistoryRecord,
    session_id=_TEXT,
    message=_MESSAGES,
    model=_OPT,
    provider=_OPT,
    created_at=_FLOATS,
    input_tokens=st.integers(),
    output_tokens=st.integers(),
    user=_OPT,
    id=_OPT,
)
_CLAIMS = st.builds(
    Claim,
    key=_TEXT,
    policy=_TEXT,
    scope=_TEXT,
    limit=_FLOATS,
    unit=st.sampled_from(["tokens", "requests", "usd"]),
    window=st.none() | _FLOATS,
    period=st.sampled_from([None, "day", "month"]),
    tz=st.sampled_from(["UTC", "Europe/Paris"]),
)
_RESERVATIONS = st.builds(
    Reservation,
    id=_TEXT,
    claims=st.lists(_CLAIMS, max_size=3).map(tuple),
    amounts=st.lists(_FLOATS, max_size=3).map(tuple),
    output_tokens=st.integers(),
    input_tokens=st.integers(),
    expires_at=_FLOATS,
)


@given(records=st.lists(_RECORDS, max_size=3))
def test_any_records_round_trip(records: list[HistoryRecord]) -> None:
    assert decode_records(encode_records(records)) == tuple(records)


@given(reservation=_RESERVATIONS)
def test_any_reservation_round_trips(reservation: Reservation) -> None:
    assert decode_reservation(encode_reservation(reservation)) == reservation


@settings(max_examples=25, deadline=None)
@given(records=st.lists(_RECORDS, min_size=1, max_size=3), reservation=_RESERVATIONS)
def test_entries_round_trip_through_the_file(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[HistoryRecord],
    reservation: Reservation,
) -> None:
    with Journal(tmp_path_factory.mktemp("j") / FILE_NAME) as journal:
        settle = {"tokens": 12, "requests": 1, "cost": 0.25}
        entry_id = journal.add(
            ledger_url=LEDGER,
            history_url=HISTORY,
            reservation=reservation,
            settle=settle,
            records=records,
        )
        [entry] = journal.pending(ledger_url=LEDGER, history_url=HISTORY)
    assert (entry.id, entry.reservation, entry.settle, entry.records, entry.attempts) == (
        entry_id,
        reservation,
        settle,
        tuple(records),
        0,
    )


# --- the file -----------------------------------------------------------------------------


def _reservation(rid: str | None = None) -> Reservation:
    claim = Claim("tokens|global", "tokens", "global", 1000.0)
    return Reservation(rid or uuid.uuid4().hex, (claim,), (100.0,), 90, 10, 2e9)


def _records(session: str = "s", n: int = 2) -> list[HistoryRecord]:
    return [
        HistoryRecord(session, Message("user", f"m{i}"), created_at=float(i), id=uuid.uuid4().hex)
        for i in range(n)
    ]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / FILE_NAME) as journal:
        yield journal


def test_in_data_dir(tmp_path: Path) -> None:
    with Journal.in_data_dir({"LLMPROXY_DATA_DIR": str(tmp_path / "data")}) as journal:
        assert journal.path == tmp_path / "data" / FILE_NAME
        assert journal.path.exists()
        assert journal.path.stat().st_mode & 0o077 == 0  # prompts and answers: owner only
        assert sqlite3.connect(journal.path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_entries_are_keyed_by_store(journal: Journal) -> None:
    settle_only = journal.add(
        ledger_url=LEDGER,
        history_url=HISTORY,
        reservation=_reservation(),
        settle={"tokens": 5},
        records=[],
    )
    history_only = journal.add(
        ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=_records()
    )
    both = journal.add(
        ledger_url=LEDGER,
        history_url=HISTORY,
        reservation=_reservation(),
        settle={"tokens": 5},
        records=_records(),
    )
    other = journal.add(
        ledger_url="redis://elsewhere:6379/0",
        history_url=None,
        reservation=_reservation(),
        settle={"tokens": 1},
        records=[],
    )

    def ids(ledger_url: str | None, history_url: str | None) -> list[int]:
        return [e.id for e in journal.pending(ledger_url=ledger_url, history_url=history_url)]

    assert ids(LEDGER, HISTORY) == [settle_only, history_only, both]
    assert ids(LEDGER, None) == [settle_only]
    assert ids(None, HISTORY) == [history_only]
    assert ids("redis://:other-password@cache:6379/0", None) == [settle_only]  # same store
    assert ids("redis://elsewhere:6379/0", "sqlite:///other.db") == [other]
    assert ids(None, None) == []
    assert journal.pending(ledger_url=LEDGER, history_url=HISTORY, limit=2, after=settle_only)[
        0
    ].id == (history_only)
    [entry] = journal.pending(ledger_url=LEDGER, history_url=None)
    assert entry.ledger_url == "redis://:***@cache:6379/0"  # no password kept in the file
    assert b"secret" not in journal.path.read_bytes()
    assert len(journal) == 4
    journal.failed(both)
    journal.failed(both)
    assert [e.attempts for e in journal.pending(ledger_url=LEDGER, history_url=HISTORY)] == [
        0,
        0,
        2,
    ]
    journal.done(both)
    journal.done(both)  # already gone: fine
    assert len(journal) == 3
    assert ids(LEDGER, HISTORY) == [settle_only, history_only]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (
            {"ledger_url": "memory://", "reservation": _reservation(), "settle": {"tokens": 1}},
            "ledger_url",
        ),
        ({"history_url": "memory://", "records": _records()}, "history_url"),
        ({"history_url": None, "records": _records()}, "history_url"),
        ({"ledger_url": LEDGER, "reservation": _reservation(), "settle": None}, "settle"),
        ({"ledger_url": LEDGER, "reservation": _reservation(), "settle": {"cost": 1}}, "settle"),
        (
            {"ledger_url": LEDGER, "reservation": _reservation(), "settle": {"tokens": "1"}},
            "settle",
        ),
        (
            {"ledger_url": LEDGER, "reservation": _reservation(), "settle": {"tokens": 1, "x": 2}},
            "settle",
        ),
        ({}, "records"),
    ],
)
def test_entries_that_could_never_replay_are_refused(
    journal: Journal, kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {
        "ledger_url": None,
        "history_url": None,
        "reservation": None,
        "settle": None,
        "records": [],
        **kwargs,
    }
    with pytest.raises(InvalidRequest) as caught:
        journal.add(**args)
    assert caught.value.field == field
    assert len(journal) == 0


def test_journaled() -> None:
    assert journaled("sqlite:///x.db") and journaled("redis://h")
    assert not journaled(None) and not journaled("") and not journaled("memory://")
    assert not journaled("MEMORY://")


def test_a_full_journal_refuses_loudly(tmp_path: Path) -> None:
    with Journal(tmp_path / FILE_NAME, max_entries=2) as journal:
        for _ in range(2):
            journal.add(
                ledger_url=None,
                history_url=HISTORY,
                reservation=None,
                settle=None,
                records=_records(),
            )
        with pytest.raises(StoreError, match=r"is full \(2 entries.*this write is lost"):
            journal.add(
                ledger_url=None,
                history_url=HISTORY,
                reservation=None,
                settle=None,
                records=_records(),
            )
        assert len(journal) == 2
        journal.done(journal.pending(ledger_url=None, history_url=HISTORY)[0].id)
        journal.add(
            ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=_records()
        )
    with Journal(tmp_path / "bytes.db", max_bytes=2000) as journal:
        big = [HistoryRecord("s", Message("user", "x" * 1500), id="a")]
        journal.add(
            ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=big
        )
        with pytest.raises(StoreError, match="is full"):
            journal.add(
                ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=big
            )
    with pytest.raises(InvalidRequest):
        Journal(tmp_path / "bad.db", max_entries=0)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from llmproxy.history.base import HistoryRecord
    from llmproxy.journal import Journal
    from llmproxy.types import Message

    journal = Journal(sys.argv[1])
    start = int(sys.argv[2])
    for i in range(start, start + int(sys.argv[3])):
        record = HistoryRecord("s", Message("user", f"m{i}"), id=f"r{i}")
        journal.add(ledger_url=None, history_url="sqlite:///h.db", reservation=None,
                    settle=None, records=[record])
        print(i, flush=True)
    time.sleep(3600)  # killed by the test
    """
)


def test_entries_survive_sigkill_and_processes_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(start), "20"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for start in (0, 100)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            for _ in range(20):  # each line printed once its add returned
                assert child.stdout.readline()
            child.send_signal(signal.SIGKILL)  # no close, no checkpoint: only the WAL on disk
            child.wait()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    with Journal(path) as journal:
        assert len(journal) == 40
        entries = journal.pending(ledger_url=None, history_url="sqlite:///h.db", limit=100)
        contents = sorted(int(e.records[0].content[1:]) for e in entries)
        assert contents == [*range(20), *range(100, 120)]


def test_a_forked_child_reopens_the_file(journal: Journal) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    journal.add(
        ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=_records()
    )
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            journal.add(
                ledger_url=None,
                history_url=HISTORY,
                reservation=None,
                settle=None,
                records=_records(),
            )
            code = 0 if len(journal) == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(journal) == 2


# --- replay -------------------------------------------------------------------------------


class FlakyLedger(MemoryLedger):
    """A memory ledger that can be 'down' and records every settle it applied."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.settled: list[tuple[str, int]] = []

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        if self.down:
            raise StoreError("ledger down")
        self.settled.append((reservation.id, tokens))


class FlakyHistory(SQLiteHistoryStore):
    """An SQLite store that can be 'down', or apply a write and then fail (a lost reply)."""

    down = False
    apply_then_fail = False
    broken = False

    def append(self, records: Sequence[HistoryRecord]) -> None:
        if self.broken:
            raise ValueError("a bug")
        if self.down:
            raise StoreError("history down")
        super().append(records)
        if self.apply_then_fail:
            raise StoreError("timed out (it may or may not have been stored)")


@pytest.fixture
def history(tmp_path: Path) -> Iterator[FlakyHistory]:
    store = FlakyHistory(tmp_path / "history.db")
    yield store
    store.close()


def _add_both(journal: Journal, session: str = "s") -> tuple[Reservation, list[HistoryRecord]]:
    reservation, records = _reservation(), _records(session)
    journal.add(
        ledger_url=LEDGER,
        history_url=HISTORY,
        reservation=reservation,
        settle={"tokens": 40, "requests": 1, "cost": 0.0},
        records=records,
    )
    return reservation, records


def test_replay_applies_in_order_and_stops_while_the_store_is_down(
    journal: Journal, history: FlakyHistory
) -> None:
    ledger = FlakyLedger()
    first, records_a = _add_both(journal, "a")
    second, records_b = _add_both(journal, "b")
    run: dict[str, Any] = {
        "ledger": ledger,
        "history": history,
        "ledger_url": LEDGER,
        "history_url": HISTORY,
    }
    ledger.down = True
    assert replay(journal, **run) == 0
    assert len(journal) == 2
    assert [e.attempts for e in journal.pending(ledger_url=LEDGER, history_url=HISTORY)] == [1, 0]

    ledger.down, history.down = False, True  # the settle goes, the history write does not
    assert replay(journal, **run) == 0
    assert ledger.settled == [(first.id, 40)]
    [entry, _] = journal.pending(ledger_url=LEDGER, history_url=HISTORY)
    assert (entry.reservation, entry.settle, entry.attempts) == (None, None, 2)  # settle is done

    history.down = False
    assert replay(journal, **run) == 2
    assert ledger.settled == [(first.id, 40), (second.id, 40)]  # the first settled once only
    assert history.load("a") == records_a and history.load("b") == records_b
    assert len(journal) == 0
    assert replay(journal, **run) == 0


def test_a_replayed_write_that_had_landed_is_not_duplicated(
    journal: Journal, history: FlakyHistory
) -> None:
    """The SIGSTOP case: the write reached the store, the reply did not; the replay is a no-op."""
    records = _records("frozen", 3)
    history.apply_then_fail = True
    with pytest.raises(StoreError):
        history.append(records)
    journal.add(
        ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=records
    )
    history.apply_then_fail = False
    assert replay(journal, ledger=None, history=history, ledger_url=None, history_url=HISTORY) == 1
    assert history.load("frozen") == records


def test_an_entry_failing_otherwise_is_kept_and_skipped(
    journal: Journal, history: FlakyHistory, caplog: pytest.LogCaptureFixture
) -> None:
    journal.add(
        ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=_records("x")
    )
    history.broken = True
    assert replay(journal, ledger=None, history=history, ledger_url=None, history_url=HISTORY) == 0
    assert "a bug" in caplog.text
    history.broken = False
    journal.add(
        ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=_records("y")
    )
    history.broken = True
    assert replay(journal, ledger=None, history=history, ledger_url=None, history_url=HISTORY) == 0
    assert [e.attempts for e in journal.pending(ledger_url=None, history_url=HISTORY)] == [2, 1]
    history.broken = False
    assert replay(journal, ledger=None, history=history, ledger_url=None, history_url=HISTORY) == 2


def test_replay_leaves_entries_for_a_store_it_was_not_given(
    journal: Journal, history: FlakyHistory
) -> None:
    _add_both(journal)
    journal.add(
        ledger_url=None, history_url=HISTORY, reservation=None, settle=None, records=_records("h")
    )
    assert (
        replay(journal, ledger=None, history=history, ledger_url=LEDGER, history_url=HISTORY) == 1
    )
    assert len(journal) == 1  # the settle and its records wait for a replayer with the ledger


def test_replay_pages_through_more_than_one_batch(tmp_path: Path) -> None:
    with Journal(tmp_path / FILE_NAME) as journal:
        store = MemoryHistoryStore()
        for i in range(250):
            journal.add(
                ledger_url=None,
                history_url=HISTORY,
                reservation=None,
                settle=None,
                records=[HistoryRecord("s", Message("user", str(i)), id=str(i))],
            )
        assert (
            replay(journal, ledger=None, history=store, ledger_url=None, history_url=HISTORY) == 250
        )
        assert [r.content for r in store.load("s")] == [str(i) for i in range(250)]


def test_areplay(journal: Journal, history: FlakyHistory) -> None:
    ledger = FlakyLedger()
    first, records = _add_both(journal)
    ledger.down = True
    run: dict[str, Any] = {
        "ledger": ledger,
        "history": history,
        "ledger_url": LEDGER,
        "history_url": HISTORY,
    }
    assert asyncio.run(areplay(journal, **run)) == 0
    ledger.down = False
    history.down = True
    assert asyncio.run(areplay(journal, **run)) == 0
    history.down = False
    assert asyncio.run(areplay(journal, **run)) == 1
    assert ledger.settled == [(first.id, 40)]
    assert history.load("s") == records
    assert len(journal) == 0


# --- the SQLite history file made before record ids -------------------------------------------

_OLD_SCHEMA = """
CREATE TABLE history (
    id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
    name TEXT, tool_calls TEXT, tool_call_id TEXT, reasoning TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0, model TEXT, provider TEXT, created_at REAL NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0, user TEXT
);
CREATE INDEX history_session ON history (session_id, id);
PRAGMA user_version = 1;
"""


def test_an_old_history_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    conn.execute(
        "INSERT INTO history (session_id, role, content, created_at) VALUES ('s', 'user', 'old', 1)"
    )
    conn.commit()
    conn.close()
    store = SQLiteHistoryStore(path)
    try:
        new = _records("s", 2)
        store.append(new)
        store.append(new)
        assert store.load("s") == [HistoryRecord("s", Message("user", "old"), created_at=1.0), *new]
    finally:
        store.close()
    again = SQLiteHistoryStore(path)  # opening a migrated file changes nothing
    try:
        assert len(again.load("s")) == 3
    finally:
        again.close()
