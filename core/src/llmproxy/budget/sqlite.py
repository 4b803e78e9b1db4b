"""A ledger in one SQLite file: budgets and rate limits shared by every process that opens it.

Each :meth:`SQLiteLedger.reserve` and :meth:`SQLiteLedger.settle` is one ``BEGIN IMMEDIATE``
transaction, so checks and holds are atomic across threads and processes. The file is in WAL
mode with ``synchronous=NORMAL`` (see :mod:`llmproxy.history.sqlite`, whose connection handling
it shares; a ledger and a history store may use the same file).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final

from llmproxy.budget import periods
from llmproxy.budget.base import Claim, ClaimUsage, InlineAsync, Rates, Reservation
from llmproxy.budget.memory import (
    SETTLED_GRACE,
    USD_SCALE,
    admit,
    amount_settled,
    check_arguments,
    check_settle,
    resets_at,
    usd_limit,
    usd_units,
)
from llmproxy.errors import InvalidRequest
from llmproxy.history.sqlite import _Database, immediate

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ledger_keys (
    key TEXT PRIMARY KEY NOT NULL,
    used REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_events (
    key TEXT NOT NULL,
    ts REAL NOT NULL,
    reservation TEXT NOT NULL,
    amount REAL NOT NULL,
    PRIMARY KEY (key, ts, reservation)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_holds (
    key TEXT NOT NULL,
    reservation TEXT NOT NULL,
    amount REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, reservation)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_settled (
    reservation TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_outcomes (
    reservation TEXT NOT NULL,
    key TEXT NOT NULL,
    amount REAL NOT NULL,
    ts REAL NOT NULL,
    keep_until REAL NOT NULL,
    PRIMARY KEY (reservation, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_outcomes_keep ON ledger_outcomes (keep_until);
CREATE TABLE IF NOT EXISTS ledger_periods (
    key TEXT PRIMARY KEY NOT NULL,
    period TEXT NOT NULL,
    used REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_claims (
    key TEXT PRIMARY KEY NOT NULL,
    policy TEXT NOT NULL,
    scope TEXT NOT NULL,
    max_amount REAL NOT NULL,
    unit TEXT NOT NULL,
    window_s REAL,
    period TEXT,
    tz TEXT NOT NULL
) WITHOUT ROWID;
"""
"""The tables, each one b-tree (a commit's cost grows with the pages it dirties).

``ledger_keys.used`` is a key's all-time total, or for a windowed key the sum of its rows in
``ledger_events`` (kept equal by every settle), so reading a window's use costs a lookup plus
the few events that left it since the key was last settled, however many are in it.
``ledger_events`` is clustered on ``(key, ts)``; ``ledger_holds`` (calls in flight, small) on
``key``; ``ledger_outcomes`` remembers what became of reservations for the settled grace: a
row with key ``''`` marks a settled id, a row per claim key one charged in full at expiry
(``amount`` charged at ``ts``, its expiry), until ``keep_until``. ``ledger_settled`` holds the
settled ids of llmproxy versions before it (ids starting with their lease's end), still
honoured and pruned after an hour. ``ledger_periods`` holds
a calendar key's total in its latest period (one row per key, whatever the number of periods):
a row of an earlier period than the current one counts as nothing and is replaced by the next
settle. ``ledger_claims`` holds each key's terms (policy, scope, limit in the claim's unit,
window or period) as a process last reserved it, for :meth:`SQLiteLedger.budgets`; a process
writes a key's row on its first reserve of those terms only. Amounts are in ledger units
(nano-dollars for usd claims: whole numbers, so sums are exact).
"""

