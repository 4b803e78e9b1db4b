"""Memory stays flat: the fast form of ``bench/bench_soak.py`` (bytes per call, not time).

After warm-up calls, :mod:`tracemalloc` measures what a Proxy keeps alive per call over the
second half of the measured calls (see the bench's docstring); the issue's bound is 50 bytes
per call. Before the memory ledger stopped keeping an expiry-heap entry and a settled id per
call, a memory-store Proxy kept about 310 B a call here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_soak.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_soak", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("stores", "sessions", "stream"),
    [("memory", False, False), ("memory", True, True), ("sqlite", True, False)],
)
def test_a_proxy_keeps_under_50_bytes_a_call(stores: str, sessions: bool, stream: bool) -> None:
    bench = _bench()
    growth = bench.soak(bench.Scenario(stores, sessions, stream), calls=2_000, warmup=600)
    assert growth.per_call < 50, (
        f"{growth.scenario.name}: {growth.per_call:.1f} B/call kept; grew at {growth.top}"
    )
