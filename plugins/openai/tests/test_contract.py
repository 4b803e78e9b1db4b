"""OpenAIProvider passes the provider contract (real openai SDK against FakeOpenAI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.provider_contract import EmbeddingContract, ProviderContract

KEY = "sk-test-contract-0123456789wxyz"


class TestOpenAIProviderContract(ProviderContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeOpenAI]:
        with FakeOpenAI(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
        provider = OpenAIProvider(api_key=KEY, base_url=upstream.base_url, timeout=10.0)
        yield provider
        await provider.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "gpt-5.4-mini"


class TestOpenAIEmbeddingContract(EmbeddingContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeOpenAI]:
        with FakeOpenAI(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
        provider = OpenAIProvider(api_key=KEY, base_url=upstream.base_url, timeout=10.0)
        yield provider
        await provider.aclose()

    @pytest.fixture
    def embedding_model(self) -> str:
        return "text-embedding-3-small"
