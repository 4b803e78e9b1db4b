r"""Contract test suites for history stores and ledgers, to run against your own implementation.

Subclass a contract in a test module under a ``Test`` name and provide its fixture::

    from llmproxy_testing.contracts import HistoryStoreContract, LedgerContract

    class TestRedisHistory(HistoryStoreContract):
        @pytest.fixture
        def store(self, redis_url):
            store = RedisHistoryStore(redis_url)
            yield store
            store.close()

    class TestRedisLedger(LedgerContract):
        @pytest.fixture
        def ledger(self, clock, redis_url):
            ledger = RedisLedger(redis_url, clock=clock)  # the ledger must read time from clock
            yield ledger
            ledger.close()

A new store or ledger per test is simplest, but every test uses fresh random session ids and
ledger keys, so one backend may be shared; a ledger must still be built per test to read the
test's ``clock``. The contracts need ``pytest``, ``pytest-asyncio`` and ``hypothesis``
(dependencies of llmproxy-testing). Texts never contain ``"\x00"``, which some databases
cannot store.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from llmproxy.budget.base import (
    Claim,
    Ledger,
    Period,
    Rates,
    RenewableLedger,
    Reservation,
    Unit,
)
from llmproxy.budget.memory import SETTLED_GRACE
from llmproxy.errors import BudgetExceeded, InvalidRequest, RateLimited
from llmproxy.history.base import HistoryRecord, HistoryStore, SessionInfo
from llmproxy.types import ROLES, Image, Message, Role, ToolCall
from llmproxy_testing.parts import PARTS, STATES, png

__all__ = ["FakeClock", "HistoryStoreContract", "LedgerContract"]


class FakeClock:
    """A clock tests set by hand: call it for the time in seconds, :meth:`advance` to move it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- history ------------------------------------------------------------------------------

_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
_SAMPLES = (
    "",
    "Hello, world",
    "emoji 😀👍🏽👨‍👩‍👧‍👦🏳️‍🌈",
    "مرحبا بالعالم",
    "עברית \u200f mixed RTL",
    "line one\nline two\r\nline three\n",
    "\ttabs, 'quotes', \"double\", \\backslash\\, %_ wildcards; DROP TABLE x;--",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and combining e\u0301",  # noqa: RUF001 - look-alike letters on purpose
    '{"json": [1, 2, {"k": null}]}',
)
_TEXT = st.one_of(st.sampled_from(_SAMPLES), st.text(_CHARS, max_size=300))
_SHORT = st.text(_CHARS, max_size=40)
_TOOL_CALLS = st.lists(
    st.builds(ToolCall, id=_SHORT, name=_SHORT, arguments=_TEXT), max_size=3
).map(tuple)
_MESSAGES = st.builds(
    Message,
    role=st.sampled_from(sorted(ROLES)),
    content=_TEXT,
    name=st.none() | _SHORT,
    tool_calls=_TOOL_CALLS,
    tool_call_id=st.none() | _SHORT,
    reasoning=st.none() | _TEXT,
    interrupted=st.booleans(),
)
_RECORDS = st.builds(
    HistoryRecord,
    session_id=st.just("placeholder"),
    message=_MESSAGES,
    model=st.none() | _SHORT,
    provider=st.none() | _SHORT,
    created_at=st.floats(min_value=0.0, max_value=4e9, allow_nan=False),
    input_tokens=st.integers(0, 2**31 - 1),
    output_tokens=st.integers(0, 2**31 - 1),
    user=st.none() | _SHORT,
    id=st.none() | st.uuids().map(lambda u: u.hex),
)
_SESSION_IDS = (
    "a",
    "A",
    "a ",
    "a:",
    "a:b",
    "a:b:c",
    "{a}",
    "{",
    "}",
    "user:{alice}:chat",
    "a%",
    "a_",
    "*",
    "a\nb",
    "會話-セッション",
    "جلسة",
    "😀",
)

# The store fixture lives across a test's examples (every example uses new session ids), and
# each contract test runs once per subclass (examples saved for one store replay on the next,
# which is what a contract wants): both health checks are expected here.
_hypothesis_store = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.differing_executors,
        HealthCheck.too_slow,
    ],
)


def _record(
    session_id: str,
    content: str,
    *,
    role: Role = "user",
    created_at: float = 0.0,
    record_id: str | None = None,
) -> HistoryRecord:
    return HistoryRecord(session_id, Message(role, content), created_at=created_at, id=record_id)


