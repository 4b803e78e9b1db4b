"""Gemini's embed_content (batchEmbedContents) through the real SDK against FakeGemini."""

from __future__ import annotations

import pytest

from llmproxy import LLMBudget
from llmproxy.errors import InvalidRequest, ProviderRateLimited
from llmproxy.types import EmbedRequest
from llmproxy_gemini.provider import EMBED_LIMITS, GeminiProvider
from llmproxy_testing._embeddings import fake_vector
from llmproxy_testing.fake_gemini import MAX_EMBED_BATCH, FakeGemini, Fault
from llmproxy_testing.proxies import ProxyMaker


def embed_bodies(server: FakeGemini) -> list[dict[str, object]]:
    return [r.json() for r in server.requests if r.path.endswith(":batchEmbedContents")]


async def test_wire_body_task_type_and_dimensions(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    request = EmbedRequest(
        ("first text", "second"),
        "gemini-embedding-001",
        "gemini",
        dimensions=8,
        extra={"task_type": "RETRIEVAL_DOCUMENT"},
    )
    result = await provider.aembed(request)
    [body] = embed_bodies(server)
    assert body == {
        "requests": [
            {
                "content": {"parts": [{"text": text}], "role": "user"},
                "taskType": "RETRIEVAL_DOCUMENT",
                "outputDimensionality": 8,
                "model": "models/gemini-embedding-001",
            }
            for text in ("first text", "second")
        ]
    }
    assert result.vectors == (tuple(fake_vector("first text", 8)), tuple(fake_vector("second", 8)))
    assert result.usage is None  # Gemini reports none: the Proxy counts the input


def test_sync_embed_and_errors(server: FakeGemini, provider: GeminiProvider) -> None:
    out = provider.embed(EmbedRequest(("x",), "gemini-embedding-001", "gemini"))
    assert out.vectors == (tuple(fake_vector("x")),)
    server.enqueue(Fault.status(429))
    with pytest.raises(ProviderRateLimited):
        provider.embed(EmbedRequest(("x",), "gemini-embedding-001", "gemini"))
    with pytest.raises(InvalidRequest, match="task_type"):
        provider.embed(EmbedRequest(("x",), "m", "gemini", extra={"nonsense": 1}))


async def test_proxy_splits_into_gemini_batches(server: FakeGemini, make_proxy: ProxyMaker) -> None:
    assert EMBED_LIMITS.max_inputs == MAX_EMBED_BATCH == 100
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    texts = [f"text {i}" for i in range(250)]
    out = await proxy.aembed(texts, model="gemini/gemini-embedding-001", dimensions=4)
    assert out.vectors == tuple(tuple(fake_vector(t, 4)) for t in texts)
    assert [len(b["requests"]) for b in embed_bodies(server)] == [100, 100, 50]  # type: ignore[arg-type]
    # No usage from Gemini: the input is counted (an upper bound) and marked estimated.
    assert out.usage.estimated and out.usage.input_tokens >= 250 * 2
    [usage] = proxy.usage()
    assert usage.used == out.usage.input_tokens


def test_the_deadline_goes_with_the_request(server: FakeGemini, provider: GeminiProvider) -> None:
    provider.embed(EmbedRequest(("x",), "gemini-embedding-001", "gemini", timeout=12.5))
    [sent] = [r for r in server.requests if r.path.endswith(":batchEmbedContents")]
    assert sent.headers.get("x-server-timeout") == "13"
