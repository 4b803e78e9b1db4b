"""BaseProvider: one async method makes a whole provider, through a real Proxy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

import llmproxy
from llmproxy import (
    BaseProvider,
    ChatRequest,
    Chunk,
    Completion,
    LLMBudget,
    Message,
    ProviderAuthError,
    ProviderSettings,
    Proxy,
    Secret,
    ToolCall,
    Usage,
)
from llmproxy.plugins import Plugins
from llmproxy.provider import ChunkAssembler, Provider, chunk_of
from llmproxy.registry import ProviderEntry, RegisterProvider
from llmproxy.tokens import DEFAULT_INPUT_MARGIN, messages_upper_bound, text_upper_bound
from llmproxy.types import Citation, HostedOutput


class WordStream(BaseProvider):
    """Streams the last message back word by word, with reasoning first and no usage."""

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        self.closed = threading.Event()
        self.caps: list[int | None] = []

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.caps.append(request.max_output_tokens)
        try:
            yield Chunk(reasoning="echoing", model=request.model + "-1", id="s1")
            for word in request.messages[-1].content.split(" "):
                yield Chunk(word + " ")
            yield Chunk(finish_reason="stop")
        finally:
            self.closed.set()


class WholeReply(BaseProvider):
    """Answers the last message in one completion, with usage and reasoning."""

    async def achat(self, request: ChatRequest) -> Completion:
        text = "whole: " + request.messages[-1].content
        message = Message("assistant", text, reasoning="thought")
        return Completion(message, Usage(5, 2), request.model + "-2", "stop", "w1")


class Refusing(BaseProvider):
    """Fails with the error an author's code raises."""

    error = ProviderAuthError("key refused", provider="refusing", status=401)

    async def achat(self, request: ChatRequest) -> Completion:
        raise self.error


class ProviderPlugin:
    """Registers the test providers, the classes themselves as factories."""

    @llmproxy.hookimpl
    def register_providers(self, register: RegisterProvider) -> None:
        register("words", WordStream, env=("WORDS_API_KEY", "WORDS_BASE_URL"))
        register("whole", WholeReply)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    plugins = Plugins(environ={}, entry_points=False, extra=[ProviderPlugin()])
    proxy = Proxy(
        budgets=[LLMBudget(max_tokens=10_000)],
        plugins=plugins,
        environ={"WORDS_API_KEY": "wk-1"},
        history="memory://",
        ledger="memory://",
    )
    try:
        yield proxy
    finally:
        proxy.close()


def _request(text: str = "hi there") -> ChatRequest:
    return ChatRequest((Message("user", text),), "m", "p")


def test_whole_from_stream_through_a_proxy(proxy: Proxy) -> None:
    r = proxy.chat("hello big world", model="words/m", session_id="s")
    assert (r.text, r.reasoning, r.model, r.finish_reason) == (
        "hello big world ",
        "echoing",
        "m-1",  # the model the chunks named
        "stop",
    )
    assert r.message.content == r.text
    # No usage came: the Proxy counted with the base class's byte upper bounds, and charged
    # the input it reserved (the count plus the default margin: an unknown bill is charged high).
    sent = (Message("user", "hello big world"),)
    reserved = DEFAULT_INPUT_MARGIN.reserve(messages_upper_bound(sent), messages=1)
    assert r.usage.estimated
    assert r.usage.input_tokens == reserved > messages_upper_bound(sent)
    assert r.usage.output_tokens == text_upper_bound("hello big world ")
    provider = proxy.provider("words")
    assert isinstance(provider, WordStream)
    cap = provider.caps[-1]
    assert cap is not None and cap <= 10_000 - reserved  # the budget's cap
    assert [m.content for m in proxy.history.load("s")] == ["hello big world", r.text]


def test_stream_from_whole_through_a_proxy(proxy: Proxy) -> None:
    with proxy.stream("hi", model="whole/m") as stream:
        events = list(stream)
    assert "".join(e.text for e in events) == "whole: hi"
    assert "".join(e.reasoning for e in events) == "thought"
    done = events[-1]
    assert done.done and done.response is not None
    assert (done.usage, done.finish_reason) == (Usage(5, 2), "stop")
    assert (done.response.id, done.response.model) == ("w1", "m-2")


async def test_async_both_ways_through_a_proxy(proxy: Proxy) -> None:
    r = await proxy.achat("a b", model="words/m")
    assert (r.text, r.reasoning) == ("a b ", "echoing")
    texts = [ev.text async for ev in proxy.astream("c", model="whole/m")]
    assert "".join(texts) == "whole: c"
    assert (await proxy.achat("d", model="whole/m")).usage == Usage(5, 2)
    streamed = [ev async for ev in proxy.astream("e f", model="words/m")]
    assert "".join(ev.text for ev in streamed) == "e f "
    assert streamed[-1].usage is not None and streamed[-1].usage.estimated