class HistoryStoreContract:
    """Tests every :class:`~llmproxy.history.base.HistoryStore` must pass.

    Subclass under a ``Test`` name and provide a ``store`` fixture returning a new store.
    """

    def test_is_a_history_store(self, store: HistoryStore) -> None:
        """The store has every method of the protocol."""
        assert isinstance(store, HistoryStore)

    @_hypothesis_store
    @given(batches=st.lists(st.lists(_RECORDS, min_size=1, max_size=4), min_size=1, max_size=4))
    def test_round_trip_in_order(
        self, store: HistoryStore, batches: list[list[HistoryRecord]]
    ) -> None:
        """Every field of every record comes back unchanged, in append order."""
        session_id = _unique("round-trip")
        expected: list[HistoryRecord] = []
        for batch in batches:
            # A fresh id where one was drawn: the store outlives the examples, and an id seen
            # in an earlier example would rightly be skipped.
            records = [
                attrs.evolve(
                    record,
                    session_id=session_id,
                    id=None if record.id is None else uuid.uuid4().hex,
                )
                for record in batch
            ]
            store.append(records)
            expected.extend(records)
        assert store.load(session_id) == expected
        assert store.load(session_id, limit=3) == expected[-3:]

    @_hypothesis_store
    @given(text=_TEXT)
    @example(text="\u202eevil\u202c \u2066isolate\u2069")
    @example(text="\r\n\r\n")
    def test_any_text_round_trips(self, store: HistoryStore, text: str) -> None:
        """Content, reasoning and tool call arguments keep any unicode text exactly."""
        session_id = _unique("text")
        message = Message(
            "assistant", text, reasoning=text, tool_calls=(ToolCall(text, text, text),), name=text
        )
        record = HistoryRecord(session_id, message, model=text, provider=text, user=text)
        store.append([record])
        assert store.load(session_id) == [record]

    def test_load_last_n(self, store: HistoryStore) -> None:
        """``limit`` returns the newest records, oldest first."""
        session_id = _unique("last-n")
        records = [_record(session_id, f"m{i}", created_at=float(i)) for i in range(10)]
        store.append(records[:1])
        store.append(records[1:4])
        for record in records[4:]:
            store.append([record])
        assert store.load(session_id) == records
        assert store.load(session_id, limit=None) == records
        assert store.load(session_id, limit=1) == records[-1:]
        assert store.load(session_id, limit=3) == records[-3:]
        assert store.load(session_id, limit=10) == records
        assert store.load(session_id, limit=50) == records
        assert store.load(session_id, limit=0) == []

    def test_unknown_session_is_empty(self, store: HistoryStore) -> None:
        """Loading or deleting a session never written finds nothing."""
        session_id = _unique("missing")
        assert store.load(session_id) == []
        assert store.load(session_id, limit=5) == []
        assert store.delete(session_id) == 0
        store.append([])
        assert store.load(session_id) == []

    def test_sessions_are_isolated(self, store: HistoryStore) -> None:
        """Ids that differ only by case, punctuation, spaces or script are different sessions."""
        prefix = _unique("iso")
        ids = [f"{prefix}{suffix}" for suffix in _SESSION_IDS]
        for session_id in ids:
            store.append(
                [_record(session_id, session_id), _record(session_id, "reply", role="assistant")]
            )
        for session_id in ids:
            assert [r.content for r in store.load(session_id)] == [session_id, "reply"]
            assert {r.session_id for r in store.load(session_id)} == {session_id}
        listed = {info.session_id: info.message_count for info in store.sessions()}
        assert {session_id: listed.get(session_id) for session_id in ids} == dict.fromkeys(ids, 2)
        assert store.delete(ids[0]) == 2
        for session_id in ids[1:]:
            assert len(store.load(session_id)) == 2

    @_hypothesis_store
    @given(
        first=st.text(_CHARS, min_size=1, max_size=30),
        second=st.text(_CHARS, min_size=1, max_size=30),
    )
    def test_arbitrary_session_ids_are_isolated(
        self, store: HistoryStore, first: str, second: str
    ) -> None:
        """Any two distinct non-empty ids name different sessions."""
        prefix = _unique("any")
        a, b = prefix + first, prefix + ":" + second
        store.append([_record(a, "to a")])
        store.append([_record(b, "to b")])
        assert [r.content for r in store.load(a)] == ["to a"]
        assert [r.content for r in store.load(b)] == ["to b"]
        assert store.delete(a) == 1
        assert [r.content for r in store.load(b)] == ["to b"]

    def test_sessions_and_delete(self, store: HistoryStore) -> None:
        """sessions() counts and dates messages, newest session first; delete counts."""
        a, b = _unique("sessions-a"), _unique("sessions-b")

        def mine() -> list[SessionInfo]:
            return [info for info in store.sessions() if info.session_id in (a, b)]

        store.append([_record(a, "1", created_at=1000.0), _record(a, "2", created_at=1001.5)])
        store.append([_record(b, "x", created_at=2000.0)])
        assert mine() == [SessionInfo(b, 1, 2000.0, 2000.0), SessionInfo(a, 2, 1000.0, 1001.5)]
        store.append([_record(a, "3", created_at=3000.0)])
        assert mine() == [SessionInfo(a, 3, 1000.0, 3000.0), SessionInfo(b, 1, 2000.0, 2000.0)]
        assert store.delete(a) == 3
        assert store.load(a) == []
        assert store.delete(a) == 0
        assert mine() == [SessionInfo(b, 1, 2000.0, 2000.0)]
        store.append([_record(a, "again", created_at=4000.0)])
        assert [r.content for r in store.load(a)] == ["again"]

    def test_append_is_atomic_under_concurrency(self, store: HistoryStore) -> None:
        """Readers never see part of an append, and concurrent appends never interleave."""
        session_id = _unique("atomic")
        writers, batches, size = 4, 25, 3
        problems: list[str] = []
        done = threading.Event()

        def write(writer: int) -> None:
            try:
                for batch in range(batches):
                    tag = f"w{writer}-b{batch}"
                    store.append([_record(session_id, f"{tag}-{part}") for part in range(size)])
            except Exception as exc:  # collected and reported by the main thread
                problems.append(f"writer {writer}: {exc!r}")

        def read() -> None:
            try:
                while not done.is_set():
                    contents = [r.content for r in store.load(session_id)]
                    if len(contents) % size:
                        problems.append(f"reader saw {len(contents)} records, not whole appends")
                        return
                    for start in range(0, len(contents), size):
                        tags = {c.rsplit("-", 1)[0] for c in contents[start : start + size]}
                        if len(tags) != 1:
                            problems.append(
                                f"appends interleaved: {contents[start : start + size]}"
                            )
                            return
            except Exception as exc:
                problems.append(f"reader: {exc!r}")

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        reader = threading.Thread(target=read)
        reader.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        reader.join()
        assert problems == []
        contents = [r.content for r in store.load(session_id)]
        assert len(contents) == writers * batches * size
        for writer in range(writers):
            own = [c for c in contents if c.startswith(f"w{writer}-")]
            assert own == [f"w{writer}-b{b}-{p}" for b in range(batches) for p in range(size)]

    def test_appending_the_same_records_twice_stores_them_once(self, store: HistoryStore) -> None:
        """A record whose id is stored is skipped: a replayed append never duplicates.

        Records without an id are always appended; in a batch mixing stored and new ids only
        the new ones go in, in order.
        """
        session_id = _unique("idempotent")
        ids = [uuid.uuid4().hex for _ in range(3)]
        exchange = [
            _record(session_id, "q", created_at=1.0, record_id=ids[0]),
            _record(session_id, "a", role="assistant", created_at=2.0, record_id=ids[1]),
        ]
        store.append(exchange)
        store.append(exchange)
        assert store.load(session_id) == exchange
        later = _record(session_id, "q2", created_at=3.0, record_id=ids[2])
        store.append([exchange[1], later])
        assert store.load(session_id) == [*exchange, later]
        anonymous = _record(session_id, "no id", created_at=4.0)
        store.append([anonymous])
        store.append([anonymous])
        assert store.load(session_id) == [*exchange, later, anonymous, anonymous]
        assert SessionInfo(session_id, 5, 1.0, 4.0) in store.sessions()

    @_hypothesis_store
    @given(
        messages=st.lists(
            st.tuples(st.sampled_from(["user", "assistant"]), PARTS, STATES),
            min_size=1,
            max_size=3,
        )
    )
    def test_parts_and_state_round_trip(
        self, store: HistoryStore, messages: list[tuple[Role, tuple[Any, ...], dict[str, Any]]]
    ) -> None:
        """Every part and the provider state come back exactly, in order.

        Text, images, documents and audio, every field; text-only messages beside them are
        unchanged.
        """
        session_id = _unique("parts")
        records = [_record(session_id, "plain text first", created_at=1.0)]
        records += [
            HistoryRecord(
                session_id,
                Message.with_parts(role, parts, state=state),
                created_at=2.0 + i,
                id=uuid.uuid4().hex,
            )
            for i, (role, parts, state) in enumerate(messages)
        ]
        store.append(records[:2])
        if records[2:]:
            store.append(records[2:])
        loaded = store.load(session_id)
        assert loaded == records
        for got, sent in zip(loaded, records, strict=True):
            assert got.message.parts == sent.message.parts
            assert dict(got.message.state) == dict(sent.message.state)
            assert got.content == sent.content
        assert store.load(session_id, limit=1) == records[-1:]

    def test_the_same_image_twice_is_stored_once(self, store: HistoryStore) -> None:
        """The same bytes sent twice in a session come back twice and are kept once.

        Kept once is checked where the store can count its blobs (an optional
        ``blob_count(session_id)`` method).
        """
        session_id = _unique("dedupe")
        image = Image(data=png(32, 16), detail="low")
        other = Image(data=png(16, 32))
        first = [
            HistoryRecord(
                session_id,
                Message.with_parts("user", ["What is this?", image]),
                created_at=1.0,
                id=uuid.uuid4().hex,
            ),
            HistoryRecord(session_id, Message("assistant", "A cat."), created_at=2.0),
        ]
        second = [
            HistoryRecord(
                session_id,
                # a copy of the bytes, not the same object
                Message.with_parts("user", ["And this?", Image(data=bytes(png(32, 16))), image]),
                created_at=3.0,
                id=uuid.uuid4().hex,
            )
        ]
        store.append(first)
        store.append(second)
        count = getattr(store, "blob_count", None)
        if count is not None:
            assert count(session_id) == 1
            store.append(
                [HistoryRecord(session_id, Message.with_parts("user", [other]), created_at=4.0)]
            )
            assert count(session_id) == 2
        loaded = store.load(session_id)
        assert [r.message for r in loaded[:3]] == [r.message for r in [*first, *second]]
        repeated = loaded[2].message.parts[1]
        assert isinstance(repeated, Image)
        assert (repeated.data, repeated.width, repeated.height) == (png(32, 16), 32, 16)
        store.delete(session_id)
        assert store.load(session_id) == []
        if count is not None:
            assert count(session_id) == 0

    @pytest.mark.asyncio
    async def test_async_parts_round_trip(self, store: HistoryStore) -> None:
        """``aappend``/``aload`` keep parts and state like the sync methods."""
        session_id = _unique("aparts")
        record = HistoryRecord(
            session_id,
            Message.with_parts(
                "user",
                ["Look:", Image(data=png(8, 8)), Image(url="https://example.com/a.png")],
                state={"gemini": {"thought_signature": "c2ln"}},
            ),
            created_at=1.0,
        )
        await store.aappend([record])
        assert await store.aload(session_id) == [record]

    @pytest.mark.asyncio
    async def test_async_append_twice_stores_once(self, store: HistoryStore) -> None:
        """``aappend`` skips stored ids like ``append``."""
        session_id = _unique("aidempotent")
        records = [
            _record(session_id, "q", created_at=1.0, record_id=uuid.uuid4().hex),
            _record(session_id, "a", role="assistant", created_at=2.0, record_id=uuid.uuid4().hex),
        ]
        await store.aappend(records)
        await store.aappend(records)
        await store.aappend(records[1:])
        assert await store.aload(session_id) == records

    @pytest.mark.asyncio
    async def test_async_twins(self, store: HistoryStore) -> None:
        """The ``a``-prefixed methods do what the sync ones do."""
        session_id = _unique("async")
        records = [
            _record(session_id, "q", created_at=10.0),
            _record(session_id, "a", role="assistant", created_at=11.0),
        ]
        await store.aappend(records)
        assert await store.aload(session_id) == records
        assert await store.aload(session_id, 1) == records[1:]
        assert SessionInfo(session_id, 2, 10.0, 11.0) in await store.asessions()
        assert await store.adelete(session_id) == 2
        assert await store.aload(session_id) == []


# --- ledger -------------------------------------------------------------------------------

