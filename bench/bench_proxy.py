"""Proxy vs the raw openai SDK on the same fake upstream, in one run.

The fake upstream runs in its own process (so it does not share the client's GIL). Raw and
proxy calls alternate call by call (with 32 in flight, batch by batch: 64 calls each) so that
drift in the machine's speed hits both alike.

    .venv/bin/python bench/bench_proxy.py            # full run
    .venv/bin/python bench/bench_proxy.py --quick    # a smaller run, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from llmproxy import LLMBudget, Proxy, RequestsPerMinute

KEY = "sk-bench-0000000000000000"
MODEL = "gpt-5.4-mini"
PROMPT = "Say hello to the benchmark, please."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


ASYNC_HTTP = "aiohttp"


def make_proxy(base_url: str, stores: str, tmp: Path) -> Proxy:
    if stores == "memory":
        history, ledger = "memory://", "memory://"
    else:
        history, ledger = f"sqlite:///{tmp}/history.db", f"sqlite:///{tmp}/ledger.db"
    return Proxy(
        {"history_url": history, "ledger_url": ledger},
        # Named, so they are counted in the ledger under test (unnamed ones stay in memory).
        budgets=[
            LLMBudget(max_tokens=10**12, name="bench"),
            RequestsPerMinute(limit=10**9, name="bench-rpm"),
        ],
        environ={
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": base_url,
            "LLMPROXY_OPENAI_ASYNC_HTTP": ASYNC_HTTP,
        },
    )


class Runner:
    def __init__(self, base_url: str, stores: str, tmp: Path) -> None:
        self.raw = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0)
        self.araw: openai.AsyncOpenAI | None = None
        self.base_url = base_url
        self.proxy = make_proxy(base_url, stores, tmp)
        self.n = 0

    def session(self) -> str:
        self.n += 1
        return f"bench-{self.n}"

    # sync
    def raw_chat(self) -> None:
        self.raw.chat.completions.create(model=MODEL, messages=MESSAGES)

    def proxy_chat(self) -> None:
        self.proxy.chat(PROMPT, model=f"openai/{MODEL}", session_id=self.session())

    # async
    async def araw_chat(self) -> None:
        assert self.araw is not None
        await self.araw.chat.completions.create(model=MODEL, messages=MESSAGES)

    async def aproxy_chat(self) -> None:
        await self.proxy.achat(PROMPT, model=f"openai/{MODEL}", session_id=self.session())

    # streams: (total, time to first chunk)
    def raw_stream(self) -> float:
        t0 = time.perf_counter()
        first = 0.0
        stream = self.raw.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
        return first

    def proxy_stream(self) -> float:
        t0 = time.perf_counter()
        first = 0.0
        for event in self.proxy.stream(PROMPT, model=f"openai/{MODEL}", session_id=self.session()):
            if not first and event.text:
                first = time.perf_counter() - t0
        return first


def paired(a: Callable[[], Any], b: Callable[[], Any], n: int) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately, call by call, so machine drift hits both alike."""
    out_a: list[float] = []
    out_b: list[float] = []
    for i in range(n):
        for fn, out in ((a, out_a), (b, out_b)) if i % 2 == 0 else ((b, out_b), (a, out_a)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out_a, out_b


def paired_stream(
    a: Callable[[], float], b: Callable[[], float], n: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Like :func:`paired` for streams: (a totals, a first chunks, b totals, b first chunks)."""
    ta: list[float] = []
    fa: list[float] = []
    tb: list[float] = []
    fb: list[float] = []
    for i in range(n):
        order = ((a, ta, fa), (b, tb, fb)) if i % 2 == 0 else ((b, tb, fb), (a, ta, fa))
        for fn, totals, firsts in order:
            t0 = time.perf_counter()
            firsts.append(fn())
            totals.append(time.perf_counter() - t0)
    return ta, fa, tb, fb


async def apaired(
    a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]], n: int
) -> tuple[list[float], list[float]]:
    """Async :func:`paired`."""
    out_a: list[float] = []
    out_b: list[float] = []
    for i in range(n):
        for fn, out in ((a, out_a), (b, out_b)) if i % 2 == 0 else ((b, out_b), (a, out_a)):
            t0 = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - t0)
    return out_a, out_b


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def timed_stream(fn: Callable[[], float], n: int) -> tuple[list[float], list[float]]:
    totals, firsts = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        firsts.append(fn())
        totals.append(time.perf_counter() - t0)
    return totals, firsts


async def atimed(fn: Callable[[], Awaitable[Any]], n: int, concurrency: int) -> list[float]:
    out: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            t0 = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(n)))
    return out


def report(name: str, raw: list[float], proxy: list[float]) -> str:
    r50, p50 = statistics.median(raw), statistics.median(proxy)
    return (
        f"{name:<28} raw p50 {r50 * 1e3:7.3f} ms  p95 {pct(raw, 0.95) * 1e3:7.3f} ms | "
        f"proxy p50 {p50 * 1e3:7.3f} ms  p95 {pct(proxy, 0.95) * 1e3:7.3f} ms | "
        f"ratio {p50 / r50:5.3f}"
    )


def run(stores: str, base_url: str, rounds: int, per_round: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        r = Runner(base_url, stores, Path(tmp))
        # warm-up: imports, connections, tokenizer tables
        timed(r.raw_chat, 50)
        timed(r.proxy_chat, 50)
        timed_stream(r.raw_stream, 20)
        timed_stream(r.proxy_stream, 20)
        results: dict[str, list[float]] = {
            k: []
            for k in (
                "raw",
                "proxy",
                "araw",
                "aproxy",
                "araw32",
                "aproxy32",
                "sraw",
                "sproxy",
                "fraw",
                "fproxy",
            )
        }
        for _ in range(rounds):
            raw, proxy = paired(r.raw_chat, r.proxy_chat, per_round)
            results["raw"] += raw
            results["proxy"] += proxy
            ta, fa, tb, fb = paired_stream(r.raw_stream, r.proxy_stream, per_round // 2)
            results["sraw"] += ta
            results["fraw"] += fa
            results["sproxy"] += tb
            results["fproxy"] += fb

        async def async_part() -> None:
            r.araw = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0)
            await atimed(r.araw_chat, 50, 1)
            await atimed(r.aproxy_chat, 50, 1)
            for _ in range(rounds):
                raw, proxy = await apaired(r.araw_chat, r.aproxy_chat, per_round)
                results["araw"] += raw
                results["aproxy"] += proxy
                # 32 in flight, raw and proxy batches of 64 calls alternating
                for batch in range(per_round // 32):
                    sides = [("araw32", r.araw_chat), ("aproxy32", r.aproxy_chat)]
                    for name, fn in sides if batch % 2 == 0 else sides[::-1]:
                        results[name] += await atimed(fn, 64, 32)
            await r.araw.close()
            await r.proxy.aclose()

        asyncio.run(async_part())
        r.proxy.close()
        r.raw.close()
    return [
        f"-- {stores} stores (history + token budget + rpm limit on every proxy call) --",
        report("sync chat", results["raw"], results["proxy"]),
        report("async chat", results["araw"], results["aproxy"]),
        report("async chat, 32 concurrent", results["araw32"], results["aproxy32"]),
        report("stream total", results["sraw"], results["sproxy"]),
        report("stream first chunk", results["fraw"], results["fproxy"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer calls (a smoke test, not for figures)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=400)
    parser.add_argument("--stores", choices=["memory", "sqlite", "both"], default="both")
    parser.add_argument(
        "--async-http",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="the Proxy's async HTTP client (the raw SDK always uses its default, httpx)",
    )
    args = parser.parse_args()
    global ASYNC_HTTP
    ASYNC_HTTP = args.async_http
    rounds, per_round = (1, 40) if args.quick else (args.rounds, args.per_round)
    proc, base_url = start_upstream()
    try:
        print(
            f"python {sys.version.split()[0]}, openai {openai.__version__}, cpus {os.cpu_count()},"
            f" {rounds} rounds x {per_round} calls per scenario and side;"
            f" the Proxy's async HTTP client: {args.async_http}"
        )
        for stores in ["memory", "sqlite"] if args.stores == "both" else [args.stores]:
            for line in run(stores, base_url, rounds, per_round):
                print(line, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
