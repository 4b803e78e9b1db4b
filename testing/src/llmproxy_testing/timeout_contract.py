r"""A contract test suite for a provider's time limits against a hung or slow upstream.

A request's ``timeout`` (the call's deadline left) bounds the whole attempt; the provider's read
timeout (its ``timeout`` argument) bounds each silence of a stream. The fake hangs until the
test's teardown releases it (``Fault.hang``), so no test waits on a long sleep; the elapsed-time
bounds only guard against a hang (:data:`GUARD`), they measure nothing.

Subclass :class:`ProviderTimeoutContract` in a test module under a ``Test`` name and provide
four fixtures: ``upstream`` (a running fake server from :mod:`llmproxy_testing`),
``provider_factory`` (a callable building your provider aimed at ``upstream`` from keyword
arguments, at least ``timeout``, the read timeout in seconds; it closes what it built after the
test), ``model`` (the model name to ask for) and ``provider_name`` (the name your provider puts
on its errors)::

    from llmproxy_testing.fake_openai import FakeOpenAI
    from llmproxy_testing.timeout_contract import ProviderTimeoutContract

    class TestMyProviderTimeouts(ProviderTimeoutContract):
        @pytest.fixture
        def upstream(self):
            with FakeOpenAI(api_key="sk-test") as server:
                yield server

        @pytest.fixture
        async def provider_factory(self, upstream):
            made = []

            def build(**kwargs):
                made.append(MyProvider(api_key="sk-test", base_url=upstream.base_url, **kwargs))
                return made[-1]

            yield build
            for provider in made:
                await provider.aclose()

        @pytest.fixture
        def model(self):
            return "my-model"

        @pytest.fixture
        def provider_name(self):
            return "my-provider"

What the suite holds a provider to, once through the sync methods and once through the async
ones (the ``mode`` fixture; a provider with more than one async transport overrides it, see
:meth:`ProviderTimeoutContract.mode`):

- a whole call past its deadline is a retryable
  :class:`~llmproxy.errors.ProviderTimeout` carrying the provider's name, long before the read
  timeout, and the connection is let go;
- a stream with no first chunk by its deadline is a timeout with no chunk delivered;
- a stream that stalls between chunks hits the read timeout, after the text that came;
- a stream that keeps flowing still ends at its deadline (the error says ``deadline``);
- a whole (non-streamed) call may stay silent longer than the read timeout while within its
  deadline (the :meth:`~ProviderTimeoutContract.check_deadline_request` hook then sees the
  request that went up, for a provider that sends its deadline upstream);
- without a deadline, the read timeout bounds a whole call;
- a deadline already past fails at once, without a request upstream.

The suite relies on the behaviour every fake in :mod:`llmproxy_testing` shares: the default
answer echoes the last user message (``"Echo: ..."``), ``Fault.hang``/``Fault.delay`` hold an
answer, and :attr:`~llmproxy_testing._http.FakeServer.connection_count` counts open client
connections. It needs ``pytest`` and ``pytest-asyncio``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmproxy.errors import ProviderTimeout
from llmproxy.provider import Provider
from llmproxy.types import ChatRequest, Chunk, Completion, Message
from llmproxy_testing._http import FakeServer, Fault, RecordedRequest, Reply
from llmproxy_testing.provider_contract import MODES, Mode

__all__ = ["GUARD", "LONG_ANSWER", "ProviderFactory", "ProviderTimeoutContract"]

#: Far above every limit the suite sets: a test that gets near it has hung, not timed out.
GUARD = 8.0
#: 400 words: at 0.05 s a chunk, a stream that flows for 20 s and is never silent.
LONG_ANSWER = " ".join(f"word{i}" for i in range(400))

#: Builds a provider aimed at the upstream from keyword arguments (``timeout``: the read timeout).
ProviderFactory = Callable[..., Provider]


class ProviderTimeoutContract:
    """The timeout contract, for subclasses under a ``Test`` name.

    Subclasses provide the ``upstream``, ``provider_factory``, ``model`` and ``provider_name``
    fixtures (see the module's docstring).
    """

    # -- fixtures and hooks -----------------------------------------------------------------

    @pytest.fixture(params=MODES)
    def mode(self, request: pytest.FixtureRequest) -> Mode:
        """Once through the sync methods, once through the async ones.

        A subclass may override this fixture to run the suite more times, e.g. once per async
        transport (its own parametrized fixture choosing the transport, this one returning
        ``"sync"`` or ``"async"`` from it).
        """
        mode: Mode = request.param
        return mode

    @pytest.fixture
    def release(self) -> Iterator[threading.Event]:
        """The event that ends the fake's hang: set when the test is done."""
        event = threading.Event()
        yield event
        event.set()

    def check_deadline_request(self, request: RecordedRequest, deadline: float) -> None:
        """Check the upstream request of a whole call made with ``deadline`` seconds left.

        The default checks nothing; a provider that tells its upstream the deadline (a header,
        a body field) overrides this to assert it was sent.
        """

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def request(
        model: str, provider_name: str, text: str = "Hello there", **kwargs: Any
    ) -> ChatRequest:
        """Build a request with one user message (``timeout=`` sets the deadline left)."""
        return ChatRequest((Message("user", text),), model, provider_name, **kwargs)

    @staticmethod
    async def complete(provider: Provider, request: ChatRequest, mode: Mode) -> Completion:
        """Make one non-streamed attempt through the sync or the async method."""
        if mode == "sync":
            return provider.chat(request)
        return await provider.achat(request)

    @staticmethod
    async def collect(
        provider: Provider, request: ChatRequest, mode: Mode, into: list[Chunk]
    ) -> None:
        """Read a whole stream into ``into`` (so a test sees what came before an error)."""
        if mode == "sync":
            for chunk in provider.stream(request):
                into.append(chunk)
        else:
            async for chunk in provider.astream(request):
                into.append(chunk)

    @staticmethod
    async def closed(upstream: FakeServer) -> bool:
        """Whether the client let go of its connection to the fake (waits for it, up to GUARD)."""
        end = time.monotonic() + GUARD
        # The count belongs to the fake's thread: polled, while this loop runs the client's
        # closing.
        while upstream.connection_count and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return upstream.connection_count == 0

    # -- the deadline -------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_whole_call_past_its_deadline_is_a_timeout(
        self,
        provider_factory: ProviderFactory,
        upstream: FakeServer,
        release: threading.Event,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        """A hung whole call ends at its deadline: a retryable timeout naming the provider."""
        p = provider_factory(timeout=30.0)  # the read timeout would wait far longer
        upstream.enqueue(Fault.hang(release))
        started = time.monotonic()
        with pytest.raises(ProviderTimeout) as info:
            await self.complete(p, self.request(model, provider_name, timeout=0.3), mode)
        assert time.monotonic() - started < GUARD
        assert info.value.retryable
        assert info.value.provider == provider_name
        assert await self.closed(upstream)

    @pytest.mark.asyncio
    async def test_stream_without_a_first_chunk_by_its_deadline_is_a_timeout(
        self,
        provider_factory: ProviderFactory,
        upstream: FakeServer,
        release: threading.Event,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        """A stream that never starts ends at its deadline, with no chunk delivered."""
        p = provider_factory(timeout=30.0)
        upstream.enqueue(Fault.hang(release))
        chunks: list[Chunk] = []
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await self.collect(p, self.request(model, provider_name, timeout=0.3), mode, chunks)
        assert time.monotonic() - started < GUARD
        assert chunks == []
        assert await self.closed(upstream)

    @pytest.mark.asyncio
    async def test_stream_that_stalls_hits_the_read_timeout(
        self,
        provider_factory: ProviderFactory,
        upstream: FakeServer,
        release: threading.Event,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        """A stream silent between two chunks ends at the read timeout, after its text."""
        p = provider_factory(timeout=0.3)  # the read timeout, between two chunks
        upstream.enqueue(Fault.hang(release, after=2))
        chunks: list[Chunk] = []
        started = time.monotonic()
        req = self.request(model, provider_name, "one two three four", timeout=60.0)
        with pytest.raises(ProviderTimeout):
            await self.collect(p, req, mode, chunks)
        assert time.monotonic() - started < GUARD
        assert "".join(c.text for c in chunks).strip()  # text arrived before the stall
        assert await self.closed(upstream)

    @pytest.mark.asyncio
    async def test_stream_that_keeps_flowing_still_ends_at_its_deadline(
        self,
        provider_factory: ProviderFactory,
        upstream: FakeServer,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        """A stream never silent for the read timeout still ends at its deadline."""
        p = provider_factory(timeout=30.0)
        upstream.enqueue(Reply(text=LONG_ANSWER, chunk_delay=0.05))  # 20 s in all, never silent
        chunks: list[Chunk] = []
        started = time.monotonic()
        with pytest.raises(ProviderTimeout) as info:
            await self.collect(p, self.request(model, provider_name, timeout=0.5), mode, chunks)
        assert time.monotonic() - started < GUARD
        assert chunks  # it was flowing; only the deadline stopped it
        assert "deadline" in str(info.value)
        assert await self.closed(upstream)

    @pytest.mark.asyncio
    async def test_whole_call_may_take_longer_than_the_read_timeout_within_its_deadline(
        self,
        provider_factory: ProviderFactory,
        upstream: FakeServer,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        """A whole answer silent past the read timeout but within its deadline arrives."""
        p = provider_factory(timeout=0.2)
        upstream.enqueue(Fault.delay(0.6))  # silent past the read timeout: a slow whole answer
        answer = await self.complete(p, self.request(model, provider_name, timeout=GUARD), mode)
        assert answer.message.content == "Echo: Hello there"
        self.check_deadline_request(upstream.last_request, GUARD)

    # -- the read timeout ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_without_a_deadline_the_read_timeout_bounds_a_whole_call(
        self,
        provider_factory: ProviderFactory,
        upstream: FakeServer,
        release: threading.Event,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        """With no deadline, a hung whole call ends at the read timeout."""
        p = provider_factory(timeout=0.3)
        upstream.enqueue(Fault.hang(release))
        with pytest.raises(ProviderTimeout):
            await self.complete(p, self.request(model, provider_name), mode)
        assert await self.closed(upstream)

    @pytest.mark.asyncio
    async def test_a_deadline_already_past_fails_at_once(
        self,
        provider_factory: ProviderFactory,
        upstream: FakeServer,
        model: str,
        provider_name: str,
        mode: Mode,
    ) -> None:
        """A deadline already past is a timeout before any request goes up."""
        with pytest.raises(ProviderTimeout):
            await self.complete(
                provider_factory(), self.request(model, provider_name, timeout=0.0), mode
            )
        assert upstream.requests == []