def test_closing_a_sync_stream_early_closes_the_async_generator(proxy: Proxy) -> None:
    with proxy.stream("one two three", model="words/m") as stream:
        first = next(iter(stream))
        assert first.reasoning == "echoing"
        provider = proxy.provider("words")
        assert isinstance(provider, WordStream)
        assert not provider.closed.is_set()
    assert provider.closed.is_set()  # the generator's finally ran before close() returned


def test_closing_the_providers_own_sync_stream_early() -> None:
    provider = WordStream()
    chunks = provider.stream(_request("x y z"))
    assert next(chunks).reasoning == "echoing"
    chunks.close()
    assert provider.closed.is_set()
    provider.close()


async def test_the_sync_face_works_inside_a_running_loop() -> None:
    provider = WholeReply()
    assert asyncio.get_running_loop() is not None
    assert provider.chat(_request("inside")).message.content == "whole: inside"
    assert [c.text for c in provider.stream(_request("s"))] == ["whole: s"]
    provider.close()


async def test_errors_from_the_authors_method_propagate_unchanged() -> None:
    provider = Refusing()
    with pytest.raises(ProviderAuthError) as sync_error:
        provider.chat(_request())
    assert sync_error.value is Refusing.error
    with pytest.raises(ProviderAuthError) as stream_error:
        list(provider.stream(_request()))
    assert stream_error.value is Refusing.error
    with pytest.raises(ProviderAuthError) as async_error:
        [c async for c in provider.astream(_request())]
    assert async_error.value is Refusing.error
    provider.close()


def test_a_provider_with_neither_method_is_a_type_error() -> None:
    class Nothing(BaseProvider):
        pass

    with pytest.raises(TypeError, match="must implement 'async def astream"):
        Nothing()


def test_defaults_satisfy_the_provider_protocol() -> None:
    provider = WholeReply(ProviderSettings("named"))
    assert isinstance(provider, Provider)
    assert provider.name == "named"
    assert WordStream().name == "wordstream"
    messages = [Message("user", "héllo")]
    assert provider.count_tokens(messages, "m") == messages_upper_bound(messages)
    assert provider.count_text_tokens("héllo", "m") == 6
    assert provider.max_output_tokens("m") is None
    provider.close()
    provider.close()  # closing twice, or before any sync call, is fine
    assert provider.chat(_request("again")).message.content == "whole: again"  # restarts
    provider.close()


def test_one_chunk_and_its_assembly_round_trip_everything() -> None:
    message = Message(
        "assistant",
        "answer",
        tool_calls=(ToolCall("c1", "clock", '{"tz": "UTC"}'),),
        reasoning="why",
        citations=(Citation("url_citation", url="https://example.com"),),
        hosted_outputs=(HostedOutput("file_search_call", "h1", "completed", {"q": 1}),),
    )
    completion = Completion(message, Usage(3, 4, 1, 2), "m-7", "tool_calls", "id-9")
    parts = ChunkAssembler()
    parts.feed(chunk_of(completion))
    assert parts.completion("other") == completion


def test_assembly_joins_deltas_and_keeps_the_last_of_the_rest() -> None:
    parts = ChunkAssembler()
    parts.feed(Chunk("a", "r1", model="m1", id="x"))
    parts.feed(Chunk("b", "r2", usage=Usage(1, 1), tool_calls=(ToolCall("1", "f"),)))
    parts.feed(
        Chunk(usage=Usage(2, 3), finish_reason="tool_calls", tool_calls=(ToolCall("2", "g"),))
    )
    c = parts.completion("fallback")
    assert (c.message.content, c.message.reasoning, c.usage, c.model, c.id) == (
        "ab",
        "r1r2",
        Usage(2, 3),
        "m1",
        "x",
    )
    assert [t.id for t in c.message.tool_calls] == ["1", "2"]
    assert ChunkAssembler().completion("fallback") == Completion(
        Message("assistant", ""), None, "fallback"
    )


# -- env= fills the settings -------------------------------------------------------------------


def _entry() -> ProviderEntry:
    return ProviderEntry("p", WordStream, "plugin", env=("P_KEY", "P_OTHER_KEY", "P_BASE_URL"))


def test_env_variables_fill_the_api_key_first_set_wins() -> None:
    entry = _entry()
    environ = {"P_KEY": "", "P_OTHER_KEY": "k2", "P_BASE_URL": "http://127.0.0.1:9/v1"}
    settings = entry.complete(ProviderSettings("p", environ=environ))
    assert settings.api_key is not None and settings.api_key.get() == "k2"
    assert settings.base_url == "http://127.0.0.1:9/v1"
    both = entry.complete(ProviderSettings("p", environ={"P_KEY": "k1", "P_OTHER_KEY": "k2"}))
    assert both.api_key is not None and both.api_key.get() == "k1"
    assert both.base_url is None
    unset = ProviderSettings("p", environ={})
    assert entry.complete(unset) is unset


