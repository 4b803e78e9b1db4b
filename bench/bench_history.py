"""History stores: Redis vs SQLite vs memory, with the Redis round trips counted on the server.

Appends 1,000 exchanges (a user and an assistant message each, over 50 sessions), then loads a
100-message session: uncached (a store with ``cache=false``), and cached (a store that wrote
the session, so it already holds it). Starts its own ``redis-server`` on loopback (stopped by
its pid at the end). Round trips are the server's ``total_reads_processed`` delta (each request
written at once is one read on the server), less the measuring ``INFO`` calls.

    .venv/bin/python bench/bench_history.py            # full run
    .venv/bin/python bench/bench_history.py --quick    # a smaller run, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from llmproxy import HistoryRecord, Message
from llmproxy.history.memory import MemoryHistoryStore
from llmproxy.history.sqlite import SQLiteHistoryStore
from llmproxy_redis_history import RedisHistoryStore
from llmproxy_testing.redis_server import RedisServer, redis_server_path


def exchange(session: str, n: int) -> list[HistoryRecord]:
    now = time.time()
    return [
        HistoryRecord(
            session,
            Message("user", f"question {n}: " + "lorem ipsum " * 20),
            "gpt-5.4-mini",
            "openai",
            now,
            120,
            0,
        ),
        HistoryRecord(
            session,
            Message("assistant", f"answer {n}: " + "dolor sit amet " * 40),
            "gpt-5.4-mini",
            "openai",
            now,
            0,
            240,
        ),
    ]


class Trips:
    """Round trips the Redis server saw since the last call."""

    def __init__(self, url: str | None) -> None:
        self.client = redis.Redis.from_url(url) if url else None
        self.start = self._reads()

    def _reads(self) -> int:
        if self.client is None:
            return 0
        return int(self.client.info("stats")["total_reads_processed"])

    def __call__(self) -> int:
        if self.client is None:
            return 0
        now = self._reads()
        count, self.start = now - self.start - 1, now
        return count


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def bench_store(
    name: str,
    make: Callable[[], Any],
    make_uncached: Callable[[], Any],
    url: str | None,
    exchanges: int,
    loads: int,
) -> dict[str, Any]:
    store, reader = make(), make_uncached()
    trips = Trips(url)
    # Warm up: connections, scripts, tables.
    store.load("warm")
    store.append(exchange("warm", 0))
    reader.load("warm")
    store.delete("warm")
    sessions = [f"bench-{i}" for i in range(50)]
    for session in sessions:
        store.load(session)  # as the Proxy does before its first exchange in a session
    trips()
    started = time.perf_counter()
    for n in range(exchanges):
        store.append(exchange(sessions[n % len(sessions)], n))
    append_s = time.perf_counter() - started
    append_trips = trips() / exchanges
    # A 100-message session: 50 exchanges.
    store.load("long")
    for n in range(50):
        store.append(exchange("long", n))
    assert len(reader.load("long", 100)) == 100
    trips()
    uncached = timed(lambda: reader.load("long", 100), loads)
    uncached_trips = trips() / loads
    cached = timed(lambda: store.load("long", 100), loads)
    cached_trips = trips() / loads

    async def async_appends() -> float:
        started = time.perf_counter()
        for n in range(exchanges // 4):
            await store.aappend(exchange("async", n))
        return (time.perf_counter() - started) / (exchanges // 4)

    async_append = asyncio.run(async_appends())
    store.close()
    reader.close()
    return {
        "store": name,
        "append_us": append_s / exchanges * 1e6,
        "append_trips": append_trips,
        "async_append_us": async_append * 1e6,
        "load_us": statistics.median(uncached) * 1e6,
        "load_trips": uncached_trips,
        "cached_us": statistics.median(cached) * 1e6,
        "cached_trips": cached_trips,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    exchanges, loads = (200, 50) if args.quick else (1000, 500)
    if redis_server_path() is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 1
    rows = []
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url
        rows.append(
            bench_store(
                "redis",
                lambda: RedisHistoryStore(url, environ={}),
                lambda: RedisHistoryStore(url, environ={}, cache=False),
                url,
                exchanges,
                loads,
            )
        )
        db = Path(tmp) / "history.db"
        rows.append(
            bench_store(
                "sqlite",
                lambda: SQLiteHistoryStore(db),
                lambda: SQLiteHistoryStore(db),
                None,
                exchanges,
                loads,
            )
        )
        memory = MemoryHistoryStore()
        rows.append(bench_store("memory", lambda: memory, lambda: memory, None, exchanges, loads))
    print(
        f"{exchanges} exchanges appended (2 messages each), {loads} loads of a 100-message"
        " session; times per operation"
    )
    header = (
        f"{'store':<8} {'append':>10} {'trips':>6} {'aappend':>10} "
        f"{'load 100':>10} {'trips':>6} {'cached load':>12} {'trips':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        network = r["store"] == "redis"

        def trip(value: float, network: bool = network) -> str:
            return f"{value:6.2f}" if network else f"{'-':>6}"

        print(
            f"{r['store']:<8} {r['append_us']:>8.0f}us {trip(r['append_trips'])} "
            f"{r['async_append_us']:>8.0f}us {r['load_us']:>8.0f}us {trip(r['load_trips'])} "
            f"{r['cached_us']:>10.0f}us {trip(r['cached_trips'])}"
        )
    redis_row = rows[0]
    ok = (
        redis_row["append_trips"] == 1
        and redis_row["load_trips"] == 1
        and redis_row["cached_trips"] == 0
    )
    print("round trips per operation: " + ("1 / 1 / 0 as targeted" if ok else "OFF TARGET"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
