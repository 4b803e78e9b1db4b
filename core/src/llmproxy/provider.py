"""The provider protocol (what the Proxy calls for each attempt), and a base class for it.

:class:`BaseProvider` turns one async method into a whole :class:`Provider`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, runtime_checkable

from attrs import frozen

from llmproxy.errors import ProviderTimeout, UnsupportedContent
from llmproxy.tokens import (
    DEFAULT_INPUT_MARGIN,
    InputMargin,
    messages_upper_bound,
    text_upper_bound,
)
from llmproxy.types import (
    ChatRequest,
    Chunk,
    Citation,
    Completion,
    EmbeddingResult,
    EmbedRequest,
    HostedOutput,
    Message,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from llmproxy.registry import ProviderSettings

T = TypeVar("T")


@runtime_checkable
class Provider(Protocol):
    """One LLM service. Implementations map their errors onto :mod:`llmproxy.errors`.

    A provider makes exactly one upstream attempt per call (the Proxy owns retries, so every
    attempt is seen and budgeted) and must send ``request.max_output_tokens`` upstream as the
    service's output limit. It must also keep the attempt within ``request.timeout`` seconds
    when that is set (the whole answer; for a stream, the first chunk and the last), raising
    :class:`~llmproxy.errors.ProviderTimeout` when they run out.

    Optionally, ``input_margin(model) -> llmproxy.InputMargin`` declares how far
    :meth:`count_tokens` can fall short of what the service bills (its chat format's tokens per
    message and per request, a tokenizer's relative error); budgets reserve the count plus that
    margin. A provider without the method gets :data:`llmproxy.tokens.DEFAULT_INPUT_MARGIN`.
    """

    name: str

    def chat(self, request: ChatRequest) -> Completion:
        """Make one non-streamed attempt."""
        ...

    async def achat(self, request: ChatRequest) -> Completion:
        """Async :meth:`chat`."""
        ...

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        """Make one streamed attempt; the last chunk carries usage when the service sends it.

        The iterator is closed early when the caller abandons the stream; it must then close
        the connection.
        """
        ...

    def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Async :meth:`stream`."""
        ...

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        """Estimate the input tokens of ``messages``; never less than the service will count.

        Should not raise: if it does, the Proxy logs it and uses the byte count, an upper bound.
        """
        ...

    def count_text_tokens(self, text: str, model: str) -> int:
        """Count the tokens of a piece of output text (used when a stream ends without usage)."""
        ...

    def max_output_tokens(self, model: str) -> int | None:
        """Return the model's own output limit, or None when unknown (new models pass through)."""
        ...

    def close(self) -> None:
        """Release sync connections."""
        ...

    async def aclose(self) -> None:
        """Release all connections, async ones included (called from the event loop they use)."""
        ...


@frozen
class EmbedLimits:
    """What one embeddings request may hold.

    At most ``max_inputs`` texts and ``max_tokens`` input tokens (None: no limit on the sum;
    the service's per-text limit still applies).
    """

    max_inputs: int = 2048
    max_tokens: int | None = None


DEFAULT_EMBED_LIMITS = EmbedLimits()
"""The batch limits of a provider that declares none: OpenAI's 2048 inputs per request."""


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A provider that embeds texts: the optional face of :class:`Provider` (or a whole one).

    ``embed`` makes exactly one upstream attempt for one batch (the Proxy splits the input by
    :meth:`embed_limits`, retries, falls back and budgets) and returns a vector per text in
    order, within ``request.timeout``. ``embed_limits(model)`` may raise
    :class:`~llmproxy.errors.UnsupportedContent` for a model (or a provider) with no embeddings:
    the Proxy asks it before it reserves anything.
    """

    name: str

    def embed(self, request: EmbedRequest) -> EmbeddingResult:
        """Embed one batch."""
        ...

    async def aembed(self, request: EmbedRequest) -> EmbeddingResult:
        """Async :meth:`embed`."""
        ...

    def embed_limits(self, model: str) -> EmbedLimits:
        """The batch limits of ``model`` (raise UnsupportedContent when it cannot embed)."""
        ...


def no_embeddings(provider: str, hint: str | None = None) -> UnsupportedContent:
    """The error of a provider that has no embeddings model."""
    return UnsupportedContent(
        "has no embeddings model; use "
        + (hint or "openai/text-embedding-3-small or gemini/gemini-embedding-001"),
        provider=provider,
        part="model",
    )


def embeddings_of(provider: Any, name: str, model: str) -> tuple[EmbeddingProvider, EmbedLimits]:
    """``provider`` as an embedding provider with ``model``'s batch limits, or raise.

    Raises :class:`~llmproxy.errors.UnsupportedContent` (before anything is reserved or sent)
    when the provider has no ``embed``/``aembed``, or its ``embed_limits`` says so.
    """
    if not callable(getattr(provider, "embed", None)) or not callable(
        getattr(provider, "aembed", None)
    ):
        raise no_embeddings(name)
    declared = getattr(provider, "embed_limits", None)
    limits = DEFAULT_EMBED_LIMITS if declared is None else declared(model)
    if not isinstance(limits, EmbedLimits) or limits.max_inputs < 1:
        raise TypeError(f"provider {name!r} gave {limits!r} as its embed limits")
    return provider, limits


class ChunkAssembler:
    """Gathers a stream's chunks into the :class:`Completion` a whole call would return.

    Text and reasoning deltas are joined; tool calls, citations and hosted outputs collected;
    the last usage, finish reason, model and id seen win; chunks' ``state`` is merged by
    provider key (a later chunk's entries win) into the message's :attr:`Message.state`.

    >>> parts = ChunkAssembler()
    >>> parts.feed(Chunk("Hel", model="m1"))
    >>> parts.feed(Chunk("lo", finish_reason="stop"))
    >>> c = parts.completion("fallback-model")
    >>> c.message.content, c.model, c.finish_reason
    ('Hello', 'm1', 'stop')
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: list[ToolCall] = []
        self._citations: list[Citation] = []
        self._hosted: list[HostedOutput] = []
        self._usage: Usage | None = None
        self._finish_reason: str | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._state: dict[str, Any] = {}

    def feed(self, chunk: Chunk) -> None:
        """Add one chunk."""
        if chunk.text:
            self._text.append(chunk.text)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        self._tool_calls.extend(chunk.tool_calls)
        self._citations.extend(chunk.citations)
        self._hosted.extend(chunk.hosted_outputs)
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        if chunk.model is not None:
            self._model = chunk.model
        if chunk.id is not None:
            self._id = chunk.id
        if chunk.state:
            for key, value in chunk.state.items():
                old = self._state.get(key)
                if isinstance(old, Mapping) and isinstance(value, Mapping):
                    self._state[key] = {**old, **value}
                else:
                    self._state[key] = value

    @property
    def model(self) -> str | None:
        """The model the stream named, if any chunk named it."""
        return self._model

    @property
    def usage(self) -> Usage | None:
        """The usage the stream reported, if any chunk carried it."""
        return self._usage

    def completion(self, model: str, *, interrupted: bool = False) -> Completion:
        """The completion so far; ``model`` is used when no chunk named the model.

        ``interrupted`` marks the message as cut short (a broken or abandoned stream).
        """
        message = Message(
            "assistant",
            "".join(self._text),
            tool_calls=tuple(self._tool_calls),
            reasoning="".join(self._reasoning) or None,
            interrupted=interrupted,
            citations=tuple(self._citations),
            hosted_outputs=tuple(self._hosted),
            state=dict(self._state),
        )
        return Completion(message, self._usage, self._model or model, self._finish_reason, self._id)


def chunk_of(completion: Completion) -> Chunk:
    """The one chunk that streams ``completion`` whole."""
    message = completion.message
    return Chunk(
        message.content,
        message.reasoning or "",
        completion.usage,
        completion.finish_reason,
        completion.model,
        message.tool_calls,
        completion.id,
        message.citations,
        message.hosted_outputs,
        dict(message.state) or None,
    )


class _LoopThread:
    """A private event loop running in a daemon thread, for a provider's sync face."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._serve, args=(loop,), name=f"llmproxy-{self._name}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the private loop and return its result (or raise its error)."""
        loop = self._running_loop()
        if threading.current_thread() is self._thread:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise RuntimeError(
                f"provider '{self._name}': a sync method was called from its own async code;"
                " await the async method instead"
            )

        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result()

    def stop(self) -> None:
        """Stop the loop and wait for its thread; a later :meth:`run` starts a new one."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join()


_DEADLINE_MARK = "__llmproxy_deadline__"


def _timed_out(name: str, model: str, idle: bool, seconds: float) -> ProviderTimeout:
    what = (
        f"no chunk for {seconds:g}s (the provider's read timeout)"
        if idle
        else f"no answer within the attempt's {seconds:g}s (the call's deadline)"
    )
    return ProviderTimeout(what, provider=name, model=model)


def deadline_passed(provider: str, request: ChatRequest) -> ProviderTimeout:
    """The error of an attempt still unanswered at the call's deadline (``request.timeout``)."""
    return _timed_out(provider, request.model, False, request.timeout or 0.0)


async def within_deadline(
    provider: str, request: ChatRequest, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Await ``attempt()``, cut off at ``request.timeout`` seconds with a ProviderTimeout.

    For a provider's async whole answer: the SDK's own timeouts bound each read, this bounds
    the attempt as a whole (the call's deadline). A ``TimeoutError`` the attempt raised on its
    own is left as it is.
    """
    if request.timeout is None:
        return await attempt()
    cutoff = asyncio.timeout(max(request.timeout, 0.0))
    try:
        async with cutoff:
            return await attempt()
    except TimeoutError:
        if cutoff.expired():
            raise deadline_passed(provider, request) from None
        raise


def _bounded_achat(
    achat: Callable[[Any, ChatRequest], Awaitable[Completion]],
) -> Callable[[Any, ChatRequest], Awaitable[Completion]]:
    """``achat`` kept within ``request.timeout`` seconds (see :class:`BaseProvider`)."""

    @functools.wraps(achat)
    async def bounded(self: BaseProvider, request: ChatRequest) -> Completion:
        return await within_deadline(self.name, request, lambda: achat(self, request))

    setattr(bounded, _DEADLINE_MARK, True)
    return bounded


def _bounded_astream(
    astream: Callable[[Any, ChatRequest], AsyncIterator[Chunk]],
) -> Callable[[Any, ChatRequest], AsyncGenerator[Chunk, None]]:
    """``astream`` kept within ``request.timeout`` and the read timeout (see BaseProvider)."""

    @functools.wraps(astream)
    async def bounded(self: BaseProvider, request: ChatRequest) -> AsyncGenerator[Chunk, None]:
        chunks = aiter(astream(self, request))
        idle = self.settings.timeout
        if request.timeout is None and idle is None:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                await _aclose(chunks)
            return
        loop = asyncio.get_running_loop()
        deadline = None if request.timeout is None else loop.time() + max(request.timeout, 0.0)
        try:
            while True:
                when = deadline
                by_idle = False
                if idle is not None and (when is None or loop.time() + idle < when):
                    when, by_idle = loop.time() + idle, True
                timeout = asyncio.timeout_at(when)
                try:
                    async with timeout:
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not timeout.expired():
                        raise
                    seconds = idle if by_idle and idle is not None else request.timeout or 0.0
                    raise _timed_out(self.name, request.model, by_idle, seconds) from None
                yield chunk
        finally:
            await _aclose(chunks)

    setattr(bounded, _DEADLINE_MARK, True)
    return bounded


async def _aclose(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class BaseProvider:
    """A provider from one method: subclass it and implement ``astream`` or ``achat``.

    >>> class Echo(BaseProvider):
    ...     async def achat(self, request: ChatRequest) -> Completion:
    ...         text = request.messages[-1].content
    ...         return Completion(Message("assistant", text), None, request.model)
    >>> request = ChatRequest((Message("user", "hi"),), "x", "echo")
    >>> echo = Echo()
    >>> [chunk.text for chunk in echo.stream(request)], echo.chat(request).message.content
    (['hi'], 'hi')
    >>> echo.close()

    The rest has a working default: ``achat`` gathers ``astream``'s chunks (or ``astream``
    yields ``achat``'s completion as one chunk); the sync ``chat`` and ``stream`` run the async
    ones on an event loop of the provider's own, in a daemon thread (so they work from inside
    another thread's running loop too); token counts are the UTF-8 byte upper bounds of
    :mod:`llmproxy.tokens`; ``max_output_tokens`` is None (no known limit); ``input_margin`` is
    :data:`llmproxy.tokens.DEFAULT_INPUT_MARGIN`; ``close`` stops the
    loop thread. Override any of them to do better. A class with neither ``astream`` nor
    ``achat`` raises TypeError when instantiated.

    The class itself is a factory: ``register("echo", Echo)`` makes ``Echo(settings)``, which
    keeps ``settings`` (``api_key``, ``base_url``, ``timeout``, ``options``, ``environ``) on
    ``self.settings`` and its name on ``self.name``. Errors should be
    :mod:`llmproxy.errors` types (``ProviderRateLimited``, ``ProviderAuthError``...): the Proxy
    retries and reports by them; they propagate from every default unchanged.

    Time limits are kept for the author: a subclass's ``achat`` runs within
    ``request.timeout`` seconds when the Proxy sets it (the call's deadline left), and its
    ``astream`` gets that long for all its chunks, each within ``settings.timeout`` seconds
    of the one before when that is set (the read timeout; the first one included). Running out
    raises :class:`~llmproxy.errors.ProviderTimeout`; the author's code is cancelled where it
    waits, so a ``finally`` or ``async with`` there closes its connection.
    """

    name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the subclass's own ``achat`` and ``astream`` in the request's time limits."""
        super().__init_subclass__(**kwargs)
        achat = cls.__dict__.get("achat")
        if achat is not None and not getattr(achat, _DEADLINE_MARK, False):
            cls.achat = _bounded_achat(achat)  # type: ignore[method-assign,assignment]
        astream = cls.__dict__.get("astream")
        if astream is not None and not getattr(astream, _DEADLINE_MARK, False):
            cls.astream = _bounded_astream(astream)  # type: ignore[method-assign,assignment]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """Refuse a subclass that implements none of ``astream``, ``achat`` and ``aembed``."""
        if not cls._chats() and cls.aembed is BaseProvider.aembed:
            raise TypeError(
                f"{cls.__qualname__} must implement 'async def astream(self, request)' (yielding"
                " llmproxy.Chunk), 'async def achat(self, request)' (returning"
                " llmproxy.Completion) or 'async def aembed(self, request)' (returning"
                " llmproxy.EmbeddingResult); BaseProvider gives the rest"
            )
        return super().__new__(cls)

    @classmethod
    def _chats(cls) -> bool:
        """Whether the subclass implements ``achat`` or ``astream`` (else it only embeds)."""
        return cls.achat is not BaseProvider.achat or cls.astream is not BaseProvider.astream

    def _refuse_chat(self) -> UnsupportedContent:
        return UnsupportedContent(
            "is an embeddings provider: it does not chat (call proxy.embed, or use a chat model)",
            provider=self.name,
            part="model",
        )

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        """Keep ``settings`` (default: settings named after the class, read from nothing)."""
        if settings is None:
            from llmproxy.registry import ProviderSettings

            settings = ProviderSettings(getattr(type(self), "name", type(self).__name__.lower()))
        self.settings = settings
        self.name = settings.name
        self._loop_thread = _LoopThread(settings.name)

    async def achat(self, request: ChatRequest) -> Completion:
        """Make one non-streamed attempt (default: gather :meth:`astream`'s chunks)."""
        if not self._chats():
            raise self._refuse_chat()
        parts = ChunkAssembler()
        chunks = self.astream(request)
        try:
            async for chunk in chunks:
                parts.feed(chunk)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        return parts.completion(request.model)

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Make one streamed attempt (default: :meth:`achat`'s completion as one chunk)."""
        if not self._chats():
            raise self._refuse_chat()
        yield chunk_of(await self.achat(request))

    async def aembed(self, request: EmbedRequest) -> EmbeddingResult:
        """Embed one batch (default: this provider has no embeddings; override to add them)."""
        raise no_embeddings(self.name)

    def embed(self, request: EmbedRequest) -> EmbeddingResult:
        """Sync :meth:`aembed`, run on the provider's own event loop."""
        return self._loop_thread.run(self.aembed(request))

    def embed_limits(self, model: str) -> EmbedLimits:
        """The batch limits: :data:`DEFAULT_EMBED_LIMITS`.

        Raises UnsupportedContent when ``aembed`` is not implemented, so that the Proxy refuses
        before it reserves.
        """
        if type(self).aembed is BaseProvider.aembed:
            raise no_embeddings(self.name)
        return DEFAULT_EMBED_LIMITS

    def chat(self, request: ChatRequest) -> Completion:
        """Sync :meth:`achat`, run on the provider's own event loop."""
        return self._loop_thread.run(self.achat(request))

    def stream(self, request: ChatRequest) -> Generator[Chunk, None, None]:
        """Sync :meth:`astream`; closing the iterator early closes the async one."""
        chunks = self.astream(request)
        try:
            while True:
                try:
                    chunk = self._loop_thread.run(anext(chunks))
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                self._loop_thread.run(aclose())

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        """An upper bound on the input tokens: the messages' UTF-8 bytes plus framing."""
        return messages_upper_bound(messages)

    def count_text_tokens(self, text: str, model: str) -> int:
        """An upper bound on the tokens of ``text``: its UTF-8 byte count."""
        return text_upper_bound(text)

    def max_output_tokens(self, model: str) -> int | None:
        """None: no known output limit (the service's own applies)."""
        return None

    def input_margin(self, model: str) -> InputMargin:
        """How far the input count can fall short of the bill: the core's conservative default.

        Override it when the service's format is known (see :class:`llmproxy.InputMargin`).
        """
        return DEFAULT_INPUT_MARGIN

    def close(self) -> None:
        """Stop the event loop thread of the sync face (started again if used again)."""
        self._loop_thread.stop()

    async def aclose(self) -> None:
        """Nothing to release by default; override to close async connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
