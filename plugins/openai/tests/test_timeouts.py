"""Time limits against a hung upstream: the attempt's deadline, the read timeout, the connect one.

A request's ``timeout`` (the call's deadline left) bounds the whole attempt; the provider's read
timeout bounds each silence of a stream. The fake hangs until the test's teardown releases it
(``Fault.hang``), so no test waits on a long sleep; the elapsed-time bounds below only guard
against a hang, they measure nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmproxy.errors import ProviderTimeout
from llmproxy.types import ChatRequest, Chunk, Completion, Message
from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI, Fault, Reply

MODEL = "gpt-4o-mini"
#: Far above every limit the tests set: a test that gets near it has hung, not timed out.
GUARD = 8.0
LONG_ANSWER = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """The event that ends the fake's hang: set when the test is done."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture(params=["sync", "aiohttp", "httpx"])
def path(request: pytest.FixtureRequest) -> str:
    """Sync (the SDK's ``post`` on httpx), the async fast path, and the async SDK on httpx."""
    return str(request.param)


def make(make_provider: Callable[..., OpenAIProvider], path: str, **kwargs: Any) -> OpenAIProvider:
    async_http = "httpx" if path == "httpx" else "aiohttp"
    return make_provider(async_http=async_http, **kwargs)


def request(text: str = "Hello there", **kwargs: Any) -> ChatRequest:
    return ChatRequest((Message("user", text),), MODEL, "openai", **kwargs)


async def complete(provider: OpenAIProvider, req: ChatRequest, path: str) -> Completion:
    if path == "sync":
        return provider.chat(req)
    return await provider.achat(req)


async def collect(provider: OpenAIProvider, req: ChatRequest, path: str, into: list[Chunk]) -> None:
    if path == "sync":
        for chunk in provider.stream(req):
            into.append(chunk)
    else:
        async for chunk in provider.astream(req):
            into.append(chunk)


async def closed(server: FakeOpenAI) -> bool:
    """Whether the client let go of its connection to the fake (waits for it, up to GUARD)."""
    end = time.monotonic() + GUARD
    # The count belongs to the fake's thread: polled, while this loop runs the client's closing.
    while server.connection_count and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return server.connection_count == 0


async def test_whole_call_past_its_deadline_is_a_timeout(
    make_provider: Callable[..., OpenAIProvider],
    server: FakeOpenAI,
    release: threading.Event,
    path: str,
) -> None:
    p = make(make_provider, path, timeout=30.0)  # the read timeout would wait far longer
    server.enqueue(Fault.hang(release))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await complete(p, request(timeout=0.3), path)
    assert time.monotonic() - started < GUARD
    assert info.value.retryable
    assert info.value.provider == "openai"
    assert await closed(server)


async def test_stream_without_a_first_chunk_by_its_deadline_is_a_timeout(
    make_provider: Callable[..., OpenAIProvider],
    server: FakeOpenAI,
    release: threading.Event,
    path: str,
) -> None:
    p = make(make_provider, path, timeout=30.0)
    server.enqueue(Fault.hang(release))
    chunks: list[Chunk] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await collect(p, request(timeout=0.3), path, chunks)
    assert time.monotonic() - started < GUARD
    assert chunks == []
    assert await closed(server)


async def test_stream_that_stalls_hits_the_read_timeout(
    make_provider: Callable[..., OpenAIProvider],
    server: FakeOpenAI,
    release: threading.Event,
    path: str,
) -> None:
    p = make(make_provider, path, timeout=0.3)  # the read timeout, between two chunks
    server.enqueue(Fault.hang(release, after=2))
    chunks: list[Chunk] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await collect(p, request("one two three four", timeout=60.0), path, chunks)
    assert time.monotonic() - started < GUARD
    assert "".join(c.text for c in chunks).strip()  # text arrived before the stall
    assert await closed(server)


async def test_stream_that_keeps_flowing_still_ends_at_its_deadline(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, path: str
) -> None:
    p = make(make_provider, path, timeout=30.0)
    server.enqueue(Reply(text=LONG_ANSWER, chunk_delay=0.05))  # 20 s in all, never silent
    chunks: list[Chunk] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await collect(p, request(timeout=0.5), path, chunks)
    assert time.monotonic() - started < GUARD
    assert chunks  # it was flowing; only the deadline stopped it
    assert "deadline" in str(info.value)
    assert await closed(server)


async def test_whole_call_may_take_longer_than_the_read_timeout_within_its_deadline(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, path: str
) -> None:
    p = make(make_provider, path, timeout=0.2)
    server.enqueue(Fault.delay(0.6))  # silent past the read timeout: a slow whole answer
    answer = await complete(p, request(timeout=GUARD), path)
    assert answer.message.content == "Echo: Hello there"


async def test_without_a_deadline_the_read_timeout_bounds_a_whole_call(
    make_provider: Callable[..., OpenAIProvider],
    server: FakeOpenAI,
    release: threading.Event,
    path: str,
) -> None:
    p = make(make_provider, path, timeout=0.3)
    server.enqueue(Fault.hang(release))
    with pytest.raises(ProviderTimeout):
        await complete(p, request(), path)
    assert await closed(server)


async def test_a_deadline_already_past_fails_at_once(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, path: str
) -> None:
    p = make(make_provider, path)
    with pytest.raises(ProviderTimeout):
        await complete(p, request(timeout=0.0), path)


async def test_a_deadline_sends_the_read_timeout_header_it_implies(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, path: str
) -> None:
    p = make(make_provider, path, timeout=45.0)
    await complete(p, request(timeout=20.0), path)  # a whole answer may take the deadline
    assert server.last_request.headers["x-stainless-read-timeout"] == "20.0"
    chunks: list[Chunk] = []
    await collect(p, request(timeout=90.0), path, chunks)  # a stream: the read timeout
    assert server.last_request.headers["x-stainless-read-timeout"] == "45.0"
    await complete(p, request(), path)  # no deadline: the provider's own
    assert server.last_request.headers["x-stainless-read-timeout"] == "45.0"


def test_connect_timeout_bounds_a_connection_that_never_opens() -> None:
    """A listener that never accepts (backlog full) is a timeout after the connect timeout."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    try:
        # Fill the accept queue so the next connection attempt waits unanswered.
        port = listener.getsockname()[1]
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        p = OpenAIProvider(
            api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", connect_timeout=0.3
        )
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            p.chat(request())
        assert time.monotonic() - started < GUARD
        p.close()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