# ?1 key, ?2 now (holds live while expires_at > now), ?3 window start (events count while
# ts > ?3; the ones at or before it have left the window but may not be deleted yet). A hold
# that expired and is not charged yet counts as used at its expiry (unknown is spent), as its
# charge will.
_TOTAL_STATE: Final = (
    "SELECT coalesce((SELECT used FROM ledger_keys WHERE key = ?1), 0.0)"
    " + (SELECT total(amount) FROM ledger_holds WHERE key = ?1 AND expires_at <= ?2),"
    " (SELECT total(amount) FROM ledger_holds WHERE key = ?1 AND expires_at > ?2)"
)
_WINDOW_STATE: Final = (
    "SELECT coalesce((SELECT used FROM ledger_keys WHERE key = ?1), 0.0)"
    " - (SELECT total(amount) FROM ledger_events WHERE key = ?1 AND ts <= ?3)"
    " + (SELECT total(amount) FROM ledger_holds WHERE key = ?1 AND expires_at <= ?2"
    " AND expires_at > ?3),"
    " (SELECT total(amount) FROM ledger_holds WHERE key = ?1 AND expires_at > ?2)"
)
# ?1 key, ?2 now, ?3 the current period's id (a row of an older period counts as nothing),
# ?4 the current period's start.
_PERIOD_STATE: Final = (
    "SELECT coalesce((SELECT used FROM ledger_periods WHERE key = ?1 AND period >= ?3), 0.0)"
    " + (SELECT total(amount) FROM ledger_holds WHERE key = ?1 AND expires_at <= ?2"
    " AND expires_at >= ?4),"
    " (SELECT total(amount) FROM ledger_holds WHERE key = ?1 AND expires_at > ?2)"
)
_OLDEST: Final = "SELECT min(ts) FROM ledger_events WHERE key = ? AND ts > ?"
_EVENTS: Final = "SELECT ts, amount FROM ledger_events WHERE key = ? AND ts > ? ORDER BY ts"
_EXPIRED_HOLDS: Final = (
    "SELECT h.key, h.reservation, h.amount, h.expires_at, c.unit, c.window_s, c.period, c.tz"
    " FROM ledger_holds AS h LEFT JOIN ledger_claims AS c ON c.key = h.key"
    " WHERE h.expires_at <= ?"
)
_DROP_EXPIRED_OF_KEY: Final = "DELETE FROM ledger_holds WHERE key = ? AND expires_at <= ?"
_MARK_SETTLED: Final = (
    "INSERT OR IGNORE INTO ledger_outcomes (reservation, key, amount, ts, keep_until)"
    " VALUES (?, '', 0, ?, ?)"
)
_LEGACY_SETTLED: Final = "SELECT 1 FROM ledger_settled WHERE reservation = ?"
_CHARGED: Final = (
    "INSERT OR REPLACE INTO ledger_outcomes (reservation, key, amount, ts, keep_until)"
    " VALUES (?, ?, ?, ?, ?)"
)
_CHARGE_OF: Final = "SELECT amount, ts FROM ledger_outcomes WHERE reservation = ? AND key = ?"
_DROP_CHARGE: Final = "DELETE FROM ledger_outcomes WHERE reservation = ? AND key = ?"
_RENEW: Final = (
    "UPDATE ledger_holds SET expires_at = max(expires_at, ?1)"
    " WHERE key = ?2 AND reservation = ?3 AND expires_at > ?4"
)
_ADJUST_USED: Final = (
    "INSERT INTO ledger_keys (key, used) VALUES (?1, max(?2, 0))"
    " ON CONFLICT (key) DO UPDATE SET used = max(used + ?2, 0)"
)
_ADJUST_PERIOD: Final = (
    "UPDATE ledger_periods SET used = max(used + ?3, 0) WHERE key = ?1 AND period = ?2"
)
_REPLACE_EVENT: Final = (
    "UPDATE ledger_events SET amount = ?4 WHERE key = ?1 AND ts = ?2 AND reservation = ?3"
)
_DROP_HOLD: Final = "DELETE FROM ledger_holds WHERE key = ? AND reservation = ?"
_ADD_USED: Final = (
    "INSERT INTO ledger_keys (key, used) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET used = used + excluded.used"
)
# A settle counts in the period it happens in; a row already in a later period (a clock that
# stepped back) keeps counting there, so periods never go back.
_ADD_PERIOD: Final = (
    "INSERT INTO ledger_periods (key, period, used) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (key) DO UPDATE SET"
    " used = CASE WHEN period >= excluded.period THEN used + excluded.used ELSE excluded.used END,"
    " period = max(period, excluded.period)"
)
_LEFT_WINDOW: Final = "SELECT count(*), total(amount) FROM ledger_events WHERE key = ? AND ts <= ?"
_PRUNE_EVENTS: Final = "DELETE FROM ledger_events WHERE key = ? AND ts <= ?"
_ADD_EVENT: Final = "INSERT INTO ledger_events (key, ts, reservation, amount) VALUES (?, ?, ?, ?)"
_PRUNE_SETTLED: Final = "DELETE FROM ledger_settled WHERE reservation < ?"
_PRUNE_OUTCOMES: Final = "DELETE FROM ledger_outcomes WHERE keep_until < ?"
_LEGACY_GRACE: Final = 3600.0
"""How long the settled ids of earlier versions (``ledger_settled``) were kept."""
_SET_CLAIM: Final = (
    "INSERT INTO ledger_claims (key, policy, scope, max_amount, unit, window_s, period, tz)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET policy = excluded.policy,"
    " scope = excluded.scope, max_amount = excluded.max_amount, unit = excluded.unit,"
    " window_s = excluded.window_s, period = excluded.period, tz = excluded.tz"
)
_CLAIMS: Final = (
    "SELECT key, policy, scope, max_amount, unit, window_s, period, tz FROM ledger_claims"
    " ORDER BY key"
)
_KNOWN_MAX: Final = 4096
"""Claims whose terms a ledger object remembers having written (then it forgets them all)."""
_OWN_HOLD: Final = (
    "SELECT total(amount) FROM ledger_holds WHERE key = ? AND reservation = ? AND expires_at > ?"
)
_SET_HOLD: Final = (
    "INSERT INTO ledger_holds (key, reservation, amount, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key, reservation) DO UPDATE SET"
    " amount = excluded.amount, expires_at = excluded.expires_at"
)
LEASE_SHARE: Final = 8.0
"""A lease takes at most this fraction (one eighth) of a claim's room at a time."""
_PRUNE_EVERY: Final = 64
"""Expired holds and old settled ids are deleted on every 64th reserve or settle of a process
(every read ignores them meanwhile), to keep the usual transaction down to the pages it needs."""


