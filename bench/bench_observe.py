"""What call observers cost a call: none, one that declines (no SDK), the OpenTelemetry SDK.

Three Proxies on one in-process provider that answers at once (so the Proxy's own work is all
there is to measure), memory stores, a token budget and a session on every call, take turns
round by round:

- ``none``: no call observer (the flow runs unwrapped);
- ``declined``: the installed ``llmproxy-otel`` observer on the global providers, with no SDK
  configured, so it declines every call (what an application that installs the plugin and
  never sets up OpenTelemetry pays);
- ``sdk``: an ``OtelObserver`` on an SDK tracer provider (no span processor: spans are made,
  not exported) and meter provider.

    .venv/bin/python bench/bench_observe.py             # 9 rounds x 2000 calls per Proxy
    .venv/bin/python bench/bench_observe.py --quick     # a smoke run, not for figures

Timings on a shared machine swing; for a firm figure count instructions with
``valgrind --tool=callgrind`` over ``--only KIND --calls N`` runs (the difference between two
call counts, divided by their difference, is the per-call cost).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import llmproxy
from llmproxy import LLMBudget, Proxy
from llmproxy.types import ChatRequest

KINDS = ("none", "declined", "sdk")


class Instant(llmproxy.BaseProvider):
    """A provider that answers at once, without I/O."""

    async def achat(self, request: ChatRequest) -> llmproxy.Completion:
        return llmproxy.Completion(
            llmproxy.Message("assistant", "hi"), llmproxy.Usage(5, 1), request.model
        )


def make_proxy(kind: str) -> Proxy:
    """A Proxy whose call observers are those of ``kind``."""
    observers: list[Any] = []
    if kind == "sdk":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        from llmproxy_otel import OtelObserver

        meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
        observers.append(OtelObserver(tracer_provider=TracerProvider(), meter_provider=meters))
    proxy = Proxy(
        {"default_model": "instant/m"},
        providers={"instant": Instant()},
        history="memory://",
        ledger="memory://",
        budgets=[LLMBudget(max_tokens=10**12)],
        observers=observers,
        environ={},
    )
    if kind == "none":
        proxy._call_observers = []  # the installed plugin's observer too
    elif not proxy._call_observers:
        raise SystemExit("llmproxy-otel is not installed: pip install -e plugins/otel")
    return proxy


def calls(proxy: Proxy, count: int) -> None:
    for i in range(count):
        proxy.chat("Hello", session_id=f"s{i % 50}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, not for figures")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000, help="calls per Proxy and round")
    parser.add_argument("--only", choices=KINDS, help="run one kind, untimed (for callgrind)")
    args = parser.parse_args()
    if args.only:
        proxy = make_proxy(args.only)
        calls(proxy, 300)  # warm-up, as in a timed run
        calls(proxy, args.calls)
        return 0
    rounds, count = (2, 200) if args.quick else (args.rounds, args.calls)
    proxies = {kind: make_proxy(kind) for kind in KINDS}
    for proxy in proxies.values():
        calls(proxy, 300)
    per_call: dict[str, list[float]] = {kind: [] for kind in KINDS}
    order = list(KINDS)
    for _ in range(rounds):
        order = order[1:] + order[:1]  # each kind goes first in turn
        for kind in order:
            started = time.perf_counter()
            calls(proxies[kind], count)
            per_call[kind].append((time.perf_counter() - started) / count * 1e6)
    base = statistics.median(per_call["none"])
    print(f"python {sys.version.split()[0]}, {rounds} rounds x {count} calls per Proxy")
    for kind in KINDS:
        median = statistics.median(per_call[kind])
        print(
            f"{kind:9s} median {median:8.1f} us/call  min {min(per_call[kind]):8.1f}"
            f"  ratio {median / base:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
