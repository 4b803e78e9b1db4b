"""The seed's faces, OpenAILLMConfig and OpenAIService, used exactly as the seed documents them.

Every service talks to FakeOpenAI through the real SDK; stores are in memory so nothing touches
the user's data dir.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llmproxy import BudgetExceeded, LLMBudget, LLMMessageHandler
from llmproxy.errors import ConfigError, MissingCredentials, ProviderAuthError, ProviderRateLimited
from llmproxy.history.base import HistoryRecord
from llmproxy.types import ChatResponse
from llmproxy_openai import DEFAULT_MODEL, OpenAILLMConfig, OpenAIProvider, OpenAIService
from llmproxy_testing.fake_openai import FakeOpenAI, Fault, Reply


@pytest.fixture
def environ(server: FakeOpenAI) -> dict[str, str]:
    """Memory stores, the fake's URL, and no plugin but ours (no key: each test brings one)."""
    return {
        "LLMPROXY_HISTORY_URL": "memory://",
        "LLMPROXY_LEDGER_URL": "memory://",
        "OPENAI_BASE_URL": server.base_url,
    }


@pytest.fixture
async def make_service(environ: dict[str, str]) -> AsyncIterator[Callable[..., OpenAIService]]:
    """Build services with the test environment; close them (and their async clients) afterwards."""
    made: list[OpenAIService] = []

    def make(config: OpenAILLMConfig | None = None, **kwargs: Any) -> OpenAIService:
        kwargs.setdefault("environ", environ)
        service = OpenAIService(config=config, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        provider = service.proxy._providers["openai"]
        assert isinstance(provider, OpenAIProvider)
        if provider._aloop is asyncio.get_running_loop():
            await provider.aclose()
        service.close()


class Recorder(LLMMessageHandler):
    """A seed-style handler that keeps what it is given."""

    def __init__(self) -> None:
        self.pushed: list[HistoryRecord] = []

    def push_message(self, message: HistoryRecord) -> None:
        self.pushed.append(message)


def sent_messages(server: FakeOpenAI, index: int = -1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = server.requests[index].json()["messages"]
    return messages


# --------------------------------------------------------------------------- the seed's faces


async def test_chat_as_the_seed_documents_it(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    config = OpenAILLMConfig(api_key=api_key, enable=True, use_message=True)
    service = make_service(config)
    response = await service.chat("Hello, how can I help you?")
    assert isinstance(response, ChatResponse)
    assert str(response) == "Echo: Hello, how can I help you?"
    assert response.text == str(response)
    assert f"{response}" == "Echo: Hello, how can I help you?"
    assert response.provider == "openai"
    assert response.model == DEFAULT_MODEL
    assert response.usage.input_tokens > 0
    body = server.last_request.json()
    assert body["model"] == DEFAULT_MODEL
    assert server.last_request.headers["authorization"] == f"Bearer {api_key}"


async def test_chat_stream_as_the_seed_documents_it(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    config = OpenAILLMConfig(api_key=api_key, enable=True, use_message=True)
    service = make_service(config)
    server.enqueue(Reply(text="Once upon a time, a fox found a key."))
    chunks: list[str] = []
    async for chunk in service.chat_stream("Tell me a story."):
        assert isinstance(chunk, str)
        assert chunk
        chunks.append(chunk)
    assert "".join(chunks) == "Once upon a time, a fox found a key."
    assert len(chunks) == 9  # it arrived in pieces, not as one block
    assert server.last_request.json()["stream"] is True


async def test_use_message_sends_the_previous_exchange(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key, use_message=True))
    await service.chat("My name is Ada.")
    second = await service.chat("What is my name?")
    assert str(second) == "Echo: What is my name?"
    assert sent_messages(server, 0) == [{"role": "user", "content": "My name is Ada."}]
    assert sent_messages(server, 1) == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Echo: My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


async def test_use_message_history_includes_streamed_replies(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key, use_message=True))
    text = "".join([c async for c in service.chat_stream("Tell me a story.")])
    assert text == "Echo: Tell me a story."
    await service.chat("Another one.")
    assert sent_messages(server) == [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Echo: Tell me a story."},
        {"role": "user", "content": "Another one."},
    ]


async def test_without_use_message_each_call_stands_alone(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key, use_message=False))
    await service.chat("My name is Ada.")
    await service.chat("What is my name?")
    assert sent_messages(server) == [{"role": "user", "content": "What is my name?"}]


async def test_services_with_different_sessions_do_not_share_history(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key, session_id="a"))
    await service.chat("first in a")
    await service.chat("second", session_id="b")
    assert sent_messages(server) == [{"role": "user", "content": "second"}]


