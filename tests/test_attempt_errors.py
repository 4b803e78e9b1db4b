"""``CallEvent.attempt_errors``: the errors of the attempts that failed before the one that
ended a call (retried, or moved on from), each once, the call's own ``error`` not repeated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmproxy import (
    CallEvent,
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderUnavailable,
    Proxy,
    SchemaError,
    StreamInterrupted,
)
from llmproxy_openai import OpenAIProvider
from llmproxy_testing._http import Fault, Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.proxies import FAST_RETRY
from tests.conftest import API_KEY


@pytest.fixture
def backup() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY, reply="from backup") as server:
        yield server


@pytest.fixture
def events() -> list[CallEvent]:
    return []


@pytest.fixture
def proxy(env: dict[str, str], backup: FakeOpenAI, events: list[CallEvent]) -> Iterator[Proxy]:
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
        fallbacks={"openai/gpt-5.4-mini": ["backup/b-model"]},
        observers=[events.append],
    )
    yield p
    p.close()


def kinds(event: CallEvent) -> list[tuple[str, str, str | None]]:
    """Each attempt error's class, provider and model."""
    out = []
    for error in event.attempt_errors:
        assert isinstance(error, ProviderUnavailable | ProviderRateLimited)
        out.append((type(error).__name__, error.provider, error.model))
    return out


def test_a_retried_attempt_is_carried_by_a_call_that_succeeds(
    proxy: Proxy, upstream: FakeOpenAI, events: list[CallEvent]
) -> None:
    upstream.enqueue(Fault.status(503))
    assert proxy.chat("hi").provider == "openai"
    (event,) = events
    assert (event.outcome, event.error, event.attempts) == ("ok", None, 2)
    assert kinds(event) == [("ProviderUnavailable", "openai", "gpt-5.4-mini")]
    assert events[0].attempt_errors[0].status == 503  # type: ignore[attr-defined]


def test_a_call_with_no_failed_attempt_carries_none(proxy: Proxy, events: list[CallEvent]) -> None:
    proxy.chat("hi")
    assert events[0].attempt_errors == ()


def test_failed_over_attempts_name_the_model_they_went_to(
    proxy: Proxy, upstream: FakeOpenAI, events: list[CallEvent]
) -> None:
    upstream.enqueue(Fault.status(500), Fault.status(429, retry_after=0.001))
    response = proxy.chat("hi")
    assert response.provider == "backup"
    (event,) = events
    assert (event.provider, event.model, event.attempts) == ("backup", "b-model", 3)
    assert kinds(event) == [
        ("ProviderUnavailable", "openai", "gpt-5.4-mini"),
        ("ProviderRateLimited", "openai", "gpt-5.4-mini"),
    ]


def test_the_error_that_ends_the_call_is_not_repeated(
    proxy: Proxy, upstream: FakeOpenAI, backup: FakeOpenAI, events: list[CallEvent]
) -> None:
    upstream.enqueue(Fault.status(502), Fault.status(503))
    backup.enqueue(Fault.status(500), Fault.status(400, message="bad"))
    with pytest.raises(ProviderBadRequest) as info:
        proxy.chat("hi")
    (event,) = events
    assert event.error is info.value
    assert [(type(e).__name__, getattr(e, "status", None)) for e in event.attempt_errors] == [
        ("ProviderUnavailable", 502),
        ("ProviderUnavailable", 503),
        ("ProviderUnavailable", 500),
    ]
    assert info.value not in event.attempt_errors


def test_an_error_after_the_attempts_keeps_every_attempt_error(
    proxy: Proxy, upstream: FakeOpenAI, events: list[CallEvent]
) -> None:
    """A 503 retried, then an answer that does not fit the schema: the 503 is still carried."""
    upstream.enqueue(Fault.status(503), Reply(text="Sure! Here it is"))
    with pytest.raises(SchemaError) as info:
        proxy.chat("hi", schema={"type": "object", "properties": {"a": {"type": "string"}}})
    (event,) = events
    assert event.error is info.value
    assert kinds(event) == [("ProviderUnavailable", "openai", "gpt-5.4-mini")]


def test_a_stream_interrupted_after_a_retry_carries_only_the_retried_error(
    proxy: Proxy, upstream: FakeOpenAI, events: list[CallEvent]
) -> None:
    upstream.enqueue(Fault.status(503), Fault.drop_after(2))
    with pytest.raises(StreamInterrupted) as info:
        for _ in proxy.stream("hi"):
            pass
    (event,) = events
    assert event.outcome == "interrupted" and event.error is info.value
    # The broken attempt's own error is the one StreamInterrupted wraps: not repeated.
    assert kinds(event) == [("ProviderUnavailable", "openai", "gpt-5.4-mini")]


async def test_async_streams_carry_the_retried_errors(
    proxy: Proxy, upstream: FakeOpenAI, events: list[CallEvent]
) -> None:
    upstream.enqueue(Fault.status(529))
    texts = [e.text async for e in proxy.astream("hi")]
    assert "".join(texts)
    assert [e.outcome for e in events] == ["ok"]
    assert [getattr(e, "status", None) for e in events[0].attempt_errors] == [529]
    await proxy.aclose()


def test_embeddings_carry_the_retried_errors(
    proxy: Proxy, upstream: FakeOpenAI, events: list[CallEvent]
) -> None:
    upstream.enqueue(Fault.status(503))
    proxy.embed(["one", "two"], model="openai/text-embedding-3-small")
    (event,) = events
    assert (event.operation, event.outcome) == ("embed", "ok")
    assert [getattr(e, "status", None) for e in event.attempt_errors] == [503]
