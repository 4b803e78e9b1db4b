"""OpenAIProvider on the Responses API passes the provider contract (real SDK, FakeOpenAI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.provider_contract import ProviderContract

KEY = "sk-test-contract-0123456789wxyz"


class TestOpenAIResponsesContract(ProviderContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeOpenAI]:
        # The contract cuts answers at 3 tokens; OpenAI's own floor (16) is tested elsewhere.
        with FakeOpenAI(api_key=KEY, min_output_tokens=1) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
        provider = OpenAIProvider(
            api_key=KEY, base_url=upstream.base_url, timeout=10.0, api="responses"
        )
        yield provider
        await provider.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "gpt-5.4-mini"
