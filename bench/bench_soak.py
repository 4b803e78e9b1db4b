"""Soak: does a Proxy's memory stay flat over many calls? Bytes of growth per call, per scenario.

Each scenario builds a Proxy (memory or SQLite stores, with or without sessions) against the
fake OpenAI upstream running in this process (on its own thread), makes warm-up calls, then
measures with :mod:`tracemalloc` (started after the warm-up, so only what is allocated from
then on is traced): the traced size after the first half of the measured calls and after the
second half, each after ``gc.collect()`` and after the fake has forgotten the requests it
records. Growth per call is the difference over the second half's calls: one-time costs of
the first measured calls (caches filling, the usage log's pending queue) fall out of the slope.
RSS (``/proc/self/statm``) is printed too, for what the allocator keeps; it moves in pages and
arenas, so it is a sanity check, not the figure.

    .venv/bin/python bench/bench_soak.py                  # 8 scenarios x 25,000 calls: 200,000
    .venv/bin/python bench/bench_soak.py --calls 6250     # 50,000 calls in all
    .venv/bin/python bench/bench_soak.py --quick          # 8 x 2,000 calls, a smoke run
    .venv/bin/python bench/bench_soak.py --only memory    # scenarios whose name contains it

Every call is budgeted (an all-time token budget, counted in the ledger under test) and
logged by the usage-log plugin (its default SQLite log, in a temporary data dir). Calls run 4
at a time on one event loop. Sessions cycle over 32 session ids; the memory history store
keeps the newest 16 messages of each (``max_messages_per_session``) and calls send the last
16 (``history_limit``), so what the stores keep by design (the SQLite store's decoded
sessions too) stays bounded and any growth left is the Proxy's. Exits non-zero when a scenario grows
by more than ``--limit`` bytes per call (default 50).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attrs import frozen

from llmproxy import LLMBudget, Proxy
from llmproxy.history.memory import MemoryHistoryStore
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_usage_log import UsageLog, open_usage_log, set_usage_log

MODEL = "openai/gpt-5.4-mini"
PROMPT = "Say hello to the soak, please."
SESSIONS = 32
CONCURRENCY = 4
KEPT_MESSAGES = 16


@frozen
class Scenario:
    """One soak: the stores, whether calls carry a session, whether they stream."""

    stores: str  # "memory" or "sqlite"
    sessions: bool
    stream: bool

    @property
    def name(self) -> str:
        """``memory whole``, ``sqlite sessions stream``, ..."""
        parts = [self.stores, "sessions" if self.sessions else "no-session"]
        parts.append("stream" if self.stream else "whole")
        return " ".join(parts)


SCENARIOS = tuple(
    Scenario(stores, sessions, stream)
    for stores in ("memory", "sqlite")
    for sessions in (False, True)
    for stream in (False, True)
)


@frozen
class Growth:
    """What one soak measured: traced bytes per call over the second half, and RSS."""

    scenario: Scenario
    calls: int
    per_call: float  # traced bytes of growth per call, second half
    first_half: int  # traced bytes alive after the first half (one-time costs included)
    rss_per_call: float  # RSS growth per call over both halves, less tracemalloc's own memory
    top: tuple[tuple[str, int], ...]  # where the second half's growth was allocated


def rss_bytes() -> int:
    """This process's resident set size (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


@contextmanager
def upstream() -> Iterator[FakeOpenAI]:
    """The fake OpenAI upstream on its own thread, answering a fixed short reply."""
    fake = FakeOpenAI(reply="Hello, soak.")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def make_proxy(scenario: Scenario, base_url: str, data_dir: Path) -> Proxy:
    """A Proxy on the scenario's stores, with one all-time token budget counted in its ledger."""
    environ = {
        "OPENAI_API_KEY": "sk-soak-0000000000000000",
        "OPENAI_BASE_URL": base_url,
        "LLMPROXY_DATA_DIR": str(data_dir),
    }
    if scenario.stores == "memory":
        history: MemoryHistoryStore | str = MemoryHistoryStore(
            max_messages_per_session=KEPT_MESSAGES
        )
        ledger = "memory://"
    else:
        history = f"sqlite:///{data_dir}/history.db"
        ledger = f"sqlite:///{data_dir}/ledger.db"
    return Proxy(
        {"history_limit": KEPT_MESSAGES},
        history=history,
        ledger=ledger,
        budgets=[LLMBudget(max_tokens=10**15, name="soak")],
        environ=environ,
    )


