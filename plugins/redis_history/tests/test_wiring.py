"""Configuration from URLs and the seed's variables, the entry point, Proxy.from_env, the CLI,
and the seed's LLMMessageHandlerImpl with OpenAIService."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from llmproxy import ConfigError, HistoryRecord, Message, Proxy, StoreError
from llmproxy.history.memory import MemoryHistoryStore
from llmproxy.plugins import Plugins
from llmproxy_openai import OpenAILLMConfig, OpenAIService
from llmproxy_redis_history import LLMMessageHandlerImpl, RedisHistoryStore, settings_from_url
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.redis_server import RedisServer

API_KEY = "sk-test-redis-0123456789abcdef"
LLMPROXY = str(Path(sys.executable).with_name("llmproxy"))
SEED = {
    "LLM_PROXY_OPEN_AI_IOREDIS_HOST": "10.1.2.3",
    "LLM_PROXY_OPEN_AI_IOREDIS_PORT": "6380",
    "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX": "4",
    "LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX": "seed",
}


# --- settings -------------------------------------------------------------------------------


def test_bare_url_reads_the_seed_variables() -> None:
    s = settings_from_url("redis://", SEED)
    assert (s.url, s.prefix) == ("redis://10.1.2.3:6380/4", "seed")
    assert settings_from_url(None, {}).url == "redis://localhost:6379/0"
    assert settings_from_url("redis://", {}).prefix == "llm_proxy"
    partial = settings_from_url(None, {"LLM_PROXY_OPEN_AI_IOREDIS_PORT": "7000"})
    assert partial.url == "redis://localhost:7000/0"


def test_llmproxy_redis_url_wins_over_the_seed_variables() -> None:
    env = {**SEED, "LLMPROXY_REDIS_URL": "rediss://:p%40ss@cache.example:6390/2?ttl=60"}
    s = settings_from_url("redis://?max_messages=10", env)
    assert s.url == "rediss://:p%40ss@cache.example:6390/2"
    assert (s.ttl, s.max_messages, s.prefix) == (60.0, 10, "seed")
    assert s.safe_url == "rediss://:***@cache.example:6390/2"
    # A history URL naming a server wins over both; its options over the environment's.
    own = settings_from_url("redis://other:1/0?prefix=app&ttl=5", env)
    assert (own.url, own.prefix, own.ttl) == ("redis://other:1/0", "app", 5.0)


def test_options_and_passthrough() -> None:
    s = settings_from_url(
        "rediss://h:1/0?socket_timeout=0.5&connect_timeout=1&cache=false&key_list=no"
        "&on_unavailable=SKIP&cache_sessions=10&cache_messages=20&cluster=true"
        "&ssl_cert_reqs=none",
        {},
    )
    assert (s.socket_timeout, s.connect_timeout, s.cache, s.key_list) == (0.5, 1.0, False, False)
    assert (s.on_unavailable, s.cache_sessions, s.cache_messages, s.cluster) == (
        "skip",
        10,
        20,
        True,
    )
    assert s.url == "rediss://h:1/0?ssl_cert_reqs=none"
    for bad in ("http://h/0", "redis://h/0?socket_timeout=0", "redis://h/0?cache_messages=x"):
        with pytest.raises(ConfigError):
            settings_from_url(bad, {})
    with pytest.raises(ConfigError, match="LLM_PROXY_OPEN_AI_IOREDIS_PORT"):
        settings_from_url(None, {"LLM_PROXY_OPEN_AI_IOREDIS_PORT": "six"})


def test_rediss_uses_tls_and_passwords_never_show() -> None:
    store = RedisHistoryStore("rediss://:hunter2@localhost:6390/0", environ={})
    assert isinstance(store._sync().connection_pool.connection_kwargs, dict)
    assert store._sync().connection_pool.connection_class.__name__ == "SSLConnection"
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreError) as caught:  # nothing listens on 6390
        store.load("s")
    assert "hunter2" not in str(caught.value)
    store.close()


# --- plugin and Proxy -----------------------------------------------------------------------


def test_the_entry_point_registers_redis_and_rediss() -> None:
    plugins = Plugins(environ={})
    assert {"redis", "rediss"} <= set(plugins.registry.history_stores)
    info = next(i for i in plugins.infos() if i.name == "redis_history")
    assert info.distribution == "llmproxy-redis-history"
    assert "history store redis://" in info.registers


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY) as server:
        yield server


def test_proxy_from_env_keeps_history_in_redis(
    redis_url: str, upstream: FakeOpenAI, raw: redis.Redis
) -> None:
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLMPROXY_HISTORY_URL": "redis://",
        "LLMPROXY_REDIS_URL": redis_url + "?prefix=app",
        "LLMPROXY_LEDGER_URL": "memory://",
    }
    with Proxy.from_env(env) as proxy:
        assert isinstance(proxy.history, RedisHistoryStore)
        proxy.chat("my name is Ada", session_id="s1")
        proxy.chat("what is my name?", session_id="s1")
    sent = [r.json()["messages"] for r in upstream.requests]
    assert [m["content"] for m in sent[1]] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "what is my name?",
    ]
    assert raw.llen("app:llm_proxy_history_key_list") == 4


async def test_async_proxy_with_redis_history(redis_url: str, upstream: FakeOpenAI) -> None:
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLMPROXY_HISTORY_URL": redis_url,
        "LLMPROXY_LEDGER_URL": "memory://",
    }
    proxy = Proxy.from_env(env)
    await proxy.achat("one", session_id="a")
    async for _ in proxy.astream("two", session_id="a"):
        pass
    assert [r.content for r in await proxy.history.aload("a")] == [
        "one",
        "Echo: one",
        "two",
        "Echo: two",
    ]
    await proxy.history.aclose()  # type: ignore[attr-defined]
    await proxy.aclose()


# --- the seed's handler ---------------------------------------------------------------------


def test_handler_reads_the_seed_variables(
    redis_server: RedisServer, redis_url: str, raw: redis.Redis
) -> None:
    env = {
        "LLM_PROXY_OPEN_AI_IOREDIS_HOST": "127.0.0.1",
        "LLM_PROXY_OPEN_AI_IOREDIS_PORT": str(redis_server.port),
        "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX": "3",
    }
    handler = LLMMessageHandlerImpl(environ=env)
    handler.push_message(Message("user", "hi"))
    handler.push_message(Message("assistant", "hello"), session_id="chat-1", model="m")
    handler.push_message(HistoryRecord("chat-1", Message("user", "again")))
    handler.push_message({"role": "assistant", "content": "ok", "session_id": "chat-1"})
    assert [r.content for r in handler.get_messages("default")] == ["hi"]
    assert [r.content for r in handler.get_messages("chat-1")] == ["hello", "again", "ok"]
    assert handler.get_messages("chat-1")[0].model == "m"
    assert (
        redis.Redis(port=redis_server.port, db=3).llen("llm_proxy:llm_proxy_history_key_list") == 4
    )
    assert raw.dbsize() == 0  # db 0 untouched
    with pytest.raises(Exception, match="role"):
        handler.push_message({"content": "no role"})
    handler.close()


async def test_openai_service_uses_the_handler_for_context(
    redis_server: RedisServer, redis_url: str, upstream: FakeOpenAI
) -> None:
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLM_PROXY_OPEN_AI_IOREDIS_HOST": "127.0.0.1",
        "LLM_PROXY_OPEN_AI_IOREDIS_PORT": str(redis_server.port),
        "LLMPROXY_LEDGER_URL": "memory://",
    }
    handler = LLMMessageHandlerImpl(environ=env)
    service = OpenAIService(
        OpenAILLMConfig(api_key=API_KEY, use_message=True), message_handler=handler, environ=env
    )
    await service.chat("one")
    await service.chat("two")
    sent = upstream.requests[-1].json()["messages"]
    assert [m["content"] for m in sent] == ["one", "Echo: one", "two"]
    assert [r.role for r in handler.get_messages("default")] == ["user", "assistant"] * 2
    await service.aclose()
    await handler.store.aclose()


def seed_env(redis_server: RedisServer, upstream: FakeOpenAI, data_dir: Path) -> dict[str, str]:
    """The seed's variables alone (no LLMPROXY_HISTORY_URL), the fake upstream, a data dir."""
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "LLM_PROXY_OPEN_AI_IOREDIS_HOST": "127.0.0.1",
        "LLM_PROXY_OPEN_AI_IOREDIS_PORT": str(redis_server.port),
        "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX": "2",
        "LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX": "seedapp",
        "LLMPROXY_LEDGER_URL": "memory://",
        "LLMPROXY_DATA_DIR": str(data_dir),
    }


