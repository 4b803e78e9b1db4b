"""RedisLedger against the LedgerContract: through its sync methods and through its async ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings

from llmproxy_redis_budget import RedisLedger
from llmproxy_testing.contracts import FakeClock, LedgerContract

from .conftest import AsyncDriven


class TestRedisLedger(LedgerContract):
    state_machine_settings = settings(
        max_examples=60,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @pytest.fixture
    async def ledger(self, clock: FakeClock, redis_url: str) -> AsyncIterator[RedisLedger]:
        ledger = RedisLedger(redis_url, clock=clock, environ={})
        yield ledger
        await ledger.aclose()


class TestRedisLedgerAsync(LedgerContract):
    @pytest.fixture
    def ledger(self, clock: FakeClock, redis_url: str) -> Iterator[AsyncDriven]:
        driven = AsyncDriven(RedisLedger(redis_url, clock=clock, environ={}))
        yield driven
        driven.close()
