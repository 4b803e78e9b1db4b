"""What only a Redis ledger has: round trips, one hash tag, the server's clock, key expiry,
lost processes, and what happens when Redis is away."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
import redis.crc

from llmproxy.budget.base import Claim, Rates, Reservation
from llmproxy.errors import BudgetExceeded, ConfigError, RateLimited, StoreError
from llmproxy.journal import Journal
from llmproxy.plugins import Plugins
from llmproxy_redis_budget import RedisLedger, plugin, settings_from_url
from llmproxy_redis_budget.ledger import LOCAL_PREFIX
from llmproxy_testing.contracts import FakeClock
from llmproxy_testing.redis_fixtures import need_redis_server
from llmproxy_testing.redis_server import RedisServer, free_port

from .conftest import client_commands

MakeLedger = Callable[..., RedisLedger]

TOKENS = Claim("tokens|global", "tokens", "global", 1_000_000)
RPM = Claim("rpm|user:a", "rpm", "user:a", 1_000_000, "requests", 60.0)
DOLLARS = Claim("usd|global", "usd", "global", 100.0, "usd", period="month", tz="Asia/Ho_Chi_Minh")
RATES = Rates(input=0.000001, output=0.000004)


# -- round trips and keys ------------------------------------------------------------------------


def test_one_round_trip_to_reserve_and_one_to_settle(
    make_ledger: MakeLedger, redis_server: RedisServer
) -> None:
    ledger = make_ledger()
    claims = [TOKENS, RPM, DOLLARS]
    ledger.settle(  # warm up: connect and load the scripts
        ledger.reserve(claims, input_tokens=10, max_output_tokens=10, rates=RATES), tokens=20
    )
    ledger.usage(claims)
    before = redis_server.info("commandstats")
    reservations: list[Reservation] = []
    sent = client_commands(
        redis_server,
        lambda: reservations.extend(
            ledger.reserve(claims, input_tokens=10, max_output_tokens=10, rates=RATES)
            for _ in range(5)
        ),
    )
    assert sent == ["EVALSHA"] * 5

    def settle_all() -> None:
        for reservation in reservations:
            ledger.settle(reservation, tokens=15, cost=0.00005)

    sent = client_commands(redis_server, settle_all)
    assert sent == ["EVALSHA"] * 5
    assert client_commands(redis_server, lambda: ledger.usage(claims)) == ["EVALSHA"]
    with pytest.raises(BudgetExceeded):  # a refusal is one round trip too
        sent = client_commands(
            redis_server,
            lambda: ledger.reserve(
                [Claim("tiny", "tiny", "g", 5)], input_tokens=10, max_output_tokens=10
            ),
        )
    after = redis_server.info("commandstats")

    def calls(stats: dict[str, str], name: str) -> int:
        raw = stats.get(f"cmdstat_{name}", "calls=0")
        return int(raw.split(",")[0].split("=")[1])

    # 5 reserves + 5 settles + 1 usage + 1 refused reserve (+ the MONITOR helper's own ECHOs)
    assert calls(after, "evalsha") - calls(before, "evalsha") == 12


async def test_async_round_trips(make_ledger: MakeLedger, redis_server: RedisServer) -> None:
    ledger = make_ledger()
    claims = [TOKENS, RPM, DOLLARS]
    await ledger.asettle(
        await ledger.areserve(claims, input_tokens=1, max_output_tokens=1, rates=RATES), tokens=2
    )
    before = redis_server.info("commandstats")["cmdstat_evalsha"]
    for _ in range(10):
        reservation = await ledger.areserve(
            claims, input_tokens=1, max_output_tokens=1, rates=RATES
        )
        await ledger.asettle(reservation, tokens=2)
    after = redis_server.info("commandstats")["cmdstat_evalsha"]
    count = int(after.split(",")[0].split("=")[1]) - int(before.split(",")[0].split("=")[1])
    assert count == 20
    await ledger.aclose()


def test_every_key_shares_one_hash_slot(make_ledger: MakeLedger, raw: redis.Redis) -> None:
    ledger = make_ledger(prefix="team-a")
    window = Claim("w|{odd}:key", "w", "g", 1000, window=60.0)
    claims = [TOKENS, RPM, DOLLARS, window]
    ledger.settle(
        ledger.reserve(claims, input_tokens=10, max_output_tokens=10, rates=RATES),
        tokens=20,
        cost=0.0001,
    )
    ledger.reserve(claims, input_tokens=10, max_output_tokens=10, rates=RATES)
    keys = [str(key) for key in raw.keys("*")]  # str already: the client decodes
    assert len(keys) >= 10
    assert all(key.startswith("{llmproxy-budget:team-a}:") for key in keys)
    assert {redis.crc.key_slot(key.encode()) for key in keys} == {
        redis.crc.key_slot(b"{llmproxy-budget:team-a}")
    }


def test_prefixes_are_separate_budgets(make_ledger: MakeLedger) -> None:
    claim = Claim("shared", "shared", "g", 100)
    first, second = make_ledger(prefix="one"), make_ledger(prefix="two")
    first.settle(first.reserve([claim], input_tokens=50, max_output_tokens=50), tokens=100)
    assert first.usage([claim])[0].used == 100
    assert second.usage([claim])[0].used == 0
    same = make_ledger(prefix="one")
    with pytest.raises(BudgetExceeded):
        same.reserve([claim], input_tokens=1, max_output_tokens=1)


# -- the server's clock ------------------------------------------------------------------------


def _zone_near_midnight(server_now: float) -> tuple[str, float]:
    """An Etc/GMT zone whose local time on the server is in its day's last hour, and its
    next midnight (some whole-hour zone always is)."""
    for hours in range(-12, 15):
        name = f"Etc/GMT{'-' if hours > 0 else '+'}{abs(hours)}" if hours else "Etc/GMT"
        local = datetime.fromtimestamp(server_now, ZoneInfo(name))
        if local.hour == 23:
            following = local.date() + timedelta(days=1)
            midnight = datetime(
                following.year, following.month, following.day, tzinfo=ZoneInfo(name)
            ).timestamp()
            if midnight - server_now > 10:  # the test is over long before
                return name, midnight
    pytest.skip("the server's time is within 10 seconds of an hour boundary")


def test_skewed_client_clocks_agree(make_ledger: MakeLedger, raw: redis.Redis) -> None:
    """Two ledgers whose machines disagree by an hour see the same windows and periods."""
    seconds, micros = raw.time()
    server_now = seconds + micros / 1e6
    zone, midnight = _zone_near_midnight(server_now)
    right = make_ledger(local_clock=time.time)
    ahead = make_ledger(local_clock=lambda: time.time() + 3600)
    window = Claim("window", "window", "g", 100, window=60.0)
    day = Claim("day", "day", "g", 100, period="day", tz=zone)
    # ahead believes it is past midnight there; the server (and so both ledgers) does not
    reservation = ahead.reserve([window, day], input_tokens=30, max_output_tokens=30)
    assert abs(reservation.expires_at - (server_now + 600)) < 5
    ahead.settle(reservation, tokens=60)
    right_states, ahead_states = right.usage([window, day]), ahead.usage([window, day])
    assert [(s.used, s.reserved) for s in right_states] == [(60, 0), (60, 0)]
    assert [(s.used, s.reserved) for s in ahead_states] == [(60, 0), (60, 0)]
    assert right_states[0].resets_at == ahead_states[0].resets_at
    assert right_states[0].resets_at == pytest.approx(server_now + 60, abs=5)
    assert right_states[1].resets_at == ahead_states[1].resets_at == midnight
    held = right.reserve([window], input_tokens=40, max_output_tokens=0, min_output_tokens=0)
    with pytest.raises(BudgetExceeded) as caught:
        ahead.reserve([window], input_tokens=1, max_output_tokens=0, min_output_tokens=0)
    assert caught.value.resets_at == right_states[0].resets_at
    right.settle(held, tokens=0, requests=0)
    assert abs(right.now() - ahead.now()) < 0.5
    assert abs(ahead.now() - time.time()) < 5  # the server's clock is this machine's


def test_far_skew_is_corrected_by_the_server(
    make_ledger: MakeLedger, raw: redis.Redis, redis_server: RedisServer
) -> None:
    """A client 100 days off asks twice the first time, then knows the server's clock."""
    lost = make_ledger(local_clock=lambda: time.time() - 100 * 86400)
    month = Claim("month", "month", "g", 100, period="month", tz="UTC")
    warm = lost.reserve([TOKENS], input_tokens=1, max_output_tokens=1)  # connect, load scripts
    lost.settle(warm, tokens=2)
    lost._offset = None  # forget what the warm-up taught it
    reservations: list[Reservation] = []
    sent = client_commands(
        redis_server,
        lambda: reservations.append(lost.reserve([month], input_tokens=5, max_output_tokens=5)),
    )
    assert sent == ["EVALSHA", "EVALSHA"]  # the first answer was "clock"
    assert client_commands(redis_server, lambda: lost.settle(reservations[0], tokens=10)) == [
        "EVALSHA"
    ]
    seconds, _ = raw.time()
    resets_at = lost.usage([month])[0].resets_at
    assert resets_at is not None and seconds < resets_at < seconds + 32 * 86400
    assert abs(lost.now() - time.time()) < 5
    assert make_ledger().usage([month])[0].used == 10


