"""One process of test_stress.py: many concurrent async reserve/settle cycles on one ledger.

    python _stress_worker.py REDIS_URL CYCLES START_AT

Waits until the wall clock reaches START_AT (so the processes start together), runs CYCLES
cycles at once with asyncio.gather, and prints a JSON line: successes, tokens and dollars
settled, refusals.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from llmproxy.budget.base import Claim, Rates
from llmproxy.errors import BudgetExceeded, RateLimited
from llmproxy_redis_budget import RedisLedger

TOKENS = Claim("stress-tokens", "stress-tokens", "global", 2000)
RATE = Claim("stress-rate", "stress-rate", "global", 150, "requests", 3600.0)
DOLLARS = Claim(
    "stress-usd", "stress-usd", "global", 0.005, "usd", period="day", tz="Asia/Ho_Chi_Minh"
)
RATES = Rates(input=0.000001, output=0.000002)


async def main(url: str, cycles: int, start_at: float) -> None:
    ledger = RedisLedger(url, environ={}, socket_timeout=5.0)
    await asyncio.sleep(max(start_at - time.time(), 0))
    outcome = {"successes": 0, "tokens": 0, "nano_usd": 0, "refused": 0}

    async def cycle() -> None:
        await asyncio.sleep(random.random() * 0.01)
        try:
            reservation = await ledger.areserve(
                [TOKENS, RATE, DOLLARS],
                input_tokens=10,
                max_output_tokens=30,
                min_output_tokens=5,
                rates=RATES,
            )
        except (BudgetExceeded, RateLimited):
            outcome["refused"] += 1
            return
        await asyncio.sleep(random.random() * 0.01)
        tokens = reservation.input_tokens + random.randint(0, reservation.output_tokens)
        nano = 1000 * reservation.input_tokens + 2000 * (tokens - reservation.input_tokens)
        await ledger.asettle(reservation, tokens=tokens, cost=nano / 1e9)
        outcome["successes"] += 1
        outcome["tokens"] += tokens
        outcome["nano_usd"] += nano

    await asyncio.gather(*(cycle() for _ in range(cycles)))
    await ledger.aclose()
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
