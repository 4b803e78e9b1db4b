"""OpenAI's /v1/embeddings through the real SDK against FakeOpenAI."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from llmproxy.errors import ProviderRateLimited
from llmproxy.types import EmbeddingResult, EmbedRequest
from llmproxy_openai.provider import EMBED_LIMITS, OpenAIProvider
from llmproxy_openai.tokenizer import count_text
from llmproxy_testing._embeddings import fake_vector
from llmproxy_testing.fake_openai import FakeOpenAI, Fault


def run(provider: OpenAIProvider, request: EmbedRequest, mode: str) -> EmbeddingResult:
    if mode == "sync":
        return provider.embed(request)
    return _arun(provider, request)


def _arun(provider: OpenAIProvider, request: EmbedRequest) -> EmbeddingResult:
    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(provider.aembed(request))
        loop.run_until_complete(provider.aclose())
        return result
    finally:
        loop.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_wire_body_and_decoded_vectors(
    server: FakeOpenAI, make_provider: Callable[..., OpenAIProvider], mode: str
) -> None:
    provider = make_provider()
    request = EmbedRequest(
        ("the cat", "sat on the mat"), "text-embedding-3-small", "openai", dimensions=8, user="u1"
    )
    result = run(provider, request, mode)
    body = server.last_request.json()
    # The SDK's own transport: base64, asked for when no encoding_format is given.
    assert body == {
        "model": "text-embedding-3-small",
        "input": ["the cat", "sat on the mat"],
        "user": "u1",
        "dimensions": 8,
        "encoding_format": "base64",
    }
    assert result.vectors == (
        tuple(fake_vector("the cat", 8)),
        tuple(fake_vector("sat on the mat", 8)),
    )
    assert result.usage is not None and result.usage.input_tokens == 2 + 4
    assert result.model == "text-embedding-3-small"


def test_extra_goes_into_the_body(
    server: FakeOpenAI, make_provider: Callable[..., OpenAIProvider]
) -> None:
    provider = make_provider()
    provider.embed(EmbedRequest(("x",), "text-embedding-3-small", "openai", extra={"seed": 1}))
    assert server.last_request.json()["seed"] == 1


def test_a_429_is_mapped(server: FakeOpenAI, make_provider: Callable[..., OpenAIProvider]) -> None:
    server.enqueue(Fault.status(429, retry_after=0.5))
    with pytest.raises(ProviderRateLimited) as caught:
        make_provider().embed(EmbedRequest(("x",), "text-embedding-3-small", "openai"))
    assert caught.value.retry_after == 0.5


def test_limits_and_exact_count(make_provider: Callable[..., OpenAIProvider]) -> None:
    assert make_provider().embed_limits("text-embedding-3-small") == EMBED_LIMITS
    assert (EMBED_LIMITS.max_inputs, EMBED_LIMITS.max_tokens) == (2048, 300_000)
    # text-embedding-3 counts with cl100k_base: exact, not the byte bound.
    assert count_text("hello world", "text-embedding-3-small") == 2


def test_proxy_embed_end_to_end_budgets_exactly(server: FakeOpenAI, api_key: str) -> None:
    from llmproxy import LLMBudget, Proxy

    environ = {"OPENAI_API_KEY": api_key, "OPENAI_BASE_URL": server.base_url}
    with Proxy(
        {},
        environ=environ,
        history="memory://",
        ledger="memory://",
        budgets=[LLMBudget(max_tokens=100)],
    ) as proxy:
        out = proxy.embed(["hello world", "good night moon"], dimensions=4)
        [usage] = proxy.usage()
    assert out.vectors == (
        tuple(fake_vector("hello world", 4)),
        tuple(fake_vector("good night moon", 4)),
    )
    assert (out.provider, out.model) == ("openai", "text-embedding-3-small")
    assert out.usage.input_tokens == 5 and out.usage.cost == pytest.approx(5 * 0.02 / 1e6)
    assert (usage.used, usage.reserved) == (5, 0)


def test_proxy_splits_at_openais_2048_inputs(server: FakeOpenAI, api_key: str) -> None:
    from llmproxy import Proxy

    environ = {"OPENAI_API_KEY": api_key, "OPENAI_BASE_URL": server.base_url}
    texts = [f"t{i}" for i in range(2049)]  # the fake refuses more than 2048 in one request
    with Proxy({}, environ=environ, history="memory://", ledger="memory://") as proxy:
        out = proxy.embed(texts, dimensions=2)
    sizes = [len(r.json()["input"]) for r in server.requests if r.path == "/v1/embeddings"]
    assert sizes == [2048, 1]
    assert out.vectors[2048] == tuple(fake_vector("t2048", 2))
    assert out.usage.input_tokens == 2049
