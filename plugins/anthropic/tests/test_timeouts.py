"""AnthropicProvider's time limits against a hung upstream: the timeout contract on FakeAnthropic.

The tests themselves are :class:`~llmproxy_testing.timeout_contract.ProviderTimeoutContract`'s
(the attempt's deadline, the read timeout; sync and async).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmproxy_anthropic.provider import AnthropicProvider
from llmproxy_testing.fake_anthropic import FakeAnthropic
from llmproxy_testing.timeout_contract import ProviderTimeoutContract


class TestAnthropicTimeouts(ProviderTimeoutContract):
    @pytest.fixture
    def upstream(self, server: FakeAnthropic) -> FakeAnthropic:
        return server

    @pytest.fixture
    async def provider_factory(
        self, server: FakeAnthropic
    ) -> AsyncIterator[Callable[..., AnthropicProvider]]:
        """Build AnthropicProviders aimed at the fake; close them all after the test."""
        made: list[AnthropicProvider] = []

        def build(**kwargs: Any) -> AnthropicProvider:
            p = AnthropicProvider(api_key=str(server.api_key), base_url=server.base_url, **kwargs)
            made.append(p)
            return p

        yield build
        for p in made:
            await p.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "claude-sonnet-4-6"

    @pytest.fixture
    def provider_name(self) -> str:
        return "anthropic"
