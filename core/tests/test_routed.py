"""RoutedLedger: unnamed budgets private to their Proxy, named ones in the shared ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llmproxy import LLMBudget, RequestsPerMinute
from llmproxy.budget.base import Claim, Ledger, Reservation
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.policy import CallScope
from llmproxy.budget.routed import RoutedLedger, RoutedReservation, shared_ledger
from llmproxy.budget.sqlite import SQLiteLedger
from llmproxy.errors import BudgetExceeded, RateLimited

SCOPE = CallScope("openai/gpt-5.4-mini", "openai")


def claim(policy: Any) -> Claim:
    found: Claim | None = policy.claim(SCOPE)
    assert found is not None
    return found


def test_a_policy_is_shared_only_when_named() -> None:
    assert not claim(LLMBudget(max_tokens=20)).shared
    assert claim(LLMBudget(max_tokens=20, name="team")).shared
    assert not claim(RequestsPerMinute(limit=5)).shared
    # The derived name still labels it; it does not make it equal to a named twin.
    assert LLMBudget(max_tokens=20).name == "tokens-20-global"
    assert LLMBudget(max_tokens=20) != LLMBudget(max_tokens=20, name="tokens-20-global")


def test_two_scripts_on_one_file_share_only_named_budgets(tmp_path: Path) -> None:
    """The newcomer's case: two processes, one default ledger, the same budgets in code."""
    path = tmp_path / "ledger.db"
    unnamed, named = claim(LLMBudget(max_tokens=20)), claim(LLMBudget(max_tokens=20, name="t"))
    first = RoutedLedger(SQLiteLedger(path))
    held = first.reserve([unnamed, named], input_tokens=5, max_output_tokens=5)
    first.settle(held, tokens=8)
    first.close()
    second = RoutedLedger(SQLiteLedger(path))  # a second script, or the next run
    private, shared = second.usage([unnamed, named])
    assert (private.used, shared.used) == (0, 8)
    # The file never heard of the unnamed budget.
    assert [row.claim.key for row in shared_ledger(second).usage([unnamed])] == [unnamed.key]
    assert shared_ledger(second).usage([unnamed])[0].used == 0
    second.close()


def test_only_private_claims_never_open_the_shared_ledger() -> None:
    opened: list[Ledger] = []

    def open_shared() -> Ledger:
        opened.append(MemoryLedger())
        return opened[-1]

    ledger = RoutedLedger(open_shared)
    budget = claim(LLMBudget(max_tokens=100))
    held = ledger.reserve([budget], input_tokens=10, max_output_tokens=20)
    ledger.settle(held, tokens=15)
    assert ledger.usage([budget])[0].used == 15
    assert not opened and not ledger.opened
    ledger.close()
    ledger.reserve(
        [claim(LLMBudget(max_tokens=100, name="n"))], input_tokens=1, max_output_tokens=1
    )
    assert len(opened) == 1 and ledger.shared is opened[0]


def test_a_memory_ledger_given_is_also_the_private_one() -> None:
    memory = MemoryLedger()
    ledger = RoutedLedger(memory)
    assert ledger.private is memory and ledger.shared is memory
    budget = claim(LLMBudget(max_tokens=50))
    ledger.reserve([budget], input_tokens=10, max_output_tokens=10)
    assert memory.usage([budget])[0].reserved == 20


def test_mixed_call_holds_the_lower_cap_in_both() -> None:
    private, shared = MemoryLedger(), MemoryLedger()
    ledger = RoutedLedger(shared, private=private)
    mine = claim(LLMBudget(max_tokens=100))
    theirs = claim(LLMBudget(max_tokens=30, name="team"))
    held = ledger.reserve([theirs, mine], input_tokens=10, max_output_tokens=50)
    assert isinstance(held, RoutedReservation)
    # The private ledger granted 50, the shared one 20: the private hold was lowered to it.
    assert held.output_tokens == 20
    assert private.usage([mine])[0].reserved == 30
    assert shared.usage([theirs])[0].reserved == 30
    assert [row.claim for row in ledger.usage([theirs, mine])] == [theirs, mine]
    ledger.settle(held, tokens=25)
    ledger.settle(held, tokens=25)  # a repeat is a no-op in both
    assert [(r.used, r.reserved) for r in ledger.usage([theirs, mine])] == [(25, 0), (25, 0)]


def test_a_refusal_on_either_side_holds_nothing() -> None:
    private, shared = MemoryLedger(), MemoryLedger()
    ledger = RoutedLedger(shared, private=private)
    mine = claim(LLMBudget(max_tokens=100))
    rate = claim(RequestsPerMinute(limit=0, name="closed"))
    with pytest.raises(RateLimited):
        ledger.reserve([mine, rate], input_tokens=10, max_output_tokens=10)
    assert private.usage([mine])[0].reserved == 0  # the private hold was released
    tiny = claim(LLMBudget(max_tokens=5))
    team = claim(LLMBudget(max_tokens=1000, name="team"))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve([tiny, team], input_tokens=10, max_output_tokens=10)
    assert info.value.policy == "tokens-5-global"
    assert shared.usage([team])[0].reserved == 0  # never asked


def test_async_twins_route_alike() -> None:
    private, shared = MemoryLedger(), MemoryLedger()
    ledger = RoutedLedger(shared, private=private)
    mine = claim(LLMBudget(max_tokens=100))
    theirs = claim(LLMBudget(max_tokens=30, name="team"))

    async def run() -> list[tuple[float, float]]:
        held = await ledger.areserve([mine, theirs], input_tokens=10, max_output_tokens=50)
        assert held.output_tokens == 20
        alone = await ledger.areserve([mine], input_tokens=1, max_output_tokens=1)
        await ledger.asettle(alone, tokens=2)
        await ledger.asettle(held, tokens=12)
        await ledger.aclose()
        return [(r.used, r.reserved) for r in await ledger.ausage([mine, theirs])]

    assert asyncio.run(run()) == [(14, 0), (12, 0)]
    assert private.usage([theirs])[0].used == 0 and shared.usage([mine])[0].used == 0


class _Pipelined(MemoryLedger):
    """A shared ledger that can queue a settle (as the Redis one does)."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[Reservation] = []

    def pipeline_key(self) -> str:
        return "server-1"

    def queue_settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> object:
        self.queued.append(reservation)
        return "queued"


def test_queue_settle_settles_the_private_part_and_queues_the_shared_one() -> None:
    shared = _Pipelined()
    ledger = RoutedLedger(shared, private=MemoryLedger())
    assert ledger.pipeline_key() == "server-1"
    mine = claim(LLMBudget(max_tokens=100))
    theirs = claim(LLMBudget(max_tokens=100, name="team"))
    held = ledger.reserve([mine, theirs], input_tokens=1, max_output_tokens=9)
    assert isinstance(held, RoutedReservation)
    assert ledger.queue_settle(held, tokens=4) == "queued"
    assert shared.queued == [held.parts[1]]
    assert ledger.private.usage([mine])[0].used == 4
    alone = ledger.reserve([mine], input_tokens=1, max_output_tokens=9)
    assert ledger.queue_settle(alone, tokens=4) is None  # private only: settled the usual way
    assert RoutedLedger(MemoryLedger()).pipeline_key() is None


def test_bad_shared_argument() -> None:
    with pytest.raises(TypeError, match="shared must be a ledger"):
        RoutedLedger("sqlite:///x.db")  # type: ignore[arg-type]