_NANO = 1_000_000_000
"""Ledgers count usd in nano-dollars; USD figures in these tests are whole nano-dollars, so a
correct ledger's dollars convert back to the model's integers exactly."""


def _claim(
    name: str,
    limit: float,
    unit: Unit = "tokens",
    window: float | None = None,
    *,
    period: Period | None = None,
    tz: str = "UTC",
) -> Claim:
    return Claim(_unique(name), name, f"scope:{name}", limit, unit, window, period, tz)


def _used(ledger: Ledger, claim: Claim) -> tuple[float, float]:
    (state,) = ledger.usage([claim])
    return state.used, state.reserved


def _nano(dollars: float) -> int:
    return round(dollars * _NANO)


def _at(tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Unix seconds of a local time in ``tz``."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def _period_id(claim: Claim, now: float) -> str:
    local = datetime.fromtimestamp(now, ZoneInfo(claim.tz))
    return f"{local:%Y-%m-%d}" if claim.period == "day" else f"{local:%Y-%m}"


def _period_end(claim: Claim, now: float) -> float:
    local = datetime.fromtimestamp(now, ZoneInfo(claim.tz)).date()
    if claim.period == "day":
        following = local + timedelta(days=1)
    else:
        following = date(local.year + local.month // 12, local.month % 12 + 1, 1)
    return datetime(
        following.year, following.month, following.day, tzinfo=ZoneInfo(claim.tz)
    ).timestamp()


class _LedgerModel:
    """What a correct ledger holds, computed the obvious way, for the state machine.

    Amounts are in ledger units: tokens, requests, or whole nano-dollars for usd claims. A hold
    not settled by its expiry is charged in full at its expiry (:meth:`expire`); a late settle
    replaces the charge (:meth:`settle`).
    """

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.events: dict[str, list[list[float]]] = {}
        self.periods: dict[str, tuple[str, int]] = {}
        self.holds: dict[str, Reservation] = {}
        self.expiry: dict[str, float] = {}
        self.charges: dict[str, dict[str, tuple[int, float, list[float] | None]]] = {}

    @staticmethod
    def units(claim: Claim, amount: float) -> int:
        return _nano(amount) if claim.unit == "usd" else int(amount)

    def used(self, claim: Claim, now: float) -> int:
        if claim.window is not None:
            start = now - claim.window
            return int(sum(amount for ts, amount in self.events.get(claim.key, ()) if ts > start))
        if claim.period is not None:
            period, used = self.periods.get(claim.key, ("", 0))
            return used if period == _period_id(claim, now) else 0
        return self.totals.get(claim.key, 0)

    def reserved(self, claim: Claim, now: float) -> int:
        return sum(
            self.units(c, amount)
            for held in self.holds.values()
            if self.expiry[held.id] > now
            for c, amount in zip(held.claims, held.amounts, strict=True)
            if c.key == claim.key
        )

    def _add(self, claim: Claim, ts: float, amount: int) -> list[float] | None:
        if not amount:
            return None
        if claim.window is not None:
            event = [ts, float(amount)]
            self.events.setdefault(claim.key, []).append(event)
            return event
        if claim.period is not None:
            period = _period_id(claim, ts)
            stored, used = self.periods.get(claim.key, ("", 0))
            if stored < period:
                self.periods[claim.key] = (period, amount)
            elif stored == period:
                self.periods[claim.key] = (period, used + amount)
            return None
        self.totals[claim.key] = self.totals.get(claim.key, 0) + amount
        return None

    def expire(self, now: float) -> None:
        """Charge every hold whose lease ended, oldest first."""
        for rid in sorted(
            (rid for rid in self.holds if self.expiry[rid] <= now), key=self.expiry.__getitem__
        ):
            held = self.holds.pop(rid)
            ts = self.expiry[rid]
            self.charges[rid] = {
                c.key: (self.units(c, a), ts, self._add(c, ts, self.units(c, a)))
                for c, a in zip(held.claims, held.amounts, strict=True)
            }

    def settle(
        self, reservation: Reservation, tokens: int, requests: int, cost: int, now: float
    ) -> None:
        charges = self.charges.pop(reservation.id, None)
        self.holds.pop(reservation.id, None)
        for claim in reservation.claims:
            amount = {"tokens": tokens, "requests": requests, "usd": cost}[claim.unit]
            if charges is None:
                self._add(claim, now, amount)
                continue
            charged, ts, event = charges[claim.key]
            diff = amount - charged
            if claim.window is not None:
                if event is not None and ts > now - claim.window:
                    event[1] = float(amount)
                elif diff > 0:
                    self._add(claim, now, diff)
            elif claim.period is not None:
                stored, used = self.periods.get(claim.key, ("", 0))
                period = _period_id(claim, now)
                if charged and stored == period and _period_id(claim, ts) == period:
                    self.periods[claim.key] = (period, max(used + diff, 0))
                elif diff > 0:
                    self._add(claim, now, diff)
            else:
                self.totals[claim.key] = max(self.totals.get(claim.key, 0) + diff, 0)


class LedgerContract:
    """Tests every :class:`~llmproxy.budget.base.Ledger` must pass.

    Subclass under a ``Test`` name and provide a ``ledger`` fixture that takes the ``clock``
    fixture defined here and builds a new ledger with ``clock=clock``: windows, leases and
    calendar periods must all be counted by that clock (tests set it to chosen dates, forward
    and, between state machine runs, back).

    Covered: grants and refusals of token, request and usd claims (holds of
    ``input * rate + output * rate``, the output cap lowered to the dollars left, the real cost
    recorded by settle), rolling windows, calendar days and months in non-UTC zones (a day
    resets at local midnight, a month on the 1st: January 31 to February 1, February 28 or 29
    to March 1), ``resets_at``, leases (a hold not settled by its expiry is charged in full, a
    late settle within the settled grace (:attr:`settled_grace`) replaces the charge once,
    ``renew`` when the ledger has it), repeated and late settles, all-or-none, threads, and a
    state machine comparing the ledger with a model. USD figures are whole nano-dollars and
    compared as such (a ledger may round holds up to a nano-dollar, never more).
    """

    state_machine_settings: ClassVar[settings] = settings(
        max_examples=30,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    """Hypothesis settings of :meth:`test_random_operations_never_overspend`; override to tune."""

    settled_grace: ClassVar[float] = SETTLED_GRACE
    """Seconds the ledger under test remembers a settled or charged id (its settled grace; the
    default, 24 h, unless overridden). Within it a late settle must replace the charge; after
    it a ledger may forget the charge (when is its own affair), so the tests settle late only
    within it."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        """A fake clock the ledger must read the time from."""
        return FakeClock()

    def test_is_a_ledger(self, ledger: Ledger) -> None:
        """The ledger has every method of the protocol."""
        assert isinstance(ledger, Ledger)

    def test_grant_is_capped_by_max_output(self, ledger: Ledger, clock: FakeClock) -> None:
        """With room to spare the grant is max_output_tokens, held with the input."""
        claim = _claim("cap", 1000)
        reservation = ledger.reserve([claim], input_tokens=100, max_output_tokens=200, lease=30.0)
        assert reservation.output_tokens == 200
        assert reservation.input_tokens == 100
        assert reservation.claims == (claim,)
        assert reservation.amounts == (300.0,)
        assert reservation.expires_at == clock.now + 30.0
        assert _used(ledger, claim) == (0, 300)
        (state,) = ledger.usage([claim])
        assert state.remaining == 700
        assert state.resets_at is None

    def test_grant_is_capped_by_room(self, ledger: Ledger) -> None:
        """The grant shrinks to what is left after used, reserved and input."""
        claim = _claim("room", 1000)
        ledger.settle(ledger.reserve([claim], input_tokens=0, max_output_tokens=150), tokens=150)
        ledger.reserve([claim], input_tokens=50, max_output_tokens=100)
        reservation = ledger.reserve([claim], input_tokens=100, max_output_tokens=5000)
        assert reservation.output_tokens == 1000 - 150 - 150 - 100
        assert reservation.amounts == (700.0,)
        (state,) = ledger.usage([claim])
        assert (state.used, state.reserved, state.remaining) == (150, 850, 0)

    def test_grant_follows_the_tightest_claim(self, ledger: Ledger) -> None:
        """Every token claim holds the same amount, sized by the claim with least room."""
        wide = _claim("wide", 10_000)
        narrow = _claim("narrow", 400, window=60.0)
        rate = _claim("rate", 10, "requests", window=60.0)
        reservation = ledger.reserve([wide, narrow, rate], input_tokens=100, max_output_tokens=1000)
        assert reservation.output_tokens == 300
        assert reservation.amounts == (400.0, 400.0, 1.0)
        assert [s.reserved for s in ledger.usage([wide, narrow, rate])] == [400, 400, 1]

    def test_zero_min_output_allows_an_exact_fit(self, ledger: Ledger) -> None:
        """min_output_tokens=0 admits a call whose input fills the budget exactly."""
        claim = _claim("exact", 100)
        reservation = ledger.reserve(
            [claim], input_tokens=100, max_output_tokens=50, min_output_tokens=0
        )
        assert reservation.output_tokens == 0
        with pytest.raises(BudgetExceeded):
            ledger.reserve([claim], input_tokens=1, max_output_tokens=50, min_output_tokens=0)

    def test_budget_exceeded_fields(self, ledger: Ledger) -> None:
        """BudgetExceeded names the claim and its limit, used, reserved and requested amounts."""
        claim = _claim("budget", 100)
        ledger.settle(ledger.reserve([claim], input_tokens=10, max_output_tokens=50), tokens=40)
        ledger.reserve([claim], input_tokens=10, max_output_tokens=20)
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([claim], input_tokens=25, max_output_tokens=50, min_output_tokens=10)
        error = caught.value
        assert (error.policy, error.scope, error.unit) == ("budget", "scope:budget", "tokens")
        assert (error.limit, error.used, error.reserved) == (100, 40, 30)
        assert error.requested == 35
        assert error.remaining == 30
        assert _used(ledger, claim) == (40, 30)

    def test_budget_exceeded_names_the_tightest_claim(self, ledger: Ledger) -> None:
        """With several token claims the error is about the one with least room."""
        wide, tight = _claim("wide", 1000), _claim("tight", 50)
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([wide, tight], input_tokens=60, max_output_tokens=10)
        assert caught.value.policy == "tight"
        assert caught.value.requested == 61

    def test_rate_limited_with_retry_after(self, ledger: Ledger, clock: FakeClock) -> None:
        """A full request window raises RateLimited saying when its oldest request ages out."""
        rate = _claim("rpm", 2, "requests", window=60.0)
        start = clock.now
        ledger.settle(ledger.reserve([rate], input_tokens=1, max_output_tokens=1), tokens=2)
        clock.advance(10)
        ledger.settle(ledger.reserve([rate], input_tokens=1, max_output_tokens=1), tokens=2)
        clock.advance(5)
        (state,) = ledger.usage([rate])
        assert (state.used, state.reserved, state.resets_at) == (2, 0, start + 60)
        with pytest.raises(RateLimited) as caught:
            ledger.reserve([rate], input_tokens=1, max_output_tokens=1)
        error = caught.value
        assert (error.policy, error.scope, error.limit, error.window) == ("rpm", "scope:rpm", 2, 60)
        assert error.retry_after == pytest.approx(45)
        clock.advance(44.75)
        with pytest.raises(RateLimited):
            ledger.reserve([rate], input_tokens=1, max_output_tokens=1)
        clock.advance(0.25)
        ledger.reserve([rate], input_tokens=1, max_output_tokens=1)

    def test_rate_limited_by_calls_in_flight(self, ledger: Ledger) -> None:
        """Requests in flight count against the window; releasing one frees its slot."""
        rate = _claim("concurrent", 1, "requests", window=60.0)
        first = ledger.reserve([rate], input_tokens=1, max_output_tokens=1)
        with pytest.raises(RateLimited) as caught:
            ledger.reserve([rate], input_tokens=1, max_output_tokens=1)
        assert 0 < caught.value.retry_after <= 60
        ledger.settle(first, tokens=0, requests=0)
        assert _used(ledger, rate) == (0, 0)
        ledger.reserve([rate], input_tokens=1, max_output_tokens=1)

    def test_rate_claims_are_checked_first(self, ledger: Ledger) -> None:
        """When both a rate and a token claim are full, RateLimited is raised."""
        tokens, rate = _claim("tokens", 10), _claim("rate", 1, "requests", window=30.0)
        ledger.settle(
            ledger.reserve([tokens, rate], input_tokens=5, max_output_tokens=5), tokens=10
        )
        with pytest.raises(RateLimited):
            ledger.reserve([tokens, rate], input_tokens=5, max_output_tokens=5)

    def test_all_time_request_claim_refuses(self, ledger: Ledger) -> None:
        """A request claim without a window is a budget: when full, the call is refused."""
        calls = _claim("calls", 1, "requests")
        ledger.settle(ledger.reserve([calls], input_tokens=1, max_output_tokens=1), tokens=1)
        assert _used(ledger, calls) == (1, 0)
        with pytest.raises((BudgetExceeded, RateLimited)):
            ledger.reserve([calls], input_tokens=1, max_output_tokens=1)

    def test_token_window_expires(self, ledger: Ledger, clock: FakeClock) -> None:
        """Tokens settled in a window stop counting when the window passes them."""
        claim = _claim("daily", 100, window=60.0)
        start = clock.now
        ledger.settle(ledger.reserve([claim], input_tokens=50, max_output_tokens=50), tokens=100)
        (state,) = ledger.usage([claim])
        assert (state.used, state.reserved, state.resets_at) == (100, 0, start + 60)
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([claim], input_tokens=1, max_output_tokens=1)
        assert caught.value.resets_at == start + 60
        clock.advance(59.75)
        assert _used(ledger, claim) == (100, 0)
        clock.advance(0.25)
        (state,) = ledger.usage([claim])
        assert (state.used, state.resets_at) == (0, None)
        assert ledger.reserve([claim], input_tokens=50, max_output_tokens=50).output_tokens == 50

    def test_lease_expiry_charges_the_hold(self, ledger: Ledger, clock: FakeClock) -> None:
        """A reservation neither settled nor renewed by its lease's end is charged in full."""
        claim = _claim("lease", 100)
        ledger.reserve([claim], input_tokens=50, max_output_tokens=50, lease=10.0)
        with pytest.raises(BudgetExceeded):
            ledger.reserve([claim], input_tokens=1, max_output_tokens=1)
        clock.advance(9.75)
        assert _used(ledger, claim) == (0, 100)
        clock.advance(0.25)
        assert _used(ledger, claim) == (100, 0)  # unknown is spent: never silently released
        with pytest.raises(BudgetExceeded):
            ledger.reserve([claim], input_tokens=1, max_output_tokens=1)

    def test_expiry_charges_in_the_window_current_at_expiry(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        """A charge counts as used at the hold's expiry, and leaves the window from then."""
        claim = _claim("window-charge", 100, window=30.0)
        ledger.reserve([claim], input_tokens=10, max_output_tokens=30, lease=10.0)
        clock.advance(10.0)
        assert _used(ledger, claim) == (40, 0)
        clock.advance(29.75)
        assert _used(ledger, claim) == (40, 0)
        clock.advance(0.25)
        assert _used(ledger, claim) == (0, 0)

    def test_late_settle_replaces_the_charge_once(self, ledger: Ledger, clock: FakeClock) -> None:
        """Settling an expired (charged) reservation replaces its charge, exactly once."""
        claim = _claim("late", 1000)
        reservation = ledger.reserve([claim], input_tokens=50, max_output_tokens=50, lease=10.0)
        clock.advance(20)
        assert _used(ledger, claim) == (100, 0)
        ledger.settle(reservation, tokens=70)
        assert _used(ledger, claim) == (70, 0)
        ledger.settle(reservation, tokens=70)
        ledger.settle(reservation, tokens=5)
        assert _used(ledger, claim) == (70, 0)
        more = ledger.reserve([claim], input_tokens=10, max_output_tokens=10, lease=10.0)
        clock.advance(10)
        ledger.settle(more, tokens=500)  # more than held: the excess counts too
        assert _used(ledger, claim) == (570, 0)

    def test_renew_keeps_the_hold(self, ledger: Ledger, clock: FakeClock) -> None:
        """A renew pushes a hold's expiry to now + lease; False once settled or charged."""
        if not isinstance(ledger, RenewableLedger):
            pytest.skip("the ledger has no renew (optional)")
        claim = _claim("renew", 1000)
        reservation = ledger.reserve([claim], input_tokens=50, max_output_tokens=50, lease=10.0)
        clock.advance(8)
        assert ledger.renew(reservation, lease=10.0) is True
        clock.advance(8)  # past the first lease, within the renewed one
        assert _used(ledger, claim) == (0, 100)
        ledger.settle(reservation, tokens=30)
        assert ledger.renew(reservation, lease=10.0) is False
        assert _used(ledger, claim) == (30, 0)
        lapsed = ledger.reserve([claim], input_tokens=50, max_output_tokens=50, lease=10.0)
        clock.advance(10)
        assert ledger.renew(lapsed, lease=10.0) is False  # charged at expiry: gone
        assert _used(ledger, claim) == (130, 0)

    async def test_async_renew(self, ledger: Ledger, clock: FakeClock) -> None:
        """The async twin of renew, ``arenew``, does what renew does."""
        if not isinstance(ledger, RenewableLedger):
            pytest.skip("the ledger has no renew (optional)")
        claim = _claim("arenew", 1000)
        reservation = ledger.reserve([claim], input_tokens=5, max_output_tokens=5, lease=10.0)
        clock.advance(9)
        assert await ledger.arenew(reservation, lease=10.0) is True
        clock.advance(9)
        assert _used(ledger, claim) == (0, 10)
        await ledger.asettle(reservation, tokens=1)
        assert await ledger.arenew(reservation, lease=10.0) is False

    def test_double_settle_is_a_no_op(self, ledger: Ledger) -> None:
        """Only the first settle of a reservation counts, for tokens and requests."""
        tokens, rate = _claim("tokens", 1000), _claim("rate", 10, "requests", window=60.0)
        other = ledger.reserve([tokens, rate], input_tokens=10, max_output_tokens=10)
        reservation = ledger.reserve([tokens, rate], input_tokens=10, max_output_tokens=90)
        ledger.settle(reservation, tokens=60)
        ledger.settle(reservation, tokens=100)
        ledger.settle(reservation, tokens=0, requests=0)
        assert [(s.used, s.reserved) for s in ledger.usage([tokens, rate])] == [(60, 20), (1, 1)]
        ledger.settle(other, tokens=5)
        assert [(s.used, s.reserved) for s in ledger.usage([tokens, rate])] == [(65, 0), (2, 0)]

    def test_release_records_nothing(self, ledger: Ledger) -> None:
        """Settling with tokens=0 and requests=0 releases the hold and counts nothing."""
        tokens, rate = _claim("tokens", 1000), _claim("rate", 10, "requests", window=60.0)
        ledger.settle(
            ledger.reserve([tokens, rate], input_tokens=10, max_output_tokens=10),
            tokens=0,
            requests=0,
        )
        assert [(s.used, s.reserved) for s in ledger.usage([tokens, rate])] == [(0, 0), (0, 0)]

    def test_settle_records_each_unit_on_its_claims(self, ledger: Ledger, clock: FakeClock) -> None:
        """Tokens go to token claims and requests to request claims, windowed or not."""
        total, window = _claim("total", 1000), _claim("window", 1000, window=30.0)
        rate, calls = _claim("rate", 10, "requests", window=30.0), _claim("calls", 10, "requests")
        claims = [total, window, rate, calls]
        ledger.settle(ledger.reserve(claims, input_tokens=100, max_output_tokens=100), tokens=123)
        states = ledger.usage(claims)
        assert [(s.used, s.reserved) for s in states] == [(123, 0), (123, 0), (1, 0), (1, 0)]
        assert [s.resets_at for s in states] == [None, clock.now + 30, clock.now + 30, None]

    def test_all_or_none_on_budget(self, ledger: Ledger) -> None:
        """When one token claim refuses, nothing is held on the others."""
        roomy, full = _claim("roomy", 1000), _claim("full", 10)
        rate = _claim("rate", 10, "requests", window=60.0)
        with pytest.raises(BudgetExceeded):
            ledger.reserve([roomy, rate, full], input_tokens=50, max_output_tokens=10)
        assert [(s.used, s.reserved) for s in ledger.usage([roomy, rate, full])] == [(0, 0)] * 3

    def test_all_or_none_on_rate(self, ledger: Ledger) -> None:
        """When a rate claim refuses, nothing is held on the token claims."""
        roomy, rate = _claim("roomy", 1000), _claim("rate", 1, "requests", window=60.0)
        held = ledger.reserve([rate], input_tokens=1, max_output_tokens=1)
        with pytest.raises(RateLimited):
            ledger.reserve([roomy, rate], input_tokens=50, max_output_tokens=10)
        assert [(s.used, s.reserved) for s in ledger.usage([roomy, rate])] == [(0, 0), (0, 1)]
        ledger.settle(held, tokens=0, requests=0)

    @pytest.mark.asyncio
    async def test_async_twins(self, ledger: Ledger) -> None:
        """The async twins do what reserve and settle do."""
        claim = _claim("async", 100)
        reservation = await ledger.areserve([claim], input_tokens=10, max_output_tokens=200)
        assert reservation.output_tokens == 90
        with pytest.raises(BudgetExceeded):
            await ledger.areserve([claim], input_tokens=1, max_output_tokens=1)
        await ledger.asettle(reservation, tokens=30)
        await ledger.asettle(reservation, tokens=30)
        assert _used(ledger, claim) == (30, 0)

    def test_threads_never_overspend(self, ledger: Ledger) -> None:
        """Threads racing on one small budget never overspend it and leave nothing held."""
        tokens, rate = _claim("tokens", 1000), _claim("rate", 150, "requests", window=3600.0)
        threads, cycles = 8, 50
        settled: list[int] = []
        problems: list[BaseException] = []
        barrier = threading.Barrier(threads)

        def work() -> None:
            barrier.wait()
            for _ in range(cycles):
                try:
                    reservation = ledger.reserve(
                        [tokens, rate], input_tokens=10, max_output_tokens=20
                    )
                except (BudgetExceeded, RateLimited):
                    continue
                except BaseException as exc:
                    problems.append(exc)
                    return
                spent = reservation.input_tokens + reservation.output_tokens
                try:
                    ledger.settle(reservation, tokens=spent)
                except BaseException as exc:
                    problems.append(exc)
                    return
                settled.append(spent)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert problems == []
        token_state, rate_state = ledger.usage([tokens, rate])
        assert token_state.used == sum(settled) <= 1000
        assert rate_state.used == len(settled) <= 150
        assert token_state.reserved == rate_state.reserved == 0
        assert len(settled) < threads * cycles

    # -- the clock, and usage's async twin ----------------------------------------------------

    def test_now_is_the_ledger_clock(self, ledger: Ledger, clock: FakeClock) -> None:
        """now() is the clock windows, leases and periods are counted by."""
        assert ledger.now() == clock.now
        clock.advance(12.5)
        assert ledger.now() == clock.now
        reservation = ledger.reserve([_claim("now", 10)], input_tokens=1, max_output_tokens=1)
        assert reservation.expires_at == ledger.now() + 600.0

    @pytest.mark.asyncio
    async def test_ausage(self, ledger: Ledger) -> None:
        """ausage() answers what usage() does."""
        tokens, rate = _claim("tokens", 100), _claim("rate", 5, "requests", window=60.0)
        ledger.settle(
            ledger.reserve([tokens, rate], input_tokens=10, max_output_tokens=10), tokens=15
        )
        ledger.reserve([tokens, rate], input_tokens=5, max_output_tokens=5)
        assert await ledger.ausage([tokens, rate]) == ledger.usage([tokens, rate])
        assert [(s.used, s.reserved) for s in await ledger.ausage([tokens, rate])] == [
            (15, 10),
            (1, 1),
        ]

    # -- usd claims ----------------------------------------------------------------------------

    def test_usd_grant_is_capped_by_dollars(self, ledger: Ledger) -> None:
        """A usd claim holds input*rate + output*rate and lowers the grant to what fits."""
        claim = _claim("dollars", 0.01, "usd")
        rates = Rates(input=0.000001, output=0.000004)
        reservation = ledger.reserve(
            [claim], input_tokens=1000, max_output_tokens=5000, rates=rates
        )
        assert reservation.output_tokens == 2250  # (0.01 - 1000 * 1e-6) / 4e-6
        assert _nano(reservation.amounts[0]) == _nano(0.01)
        (state,) = ledger.usage([claim])
        assert (state.used, _nano(state.reserved), _nano(state.remaining)) == (0, _nano(0.01), 0)
        ledger.settle(reservation, tokens=0, requests=0)
        small = ledger.reserve([claim], input_tokens=100, max_output_tokens=50, rates=rates)
        assert small.output_tokens == 50
        assert _nano(small.amounts[0]) == 100 * 1000 + 50 * 4000

    def test_usd_grant_floors_to_whole_tokens(self, ledger: Ledger) -> None:
        """Room for 2.5 more output tokens grants 2, and the hold never passes the limit."""
        claim = _claim("floor", 0.00001, "usd")  # 10_000 nano-dollars
        rates = Rates(input=0.000001, output=0.000002)
        reservation = ledger.reserve([claim], input_tokens=5, max_output_tokens=100, rates=rates)
        assert reservation.output_tokens == 2  # (10_000 - 5_000) / 2_000 = 2.5
        assert _nano(reservation.amounts[0]) == 9_000
        (state,) = ledger.usage([claim])
        assert _nano(state.used) + _nano(state.reserved) <= _nano(claim.limit)

    def test_usd_budget_exceeded(self, ledger: Ledger) -> None:
        """BudgetExceeded in usd names the claim, dollars used, reserved and requested."""
        claim = _claim("spend", 0.001, "usd")
        rates = Rates(input=0.000001, output=0.000002)
        done = ledger.reserve([claim], input_tokens=100, max_output_tokens=100, rates=rates)
        ledger.settle(done, tokens=200, cost=0.0003)
        ledger.reserve([claim], input_tokens=100, max_output_tokens=100, rates=rates)
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve(
                [claim], input_tokens=400, max_output_tokens=100, min_output_tokens=10, rates=rates
            )
        error = caught.value
        assert (error.policy, error.scope, error.unit) == ("spend", "scope:spend", "usd")
        assert error.limit == 0.001
        assert (_nano(error.used), _nano(error.reserved)) == (300_000, 300_000)
        assert _nano(error.requested) == 400 * 1000 + 10 * 2000
        assert error.resets_at is None
        assert [_nano(x) for x in _used(ledger, claim)] == [300_000, 300_000]

    def test_usd_settle_records_the_real_cost(self, ledger: Ledger) -> None:
        """Settle records cost on usd claims, tokens on token claims; a repeat is a no-op."""
        dollars, tokens = _claim("cost", 1.0, "usd"), _claim("tokens", 10_000)
        rates = Rates(input=0.000003, output=0.000015)
        reservation = ledger.reserve(
            [dollars, tokens], input_tokens=1000, max_output_tokens=500, rates=rates
        )
        assert reservation.output_tokens == 500
        assert [_nano(reservation.amounts[0]), reservation.amounts[1]] == [10_500_000, 1500]
        ledger.settle(reservation, tokens=1200, cost=0.0042)
        ledger.settle(reservation, tokens=1200, cost=0.0042)
        state_dollars, state_tokens = ledger.usage([dollars, tokens])
        assert (_nano(state_dollars.used), state_dollars.reserved) == (4_200_000, 0)
        assert (state_tokens.used, state_tokens.reserved) == (1200, 0)
        other = ledger.reserve([dollars], input_tokens=1, max_output_tokens=1, rates=rates)
        ledger.settle(other, tokens=2, cost=0.000018)
        assert _nano(ledger.usage([dollars])[0].used) == 4_218_000

    def test_usd_with_free_output(self, ledger: Ledger) -> None:
        """With an output rate of 0 only the input is priced: the grant is max_output_tokens."""
        claim = _claim("free-out", 0.0001, "usd")
        rates = Rates(input=0.000001, output=0.0)
        reservation = ledger.reserve([claim], input_tokens=60, max_output_tokens=999, rates=rates)
        assert reservation.output_tokens == 999
        assert _nano(reservation.amounts[0]) == 60_000
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([claim], input_tokens=41, max_output_tokens=1, rates=rates)
        assert caught.value.unit == "usd"
        assert ledger.reserve([claim], input_tokens=40, max_output_tokens=1, rates=rates)

    def test_tightest_of_tokens_and_dollars(self, ledger: Ledger) -> None:
        """The grant follows whichever of the token and usd claims has least room."""
        tokens, dollars = _claim("tokens", 1000), _claim("dollars", 0.0005, "usd")
        rates = Rates(input=0.000001, output=0.000001)
        reservation = ledger.reserve(
            [tokens, dollars], input_tokens=100, max_output_tokens=2000, rates=rates
        )
        assert reservation.output_tokens == 400  # dollars: 500 tokens' worth, 100 of input
        assert [reservation.amounts[0], _nano(reservation.amounts[1])] == [500, 500_000]
        ledger.settle(reservation, tokens=0, requests=0)
        assert (
            ledger.reserve(
                [tokens, dollars], input_tokens=700, max_output_tokens=2000, rates=Rates(0.0, 1e-7)
            ).output_tokens
            == 300
        )
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([tokens, dollars], input_tokens=10, max_output_tokens=20, rates=rates)
        assert (caught.value.policy, caught.value.unit) == ("tokens", "tokens")

    def test_usd_without_rates_is_refused(self, ledger: Ledger) -> None:
        """A usd claim without rates is an InvalidRequest naming the claim; nothing is held."""
        tokens, dollars = _claim("tokens", 1000), _claim("priced", 1.0, "usd")
        with pytest.raises(InvalidRequest, match="priced") as caught:
            ledger.reserve([tokens, dollars], input_tokens=10, max_output_tokens=10)
        assert caught.value.field == "rates"
        assert _used(ledger, tokens) == (0, 0)

    def test_invalid_claims_and_amounts(self, ledger: Ledger) -> None:
        """Bad rates, costs, periods and zones are InvalidRequest before anything is held."""
        tokens = _claim("tokens", 1000)
        with pytest.raises(InvalidRequest):
            ledger.reserve(
                [_claim("neg", 1.0, "usd")],
                input_tokens=1,
                max_output_tokens=1,
                rates=Rates(-1e-6, 1e-6),
            )
        with pytest.raises(InvalidRequest, match="both"):
            ledger.reserve(
                [tokens, _claim("both", 10, window=60.0, period="day")],
                input_tokens=1,
                max_output_tokens=1,
            )
        with pytest.raises(InvalidRequest, match="Mars/Olympus"):
            ledger.reserve(
                [_claim("zone", 10, period="day", tz="Mars/Olympus")],
                input_tokens=1,
                max_output_tokens=1,
            )
        with pytest.raises(InvalidRequest):
            ledger.reserve(
                [_claim("week", 10, period="week")],  # type: ignore[arg-type]
                input_tokens=1,
                max_output_tokens=1,
            )
        reservation = ledger.reserve([tokens], input_tokens=1, max_output_tokens=1)
        for cost in (-0.01, float("nan"), float("inf")):
            with pytest.raises(InvalidRequest):
                ledger.settle(reservation, tokens=1, cost=cost)
        assert _used(ledger, tokens) == (0, 2)

    # -- calendar periods ----------------------------------------------------------------------

    def test_day_resets_at_local_midnight(self, ledger: Ledger, clock: FakeClock) -> None:
        """A day budget in Asia/Ho_Chi_Minh (UTC+7) resets at local midnight, not UTC's."""
        tz = "Asia/Ho_Chi_Minh"
        claim = _claim("daily", 100, period="day", tz=tz)
        clock.now = _at(tz, 2024, 3, 10, 6, 59)  # 23:59 UTC on March 9
        ledger.settle(ledger.reserve([claim], input_tokens=50, max_output_tokens=50), tokens=100)
        midnight = _at(tz, 2024, 3, 11)
        (state,) = ledger.usage([claim])
        assert (state.used, state.reserved, state.resets_at) == (100, 0, midnight)
        clock.advance(120)  # past UTC midnight: still March 10 in Ho Chi Minh City
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([claim], input_tokens=1, max_output_tokens=1)
        assert caught.value.resets_at == midnight
        clock.now = midnight - 0.25
        assert _used(ledger, claim) == (100, 0)
        clock.now = midnight
        (state,) = ledger.usage([claim])
        assert (state.used, state.resets_at) == (0, _at(tz, 2024, 3, 12))
        assert ledger.reserve([claim], input_tokens=50, max_output_tokens=50).output_tokens == 50

    def test_month_resets_on_the_first(self, ledger: Ledger, clock: FakeClock) -> None:
        """A month budget resets at local midnight on the 1st: not after 30 days."""
        tz = "Asia/Ho_Chi_Minh"
        claim = _claim("monthly", 1000, period="month", tz=tz)
        clock.now = _at(tz, 2024, 1, 1, 0, 1)
        ledger.settle(
            ledger.reserve([claim], input_tokens=300, max_output_tokens=0, min_output_tokens=0),
            tokens=300,
        )
        clock.now = _at(tz, 2024, 1, 31, 23, 59)  # 30 days later, still January
        (state,) = ledger.usage([claim])
        assert (state.used, state.resets_at) == (300, _at(tz, 2024, 2, 1))
        ledger.settle(
            ledger.reserve([claim], input_tokens=700, max_output_tokens=0, min_output_tokens=0),
            tokens=700,
        )
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([claim], input_tokens=1, max_output_tokens=0, min_output_tokens=0)
        assert caught.value.resets_at == _at(tz, 2024, 2, 1)
        clock.now = _at(tz, 2024, 2, 1)
        (state,) = ledger.usage([claim])
        assert (state.used, state.resets_at) == (0, _at(tz, 2024, 3, 1))

    @pytest.mark.parametrize(
        ("year", "last_day"), [(2023, 28), (2024, 29)], ids=["february-28", "february-29"]
    )
    def test_month_resets_after_february(
        self, ledger: Ledger, clock: FakeClock, year: int, last_day: int
    ) -> None:
        """February's budget lasts to its last day, 28th or 29th, and resets on March 1."""
        tz = "America/New_York"
        claim = _claim("february", 0.001, "usd", period="month", tz=tz)
        rates = Rates(input=0.000001, output=0.000001)
        clock.now = _at(tz, year, 2, 28, 12)
        reservation = ledger.reserve([claim], input_tokens=400, max_output_tokens=600, rates=rates)
        ledger.settle(reservation, tokens=1000, cost=0.001)
        clock.now = _at(tz, year, 2, last_day, 23, 59)
        (state,) = ledger.usage([claim])
        assert (_nano(state.used), state.resets_at) == (1_000_000, _at(tz, year, 3, 1))
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([claim], input_tokens=1, max_output_tokens=1, rates=rates)
        assert (caught.value.unit, caught.value.resets_at) == ("usd", _at(tz, year, 3, 1))
        clock.now = _at(tz, year, 3, 1)
        (state,) = ledger.usage([claim])
        assert (state.used, state.resets_at) == (0, _at(tz, year, 4, 1))

    def test_period_settles_count_when_they_happen(self, ledger: Ledger, clock: FakeClock) -> None:
        """A hold made before midnight still holds after it and is settled into the new day."""
        tz = "Europe/Berlin"
        claim = _claim("day", 100, period="day", tz=tz)
        clock.now = _at(tz, 2024, 7, 1, 23, 59)
        ledger.settle(ledger.reserve([claim], input_tokens=20, max_output_tokens=20), tokens=40)
        held = ledger.reserve([claim], input_tokens=30, max_output_tokens=30, lease=600)
        assert _used(ledger, claim) == (40, 60)
        clock.now = _at(tz, 2024, 7, 2, 0, 1)
        assert _used(ledger, claim) == (0, 60)
        ledger.settle(held, tokens=45)
        assert _used(ledger, claim) == (45, 0)
        clock.now = _at(tz, 2024, 7, 3, 0, 0)
        assert _used(ledger, claim) == (0, 0)

    def test_period_request_budget(self, ledger: Ledger, clock: FakeClock) -> None:
        """A request claim with a period is a budget: BudgetExceeded in requests, with resets_at."""
        tz = "UTC"
        calls = _claim("calls", 2, "requests", period="day", tz=tz)
        clock.now = _at(tz, 2024, 5, 5, 10)
        for _ in range(2):
            ledger.settle(ledger.reserve([calls], input_tokens=1, max_output_tokens=1), tokens=2)
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve([calls], input_tokens=1, max_output_tokens=1)
        assert (caught.value.unit, caught.value.resets_at) == ("requests", _at(tz, 2024, 5, 6))
        clock.now = _at(tz, 2024, 5, 6)
        assert ledger.reserve([calls], input_tokens=1, max_output_tokens=1)

    def test_resets_at_of_each_kind(self, ledger: Ledger, clock: FakeClock) -> None:
        """resets_at: None all-time, the oldest event's exit for a window, the next period start."""
        clock.now = _at("UTC", 2024, 12, 31, 18)
        total, window = _claim("total", 100), _claim("window", 100, window=60.0)
        day = _claim("day", 100, period="day", tz="Asia/Ho_Chi_Minh")
        month = _claim("month", 100, period="month", tz="America/Los_Angeles")
        expected = [None, None, _at("UTC", 2025, 1, 1, 17), _at("UTC", 2025, 1, 1, 8)]
        assert [s.resets_at for s in ledger.usage([total, window, day, month])] == expected
        ledger.settle(
            ledger.reserve([total, window, day, month], input_tokens=1, max_output_tokens=1),
            tokens=2,
        )
        expected[1] = clock.now + 60
        assert [s.resets_at for s in ledger.usage([total, window, day, month])] == expected

    def test_random_operations_never_overspend(self, ledger: Ledger, clock: FakeClock) -> None:
        """Random reserve, settle, release and clock moves keep every claim within its limit.

        A hypothesis state machine compares the ledger with a simple model after every step:
        used and reserved match exactly, and used + reserved never exceeds any limit. Calls
        settle at most what they reserved before their lease ends; a hold that expired is
        charged in full and may be settled late (any amount, replacing the charge) or renewed
        (in vain) within the settled grace of its expiry.
        """
        machine = _ledger_machine(ledger, clock, self.settled_grace)
        run_state_machine_as_test(machine, settings=self.state_machine_settings)

    def test_late_settle_within_the_grace_replaces_the_charge(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        """A charge is remembered for the whole settled grace, whatever settles happen meanwhile.

        Two holds on a monthly usd claim are charged; just before the grace ends (same month),
        other settles run (a ledger forgets old ids as it settles) and then each late settle
        still replaces its own charge.
        """
        tz = "America/New_York"
        claim = _claim("grace", 0.001, "usd", period="month", tz=tz)
        rates = Rates(0.000001, 0.000002)
        clock.now = _at(tz, 2024, 3, 4, 12)
        first, second = (
            ledger.reserve([claim], input_tokens=10, max_output_tokens=10, lease=5.0, rates=rates)
            for _ in range(2)
        )
        clock.advance(5.0)
        assert _nano(ledger.usage([claim])[0].used) == 60_000
        charged = ledger.reserve(
            [claim], input_tokens=10, max_output_tokens=0, min_output_tokens=0, rates=rates
        )
        clock.now = first.expires_at + self.settled_grace - 1.0  # still March
        ledger.settle(charged, tokens=10, cost=0.000004)
        ledger.settle(first, tokens=5, cost=0.000002)
        ledger.settle(second, tokens=0, requests=0)
        (state,) = ledger.usage([claim])
        assert (_nano(state.used), _nano(state.reserved)) == (6_000, 0)


_MACHINE_RATES = (Rates(0.000001, 0.000002), Rates(0.000002, 0.000001), Rates(0.000001, 0.0))
"""Prices the state machine reserves with: whole nano-dollars per token."""


def _ledger_machine(
    ledger: Ledger, clock: FakeClock, grace: float = SETTLED_GRACE
) -> type[RuleBasedStateMachine]:
    """Build the state machine class bound to one ledger and clock (fresh keys per run).

    ``grace`` is the ledger's settled grace: a charged hold is settled late only within it of
    its expiry (the contract promises nothing later, and a ledger forgets ids lazily).
    """
    start = clock.now

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            # Every run starts at the same time (runs use fresh keys), so that a replayed run
            # meets the same period boundaries.
            clock.now = start
            self.claims = [
                _claim("total", 600),
                _claim("window", 400, window=20.0),
                _claim("rpm", 3, "requests", window=15.0),
                _claim("calls", 1_000_000, "requests"),
                _claim("dollars", 0.0012, "usd"),
                _claim("daily", 500, period="day", tz="Asia/Ho_Chi_Minh"),
                _claim("monthly", 0.0009, "usd", period="month", tz="America/New_York"),
                _claim("hourly-usd", 0.0007, "usd", window=25.0),
            ]
            self.model = _LedgerModel()
            self.live: list[Reservation] = []
            self.expired: list[Reservation] = []

        def _room(self, claim: Claim, input_tokens: int, rates: Rates | None) -> Fraction | float:
            """Output tokens the claim has room for (unfloored), as the ledger must see it."""
            now = clock.now
            left = self.model.used(claim, now) + self.model.reserved(claim, now)
            if claim.unit == "tokens":
                return Fraction(claim.limit) - left - input_tokens
            assert rates is not None
            rate_in, rate_out = _nano(rates.input), _nano(rates.output)
            room = _nano(claim.limit) - left - input_tokens * rate_in
            if rate_out:
                return Fraction(room, rate_out)
            return math.inf if room >= 0 else -math.inf

        def _expected(
            self,
            claims: Sequence[Claim],
            input_tokens: int,
            most: int,
            least: int,
            rates: Rates | None,
        ) -> tuple[str, set[str], int]:
            now = clock.now
            model = self.model
            full = {
                c.policy
                for c in claims
                if c.unit == "requests"
                and model.used(c, now) + model.reserved(c, now) + 1 > c.limit
            }
            if full:
                return "rate", full, 0
            rooms = {
                c.policy: self._room(c, input_tokens, rates)
                for c in claims
                if c.unit in ("tokens", "usd")
            }
            tightest = min(rooms.values(), default=math.inf)
            if tightest >= most:
                grant = most
            else:
                grant = math.floor(tightest) if tightest != -math.inf else -1
            if grant < least:
                return "budget", {p for p, room in rooms.items() if room == tightest}, 0
            return "ok", set(), grant

        def _check_refusal(
            self,
            refusal: RateLimited | BudgetExceeded,
            outcome: str,
            policies: set[str],
            claims: Sequence[Claim],
            requested: tuple[int, float],
            now: float,
        ) -> None:
            assert outcome != "ok", f"refused ({refusal}) but the model grants"
            assert refusal.policy in policies, f"refused by {refusal.policy}, expected {policies}"
            if isinstance(refusal, RateLimited):
                assert outcome == "rate", f"{refusal} but expected {outcome}"
                assert 0 < refusal.retry_after <= refusal.window
                return
            if outcome == "rate":  # an all-time request claim may refuse as a budget
                assert refusal.unit == "requests"
                return
            claim = next(c for c in claims if c.policy == refusal.policy)
            assert refusal.unit == claim.unit
            used, reserved = self.model.used(claim, now), self.model.reserved(claim, now)
            if claim.unit == "usd":
                assert (_nano(refusal.used), _nano(refusal.reserved)) == (used, reserved)
                assert refusal.requested == pytest.approx(requested[1], rel=1e-9)
            else:
                assert (refusal.used, refusal.reserved) == (used, reserved)
                assert refusal.requested == requested[0]
            if claim.period is not None:
                assert refusal.resets_at == _period_end(claim, now)

        @rule(
            chosen=st.sets(st.integers(0, 7), min_size=1),
            input_tokens=st.integers(0, 150),
            least=st.integers(0, 40),
            extra=st.integers(0, 150),
            lease=st.sampled_from([5.0, 10.0, 30.0]),
            rates=st.sampled_from(_MACHINE_RATES),
        )
        def reserve(
            self,
            chosen: set[int],
            input_tokens: int,
            least: int,
            extra: int,
            lease: float,
            rates: Rates,
        ) -> None:
            claims = [self.claims[i] for i in sorted(chosen)]
            now = clock.now
            priced = any(c.unit == "usd" for c in claims)
            given = rates if priced or input_tokens % 2 else None  # rates are optional otherwise
            outcome, policies, grant = self._expected(
                claims, input_tokens, least + extra, least, given
            )
            refusal: RateLimited | BudgetExceeded | None = None
            try:
                reservation = ledger.reserve(
                    claims,
                    input_tokens=input_tokens,
                    max_output_tokens=least + extra,
                    min_output_tokens=least,
                    lease=lease,
                    rates=given,
                )
            except (RateLimited, BudgetExceeded) as exc:
                refusal = exc
            if refusal is not None:
                requested = (
                    input_tokens + least,
                    input_tokens * rates.input + least * rates.output,
                )
                self._check_refusal(refusal, outcome, policies, claims, requested, now)
                return
            assert outcome == "ok", f"granted {reservation.output_tokens} but expected {outcome}"
            assert reservation.output_tokens == grant
            assert reservation.input_tokens == input_tokens
            assert reservation.expires_at == now + lease
            cost = input_tokens * _nano(rates.input) + grant * _nano(rates.output)
            assert [
                _nano(amount) if c.unit == "usd" else amount
                for c, amount in zip(claims, reservation.amounts, strict=True)
            ] == [
                {"tokens": input_tokens + grant, "requests": 1, "usd": cost}[c.unit] for c in claims
            ]
            self.model.holds[reservation.id] = reservation
            self.model.expiry[reservation.id] = reservation.expires_at
            self.live.append(reservation)

        @precondition(lambda self: bool(self.live))
        @rule(data=st.data())
        def settle(self, data: st.DataObject) -> None:
            reservation = data.draw(st.sampled_from(self.live))
            held = int(reservation.input_tokens + reservation.output_tokens)
            tokens = data.draw(st.integers(0, held))
            requests = data.draw(st.integers(0, 1))
            dollars = [
                _nano(amount)
                for c, amount in zip(reservation.claims, reservation.amounts, strict=True)
                if c.unit == "usd"
            ]
            cost = data.draw(st.integers(0, dollars[0] if dollars else 10_000))
            ledger.settle(reservation, tokens=tokens, requests=requests, cost=cost / _NANO)
            self.model.settle(reservation, tokens, requests, cost, clock.now)
            self.live.remove(reservation)
            if data.draw(st.booleans()):  # a repeat changes nothing
                ledger.settle(reservation, tokens=held, requests=1, cost=cost / _NANO + 0.001)

        @precondition(lambda self: bool(self.live))
        @rule(data=st.data())
        def release(self, data: st.DataObject) -> None:
            reservation = data.draw(st.sampled_from(self.live))
            ledger.settle(reservation, tokens=0, requests=0)
            self.model.settle(reservation, 0, 0, 0, clock.now)
            self.live.remove(reservation)

        @precondition(lambda self: bool(self.expired))
        @rule(data=st.data())
        def release_expired(self, data: st.DataObject) -> None:
            reservation = data.draw(st.sampled_from(self.expired))
            ledger.settle(reservation, tokens=0, requests=0)
            self.model.settle(reservation, 0, 0, 0, clock.now)
            self.expired.remove(reservation)

        @precondition(lambda self: bool(self.expired))
        @rule(data=st.data())
        def late_settle(self, data: st.DataObject) -> None:
            """The owner's real use arrives after the charge: it replaces it, once."""
            reservation = data.draw(st.sampled_from(self.expired))
            held = int(reservation.input_tokens + reservation.output_tokens)
            tokens = data.draw(st.integers(0, held))
            requests = data.draw(st.integers(0, 1))
            cost = data.draw(st.integers(0, 10_000))
            ledger.settle(reservation, tokens=tokens, requests=requests, cost=cost / _NANO)
            self.model.settle(reservation, tokens, requests, cost, clock.now)
            self.expired.remove(reservation)
            if data.draw(st.booleans()):  # a second late settle changes nothing
                ledger.settle(reservation, tokens=held, requests=1, cost=0.001)

        @precondition(lambda self: bool(self.live) and isinstance(ledger, RenewableLedger))
        @rule(data=st.data(), lease=st.sampled_from([5.0, 10.0, 30.0]))
        def renew(self, data: st.DataObject, lease: float) -> None:
            assert isinstance(ledger, RenewableLedger)
            reservation = data.draw(st.sampled_from(self.live))
            assert ledger.renew(reservation, lease=lease) is True
            expiry = self.model.expiry
            expiry[reservation.id] = max(expiry[reservation.id], clock.now + lease)

        @precondition(lambda self: bool(self.expired) and isinstance(ledger, RenewableLedger))
        @rule(data=st.data())
        def renew_charged(self, data: st.DataObject) -> None:
            assert isinstance(ledger, RenewableLedger)
            reservation = data.draw(st.sampled_from(self.expired))
            assert ledger.renew(reservation, lease=10.0) is False

        def _moved(self) -> None:
            now = clock.now
            self.model.expire(now)
            for reservation in [r for r in self.live if self.model.expiry[r.id] <= now]:
                self.live.remove(reservation)
                self.expired.append(reservation)
            # A charge older than the settled grace may be forgotten at any time (a ledger
            # prunes ids as it goes, and one reused across runs meets ids of earlier runs on the
            # way), so a late settle of it is not defined by the contract: it stays charged.
            self.expired = [r for r in self.expired if now - self.model.expiry[r.id] < grace]

        @rule(seconds=st.sampled_from([0.25, 1.0, 2.5, 5.0, 7.75, 10.0, 15.0, 30.0]))
        def advance(self, seconds: float) -> None:
            clock.advance(seconds)
            self._moved()

        @rule(which=st.sampled_from([5, 6]), offset=st.sampled_from([-2.0, -0.25, 0.0, 0.25, 3.0]))
        def advance_to_period_end(self, which: int, offset: float) -> None:
            """Jump to just before, at or after the end of the daily or monthly period."""
            target = _period_end(self.claims[which], clock.now) + offset
            if target > clock.now:
                clock.now = target
                self._moved()

        @invariant()
        def within_limits(self) -> None:
            now = clock.now
            for state in ledger.usage(self.claims):
                claim = state.claim
                expected = (self.model.used(claim, now), self.model.reserved(claim, now))
                counted: tuple[float, float]
                if claim.unit == "usd":
                    counted = (_nano(state.used), _nano(state.reserved))
                    limit = float(_nano(claim.limit))
                else:
                    counted = (state.used, state.reserved)
                    limit = claim.limit
                assert counted == expected, claim.policy
                assert counted[0] + counted[1] <= limit, claim.policy
                assert state.remaining >= 0
                if claim.period is not None:
                    assert state.resets_at == _period_end(claim, now), claim.policy

    return LedgerMachine
