"""A third party's embedding-only provider: a BaseProvider with ``aembed`` alone.

It speaks OpenAI's ``/v1/embeddings`` with the standard library against FakeOpenAI, passes the
embeddings contract, serves ``proxy.embed`` under a budget, and refuses to chat by name.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator

import pytest

import llmproxy
from llmproxy import BaseProvider, LLMBudget, Proxy, UnsupportedContent
from llmproxy.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from llmproxy.plugins import Plugins
from llmproxy.registry import ProviderSettings, RegisterProvider
from llmproxy.secret import Secret
from llmproxy.types import EmbeddingResult, EmbedRequest, Usage
from llmproxy_testing._embeddings import fake_vector
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.provider_contract import EmbeddingContract

KEY = "sk-embed-only-0123456789wxyz"
_ERRORS: dict[int, type[ProviderError]] = {
    400: ProviderBadRequest,
    401: ProviderAuthError,
    429: ProviderRateLimited,
}


class Vectorizer(BaseProvider):
    """Embeddings only: ``aembed`` over http.client (in a worker thread)."""

    def _post(self, request: EmbedRequest) -> EmbeddingResult:
        url = urllib.parse.urlsplit(self.settings.base_url or "")
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
        body: dict[str, object] = {"model": request.model, "input": list(request.texts)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        key = self.settings.api_key.get() if self.settings.api_key else ""
        try:
            conn.request(
                "POST",
                url.path.rstrip("/") + "/embeddings",
                json.dumps(body),
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            data = json.loads(answer.read())
        finally:
            conn.close()
        if answer.status != 200:
            kind = _ERRORS.get(answer.status, ProviderUnavailable)
            retry = answer.getheader("retry-after")
            raise kind(
                str(data["error"]["message"]),
                provider=self.name,
                model=request.model,
                status=answer.status,
                retry_after=float(retry) if retry else None,
            )
        rows = sorted(data["data"], key=lambda row: row["index"])
        vectors = tuple(tuple(float(x) for x in row["embedding"]) for row in rows)
        return EmbeddingResult(vectors, Usage(data["usage"]["prompt_tokens"]), request.model)

    async def aembed(self, request: EmbedRequest) -> EmbeddingResult:
        return await asyncio.to_thread(self._post, request)


def settings(upstream: FakeOpenAI) -> ProviderSettings:
    return ProviderSettings("vectorizer", Secret(KEY), upstream.base_url)


class TestEmbeddingOnlyContract(EmbeddingContract):
    @pytest.fixture
    def upstream(self) -> Iterator[FakeOpenAI]:
        with FakeOpenAI(api_key=KEY) as server:
            yield server

    @pytest.fixture
    async def provider(self, upstream: FakeOpenAI) -> AsyncIterator[Vectorizer]:
        provider = Vectorizer(settings(upstream))
        yield provider
        provider.close()

    @pytest.fixture
    def embedding_model(self) -> str:
        return "vectors-1"


def test_it_serves_proxy_embed_and_refuses_to_chat() -> None:
    with FakeOpenAI(api_key=KEY) as upstream:

        class Plugin:
            @llmproxy.hookimpl
            def register_providers(self, register: RegisterProvider) -> None:
                register("vectorizer", lambda s: Vectorizer(settings(upstream)))

        with Proxy(
            {},
            plugins=Plugins(environ={}, entry_points=False, extra=[Plugin()]),
            environ={},
            history="memory://",
            ledger="memory://",
            budgets=[LLMBudget(max_tokens=100)],
        ) as proxy:
            out = proxy.embed(["one two", "three"], model="vectorizer/vectors-1", dimensions=3)
            assert out.vectors == (tuple(fake_vector("one two", 3)), tuple(fake_vector("three", 3)))
            [usage] = proxy.usage()
            assert (usage.used, usage.reserved) == (3, 0)
            with pytest.raises(UnsupportedContent, match="vectorizer: is an embeddings provider"):
                proxy.chat("hi", model="vectorizer/vectors-1")


def test_a_class_with_nothing_is_refused() -> None:
    class Nothing(BaseProvider):
        pass

    with pytest.raises(TypeError, match="aembed"):
        Nothing()
