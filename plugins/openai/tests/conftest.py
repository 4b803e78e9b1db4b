"""Shared fixtures of the OpenAI plugin's tests: a FakeOpenAI upstream and a provider aimed at it.

Everything goes through the real ``openai`` SDK over TCP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest

from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI, RecordedRequest, ResponseWriter

#: The key the fake server accepts. Long enough that its masked form differs from it.
API_KEY = "sk-test-4f7a9c2e1b8d6053wxyz"


@pytest.fixture
def api_key() -> str:
    """The API key the ``server`` fixture accepts."""
    return API_KEY


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A FakeOpenAI that requires ``API_KEY``."""
    with FakeOpenAI(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
async def make_provider(server: FakeOpenAI) -> AsyncIterator[Callable[..., OpenAIProvider]]:
    """Build OpenAIProviders aimed at the fake (``api_key``, ``timeout``...); close them all.

    The async SDK client of the test's event loop is closed here, on that loop, so no connection
    outlives the test (the SDK would otherwise try to close it later, from another loop).
    """
    made: list[OpenAIProvider] = []

    def make(**kwargs: Any) -> OpenAIProvider:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", server.base_url)
        kwargs.setdefault("timeout", 10.0)
        p = OpenAIProvider(**kwargs)
        made.append(p)
        return p

    yield make
    loop = asyncio.get_running_loop()
    for p in made:
        if p._aloop is loop:
            await p.aclose()
        else:
            p.close()


@pytest.fixture
def provider(make_provider: Callable[..., OpenAIProvider]) -> OpenAIProvider:
    """An OpenAIProvider aimed at the fake, with a short timeout so failures fail fast."""
    return make_provider()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run a provider test once through the sync methods and once through the async ones."""
    return str(request.param)


Events = Sequence[dict[str, Any] | bytes]


@pytest.fixture
def sse_route(server: FakeOpenAI) -> Callable[[Events], None]:
    """Replace the fake's chat endpoint with one that streams exactly the given SSE events.

    Each event is a dict (sent as ``data: <json>``) or raw bytes (sent as they are); nothing is
    added, so a test controls chunk boundaries, ``[DONE]`` and the end of the stream itself.
    """

    def install(events: Events) -> None:
        async def handler(_request: RecordedRequest, response: ResponseWriter) -> None:
            response.start_stream(200, {"content-type": "text/event-stream"})
            for event in events:
                if isinstance(event, bytes):
                    response.write(event)
                else:
                    response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                await response.drain()
            response.end()

        server.add_route("POST", "/v1/chat/completions", handler)

    return install


@pytest.fixture
def json_route(server: FakeOpenAI) -> Callable[[int, Any], None]:
    """Replace the fake's chat endpoint with one that answers a fixed JSON body."""

    def install(status: int, body: Any) -> None:
        async def handler(_request: RecordedRequest, response: ResponseWriter) -> None:
            response.send_json(status, body)

        server.add_route("POST", "/v1/chat/completions", handler)

    return install