async def test_disabled_service_raises_config_error_before_any_request(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key, enable=False))
    with pytest.raises(ConfigError, match="enable"):
        await service.chat("Hello, how can I help you?")
    with pytest.raises(ConfigError):
        async for _ in service.chat_stream("Tell me a story."):
            pass
    with pytest.raises(ConfigError):
        service.chat_sync("Hello")
    with pytest.raises(ConfigError):
        list(service.chat_stream_sync("Hello"))
    assert server.requests == []


async def test_message_handler_receives_user_and_assistant_messages(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    handler = Recorder()
    service = make_service(
        OpenAILLMConfig(api_key=api_key, use_message=True), message_handler=handler
    )
    response = await service.chat("Hello, how can I help you?")
    assert [(m.role, m.content) for m in handler.pushed] == [
        ("user", "Hello, how can I help you?"),
        ("assistant", str(response)),
    ]
    for record in handler.pushed:
        assert record.session_id == "default"
        assert record.model == DEFAULT_MODEL
    assert handler.pushed[0].input_tokens == response.usage.input_tokens
    assert handler.pushed[1].output_tokens == response.usage.output_tokens


async def test_message_handler_receives_streamed_exchanges(
    make_service: Callable[..., OpenAIService], api_key: str
) -> None:
    handler = Recorder()
    config = OpenAILLMConfig(api_key=api_key, use_message=True, session_id="story-42")
    service = make_service(config, message_handler=handler)
    text = "".join([c async for c in service.chat_stream("Tell me a story.")])
    assert [(m.role, m.content, m.session_id) for m in handler.pushed] == [
        ("user", "Tell me a story.", "story-42"),
        ("assistant", text, "story-42"),
    ]
    assert not handler.pushed[1].message.interrupted


async def test_message_handler_with_get_messages_supplies_context(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    class Keeper(Recorder):
        def get_messages(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
            return [r for r in self.pushed if r.session_id == session_id]

    handler = Keeper()
    service = make_service(OpenAILLMConfig(api_key=api_key), message_handler=handler)
    await service.chat("one")
    await service.chat("two")
    assert [m["content"] for m in sent_messages(server)] == ["one", "Echo: one", "two"]


def test_message_handler_must_subclass_the_seed_class(
    api_key: str, environ: dict[str, str]
) -> None:
    class NotAHandler:
        def push_message(self, message: HistoryRecord) -> None:
            pass

    with pytest.raises(ConfigError, match="LLMMessageHandler"):
        OpenAIService(
            OpenAILLMConfig(api_key=api_key),
            message_handler=NotAHandler(),  # type: ignore[arg-type]
            environ=environ,
        )


async def test_tiny_budget_raises_before_any_upstream_request(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key, budget=LLMBudget(max_tokens=5)))
    with pytest.raises(BudgetExceeded) as info:
        await service.chat("Hello, how can I help you?")
    assert info.value.limit == 5
    assert info.value.requested > 5
    with pytest.raises(BudgetExceeded):
        async for _ in service.chat_stream("Tell me a story."):
            pass
    assert server.requests == []


async def test_budget_caps_output_and_runs_out(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(
        OpenAILLMConfig(api_key=api_key, use_message=False, budget=LLMBudget(max_tokens=60))
    )
    first = await service.chat("Hello there")
    sent_cap = server.last_request.json()["max_completion_tokens"]
    # The cap sent upstream is what the budget had left after the input estimate.
    assert 0 < sent_cap < 60
    used = first.usage.total_tokens
    assert used > 0
    # Spend the rest; the ledger knows what was used, so the budget eventually refuses.
    refused: BudgetExceeded | None = None
    for _ in range(20):
        server.enqueue(Reply(text="word " * 10))
        try:
            await service.chat("Hello there")
        except BudgetExceeded as exc:
            refused = exc
            break
    assert refused is not None, "the budget never ran out"
    assert used <= refused.used <= 60
    requests_before = len(server.requests)
    with pytest.raises(BudgetExceeded):
        await service.chat("Hello there")
    assert len(server.requests) == requests_before


async def test_seed_variable_alone_is_enough(
    make_service: Callable[..., OpenAIService],
    server: FakeOpenAI,
    api_key: str,
    environ: dict[str, str],
) -> None:
    service = make_service(
        OpenAILLMConfig(enable=True, use_message=True),
        environ={**environ, "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY": api_key},
    )
    response = await service.chat("Hello, how can I help you?")
    assert str(response) == "Echo: Hello, how can I help you?"
    assert server.last_request.headers["authorization"] == f"Bearer {api_key}"


async def test_openai_api_key_wins_over_the_seed_variable(
    make_service: Callable[..., OpenAIService],
    server: FakeOpenAI,
    api_key: str,
    environ: dict[str, str],
) -> None:
    service = make_service(
        OpenAILLMConfig(),
        environ={
            **environ,
            "OPENAI_API_KEY": api_key,
            "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY": "sk-seed-wrong-00000",
        },
    )
    await service.chat("hi")
    assert server.last_request.headers["authorization"] == f"Bearer {api_key}"


async def test_config_key_wins_over_the_environment(
    make_service: Callable[..., OpenAIService],
    server: FakeOpenAI,
    api_key: str,
    environ: dict[str, str],
) -> None:
    service = make_service(
        OpenAILLMConfig(api_key=api_key), environ={**environ, "OPENAI_API_KEY": "sk-env-wrong-0000"}
    )
    await service.chat("hi")
    assert server.last_request.headers["authorization"] == f"Bearer {api_key}"


async def test_config_base_url_wins_over_the_environment(
    make_service: Callable[..., OpenAIService],
    server: FakeOpenAI,
    api_key: str,
    environ: dict[str, str],
) -> None:
    config = OpenAILLMConfig(api_key=api_key, base_url=server.base_url)
    service = make_service(config, environ={**environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert str(await service.chat("hi")) == "Echo: hi"


def test_no_key_anywhere_names_both_variables(environ: dict[str, str]) -> None:
    with pytest.raises(MissingCredentials) as info:
        OpenAIService(OpenAILLMConfig(), environ=environ)
    assert "OPENAI_API_KEY" in str(info.value)
    assert "LLM_PROXY_OPEN_AI_DEFAULT_OPEN_API_KEY" in str(info.value)


async def test_wrong_key_error_does_not_leak_it(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI
) -> None:
    wrong = "sk-wrong-1234567890abcdefWXYZ"
    service = make_service(OpenAILLMConfig(api_key=wrong))
    with pytest.raises(ProviderAuthError) as info:
        await service.chat("hi")
    assert wrong[:8] not in str(info.value)
    assert "****" not in str(info.value)
    assert len(server.requests) == 1  # an auth error is not retried


async def test_config_settings_reach_the_request(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    config = OpenAILLMConfig(
        api_key=api_key,
        model="gpt-4o-mini",
        system="Be brief.",
        max_output_tokens=3,
        temperature=0.1,
    )
    service = make_service(config)
    server.enqueue(Reply(text="one two three four five"))
    response = await service.chat("Count.")
    body = server.last_request.json()
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["max_completion_tokens"] == 3
    assert body["temperature"] == 0.1
    assert str(response) == "one two three"
    assert response.finish_reason == "length"


async def test_call_keyword_arguments_pass_through(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key))
    await service.chat("hi", top_p=0.3, extra_body={"custom_flag": True})
    body = server.last_request.json()
    assert body["top_p"] == 0.3
    assert body["custom_flag"] is True


async def test_rate_limit_is_retried_by_the_proxy(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(
        OpenAILLMConfig(api_key=api_key), proxy_config={"retry": {"initial_backoff": 0.01}}
    )
    server.enqueue(Fault.status(429, retry_after=0.01))
    response = await service.chat("hi")
    assert str(response) == "Echo: hi"
    assert len(server.requests) == 2


async def test_persistent_rate_limit_surfaces_as_provider_error(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(
        OpenAILLMConfig(api_key=api_key),
        proxy_config={"retry": {"max_attempts": 2, "initial_backoff": 0.01}},
    )
    server.enqueue(Fault.status(429, retry_after=0.01), Fault.status(429, retry_after=0.01))
    with pytest.raises(ProviderRateLimited) as info:
        await service.chat("hi")
    assert info.value.provider == "openai"
    assert len(server.requests) == 2


def test_sync_faces(api_key: str, environ: dict[str, str], server: FakeOpenAI) -> None:
    service = OpenAIService(OpenAILLMConfig(api_key=api_key), environ=environ)
    try:
        assert str(service.chat_sync("Hello")) == "Echo: Hello"
        chunks = list(service.chat_stream_sync("Tell me a story."))
        assert "".join(chunks) == "Echo: Tell me a story."
        assert len(chunks) > 1
        # History is shared between the sync and async faces of one service.
        assert [m["content"] for m in sent_messages(server)] == [
            "Hello",
            "Echo: Hello",
            "Tell me a story.",
        ]
    finally:
        service.close()


def test_config_defaults_and_repr(api_key: str) -> None:
    config = OpenAILLMConfig(api_key=api_key)
    assert config.enable is True
    assert config.use_message is True
    assert config.model == DEFAULT_MODEL
    assert config.session_id == "default"
    assert config.budget is None
    assert api_key not in repr(config)
    assert api_key[:8] not in repr(config)
    # Positional construction keeps the seed's order: api_key, enable, use_message.
    positional = OpenAILLMConfig(api_key, False, False)
    assert (positional.api_key, positional.enable, positional.use_message) == (
        api_key,
        False,
        False,
    )


def test_service_uses_memory_stores(
    make_service: Callable[..., OpenAIService], api_key: str
) -> None:
    from llmproxy.budget.memory import MemoryLedger
    from llmproxy.budget.routed import shared_ledger
    from llmproxy.history.memory import MemoryHistoryStore

    service = make_service(OpenAILLMConfig(api_key=api_key, budget=LLMBudget(max_tokens=100)))
    assert isinstance(service.proxy.history, MemoryHistoryStore)
    assert isinstance(shared_ledger(service.proxy.ledger), MemoryLedger)


def test_abandoned_stream_keeps_what_arrived(
    make_service: Callable[..., OpenAIService], server: FakeOpenAI, api_key: str
) -> None:
    service = make_service(OpenAILLMConfig(api_key=api_key, use_message=True))
    server.enqueue(Reply(text="alpha beta gamma delta", chunk_delay=0.01))
    it: Iterator[str] = service.chat_stream_sync("Hello")
    assert next(it) == "alpha"
    it.close()  # type: ignore[attr-defined]
    service.chat_sync("next")
    # What arrived before the stream was abandoned is kept as the assistant's (interrupted) turn.
    assert sent_messages(server) == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "alpha"},
        {"role": "user", "content": "next"},
    ]
