"""The ledger on a real three-node Redis Cluster: one hash tag per configuration keeps every
script's keys in one slot (one node), and different prefixes spread over the nodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.crc

from llmproxy.budget.base import Claim, Rates
from llmproxy.errors import BudgetExceeded
from llmproxy_redis_budget import RedisLedger
from llmproxy_testing.redis_fixtures import need_redis_server
from llmproxy_testing.redis_server import RedisClusterServers

CLAIMS = [
    Claim("tokens|global", "tokens", "global", 1000),
    Claim("rpm|user:a", "rpm", "user:a", 50, "requests", 60.0),
    Claim("usd|global", "usd", "global", 0.01, "usd", period="day", tz="Asia/Ho_Chi_Minh"),
]
RATES = Rates(0.000001, 0.000002)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    need_redis_server()
    with RedisClusterServers(3) as servers:
        yield servers


def test_cluster_ledgers(cluster: RedisClusterServers) -> None:
    nodes_used = set()
    for prefix in ("alpha", "beta", "gamma", "delta", "epsilon"):
        ledger = RedisLedger(f"{cluster.url}?cluster=true&prefix={prefix}", environ={})
        reservation = ledger.reserve(CLAIMS, input_tokens=100, max_output_tokens=500, rates=RATES)
        assert reservation.output_tokens == 500
        ledger.settle(reservation, tokens=450, cost=0.0008)
        used = [state.used for state in ledger.usage(CLAIMS)]
        assert used[:2] == [450, 1]
        assert round(used[2] * 1e9) == 800_000
        with pytest.raises(BudgetExceeded):
            ledger.reserve(CLAIMS, input_tokens=600, max_output_tokens=1, rates=RATES)
        ledger.close()
        slot = redis.crc.key_slot(ledger.key("u", "x").encode())
        holders = [n for n in cluster.nodes if n.command("CLUSTER", "COUNTKEYSINSLOT", slot)]
        assert len(holders) == 1  # every key of one prefix lives in one slot, on one node
        nodes_used.add(holders[0].port)
    assert len(nodes_used) >= 2  # several prefixes use several nodes


async def test_cluster_async(cluster: RedisClusterServers) -> None:
    ledger = RedisLedger(f"{cluster.url}?cluster=true&prefix=async", environ={})
    reservation = await ledger.areserve(CLAIMS, input_tokens=10, max_output_tokens=10, rates=RATES)
    await ledger.asettle(reservation, tokens=20, cost=0.00003)
    states = await ledger.ausage(CLAIMS)
    assert [s.used for s in states[:2]] == [20, 1]
    await ledger.aclose()
