"""One Proxy over OpenAI, DeepSeek and Gemini: same shapes, fallbacks across all three."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmproxy import CallEvent, LLMBudget, ProviderAuthError, Proxy, RequestsPerMinute
from llmproxy_testing._http import Fault
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.proxies import FAST_RETRY
from tests.conftest import API_KEY

GEMINI = "gemini/gemini-3.8-flash"
DEEPSEEK = "deepseek/deepseek-flash"


@pytest.fixture
def deepseek() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(api_key=API_KEY, reply="deepseek answers") as server:
        yield server


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=API_KEY, reply="gemini answers") as server:
        yield server


@pytest.fixture
def proxy(
    env: dict[str, str], upstream: FakeOpenAI, deepseek: FakeDeepSeek, gemini: FakeGemini
) -> Iterator[Proxy]:
    environ = {
        **env,
        "DEEPSEEK_API_KEY": API_KEY,
        "DEEPSEEK_BASE_URL": deepseek.base_url,
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": gemini.base_url,
    }
    p = Proxy(
        {
            "retry": {**FAST_RETRY, "max_attempts": 2},
            "history_url": "memory://",
            "ledger_url": "memory://",
            "fallbacks": {"openai/gpt-5.4-mini": [DEEPSEEK, GEMINI]},
        },
        environ=environ,
        budgets=[LLMBudget(max_tokens=100_000, scope="provider"), RequestsPerMinute(limit=1000)],
    )
    yield p
    p.close()


@pytest.mark.parametrize("model", ["openai/gpt-5.4-mini", DEEPSEEK, GEMINI])
def test_same_shapes_for_every_provider(proxy: Proxy, model: str) -> None:
    r = proxy.chat("hello there", model=model, session_id=f"s-{model}")
    assert r.text and r.finish_reason == "stop"
    assert r.provider == model.split("/")[0]
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.cost is not None and r.usage.cost > 0
    events = list(proxy.stream("hello again", model=model, session_id=f"s-{model}"))
    assert events[-1].done and events[-1].usage is not None
    assert "".join(e.text for e in events) == events[-1].response.text  # type: ignore[union-attr]
    if model == DEEPSEEK:  # thinking mode: reasoning on its own field, never in the answer
        assert r.reasoning and r.reasoning not in r.text
        assert "".join(e.reasoning for e in events)


async def test_async_for_every_provider(proxy: Proxy) -> None:
    for model in ("openai/gpt-5.4-mini", DEEPSEEK, GEMINI):
        r = await proxy.achat("hi", model=model)
        assert r.provider == model.split("/")[0]
        texts = [e.text async for e in proxy.astream("hi", model=model)]
        assert "".join(texts)
    await proxy.aclose()


def test_falls_back_across_all_three(
    proxy: Proxy, upstream: FakeOpenAI, deepseek: FakeDeepSeek, gemini: FakeGemini
) -> None:
    events: list[CallEvent] = []
    proxy._observers.append(events.append)
    proxy._notify_on = True
    upstream.enqueue(Fault.status(429, retry_after=0.001), Fault.status(429, retry_after=0.001))
    deepseek.enqueue(Fault.status(503), Fault.status(503))
    r = proxy.chat("hello", session_id="s")
    assert (r.provider, r.model, r.text) == ("gemini", "gemini-3.8-flash", "gemini answers")
    assert events[-1].attempts == 5 and events[-1].provider == "gemini"
    used = {
        u.claim.scope: (u.used, u.reserved)
        for p in ("openai", "deepseek", "gemini")
        for u in proxy.usage(model=f"{p}/m")
        if u.claim.unit == "tokens"
    }
    assert used["provider:openai"] == (0.0, 0.0) and used["provider:deepseek"] == (0.0, 0.0)
    assert used["provider:gemini"] == (float(r.usage.total_tokens), 0.0)
    stored = proxy.history.load("s")
    assert [rec.provider for rec in stored] == ["gemini", "gemini"]


def test_auth_error_does_not_fall_back(
    proxy: Proxy, upstream: FakeOpenAI, deepseek: FakeDeepSeek
) -> None:
    upstream.enqueue(Fault.status(401))
    with pytest.raises(ProviderAuthError) as info:
        proxy.chat("hello")
    assert info.value.provider == "openai" and info.value.status == 401
    assert deepseek.requests == []


def test_stream_falls_back_across_providers(
    proxy: Proxy, upstream: FakeOpenAI, deepseek: FakeDeepSeek
) -> None:
    upstream.enqueue(Fault.status(500), Fault.status(500))
    events = list(proxy.stream("hello"))
    assert events[-1].response is not None and events[-1].response.provider == "deepseek"
    assert "".join(e.text for e in events) == "deepseek answers"
