"""Parts and provider state reach every history store through a real Proxy call, and the next
turn (in a new Proxy on the same store) sends them back to the provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import llmproxy
from llmproxy import (
    BaseProvider,
    ChatRequest,
    Chunk,
    Completion,
    Image,
    Message,
    Proxy,
    Usage,
)
from llmproxy.history.base import HistoryStore
from llmproxy.history.memory import MemoryHistoryStore
from llmproxy.history.sqlite import SQLiteHistoryStore
from llmproxy.plugins import Plugins
from llmproxy.registry import RegisterProvider
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.parts import png
from llmproxy_testing.redis_fixtures import redis_server, redis_url
from tests.conftest import chat_requests

__all__ = ["redis_server", "redis_url"]  # fixtures

STATE = {"recorder": {"signature": "c2lnbmF0dXJl", "turn": 1}}


class Recorder(BaseProvider):
    """Keeps every request it is sent; answers with provider state on the message."""

    requests: list[ChatRequest] = []  # shared by the instances a test makes

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        return 10 * len(messages)

    async def achat(self, request: ChatRequest) -> Completion:
        Recorder.requests.append(request)
        return Completion(Message("assistant", "A cat.", state=STATE), Usage(5, 3), request.model)

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        Recorder.requests.append(request)
        yield Chunk("A cat.")
        yield Chunk(usage=Usage(5, 3), finish_reason="stop")


class Plugin:
    @llmproxy.hookimpl
    def register_providers(self, register: RegisterProvider) -> None:
        register("recorder", Recorder)


def proxy_on(store: HistoryStore) -> Proxy:
    return Proxy(
        {},
        plugins=Plugins(environ={}, entry_points=False, extra=[Plugin()]),
        environ={},
        history=store,
        ledger="memory://",
    )


StoreMaker = Callable[[], HistoryStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    """Makes stores on one backend (each new one sees what the others wrote)."""
    made: list[HistoryStore] = []
    memory = MemoryHistoryStore()

    def make() -> HistoryStore:
        store: HistoryStore
        if request.param == "memory":
            return memory
        if request.param == "sqlite":
            store = SQLiteHistoryStore(tmp_path / "history.db")
        else:
            from llmproxy_redis_history import RedisHistoryStore

            url = request.getfixturevalue("redis_url")
            store = RedisHistoryStore(url, environ={}, cache=False)
        made.append(store)
        return store

    Recorder.requests = []
    yield make
    for store in made:
        store.close()


def test_parts_and_state_reach_the_store_and_the_next_turn(stores: StoreMaker) -> None:
    image = Image(data=png(64, 48), detail="low")
    first = proxy_on(stores())
    prompt: list[str | Image] = ["What is in this picture?", image]
    reply = first.chat(prompt, model="recorder/m", session_id="s")
    assert reply.text == "A cat."
    first.close()

    stored = stores().load("s")
    assert [r.role for r in stored] == ["user", "assistant"]
    assert stored[0].message.parts == (
        Message.with_parts("user", ["What is in this picture?"]).parts[0],
        image,
    )
    assert stored[0].content == "What is in this picture?"
    assert dict(stored[1].message.state) == STATE

    second = proxy_on(stores())  # a new Proxy: the history comes from the store
    second.chat("And its colour?", model="recorder/m", session_id="s")
    second.close()
    sent = Recorder.requests[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "user"]
    assert sent[0].parts[1] == image
    assert sent[0].parts[1].data == image.data
    assert dict(sent[1].state) == STATE
    assert sent[2].content == "And its colour?"


async def test_async_and_streamed_calls_store_parts_too(stores: StoreMaker) -> None:
    image = Image(data=png(8, 8))
    proxy = proxy_on(stores())
    prompt: list[str | Image] = ["Look", image]
    async for _ in proxy.astream(prompt, model="recorder/m", session_id="a"):
        pass
    await proxy.aclose()
    (user, assistant) = stores().load("a")
    assert user.message.parts[1] == image
    assert assistant.content == "A cat."


def test_the_next_turn_sends_the_stored_image_upstream(
    make_proxy: Any, upstream: FakeOpenAI
) -> None:
    """Through the OpenAI provider: the history's image goes out again on the next turn."""
    proxy = make_proxy()
    image = Image.from_bytes(png(8, 8))
    proxy.chat(["What is this?", image], session_id="seen")
    proxy.chat("And its colour?", session_id="seen")
    first = chat_requests(upstream)[1]["messages"][0]
    assert first["role"] == "user"
    assert first["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image.data_url()}},
    ]
