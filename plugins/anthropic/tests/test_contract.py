"""AnthropicProvider passes the provider contract (real anthropic SDK against FakeAnthropic)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_anthropic.provider import AnthropicProvider
from llmproxy_testing.fake_anthropic import FakeAnthropic
from llmproxy_testing.provider_contract import ProviderContract

KEY = "sk-ant-contract-0123456789"


class TestAnthropicProviderContract(ProviderContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeAnthropic]:
        with FakeAnthropic(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
        provider = AnthropicProvider(api_key=KEY, base_url=upstream.base_url, timeout=10.0)
        yield provider
        await provider.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "claude-sonnet-4-6"
