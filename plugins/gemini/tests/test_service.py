"""GeminiLLMConfig and GeminiService: the OpenAIService shape, for Gemini.

Every service talks to FakeGemini through the real SDK; stores are in memory so nothing touches
the user's data dir.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmproxy import LLMBudget
from llmproxy.errors import ConfigError, MissingCredentials
from llmproxy.types import ChatResponse
from llmproxy_gemini import DEFAULT_MODEL, GeminiLLMConfig, GeminiService
from llmproxy_testing.fake_gemini import FakeGemini, Reply


@pytest.fixture
def service_environ(server: FakeGemini) -> dict[str, str]:
    """Memory stores and the fake's URL (no key: each test brings one)."""
    return {
        "LLMPROXY_HISTORY_URL": "memory://",
        "LLMPROXY_LEDGER_URL": "memory://",
        "GEMINI_BASE_URL": server.base_url,
    }


@pytest.fixture
async def make_service(
    service_environ: dict[str, str],
) -> AsyncIterator[Callable[..., GeminiService]]:
    """Build services with the test environment; close them afterwards."""
    made: list[GeminiService] = []

    def make(config: GeminiLLMConfig | None = None, **kwargs: Any) -> GeminiService:
        kwargs.setdefault("environ", service_environ)
        service = GeminiService(config, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.aclose()


def bodies(server: FakeGemini) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests]


async def test_chat_and_stream(
    make_service: Callable[..., GeminiService], server: FakeGemini
) -> None:
    service = make_service(GeminiLLMConfig(api_key=str(server.api_key), session_id="g"))
    server.enqueue(Reply(text="Hi!", reasoning="Greet back."))
    response = await service.chat("Hello, how can I help you?")
    assert isinstance(response, ChatResponse)
    assert (str(response), response.reasoning) == ("Hi!", "Greet back.")
    assert (response.provider, response.model) == ("gemini", DEFAULT_MODEL)
    server.enqueue(Reply(text="Once upon a time", reasoning="A story."))
    pieces = [p async for p in service.chat_stream("Tell me a story.")]
    assert "".join(pieces) == "Once upon a time"
    contents = bodies(server)[-1]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]


def test_sync_faces_budget_and_thoughts_switch(
    make_service: Callable[..., GeminiService], server: FakeGemini
) -> None:
    config = GeminiLLMConfig(
        api_key=str(server.api_key),
        budget=LLMBudget(max_tokens=500),
        include_thoughts=False,
        system="Be brief.",
    )
    service = make_service(config)
    assert service.chat_sync("Hi").text == "Echo: Hi"
    body = bodies(server)[-1]
    assert 0 < body["generationConfig"]["maxOutputTokens"] < 500
    assert body["generationConfig"]["thinkingConfig"] == {"include_thoughts": False}
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert "".join(service.chat_stream_sync("Again")) == "Echo: Again"


def test_disabled_and_missing_key(
    make_service: Callable[..., GeminiService], server: FakeGemini
) -> None:
    with pytest.raises(ConfigError, match="disabled"):
        make_service(GeminiLLMConfig(api_key=str(server.api_key), enable=False)).chat_sync("x")
    with pytest.raises(MissingCredentials, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        GeminiService(GeminiLLMConfig(), environ={})
    assert "AIza-secret" not in repr(GeminiLLMConfig(api_key="AIza-secret-0123"))
