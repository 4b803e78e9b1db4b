"""Cost that does not grow with the work: issue 21's figures as ratios, in one run.

Sections (``--only`` picks some; each prints its own lines):

- ``history``: a Proxy's overhead over the aiohttp floor (a bare aiohttp POST of the same
  payload to the same fake upstream) with a 10-message and a 1,000-message session
  (``history_limit`` 10 and 1,000), on the memory, SQLite and Redis history stores (the ledger
  in memory, so that only the store differs). Proxy and floor calls alternate call by call;
  overhead is the Proxy's median minus the floor's. Per message: (overhead at 1,000 - at 10) /
  990. Ratios: each store's overhead at 1,000 messages over the memory store's (target 1.5x).
- ``policies``: 1 against 20 named token budgets on a Redis ledger (no history): the
  medians of whole calls and their ratio (target 1.25x).
- ``trips``: Redis round trips per call with history and ledger both on Redis, counted on the
  server (``INFO stats`` ``total_reads_processed``): a session this process wrote last and a
  new session each call (target 2).
- ``memory``: bytes a Proxy keeps per call after warm-up (``bench_soak.py``'s measure, memory
  stores, no session; target under 50).
- ``gateway``: 64 concurrent non-streamed clients (keep-alive, closed loop) against the fake
  upstream directly, ``llmproxy serve --workers 1`` and ``--workers 2`` (a key with a token
  budget and a requests-per-minute limit): p50/p99 added over direct, requests per second,
  the gateway's CPU milliseconds per request, and the load generator's own CPU share (near
  100 % means the client, not the gateway, is what saturates). Target: at most 3 ms p50 and
  10 ms p99 added, 2 workers at least 1.7x one worker's requests per second. Run twice: with
  the Python fake upstream, and with nginx answering a fixed completion (when installed,
  ``apt-get install nginx-light``), which costs the two shared cores far less, so that the
  workers' scaling is the gateway's rather than the upstream's (``--upstream`` picks one).
  Then the CPU each process spent a request, and what two cores allow from those figures.
- ``history`` also times a bare asyncio round trip to the redis-server (PING on a raw
  connection): the least the Redis store's one write, which a call waits for, can cost.

Redis sections start their own ``redis-server`` on loopback (skipped when it is missing).

    .venv/bin/python bench/bench_scaling.py                 # every section
    .venv/bin/python bench/bench_scaling.py --quick         # smaller samples: a smoke run
    .venv/bin/python bench/bench_scaling.py --only history,memory
    .venv/bin/python bench/bench_scaling.py --only gateway --upstream nginx
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

from llmproxy import HistoryRecord, LLMBudget, Message, Proxy


def _sibling(name: str) -> ModuleType:
    """Import another bench script of this directory (they are scripts, not a package)."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


bench_gateway = _sibling("bench_gateway")
bench_soak = _sibling("bench_soak")

MODEL = "gpt-5.4-mini"
KEY = "sk-bench-0000000000000000"
PROMPT = "Say hello to the benchmark, please."
SECTIONS = ("history", "policies", "trips", "memory", "gateway")


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


@contextlib.contextmanager
def fake_upstream() -> Iterator[str]:
    """The fake OpenAI upstream in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmproxy_testing.fake_openai", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit(f"fake upstream did not start: {url!r}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@contextlib.contextmanager
def redis_url() -> Iterator[str | None]:
    """A redis-server of our own on loopback, or None when it is not installed."""
    from llmproxy_testing.redis_server import RedisServer, redis_server_path

    if redis_server_path() is None:
        yield None
        return
    with RedisServer() as server:
        yield server.url


def environ(base_url: str, data_dir: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": base_url, "LLMPROXY_DATA_DIR": data_dir}


def history(session: str, messages: int) -> list[HistoryRecord]:
    """``messages`` stored messages: questions and answers of a few dozen words each."""
    now = time.time()
    out = []
    for i in range(messages // 2):
        for user, text, n in ((True, "question", 8), (False, "answer", 16)):
            body = f"{text} {i}: " + "lorem ipsum dolor " * n
            out.append(
                HistoryRecord(
                    session,
                    Message("user", body) if user else Message("assistant", body),
                    MODEL,
                    "openai",
                    now,
                    id=f"{session}-{text}-{i}",
                )
            )
    return out


async def alternate(
    a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]], n: int
) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately, call by call, so machine drift hits both alike."""
    out_a: list[float] = []
    out_b: list[float] = []
    for i in range(n):
        for fn, out in ((a, out_a), (b, out_b)) if i % 2 == 0 else ((b, out_b), (a, out_a)):
            t0 = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - t0)
    return out_a, out_b


