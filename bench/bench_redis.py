"""Redis stores under a Proxy: 1 vs 20 budget policies, 10 vs 1,000 history messages.

Whole async Proxy calls (``achat``, one at a time) on a fake OpenAI upstream running in its own
process, with the ledger and the history store both in memory or both on one Redis (a
redis-server this script starts on loopback and stops). Each configuration keeps one session
of ``messages`` stored messages and sends them all (``history_limit`` = ``messages``), so every
call carries the same history. The floor is a bare aiohttp POST of the same messages to the
same upstream. Configurations alternate round by round, so drift in the machine's speed hits
them alike; figures are medians, and the ratios compare figures of this one run.

Redis round trips are counted on the client (every request redis-py sends, a command or a
pipeline or MULTI/EXEC batch, goes through ``send_packed_command`` once); the script exits
non-zero when a Redis call takes other than 2.

    .venv/bin/python bench/bench_redis.py            # full run
    .venv/bin/python bench/bench_redis.py --quick    # a smaller run, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Literal

import aiohttp
import redis.asyncio.connection

from llmproxy import HistoryRecord, LLMBudget, Message, Proxy
from llmproxy_testing.redis_server import RedisServer

KEY = "sk-bench-redis-0000000000000000"
Role = Literal["user", "assistant"]
MODEL = "gpt-5.4-mini"
PROMPT = "Say hello to the benchmark, please."


def start_upstream() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmproxy_testing.fake_openai", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the server prints its base URL first
    if not line.startswith("http"):
        proc.kill()
        raise SystemExit(f"fake upstream did not start: {line!r}")
    return proc, line


def text(index: int) -> str:
    return f"Message {index} of the long conversation, with a few words to count. " * 2


class Sends:
    """Requests sent by async redis-py connections (one per round trip)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        original: Any = redis.asyncio.connection.AbstractConnection.send_packed_command

        async def send(self: Any, command: Any, check_health: bool = True) -> None:
            cls.count += 1
            await original(self, command, check_health)

        redis.asyncio.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


class Config:
    """One Proxy with its stores, policies and a session of ``messages`` messages."""

    def __init__(self, base_url: str, stores: str, policies: int, messages: int) -> None:
        shown = "memory" if stores.startswith("memory") else "redis"
        self.name = f"{shown:6} {policies:2} policies {messages:5} messages"
        self.stores, self.policies, self.messages = stores, policies, messages
        self.proxy = Proxy(
            {
                "history_url": stores,
                "ledger_url": stores,
                "default_model": f"openai/{MODEL}",
                "history_limit": messages,
            },
            budgets=[LLMBudget(max_tokens=10**15 + i, name=f"p{i}") for i in range(policies)],
            environ={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": base_url},
        )
        self.session = f"bench-{stores[:5]}-{policies}-{messages}"
        self.times: list[float] = []
        self.trips: list[int] = []
        roles: tuple[Role, Role] = ("user", "assistant")
        self.proxy.history.append(
            [
                HistoryRecord(self.session, Message(roles[i % 2], text(i)), id=f"m{i}")
                for i in range(messages)
            ]
        )

    async def call(self) -> None:
        before = Sends.count
        start = time.perf_counter()
        await self.proxy.achat(PROMPT, session_id=self.session)
        self.times.append(time.perf_counter() - start)
        self.trips.append(Sends.count - before)


async def floor_call(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(
        url,
        data=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    ) as reply:
        await reply.read()
    return time.perf_counter() - start


def floor_body(messages: int) -> bytes:
    roles = ("user", "assistant")
    sent = [{"role": roles[i % 2], "content": text(i)} for i in range(messages)]
    sent.append({"role": "user", "content": PROMPT})
    return json.dumps({"model": MODEL, "messages": sent, "max_tokens": 4096}).encode()


async def run(base_url: str, redis_url: str, rounds: int, per_round: int) -> int:
    Sends.install()
    configs = [
        Config(base_url, stores, policies, messages)
        for stores in ("memory://", redis_url)
        for messages in (10, 1000)
        for policies in (1, 20)
    ]
    for config in configs:  # connections, scripts, caches
        for _ in range(3):
            await config.call()
        config.times.clear()
        config.trips.clear()
    floors: dict[int, list[float]] = {10: [], 1000: []}
    bodies = {count: floor_body(count) for count in floors}
    url = base_url.rstrip("/") + "/chat/completions"
    async with aiohttp.ClientSession() as http:
        for count in floors:
            await floor_call(http, url, bodies[count])
        for _ in range(rounds):
            for count in floors:
                for _ in range(per_round):
                    floors[count].append(await floor_call(http, url, bodies[count]))
            for config in configs:
                for _ in range(per_round):
                    await config.call()
    med = {c.name: statistics.median(c.times) for c in configs}
    floor = {count: statistics.median(values) for count, values in floors.items()}
    print(f"{'configuration':36} {'median':>9} {'over floor':>11} {'trips':>6}")
    for count, value in floor.items():
        print(f"{'aiohttp floor':22} {count:5} messages {value * 1e3:8.2f}ms")
    for config in configs:
        above = med[config.name] - floor[config.messages]
        trips = statistics.mean(config.trips)
        shown = f"{trips:6.2f}" if config.stores != "memory://" else "     -"
        print(f"{config.name:36} {med[config.name] * 1e3:7.2f}ms {above * 1e3:9.2f}ms {shown}")

    def find(stores: str, policies: int, messages: int) -> Config:
        return next(
            c
            for c in configs
            if c.stores.startswith(stores) and c.policies == policies and c.messages == messages
        )

    def over(config: Config) -> float:
        return med[config.name] - floor[config.messages]

    print("ratios (one run):")
    for messages in (10, 1000):
        one, twenty = find("redis", 1, messages), find("redis", 20, messages)
        print(
            f"  redis, {messages} messages: 20 policies / 1 policy per call"
            f" {med[twenty.name] / med[one.name]:.2f}x, over the floor"
            f" {over(twenty) / over(one):.2f}x"
        )
    for policies in (1, 20):
        mem, red = find("memory", policies, 1000), find("redis", policies, 1000)
        print(
            f"  1000 messages, {policies} policies: redis / memory overhead over the floor"
            f" {over(red) / over(mem):.2f}x"
        )
    for messages in (10, 1000):
        mem, red = find("memory", 1, messages), find("redis", 1, messages)
        print(
            f"  {messages} messages, 1 policy: redis - memory per call"
            f" {(med[red.name] - med[mem.name]) * 1e3:.2f}ms"
        )
    for config in configs:
        await config.proxy.aclose()
    off = [c.name for c in configs if c.stores != "memory://" and set(c.trips) != {2}]
    if off:
        print(f"Redis round trips off the target of 2: {off}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke test")
    options = parser.parse_args()
    rounds, per_round = (3, 10) if options.quick else (10, 30)
    proc, base_url = start_upstream()
    try:
        with RedisServer() as server:
            return asyncio.run(run(base_url, server.url, rounds, per_round))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
