"""Redis Cluster: the contract passes, a session's keys share one slot, and the seed's global
list (in another slot) is updated in a second step."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from llmproxy.history.base import HistoryRecord
from llmproxy.types import Message
from llmproxy_redis_history import RedisHistoryStore
from llmproxy_redis_history.layout import session_tag
from llmproxy_testing.contracts import HistoryStoreContract
from llmproxy_testing.redis_fixtures import need_redis_server
from llmproxy_testing.redis_server import RedisClusterServers


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    need_redis_server()
    with RedisClusterServers(3) as servers:
        yield servers


@pytest.fixture
def cluster_url(cluster: RedisClusterServers) -> str:
    for node in cluster.nodes:
        node.command("FLUSHALL")
    return cluster.url + "?cluster=true"


@pytest.fixture
def raw_cluster(cluster_url: str) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_url.split("?")[0], decode_responses=True)
    yield client
    client.close()


class TestClusterHistoryStore(HistoryStoreContract):
    @pytest.fixture
    def store(self, cluster_url: str) -> Iterator[RedisHistoryStore]:
        store = RedisHistoryStore(cluster_url, environ={})
        yield store
        store.close()


def test_a_session_lives_in_one_slot_and_the_key_list_elsewhere(
    cluster_url: str, raw_cluster: RedisCluster
) -> None:
    store = RedisHistoryStore(cluster_url + "&max_messages=3", environ={})
    assert store.cache is None  # caching needs one server to track
    sessions = ["a", "b:{x}", "會話"]
    for n in range(2):
        for session_id in sessions:
            store.append(
                [
                    HistoryRecord(session_id, Message("user", f"{session_id} q{n}")),
                    HistoryRecord(session_id, Message("assistant", f"{session_id} a{n}")),
                ]
            )
    for session_id in sessions:
        tag = session_tag(session_id)
        own = [k for k in raw_cluster.scan_iter(match=f"llm_proxy:*{{{tag}}}*")]
        assert len(own) == 3 + 2  # three hashes (capped), the list, the meta
        assert len({key_slot(k.encode()) for k in own}) == 1
        assert [r.content for r in store.load(session_id)] == [
            f"{session_id} a0",
            f"{session_id} q1",
            f"{session_id} a1",
        ]
    slots = {key_slot(session_tag(s).encode()) for s in sessions}
    assert len(slots) > 1  # the sessions really are spread over the cluster
    # The seed's list, in its own slot, lists what is stored, oldest first (trimmed ones gone).
    listed = raw_cluster.lrange("llm_proxy:llm_proxy_history_key_list", 0, -1)
    assert [raw_cluster.hget(k, "content") for k in listed] == [
        "a a0",
        "b:{x} a0",
        "會話 a0",
        "a q1",
        "a a1",
        "b:{x} q1",
        "b:{x} a1",
        "會話 q1",
        "會話 a1",
    ]
    assert {i.session_id: i.message_count for i in store.sessions()} == dict.fromkeys(sessions, 3)
    assert store.delete("b:{x}") == 3
    assert raw_cluster.llen("llm_proxy:llm_proxy_history_key_list") == 6
    assert {i.session_id for i in store.sessions()} == {"a", "會話"}
    store.close()


async def test_async_on_a_cluster(cluster_url: str) -> None:
    store = RedisHistoryStore(cluster_url, environ={})
    await store.aappend([HistoryRecord("s", Message("user", "hi"))])
    assert [r.content for r in await store.aload("s")] == ["hi"]
    assert [i.session_id for i in await store.asessions()] == ["s"]
    assert await store.adelete("s") == 1
    await store.aclose()
