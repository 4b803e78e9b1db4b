"""What the default price table (genai-prices) costs: its first lookup and every one after.

    .venv/bin/python bench/bench_prices.py              # 15 fresh processes, then 200,000 lookups
    .venv/bin/python bench/bench_prices.py --runs 30

The first lookup a process makes of a model that the configuration and the plugins do not price
imports genai-prices and reads its data (once per process). Each run is a fresh interpreter
that builds a Proxy (plugins loaded) and times that first lookup alone, with the import split
out; the rest of the script times lookups once warm: through the Proxy's table (cached per
name, what every call pays) and straight from genai-prices' data (what a new model name pays).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PROBE = """
import json, time
from llmproxy import Proxy
proxy = Proxy(environ={})
t0 = time.perf_counter()
import genai_prices.data_snapshot as snapshot
snapshot.get_snapshot()
t1 = time.perf_counter()
proxy.prices.get("openai", "gpt-5.4-nano")
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first": t2 - t1}))
"""

PROBE_ALL = """
import json, time
from llmproxy import Proxy
proxy = Proxy(environ={})
t0 = time.perf_counter()
proxy.prices.get("openai", "gpt-5.4-nano")
print(json.dumps({"total": time.perf_counter() - t0}))
"""


def _run(code: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()
    _run(PROBE_ALL)  # warm the file cache and the bytecode
    split = [_run(PROBE) for _ in range(args.runs)]
    total = [_run(PROBE_ALL)["total"] for _ in range(args.runs)]
    ms = 1000.0
    print(f"first lookup in a process, all in  median {statistics.median(total) * ms:6.1f} ms")
    print(
        f"  of which import + data              median"
        f" {statistics.median(r['import'] for r in split) * ms:6.1f} ms"
    )
    print(
        f"  of which the lookup itself          median"
        f" {statistics.median(r['first'] for r in split) * ms:6.1f} ms"
    )

    from llmproxy import Proxy
    from llmproxy.genai_table import GenaiPrices

    proxy = Proxy(environ={})
    proxy.prices.get("openai", "gpt-5.4-nano")
    names = ["gpt-5.4-nano", "gpt-5.4-mini", "gpt-5.4-pro", "gpt-4o-mini"]
    started = time.perf_counter()
    for i in range(args.lookups):
        proxy.prices.get("openai", names[i % 4])
    cached = (time.perf_counter() - started) / args.lookups
    fresh = GenaiPrices()
    fresh.find("openai", "gpt-5.4-nano")
    rounds = max(args.lookups // 100, 100)
    started = time.perf_counter()
    for i in range(rounds):
        fresh.find("openai", names[i % 4])
    uncached = (time.perf_counter() - started) / rounds
    print(f"a lookup once warm (cached per name)  {cached * 1e9:8.0f} ns")
    print(f"a new model name (genai-prices scan)  {uncached * 1e6:8.1f} us")
    proxy.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