async def test_seed_variables_alone_put_a_services_history_in_redis(
    redis_server: RedisServer, redis_url: str, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    env = seed_env(redis_server, upstream, tmp_path)
    service = OpenAIService(OpenAILLMConfig(use_message=True), environ=env)
    await service.chat("my name is Ada")
    chunks = [chunk async for chunk in service.chat_stream("what is my name?")]
    assert "".join(chunks) == "Echo: what is my name?"
    await service.aclose()
    # The second call carried the first exchange as context, read back from Redis.
    sent = upstream.requests[-1].json()["messages"]
    assert [m["content"] for m in sent] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "what is my name?",
    ]
    # The seed's read-back code, verbatim apart from the db and prefix its variables name.
    seed_client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=2)
    message_keys = seed_client.lrange("seedapp:llm_proxy_history_key_list", 0, -1)
    messages = [seed_client.hgetall(key) for key in message_keys]
    seed_client.close()
    assert [(m[b"role"], m[b"content"], m[b"session_id"]) for m in messages] == [
        (b"user", b"my name is Ada", b"default"),
        (b"assistant", b"Echo: my name is Ada", b"default"),
        (b"user", b"what is my name?", b"default"),
        (b"assistant", b"Echo: what is my name?", b"default"),
    ]
    assert not (tmp_path / "history.db").exists()  # nothing went to SQLite


