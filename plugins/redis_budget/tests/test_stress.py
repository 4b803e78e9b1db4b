"""Four processes racing 50 concurrent async calls each on one small Redis budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from llmproxy_redis_budget import RedisLedger

WORKER = Path(__file__).with_name("_stress_worker.py")


def _worker_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_stress_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_processes_never_overspend_and_release_everything(redis_url: str, raw: redis.Redis) -> None:
    processes, cycles = 4, 50
    start_at = time.time() + 2.0  # every process imports first, then they start together
    children = [
        subprocess.Popen(
            [sys.executable, str(WORKER), redis_url, str(cycles), repr(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outcomes = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    successes = sum(o["successes"] for o in outcomes)
    spent = sum(o["tokens"] for o in outcomes)
    nano = sum(o["nano_usd"] for o in outcomes)
    refused = sum(o["refused"] for o in outcomes)
    assert successes + refused == processes * cycles
    assert refused > 0  # the budget was small enough to be contended

    worker = _worker_module()
    ledger = RedisLedger(redis_url, environ={})
    tokens, rate, dollars = ledger.usage([worker.TOKENS, worker.RATE, worker.DOLLARS])
    assert tokens.used == spent <= 2000
    assert rate.used == successes <= 150
    assert round(dollars.used * 1e9) == nano <= 5_000_000
    assert tokens.reserved == rate.reserved == dollars.reserved == 0
    for claim in (worker.TOKENS, worker.RATE, worker.DOLLARS):
        assert raw.exists(ledger.key("h", claim.key)) == 0
        assert raw.hget(ledger.key("u", claim.key), "r") is None
    ledger.close()
