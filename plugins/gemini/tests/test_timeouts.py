"""GeminiProvider's time limits against a hung upstream: the timeout contract on FakeGemini.

The tests themselves are :class:`~llmproxy_testing.timeout_contract.ProviderTimeoutContract`'s
(the attempt's deadline, the read timeout; sync and async); Gemini also tells its upstream the
deadline, in the ``x-server-timeout`` header (whole seconds).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmproxy_gemini.provider import GeminiProvider
from llmproxy_testing.fake_gemini import FakeGemini, RecordedRequest
from llmproxy_testing.timeout_contract import ProviderTimeoutContract


class TestGeminiTimeouts(ProviderTimeoutContract):
    @pytest.fixture
    def upstream(self, server: FakeGemini) -> FakeGemini:
        return server

    @pytest.fixture
    async def provider_factory(
        self, server: FakeGemini
    ) -> AsyncIterator[Callable[..., GeminiProvider]]:
        """Build GeminiProviders aimed at the fake; close them all after the test."""
        made: list[GeminiProvider] = []

        def build(**kwargs: Any) -> GeminiProvider:
            p = GeminiProvider(api_key=str(server.api_key), base_url=server.base_url, **kwargs)
            made.append(p)
            return p

        yield build
        for p in made:
            await p.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "gemini-3.8-flash"

    @pytest.fixture
    def provider_name(self) -> str:
        return "gemini"

    def check_deadline_request(self, request: RecordedRequest, deadline: float) -> None:
        """The deadline goes up as ``x-server-timeout``, in whole seconds."""
        assert request.headers["x-server-timeout"] == str(int(deadline))
