"""Embeddings through the Proxy: order, batches, all-or-nothing budgets, retries, fallbacks."""

from __future__ import annotations

import hashlib

import pytest

import llmproxy
from llmproxy import (
    BaseProvider,
    BudgetExceeded,
    CallEvent,
    ChatRequest,
    EmbeddingResult,
    EmbedRequest,
    LLMBudget,
    Message,
    ProviderUnavailable,
    Proxy,
    RequestsPerMinute,
    UnsupportedContent,
    Usage,
)
from llmproxy.plugins import Plugins
from llmproxy.provider import EmbedLimits
from llmproxy.registry import RegisterProvider


def vector(text: str) -> tuple[float, ...]:
    """A deterministic 4-dimensional vector of ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return tuple(b / 255 for b in digest[:4])


class Vectors(BaseProvider):
    """An embedding-only provider: 3 texts and 10 tokens per batch, a token per word."""

    batches: list[tuple[str, ...]] = []
    failures: list[BaseException] = []

    def embed_limits(self, model: str) -> EmbedLimits:
        return EmbedLimits(max_inputs=3, max_tokens=10)

    def count_text_tokens(self, text: str, model: str) -> int:
        return len(text.split())

    async def aembed(self, request: EmbedRequest) -> EmbeddingResult:
        if self.failures:
            raise self.failures.pop(0)
        type(self).batches.append(request.texts)
        tokens = sum(len(t.split()) for t in request.texts)
        return EmbeddingResult(tuple(vector(t) for t in request.texts), Usage(tokens))


class Seen:
    def __init__(self) -> None:
        self.events: list[CallEvent] = []

    @llmproxy.hookimpl
    def on_response(self, event: CallEvent) -> None:
        self.events.append(event)

    @llmproxy.hookimpl
    def on_error(self, event: CallEvent) -> None:
        self.events.append(event)


@pytest.fixture
def seen() -> Seen:
    Vectors.batches = []
    Vectors.failures = []
    return Seen()


def make_proxy(seen: Seen, **kwargs: object) -> Proxy:
    class Plugin:
        @llmproxy.hookimpl
        def register_providers(self, register: RegisterProvider) -> None:
            register("vec", Vectors)
            register("vec2", Vectors)

    cfg = {"limit_wait": 0, "retry": {"initial_backoff": 0.001, "jitter": 0.0}}
    return Proxy(
        cfg,
        plugins=Plugins(environ={}, entry_points=False, extra=[Plugin(), seen]),
        environ={},
        history="memory://",
        ledger="memory://",
        **kwargs,  # type: ignore[arg-type]
    )


def test_order_kept_across_batches(seen: Seen) -> None:
    texts = [f"text number {i}" for i in range(8)]  # 3 tokens each: 3 per batch by tokens
    with make_proxy(seen) as proxy:
        out = proxy.embed(texts, model="vec/m")
    assert out.vectors == tuple(vector(t) for t in texts)
    assert [len(b) for b in Vectors.batches] == [3, 3, 2]
    assert out.usage.input_tokens == 24 and out.usage.output_tokens == 0
    assert (out.model, out.provider) == ("m", "vec")
    [event] = seen.events
    assert (event.operation, event.outcome, event.attempts) == ("embed", "ok", 3)


def test_batches_split_by_tokens_at_the_boundary(seen: Seen) -> None:
    texts = ["a b c d e", "f g h i j", "k"]  # 5 + 5 = 10 fits; the 11th token starts a batch
    with make_proxy(seen) as proxy:
        proxy.embed(texts, model="vec/m")
    assert Vectors.batches == [("a b c d e", "f g h i j"), ("k",)]


def test_a_single_string_is_one_vector(seen: Seen) -> None:
    with make_proxy(seen) as proxy:
        out = proxy.embed("hello world", model="vec/m")
    assert out.vectors == (vector("hello world"),)


async def test_async_embed(seen: Seen) -> None:
    async with make_proxy(seen) as proxy:
        out = await proxy.aembed(["one", "two", "three", "four"], model="vec/m")
    assert out.vectors == tuple(vector(t) for t in ["one", "two", "three", "four"])
    assert len(Vectors.batches) == 2


def test_refusal_sends_nothing(seen: Seen) -> None:
    with make_proxy(seen, budgets=[LLMBudget(max_tokens=20)]) as proxy:
        texts = ["w " * 5] * 5  # 25 tokens in all, over the 20 left: nothing is sent
        with pytest.raises(BudgetExceeded):
            proxy.embed(texts, model="vec/m")
        assert Vectors.batches == []
        out = proxy.embed(["w " * 5] * 3, model="vec/m")
        [usage] = proxy.usage()
    assert out.usage.input_tokens == 15
    assert (usage.used, usage.reserved) == (15, 0)
    assert seen.events[0].outcome == "error" and seen.events[0].operation == "embed"


def test_every_batch_counts_as_a_request(seen: Seen) -> None:
    with make_proxy(seen, budgets=[RequestsPerMinute(limit=10)]) as proxy:
        proxy.embed([f"t{i}" for i in range(7)], model="vec/m")
        [usage] = proxy.usage()
    assert usage.used == 3


def test_retry_then_success(seen: Seen) -> None:
    Vectors.failures = [ProviderUnavailable("down", provider="vec", model="m", status=503)]
    with make_proxy(seen) as proxy:
        out = proxy.embed(["a", "b"], model="vec/m")
    assert len(out.vectors) == 2
    assert seen.events[0].attempts == 2


def test_fallback_starts_from_the_first_batch(seen: Seen) -> None:
    down = ProviderUnavailable("down", provider="vec", model="m", status=503)
    with make_proxy(seen, budgets=[LLMBudget(max_tokens=1000)]) as proxy:
        Vectors.failures = []
        texts = [f"t{i}" for i in range(5)]

        calls = {"n": 0}
        original = Vectors.aembed

        async def flaky(self: Vectors, request: EmbedRequest) -> EmbeddingResult:
            calls["n"] += 1
            if self.name == "vec" and calls["n"] > 1:  # the second batch fails for good
                raise down
            return await original(self, request)

        Vectors.aembed = flaky  # type: ignore[method-assign]
        try:
            out = proxy.embed(texts, model="vec/m", fallbacks=["vec2/m2"])
        finally:
            Vectors.aembed = original  # type: ignore[method-assign]
        [usage] = proxy.usage()
    assert (out.provider, out.model) == ("vec2", "m2")
    assert out.vectors == tuple(vector(t) for t in texts)
    # vec's first batch (3 tokens) was used, then vec2 embedded all 5 anew.
    assert out.usage.input_tokens == 3 + 5
    assert (usage.used, usage.reserved) == (8, 0)


def test_a_chat_only_provider_has_no_embeddings(seen: Seen) -> None:
    class Chatty(BaseProvider):
        async def achat(self, request: ChatRequest) -> llmproxy.Completion:
            return llmproxy.Completion(Message("assistant", "hi"), None, request.model)

    class Plugin:
        @llmproxy.hookimpl
        def register_providers(self, register: RegisterProvider) -> None:
            register("chatty", Chatty)

    with Proxy(
        {},
        plugins=Plugins(environ={}, entry_points=False, extra=[Plugin()]),
        environ={},
        history="memory://",
        ledger="memory://",
        budgets=[LLMBudget(max_tokens=100)],
    ) as proxy:
        with pytest.raises(UnsupportedContent, match="chatty: has no embeddings model"):
            proxy.embed("hi", model="chatty/m")
        [usage] = proxy.usage()
        assert (usage.used, usage.reserved) == (0, 0)


def test_an_embedding_only_provider_refuses_to_chat(seen: Seen) -> None:
    with (
        make_proxy(seen) as proxy,
        pytest.raises(UnsupportedContent, match="vec: is an embeddings provider"),
    ):
        proxy.chat("hi", model="vec/m")


@pytest.mark.parametrize("texts", [[], [""], ["ok", 3], b"bytes"])
def test_bad_texts_are_refused_by_name(seen: Seen, texts: object) -> None:
    with make_proxy(seen) as proxy, pytest.raises(llmproxy.InvalidRequest, match="texts"):
        proxy.embed(texts, model="vec/m")  # type: ignore[arg-type]


def test_bad_dimensions_are_refused(seen: Seen) -> None:
    with make_proxy(seen) as proxy, pytest.raises(llmproxy.InvalidRequest, match="dimensions"):
        proxy.embed("x", model="vec/m", dimensions=0)
