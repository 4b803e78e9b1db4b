"""Exactly two Redis round trips per call with history and budgets on one Redis.

Round trips are counted on the client: every request redis-py sends (one command, or one
pipeline or MULTI/EXEC batch) goes through a connection's ``send_packed_command`` once, so
wrapping it counts the batches a call sends, per database. The commands themselves are listed
from the server's ``MONITOR`` stream (scripts by name). Run with ``-s`` to print the lists the
plugins' READMEs show.

Cases: a new session, a session this Proxy wrote last, a session another Proxy (its own
connections, cache and writer id) or another process wrote last, with 1 and 20 budget
policies, sync and async; and a ledger and history store on different databases (one round
trip per store per phase).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.connection
import redis.connection

from llmproxy import LLMBudget, Proxy
from llmproxy.budget.policy import CallScope
from llmproxy_redis_budget import scripts as budget_scripts
from llmproxy_redis_history import RedisHistoryStore
from llmproxy_redis_history import scripts as history_scripts
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.redis_server import RedisServer

KEY = "sk-test-redis-round-trips-0123456789"
MODEL = "openai/gpt-5.4-mini"

_SCRIPTS = {
    hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest(): name
    for name, source in [
        ("reserve", budget_scripts.RESERVE),
        ("settle", budget_scripts.SETTLE),
        ("load", history_scripts.LOAD),
    ]
}
_SOURCES = {"PUBLISH": "append", "LTRIM": "prune"}


class Trips:
    """Counts the requests (round trips) redis-py connections send, per database."""

    def __init__(self) -> None:
        self.by_db: Counter[int] = Counter()

    def reset(self) -> None:
        self.by_db.clear()

    @property
    def total(self) -> int:
        return sum(self.by_db.values())


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Trips:
    counter = Trips()
    sync_send: Any = redis.connection.AbstractConnection.send_packed_command
    async_send: Any = redis.asyncio.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        counter.by_db[int(self.db or 0)] += 1
        sync_send(self, command, check_health)

    async def asend(self: Any, command: Any, check_health: bool = True) -> None:
        counter.by_db[int(self.db or 0)] += 1
        await async_send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", asend)
    return counter


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


def _budgets(count: int) -> list[LLMBudget]:
    return [LLMBudget(max_tokens=10_000_000 + i, name=f"team-{i}") for i in range(count)]


def _proxy(upstream: FakeOpenAI, history: str, ledger: str, policies: int) -> Proxy:
    return Proxy(
        {"history_url": history, "ledger_url": ledger, "default_model": MODEL},
        budgets=_budgets(policies),
        environ={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url},
    )


def _name(command: str) -> str:
    """A MONITOR line's command, with a script named by what it does."""
    parts = command.split(" ")
    verb = parts[0].upper()
    if verb == "EVALSHA" and len(parts) > 1:
        sha = parts[1].strip('"')
        return f"EVALSHA {_SCRIPTS.get(sha, '?')}"
    if verb == "EVAL":
        found = [name for marker, name in _SOURCES.items() if marker in command]
        return f"EVAL {found[0] if found else '?'}"
    return verb


def monitored(server: RedisServer, action: Callable[[], object], trips: Trips) -> list[str]:
    """Run ``action``; return the commands clients sent meanwhile (not those Lua ran).

    ``trips`` counts the round trips of ``action`` alone.
    """
    watcher = redis.Redis.from_url(server.url, decode_responses=True)
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    seen: list[str] = []
    try:
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            trips.reset()
            action()
            counted = Counter(trips.by_db)
            server.command("ECHO", sentinel)
            while True:
                line = monitor.next_command()
                if sentinel in line["command"]:
                    break
                if line["client_type"] != "lua":
                    seen.append(_name(line["command"]))
    finally:
        watcher.close()
    trips.by_db = counted
    return seen


def _store(proxy: Proxy) -> RedisHistoryStore:
    store = proxy.history
    assert isinstance(store, RedisHistoryStore)
    return store


def _await_feed(store: RedisHistoryStore, session_id: str) -> None:
    """Wait until ``store``'s cache holds the version of the session Redis has."""
    server = store._sync()
    meta = store.keys.meta(_tag(session_id))
    deadline = time.monotonic() + 10
    while True:
        want = int(server.hget(meta, "v") or 0)
        if store.poll_cache() and store.cached_version(session_id) == want:
            return
        assert time.monotonic() < deadline, "the feed message never arrived"
        time.sleep(0.001)


def _tag(session_id: str) -> str:
    from llmproxy_redis_history.layout import session_tag

    return session_tag(session_id)


def _report(title: str, commands: list[str]) -> None:
    print(f"\n{title}: {len(commands)} commands: {' | '.join(commands)}")