def _marks(keys: int) -> str:
    return ", ".join(["?"] * keys)


@lru_cache(maxsize=32)
def _expired_sql(keys: int) -> str:
    """The expired holds on ``keys`` keys (``?1``..``?n``, the time ``?n+1``): one statement.

    A UNION ALL of one index seek per key: ``key IN (...)`` would build a temporary index of
    the list on every run, which costs more than the seeks.
    """
    return " UNION ALL ".join(
        "SELECT key, reservation, amount, expires_at FROM ledger_holds"  # noqa: S608
        f" WHERE key = ?{index} AND expires_at <= ?{keys + 1}"
        for index in range(1, keys + 1)
    )


@lru_cache(maxsize=32)
def _drop_expired_sql(keys: int) -> str:
    return f"DELETE FROM ledger_holds WHERE key IN ({_marks(keys)}) AND expires_at <= ?"  # noqa: S608


@lru_cache(maxsize=32)
def _own_holds_sql(keys: int) -> str:
    """The keys one reservation (``?n+1``) holds among ``keys`` keys (``?1``..``?n``)."""
    return " UNION ALL ".join(
        f"SELECT key FROM ledger_holds WHERE key = ?{index} AND reservation = ?{keys + 1}"  # noqa: S608
        for index in range(1, keys + 1)
    )


