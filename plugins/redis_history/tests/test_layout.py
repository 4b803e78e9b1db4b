"""The seed's layout: its read-back example works, keys cannot collide, caps and TTLs trim."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping

import pytest
import redis
from redis.crc import key_slot

from llmproxy.history.base import HistoryRecord
from llmproxy.types import Message, ToolCall
from llmproxy_redis_history import RedisHistoryStore
from llmproxy_redis_history.layout import session_of_tag, session_tag
from llmproxy_testing.redis_server import RedisServer

Make = Callable[..., RedisHistoryStore]


def exchange(session: str, n: int, **kw: object) -> list[HistoryRecord]:
    return [
        HistoryRecord(session, Message("user", f"q{n}"), created_at=1000.0 + n, **kw),  # type: ignore[arg-type]
        HistoryRecord(session, Message("assistant", f"a{n}"), created_at=1000.5 + n, **kw),  # type: ignore[arg-type]
    ]


def _text(value: bytes | str) -> str:
    assert isinstance(value, bytes)  # the raw client does not decode, like the seed's
    return value.decode()


def _strs(data: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in data.items()}


SEED_EXAMPLE = """
from redis import Redis

redis_client = Redis(host="localhost", port=6379, db=0)
key_prefix = "llm_proxy"
chat_session_key = f"{key_prefix}:llm_proxy_history_key_list"

message_keys = redis_client.lrange(chat_session_key, 0, -1)
for message_key in message_keys:
    message_data = redis_client.hgetall(message_key)
    print(f"Message: {message_data}")
