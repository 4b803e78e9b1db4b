"""A call's budget overhead per ledger: reserve + settle latency, and Redis round trips.

Each ledger gets the same claims a Proxy makes for a call under three policies (an all-time
token budget, a requests-per-minute limit and a monthly USD budget in a time zone), with
budgets large enough never to refuse; ``leasing`` is an SQLite ledger behind budget leasing
(``llmproxy.budget.lease``), whose batched writes run between the calls. Rounds alternate
between the ledgers so that drift in the machine's speed hits them alike. Redis runs on
loopback (a redis-server this script starts and stops); its round trips per call are counted on
the server, from its MONITOR stream (the commands client connections sent, not those the
scripts ran); the script exits non-zero when they are off the target of 2 (one reserve, one
settle). Then whole Proxy calls (a fake OpenAI upstream) with the ledger and the history store
on that one Redis: round trips counted as the server's reads (``INFO stats``), target 2
(the history load and the reserve in one pipeline, and the settle sent inside the history's
MULTI/EXEC; ``bench_redis.py`` counts them on the client).

    .venv/bin/python bench/bench_budget.py            # full run
    .venv/bin/python bench/bench_budget.py --quick    # a smaller run, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from llmproxy import LLMBudget, Proxy
from llmproxy.budget.base import Claim, Ledger, Rates
from llmproxy.budget.lease import LeasingLedger
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy_redis_budget import RedisLedger
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.redis_server import RedisServer

RATES = Rates(input=0.00000015, output=0.0000006)  # $0.15 / $0.60 per million tokens


def claims(count: int) -> list[Claim]:
    every = [
        Claim("tokens|global", "tokens", "global", 1e15),
        Claim("rpm|user:bench", "rpm", "user:bench", 1e12, "requests", 60.0),
        Claim("usd|global", "usd", "global", 1e6, "usd", period="month", tz="Asia/Ho_Chi_Minh"),
    ]
    return every[:count]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_call(ledger: Ledger, chosen: list[Claim]) -> None:
    reservation = ledger.reserve(chosen, input_tokens=120, max_output_tokens=300, rates=RATES)
    ledger.settle(reservation, tokens=250, cost=0.0001)


async def one_acall(ledger: Ledger, chosen: list[Claim]) -> None:
    reservation = await ledger.areserve(
        chosen, input_tokens=120, max_output_tokens=300, rates=RATES
    )
    await ledger.asettle(reservation, tokens=250, cost=0.0001)


def timed(ledger: Ledger, chosen: list[Claim], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        one_call(ledger, chosen)
        samples.append(time.perf_counter() - start)
    return samples


async def atimed(ledger: Ledger, chosen: list[Claim], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await one_acall(ledger, chosen)
        samples.append(time.perf_counter() - start)
        await asyncio.sleep(0)  # a turn of the loop between calls, as a server's loop takes
    return samples


def round_trips(server: RedisServer, action: Callable[[], object]) -> list[str]:
    """Commands client connections sent while ``action`` ran (script-internal ones excluded)."""
    watcher = redis.Redis.from_url(server.url, decode_responses=True)
    sentinel = f"bench-{uuid.uuid4().hex}"
    sent: list[str] = []
    with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
        action()
        server.command("ECHO", sentinel)
        while True:
            line = monitor.next_command()
            if sentinel in line["command"]:
                break
            if line["client_type"] != "lua":
                sent.append(line["command"].split(" ", 1)[0].upper())
    watcher.close()
    return sent


def server_reads(client: redis.Redis) -> int:
    """Requests the server has read (each one a round trip for a client that waits)."""
    return int(client.info("stats")["total_reads_processed"])


def proxy_round_trips(server: RedisServer, calls: int) -> dict[str, float]:
    """Round trips per Proxy call with ledger and history on one Redis, sync and async."""
    key = "sk-bench-budget-0123456789"
    out: dict[str, float] = {}
    with FakeOpenAI(api_key=key) as upstream:
        proxy = Proxy(
            {"history_url": server.url, "ledger_url": server.url},
            budgets=[LLMBudget(max_tokens=10**12, name="bench")],
            environ={"OPENAI_API_KEY": key, "OPENAI_BASE_URL": upstream.base_url},
        )
        loop = asyncio.new_event_loop()
        watcher = redis.Redis.from_url(server.url)  # one connection, so one read per INFO
        try:
            for mode in ("sync", "async"):
                for index in range(-3, calls):  # three to warm up (connections, scripts)
                    if index == 0:
                        start = server_reads(watcher)
                    session = f"bench-{mode}-{uuid.uuid4().hex}"  # not cached: a real load
                    if mode == "sync":
                        proxy.chat("Hello there", session_id=session)
                    else:
                        loop.run_until_complete(proxy.achat("Hello there", session_id=session))
                out[mode] = (server_reads(watcher) - start - 1) / calls  # minus the INFO itself
        finally:
            watcher.close()
            loop.run_until_complete(proxy.aclose())
            loop.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke test")
    options = parser.parse_args()
    rounds, per_round = (5, 200) if options.quick else (20, 500)

    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        ledgers: dict[str, Any] = {
            "memory": MemoryLedger(),
            "sqlite": SQLiteLedger(Path(tmp) / "ledger.db"),
            "leasing": LeasingLedger(SQLiteLedger(Path(tmp) / "leased.db")),
            "redis": RedisLedger(server.url, environ={}),
        }
        loop = asyncio.new_event_loop()
        results: dict[tuple[str, int, str], list[float]] = {}
        walls: dict[tuple[str, int, str], float] = {}  # rounds' whole time: syncs included
        for count in (2, 3):
            chosen = claims(count)
            for ledger in ledgers.values():  # warm up: connections, scripts, caches
                for _ in range(50):
                    one_call(ledger, chosen)
                    loop.run_until_complete(one_acall(ledger, chosen))
            for _ in range(rounds):
                for name, ledger in ledgers.items():
                    start = time.perf_counter()
                    results.setdefault((name, count, "sync"), []).extend(
                        timed(ledger, chosen, per_round)
                    )
                    middle = time.perf_counter()
                    results.setdefault((name, count, "async"), []).extend(
                        loop.run_until_complete(atimed(ledger, chosen, per_round))
                    )
                    end = time.perf_counter()
                    walls[(name, count, "sync")] = walls.get((name, count, "sync"), 0.0) + (
                        middle - start
                    )
                    walls[(name, count, "async")] = walls.get((name, count, "async"), 0.0) + (
                        end - middle
                    )

        redis_ledger = ledgers["redis"]
        calls = 20

        def sync_calls() -> None:
            for _ in range(calls):
                one_call(redis_ledger, claims(3))

        def async_calls() -> None:
            for _ in range(calls):
                loop.run_until_complete(one_acall(redis_ledger, claims(3)))

        sync_sent = round_trips(server, sync_calls)
        async_sent = round_trips(server, async_calls)
        evalsha = server.info("commandstats")["cmdstat_evalsha"]
        server_us = float(evalsha.split("usec_per_call=")[1].split(",")[0])
        proxy_trips = proxy_round_trips(server, calls)
        loop.run_until_complete(redis_ledger.aclose())
        loop.close()
        for ledger in ledgers.values():
            ledger.close()

    print("reserve + settle of one call (all in: the rounds' whole time per call, background")
    print("work such as leasing's batched writes included)")
    print(f"{'ledger':<8} {'claims':>6} {'mode':<6} {'median':>9} {'p95':>9} {'all in':>9}")
    for (name, count, mode), samples in results.items():
        median, p95 = statistics.median(samples) * 1e6, pct(samples, 0.95) * 1e6
        whole = walls[(name, count, mode)] / len(samples) * 1e6
        print(f"{name:<8} {count:>6} {mode:<6} {median:>7.1f}us {p95:>7.1f}us {whole:>7.1f}us")
    print(f"redis server time per script (EVALSHA, all runs): {server_us:.1f}us")
    on_target = True
    for mode, sent in (("sync", sync_sent), ("async", async_sent)):
        kinds = sorted(set(sent))
        print(f"redis round trips per call ({mode}, 3 claims): {len(sent) / calls:g} ({kinds})")
        on_target = on_target and sent == ["EVALSHA"] * (2 * calls)
    for mode, trips in proxy_trips.items():
        print(
            f"redis round trips per Proxy call ({mode}, ledger + history on one Redis): {trips:g}"
            " (history load + reserve in one pipeline, settle + history append in one write)"
        )
    if not on_target:
        raise SystemExit("Redis round trips are off the target of 2 per call")
    if any(trips != 2 for trips in proxy_trips.values()):
        raise SystemExit("Proxy round trips are off the target of 2 per call")


if __name__ == "__main__":
    main()
