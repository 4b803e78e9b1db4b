r"""A contract test suite for providers, to run against your own provider and a fake upstream.

Subclass :class:`ProviderContract` in a test module under a ``Test`` name and provide three
fixtures: ``upstream`` (a running fake server from :mod:`llmproxy_testing` that speaks your
service's wire format and takes scripted :class:`~llmproxy_testing._http.Fault` and
:class:`~llmproxy_testing._http.Reply` items), ``provider`` (your provider, aimed at
``upstream``) and ``model`` (the model name to ask for)::

    from llmproxy_testing.fake_openai import FakeOpenAI
    from llmproxy_testing.provider_contract import ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def upstream(self):
            with FakeOpenAI(api_key="sk-test") as server:
                yield server

        @pytest.fixture
        async def provider(self, upstream):
            provider = MyProvider(api_key="sk-test", base_url=upstream.base_url)
            yield provider
            await provider.aclose()

        @pytest.fixture
        def model(self):
            return "my-model"

What the suite holds a provider to, sync and async, plain and streamed:

- answers: the text exactly as the upstream sent it, reasoning never inside it, finish reasons
  mapped onto the core's names (``stop``, ``length``, ``tool_calls``), usage with
  ``input_tokens``/``output_tokens`` and consistent cached/reasoning parts; streams deliver the
  text in more than one piece and usage with (or after) the last piece;
- ``request.max_output_tokens`` is sent upstream as the service's output limit (the fakes cut
  the answer at it and report ``length``);
- tool calls come back as :class:`~llmproxy.types.ToolCall` values and their results can be
  sent back in a later request;
- errors map onto :mod:`llmproxy.errors` the same way for every provider: 400
  ``ProviderBadRequest``, 401 ``ProviderAuthError``, 429 ``ProviderRateLimited`` with the
  service's ``retry_after``, 500 ``ProviderUnavailable``, a connection dropped before or during
  an answer ``ProviderConnectionError``, a body that is not JSON ``ProviderResponseError``, each
  with ``status`` (when there was one) and the provider's name;
- ``count_tokens`` is at least 1, grows with the conversation and is never below what the
  upstream counted; ``count_text_tokens`` grows with the text;
- ``close``/``aclose`` release every connection, may be called twice, and leave the provider
  usable (it reconnects); an abandoned stream releases its connection.

Providers that embed also subclass :class:`EmbeddingContract` (with an ``embedding_model``
fixture): ``embed_limits`` gives :class:`~llmproxy.provider.EmbedLimits`; ``embed``/``aembed``
return one vector of floats per text, in order, all of one length (``dimensions`` when asked),
the same text giving the same vector; usage is None or counts the input; failures map onto
:mod:`llmproxy.errors` as for chat.

The suite relies on the behaviour every fake in :mod:`llmproxy_testing` shares: the default
answer echoes the last user message (``"Echo: ..."``), tokens are counted as words, and an
answer longer than the output cap is cut at it. It needs ``pytest`` and ``pytest-asyncio``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pytest

from llmproxy.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderResponseError,
    ProviderUnavailable,
)
from llmproxy.provider import EmbeddingProvider, EmbedLimits, Provider
from llmproxy.types import (
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingResult,
    EmbedRequest,
    Message,
    ToolCall,
    Usage,
)
from llmproxy_testing._http import FakeServer, Fault, Reply

__all__ = ["EmbeddingContract", "Mode", "ProviderContract"]

Mode = Literal["sync", "async"]
MODES: tuple[Mode, ...] = ("sync", "async")

ANSWER = "The quick brown fox jumps over the lazy dog"
LONG_ANSWER = "one two three four five six seven eight nine ten eleven twelve"

# status, expected class, retryable
_STATUS_CASES = (
    (400, ProviderBadRequest, False),
    (401, ProviderAuthError, False),
    (429, ProviderRateLimited, True),
    (500, ProviderUnavailable, True),
)


async def _eventually(check: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class ProviderContract:
    """The provider contract, for subclasses under a ``Test`` name.

    Subclasses provide the ``provider``, ``upstream`` and ``model`` fixtures (see the module's
    docstring).
    """

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def request(
        provider: Provider,
        model: str,
        text: str = "Hello there",
        *,
        messages: tuple[Message, ...] | None = None,
        **kwargs: Any,
    ) -> ChatRequest:
        """Build a request for ``provider`` with one user message (or ``messages``)."""
        return ChatRequest(messages or (Message("user", text),), model, provider.name, **kwargs)

    @staticmethod
    async def complete(provider: Provider, request: ChatRequest, mode: Mode) -> Completion:
        """Make one non-streamed attempt through the sync or the async method."""
        if mode == "sync":
            return provider.chat(request)
        return await provider.achat(request)

    @staticmethod
    async def collect(
        provider: Provider, request: ChatRequest, mode: Mode, into: list[Chunk] | None = None
    ) -> list[Chunk]:
        """Read a whole stream into ``into`` (so a test sees what came before an error)."""
        chunks: list[Chunk] = [] if into is None else into
        if mode == "sync":
            for chunk in provider.stream(request):
                chunks.append(chunk)
        else:
            async for chunk in provider.astream(request):
                chunks.append(chunk)
        return chunks

    @staticmethod
    def check_usage(usage: Usage | None, *, min_output: int = 1) -> Usage:
        """Assert that a usage is complete and consistent, and return it."""
        assert usage is not None, "the provider reported no usage"
        assert usage.input_tokens >= 1
        assert usage.output_tokens >= min_output
        assert 0 <= usage.cached_input_tokens <= usage.input_tokens
        assert 0 <= usage.cache_write_tokens <= usage.input_tokens - usage.cached_input_tokens
        assert 0 <= usage.cache_write_1h_tokens <= usage.cache_write_tokens
        assert 0 <= usage.reasoning_tokens <= usage.output_tokens
        assert not usage.estimated
        return usage

    # -- the provider itself ----------------------------------------------------------------

    def test_is_a_provider(self, provider: Provider) -> None:
        """The object satisfies the Provider protocol and has a name."""
        assert isinstance(provider, Provider)
        assert isinstance(provider.name, str)
        assert provider.name

    def test_max_output_tokens_is_a_positive_int_or_none(
        self, provider: Provider, model: str
    ) -> None:
        """The model's own output limit is known (a positive int) or None."""
        limit = provider.max_output_tokens(model)
        assert limit is None or (isinstance(limit, int) and limit > 0)

    # -- answers ------------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_answer_text_finish_reason_and_usage(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """A plain answer: its exact text, ``stop``, and complete usage."""
        upstream.enqueue(Reply(text=ANSWER))
        completion = await self.complete(provider, self.request(provider, model), mode)
        assert completion.message.role == "assistant"
        assert completion.message.content == ANSWER
        assert ANSWER not in (completion.message.reasoning or "")
        assert completion.finish_reason == "stop"
        assert completion.message.tool_calls == ()
        assert isinstance(completion.model, str)
        assert completion.model
        self.check_usage(completion.usage, min_output=len(ANSWER.split()))

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_reasoning_stays_out_of_the_answer(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """Reasoning the upstream sends lands on ``Message.reasoning``, never in the text."""
        upstream.enqueue(Reply(text=ANSWER, reasoning="First step, then second step."))
        completion = await self.complete(provider, self.request(provider, model), mode)
        assert completion.message.content == ANSWER
        reasoning = completion.message.reasoning
        assert reasoning is None or ("step" in reasoning and ANSWER not in reasoning)
        usage = self.check_usage(completion.usage, min_output=len(ANSWER.split()))
        if reasoning:
            assert usage.reasoning_tokens >= 1

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_the_whole_conversation_is_sent(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """System, earlier turns and the last user message all reach the upstream."""
        messages = (
            Message("system", "Be brief."),
            Message("user", "first question"),
            Message("assistant", "first answer"),
            Message("user", "second question"),
        )
        one = await self.complete(provider, self.request(provider, model, "second question"), mode)
        many = await self.complete(provider, self.request(provider, model, messages=messages), mode)
        assert many.message.content.endswith("second question")
        assert one.usage is not None
        assert many.usage is not None
        assert many.usage.input_tokens > one.usage.input_tokens

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_stream_delivers_text_in_pieces_then_finish_and_usage(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """A stream: several text pieces making the exact text, ``stop``, usage at the end."""
        upstream.enqueue(Reply(text=ANSWER))
        chunks = await self.collect(provider, self.request(provider, model), mode)
        texts = [i for i, c in enumerate(chunks) if c.text]
        assert "".join(c.text for c in chunks) == ANSWER
        assert len(texts) >= 2, "the answer did not arrive in pieces"
        assert ANSWER not in "".join(c.reasoning for c in chunks)
        finishes = [c.finish_reason for c in chunks if c.finish_reason is not None]
        assert finishes
        assert set(finishes) == {"stop"}
        usages = [i for i, c in enumerate(chunks) if c.usage is not None]
        assert usages, "the stream carried no usage"
        assert usages[-1] >= texts[-1], "usage came before the last piece of text"
        self.check_usage(chunks[usages[-1]].usage, min_output=len(ANSWER.split()))

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_output_cap_is_sent_upstream(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """``max_output_tokens`` reaches the upstream: the answer is cut there, ``length``."""
        upstream.enqueue(Reply(text=LONG_ANSWER))
        request = self.request(provider, model, max_output_tokens=3)
        completion = await self.complete(provider, request, mode)
        assert completion.finish_reason == "length"
        assert len(completion.message.content.split()) <= 3
        assert LONG_ANSWER.startswith(completion.message.content)
        usage = self.check_usage(completion.usage)
        assert usage.output_tokens <= 3

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_stream_output_cap_is_sent_upstream(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """The cap holds for streams too."""
        upstream.enqueue(Reply(text=LONG_ANSWER))
        request = self.request(provider, model, max_output_tokens=3)
        chunks = await self.collect(provider, request, mode)
        text = "".join(c.text for c in chunks)
        assert len(text.split()) <= 3
        assert LONG_ANSWER.startswith(text)
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
        usage = [c.usage for c in chunks if c.usage is not None][-1]
        assert self.check_usage(usage).output_tokens <= 3

    # -- tools --------------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_tool_calls_come_back_and_results_go_up(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """A tool call is a ToolCall with JSON arguments; its result can be sent back."""
        upstream.enqueue(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
        question = Message("user", "Weather in Oslo?")
        first = await self.complete(
            provider, self.request(provider, model, messages=(question,)), mode
        )
        assert first.finish_reason == "tool_calls"
        [call] = first.message.tool_calls
        assert call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Oslo"}
        assert call.id
        result = Message("tool", '{"celsius": 21}', tool_call_id=call.id)
        messages = (question, first.message, result)
        second = await self.complete(
            provider, self.request(provider, model, messages=messages), mode
        )
        assert second.finish_reason == "stop"
        assert second.message.content.endswith("Weather in Oslo?")

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_streamed_tool_calls(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """Streamed tool calls arrive whole, with ``tool_calls`` as the finish reason."""
        upstream.enqueue(Reply(tool_calls=[{"name": "lookup", "arguments": '{"q": "llm"}'}]))
        chunks = await self.collect(provider, self.request(provider, model), mode)
        calls: list[ToolCall] = [call for c in chunks for call in c.tool_calls]
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("lookup", {"q": "llm"})]
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]

    # -- errors -------------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize(("status", "expected", "retryable"), _STATUS_CASES)
    async def test_http_errors_map_onto_the_core_tree(
        self,
        provider: Provider,
        upstream: FakeServer,
        model: str,
        mode: Mode,
        status: int,
        expected: type[ProviderError],
        retryable: bool,
    ) -> None:
        """400/401/429/500 become the core's classes with status, retry_after and the name."""
        upstream.enqueue(Fault.status(status, retry_after=1.5 if status == 429 else None))
        with pytest.raises(expected) as info:
            await self.complete(provider, self.request(provider, model), mode)
        error = info.value
        assert error.status == status
        assert error.provider == provider.name
        assert error.retryable is retryable
        if status == 429:
            assert error.retry_after == pytest.approx(1.5, abs=0.01)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize(("status", "expected", "retryable"), _STATUS_CASES[2:])
    async def test_stream_http_errors_map_onto_the_core_tree(
        self,
        provider: Provider,
        upstream: FakeServer,
        model: str,
        mode: Mode,
        status: int,
        expected: type[ProviderError],
        retryable: bool,
    ) -> None:
        """A stream refused before its first byte maps the same way."""
        upstream.enqueue(Fault.status(status, retry_after=2.0 if status == 429 else None))
        with pytest.raises(expected) as info:
            await self.collect(provider, self.request(provider, model), mode)
        assert info.value.status == status
        assert info.value.retryable is retryable
        if status == 429:
            assert info.value.retry_after == pytest.approx(2.0, abs=0.01)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_dropped_stream_is_a_connection_error(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """A stream that breaks midway raises ProviderConnectionError after what arrived."""
        upstream.enqueue(Fault.drop_after(3))
        chunks: list[Chunk] = []
        request = self.request(provider, model, "alpha beta gamma delta epsilon zeta eta theta")
        with pytest.raises(ProviderConnectionError) as info:
            await self.collect(provider, request, mode, into=chunks)
        assert info.value.provider == provider.name
        assert info.value.retryable
        assert all(c.finish_reason is None for c in chunks)
        assert "Echo: alpha beta gamma delta epsilon zeta eta theta".startswith(
            "".join(c.text for c in chunks)
        )

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_dropped_connection_is_a_connection_error(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """A connection closed before any answer raises ProviderConnectionError."""
        upstream.enqueue(Fault.drop_after(0))
        with pytest.raises(ProviderConnectionError):
            await self.complete(provider, self.request(provider, model), mode)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_malformed_answer_is_a_response_error(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """A 200 answer that is not JSON raises ProviderResponseError (retryable)."""
        upstream.enqueue(Fault.malformed())
        with pytest.raises(ProviderResponseError) as info:
            await self.complete(provider, self.request(provider, model), mode)
        assert info.value.retryable

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_next_call_after_an_error_succeeds(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """One attempt per call (no hidden retries); an error leaves the provider usable."""
        before = len(upstream.requests)
        upstream.enqueue(Fault.status(500))
        with pytest.raises(ProviderUnavailable):
            await self.complete(provider, self.request(provider, model), mode)
        assert len(upstream.requests) == before + 1, "the failed call was retried"
        completion = await self.complete(provider, self.request(provider, model), mode)
        assert completion.message.content == "Echo: Hello there"
        assert len(upstream.requests) == before + 2

    # -- estimates ------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_count_tokens_is_positive_growing_and_never_below_the_upstream(
        self, provider: Provider, upstream: FakeServer, model: str
    ) -> None:
        """Input estimates: at least 1, growing with the conversation, never below the count."""
        short = (Message("user", "Hello there"),)
        longer = (
            *short,
            Message("assistant", "General Kenobi, you are a bold one."),
            Message("user", "Tell me more about it, please."),
        )
        small = provider.count_tokens(short, model)
        big = provider.count_tokens(longer, model)
        assert small >= 1
        assert big > small
        for messages, estimate in ((short, small), (longer, big)):
            request = self.request(provider, model, messages=messages)
            usage = (await self.complete(provider, request, "async")).usage
            assert usage is not None
            assert estimate >= usage.input_tokens

    def test_count_text_tokens_grows_with_the_text(self, provider: Provider, model: str) -> None:
        """Output-text counts: 0 or more for nothing, growing with the text."""
        text = "A short sentence to count."
        assert provider.count_text_tokens("", model) >= 0
        one = provider.count_text_tokens(text, model)
        assert one >= 1
        assert provider.count_text_tokens(text + " " + text, model) > one

    # -- connections --------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_close_releases_connections_and_may_be_repeated(
        self, provider: Provider, upstream: FakeServer, model: str
    ) -> None:
        """``close`` frees the sync connections, twice is fine, and the provider reconnects."""
        provider.chat(self.request(provider, model))
        provider.close()
        provider.close()
        assert await _eventually(lambda: upstream.connection_count == 0)
        assert provider.chat(self.request(provider, model)).message.content == "Echo: Hello there"
        provider.close()

    @pytest.mark.asyncio
    async def test_aclose_releases_connections_and_may_be_repeated(
        self, provider: Provider, upstream: FakeServer, model: str
    ) -> None:
        """``aclose`` frees the async connections too, twice is fine, the provider reconnects."""
        await provider.achat(self.request(provider, model))
        provider.chat(self.request(provider, model))
        await provider.aclose()
        await provider.aclose()
        assert await _eventually(lambda: upstream.connection_count == 0)
        completion = await provider.achat(self.request(provider, model))
        assert completion.message.content == "Echo: Hello there"
        await provider.aclose()

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", MODES)
    async def test_abandoned_stream_releases_its_connection(
        self, provider: Provider, upstream: FakeServer, model: str, mode: Mode
    ) -> None:
        """Closing a stream early closes its connection; the next call works."""
        upstream.enqueue(Reply(text=LONG_ANSWER, chunk_delay=0.02))
        request = self.request(provider, model)
        first: list[str] = []
        if mode == "sync":
            iterator = provider.stream(request)
            for chunk in iterator:
                if chunk.text:
                    first.append(chunk.text)
                    break
            close: Callable[[], object] = getattr(iterator, "close", lambda: None)
            close()
        else:
            aiterator = provider.astream(request)
            async for chunk in aiterator:
                if chunk.text:
                    first.append(chunk.text)
                    break
            aclose: Callable[[], Awaitable[object]] | None = getattr(aiterator, "aclose", None)
            if aclose is not None:
                await aclose()
        assert first
        assert LONG_ANSWER.startswith(first[0])
        assert await _eventually(lambda: upstream.connection_count == 0)
        completion = await self.complete(provider, self.request(provider, model), mode)
        assert completion.message.content == "Echo: Hello there"


class EmbeddingContract:
    """The embeddings contract, for providers that declare embeddings (subclass it as well).

    Subclasses provide the ``provider``, ``upstream`` and ``embedding_model`` fixtures; the
    provider may be an embedding-only one (then subclass only this).
    """

    TEXTS = ("the cat sat on the mat", "a dog barked", "the cat sat on the mat")

    @staticmethod
    async def embed(
        provider: EmbeddingProvider, request: EmbedRequest, mode: Mode
    ) -> EmbeddingResult:
        """One attempt through the sync or the async method."""
        if mode == "sync":
            return provider.embed(request)
        return await provider.aembed(request)

    def test_is_an_embedding_provider(self, provider: Any, embedding_model: str) -> None:
        """``embed``, ``aembed`` and ``embed_limits``, with limits of at least one input."""
        assert isinstance(provider, EmbeddingProvider)
        limits = provider.embed_limits(embedding_model)
        assert isinstance(limits, EmbedLimits)
        assert limits.max_inputs >= 1
        assert limits.max_tokens is None or limits.max_tokens >= 1

    @pytest.mark.parametrize("mode", MODES)
    async def test_a_vector_per_text_in_order(
        self, provider: EmbeddingProvider, embedding_model: str, mode: Mode
    ) -> None:
        """One vector per text, in order, of one length; the same text, the same vector."""
        request = EmbedRequest(self.TEXTS, embedding_model, provider.name)
        result = await self.embed(provider, request, mode)
        assert isinstance(result, EmbeddingResult)
        assert len(result.vectors) == len(self.TEXTS)
        first, second, again = result.vectors
        assert len(first) >= 1
        assert len(first) == len(second) == len(again)
        assert all(isinstance(x, float) for vector in result.vectors for x in vector)
        assert first == again
        assert first != second
        if result.usage is not None:
            assert result.usage.input_tokens >= 1
            assert result.usage.output_tokens == 0

    @pytest.mark.parametrize("mode", MODES)
    async def test_dimensions_are_sent(
        self, provider: EmbeddingProvider, embedding_model: str, mode: Mode
    ) -> None:
        """``dimensions`` asks for vectors of that length."""
        request = EmbedRequest(("one text",), embedding_model, provider.name, dimensions=5)
        result = await self.embed(provider, request, mode)
        assert [len(v) for v in result.vectors] == [5]

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize(("status", "kind", "retryable"), _STATUS_CASES)
    async def test_errors_map_onto_the_core(
        self,
        provider: EmbeddingProvider,
        upstream: FakeServer,
        embedding_model: str,
        mode: Mode,
        status: int,
        kind: type[ProviderError],
        retryable: bool,
    ) -> None:
        """400/401/429/500 become the core's classes, as for chat."""
        upstream.enqueue(Fault.status(status, retry_after=1.5 if status == 429 else None))
        request = EmbedRequest(("x",), embedding_model, provider.name)
        with pytest.raises(kind) as info:
            await self.embed(provider, request, mode)
        assert info.value.retryable is retryable
        assert info.value.status == status
        assert info.value.provider == provider.name