def test_the_history_url_and_a_handler_still_win_over_the_seed_variables(
    redis_server: RedisServer, redis_url: str, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    env = seed_env(redis_server, upstream, tmp_path)
    chosen = OpenAIService(environ={**env, "LLMPROXY_HISTORY_URL": "memory://"})
    chosen.chat_sync("one")
    assert isinstance(chosen.proxy.history, MemoryHistoryStore)
    chosen.close()
    handler = LLMMessageHandlerImpl(environ={"LLMPROXY_REDIS_URL": redis_url + "?prefix=mine"})
    handled = OpenAIService(message_handler=handler, environ=env)
    handled.chat_sync("two")
    assert [r.content for r in handler.get_messages("default")] == ["two", "Echo: two"]
    handled.close()
    handler.close()
    seed_db = redis.Redis(host="127.0.0.1", port=redis_server.port, db=2)
    assert seed_db.dbsize() == 0  # neither wrote to the seed's database
    seed_db.close()


def test_a_plain_proxy_keeps_its_default_store_with_the_seed_variables(
    redis_server: RedisServer, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    env = seed_env(redis_server, upstream, tmp_path)
    with Proxy.from_env(env) as proxy:
        proxy.chat("hi", session_id="s")
        assert not isinstance(proxy.history, RedisHistoryStore)
    assert (tmp_path / "history.db").exists()


def test_seed_variables_without_the_redis_plugin_say_what_to_install(
    redis_server: RedisServer, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    env = {**seed_env(redis_server, upstream, tmp_path), "LLMPROXY_PLUGINS": "openai"}
    with pytest.raises(ConfigError, match="pip install llmproxy-redis-history") as caught:
        OpenAIService(OpenAILLMConfig(use_message=True), environ=env)
    assert caught.value.path == "LLMPROXY_HISTORY_URL"
    assert "LLM_PROXY_OPEN_AI_IOREDIS_HOST" in str(caught.value)
    # History off: nothing would be stored, so the service is built (with the default store).
    OpenAIService(OpenAILLMConfig(use_message=False), environ=env).close()
    # Or the history URL chooses another store.
    OpenAIService(environ={**env, "LLMPROXY_HISTORY_URL": "memory://"}).close()


# --- the CLI --------------------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LLM_PROXY", "LLMPROXY"))
    }
    return subprocess.run(
        [LLMPROXY, *args], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def test_cli_history_on_redis(
    make_store: Callable[..., RedisHistoryStore], redis_url: str, tmp_path: Path
) -> None:
    store = make_store()
    store.append(
        [
            HistoryRecord(
                "chat:{1}", Message("user", "Xin chào"), "gpt-x", "openai", 1_700_000_000.0
            ),
            HistoryRecord(
                "chat:{1}", Message("assistant", "Hello!"), "gpt-x", "openai", 1_700_000_001.0
            ),
        ]
    )
    store.append([HistoryRecord("other", Message("user", "x"), created_at=1_700_000_100.0)])
    env = {"LLMPROXY_HISTORY_URL": redis_url, "LLMPROXY_DATA_DIR": str(tmp_path)}
    listed = run_cli(["history", "list"], env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("other\t1 messages")
    assert "chat:{1}\t2 messages" in listed.stdout
    shown = run_cli(["history", "show", "chat:{1}"], env)
    assert shown.returncode == 0, shown.stderr
    assert "user openai/gpt-x:\nXin chào" in shown.stdout and "Hello!" in shown.stdout
    last = run_cli(["history", "show", "chat:{1}", "-n", "1"], env)
    assert "Xin chào" not in last.stdout and "Hello!" in last.stdout
    deleted = run_cli(["history", "delete", "chat:{1}"], env)
    assert "deleted 2 messages" in deleted.stdout
    missing = run_cli(["history", "show", "chat:{1}"], env)
    assert missing.returncode == 2 and "no session named" in missing.stderr
    assert not (tmp_path / "history.db").exists()  # SQLite was not used


def test_cli_reports_an_unreachable_redis_in_one_line(tmp_path: Path) -> None:
    from llmproxy_testing.redis_server import free_port

    env = {"LLMPROXY_HISTORY_URL": f"redis://127.0.0.1:{free_port()}/0?connect_timeout=0.5"}
    result = run_cli(["history", "list"], env)
    assert result.returncode == 1
    assert (
        result.stderr.startswith("llmproxy: redis history store")
        and "Traceback" not in result.stderr
    )