@pytest.mark.parametrize("policies", [1, 20])
def test_two_round_trips_sync(
    upstream: FakeOpenAI,
    redis_url: str,
    redis_server: RedisServer,
    trips: Trips,
    policies: int,
) -> None:
    mine = _proxy(upstream, redis_url, redis_url, policies)
    theirs = _proxy(upstream, redis_url, redis_url, policies)
    try:
        for proxy in (mine, theirs):  # connections, scripts and the tracking connection
            for _ in range(2):  # a new session, then a cached one (the ledger's own client)
                proxy.chat("warm up", session_id=f"warm-{id(proxy)}")
        cases: list[tuple[str, Callable[[], object]]] = [
            ("new session", lambda: mine.chat("Hello", session_id="s")),
            ("session this Proxy wrote last", lambda: mine.chat("Again", session_id="s")),
        ]
        for title, action in cases:
            commands = monitored(redis_server, action, trips)
            assert trips.total == 2, (title, trips.by_db)
            _report(f"{title}, {policies} policies, sync", commands)
        _await_feed(_store(theirs), "s")
        commands = monitored(
            redis_server, lambda: theirs.chat("From the other", session_id="s"), trips
        )
        assert trips.total == 2, trips.by_db
        _report(f"session another Proxy wrote last, {policies} policies, sync", commands)
        assert [r.content for r in _store(theirs).load("s")][-2:][0] == "From the other"
        assert len(_store(mine).load("s")) == 6
        claims = [
            b.claim(CallScope(model="gpt-5.4-mini", provider="openai")) for b in _budgets(policies)
        ]
        assert all(state.reserved == 0 for state in mine.ledger.usage(claims))
    finally:
        mine.close()
        theirs.close()


@pytest.mark.parametrize("policies", [1, 20])
async def test_two_round_trips_async(
    upstream: FakeOpenAI, redis_url: str, trips: Trips, policies: int
) -> None:
    mine = _proxy(upstream, redis_url, redis_url, policies)
    theirs = _proxy(upstream, redis_url, redis_url, policies)
    try:
        for proxy in (mine, theirs):
            for _ in range(2):
                await proxy.achat("warm up", session_id=f"warm-{id(proxy)}")
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("new session", lambda: mine.achat("Hello", session_id="a")),
            ("session this Proxy wrote last", lambda: mine.achat("Again", session_id="a")),
        ]
        for title, step in steps:
            trips.reset()
            await step()
            assert trips.total == 2, (title, trips.by_db)
        _await_feed(_store(theirs), "a")
        trips.reset()
        await theirs.achat("From the other", session_id="a")
        assert trips.total == 2, trips.by_db
        assert len(await _store(mine).aload("a")) == 6
    finally:
        await mine.aclose()
        await theirs.aclose()


def test_a_session_another_process_wrote_last(
    upstream: FakeOpenAI, redis_url: str, trips: Trips
) -> None:
    mine = _proxy(upstream, redis_url, redis_url, 1)
    try:
        for _ in range(2):
            mine.chat("warm up", session_id="warm")
        mine.chat("Hello", session_id="p")
        script = textwrap.dedent(
            f"""
            from llmproxy import LLMBudget, Proxy
            proxy = Proxy(
                {{"history_url": {redis_url!r}, "ledger_url": {redis_url!r},
                  "default_model": {MODEL!r}}},
                budgets=[LLMBudget(max_tokens=10_000_000, name="team-0")],
                environ={{"OPENAI_API_KEY": {KEY!r}, "OPENAI_BASE_URL": {upstream.base_url!r}}},
            )
            proxy.chat("From another process", session_id="p")
            proxy.close()
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        _await_feed(_store(mine), "p")
        trips.reset()
        mine.chat("And back", session_id="p")
        assert trips.total == 2, trips.by_db
        contents = [r.content for r in _store(mine).load("p")]
        assert contents[2] == "From another process" and contents[4] == "And back"
    finally:
        mine.close()


def test_other_database_is_one_round_trip_per_store_per_phase(
    upstream: FakeOpenAI, redis_url: str, trips: Trips
) -> None:
    other = redis_url.rsplit("/", 1)[0] + "/3"
    proxy = _proxy(upstream, other, redis_url, 1)
    try:
        proxy.chat("warm up", session_id="w")
        trips.reset()
        proxy.chat("Hello", session_id="x")
        assert trips.by_db == {0: 2, 3: 2}  # ledger: reserve, settle; history: load, append
        trips.reset()
        proxy.chat("Again", session_id="x")  # cached: no load
        assert trips.by_db == {0: 2, 3: 1}
    finally:
        redis.Redis.from_url(other).flushdb()
        proxy.close()


def test_no_budget_opens_no_ledger(upstream: FakeOpenAI, redis_url: str, trips: Trips) -> None:
    proxy = _proxy(upstream, redis_url, redis_url, 0)
    try:
        proxy.chat("warm up", session_id="w")
        trips.reset()
        proxy.chat("Hello", session_id="n")
        assert trips.total == 2  # the load, the append
        assert not proxy.ledger.opened
    finally:
        proxy.close()


def test_a_call_asking_for_the_cache_holds_nothing_on_a_hit(
    upstream: FakeOpenAI, redis_url: str
) -> None:
    # A reserve sent with the load and never taken would stay held until its lease ran out and
    # then be charged: a call that may be answered from the cache sends none with its load.
    proxy = Proxy(
        {
            "history_url": redis_url,
            "ledger_url": redis_url,
            "default_model": MODEL,
            "cache": {"url": "memory://"},
        },
        budgets=_budgets(1),
        environ={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url},
    )
    try:
        first = proxy.chat("Hello", session_id=f"c-{uuid.uuid4().hex}", cache=True)
        hit = proxy.chat("Hello", session_id=f"c-{uuid.uuid4().hex}", cache=True)
        assert hit.cache_hit and not first.cache_hit
        [claim] = [b.claim(CallScope(model="gpt-5.4-mini", provider="openai")) for b in _budgets(1)]
        [state] = proxy.ledger.usage([claim])
        assert state.reserved == 0
        assert state.used == first.usage.total_tokens
    finally:
        proxy.close()
