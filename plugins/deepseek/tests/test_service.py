"""The seed's DeepSeek faces, DeepSeekLLMConfig and DeepSeekService, used like OpenAIService.

Every service talks to FakeDeepSeek through the real SDK; stores are in memory so nothing
touches the user's data dir.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmproxy import LLMBudget
from llmproxy.errors import ConfigError, MissingCredentials
from llmproxy.types import ChatResponse
from llmproxy_deepseek import DEFAULT_MODEL, DeepSeekLLMConfig, DeepSeekService
from llmproxy_testing.fake_deepseek import DEFAULT_REASONING, FakeDeepSeek, Reply


@pytest.fixture
def service_environ(server: FakeDeepSeek) -> dict[str, str]:
    """Memory stores and the fake's URL (no key: each test brings one)."""
    return {
        "LLMPROXY_HISTORY_URL": "memory://",
        "LLMPROXY_LEDGER_URL": "memory://",
        "DEEPSEEK_BASE_URL": server.base_url,
    }


@pytest.fixture
async def make_service(
    service_environ: dict[str, str],
) -> AsyncIterator[Callable[..., DeepSeekService]]:
    """Build services with the test environment; close them afterwards."""
    made: list[DeepSeekService] = []

    def make(config: DeepSeekLLMConfig | None = None, **kwargs: Any) -> DeepSeekService:
        kwargs.setdefault("environ", service_environ)
        service = DeepSeekService(config, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


def bodies(server: FakeDeepSeek) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests]


async def test_chat_like_the_seed(
    make_service: Callable[..., DeepSeekService], server: FakeDeepSeek
) -> None:
    key = str(server.api_key)
    service = make_service(DeepSeekLLMConfig(api_key=key, enable=True, use_message=True))
    response = await service.chat("Hello, how can I help you?")
    assert isinstance(response, ChatResponse)
    assert str(response) == "Echo: Hello, how can I help you?"
    assert response.reasoning == DEFAULT_REASONING
    assert response.provider == "deepseek"
    assert response.model == DEFAULT_MODEL == "deepseek-flash"
    assert server.last_request.headers["authorization"] == f"Bearer {key}"


async def test_chat_stream_yields_answer_text_only(
    make_service: Callable[..., DeepSeekService], server: FakeDeepSeek
) -> None:
    service = make_service(DeepSeekLLMConfig(api_key=str(server.api_key)))
    server.enqueue(Reply(text="Once upon a time", reasoning="A story it is."))
    pieces = [piece async for piece in service.chat_stream("Tell me a story.")]
    assert "".join(pieces) == "Once upon a time"
    assert len(pieces) == 4
    assert all("story it is" not in p for p in pieces)


async def test_history_and_thinking_switch(
    make_service: Callable[..., DeepSeekService], server: FakeDeepSeek
) -> None:
    config = DeepSeekLLMConfig(api_key=str(server.api_key), thinking=False, session_id="seed")
    service = make_service(config)
    first = await service.chat("First question")
    second = await service.chat("Second question")
    assert first.reasoning is None
    assert second.text == "Echo: Second question"
    sent = bodies(server)
    assert all(b["thinking"] == {"type": "disabled"} for b in sent)
    assert [m["content"] for m in sent[-1]["messages"]] == [
        "First question",
        "Echo: First question",
        "Second question",
    ]
    # A call's own extra_body wins over the config's switch.
    await service.chat("Think now", extra_body={"thinking": {"type": "enabled"}})
    assert bodies(server)[-1]["thinking"] == {"type": "enabled"}


def test_sync_faces_and_budget(
    make_service: Callable[..., DeepSeekService], server: FakeDeepSeek
) -> None:
    config = DeepSeekLLMConfig(
        api_key=str(server.api_key), budget=LLMBudget(max_tokens=1000), use_message=False
    )
    service = make_service(config)
    assert service.chat_sync("Hi").text == "Echo: Hi"
    body = bodies(server)[-1]
    assert 0 < body["max_tokens"] < 1000  # the budget's cap goes out as DeepSeek's field
    assert "".join(service.chat_stream_sync("Hi again")) == "Echo: Hi again"


def test_disabled_and_missing_key(
    make_service: Callable[..., DeepSeekService], server: FakeDeepSeek
) -> None:
    service = make_service(DeepSeekLLMConfig(api_key=str(server.api_key), enable=False))
    with pytest.raises(ConfigError, match="disabled"):
        service.chat_sync("Hi")
    with pytest.raises(MissingCredentials, match="DEEPSEEK_API_KEY"):
        DeepSeekService(DeepSeekLLMConfig(), environ={})
    key_from_env = make_service(
        DeepSeekLLMConfig(),
        environ={
            "DEEPSEEK_API_KEY": str(server.api_key),
            "DEEPSEEK_BASE_URL": server.base_url,
            "LLMPROXY_HISTORY_URL": "memory://",
            "LLMPROXY_LEDGER_URL": "memory://",
        },
    )
    assert key_from_env.chat_sync("Hi").text == "Echo: Hi"


def test_config_repr_hides_the_key() -> None:
    config = DeepSeekLLMConfig(api_key="sk-secret-value-1234")
    assert "sk-secret" not in repr(config)
    assert "DeepSeekLLMConfig(" in repr(config)