# -- expiry: leases of lost processes, keys that hold nothing ------------------------------------


_DIE_AFTER_RESERVING = """
import os, sys
from llmproxy.budget.base import Claim
from llmproxy_redis_budget import RedisLedger

ledger = RedisLedger(sys.argv[1], environ={})
ledger.reserve([Claim("leak", "leak", "g", 100)], input_tokens=60, max_output_tokens=40, lease=1.0)
os._exit(0)  # dies without settling or closing anything
"""


def test_a_dead_process_reservation_expires(make_ledger: MakeLedger, redis_url: str) -> None:
    claim = Claim("leak", "leak", "g", 100)
    subprocess.run([sys.executable, "-c", _DIE_AFTER_RESERVING, redis_url], check=True, timeout=60)
    ledger = make_ledger()
    assert ledger.usage([claim])[0].reserved == 100
    with pytest.raises(BudgetExceeded):
        ledger.reserve([claim], input_tokens=1, max_output_tokens=1)
    deadline = time.monotonic() + 5
    while ledger.usage([claim])[0].reserved and time.monotonic() < deadline:
        time.sleep(0.05)
    # unknown is spent: the dead process's hold is charged in full, never released
    assert [(s.used, s.reserved) for s in ledger.usage([claim])] == [(100, 0)]
    with pytest.raises(BudgetExceeded):
        ledger.reserve([claim], input_tokens=1, max_output_tokens=1)


