"""RedisLedger: budgets and rate limits shared by every process and machine using one Redis.

One EVALSHA reserves across all of a call's claims and one settles (see
:mod:`llmproxy_redis_budget.scripts`). When a Proxy's history store is on the same Redis, the
call's last settle is sent inside the store's append (:meth:`RedisLedger.queue_settle`), so
settle and history write cost one round trip together.

The decisions live in plain methods that build a script's arguments and read its reply; the
sync and async methods are thin shells that only differ in how they send a request
(``redis.Redis`` or ``redis.asyncio.Redis``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlencode

import attrs
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    MaxConnectionsError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from llmproxy.budget import periods
from llmproxy.budget.base import Claim, ClaimUsage, Rates, Reservation
from llmproxy.budget.memory import (
    SETTLED_GRACE,
    USD_SCALE,
    MemoryLedger,
    amount_settled,
    check_arguments,
    check_settle,
    resets_at,
    retry_after,
    usd_limit,
    usd_rate,
)
from llmproxy.env import data_dir as data_dir_of
from llmproxy.errors import BudgetExceeded, ConfigError, InvalidRequest, RateLimited, StoreError
from llmproxy.secret import logger as secret_logger
from llmproxy_redis_budget import scripts
from llmproxy_redis_budget.breaker import CircuitBreaker
from llmproxy_redis_budget.env import LedgerSettings, settings_from_url

if TYPE_CHECKING:
    from llmproxy.journal import Journal, Pending

log = secret_logger("llmproxy_redis_budget")

LOCAL_PREFIX: Final = "local:"
"""Ids of reservations made by the local fallback ledger (``fail=open`` while Redis is down)."""

_UNIT_CODES: Final = {"tokens": "t", "requests": "r", "usd": "u"}
_Script = Literal["reserve", "settle", "usage", "renew", "charge"]
_SOURCES: Final[dict[_Script, str]] = {
    "reserve": scripts.RESERVE,
    "settle": scripts.SETTLE,
    "usage": scripts.USAGE,
    "renew": scripts.RENEW,
    "charge": scripts.CHARGE,
}
_SHAS: Final = {
    name: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    for name, source in _SOURCES.items()
}
_Key = str | bytes
_Request = tuple[_Script, list[_Key], list[str]]
_Steps = Generator[_Request, list[Any], Any]


@attrs.frozen
class _ClaimPlan:
    """What never changes about a claim in a script call: its keys and fixed fields."""

    keys: tuple[bytes, ...]  # encoded once: redis-py then sends them as they are
    unit: str
    limit: str
    window: str
    terms: str  # the claim's terms as JSON, stored for listing (see _claim_of)


class _Down(Exception):
    """Redis could not be used for this call (unreachable, timed out, or the breaker is open)."""


_OUTAGES: Final = (
    ClusterError,  # cluster down, master down, try again, slot not covered
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,  # a replica after a failover
    RedisClusterException,
)


def _is_outage(exc: RedisError) -> bool:
    """Whether a failure means Redis cannot serve us now (not that it found our call wrong).

    Connection errors and timeouts are; so are a full, read-only, busy or partial server. Any
    other error answer (a script error, WRONGTYPE, NOPERM) is not: those are raised as they are,
    whatever ``fail`` says.
    """
    if not isinstance(exc, ResponseError) or isinstance(exc, _OUTAGES):
        return True
    return str(exc).startswith(("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS"))


def _fmt(value: float) -> str:
    """A float as Lua reads it back exactly (Lua's tonumber knows no 'inf')."""
    value = float(value)
    if value in (math.inf, -math.inf):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def _int(value: float) -> str:
    return str(round(value))


def _drop_async_client(client: Any) -> None:
    """Shut an async client's sockets without awaiting (its event loop may be gone or busy)."""
    pool = getattr(client, "connection_pool", None)
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    for connection in connections:
        close = getattr(connection, "_close", None)  # what redis-py's own __del__ calls
        if close is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: GC takes the socket
                close()


class RedisLedger:
    """A :class:`~llmproxy.budget.base.Ledger` in Redis, atomic across processes and machines.

    Same semantics as :class:`~llmproxy.budget.memory.MemoryLedger` and
    :class:`~llmproxy.budget.sqlite.SQLiteLedger` (the Lua script follows
    :func:`~llmproxy.budget.memory.admit` step by step). ``url`` is a ``redis://`` or
    ``rediss://`` URL with options as query parameters (see :mod:`llmproxy_redis_budget.env`);
    None or a bare ``redis://`` reads the connection from ``environ``. Keyword options win over
    the URL's.

    Time: windows, leases and periods are counted by the Redis server's clock (``TIME`` inside
    the scripts), so machines whose clocks disagree still agree on every window.
    :meth:`now` estimates the server's time from this machine's ``local_clock`` and the offset
    learned from the last reply. ``clock`` replaces the server's clock with one of yours,
    passed to every script (tests drive a fake one this way); keys then get no expiry times,
    since Redis would expire them by its own clock.

    Failures: a call that cannot reach Redis within ``socket_timeout`` counts as a failure;
    ``breaker_failures`` in a row open a circuit breaker for ``breaker_cooldown`` seconds,
    during which calls do not try Redis; then one call probes (``breaker_clock``, a monotonic
    clock in seconds, times the cooldown; tests pass a fake one). Meanwhile a background
    thread sends ``PING`` every ``breaker_probe`` seconds and closes the breaker as soon as
    Redis answers, so calls go through again promptly once it is back. With ``fail="closed"`` (the
    default) such calls raise :class:`~llmproxy.errors.StoreError` naming the URL (without its
    password); with ``fail="open"`` they go on, counted in a local
    :class:`~llmproxy.budget.memory.MemoryLedger` that enforces the same limits for this
    process only, and a warning is logged when Redis goes away and comes back.

    Fail-open is journaled, so that what each process admits during an outage reaches Redis
    once it is back: a local reserve writes its worst case (the whole hold, as spent) to the
    journal in the data dir (:mod:`llmproxy.journal`, ``LLMPROXY_DATA_DIR``) before the call
    goes on, and its settle writes the real use under the same id and drops the worst case
    (a settle of a hold Redis made, sent while Redis is away, is journaled too). The journal
    is replayed in a background thread when Redis answers again (the breaker's probe, or the
    first call that gets through), and once after the first call that reaches Redis if an
    earlier process left entries (:meth:`replay_journal` replays on demand). A worst case
    reaches Redis as a charge (as if its hold had expired unsettled), so that a real settle
    replayed after it replaces it exactly once; every replay is idempotent by reservation id.
    So a process killed during an outage is counted for the full holds of the calls it
    admitted, and N processes overrun a budget by at most N times its limit per outage (each
    fallback counts from zero), all of it counted once Redis returns.

    Thread-safe; the async methods use ``redis.asyncio`` with one client per event loop. Close
    with :meth:`close`, or ``await`` :meth:`aclose` inside the loop that used the async
    methods.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        local_clock: Callable[[], float] = time.time,
        prefix: str | None = None,
        fail: Literal["closed", "open"] | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
        breaker_failures: int | None = None,
        breaker_cooldown: float | None = None,
        breaker_clock: Callable[[], float] = time.monotonic,
        cluster: bool | None = None,
        breaker_probe: float | None = None,
        settled_grace: float | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        settings = settings_from_url(url, env)
        if settled_grace is None:
            from llmproxy import env as core_env

            settled_grace = core_env.seconds(env, core_env.LEDGER_SETTLED_GRACE) or SETTLED_GRACE
        if not settled_grace > 0:
            raise ConfigError(
                f"settled_grace must be positive seconds, got {settled_grace}",
                path="settled_grace",
            )
        self._grace = settled_grace
        overrides = {
            "prefix": prefix,
            "fail": fail,
            "socket_timeout": socket_timeout,
            "connect_timeout": connect_timeout,
            "breaker_failures": breaker_failures,
            "breaker_cooldown": breaker_cooldown,
            "breaker_probe": breaker_probe,
            "cluster": cluster,
        }
        given = {name: value for name, value in overrides.items() if value is not None}
        if given:
            # Validate keyword options exactly like URL ones.
            merged = {
                **{k: str(getattr(settings, k)) for k in overrides},
                **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in given.items()},
            }
            settings = settings_from_url(
                settings.url + ("&" if "?" in settings.url else "?") + urlencode(merged), {}
            )
        self.settings: LedgerSettings = settings
        self._clock = clock
        self._local_clock = local_clock
        self._offset: float | None = None
        self._tag = "{llmproxy-budget:" + settings.prefix + "}"
        self._plans: dict[Claim, _ClaimPlan] = {}
        # Per set of claims (policies and scopes repeat call after call): the reserve's keys,
        # fields and terms when no claim has a calendar period (whose fields move with the
        # clock), and the settle's keys and windows.
        self._reserve_sets: dict[tuple[Claim, ...], tuple[tuple[_Key, ...], str, str]] = {}
        self._settle_sets: dict[tuple[Claim, ...], tuple[tuple[_Key, ...], list[str]]] = {}
        self._breaker = CircuitBreaker(
            failures=settings.breaker_failures,
            cooldown=settings.breaker_cooldown,
            clock=breaker_clock,
            probe=self._ping if settings.breaker_probe > 0 else None,
            probe_interval=settings.breaker_probe,
            on_close=self._replay_soon,
        )
        self._fallback = MemoryLedger(clock=clock or local_clock)
        self._outage = False
        self._environ = env
        self._journal: Journal | None = None
        self._journal_failed = False
        self._worst: dict[str, int] = {}  # local reservation id -> its worst-case entry
        self._replayer: threading.Thread | None = None
        self._replay_again = False
        self._leftovers_checked = False
        self._lock = threading.Lock()
        self._closed = False
        self._aclients: dict[asyncio.AbstractEventLoop, Any] = {}
        try:
            self._client: Any = self._make_client(asynchronous=False)
            pool = getattr(self._client, "connection_pool", None)
            if pool is not None:  # build (not open) a connection: bad options fail here, now
                pool.connection_class(**pool.connection_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"redis ledger URL {settings.safe_url!r} has an option redis-py refuses: {exc}",
                path="url",
            ) from None

    def __repr__(self) -> str:
        return f"<RedisLedger {self.settings.safe_url} prefix={self.settings.prefix!r}>"

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding calls to Redis."""
        return self._breaker

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def fallback(self) -> MemoryLedger:
        """The local ledger used while Redis is down with ``fail="open"``."""
        return self._fallback

    def key(self, kind: Literal["u", "h", "e", "s"], name: str) -> str:
        """The Redis key of a claim key or of a settled reservation id.

        ``u`` totals and reserved sum, ``h`` holds, ``e`` window events (claim keys); ``s`` the
        marker of a settled reservation (ids). See :mod:`llmproxy_redis_budget.scripts`.

        >>> RedisLedger("redis://localhost/0?prefix=app").key("u", "tokens|global")
        '{llmproxy-budget:app}:u:tokens|global'
        """
        return f"{self._tag}:{kind}:{name}"

    # -- clients ---------------------------------------------------------------------------------

    def _make_client(self, *, asynchronous: bool) -> Any:
        settings = self.settings
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.connect_timeout,
        }
        if asynchronous:
            from redis.asyncio.retry import Retry as AsyncRetry

            kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
            if settings.cluster:
                return redis.asyncio.RedisCluster.from_url(settings.url, **kwargs)
            return redis.asyncio.Redis.from_url(settings.url, **kwargs)
        from redis.retry import Retry

        kwargs["retry"] = Retry(NoBackoff(), 0)
        if settings.cluster:
            return redis.RedisCluster.from_url(settings.url, **kwargs)
        return redis.Redis.from_url(settings.url, **kwargs)

    def _aclient(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._lock:
                self._check_open()
                client = self._aclients.get(loop)
                if client is None:
                    for old in [old for old in self._aclients if old.is_closed()]:
                        _drop_async_client(self._aclients.pop(old))
                    client = self._aclients[loop] = self._make_client(asynchronous=True)
        return client

    def _ping(self) -> None:
        """The breaker's background probe: one ``PING`` (raises while Redis is away)."""
        self._check_open()
        self._client.ping()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed; create a new RedisLedger to use it")

    # -- sending one script call: the only I/O -------------------------------------------------

    def _send(self, request: _Request) -> list[Any]:
        self._check_open()
        name, keys, args = request
        client = self._client
        try:
            try:
                reply = client.evalsha(_SHAS[name], len(keys), *keys, *args)
            except NoScriptError:  # a new or restarted server: load the script once
                client.script_load(_SOURCES[name])
                reply = client.evalsha(_SHAS[name], len(keys), *keys, *args)
        except RedisError as exc:
            raise self._failure(exc) from exc
        except BaseException:
            self._breaker.abandon()
            raise
        self._succeeded(reply)
        return list(reply)

    async def _asend(self, request: _Request) -> list[Any]:
        self._check_open()
        name, keys, args = request
        client = self._aclient()
        try:
            try:
                reply = await client.evalsha(_SHAS[name], len(keys), *keys, *args)
            except NoScriptError:
                await client.script_load(_SOURCES[name])
                reply = await client.evalsha(_SHAS[name], len(keys), *keys, *args)
        except RedisError as exc:
            raise self._failure(exc) from exc
        except BaseException:
            self._breaker.abandon()
            raise
        self._succeeded(reply)
        return list(reply)

    def _succeeded(self, reply: Any) -> None:
        if self._breaker.success() or self._outage:
            self._outage = False
            log.warning("Redis ledger at %s answers again", self.settings.safe_url)
            self._leftovers_checked = True
            self._replay_soon()
        elif not self._leftovers_checked:
            self._leftovers_checked = True
            self._replay_leftovers()
        if self._clock is None and reply and len(reply) > 1:
            with contextlib.suppress(TypeError, ValueError):
                self._offset = float(reply[1]) - self._local_clock()

    def _failure(self, exc: RedisError) -> Exception:
        """The exception a failed call raises: _Down for an outage, else a StoreError."""
        if not _is_outage(exc):
            self._succeeded(None)  # it answered: it is up
            return StoreError(
                f"Redis ledger at {self.settings.safe_url} answered with an error: {exc};"
                f" check that nothing else writes keys under {self._tag} and that the user may"
                " run scripts"
            )
        self._failed(exc)
        return _Down(str(exc) or type(exc).__name__)

    def _failed(self, exc: BaseException) -> None:
        opened = self._breaker.failure()
        if opened:
            log.warning(
                "Redis ledger at %s failed %d times in a row (%s); not trying it for %gs (%s)",
                self.settings.safe_url,
                self._breaker.failures,
                exc,
                self._breaker.cooldown,
                "counting locally" if self.settings.fail == "open" else "calls fail",
            )
        elif not self._outage:
            log.warning("Redis ledger at %s failed: %s", self.settings.safe_url, exc)
        self._outage = True

    def _run(self, steps: _Steps) -> Any:
        if not self._breaker.allow():
            steps.close()
            raise _Down("the circuit breaker is open")
        try:
            request = next(steps)
            while True:
                request = steps.send(self._send(request))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    async def _arun(self, steps: _Steps) -> Any:
        if not self._breaker.allow():
            steps.close()
            raise _Down("the circuit breaker is open")
        try:
            request = next(steps)
            while True:
                request = steps.send(await self._asend(request))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    def _unavailable(self, down: _Down) -> StoreError:
        retry = self._breaker.retry_in()
        when = f"; not retried for {retry:.1f}s" if retry else ""
        return StoreError(
            f"Redis ledger at {self.settings.safe_url} is unavailable ({down}){when}: budgets"
            " cannot be checked. Start or reach Redis, or set fail=open on the ledger URL to"
            " go on with per-process limits while it is down"
        )

    # -- time --------------------------------------------------------------------------------

    def now(self) -> float:
        """The ledger's clock: the injected one, or this machine's estimate of the server's.

        The estimate is the local clock plus the offset learned from the last script reply;
        before any reply it asks the server for its ``TIME`` once.
        """
        if self._clock is not None:
            return self._clock()
        if self._offset is None and self._breaker.allow():
            try:
                seconds, micros = self._client.time()
            except RedisError as exc:
                self._failed(exc)
            else:
                self._breaker.success()
                self._offset = seconds + micros / 1_000_000 - self._local_clock()
        return self._local_clock() + (self._offset or 0.0)

    def _estimate(self) -> float:
        if self._clock is not None:
            return self._clock()
        return self._local_clock() + (self._offset or 0.0)

    def _time_args(self, estimate: float) -> tuple[str, str]:
        """The script's ``now`` argument ('-' = the server's TIME) and the TTL flag."""
        if self._clock is not None:
            return _fmt(estimate), "-"
        return "-", "1"

    # -- arguments -------------------------------------------------------------------------------

    def _plan(self, claim: Claim) -> _ClaimPlan:
        plan = self._plans.get(claim)
        if plan is None:
            if len(self._plans) >= 4096:
                self._plans.clear()
            key = claim.key
            keys: tuple[bytes, ...] = (self.key("u", key).encode(), self.key("h", key).encode())
            if claim.window is not None:
                keys += (self.key("e", key).encode(),)
            limit = usd_limit(claim.limit) if claim.unit == "usd" else claim.limit
            terms = [claim.policy, claim.scope, claim.limit, claim.unit, claim.window]
            terms += [claim.period, claim.tz]
            plan = self._plans[claim] = _ClaimPlan(
                keys,
                _UNIT_CODES[claim.unit],
                _fmt(limit),
                "-" if claim.window is None else _fmt(claim.window),
                json.dumps(terms, separators=(",", ":")),
            )
        return plan

    def _reserve_set(
        self, claims: Sequence[Claim], estimate: float
    ) -> tuple[tuple[_Key, ...], str, str]:
        """The reserve's claim keys, packed fields and terms for ``claims`` (kept when fixed)."""
        claim_set = claims if isinstance(claims, tuple) else tuple(claims)
        found = self._reserve_sets.get(claim_set)
        if found is not None:
            return found
        keys: list[_Key] = []
        terms: list[str] = []
        fields: list[str] = []
        for claim in claim_set:
            plan = self._plan(claim)
            keys += plan.keys
            fields.append(
                f"{plan.unit} {plan.limit} {plan.window}" + self._period_fields(claim, estimate)
            )
            terms.append(plan.terms)
        found = (tuple(keys), "|".join(fields), "\n".join(terms))
        if all(claim.period is None for claim in claim_set):
            if len(self._reserve_sets) >= 1024:
                self._reserve_sets.clear()
            self._reserve_sets[claim_set] = found
        return found

    def _settle_set(self, claims: tuple[Claim, ...]) -> tuple[tuple[_Key, ...], list[str]]:
        """The settle's claim keys and each claim's window field, kept per set of claims."""
        found = self._settle_sets.get(claims)
        if found is None:
            keys: list[_Key] = []
            windows: list[str] = []
            for claim in claims:
                plan = self._plan(claim)
                keys += plan.keys
                windows.append(plan.window)
            if len(self._settle_sets) >= 1024:
                self._settle_sets.clear()
            found = self._settle_sets[claims] = (tuple(keys), windows)
        return found

    @staticmethod
    def _period_fields(claim: Claim, estimate: float) -> str:
        """A calendar claim's candidate periods, as script fields (with a leading space)."""
        if claim.period is None:
            return ""
        around = periods.neighbours(claim.period, claim.tz, estimate)
        return (
            f" {_fmt(around.previous.start)} {_fmt(around.current.start)}"
            f" {_fmt(around.current.end)} {_fmt(around.next.end)}"
            f" {around.previous.id.replace('-', '')} {around.current.id.replace('-', '')}"
            f" {around.next.id.replace('-', '')}"
        )

    # -- the operations, as steps (requests out, replies in) ---------------------------------------

    def _reserve_steps(
        self,
        claims: Sequence[Claim],
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int,
        lease: float,
        rates: Rates | None,
        guard: str | None = None,
    ) -> _Steps:
        """Reserve; with ``guard``, only while that key does not exist (else return None)."""
        reservation_id = uuid.uuid4().hex
        rate_in = rate_out = "0"
        if rates is not None:
            rate_in, rate_out = _fmt(usd_rate(rates.input)), _fmt(usd_rate(rates.output))
        estimate = self._estimate()
        for _ in range(2):
            now, ttl = self._time_args(estimate)
            keys: list[_Key] = []
            args = [
                f"{now} {reservation_id} {input_tokens} {max_output_tokens} {min_output_tokens}"
                f" {_fmt(lease)} {rate_in} {rate_out} {ttl} {_fmt(self._grace)} {self._tag}"
                + (" 1" if guard is not None else "")
            ]
            claim_keys, fields, terms = self._reserve_set(claims, estimate)
            keys += claim_keys
            if guard is not None:
                keys.append(guard)
            args += (fields, terms)
            reply = yield ("reserve", keys, args)
            status, server_now = reply[0], float(reply[1])
            if status == "skip":
                return None
            if status == "clock":
                estimate = server_now
                continue
            if status == "ok":
                grant = int(reply[2])
                amounts = tuple(
                    int(held) / USD_SCALE if claim.unit == "usd" else float(held)
                    for claim, held in zip(claims, reply[3].split(), strict=True)
                )
                return Reservation(
                    reservation_id,
                    tuple(claims),
                    amounts,
                    grant,
                    input_tokens,
                    server_now + lease,
                )
            self._refuse(reply, claims, input_tokens, min_output_tokens, rates)
        raise StoreError(  # pragma: no cover - the second try uses the server's own time
            f"Redis ledger at {self.settings.safe_url}: the server's clock moved by more than a"
            " calendar period during one reserve"
        )

    @staticmethod
    def _refuse(
        reply: list[Any],
        claims: Sequence[Claim],
        input_tokens: int,
        min_output_tokens: int,
        rates: Rates | None,
    ) -> None:
        """Raise the error a ``refuse`` reply stands for (the same one admit would raise)."""
        now, kind, index = float(reply[1]), reply[2], int(reply[3]) - 1
        used, reserved = float(reply[4]), float(reply[5])
        events = [(float(reply[i]), float(reply[i + 1])) for i in range(6, len(reply), 2)]
        claim = claims[index]
        if kind == "rate":
            assert claim.window is not None
            raise RateLimited(
                policy=claim.policy,
                scope=claim.scope,
                limit=claim.limit,
                window=claim.window,
                retry_after=retry_after(
                    events, used + reserved + 1 - claim.limit, claim.window, now
                ),
            )
        if claim.unit == "usd":
            assert rates is not None
            used, reserved = used / USD_SCALE, reserved / USD_SCALE
            requested = input_tokens * rates.input + min_output_tokens * rates.output
        elif claim.unit == "requests":
            requested = 1
        else:
            requested = input_tokens + min_output_tokens
        raise BudgetExceeded(
            policy=claim.policy,
            scope=claim.scope,
            limit=claim.limit,
            used=used,
            reserved=reserved,
            requested=requested,
            unit=claim.unit,
            resets_at=resets_at(claim, now, events),
        )

    def _settle_steps(
        self, reservation: Reservation, tokens: int, requests: int, cost: float
    ) -> _Steps:
        estimate = self._estimate()
        for _ in range(2):
            now, ttl = self._time_args(estimate)
            keys: list[_Key] = [self.key("s", reservation.id)]
            header = (
                f"{now} {reservation.id} {_fmt(reservation.expires_at)} {ttl}"
                f" {_fmt(self._grace)} {self._tag}"
            )
            fields: list[str] = []
            claim_keys, windows = self._settle_set(reservation.claims)
            keys += claim_keys
            for claim, held, window in zip(
                reservation.claims, reservation.amounts, windows, strict=True
            ):
                held_units = round(held * USD_SCALE if claim.unit == "usd" else held)
                settled = round(amount_settled(claim, tokens, requests, cost))
                field = f"{window} {held_units} {settled}"
                if claim.period is not None:
                    field += self._period_fields(claim, estimate)
                fields.append(field)
            reply = yield ("settle", keys, [header, "|".join(fields)])
            if reply[0] != "clock":
                return None
            estimate = float(reply[1])
        raise StoreError(  # pragma: no cover
            f"Redis ledger at {self.settings.safe_url}: the server's clock moved by more than a"
            " calendar period during one settle"
        )

    def _renew_steps(self, reservation: Reservation, lease: float) -> _Steps:
        now, ttl = self._time_args(self._estimate())
        keys: list[_Key] = []
        args = [f"{now} {reservation.id} {_fmt(lease)} {ttl}"]
        for claim, held in zip(reservation.claims, reservation.amounts, strict=True):
            plan = self._plan(claim)
            keys += plan.keys[:2]
            keep = claim.window if claim.window is not None else 0.0
            if claim.period is not None:
                keep = 2764800.0  # a month: see the scripts' hold_keep
            args.append(f"{_int(held * USD_SCALE if claim.unit == 'usd' else held)} {_fmt(keep)}")
        reply = yield ("renew", keys, args)
        return int(reply[2]) > 0

    def _charge_steps(self, reservation: Reservation) -> _Steps:
        """Charge a hold Redis never made (a local one) as spent now, unless its id is known."""
        estimate = self._estimate()
        for _ in range(2):
            now, ttl = self._time_args(estimate)
            keys: list[_Key] = [self.key("s", reservation.id)]
            args = [f"{now} {reservation.id} {ttl} {_fmt(self._grace)} {self._tag}"]
            for claim, held in zip(reservation.claims, reservation.amounts, strict=True):
                plan = self._plan(claim)
                keys += plan.keys
                amount = _int(held * USD_SCALE if claim.unit == "usd" else held)
                args.append(f"{plan.window} {amount}" + self._period_fields(claim, estimate))
            reply = yield ("charge", keys, args)
            if reply[0] != "clock":
                return reply[0] == "ok"
            estimate = float(reply[1])
        raise StoreError(  # pragma: no cover
            f"Redis ledger at {self.settings.safe_url}: the server's clock moved by more than a"
            " calendar period during one charge"
        )

    def _usage_steps(self, claims: Sequence[Claim]) -> _Steps:
        estimate = self._estimate()
        for _ in range(2):
            now_arg, _ttl = self._time_args(estimate)
            keys: list[_Key] = []
            args = [now_arg]
            for claim in claims:
                plan = self._plan(claim)
                keys += plan.keys
                args.append(plan.window + self._period_fields(claim, estimate))
            reply = yield ("usage", keys, args)
            now = float(reply[1])
            if reply[0] == "clock":
                estimate = now
                continue
            result = []
            for index, claim in enumerate(claims):
                used, reserved, oldest = reply[2 + 3 * index : 5 + 3 * index]
                used_value, reserved_value = float(used), float(reserved)
                if claim.unit == "usd":
                    used_value, reserved_value = used_value / USD_SCALE, reserved_value / USD_SCALE
                events = [(float(oldest), 0.0)] if oldest else []
                result.append(
                    ClaimUsage(claim, used_value, reserved_value, resets_at(claim, now, events))
                )
            return result
        raise StoreError(  # pragma: no cover
            f"Redis ledger at {self.settings.safe_url}: the server's clock moved by more than a"
            " calendar period during one read"
        )

    # -- fail-open fallbacks ---------------------------------------------------------------------

    def _local_reserve(
        self,
        down: _Down,
        claims: Sequence[Claim],
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int,
        lease: float,
        rates: Rates | None,
    ) -> Reservation:
        if self.settings.fail == "closed":
            raise self._unavailable(down) from down.__cause__
        log.debug("Redis ledger down (%s): reserving locally", down)
        reservation = self._fallback.reserve(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
        )
        return attrs.evolve(reservation, id=LOCAL_PREFIX + reservation.id)

    def _local_settle(
        self, down: _Down, reservation: Reservation, tokens: int, requests: int, cost: float
    ) -> None:
        """Settle a hold Redis made while Redis is away: count it locally and journal it."""
        if self.settings.fail == "closed":
            raise self._unavailable(down) from down.__cause__
        # Recorded locally, so this process keeps counting what it spends while Redis is away.
        log.debug("Redis ledger down (%s): settling %s locally", down, reservation.id)
        # The fallback never held it: a plain record of the use.
        self._fallback.record(reservation.claims, tokens=tokens, requests=requests, cost=cost)
        # Redis holds it (or charged it at expiry): the replayed settle replaces that exactly.
        self._journal_add(reservation, {"tokens": tokens, "requests": requests, "cost": cost})

    def _settle_local(
        self, reservation: Reservation, tokens: int, requests: int, cost: float
    ) -> None:
        """Settle a hold of the local fallback; journal the real use, drop the worst case."""
        self._fallback.settle(
            self._unlocal(reservation), tokens=tokens, requests=requests, cost=cost
        )
        if not reservation.claims:
            return
        # Redis never held it: amounts of zero make the replayed settle record the real use
        # (or replace the worst case's charge, if that was replayed first).
        real = attrs.evolve(self._unlocal(reservation), amounts=(0.0,) * len(reservation.amounts))
        added = self._journal_add(real, {"tokens": tokens, "requests": requests, "cost": cost})
        with self._lock:
            worst = self._worst.pop(reservation.id, None)
        journal = self._journal
        if added and worst is not None and journal is not None:
            try:
                journal.done(worst)
            except StoreError as exc:  # both stay: replayed in order, they count the real use
                log.warning("could not drop a worst case from the journal: %s", exc)
        if self._breaker.state == "closed":
            self._replay_soon()  # a call admitted during the outage ended after it

    # -- the fail-open journal ------------------------------------------------------------------

    @property
    def journal_key(self) -> str:
        """The store URL this ledger's fail-open journal entries are keyed by.

        The server's URL (password redacted) and the key prefix, marked so that no Proxy's own
        journal replay takes them: they are only replayed by a Redis ledger, which sends a
        worst case as a charge (see :meth:`replay_journal`).
        """
        return f"{self.settings.safe_url}#llmproxy-redis-budget-fail-open:{self.settings.prefix}"

    def _journal_open(self) -> Journal | None:
        """The journal in the data dir, opened on first need; None (logged once) if it cannot be."""
        with self._lock:
            if self._journal is None and not self._closed:
                from llmproxy.journal import Journal

                try:
                    self._journal = Journal.in_data_dir(self._environ)
                except StoreError as exc:
                    if not self._journal_failed:
                        self._journal_failed = True
                        log.error(
                            "Redis ledger at %s cannot open its fail-open journal (%s): what"
                            " is admitted while Redis is away will not reach Redis",
                            self.settings.safe_url,
                            exc,
                        )
            return self._journal

    def _journal_add(self, reservation: Reservation, settle: Mapping[str, Any]) -> int | None:
        """Journal one settle for Redis; its entry id, or None (logged) when it cannot be kept."""
        journal = self._journal_open()
        if journal is None:
            return None
        try:
            return journal.add(
                ledger_url=self.journal_key,
                history_url=None,
                reservation=reservation,
                settle=settle,
                records=(),
            )
        except StoreError as exc:
            log.error(
                "Redis ledger at %s: reservation %s could not be journaled (%s); Redis will not"
                " count it when it is back",
                self.settings.safe_url,
                reservation.id,
                exc,
            )
            return None

    def _journal_worst_case(self, reservation: Reservation) -> None:
        """Journal a local hold as spent in full, until its settle replaces it (see the class).

        Its entry keeps the local reservation (id with :data:`LOCAL_PREFIX`): the replay
        charges its held amounts under the id without the prefix.
        """
        if not reservation.id.startswith(LOCAL_PREFIX) or not reservation.claims:
            return
        pairs = zip(reservation.claims, reservation.amounts, strict=True)
        dollars = [amount for claim, amount in pairs if claim.unit == "usd"]
        settle = {
            "tokens": reservation.input_tokens + reservation.output_tokens,
            "requests": 1,
            "cost": max(dollars, default=0.0),
        }
        entry = self._journal_add(reservation, settle)
        if entry is not None:
            with self._lock:
                self._worst[reservation.id] = entry

    def replay_journal(self) -> int:
        """Send what the fail-open journal holds for this Redis; return how many were applied.

        Entries are applied oldest first and each is removed once applied: a worst case as a
        charge (the script ``CHARGE``: a no-op for an id Redis knows already), a real use as a
        settle (idempotent by id; for a hold Redis never made it records the use, or replaces
        the worst case's charge). Entries of other processes on the same data dir are applied
        too (that is how a killed process's worst cases reach Redis). Stops at the first entry
        Redis cannot take now (it is down again: the next recovery replays the rest); an entry
        Redis refuses with an error is logged and left for you to inspect.
        """
        from llmproxy.journal import FILE_NAME

        if self._journal is None and not (data_dir_of(self._environ) / FILE_NAME).exists():
            return 0
        journal = self._journal_open()
        if journal is None:
            return 0
        applied, after = 0, 0
        while True:
            batch = journal.pending(ledger_url=self.journal_key, history_url=None, after=after)
            if not batch:
                break
            for entry in batch:
                after = entry.id
                try:
                    self._run(self._replay_steps(entry))
                except _Down:
                    journal.failed(entry.id)
                    return applied
                except Exception as exc:
                    if self.closed:
                        return applied
                    log.error(
                        "Redis ledger at %s: journal entry %d (reservation %s) failed with %r;"
                        " it is left in the journal",
                        self.settings.safe_url,
                        entry.id,
                        entry.reservation.id if entry.reservation else None,
                        exc,
                    )
                    journal.failed(entry.id)
                    continue
                journal.done(entry.id)
                applied += 1
        if applied:
            log.warning(
                "Redis ledger at %s: %d settle(s) made while it was away are now counted",
                self.settings.safe_url,
                applied,
            )
        return applied

    def _replay_steps(self, entry: Pending) -> _Steps:
        """The script call(s) that apply one journal entry."""
        reservation, settle = entry.reservation, entry.settle
        if reservation is None or settle is None:
            return None  # (a history-only entry is never keyed to this ledger)
        if reservation.id.startswith(LOCAL_PREFIX):
            yield from self._charge_steps(self._unlocal(reservation))
            return None
        yield from self._settle_steps(
            reservation,
            int(settle["tokens"]),
            int(settle.get("requests", 1)),
            float(settle.get("cost", 0.0)),
        )
        return None

    def _replay_leftovers(self) -> None:
        """After the first call that reached Redis: replay what an earlier process left."""
        from llmproxy.journal import FILE_NAME

        if (data_dir_of(self._environ) / FILE_NAME).exists():
            self._replay_soon()

    def _replay_soon(self) -> None:
        """Replay the journal in a background thread (once more if one runs already)."""
        with self._lock:
            if self._closed:
                return
            if self._replayer is not None and self._replayer.is_alive():
                self._replay_again = True
                return
            self._replay_again = False
            self._replayer = threading.Thread(
                target=self._replay_loop, name="llmproxy-redis-journal-replay", daemon=True
            )
            self._replayer.start()

    def _replay_loop(self) -> None:
        while True:
            try:
                self.replay_journal()
            except Exception:
                if not self.closed:  # (closing takes the journal away from a replay)
                    log.warning("replaying the Redis ledger's journal failed", exc_info=True)
            with self._lock:
                if not self._replay_again or self._closed:
                    self._replayer = None
                    return
                self._replay_again = False

    def _local_usage(self, down: _Down, claims: Sequence[Claim]) -> list[ClaimUsage]:
        if self.settings.fail == "closed":
            raise self._unavailable(down) from down.__cause__
        return self._fallback.usage(claims)

    @staticmethod
    def _unlocal(reservation: Reservation) -> Reservation:
        return attrs.evolve(reservation, id=reservation.id[len(LOCAL_PREFIX) :])

    def _empty(self, input_tokens: int, max_output_tokens: int, lease: float) -> Reservation:
        return Reservation(
            uuid.uuid4().hex, (), (), max_output_tokens, input_tokens, self._estimate() + lease
        )

    # -- the Ledger protocol -----------------------------------------------------------------------

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
        """Hold room on every claim atomically, in one round trip, or raise.

        See the Ledger protocol; raises StoreError when Redis is unavailable and
        ``fail="closed"``.
        """
        claims = check_arguments(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        if not claims:
            return self._empty(input_tokens, max_output_tokens, lease)
        steps = self._reserve_steps(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        try:
            result: Reservation = self._run(steps)
        except _Down as down:
            local = self._local_reserve(
                down, claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
            )
            self._journal_worst_case(local)
            return local
        return result

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Record what was used and drop the hold, in one round trip; a repeat is a no-op."""
        check_settle(tokens, requests, cost)
        if reservation.id.startswith(LOCAL_PREFIX):
            self._settle_local(reservation, tokens, requests, cost)
            return
        if not reservation.claims:
            return
        try:
            self._run(self._settle_steps(reservation, tokens, requests, cost))
        except _Down as down:
            self._local_settle(down, reservation, tokens, requests, cost)

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the hold's expiry to ``now + lease`` in one EVALSHA; False once it is gone.

        Gone: settled, or expired (charged in full). A reservation of the local fallback is
        renewed there. Raises StoreError when Redis is unavailable and ``fail="closed"``; with
        ``fail="open"`` an unreachable Redis answers True (the hold is not known to be gone).
        """
        if not lease > 0:
            raise InvalidRequest(
                f"lease must be a positive number of seconds, got {lease}", field="lease"
            )
        if reservation.id.startswith(LOCAL_PREFIX):
            return self._fallback.renew(self._unlocal(reservation), lease=lease)
        if not reservation.claims:
            return False
        try:
            result: bool = self._run(self._renew_steps(reservation, lease))
        except _Down as down:
            if self.settings.fail == "closed":
                raise self._unavailable(down) from down.__cause__
            return True
        return result

    async def arenew(self, reservation: Reservation, *, lease: float) -> bool:
        """Async :meth:`renew`."""
        if not lease > 0:
            raise InvalidRequest(
                f"lease must be a positive number of seconds, got {lease}", field="lease"
            )
        if reservation.id.startswith(LOCAL_PREFIX):
            return self._fallback.renew(self._unlocal(reservation), lease=lease)
        if not reservation.claims:
            return False
        try:
            result: bool = await self._arun(self._renew_steps(reservation, lease))
        except _Down as down:
            if self.settings.fail == "closed":
                raise self._unavailable(down) from down.__cause__
            return True
        return result

    def usage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Return the state of each claim, read in one round trip (nothing is written)."""
        if not claims:
            return []
        try:
            result: list[ClaimUsage] = self._run(self._usage_steps(claims))
        except _Down as down:
            return self._local_usage(down, claims)
        return result

    async def areserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        """Async :meth:`reserve` (``redis.asyncio``, one round trip)."""
        claims = check_arguments(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        if not claims:
            return self._empty(input_tokens, max_output_tokens, lease)
        steps = self._reserve_steps(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        try:
            result: Reservation = await self._arun(steps)
        except _Down as down:
            local = self._local_reserve(
                down, claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
            )
            # (the journal waits for the disk: not on the event loop)
            await asyncio.to_thread(self._journal_worst_case, local)
            return local
        return result

    async def asettle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        """Async :meth:`settle` (``redis.asyncio``, one round trip)."""
        check_settle(tokens, requests, cost)
        if reservation.id.startswith(LOCAL_PREFIX):
            await asyncio.to_thread(self._settle_local, reservation, tokens, requests, cost)
            return
        if not reservation.claims:
            return
        try:
            await self._arun(self._settle_steps(reservation, tokens, requests, cost))
        except _Down as down:
            await asyncio.to_thread(self._local_settle, down, reservation, tokens, requests, cost)

    async def ausage(self, claims: Sequence[Claim]) -> list[ClaimUsage]:
        """Async :meth:`usage`."""
        if not claims:
            return []
        try:
            result: list[ClaimUsage] = await self._arun(self._usage_steps(claims))
        except _Down as down:
            return self._local_usage(down, claims)
        return result

    # -- listing every budget (llmproxy.budget.base.ListableLedger) -------------------------

    def _pattern(self) -> str:
        """The SCAN pattern matching every claim's ``u`` hash (glob characters escaped)."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self._tag)
        return f"{escaped}:u:*"

    def _listed(self, keys: Sequence[str], terms: Sequence[str | None]) -> list[Claim]:
        """The claims of the ``u`` hashes whose terms are stored, sorted by claim key."""
        start = len(self.key("u", ""))
        claims: list[Claim] = []
        for key, stored in zip(keys, terms, strict=True):
            if not stored:
                continue  # kept by a settle after its reserve's keys expired, or older
            try:
                policy, scope, limit, unit, window, period, tz = json.loads(stored)
            except (ValueError, TypeError):
                log.warning("Redis ledger key %s has unreadable terms %r; skipped", key, stored)
                continue
            claims.append(Claim(key[start:], policy, scope, limit, unit, window, period, tz))
        claims.sort(key=lambda claim: claim.key)
        return claims

    def _list_failed(self, exc: RedisError) -> StoreError:
        return StoreError(
            f"Redis ledger at {self.settings.safe_url} could not list its budgets: {exc};"
            " check that Redis is reachable and the user may run SCAN and HGET"
        )

    def budgets(self) -> list[ClaimUsage]:
        """Return the state of every claim reserved in this Redis under the ledger's prefix.

        See :class:`~llmproxy.budget.base.ListableLedger`: a SCAN over the prefix's keys, one
        pipelined read of their terms, then one usage script per 256 claims. Raises StoreError
        when Redis is unavailable, whatever ``fail`` says.
        """
        self._check_open()
        try:
            keys = list(dict.fromkeys(self._client.scan_iter(match=self._pattern(), count=1000)))
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "d")
            terms = pipe.execute() if keys else []
        except RedisError as exc:
            raise self._list_failed(exc) from exc
        claims = self._listed(keys, terms)
        result: list[ClaimUsage] = []
        try:
            for at in range(0, len(claims), 256):
                result += self._run(self._usage_steps(claims[at : at + 256]))
        except _Down as down:
            raise self._unavailable(down) from down.__cause__
        return result

    async def abudgets(self) -> list[ClaimUsage]:
        """Async :meth:`budgets`."""
        self._check_open()
        client = self._aclient()
        try:
            keys = list(
                dict.fromkeys(
                    [key async for key in client.scan_iter(match=self._pattern(), count=1000)]
                )
            )
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "d")
            terms = await pipe.execute() if keys else []
        except RedisError as exc:
            raise self._list_failed(exc) from exc
        claims = self._listed(keys, terms)
        result: list[ClaimUsage] = []
        try:
            for at in range(0, len(claims), 256):
                result += await self._arun(self._usage_steps(claims[at : at + 256]))
        except _Down as down:
            raise self._unavailable(down) from down.__cause__
        return result

    # -- one write with a history store on the same server (llmproxy.pipelining) ------------

    def pipeline_key(self) -> str | None:
        """The server's identity, so a store on it can carry a settle; None on a cluster."""
        if self.settings.cluster or self._closed:
            return None
        return server_identity(self._client)

    def queue_reserve(
        self,
        claims: Sequence[Claim],
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
        unless_exists: str | None = None,
    ) -> _QueuedReserve | None:
        """The reserve's EVALSHA for another store's read; None when it must go on its own.

        With ``unless_exists`` the script holds nothing when that key exists (the result is
        then None). None for no claims, once closed and while the circuit breaker is open. The
        returned object finishes the reserve from the reply the ledger's own way (see
        :class:`llmproxy.pipelining.QueuedReserve`).
        """
        claims = check_arguments(
            claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates
        )
        if not claims or self._closed or not self._breaker.allow():
            return None
        args = (claims, input_tokens, max_output_tokens, min_output_tokens, lease, rates)
        return _QueuedReserve(self, args, unless_exists)

    def queue_settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> _QueuedSettle | None:
        """The settle's EVALSHA for another store's write; None when it must go on its own.

        None for a local or empty reservation and while the circuit breaker is open. The
        returned object finishes the settle from the reply the ledger's own way.
        """
        check_settle(tokens, requests, cost)
        if reservation.id.startswith(LOCAL_PREFIX) or not reservation.claims or self._closed:
            return None
        if not self._breaker.allow():
            return None
        return _QueuedSettle(self, reservation, tokens, requests, cost)

    def close(self) -> None:
        """Close every connection; the ledger is not used afterwards.

        Async connections are shut without awaiting; inside a running loop prefer
        ``await ledger.aclose()``.
        """
        with self._lock:
            self._closed = True
            aclients = list(self._aclients.values())
            self._aclients.clear()
        self._breaker.close()
        self._client.close()
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()
        for client in aclients:
            _drop_async_client(client)

    async def aclose(self) -> None:
        """Close the connections, awaiting those of the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            mine = self._aclients.pop(loop, None)
        if mine is not None:
            await mine.aclose()
        self.close()


def server_identity(client: Any) -> str | None:
    """Which server (and user and database) a redis-py client talks to; None if unknown."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    kw = pool.connection_kwargs
    return (
        f"{pool.connection_class.__name__}|{kw.get('username') or ''}|{kw.get('host')}"
        f"|{kw.get('port')}|{kw.get('path') or ''}|{kw.get('db') or 0}"
    )


class _QueuedSettle:
    """A settle sent inside a history store's MULTI/EXEC (see :meth:`RedisLedger.queue_settle`).

    The breaker let this call through when it was queued; every way of finishing reports to it,
    as :meth:`RedisLedger.settle` would.
    """

    def __init__(
        self, ledger: RedisLedger, reservation: Reservation, tokens: int, requests: int, cost: float
    ) -> None:
        self._ledger = ledger
        self._args = (reservation, tokens, requests, cost)
        self._steps = ledger._settle_steps(reservation, tokens, requests, cost)
        name, keys, args = next(self._steps)
        self.commands: list[tuple[Any, ...]] = [("EVALSHA", _SHAS[name], len(keys), *keys, *args)]

    def _again(self) -> None:
        """Settle the ordinary way (a repeat of a settle that landed is a no-op)."""
        self._steps.close()
        self._ledger._breaker.abandon()
        reservation, tokens, requests, cost = self._args
        self._ledger.settle(reservation, tokens=tokens, requests=requests, cost=cost)

    async def _aagain(self) -> None:
        self._steps.close()
        self._ledger._breaker.abandon()
        reservation, tokens, requests, cost = self._args
        await self._ledger.asettle(reservation, tokens=tokens, requests=requests, cost=cost)

    def _down(self, down: _Down) -> None:
        self._steps.close()
        self._ledger._local_settle(down, *self._args)

    def _first(self, reply: Any) -> Any:
        """Read the EVALSHA's reply: the next request (or None when done), or raise."""
        ledger = self._ledger
        if isinstance(reply, BaseException):
            if not isinstance(reply, RedisError):
                raise reply
            raise ledger._failure(reply) from reply
        ledger._succeeded(reply)
        try:
            return self._steps.send(list(reply))
        except StopIteration:
            return None

    def done(self, replies: Sequence[Any]) -> None:
        reply = replies[0]
        if isinstance(reply, NoScriptError):  # a new or restarted server
            self._again()
            return
        try:
            request = self._first(reply)
            while request is not None:  # the server's clock crossed a period: once more
                try:
                    request = self._steps.send(self._ledger._send(request))
                except StopIteration:
                    request = None
        except _Down as down:
            self._down(down)
        finally:
            self._steps.close()

    async def adone(self, replies: Sequence[Any]) -> None:
        reply = replies[0]
        if isinstance(reply, NoScriptError):
            await self._aagain()
            return
        try:
            request = self._first(reply)
            while request is not None:
                try:
                    request = self._steps.send(await self._ledger._asend(request))
                except StopIteration:
                    request = None
        except _Down as down:
            self._down(down)
        finally:
            self._steps.close()

    def _failure(self, exc: BaseException) -> bool:
        """After the shared write failed: True to settle again the ordinary way.

        A broken connection (the write applied whole or not at all), a refused transaction or a
        failure of the other store before anything was sent: settle again, which is a no-op if
        it landed. A timeout or an outage answer counts against Redis as a settle of its own
        would (``fail`` decides).
        Cancelled: the breaker forgets the call and the exception goes on.
        """
        if not isinstance(exc, Exception):
            self._steps.close()
            self._ledger._breaker.abandon()
            return False
        if (
            isinstance(exc, RedisError)
            and not isinstance(exc, RedisConnectionError)
            and _is_outage(exc)
        ):
            try:
                raise self._ledger._failure(exc) from exc
            except _Down as down:
                self._down(down)
            return False
        return True

    def failed(self, exc: BaseException) -> None:
        if self._failure(exc):
            self._again()

    async def afailed(self, exc: BaseException) -> None:
        if self._failure(exc):
            await self._aagain()


_ReserveArgs = tuple[Sequence[Claim], int, int, int, float, "Rates | None"]


class _NotSent(Exception):
    """The store did not send the queued reserve."""


class _QueuedReserve:
    """A reserve sent inside a history store's load (see :meth:`RedisLedger.queue_reserve`).

    The breaker let it through when it was queued; :meth:`result` reports to it as
    :meth:`RedisLedger.reserve` would. ``done``/``failed`` only keep what the store got.
    """

    def __init__(self, ledger: RedisLedger, args: _ReserveArgs, guard: str | None) -> None:
        self._ledger = ledger
        self._args = args
        self._steps = ledger._reserve_steps(*args, guard)
        name, keys, argv = next(self._steps)
        self.commands: list[tuple[Any, ...]] = [("EVALSHA", _SHAS[name], len(keys), *keys, *argv)]
        self._reply: Any = None
        self._failure: BaseException | None = _NotSent()
        self._reservation: Reservation | None = None
        self._skipped = False

    def done(self, replies: Sequence[Any]) -> None:
        self._reply, self._failure = replies[0], None

    def failed(self, exc: BaseException) -> None:
        self._failure = exc

    def _finish(self) -> tuple[Reservation | None, _Request | None, bool]:
        """Read the reply: (the reservation, or the next request, or neither: again or skipped).

        Raises the refusal, a StoreError, or _Down.
        """
        ledger, failure = self._ledger, self._failure
        if failure is not None:
            if isinstance(failure, _NotSent) or not isinstance(failure, Exception):
                self._steps.close()
                ledger._breaker.abandon()
                if not isinstance(failure, Exception):
                    raise failure
                return None, None, True
            if (
                isinstance(failure, RedisError)
                and not isinstance(failure, RedisConnectionError)
                and _is_outage(failure)
            ):
                self._steps.close()
                raise ledger._failure(failure) from failure
            self._steps.close()
            ledger._breaker.abandon()
            return None, None, True  # reserve again the ordinary way
        reply = self._reply
        if isinstance(reply, NoScriptError):  # a new or restarted server
            self._steps.close()
            ledger._breaker.abandon()
            return None, None, True
        if isinstance(reply, BaseException):
            self._steps.close()
            if not isinstance(reply, RedisError):
                raise reply
            raise ledger._failure(reply) from reply
        ledger._succeeded(reply)
        try:
            request = self._steps.send(list(reply))
        except StopIteration as stop:
            self._reservation = stop.value
            self._skipped = stop.value is None
            return stop.value, None, False
        except BaseException:
            self._steps.close()
            raise
        return None, request, False

    def _local(self, down: _Down) -> Reservation:
        return self._ledger._local_reserve(down, *self._args)

    def result(self) -> Reservation | None:
        """The reservation, or the refusal raised; None when the guard key existed.

        Reserves anew the ordinary way when the store's read failed.
        """
        ledger = self._ledger
        try:
            reservation, request, again = self._finish()
            if again:
                claims, input_tokens, most, least, lease, rates = self._args
                return ledger.reserve(
                    claims,
                    input_tokens=input_tokens,
                    max_output_tokens=most,
                    min_output_tokens=least,
                    lease=lease,
                    rates=rates,
                )
            while reservation is None and not self._skipped:  # a clock retry
                assert request is not None
                try:
                    request = self._steps.send(ledger._send(request))
                except StopIteration as stop:
                    reservation = self._reservation = stop.value
                    self._skipped = stop.value is None
        except _Down as down:
            local = self._local(down)
            ledger._journal_worst_case(local)
            self._reservation = local
            return local
        finally:
            self._steps.close()
        return reservation

    async def aresult(self) -> Reservation | None:
        """Async :meth:`result`."""
        ledger = self._ledger
        try:
            reservation, request, again = self._finish()
            if again:
                claims, input_tokens, most, least, lease, rates = self._args
                return await ledger.areserve(
                    claims,
                    input_tokens=input_tokens,
                    max_output_tokens=most,
                    min_output_tokens=least,
                    lease=lease,
                    rates=rates,
                )
            while reservation is None and not self._skipped:
                assert request is not None
                try:
                    request = self._steps.send(await ledger._asend(request))
                except StopIteration as stop:
                    reservation = self._reservation = stop.value
                    self._skipped = stop.value is None
        except _Down as down:
            local = self._local(down)
            await asyncio.to_thread(ledger._journal_worst_case, local)
            self._reservation = local
            return local
        finally:
            self._steps.close()
        return reservation

    def _unanswered(self) -> bool:
        """True (and the reserve forgotten) when no reply came: nothing to release.

        A read that failed as a whole may still have held (the connection broke after the
        server ran it): that hold is charged in full when its lease ends, as unknown is spent.
        """
        if self._failure is None:
            return False
        self._steps.close()
        self._ledger._breaker.abandon()
        return True

    def discard(self) -> None:
        """Release the hold (no tokens, no requests), or forget a reserve that got no reply."""
        if self._unanswered():
            return
        try:
            reservation = self.result()
        except (BudgetExceeded, RateLimited, StoreError):
            return
        if reservation is not None:
            self._ledger.settle(reservation, tokens=0, requests=0)

    async def adiscard(self) -> None:
        """Async :meth:`discard`."""
        if self._unanswered():
            return
        try:
            reservation = await self.aresult()
        except (BudgetExceeded, RateLimited, StoreError):
            return
        if reservation is not None:
            await self._ledger.asettle(reservation, tokens=0, requests=0)
