"""The Redis ledger lists every budget under its prefix, with the terms stored at reserve."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
import redis

from llmproxy.budget.base import Claim, ListableLedger, Rates
from llmproxy.errors import StoreError
from llmproxy_redis_budget import RedisLedger

TEAM = Claim("team|global", "team", "global", 3000)
RATE = Claim("rpm|key:k1", "rpm", "key:k1", 5, "requests", 60.0)
MONTH = Claim("cost|user:ann", "cost", "user:ann", 2.5, "usd", period="month", tz="Asia/Tokyo")


def test_lists_every_budget_under_the_prefix(
    make_ledger: Callable[..., RedisLedger], raw: redis.Redis
) -> None:
    ledger = make_ledger(prefix="app")
    assert isinstance(ledger, ListableLedger)
    assert ledger.budgets() == []
    held = ledger.reserve(
        [TEAM, RATE, MONTH], input_tokens=10, max_output_tokens=10, rates=Rates(0.001, 0.002)
    )
    ledger.settle(held, tokens=15, cost=0.02)
    ledger.reserve([TEAM], input_tokens=5, max_output_tokens=5)  # in flight
    make_ledger(prefix="elsewhere").reserve([TEAM], input_tokens=1, max_output_tokens=1)
    other = make_ledger(prefix="app")  # another process on the same prefix
    rows = other.budgets()
    assert [row.claim for row in rows] == sorted([MONTH, RATE, TEAM], key=lambda c: c.key)
    by_key = {row.claim.key: row for row in rows}
    assert (by_key[TEAM.key].used, by_key[TEAM.key].reserved) == (15, 10)
    assert by_key[RATE.key].used == 1 and by_key[RATE.key].resets_at is not None
    assert by_key[MONTH.key].used == 0.02 and by_key[MONTH.key].resets_at is not None
    # A raised limit replaces the stored terms; an unchanged one is not written again.
    other.reserve(
        [Claim("team|global", "team", "global", 5000)], input_tokens=1, max_output_tokens=1
    )
    assert [r.claim.limit for r in ledger.budgets() if r.claim.key == TEAM.key] == [5000]
    # A hash without terms (kept by a settle after its keys expired) is skipped.
    raw.hset(ledger.key("u", "old|global"), "u", 7)
    listed = [row.claim for row in ledger.budgets()]
    assert "old|global" not in [claim.key for claim in listed] and len(listed) == 3
    assert asyncio.run(_alist(other)) == listed


async def _alist(ledger: RedisLedger) -> list[Claim]:
    try:
        return [row.claim for row in await ledger.abudgets()]
    finally:
        await ledger.aclose()


def test_listing_an_unreachable_redis_is_a_store_error(
    make_ledger: Callable[..., RedisLedger],
) -> None:
    ledger = make_ledger("redis://127.0.0.1:1/0", fail="open", connect_timeout=0.5)
    with pytest.raises(StoreError, match="could not list its budgets"):
        ledger.budgets()


def test_usage_command_lists_the_redis_budgets(
    make_ledger: Callable[..., RedisLedger],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llmproxy.cli import main

    ledger = make_ledger()
    held = ledger.reserve([TEAM, RATE], input_tokens=10, max_output_tokens=10)
    ledger.settle(held, tokens=12)
    for name in [n for n in os.environ if n.startswith(("LLMPROXY", "OPENAI"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LLMPROXY_LEDGER_URL", redis_url)
    monkeypatch.setenv("LLMPROXY_HISTORY_URL", "memory://")
    assert main(["usage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rpm (key:k1): used 1 / limit 5 requests, reserved 0, remaining 4")
    assert lines[1] == "team (global): used 12 / limit 3000 tokens, reserved 0, remaining 2988"
    assert main(["usage", "--key", "k2"]) == 0
    assert capsys.readouterr().out.splitlines() == [lines[1]]  # global, not k1's