@lru_cache(maxsize=32)
def _drop_own_sql(keys: int) -> str:
    """Delete one reservation's (``?n+1``) holds on ``keys`` keys (``?1``..``?n``)."""
    terms = " OR ".join(f"key = ?{index}" for index in range(1, keys + 1))
    return f"DELETE FROM ledger_holds WHERE ({terms}) AND reservation = ?{keys + 1}"  # noqa: S608


@lru_cache(maxsize=32)
def _insert_holds_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return f"INSERT INTO ledger_holds (key, reservation, amount, expires_at) VALUES {values}"  # noqa: S608


def _stamp(seconds: float) -> str:
    """Twelve hex digits of milliseconds, so that ids sort by the time they start with."""
    return format(min(max(int(seconds * 1000), 0), 0xFFFF_FFFF_FFFF), "012x")


class SQLiteLedger(InlineAsync):
    """A :class:`~llmproxy.budget.base.Ledger` in an SQLite file, atomic across processes.

    Same semantics as :class:`~llmproxy.budget.memory.MemoryLedger` (they share
    :func:`~llmproxy.budget.memory.admit`). ``clock`` gives the time in seconds and must agree
    between the processes sharing the file (the wall clock does); ``timeout`` is how long a call
    waits for another process's transaction. Failures raise
    :class:`~llmproxy.errors.StoreError` naming the file and what to do. A key must always be
    claimed with the same unit, window, period and time zone.

    Unknown is spent: a hold neither settled nor renewed (:meth:`renew`) by its expiry counts
    as used at its expiry in every read, and is charged in full (written as used, its id
    remembered with the amounts) by the next write touching its key, or by the sweep of every
    64th reserve; a later settle of it replaces the charge once (see the Ledger protocol).
    Events that left their window are deleted when their key is next settled. Settling a
    reservation again is a no-op, across processes, for ``settled_grace`` seconds (default
    :data:`~llmproxy.budget.memory.SETTLED_GRACE`, 24 h) after its settle or charge, when its
    id is forgotten.

    The async methods run the sync ones inline: a reserve or settle costs tens of
    microseconds, less than a hop to a thread, unless another process holds the write lock
    (up to ``timeout``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        settled_grace: float = SETTLED_GRACE,
    ) -> None:
        if not settled_grace > 0:
            raise InvalidRequest(
                f"settled_grace must be positive seconds, got {settled_grace}",
                field="settled_grace",
            )
        self._clock = clock
        self._grace = settled_grace
        self._db = _Database(path, timeout=timeout, kind="ledger", schema=_SCHEMA)
        self._reserves = 0
        self._settles = 0
        self._known: set[Claim] = set()  # claims whose terms this object wrote to ledger_claims

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    def now(self) -> float:
        """The ledger's clock."""
        return self._clock()

    def reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """Hold room on every claim atomically or raise (see the Ledger protocol)."""
        claims = check_arguments(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        reservation_id = uuid.uuid4().hex
        with immediate(self._db) as conn:
            assert conn is not None  # (None only without waiting)
            now = self._clock()
            self._reserves += 1
            if self._reserves % _PRUNE_EVERY == 1:
                self._charge_all(conn, now)
            else:
                self._charge(conn, claims, now)
            used: list[float] = []
            reserved: list[float] = []
            for claim in claims:
                row = conn.execute(*self._state(claim, now)).fetchone()
                used.append(row[0] or 0.0)
                reserved.append(row[1])
            grant, held, amounts = admit(
                claims,
                used,
                reserved,
                lambda index: self._events(conn, claims[index], now),
                now=now,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                min_output_tokens=min_output_tokens,
                rates=rates,
            )
            expires_at = now + lease
            if claims:
                params: list[Any] = []
                for claim, amount in zip(claims, held, strict=True):
                    params += (claim.key, reservation_id, amount, expires_at)
                conn.execute(_insert_holds_sql(len(claims)), params)
            new = self._write_terms(conn, claims)
        if new:
            self._remember(new)
        return Reservation(reservation_id, tuple(claims), amounts, grant, input_tokens, expires_at)

    def _write_terms(self, conn: sqlite3.Connection, claims: Sequence[Claim]) -> list[Claim]:
        """Write the terms of the claims this object has not written yet; return those."""
        known = self._known
        new = [claim for claim in claims if claim not in known]
        if new:
            conn.executemany(
                _SET_CLAIM,
                [
                    (c.key, c.policy, c.scope, c.limit, c.unit, c.window, c.period, c.tz)
                    for c in new
                ],
            )
        return new

    def _remember(self, claims: Sequence[Claim]) -> None:
        """Note claims whose terms were committed (not before: a rollback writes nothing)."""
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known.update(claims)

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Record ``tokens``, ``requests`` and ``cost`` and drop the hold; a repeat is a no-op.

        Settling a reservation whose hold was charged at expiry replaces the charge.
        """
        check_settle(tokens, requests, cost)
        reservation_id = reservation.id
        with immediate(self._db) as conn:
            assert conn is not None
            now = self._clock()
            if not conn.execute(_MARK_SETTLED, (reservation_id, now, now + self._grace)).rowcount:
                conn.execute("ROLLBACK")  # settled already: nothing to write
                return
            claims = reservation.claims
            self._charge(conn, claims, now)  # an expired hold is charged, this one too
            keys = [claim.key for claim in claims]
            held_keys: set[str] = set()
            if keys:
                held_keys = {
                    row[0]
                    for row in conn.execute(_own_holds_sql(len(keys)), (*keys, reservation_id))
                }
                if held_keys:  # held and live: the settle replaces the holds
                    conn.execute(_drop_own_sql(len(keys)), (*keys, reservation_id))
            if not held_keys and conn.execute(_LEGACY_SETTLED, (reservation_id,)).fetchone():
                conn.execute("ROLLBACK")  # settled by an earlier version: nothing to write
                return
            for claim, held in zip(claims, reservation.amounts, strict=True):
                amount = amount_settled(claim, tokens, requests, cost)
                key = claim.key
                if key in held_keys:
                    # Held and live: the settle replaces the hold.
                    self._record(conn, claim, now, [(now, reservation_id, amount)])
                    continue
                charge = conn.execute(_CHARGE_OF, (reservation_id, key)).fetchone()
                if charge is not None:
                    conn.execute(_DROP_CHARGE, (reservation_id, key))
                    self._replace(conn, claim, reservation_id, charge[0], charge[1], amount, now)
                else:  # charged, and the charge forgotten (or being written): the full hold
                    charged = usd_units(held) if claim.unit == "usd" else held
                    self._replace(conn, claim, reservation_id, charged, None, amount, now)
            self._settles += 1
            if self._settles % _PRUNE_EVERY == 1:
                conn.execute(_PRUNE_OUTCOMES, (now,))
                conn.execute(_PRUNE_SETTLED, (_stamp(now - _LEGACY_GRACE),))

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the hold's expiry to ``now + lease``, in one transaction.

        False when the hold no longer exists (settled, or expired: charged or about to be).
        """
        if not lease > 0:
            raise InvalidRequest(
                f"lease must be a positive number of seconds, got {lease}", field="lease"
            )
        if not reservation.claims:
            return False
        with immediate(self._db) as conn:
            assert conn is not None
            now = self._clock()
            renewed = 0
            for claim in reservation.claims:
                renewed += conn.execute(
                    _RENEW, (now + lease, claim.key, reservation.id, now)
                ).rowcount
        return renewed > 0

    def _charge(self, conn: sqlite3.Connection, claims: Sequence[Claim], now: float) -> None:
        """Charge in full the holds on ``claims``' keys that expired (unknown is spent).

        One SELECT however many claims (it usually finds nothing; a DELETE when it does).
        """
        if not claims:
            return
        keys = [claim.key for claim in claims]
        rows = conn.execute(_expired_sql(len(keys)), (*keys, now)).fetchall()
        if not rows:
            return
        conn.execute(_drop_expired_sql(len(keys)), (*keys, now))
        by_key: dict[str, list[tuple[str, float, float]]] = {}
        for key, rid, amount, expires_at in rows:
            by_key.setdefault(key, []).append((rid, amount, expires_at))
        for claim in claims:
            found = by_key.get(claim.key)
            if found:
                self._charged(conn, claim, now, found)

    def _charged(
        self,
        conn: sqlite3.Connection,
        claim: Claim,
        now: float,
        rows: Sequence[tuple[str, float, float]],
    ) -> None:
        """Write expired holds ``(reservation, amount, expires_at)`` as used, and remember them."""
        items = sorted(((ts, rid, amount) for rid, amount, ts in rows), key=lambda i: i[0])
        if claim.period is not None:
            # A charge counts in the period of its expiry, and not at all once that is over.
            current = periods.span(claim.period, claim.tz, now).start
            self._record(conn, claim, now, [item for item in items if item[0] >= current])
        else:
            self._record(conn, claim, now, items)
        keep_until = now + self._grace
        conn.executemany(
            _CHARGED, [(rid, claim.key, amount, ts, keep_until) for ts, rid, amount in items]
        )

    def _charge_all(self, conn: sqlite3.Connection, now: float) -> None:
        """Charge every expired hold in the file (keys no call touches any more included)."""
        by_key: dict[str, tuple[Claim, list[tuple[str, float, float]]]] = {}
        for key, rid, amount, expires_at, unit, window, period, tz in conn.execute(
            _EXPIRED_HOLDS, (now,)
        ).fetchall():
            found = by_key.get(key)
            if found is None:
                # The terms as last reserved (none recorded: an all-time total).
                claim = Claim(key, "", "", 0.0, unit or "tokens", window, period, tz or "UTC")
                found = by_key[key] = (claim, [])
            found[1].append((rid, amount, expires_at))
        for claim, rows in by_key.values():
            conn.execute(_DROP_EXPIRED_OF_KEY, (claim.key, now))
            self._charged(conn, claim, now, rows)

    def _replace(
        self,
        conn: sqlite3.Connection,
        claim: Claim,
        reservation_id: str,
        charged: float,
        ts: float | None,
        real: float,
        now: float,
    ) -> None:
        """Replace a charge (``charged`` at ``ts``; None: unknown) by what was really used.

        Per claim, used grows by ``real - charged`` and never drops below zero; a charge that
        has left its window or period (or whose time is unknown) is only topped up.
        """
        key = claim.key
        diff = real - charged
        if claim.window is None and claim.period is None:
            if diff:
                conn.execute(_ADJUST_USED, (key, diff))
            return
        if claim.window is not None:
            self._record(conn, claim, now, [])  # prune what left the window
            if ts is not None and ts > now - claim.window and charged:
                replaced = conn.execute(_REPLACE_EVENT, (key, ts, reservation_id, real)).rowcount
                if replaced:
                    if diff:
                        conn.execute(_ADJUST_USED, (key, diff))
                    return
        else:
            assert claim.period is not None
            span = periods.span(claim.period, claim.tz, now)
            if (
                ts is not None
                and ts >= span.start
                and charged
                and conn.execute(_ADJUST_PERIOD, (key, span.id, diff)).rowcount
            ):
                return
        if diff > 0:
            self._record(conn, claim, now, [(now, reservation_id, diff)])

    def sync_lease(
        self,
        owner: str,
        settled: Sequence[tuple[Claim, float, str, float]],
        wants: Sequence[tuple[Claim, float, float, float]],
        *,
        ttl: float,
        share: float = LEASE_SHARE,
        wait: bool = True,
        charged: Sequence[tuple[Claim, float, str, float]] = (),
    ) -> list[float] | None:
        """Record a batch of settles and resize one owner's leases, in one transaction.

        A lease is a hold named ``owner`` on a claim's key, from which a
        :class:`~llmproxy.budget.lease.LeasingLedger` admits calls in its own process.
        ``settled`` lists ``(claim, ts, reservation_id, amount)``: what calls admitted from
        the leases used, in ledger units, recorded as a settle at ``ts`` would be. ``wants``
        lists ``(claim, keep, want, step)`` per leased key: the hold becomes ``keep`` (what the
        owner's calls in flight hold, granted whatever the room) plus as much of
        ``want - keep`` as fits in ``1/share`` of the claim's room left by everyone else, in
        whole units, or nothing when that is less than ``step`` (one call's hold): a share too
        small to admit a call is not taken from the others. A hold of zero is deleted. The
        holds last ``ttl`` seconds unless synced again. Returns the new hold per want.

        With ``wait=False`` it does not wait for another connection's write to end: it returns
        None at once, having done nothing (an event loop's sync tries again later rather than
        stall every call on the loop for SQLite's busy sleeps).

        ``charged`` lists calls admitted from the leases whose hold expired unsettled, as
        ``(claim, expires_at, reservation_id, amount)``: written as used like ``settled`` and
        remembered as charged, so that a late settle of one (:meth:`settle` with its
        reservation) replaces its charge. Expired holds on the keys are charged first; if the
        owner's own lease had expired and was charged (the owner stalled for a whole ``ttl``),
        this batch's settles and charges replace that charge instead of adding to it.
        """
        if share < 1 or not ttl > 0:
            raise InvalidRequest(
                f"share must be >= 1 and ttl > 0, got share={share} ttl={ttl}", field="share"
            )
        result: list[float] = []
        with immediate(self._db, wait=wait) as conn:
            if conn is None:
                return None
            now = self._clock()
            batches: dict[str, tuple[Claim, list[tuple[float, str, float]]]] = {}
            for claim, ts, reservation_id, amount in [*settled, *charged]:
                batch = batches.get(claim.key)
                if batch is None:
                    batch = batches[claim.key] = (claim, [])
                batch[1].append((ts, reservation_id, amount))
            for claim, _keep, _want, _step in wants:
                if claim.key not in batches:
                    batches[claim.key] = (claim, [])
            self._charge(conn, [claim for claim, _items in batches.values()], now)
            for claim, items in batches.values():
                lapsed = conn.execute(_CHARGE_OF, (owner, claim.key)).fetchone()
                if lapsed is None:
                    self._record(conn, claim, now, sorted(items))
                    continue
                # The lease expired and was charged in full: what its calls used replaces it.
                conn.execute(_DROP_CHARGE, (owner, claim.key))
                real = sum(amount for _ts, _rid, amount in items)
                self._replace(conn, claim, owner, lapsed[0], lapsed[1], real, now)
            if charged:
                keep_until = now + self._grace
                conn.executemany(
                    _CHARGED,
                    [
                        (rid, claim.key, amount, ts, keep_until)
                        for claim, ts, rid, amount in charged
                    ],
                )
            expires_at = now + ttl
            for claim, keep, want, step in wants:
                hold = keep
                if want > keep:  # (else no room is asked for: no need to read it)
                    used, reserved = conn.execute(*self._state(claim, now)).fetchone()
                    (own,) = conn.execute(_OWN_HOLD, (claim.key, owner, now)).fetchone()
                    limit = usd_limit(claim.limit) if claim.unit == "usd" else claim.limit
                    room = limit - (used or 0.0) - (reserved - own) - keep
                    extra = min(want - keep, room / share)
                    hold += float(math.floor(extra)) if extra >= step else 0.0
                if hold > 0:
                    conn.execute(_SET_HOLD, (claim.key, owner, hold, expires_at))
                else:
                    conn.execute(_DROP_HOLD, (claim.key, owner))
                result.append(hold)
            new = self._write_terms(conn, [claim for claim, _keep, _want, _step in wants])
        if new:
            self._remember(new)
        return result

    @staticmethod
    def _record(
        conn: sqlite3.Connection,
        claim: Claim,
        now: float,
        items: Sequence[tuple[float, str, float]],
    ) -> None:
        """Add what calls used to ``claim``'s key, in a few statements however many they are.

        ``items`` are ``(ts, reservation_id, amount)``: an amount in ledger units used at ``ts``.
        """
        key = claim.key
        if claim.window is None:
            if claim.period is None:
                total = sum(amount for _ts, _id, amount in items)
                if total:
                    conn.execute(_ADD_USED, (key, total))
                return
            by_period: dict[str, float] = {}
            for ts, _id, amount in items:
                if amount:
                    period = periods.span(claim.period, claim.tz, ts).id
                    by_period[period] = by_period.get(period, 0.0) + amount
            for period, total in sorted(by_period.items()):
                conn.execute(_ADD_PERIOD, (key, period, total))
            return
        # Delete what left the window and keep ledger_keys.used equal to the sum of the key's
        # events (an item already out of the window is not written).
        start = now - claim.window
        left, left_amount = conn.execute(_LEFT_WINDOW, (key, start)).fetchone()
        if left:
            conn.execute(_PRUNE_EVENTS, (key, start))
        events = [(key, ts, rid, amount) for ts, rid, amount in items if amount and ts > start]
        added = 0.0
        if events:
            conn.executemany(_ADD_EVENT, events)
            added = sum(event[3] for event in events)
        if added or left:
            conn.execute(_ADD_USED, (key, added - left_amount))

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Return the state of each claim, read in one snapshot."""
        return self._read(claims)

    def budgets(self) -> list[ClaimUsage]:
        """Return the state of every claim reserved here whose terms were recorded, by key.

        See :class:`~llmproxy.budget.base.ListableLedger`. Keys last reserved by a version of
        llmproxy that did not record terms are not listed until they are reserved again.
        """
        return self._read(None)

    async def abudgets(self) -> list[ClaimUsage]:
        """Async :meth:`budgets` (runs inline)."""
        return self.budgets()

    def _read(self, claims: Sequence[Claim] | None) -> list[ClaimUsage]:
        """The state of ``claims`` (None: of every recorded claim), read in one snapshot."""
        result: list[ClaimUsage] = []
        db = self._db
        with db.lock:
            try:
                conn = db.connection()
                conn.execute("BEGIN")
                try:
                    now = self._clock()
                    if claims is None:
                        claims = [
                            Claim(key, policy, scope, limit, unit, window, period, tz)
                            for key, policy, scope, limit, unit, window, period, tz in conn.execute(
                                _CLAIMS
                            )
                        ]
                    for claim in claims:
                        used, reserved = conn.execute(*self._state(claim, now)).fetchone()
                        used = used or 0.0
                        oldest: list[tuple[float, float]] = []
                        if claim.window is not None:
                            (first,) = conn.execute(
                                _OLDEST, (claim.key, now - claim.window)
                            ).fetchone()
                            if first is not None:
                                oldest.append((first, 0.0))
                        if claim.unit == "usd":
                            used, reserved = used / USD_SCALE, reserved / USD_SCALE
                        result.append(
                            ClaimUsage(claim, used, reserved, resets_at(claim, now, oldest))
                        )
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise db.error(exc) from exc
        return result

    def close(self) -> None:
        """Close the connection; later calls raise StoreError."""
        self._db.close()

    @staticmethod
    def _state(claim: Claim, now: float) -> tuple[str, tuple[Any, ...]]:
        """The query and parameters reading a claim's (used, reserved) in ledger units."""
        if claim.window is not None:
            return _WINDOW_STATE, (claim.key, now, now - claim.window)
        if claim.period is not None:
            span = periods.span(claim.period, claim.tz, now)
            return _PERIOD_STATE, (claim.key, now, span.id, span.start)
        return _TOTAL_STATE, (claim.key, now)

    @staticmethod
    def _events(conn: sqlite3.Connection, claim: Claim, now: float) -> list[tuple[float, float]]:
        if claim.window is None:
            return []
        return conn.execute(_EVENTS, (claim.key, now - claim.window)).fetchall()
