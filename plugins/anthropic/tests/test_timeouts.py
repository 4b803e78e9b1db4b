"""Time limits against a hung upstream: the attempt's deadline, the read timeout.

A request's ``timeout`` (the call's deadline left) bounds the whole attempt; the provider's read
timeout bounds each silence of a stream. The fake hangs until the test's teardown releases it
(``Fault.hang``), so no test waits on a long sleep; the elapsed-time bounds below only guard
against a hang, they measure nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llmproxy.errors import ProviderTimeout
from llmproxy.types import ChatRequest, Chunk, Completion, Message
from llmproxy_anthropic.provider import AnthropicProvider
from llmproxy_testing.fake_anthropic import FakeAnthropic, Fault, Reply

MODEL = "claude-sonnet-4-6"
#: Far above every limit the tests set: a test that gets near it has hung, not timed out.
GUARD = 8.0
LONG_ANSWER = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """The event that ends the fake's hang: set when the test is done."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Once through the sync methods, once through the async ones."""
    return str(request.param)


@pytest.fixture
async def make(server: FakeAnthropic) -> AsyncIterator[Callable[..., AnthropicProvider]]:
    """Build AnthropicProviders aimed at the fake; close them all after the test."""
    made: list[AnthropicProvider] = []

    def build(**kwargs: Any) -> AnthropicProvider:
        p = AnthropicProvider(api_key=str(server.api_key), base_url=server.base_url, **kwargs)
        made.append(p)
        return p

    yield build
    for p in made:
        await p.aclose()


def request(text: str = "Hello there", **kwargs: Any) -> ChatRequest:
    return ChatRequest((Message("user", text),), MODEL, "anthropic", **kwargs)


async def complete(provider: AnthropicProvider, req: ChatRequest, mode: str) -> Completion:
    if mode == "sync":
        return provider.chat(req)
    return await provider.achat(req)


async def collect(
    provider: AnthropicProvider, req: ChatRequest, mode: str, into: list[Chunk]
) -> None:
    if mode == "sync":
        for chunk in provider.stream(req):
            into.append(chunk)
    else:
        async for chunk in provider.astream(req):
            into.append(chunk)


async def closed(server: FakeAnthropic) -> bool:
    """Whether the client let go of its connection to the fake (waits for it, up to GUARD)."""
    end = time.monotonic() + GUARD
    # The count belongs to the fake's thread: polled, while this loop runs the client's closing.
    while server.connection_count and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return server.connection_count == 0


async def test_whole_call_past_its_deadline_is_a_timeout(
    make: Callable[..., AnthropicProvider],
    server: FakeAnthropic,
    release: threading.Event,
    mode: str,
) -> None:
    p = make(timeout=30.0)  # the read timeout would wait far longer
    server.enqueue(Fault.hang(release))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await complete(p, request(timeout=0.3), mode)
    assert time.monotonic() - started < GUARD
    assert info.value.retryable
    assert info.value.provider == "anthropic"
    assert await closed(server)


async def test_stream_without_a_first_chunk_by_its_deadline_is_a_timeout(
    make: Callable[..., AnthropicProvider],
    server: FakeAnthropic,
    release: threading.Event,
    mode: str,
) -> None:
    p = make(timeout=30.0)
    server.enqueue(Fault.hang(release))
    chunks: list[Chunk] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await collect(p, request(timeout=0.3), mode, chunks)
    assert time.monotonic() - started < GUARD
    assert chunks == []
    assert await closed(server)


async def test_stream_that_stalls_hits_the_read_timeout(
    make: Callable[..., AnthropicProvider],
    server: FakeAnthropic,
    release: threading.Event,
    mode: str,
) -> None:
    p = make(timeout=0.3)  # the read timeout, between two chunks
    server.enqueue(Fault.hang(release, after=2))
    chunks: list[Chunk] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await collect(p, request("one two three four", timeout=60.0), mode, chunks)
    assert time.monotonic() - started < GUARD
    assert "".join(c.text for c in chunks).strip()  # text arrived before the stall
    assert await closed(server)


async def test_stream_that_keeps_flowing_still_ends_at_its_deadline(
    make: Callable[..., AnthropicProvider], server: FakeAnthropic, mode: str
) -> None:
    p = make(timeout=30.0)
    server.enqueue(Reply(text=LONG_ANSWER, chunk_delay=0.05))  # 20 s in all, never silent
    chunks: list[Chunk] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await collect(p, request(timeout=0.5), mode, chunks)
    assert time.monotonic() - started < GUARD
    assert chunks  # it was flowing; only the deadline stopped it
    assert "deadline" in str(info.value)
    assert await closed(server)


async def test_whole_call_may_take_longer_than_the_read_timeout_within_its_deadline(
    make: Callable[..., AnthropicProvider], server: FakeAnthropic, mode: str
) -> None:
    p = make(timeout=0.2)
    server.enqueue(Fault.delay(0.6))  # silent past the read timeout: a slow whole answer
    answer = await complete(p, request(timeout=GUARD), mode)
    assert answer.message.content == "Echo: Hello there"


async def test_without_a_deadline_the_read_timeout_bounds_a_whole_call(
    make: Callable[..., AnthropicProvider],
    server: FakeAnthropic,
    release: threading.Event,
    mode: str,
) -> None:
    p = make(timeout=0.3)
    server.enqueue(Fault.hang(release))
    with pytest.raises(ProviderTimeout):
        await complete(p, request(), mode)
    assert await closed(server)


async def test_a_deadline_already_past_fails_at_once(
    make: Callable[..., AnthropicProvider], server: FakeAnthropic, mode: str
) -> None:
    with pytest.raises(ProviderTimeout):
        await complete(make(), request(timeout=0.0), mode)
    assert server.requests == []
