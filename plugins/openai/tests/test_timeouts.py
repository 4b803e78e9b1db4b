"""OpenAIProvider's time limits: the timeout contract on FakeOpenAI, its header, the connect one.

The contract's tests (:class:`~llmproxy_testing.timeout_contract.ProviderTimeoutContract`: the
attempt's deadline, the read timeout) run three times here: sync (the SDK's ``post`` on httpx),
the async fast path (aiohttp), and the async SDK on httpx. OpenAI's own: the
``x-stainless-read-timeout`` header a deadline implies, and the connect timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmproxy.errors import ProviderTimeout
from llmproxy.types import Chunk
from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.provider_contract import Mode
from llmproxy_testing.timeout_contract import GUARD, ProviderTimeoutContract

MODEL = "gpt-4o-mini"


class TestOpenAITimeouts(ProviderTimeoutContract):
    @pytest.fixture(params=["sync", "aiohttp", "httpx"])
    def path(self, request: pytest.FixtureRequest) -> str:
        """Sync (the SDK's ``post`` on httpx), the async fast path, and the async SDK on httpx."""
        return str(request.param)

    @pytest.fixture
    def mode(self, path: str) -> Mode:
        """The sync methods for the sync path, the async ones for both async paths."""
        return "sync" if path == "sync" else "async"

    @pytest.fixture
    def upstream(self, server: FakeOpenAI) -> FakeOpenAI:
        return server

    @pytest.fixture
    def provider_factory(
        self, make_provider: Callable[..., OpenAIProvider], path: str
    ) -> Callable[..., OpenAIProvider]:
        """Build OpenAIProviders on the path's async transport (closed by ``make_provider``)."""
        async_http = "httpx" if path == "httpx" else "aiohttp"

        def build(**kwargs: Any) -> OpenAIProvider:
            return make_provider(async_http=async_http, **kwargs)

        return build

    @pytest.fixture
    def model(self) -> str:
        return MODEL

    @pytest.fixture
    def provider_name(self) -> str:
        return "openai"

    async def test_a_deadline_sends_the_read_timeout_header_it_implies(
        self,
        provider_factory: Callable[..., OpenAIProvider],
        upstream: FakeOpenAI,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        p = provider_factory(timeout=45.0)
        # A whole answer may take the deadline.
        await self.complete(p, self.request(model, provider_name, timeout=20.0), mode)
        assert upstream.last_request.headers["x-stainless-read-timeout"] == "20.0"
        chunks: list[Chunk] = []
        # A stream: the read timeout.
        await self.collect(p, self.request(model, provider_name, timeout=90.0), mode, chunks)
        assert upstream.last_request.headers["x-stainless-read-timeout"] == "45.0"
        await self.complete(p, self.request(model, provider_name), mode)  # no deadline: its own
        assert upstream.last_request.headers["x-stainless-read-timeout"] == "45.0"


def test_connect_timeout_bounds_a_connection_that_never_opens() -> None:
    """A listener that never accepts (backlog full) is a timeout after the connect timeout."""
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
            p.chat(ProviderTimeoutContract.request(MODEL, "openai"))
        assert time.monotonic() - started < GUARD
        p.close()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