def test_keys_expire_once_they_hold_nothing(make_ledger: MakeLedger, raw: redis.Redis) -> None:
    ledger = make_ledger()
    window = Claim("w", "w", "g", 100, window=0.5)
    total = Claim("t", "t", "g", 100)
    ledger.reserve([window, total], input_tokens=1, max_output_tokens=1, lease=0.5)  # leaked
    ledger.settle(
        ledger.reserve([window, total], input_tokens=1, max_output_tokens=1, lease=0.5), tokens=2
    )
    ttls = {key: raw.pttl(key) for key in raw.keys("*") if ":s:" not in key}
    assert ttls.pop(ledger.key("u", "t")) == -1  # an all-time total is kept
    assert set(ttls) == {ledger.key(kind, "w") for kind in ("u", "h", "e")} | {ledger.key("h", "t")}
    # whole seconds, and a window's keys outlive the last hold by the window (its charge counts)
    assert all(0 < ttl <= 2500 for ttl in ttls.values())
    deadline = time.monotonic() + 4
    while raw.exists(*ttls) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert raw.exists(*ttls) == 0
    # unknown is spent: the leaked hold counts as used on the total (its window charge is over)
    assert [(s.used, s.reserved) for s in ledger.usage([window, total])] == [(0, 0), (4, 0)]
    # the all-time hash still says 2 held by the leaked reservation: its hold set is gone
    assert raw.hget(ledger.key("u", "t"), "r") == "2"
    assert ledger.reserve([total], input_tokens=46, max_output_tokens=50).output_tokens == 50
    assert raw.hmget(ledger.key("u", "t"), "u", "r") == ["4", "96"]


