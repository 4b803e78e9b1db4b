"""GeminiProvider passes the provider contract (real google-genai SDK against FakeGemini)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from llmproxy_gemini.provider import GeminiProvider
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.provider_contract import EmbeddingContract, ProviderContract

KEY = "AIzaContract-0123456789wxyz"


class TestGeminiProviderContract(ProviderContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeGemini]:
        with FakeGemini(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeGemini) -> AsyncIterator[GeminiProvider]:
        provider = GeminiProvider(api_key=KEY, base_url=upstream.base_url, timeout=10.0)
        yield provider
        await provider.aclose()

    @pytest.fixture
    def model(self) -> str:
        return "gemini-3.8-flash"


class TestGeminiBetaApiContract(TestGeminiProviderContract):
    """The same contract on the v1beta API, without thought summaries."""

    @pytest.fixture
    async def provider(self, upstream: FakeGemini) -> AsyncIterator[GeminiProvider]:
        provider = GeminiProvider(
            api_key=KEY,
            base_url=upstream.base_url,
            timeout=10.0,
            api_version="v1beta",
            include_thoughts=False,
        )
        yield provider
        await provider.aclose()


class TestGeminiEmbeddingContract(EmbeddingContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeGemini]:
        with FakeGemini(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeGemini) -> AsyncIterator[GeminiProvider]:
        provider = GeminiProvider(api_key=KEY, base_url=upstream.base_url, timeout=10.0)
        yield provider
        await provider.aclose()

    @pytest.fixture
    def embedding_model(self) -> str:
        return "gemini-embedding-001"
