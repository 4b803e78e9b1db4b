"""Fallbacks: a retryable failure after retries moves to the next model; budgets stay exact."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from llmproxy import (
    CallEvent,
    LLMBudget,
    ProviderBadRequest,
    ProviderUnavailable,
    Proxy,
    RequestsPerMinute,
)
from llmproxy_openai import OpenAIProvider
from llmproxy_testing._http import Fault
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.proxies import FAST_RETRY
from tests.conftest import API_KEY, chat_requests

MakeProxy = Callable[..., Proxy]


@pytest.fixture
def backup() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY, reply="from backup") as server:
        yield server


@pytest.fixture
def proxy(env: dict[str, str], backup: FakeOpenAI) -> Iterator[Proxy]:
    p = Proxy(
        {
            "retry": {**FAST_RETRY, "max_attempts": 2},
            "history_url": "memory://",
            "ledger_url": "memory://",
        },
        environ=env,
        providers={
            "backup": OpenAIProvider(api_key=API_KEY, base_url=backup.base_url, name="backup")
        },
        budgets=[LLMBudget(max_tokens=10_000, scope="provider"), RequestsPerMinute(limit=100)],
        fallbacks={"openai/gpt-5.4-mini": ["backup/b-model"]},
    )
    yield p
    p.close()


def _usage(proxy: Proxy) -> dict[str, tuple[float, float]]:
    from llmproxy import CallScope

    out = {}
    for provider in ("openai", "backup"):
        scope = CallScope(f"{provider}/m", provider)
        claims = [c for c in (p.claim(scope) for p in proxy.policies) if c is not None]
        for row in proxy.ledger.usage(claims):
            out[row.claim.key] = (row.used, row.reserved)
    return out


def test_falls_back_after_retries_and_settles_each_model(
    proxy: Proxy, upstream: FakeOpenAI, backup: FakeOpenAI
) -> None:
    events: list[CallEvent] = []
    proxy._observers.append(events.append)
    proxy._notify_on = True
    upstream.enqueue(Fault.status(500), Fault.status(503))
    r = proxy.chat("hi", session_id="s")
    assert (r.text, r.provider, r.model) == ("from backup", "backup", "b-model")
    assert len(chat_requests(upstream)) == 2 and len(chat_requests(backup)) == 1
    usage = _usage(proxy)
    tokens_openai = usage["tokens-10000-provider|provider:openai"]
    tokens_backup = usage["tokens-10000-provider|provider:backup"]
    assert tokens_openai == (0.0, 0.0)  # the failed model's hold is released, nothing spent
    assert tokens_backup == (float(r.usage.total_tokens), 0.0)
    assert usage["rpm-100-global|global"] == (3.0, 0.0)  # every attempt on every model is a request
    assert [rec.model for rec in proxy.history.load("s")] == ["b-model", "b-model"]
    assert len(events) == 1 and events[0].provider == "backup" and events[0].attempts == 3


def test_non_retryable_error_does_not_fall_back(
    proxy: Proxy, upstream: FakeOpenAI, backup: FakeOpenAI
) -> None:
    upstream.enqueue(Fault.status(400, message="bad request"))
    with pytest.raises(ProviderBadRequest):
        proxy.chat("hi")
    assert chat_requests(backup) == []


def test_per_call_fallbacks_win_and_last_error_is_raised(
    proxy: Proxy, upstream: FakeOpenAI, backup: FakeOpenAI
) -> None:
    upstream.enqueue(Fault.status(500), Fault.status(500))
    backup.enqueue(Fault.status(502), Fault.status(502))
    with pytest.raises(ProviderUnavailable) as info:
        proxy.chat("hi", fallbacks=["backup/other"])
    assert info.value.provider == "backup" and info.value.status == 502
    assert chat_requests(backup)[0]["model"] == "other"
    assert all(
        used == 0 and reserved == 0
        for key, (used, reserved) in _usage(proxy).items()
        if "tokens" in key
    )


def test_unusable_fallback_is_skipped(
    proxy: Proxy, upstream: FakeOpenAI, backup: FakeOpenAI
) -> None:
    upstream.enqueue(Fault.status(500), Fault.status(500))
    r = proxy.chat("hi", fallbacks=["nosuch/model", "backup/b"])
    assert r.provider == "backup"


def test_stream_falls_back_before_any_text(
    proxy: Proxy, upstream: FakeOpenAI, backup: FakeOpenAI
) -> None:
    upstream.enqueue(Fault.status(429, retry_after=0.001), Fault.status(429, retry_after=0.001))
    events = list(proxy.stream("hi"))
    assert "".join(e.text for e in events) == "from backup"
    assert events[-1].response is not None and events[-1].response.provider == "backup"
    assert all(reserved == 0 for _, reserved in _usage(proxy).values())


async def test_async_fallbacks(proxy: Proxy, upstream: FakeOpenAI, backup: FakeOpenAI) -> None:
    upstream.enqueue(Fault.status(500), Fault.status(500), Fault.status(500), Fault.status(500))
    r = await proxy.achat("hi")
    assert r.provider == "backup"
    texts = [e.text async for e in proxy.astream("hi")]
    assert "".join(texts) == "from backup"
    assert all(reserved == 0 for _, reserved in _usage(proxy).values())
    await proxy.aclose()


def test_fallbacks_from_config(
    env: dict[str, str], backup: FakeOpenAI, upstream: FakeOpenAI
) -> None:
    proxy = Proxy(
        {
            "retry": {**FAST_RETRY, "max_attempts": 1},
            "history_url": "memory://",
            "aliases": {"main": "openai/gpt-5.4-mini"},
            "fallbacks": {"main": ["backup/x"]},
        },
        environ=env,
        providers={
            "backup": OpenAIProvider(api_key=API_KEY, base_url=backup.base_url, name="backup")
        },
    )
    upstream.enqueue(Fault.drop_after(0))
    assert proxy.chat("hi", model="main").provider == "backup"
    proxy.close()