def test_an_injected_clock_sets_no_expiry(make_ledger: MakeLedger, raw: redis.Redis) -> None:
    ledger = make_ledger(clock=lambda: 1_700_000_000.0)
    window = Claim("w", "w", "g", 100, window=60)
    ledger.settle(ledger.reserve([window], input_tokens=1, max_output_tokens=1), tokens=2)
    ledger.reserve([window], input_tokens=1, max_output_tokens=1)
    assert {raw.pttl(key) for key in raw.keys("*") if ":s:" not in key} == {-1}


# -- failures -------------------------------------------------------------------------------------


@pytest.fixture
def spare_server() -> Iterator[RedisServer]:
    """A server of the test's own, to stop and restart."""
    need_redis_server()
    with RedisServer() as server:
        yield server


def test_fail_closed_names_the_url_without_its_password(make_ledger: MakeLedger) -> None:
    port = free_port()
    ledger = make_ledger(f"redis://:hunter2secret@127.0.0.1:{port}/0", breaker_failures=100)
    start = time.monotonic()
    with pytest.raises(StoreError) as caught:
        ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
    assert time.monotonic() - start < 2.0
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "hunter2secret" not in message
    assert "fail=open" in message
    with pytest.raises(StoreError):
        ledger.usage([TOKENS])


def breaker_state(ledger: RedisLedger) -> str:
    """The ledger's breaker state, read afresh (mypy would narrow a property across asserts)."""
    return ledger.breaker.state


