"""AnthropicLLMConfig and AnthropicService: the OpenAIService shape, for Claude.

Every service talks to FakeAnthropic through the real SDK; stores are in memory so nothing
touches the user's data dir.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmproxy import LLMBudget
from llmproxy.errors import ConfigError, MissingCredentials
from llmproxy.tools import HostedTool, tool
from llmproxy.types import ChatResponse
from llmproxy_anthropic import DEFAULT_MODEL, AnthropicLLMConfig, AnthropicService
from llmproxy_testing.fake_anthropic import FakeAnthropic, Reply

from .conftest import API_KEY


@tool
def get_weather(city: str) -> str:
    """Get today's weather.

    Args:
        city: The city.
    """
    return f"Sunny in {city}"


@pytest.fixture
def service_environ(server: FakeAnthropic) -> dict[str, str]:
    """Memory stores and the fake's URL (no key: each test brings one)."""
    return {
        "LLMPROXY_HISTORY_URL": "memory://",
        "LLMPROXY_LEDGER_URL": "memory://",
        "ANTHROPIC_BASE_URL": server.base_url,
    }


@pytest.fixture
async def make_service(
    service_environ: dict[str, str],
) -> AsyncIterator[Callable[..., AnthropicService]]:
    """Build services with the test environment; close them afterwards."""
    made: list[AnthropicService] = []

    def make(config: AnthropicLLMConfig | None = None, **kwargs: Any) -> AnthropicService:
        kwargs.setdefault("environ", service_environ)
        service = AnthropicService(config, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


def bodies(server: FakeAnthropic) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests]


async def test_chat_like_the_seed(
    make_service: Callable[..., AnthropicService], server: FakeAnthropic
) -> None:
    config = AnthropicLLMConfig(api_key=API_KEY, enable=True, use_message=True, session_id="s")
    service = make_service(config)
    response = await service.chat("Hello, how can I help you?")
    assert isinstance(response, ChatResponse)
    assert str(response) == "Echo: Hello, how can I help you?"
    assert (response.provider, response.model) == ("anthropic", DEFAULT_MODEL)
    second = await service.chat("Second question")
    assert second.text == "Echo: Second question"
    turns = bodies(server)[-1]["messages"]
    assert [(t["role"], t["content"][0]["text"]) for t in turns] == [
        ("user", "Hello, how can I help you?"),
        ("assistant", "Echo: Hello, how can I help you?"),
        ("user", "Second question"),
    ]


async def test_thinking_budget_and_stream_of_answer_text_only(
    make_service: Callable[..., AnthropicService], server: FakeAnthropic
) -> None:
    service = make_service(AnthropicLLMConfig(api_key=API_KEY, thinking_budget=1500))
    server.enqueue(Reply(text="Once upon a time", reasoning="A story it is."))
    pieces = [piece async for piece in service.chat_stream("Tell me a story.")]
    assert "".join(pieces) == "Once upon a time"
    assert all("story it is" not in p for p in pieces)
    assert bodies(server)[-1]["thinking"] == {"type": "enabled", "budget_tokens": 1500}
    # A call's own thinking option wins over the config's.
    await service.chat("Quick one", thinking={"type": "disabled"})
    assert bodies(server)[-1]["thinking"] == {"type": "disabled"}


def test_sync_faces_budget_system_and_cache(
    make_service: Callable[..., AnthropicService], server: FakeAnthropic
) -> None:
    config = AnthropicLLMConfig(
        api_key=API_KEY,
        budget=LLMBudget(max_tokens=1000),
        use_message=False,
        system="Be brief.",
        prompt_cache=True,
    )
    service = make_service(config)
    assert service.chat_sync("Hi").text == "Echo: Hi"
    body = bodies(server)[-1]
    assert 0 < body["max_tokens"] < 1000  # the budget's cap
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "".join(service.chat_stream_sync("Hi again")) == "Echo: Hi again"


async def test_tools_of_the_config_run_in_the_loop(
    make_service: Callable[..., AnthropicService], server: FakeAnthropic
) -> None:
    service = make_service(
        AnthropicLLMConfig(api_key=API_KEY, tools=[get_weather], tool_choice="get_weather")
    )
    server.enqueue(
        Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Hue"}}]),
        Reply(text="Sunny in Hue."),
    )
    assert str(await service.chat("Hue?")) == "Sunny in Hue."
    first, second = bodies(server)
    assert first["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert second["messages"][-1]["content"][0]["content"] == "Sunny in Hue"


def test_disabled_missing_key_hosted_tools_and_repr(
    make_service: Callable[..., AnthropicService], server: FakeAnthropic
) -> None:
    service = make_service(AnthropicLLMConfig(api_key=API_KEY, enable=False))
    with pytest.raises(ConfigError, match="disabled"):
        service.chat_sync("Hi")
    with pytest.raises(MissingCredentials, match="ANTHROPIC_API_KEY"):
        AnthropicService(AnthropicLLMConfig(), environ={})
    key_from_env = make_service(
        AnthropicLLMConfig(),
        environ={
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": server.base_url,
            "LLMPROXY_HISTORY_URL": "memory://",
            "LLMPROXY_LEDGER_URL": "memory://",
        },
    )
    assert key_from_env.chat_sync("Hi").text == "Echo: Hi"
    with pytest.raises(ConfigError, match="'anthropic'") as info:
        AnthropicLLMConfig(tools=[HostedTool("web_search")])  # type: ignore[list-item]
    assert info.value.path == "tools[0]"
    assert "sk-ant-secret" not in repr(AnthropicLLMConfig(api_key="sk-ant-secret-1234"))