async def run_calls(proxy: Proxy, scenario: Scenario, fake: FakeOpenAI, start: int, n: int) -> None:
    """Make ``n`` calls, ``CONCURRENCY`` at a time; the fake forgets its records as they go."""
    counter = iter(range(start, start + n))

    async def one(index: int) -> None:
        session = f"soak-{index % SESSIONS}" if scenario.sessions else None
        if scenario.stream:
            async with proxy.astream(PROMPT, model=MODEL, session_id=session) as stream:
                async for _event in stream:
                    pass
        else:
            await proxy.achat(PROMPT, model=MODEL, session_id=session)

    async def worker() -> None:
        for index in counter:
            await one(index)
            if index % 512 == 0:
                fake.clear()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def traced(fake: FakeOpenAI, log: UsageLog) -> tuple[int, tracemalloc.Snapshot]:
    """The traced bytes alive now, after a full collection, and the snapshot they come from.

    The fake's recorded requests are dropped and the usage log's queue written first, so
    that neither the harness nor a queue's momentary length counts as growth.
    """
    fake.clear()
    log.flush()
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    return sum(stat.size for stat in snapshot.statistics("filename")), snapshot


def soak(scenario: Scenario, calls: int, warmup: int) -> Growth:
    """Run one scenario: ``warmup`` calls, then ``calls`` measured in two halves."""
    half = max(calls // 2, 1)
    with tempfile.TemporaryDirectory() as tmp, upstream() as fake:
        # The usage log is one per process: point it at this scenario's data dir.
        log = open_usage_log(f"sqlite:///{tmp}/usage.db", {})
        previous = set_usage_log(log)
        proxy = make_proxy(scenario, fake.base_url, Path(tmp))

        async def main() -> Growth:
            await run_calls(proxy, scenario, fake, 0, warmup)
            rss0 = rss_bytes()
            tracemalloc.start(1)
            try:
                await run_calls(proxy, scenario, fake, warmup, half)
                first, before = traced(fake, log)
                await run_calls(proxy, scenario, fake, warmup + half, half)
                second, after = traced(fake, log)
                rss1 = rss_bytes() - tracemalloc.get_tracemalloc_memory()
            finally:
                tracemalloc.stop()
            top = tuple(
                (str(stat.traceback), stat.size_diff)
                for stat in after.compare_to(before, "lineno")[:5]
                if stat.size_diff > 0
            )
            await proxy.aclose()
            return Growth(
                scenario, 2 * half, (second - first) / half, first, (rss1 - rss0) / (2 * half), top
            )

        try:
            return asyncio.run(main())
        finally:
            set_usage_log(previous)
            log.close()


def main(argv: list[str] | None = None) -> int:
    """Run the soak scenarios and print bytes per call; non-zero when one is over ``--limit``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=25_000, help="measured calls per scenario")
    parser.add_argument("--warmup", type=int, default=2_000, help="warm-up calls per scenario")
    parser.add_argument("--quick", action="store_true", help="2,000 calls per scenario")
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    parser.add_argument("--limit", type=float, default=50.0, help="bytes per call allowed")
    args = parser.parse_args(argv)
    calls, warmup = (2_000, 600) if args.quick else (args.calls, args.warmup)
    scenarios = [s for s in SCENARIOS if args.only in s.name]
    print(
        f"{len(scenarios)} scenarios x ({warmup} warm-up + {calls} measured calls),"
        f" {CONCURRENCY} in flight; growth after warm-up (tracemalloc, second half)"
    )
    print(f"{'scenario':<28} {'B/call':>8} {'first half':>11} {'RSS B/call':>11}")
    failed = []
    for scenario in scenarios:
        growth = soak(scenario, calls, warmup)
        print(
            f"{scenario.name:<28} {growth.per_call:8.1f} {growth.first_half / 1024:9.0f}KB"
            f" {growth.rss_per_call:11.1f}",
            flush=True,
        )
        for where, size in growth.top:
            print(f"    +{size / 1024:.1f}KB {where}")
        if growth.per_call > args.limit:
            failed.append(scenario.name)
    if failed:
        print(f"over {args.limit:g} B/call: {', '.join(failed)}")
        return 1
    print(f"every scenario under {args.limit:g} B/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