def test_breaker_stops_trying_then_probes(
    make_ledger: MakeLedger, spare_server: RedisServer
) -> None:
    url = spare_server.url
    cooldown = FakeClock()
    ledger = make_ledger(
        url, breaker_failures=2, breaker_cooldown=0.5, breaker_clock=cooldown, breaker_probe=0
    )
    ledger.settle(ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1), tokens=2)
    spare_server.stop()
    for _ in range(2):
        with pytest.raises(StoreError):
            ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
    assert breaker_state(ledger) == "open"
    spare_server.restart()
    for _ in range(50):  # no connection attempts while open, though the server is back
        with pytest.raises(StoreError, match="not retried"):
            ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
    cooldown.advance(0.5)
    assert breaker_state(ledger) == "half-open"
    reservation = ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)  # the probe
    assert breaker_state(ledger) == "closed"
    ledger.settle(reservation, tokens=2)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` real seconds pass (a bound, not a wait)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_breaker_closes_as_soon_as_redis_is_back(
    make_ledger: MakeLedger, spare_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: Redis returned, yet calls failed 'circuit breaker is open' for
    seconds. A background PING closes the breaker once Redis answers: the cool-down (a
    fake clock never advanced here) does not hold calls back."""
    caplog.set_level(logging.WARNING, logger="llmproxy_redis_budget")
    cooldown = FakeClock()
    ledger = make_ledger(
        spare_server.url,
        breaker_failures=1,
        breaker_cooldown=3600,
        breaker_clock=cooldown,
        breaker_probe=0.02,
    )
    ledger.usage([TOKENS])
    spare_server.stop()
    with pytest.raises(StoreError):
        ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
    assert breaker_state(ledger) == "open"
    probes = ledger.breaker.probes
    assert wait_for(lambda: ledger.breaker.probes >= probes + 3)  # probing, still down
    assert breaker_state(ledger) == "open"
    with pytest.raises(StoreError, match="not retried"):
        ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
    spare_server.restart()
    assert wait_for(lambda: breaker_state(ledger) == "closed")
    reservations = [
        ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1) for _ in range(50)
    ]
    assert all(not r.id.startswith(LOCAL_PREFIX) for r in reservations)
    assert "answers again" in caplog.text
    for reservation in reservations:
        ledger.settle(reservation, tokens=1)


def test_the_breaker_closes_when_a_frozen_redis_resumes(
    make_ledger: MakeLedger, spare_server: RedisServer
) -> None:
    """SIGSTOP then SIGCONT: the probe's PING waits (or times out) while frozen and closes the
    breaker once the server goes on."""
    ledger = make_ledger(
        spare_server.url,
        socket_timeout=0.2,
        breaker_failures=1,
        breaker_cooldown=3600,
        breaker_clock=FakeClock(),
        breaker_probe=0.02,
    )
    ledger.usage([TOKENS])
    with spare_server.frozen():
        with pytest.raises(StoreError):
            ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
        assert wait_for(lambda: ledger.breaker.probes >= 2)  # timed-out PINGs
        assert breaker_state(ledger) == "open"
    assert wait_for(lambda: breaker_state(ledger) == "closed")
    ledger.settle(ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1), tokens=1)


def test_closing_the_ledger_stops_the_probe(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(
        f"redis://127.0.0.1:{free_port()}/0",
        breaker_failures=1,
        breaker_probe=0.01,
        connect_timeout=0.2,
    )
    with pytest.raises(StoreError):
        ledger.usage([TOKENS])
    assert wait_for(lambda: ledger.breaker.probes >= 1)
    ledger.close()
    assert wait_for(
        lambda: not any(t.name == "llmproxy-redis-breaker-probe" for t in threading.enumerate())
    )


def test_an_unresponsive_server_times_out(
    make_ledger: MakeLedger, spare_server: RedisServer
) -> None:
    ledger = make_ledger(spare_server.url, socket_timeout=0.2, breaker_failures=1)
    ledger.usage([TOKENS])
    with spare_server.frozen():
        start = time.monotonic()
        with pytest.raises(StoreError):
            ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
        assert time.monotonic() - start < 1.0
        with pytest.raises(StoreError, match="not retried"):  # the open breaker, not a timeout
            ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)


async def test_async_fail_closed_and_breaker(make_ledger: MakeLedger) -> None:
    ledger = make_ledger(f"redis://127.0.0.1:{free_port()}/0", breaker_failures=2)
    start = time.monotonic()
    for _ in range(5):
        with pytest.raises(StoreError):
            await ledger.areserve([TOKENS], input_tokens=1, max_output_tokens=1)
    assert time.monotonic() - start < 3.0
    assert ledger.breaker.state == "open"
    await ledger.aclose()


def test_fail_open_counts_locally_and_comes_back(
    make_ledger: MakeLedger,
    spare_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    claim = Claim("open", "open", "g", 100)
    cooldown = FakeClock()
    ledger = make_ledger(
        spare_server.url,
        fail="open",
        breaker_failures=1,
        breaker_cooldown=0.3,
        breaker_clock=cooldown,
    )
    ledger.settle(ledger.reserve([claim], input_tokens=10, max_output_tokens=10), tokens=20)
    spare_server.stop()
    caplog.set_level(logging.WARNING, logger="llmproxy_redis_budget")
    start = time.monotonic()
    local = ledger.reserve([claim], input_tokens=50, max_output_tokens=50)
    assert local.id.startswith(LOCAL_PREFIX)
    assert "failed" in caplog.text and "counting locally" in caplog.text
    assert "127.0.0.1" in caplog.text
    with pytest.raises(BudgetExceeded):  # the local ledger enforces the same limit
        ledger.reserve([claim], input_tokens=1, max_output_tokens=1)
    ledger.settle(local, tokens=100)
    assert ledger.usage([claim])[0].used == 100  # local view while Redis is away
    assert time.monotonic() - start < 2.0
    spare_server.restart()  # an empty server: it counts what was journaled locally, once
    cooldown.advance(0.3)
    back = ledger.reserve([claim], input_tokens=50, max_output_tokens=50)
    assert not back.id.startswith(LOCAL_PREFIX)
    assert "answers again" in caplog.text
    ledger.settle(back, tokens=100)
    journal = Journal(tmp_path / "journal.db")
    deadline = time.monotonic() + 10
    while journal.pending(ledger_url=ledger.journal_key, history_url=None):
        assert time.monotonic() < deadline, "the journal was not replayed"
        time.sleep(0.01)
    journal.close()
    assert ledger.usage([claim])[0].used == 200


async def test_async_fail_open(make_ledger: MakeLedger) -> None:
    claim = Claim("open", "open", "g", 100)
    ledger = make_ledger(f"redis://127.0.0.1:{free_port()}/0", fail="open")
    reservation = await ledger.areserve([claim], input_tokens=10, max_output_tokens=10)
    assert reservation.id.startswith(LOCAL_PREFIX)
    await ledger.asettle(reservation, tokens=20)
    assert (await ledger.ausage([claim]))[0].used == 20
    await ledger.aclose()


def test_settle_while_down_is_counted_locally(
    make_ledger: MakeLedger, spare_server: RedisServer
) -> None:
    claim = Claim("late", "late", "g", 100)
    ledger = make_ledger(spare_server.url, fail="open")
    reservation = ledger.reserve([claim], input_tokens=30, max_output_tokens=30)
    spare_server.stop()
    ledger.settle(reservation, tokens=60)
    assert ledger.fallback.usage([claim])[0].used == 60
    with pytest.raises(BudgetExceeded):
        ledger.reserve([claim], input_tokens=50, max_output_tokens=30)


def test_an_error_answer_is_raised_even_when_failing_open(
    make_ledger: MakeLedger, raw: redis.Redis
) -> None:
    ledger = make_ledger(fail="open", breaker_failures=1)
    raw.set(ledger.key("u", TOKENS.key), "not a hash")  # someone else wrote our key
    with pytest.raises(StoreError, match=r"answered with an error.*WRONGTYPE"):
        ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)
    assert ledger.breaker.state == "closed"
    assert ledger.reserve([RPM], input_tokens=1, max_output_tokens=1)  # other keys work


def test_closed_ledger(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.close()
    with pytest.raises(StoreError, match="closed"):
        ledger.reserve([TOKENS], input_tokens=1, max_output_tokens=1)


# -- configuration and registration -------------------------------------------------------------


def test_url_options_and_environment() -> None:
    settings = settings_from_url(
        "redis://u:pw@cache:6380/2?prefix=team&fail=open&socket_timeout=0.25&connect_timeout=2"
        "&breaker_failures=5&breaker_cooldown=9&client_name=me",
        {},
    )
    assert settings.url == "redis://u:pw@cache:6380/2?client_name=me"
    assert settings.safe_url == "redis://u:***@cache:6380/2?client_name=me"
    assert (settings.prefix, settings.fail, settings.socket_timeout) == ("team", "open", 0.25)
    assert (settings.connect_timeout, settings.breaker_failures) == (2.0, 5)
    assert (settings.breaker_cooldown, settings.cluster) == (9.0, False)
    defaults = settings_from_url("redis://", {})
    assert defaults.url == "redis://localhost:6379/0"
    assert (defaults.prefix, defaults.fail, defaults.socket_timeout) == ("llmproxy", "closed", 5.0)
    assert (defaults.breaker_cooldown, defaults.breaker_probe) == (2.0, 0.25)
    assert settings_from_url("redis://?breaker_probe=off", {}).breaker_probe == 0.0
    assert settings_from_url("redis://?breaker_probe=0", {}).breaker_probe == 0.0
    assert settings_from_url("redis://?breaker_probe=1.5", {}).breaker_probe == 1.5
    seed = {
        "LLM_PROXY_OPEN_AI_IOREDIS_HOST": "seed-host",
        "LLM_PROXY_OPEN_AI_IOREDIS_PORT": "6390",
        "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX": "3",
    }
    assert settings_from_url("redis://", seed).url == "redis://seed-host:6390/3"
    shared = {
        **seed,
        "LLMPROXY_REDIS_URL": "rediss://main:6400/1?prefix=app&ttl=60&ssl_cert_reqs=none",
    }
    resolved = settings_from_url("redis://?fail=open", shared)
    assert resolved.url == "rediss://main:6400/1?ssl_cert_reqs=none"  # not the history's ttl
    assert (resolved.prefix, resolved.fail) == ("app", "open")
    assert settings_from_url("redis://own:1/0", shared).url == "redis://own:1/0"


@pytest.mark.parametrize(
    "url",
    [
        "memcached://x",
        "redis://?fail=maybe",
        "redis://?socket_timeout=0",
        "redis://?socket_timeout=soon",
        "redis://?breaker_failures=0",
        "redis://?breaker_probe=-1",
        "redis://?prefix={a}",
        "redis://?cluster=perhaps",
    ],
)
def test_bad_options_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        settings_from_url(url, {})


def test_keyword_options_win_and_are_checked() -> None:
    ledger = RedisLedger("redis://localhost:1/0?prefix=a&fail=open", environ={}, prefix="b")
    assert (ledger.settings.prefix, ledger.settings.fail) == ("b", "open")
    ledger.close()
    with pytest.raises(ConfigError):
        RedisLedger("redis://localhost:1/0", environ={}, socket_timeout=-1)
    with pytest.raises(ConfigError):
        RedisLedger("redis://localhost:1/0?nonsense_option=1", environ={})


def test_plugin_registers_both_schemes(redis_url: str) -> None:
    plugins = Plugins(environ={"LLMPROXY_PLUGINS": ""}, entry_points=False, extra=[plugin])
    assert {"redis", "rediss"} <= set(plugins.registry.ledgers)
    ledger = plugins.registry.ledgers["redis"]("redis://", {"LLMPROXY_REDIS_URL": redis_url})
    assert isinstance(ledger, RedisLedger)
    claim = Claim("p", "p", "g", 10)
    ledger.settle(ledger.reserve([claim], input_tokens=1, max_output_tokens=1), tokens=2)
    assert ledger.usage([claim])[0].used == 2
    ledger.close()


def test_found_through_the_entry_point() -> None:
    plugins = Plugins(environ={})
    assert plugins.registry.ledgers["redis"] is plugin.redis_ledger


def test_empty_claims_need_no_round_trip(
    make_ledger: MakeLedger, redis_server: RedisServer
) -> None:
    ledger = make_ledger()

    def run() -> None:
        reservation = ledger.reserve([], input_tokens=5, max_output_tokens=7)
        assert reservation.output_tokens == 7
        ledger.settle(reservation, tokens=12)
        assert ledger.usage([]) == []

    assert client_commands(redis_server, run) == []


def test_unlimited_claims(make_ledger: MakeLedger) -> None:
    endless = [
        Claim("inf", "inf", "g", float("inf")),
        Claim("usd", "usd", "g", float("inf"), "usd"),
    ]
    ledger = make_ledger()
    reservation = ledger.reserve(endless, input_tokens=10, max_output_tokens=10**9, rates=RATES)
    assert reservation.output_tokens == 10**9
    ledger.settle(reservation, tokens=20, cost=0.5)
    assert [s.remaining for s in ledger.usage(endless)] == [float("inf")] * 2


def test_rate_limit_retry_after_uses_the_server_clock(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    rate = Claim("rate", "rate", "g", 2, "requests", window=30.0)
    for _ in range(2):
        ledger.settle(ledger.reserve([rate], input_tokens=1, max_output_tokens=1), tokens=2)
    with pytest.raises(RateLimited) as caught:
        ledger.reserve([rate], input_tokens=1, max_output_tokens=1)
    assert 29 < caught.value.retry_after <= 30


async def test_loops_get_their_own_connections(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    claim = Claim("loops", "loops", "g", 100)

    def other_loop() -> None:
        async def work() -> None:
            await ledger.asettle(
                await ledger.areserve([claim], input_tokens=1, max_output_tokens=1), tokens=2
            )

        asyncio.run(work())

    thread = threading.Thread(target=other_loop)
    thread.start()
    thread.join()
    await ledger.asettle(
        await ledger.areserve([claim], input_tokens=1, max_output_tokens=1), tokens=2
    )
    assert (await ledger.ausage([claim]))[0].used == 4
    await ledger.aclose()
