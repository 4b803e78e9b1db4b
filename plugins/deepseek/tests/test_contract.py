"""DeepSeekProvider passes the provider contract (real openai SDK against FakeDeepSeek)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llmproxy.types import ChatRequest
from llmproxy_deepseek.provider import DeepSeekProvider
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.provider_contract import ProviderContract

KEY = "sk-ds-contract-0123456789wxyz"


class TestDeepSeekProviderContract(ProviderContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeDeepSeek]:
        with FakeDeepSeek(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeDeepSeek) -> AsyncIterator[DeepSeekProvider]:
        provider = DeepSeekProvider(api_key=KEY, base_url=upstream.base_url, timeout=10.0)
        yield provider
        await provider.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "deepseek-flash"


class TestDeepSeekWithoutThinkingContract(TestDeepSeekProviderContract):
    """The same contract with thinking mode off for every request."""

    @pytest.fixture
    async def provider(self, upstream: FakeDeepSeek) -> AsyncIterator[DeepSeekProvider]:
        provider = _NoThinking(api_key=KEY, base_url=upstream.base_url, timeout=10.0)
        yield provider
        await provider.aclose()


class _NoThinking(DeepSeekProvider):
    def params(self, request: ChatRequest) -> dict[str, Any]:
        params = super().params(request)
        params["extra_body"] = {"thinking": {"type": "disabled"}}
        return params