# -- history ---------------------------------------------------------------------------------


def history_target(store: str, records: list[HistoryRecord], redis: str | None, tmp: str) -> Any:
    """The ``history=`` of a Proxy on ``store``, holding ``records`` already."""
    if store == "memory":
        from llmproxy.history.memory import MemoryHistoryStore

        memory = MemoryHistoryStore()
        memory.append(records)
        return memory
    writer: Any
    if store == "sqlite":
        from llmproxy.history.sqlite import SQLiteHistoryStore

        path = f"{tmp}/history-{len(records)}.db"
        writer = SQLiteHistoryStore(path)
        target = f"sqlite:///{path}"
    else:
        from llmproxy_redis_history import RedisHistoryStore

        assert redis is not None
        writer = RedisHistoryStore(redis, environ={})
        target = redis
    writer.append(records)
    writer.close()
    return target


async def history_overheads(
    stores: list[str], messages: int, base_url: str, redis: str | None, tmp: str, calls: int
) -> dict[str, float]:
    """Each store's Proxy median over the floor's (ms), with a ``messages``-message session.

    The floor and every store take turns call by call (the order rotating each round), so
    that the machine's drift hits them alike.
    """
    proxies: dict[str, tuple[Proxy, str]] = {}
    records: list[HistoryRecord] = []
    for store in stores:
        session = f"long-{store}-{messages}"
        records = history(session, messages)
        proxy = Proxy(
            {"history_limit": messages},
            history=history_target(store, records, redis, tmp),
            ledger="memory://",
            budgets=[LLMBudget(max_tokens=10**15, name="scaling")],
            environ=environ(base_url, tmp),
        )
        proxies[store] = (proxy, session)
    # The floor sends what a Proxy sends: the stored messages and the new prompt.
    wire = [{"role": r.message.role, "content": r.message.content} for r in records]
    payload = {"model": MODEL, "messages": [*wire, {"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:

        async def floor() -> None:
            async with http.post(
                f"{base_url}/chat/completions", json=payload, headers=headers
            ) as response:
                await response.read()

        def proxied(proxy: Proxy, session: str) -> Callable[[], Awaitable[Any]]:
            return lambda: proxy.achat(PROMPT, model=f"openai/{MODEL}", session_id=session)

        turns: list[tuple[str, Callable[[], Awaitable[Any]]]] = [("floor", floor)]
        turns += [(store, proxied(proxy, session)) for store, (proxy, session) in proxies.items()]
        times: dict[str, list[float]] = {name: [] for name, _fn in turns}
        for index in range(20 + calls):  # 20 rounds of warm-up: connections, caches
            shift = index % len(turns)
            for name, fn in turns[shift:] + turns[:shift]:
                t0 = time.perf_counter()
                await fn()
                if index >= 20:
                    times[name].append(time.perf_counter() - t0)
    for proxy, _session in proxies.values():
        await proxy.aclose()
    base = median_ms(times["floor"])
    return {store: median_ms(times[store]) - base for store in stores}


def section_history(base_url: str, redis: str | None, calls: int) -> None:
    stores = ["memory", "sqlite"] + (["redis"] if redis else [])
    print(
        f"history: overhead over the aiohttp floor (same payload), {calls} rounds of one call"
        " per store and one floor call, ms"
    )
    print(f"{'store':<8} {'10 msgs':>8} {'1000 msgs':>10} {'per msg':>9} {'1000 / memory':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        short = asyncio.run(history_overheads(stores, 10, base_url, redis, tmp, calls))
        long = asyncio.run(history_overheads(stores, 1000, base_url, redis, tmp, calls))
    for store in stores:
        ratio = long[store] / long["memory"] if long["memory"] > 0 else float("nan")
        print(
            f"{store:<8} {short[store]:8.2f} {long[store]:10.2f}"
            f" {(long[store] - short[store]) / 990 * 1000:7.2f}us {ratio:13.2f}x"
        )
    print("  (target: 1000-message overhead within 1.5x of memory's on SQLite and Redis)")
    if redis:
        trip = asyncio.run(bare_round_trip(redis))
        room = long["memory"] * 0.5
        print(
            f"  a bare asyncio round trip to this redis-server (PING, no client library):"
            f" {trip:.3f} ms; 1.5x of memory's leaves {room:.3f} ms for everything the Redis"
            f" store adds, its one write's round trip included"
        )
    else:
        print("  (redis-server not installed: no Redis row)")


async def bare_round_trip(url: str, n: int = 2000) -> float:
    """Median ms of a PING written and its reply read on a raw asyncio connection.

    The floor under any Redis command from an asyncio program on this machine: what the
    Redis store's write, which a call waits for, costs at the least.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
    times: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            if await reader.readline() != b"+PONG\r\n":
                raise SystemExit("redis-server did not answer PING")
            times.append(time.perf_counter() - t0)
    finally:
        writer.close()
        await writer.wait_closed()
    return median_ms(times)


# -- policies and trips (Redis) --------------------------------------------------------------


def section_policies(base_url: str, redis: str, calls: int) -> None:
    async def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            one = Proxy(
                ledger=redis,
                budgets=[LLMBudget(max_tokens=10**15, name="one-0")],
                environ=environ(base_url, tmp),
            )
            twenty = Proxy(
                ledger=redis,
                budgets=[LLMBudget(max_tokens=10**15, name=f"twenty-{i}") for i in range(20)],
                environ=environ(base_url, tmp),
            )

            async def call_one() -> None:
                await one.achat(PROMPT, model=f"openai/{MODEL}", use_history=False)

            async def call_twenty() -> None:
                await twenty.achat(PROMPT, model=f"openai/{MODEL}", use_history=False)

            await alternate(call_one, call_twenty, 20)
            a, b = await alternate(call_one, call_twenty, calls)
            await one.aclose()
            await twenty.aclose()
            return median_ms(a), median_ms(b)

    one, twenty = asyncio.run(run())
    print(
        f"policies on Redis: 1 policy {one:.2f} ms, 20 policies {twenty:.2f} ms a call:"
        f" {twenty / one:.2f}x (target <= 1.25x)"
    )


def section_trips(base_url: str, redis: str, calls: int) -> None:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis)

    def reads() -> int:
        return int(client.info("stats")["total_reads_processed"])

    async def run() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            proxy = Proxy(
                history=redis,
                ledger=redis,
                budgets=[LLMBudget(max_tokens=10**15, name="trips")],
                environ=environ(base_url, tmp),
            )
            out = {}
            for case in ("same session", "new session"):
                for i in range(5):  # warm-up: connections, scripts loaded
                    await proxy.achat(PROMPT, model=f"openai/{MODEL}", session_id=f"warm-{i}")
                before = reads()
                for i in range(calls):
                    session = "trips-same" if case == "same session" else f"trips-new-{i}"
                    await proxy.achat(PROMPT, model=f"openai/{MODEL}", session_id=session)
                out[case] = (reads() - before - 1) / calls  # less the INFO of `before`
            await proxy.aclose()
            return out

    trips = asyncio.run(run())
    print(
        "redis round trips per call (history and ledger on Redis): "
        + ", ".join(f"{case} {n:.2f}" for case, n in trips.items())
        + " (target 2)"
    )
    client.close()


# -- memory ------------------------------------------------------------------------------------


def section_memory(calls: int) -> None:
    growth = bench_soak.soak(bench_soak.Scenario("memory", False, False), calls, calls // 5)
    print(
        f"memory: {growth.per_call:.1f} B kept per call after warm-up ({growth.calls} calls,"
        " memory stores, no session; target < 50; bench_soak.py for every scenario)"
    )


# -- gateway -----------------------------------------------------------------------------------

WHOLE = bench_gateway.Shape(
    "/v1/chat/completions",
    bench_gateway._json(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    ),
    None,
    None,
)


def completion_body(words: int = 24) -> str:
    """A whole chat completion as the bench's Python fake answers it (``words`` words)."""
    content = " ".join(f"word{i}" for i in range(words))
    return json.dumps(
        {
            "id": "chatcmpl-nginx",
            "object": "chat.completion",
            "created": 1796237042,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": words, "total_tokens": 12 + words},
        },
        separators=(",", ":"),
    )


def start_nginx(tmp: str) -> tuple[subprocess.Popen[str], str]:
    """nginx on loopback answering every chat completion with :func:`completion_body`.

    One worker process, no access log, keep-alive without a request cap: an upstream that
    costs its machine far less than the Python fake, so that what the gateway scaling run
    measures is the gateway. Returns the process (the master; its worker is its child) and
    the base URL.
    """
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(tmp) / "nginx"
    root.mkdir()
    body = completion_body().replace("\\", "\\\\").replace("'", "\\'")
    temps = "\n".join(
        f"  {name}_temp_path {root}/{name};" for name in ("client_body", "proxy", "fastcgi")
    )
    (root / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
{temps}
  server {{
    listen 127.0.0.1:{port};
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 '{body}';
    }}
  }}
}}
"""
    )
    proc = subprocess.Popen(
        [exe, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nginx did not start: {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, f"http://127.0.0.1:{port}/v1"
        time.sleep(0.02)  # polling a port that is not open yet; bounded by the deadline
    bench_gateway.stop(proc)
    raise SystemExit("nginx did not open its port within 15 s")


def section_gateway(clients: int, seconds: float, rounds: int, upstream_kind: str) -> None:
    with tempfile.TemporaryDirectory(prefix="llmproxy-scaling-") as tmp:
        base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI", "LLM_PROXY", "LLMPROXY"))
        }
        if upstream_kind == "nginx":
            upstream, upstream_url = start_nginx(tmp)
        else:
            upstream, line = bench_gateway.start(
                [
                    sys.executable,
                    bench_gateway.__file__,
                    "--serve-upstream",
                    "--words",
                    "24",
                    "--chunk-delay",
                    "0",
                ],
                base_env,
                "http://",
            )
            upstream_url = line.strip()
        env = {
            **base_env,
            "OPENAI_API_KEY": bench_gateway.UPSTREAM_KEY,
            "OPENAI_BASE_URL": upstream_url,
            "LLMPROXY_DATA_DIR": tmp,
        }
        from llmproxy_gateway import KeyStore

        store = KeyStore(Path(tmp) / "keys.db")
        _record, key = store.create(
            "bench", budgets=["tokens:1000000000000/month", "requests:100000000/minute"]
        )
        store.close()
        gateways: dict[int, subprocess.Popen[str]] = {}
        ports: dict[int, int] = {}
        try:
            for workers in (1, 2):
                proc, started = bench_gateway.start(
                    [bench_gateway.LLMPROXY, "serve", "--port", "0", "--workers", str(workers)],
                    env,
                    "gateway on",
                )
                gateways[workers] = proc
                url = started.split("gateway on ", 1)[1].split()[0].removesuffix("/v1")
                ports[workers] = int(url.rsplit(":", 1)[1])
            up_port = int(upstream_url.split("//")[1].split("/")[0].rsplit(":", 1)[1])
            targets: dict[str, tuple[int, str, Callable[[], float]]] = {
                "direct": (up_port, bench_gateway.UPSTREAM_KEY, lambda: 0.0),
                "1 worker": (ports[1], key, lambda: bench_gateway.cpu_seconds(gateways[1].pid)),
                "2 workers": (ports[2], key, lambda: bench_gateway.cpu_seconds(gateways[2].pid)),
            }
            for port, secret, _cpu in targets.values():
                # A few requests each first, on new connections (the kernel spreads them over
                # the workers): a worker may load the tokenizer on its first call.
                for _ in range(4):
                    status, text = bench_gateway.probe("127.0.0.1", port, secret, WHOLE)
                    if status != 200:
                        raise SystemExit(f"port {port} answered {status}: {text[:200]}")
            results = {name: bench_gateway.Sample() for name in targets}
            client_cpu = dict.fromkeys(targets, 0.0)
            client_wall = dict.fromkeys(targets, 0.0)
            upstream_cpu = dict.fromkeys(targets, 0.0)
            for round_index in range(rounds):
                for name, (port, secret, cpu) in targets.items():
                    up_before = bench_gateway.cpu_seconds(upstream.pid)
                    used = resource.getrusage(resource.RUSAGE_SELF)
                    began = time.perf_counter()
                    sample = bench_gateway.run(
                        bench_gateway.drive(
                            "127.0.0.1",
                            port,
                            secret,
                            WHOLE,
                            clients,
                            seconds,
                            ramp=0.5,
                            warmup=2.0 if round_index == 0 else 0.5,
                            cpu=cpu,
                        )
                    )
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    client_wall[name] += time.perf_counter() - began
                    upstream_cpu[name] += bench_gateway.cpu_seconds(upstream.pid) - up_before
                    client_cpu[name] += (after.ru_utime + after.ru_stime) - (
                        used.ru_utime + used.ru_stime
                    )
                    results[name] += sample
        finally:
            for proc in gateways.values():
                bench_gateway.stop(proc)
            bench_gateway.stop(upstream)
    pct = bench_gateway.pct
    direct = results["direct"]
    print(
        f"gateway: {clients} concurrent non-streamed clients, {rounds} alternating rounds of"
        f" {seconds:g} s per target, upstream: {upstream_kind}"
    )
    print(
        f"{'target':<10} {'req/s':>8} {'p50':>8} {'p99':>8} {'added p50':>10} {'added p99':>10}"
        f" {'CPU/req':>9} {'client CPU':>11} {'errors':>7}"
    )
    rates = {}
    for name, sample in results.items():
        rate = len(sample.totals) / sample.elapsed if sample.elapsed else 0.0
        rates[name] = rate
        added = (
            ""
            if name == "direct"
            else (
                f"{(pct(sample.totals, 0.5) - pct(direct.totals, 0.5)) * 1000:+9.2f}ms"
                f" {(pct(sample.totals, 0.99) - pct(direct.totals, 0.99)) * 1000:+9.2f}ms"
            )
        )
        per_request = sample.cpu * 1000 / max(len(sample.totals), 1)
        cpu_text = f"{per_request:7.3f}ms" if name != "direct" else ""
        # The load generator's CPU share of the wall time it ran (one core is 100 %).
        share = client_cpu[name] / max(client_wall[name], 1e-9)
        print(
            f"{name:<10} {rate:8.0f} {pct(sample.totals, 0.5) * 1000:6.2f}ms"
            f" {pct(sample.totals, 0.99) * 1000:6.2f}ms {added:>21} {cpu_text:>9} {share:10.0%}"
            f" {sample.errors:7}"
        )
    ratio = rates["2 workers"] / rates["1 worker"] if rates["1 worker"] else float("nan")
    print(f"2 workers / 1 worker requests per second: {ratio:.2f}x (target >= 1.7x)")
    print_gateway_bounds(clients, results, client_cpu, upstream_cpu)


def print_gateway_bounds(
    clients: int,
    results: dict[str, Any],
    client_cpu: dict[str, float],
    upstream_cpu: dict[str, float],
) -> None:
    """What two cores allow, from the CPU each process used a request.

    With ``g`` the gateway's CPU a request and ``o`` everyone else's (the load generator and
    the fake upstream, both measured; the kernel's share of loopback traffic is in their system
    time and the gateway's), one worker serves at most ``1/g`` requests/s (one core) and two at
    most ``2/(g+o)`` (both cores, ``g`` and ``o`` as measured in the 2-worker run, at its
    rate), so two workers reach about ``2/(g2+o2)`` over ``1/g1`` at best (an estimate: the
    kernel's softirq time is charged to whichever process it interrupts). At ``c`` closed-loop
    clients, one saturated worker's p50 is about ``c*g``: adding at most 3 ms over the direct
    p50 needs ``g <= (3 ms + direct p50) / c``; with that ``g`` two workers could reach at most
    ``2g/(g+o2)`` times one.
    """

    def per_request(name: str) -> tuple[float, float]:
        served = max(len(results[name].totals), 1)
        return results[name].cpu / served, (client_cpu[name] + upstream_cpu[name]) / served

    g1, o1 = per_request("1 worker")
    g2, o2 = per_request("2 workers")
    direct = results["direct"]
    needed = (0.003 + statistics.median(direct.totals)) / clients if direct.totals else float("nan")
    print(
        f"CPU a request: gateway {g1 * 1000:.3f} ms (1 worker) / {g2 * 1000:.3f} ms (2 workers),"
        f" load generator + upstream {o1 * 1000:.3f} / {o2 * 1000:.3f} ms"
    )
    print(
        f"what 2 cores allow (estimate): 2 workers / 1 worker ~ 2g1/(g2+o2)"
        f" = {2 * g1 / (g2 + o2):.2f}x;"
        f" +3 ms at p50 needs g <= {needed * 1000:.3f} ms, and with that g two workers could"
        f" serve at most {max(1.0, 2 * needed / (needed + o2)):.2f}x one"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples: a smoke run")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--clients", type=int, default=64, help="gateway clients")
    parser.add_argument(
        "--upstream",
        choices=("fake", "nginx", "both"),
        default="both",
        help="the gateway section's upstream: the Python fake, nginx answering a fixed"
        " completion (far cheaper: the gateway's own scaling), or both runs (default; nginx"
        " only when it is installed)",
    )
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: use {', '.join(SECTIONS)}")
    calls = 40 if args.quick else 300
    # The usage log is one per process and reads os.environ: keep it out of the figures.
    os.environ["LLMPROXY_USAGE_LOG_URL"] = "off"
    with fake_upstream() as base_url, redis_url() as redis:
        if "history" in only:
            section_history(base_url, redis, calls)
        if redis and "policies" in only:
            section_policies(base_url, redis, calls)
        if redis and "trips" in only:
            section_trips(base_url, redis, 20 if args.quick else 200)
        if not redis and only & {"policies", "trips"}:
            print("policies, trips: redis-server not installed: skipped")
    if "memory" in only:
        section_memory(2_000 if args.quick else 20_000)
    if "gateway" in only:
        kinds = ["fake", "nginx"] if args.upstream == "both" else [args.upstream]
        if (
            args.upstream == "both"
            and not shutil.which("nginx")
            and not Path("/usr/sbin/nginx").exists()
        ):
            kinds = ["fake"]
            print("gateway: nginx not installed: the Python fake upstream only")
        for kind in kinds:
            section_gateway(args.clients, 2.0 if args.quick else 10.0, 1 if args.quick else 3, kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