def test_configuration_wins_over_env() -> None:
    settings = ProviderSettings(
        "p", api_key=Secret("cfg"), base_url="http://cfg", environ={"P_KEY": "env"}
    )
    done = _entry().complete(settings)
    assert done.api_key is not None and done.api_key.get() == "cfg"
    assert done.base_url == "http://cfg"


def test_a_proxy_hands_the_factory_env_filled_settings(proxy: Proxy) -> None:
    provider = proxy.provider("words")
    assert isinstance(provider, WordStream)
    assert provider.settings.api_key is not None and provider.settings.api_key.get() == "wk-1"
    plugins = Plugins(environ={}, entry_points=False, extra=[ProviderPlugin()])
    configured = Proxy(
        {"providers": {"words": {"api_key": "from-config"}}},
        plugins=plugins,
        environ={"WORDS_API_KEY": "wk-1"},
        history="memory://",
        ledger="memory://",
    )
    try:
        provider = configured.provider("words")
        assert isinstance(provider, WordStream)
        assert provider.settings.api_key is not None
        assert provider.settings.api_key.get() == "from-config"
    finally:
        configured.close()


# --------------------------------------------------------------------------- time limits


class Hanging(BaseProvider):
    """Waits on ``release`` where an upstream would be asked; records what was cancelled."""

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        self.release = asyncio.Event()
        self.abandoned = threading.Event()

    async def achat(self, request: ChatRequest) -> Completion:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.abandoned.set()  # where a real provider closes its connection
            raise
        return Completion(Message("assistant", "late"), None, request.model)


class Stalling(BaseProvider):
    """Streams ``words`` chunks, then waits on ``release`` (a stream that stalls)."""

    words = 2

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        self.release = asyncio.Event()
        self.abandoned = threading.Event()

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        try:
            for i in range(self.words):
                yield Chunk(f"w{i} ")
            await self.release.wait()
            yield Chunk("late")
        finally:
            self.abandoned.set()


async def _gather(chunks: AsyncIterator[Chunk], into: list[Chunk]) -> None:
    async for chunk in chunks:
        into.append(chunk)


def _timed(timeout: float | None) -> ChatRequest:
    return ChatRequest((Message("user", "hi"),), "m", "hang", timeout=timeout)


async def test_base_provider_keeps_a_whole_call_within_its_deadline() -> None:
    hanging = Hanging(ProviderSettings("hang"))
    with pytest.raises(llmproxy.ProviderTimeout) as info:
        await asyncio.wait_for(hanging.achat(_timed(0.3)), GUARD)
    assert info.value.retryable and info.value.provider == "hang"
    assert hanging.abandoned.is_set()
    other = Hanging(ProviderSettings("hang"))  # the sync face too, on its own loop
    with pytest.raises(llmproxy.ProviderTimeout):
        await asyncio.to_thread(other.chat, _timed(0.3))
    assert other.abandoned.is_set()
    other.close()


async def test_base_provider_stream_without_a_first_chunk_is_a_timeout() -> None:
    stalling = Stalling(ProviderSettings("hang"))
    stalling.words = 0
    chunks: list[Chunk] = []
    with pytest.raises(llmproxy.ProviderTimeout):
        await _gather(stalling.astream(_timed(0.3)), chunks)
    assert chunks == []
    assert stalling.abandoned.is_set()  # the author's stream was closed


async def test_base_provider_stream_that_stalls_hits_the_read_timeout() -> None:
    stalling = Stalling(ProviderSettings("hang", timeout=0.3))  # the read timeout
    chunks: list[Chunk] = []
    with pytest.raises(llmproxy.ProviderTimeout) as info:
        await _gather(stalling.astream(_timed(60.0)), chunks)
    assert [c.text for c in chunks] == ["w0 ", "w1 "]
    assert "read timeout" in str(info.value)
    assert stalling.abandoned.is_set()
    other = Stalling(ProviderSettings("hang", timeout=0.3))  # the sync face: same limits
    sync_chunks: list[Chunk] = []
    with pytest.raises(llmproxy.ProviderTimeout):
        await asyncio.to_thread(lambda: sync_chunks.extend(other.stream(_timed(None))))
    assert other.abandoned.is_set()
    other.close()


async def test_base_provider_without_limits_waits_for_the_author() -> None:
    hanging = Hanging(ProviderSettings("hang"))
    call = asyncio.ensure_future(hanging.achat(_timed(None)))
    await asyncio.sleep(0)
    assert not call.done()
    hanging.release.set()
    assert (await asyncio.wait_for(call, GUARD)).message.content == "late"
    assert not hanging.abandoned.is_set()


async def test_base_provider_timeout_error_of_the_author_is_not_a_deadline() -> None:
    class Raising(BaseProvider):
        async def achat(self, request: ChatRequest) -> Completion:
            raise TimeoutError("the author's own")

    with pytest.raises(TimeoutError, match="the author's own"):
        await Raising(ProviderSettings("r")).achat(_timed(30.0))


#: Far above every limit the tests set: a test that gets near it has hung, not timed out.
GUARD = 8.0