"""


def test_the_seeds_example_reads_back_what_the_seeds_handler_pushed(
    redis_server: RedisServer, redis_url: str
) -> None:
    """The seed's documented code, with the seed's variables, run as written (only the port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMPROXY", "LLM_PROXY"))} | {
        "LLM_PROXY_OPEN_AI_IOREDIS_HOST": "localhost",
        "LLM_PROXY_OPEN_AI_IOREDIS_PORT": str(redis_server.port),
        "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX": "0",
        "LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX": "llm_proxy",
    }
    push = textwrap.dedent(
        """
        from llmproxy import Message
        from llmproxy_redis_history import LLMMessageHandlerImpl

        handler = LLMMessageHandlerImpl()
        for message in (Message("user", "Hello, how can I help you?"), Message("assistant", "Hi!")):
            handler.push_message(message)  # store a message in Redis
        handler.close()
        """
    )
    pushed = subprocess.run(
        [sys.executable, "-c", push], env=env, capture_output=True, text=True, timeout=60
    )
    assert pushed.returncode == 0, pushed.stderr
    example = SEED_EXAMPLE.replace("port=6379", f"port={redis_server.port}")
    shown = subprocess.run(
        [sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Message: {") and "b'role': b'user'" in lines[0]
    assert "b'content': b'Hello, how can I help you?'" in lines[0]
    assert "b'session_id': b'default'" in lines[0]
    assert "b'role': b'assistant'" in lines[1] and "b'content': b'Hi!'" in lines[1]


def test_every_message_is_a_full_hash_listed_oldest_first(
    make_store: Make, raw: redis.Redis
) -> None:
    store = make_store()
    call = Message("assistant", "", tool_calls=(ToolCall("c1", "weather", '{"city":"Hà Nội"}'),))
    store.append(
        [
            HistoryRecord("s1", Message("user", "hi"), "gpt-x", "openai", 1000.25, 12, 0, "ada"),
            HistoryRecord("s1", call, "gpt-x", "openai", 1001.0, 0, 7, "ada"),
        ]
    )
    store.append(exchange("s2", 1))
    keys = [_text(k) for k in raw.lrange("llm_proxy:llm_proxy_history_key_list", 0, -1)]
    assert len(keys) == 4
    first = _strs(raw.hgetall(keys[0]))
    assert first == {
        "role": "user",
        "content": "hi",
        "session_id": "s1",
        "model": "gpt-x",
        "provider": "openai",
        "created_at": "1000.25",
        "input_tokens": "12",
        "output_tokens": "0",
        "interrupted": "0",
        "user": "ada",
    }
    second = _strs(raw.hgetall(keys[1]))
    assert (
        second["tool_calls"]
        == '[{"id":"c1","name":"weather","arguments":"{\\"city\\":\\"Hà Nội\\"}"}]'
    )
    assert (second["output_tokens"], second["content"]) == ("7", "")
    assert [_strs(raw.hgetall(k))["content"] for k in keys] == ["hi", "", "q1", "a1"]
    # The per-session list holds the same keys, so a session loads without a scan.
    tag = session_tag("s1")
    assert [_text(k) for k in raw.lrange(f"llm_proxy:session:{{{tag}}}:messages", 0, -1)] == keys[
        :2
    ]


@pytest.mark.parametrize(
    "session_id",
    ["a:b", "a}:msg:{x", "{", "}", "user:{alice}:chat", "會話 😀", "", "a" * 500, "x\x00y"],
)
def test_session_ids_cannot_break_out_of_their_keys(
    make_store: Make, raw: redis.Redis, session_id: str
) -> None:
    store = make_store()
    store.append(exchange("victim", 0))
    before = {k: raw.dump(k) for k in raw.keys("*")}
    store.append(exchange(session_id, 1))
    assert [r.content for r in store.load(session_id)] == ["q1", "a1"]
    assert [r.content for r in store.load("victim")] == ["q0", "a0"]
    for key, value in before.items():  # nothing of the other session was touched...
        if not _text(key).endswith(("history_key_list", ":sessions")):
            assert raw.dump(key) == value, key
    tag = session_tag(session_id)
    assert session_of_tag(tag) == session_id
    assert set(tag) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    own = [_text(k) for k in raw.keys(f"llm_proxy:*{{{tag}}}*")]
    assert len(own) == 4  # two hashes, the list, the meta
    # ...and every key of the session shares one hash tag, so one cluster slot.
    assert len({key_slot(k.encode()) for k in own}) == 1
    assert store.delete(session_id) == 2
    assert raw.keys(f"llm_proxy:*{{{tag}}}*") == []
    assert [r.content for r in store.load("victim")] == ["q0", "a0"]


def test_prefix_from_the_seed_variable_and_from_the_url(redis_url: str, raw: redis.Redis) -> None:
    env = {"LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX": "seedapp"}
    by_env = RedisHistoryStore(redis_url, environ=env)
    by_url = RedisHistoryStore(redis_url + "?prefix=urlapp", environ=env)
    by_env.append(exchange("s", 1))
    by_url.append(exchange("s", 2))
    assert raw.llen("seedapp:llm_proxy_history_key_list") == 2
    assert raw.llen("urlapp:llm_proxy_history_key_list") == 2
    assert [r.content for r in by_env.load("s")] == ["q1", "a1"]
    by_env.close()
    by_url.close()


def test_cap_drops_the_oldest_everywhere(make_store: Make, raw: redis.Redis) -> None:
    store = make_store(max_messages=3)
    other = make_store(cache=False)
    other.append(exchange("other", 0))
    for n in range(1, 4):
        store.append(exchange("s", n))
    assert [r.content for r in store.load("s")] == ["a2", "q3", "a3"]
    assert [r.content for r in other.load("s")] == ["a2", "q3", "a3"]
    listed = [_text(k) for k in raw.lrange("llm_proxy:llm_proxy_history_key_list", 0, -1)]
    contents = [_strs(raw.hgetall(k))["content"] for k in listed]
    assert contents == ["q0", "a0", "a2", "q3", "a3"]  # the other session's keys stay
    tag = session_tag("s")
    assert len(raw.keys(f"llm_proxy:msg:{{{tag}}}:*")) == 3  # trimmed hashes are deleted
    (info,) = [i for i in store.sessions() if i.session_id == "s"]
    assert (info.message_count, info.created_at, info.updated_at) == (3, 1002.5, 1003.5)
    assert store.delete("s") == 3
    assert raw.llen("llm_proxy:llm_proxy_history_key_list") == 2


async def test_cap_async(make_store: Make) -> None:
    store = make_store(max_messages=2)
    for n in range(3):
        await store.aappend(exchange("s", n))
    assert [r.content for r in await store.aload("s")] == ["q2", "a2"]


def test_ttl_expires_messages_and_sessions(make_store: Make, raw: redis.Redis) -> None:
    store = make_store(ttl=0.4)
    forever = make_store(prefix="llm_proxy")  # same keys, no TTL: written before TTL was set
    forever.append(exchange("kept", 0))
    store.append(exchange("s", 1))
    assert [r.content for r in store.load("s")] == ["q1", "a1"]
    tag = session_tag("s")
    assert 0 < raw.pttl(f"llm_proxy:session:{{{tag}}}:messages") <= 400
    time.sleep(0.25)
    store.append(exchange("s", 2))
    time.sleep(0.25)  # exchange 1 expired, exchange 2 has not
    assert [r.content for r in store.load("s")] == ["q2", "a2"]
    assert [r.content for r in make_store(cache=False).load("s")] == ["q2", "a2"]
    time.sleep(0.25)
    assert store.load("s") == []
    assert [i.session_id for i in store.sessions()] == ["kept"]
    store.append(exchange("t", 3))  # an append drops expired keys from the seed's list
    listed = [_text(k) for k in raw.lrange("llm_proxy:llm_proxy_history_key_list", 0, -1)]
    assert [_strs(raw.hgetall(k))["content"] for k in listed] == ["q0", "a0", "q3", "a3"]


def test_store_options_are_validated() -> None:
    from llmproxy import ConfigError

    with pytest.raises(ConfigError, match="max_messages"):
        RedisHistoryStore("redis://localhost/0?max_messages=0", environ={})
    with pytest.raises(ConfigError, match="on_unavailable"):
        RedisHistoryStore("redis://localhost/0", environ={}, on_unavailable="ignore")
    with pytest.raises(ConfigError, match="ttl"):
        RedisHistoryStore("redis://localhost/0?ttl=-1", environ={})
    with pytest.raises(ConfigError, match="cache"):
        RedisHistoryStore("redis://localhost/0?cache=maybe", environ={})
