"""The response cache's stores, entry codec and key, without a Proxy."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmproxy.cache import (
    CachedReply,
    CacheSettings,
    MemoryCache,
    ResponseCache,
    SQLiteCache,
    decode_reply,
    encode_reply,
    request_key,
)
from llmproxy.tools import HostedTool, Tool
from llmproxy.types import Citation, Image, Message, ToolCall, Usage
from llmproxy_testing.parts import png


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


MakeCache = Callable[..., ResponseCache]


@pytest.fixture(params=["memory", "sqlite"])
def make_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeCache]:
    made: list[ResponseCache] = []

    def make(**kwargs: object) -> ResponseCache:
        settings = CacheSettings(**kwargs)  # type: ignore[arg-type]
        cache: ResponseCache
        if request.param == "memory":
            cache = MemoryCache(settings)
        else:
            cache = SQLiteCache(tmp_path / f"cache{len(made)}.db", settings)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def test_a_value_is_kept_and_replaced(make_cache: MakeCache) -> None:
    cache = make_cache()
    assert cache.get("k") is None
    cache.put("k", b"one", 60)
    assert cache.get("k") == b"one"
    cache.put("k", b"two!", 60)
    assert cache.get("k") == b"two!"
    assert cache.stats() == (1, 4)
    cache.clear()
    assert cache.get("k") is None
    assert cache.stats() == (0, 0)


def test_entries_expire_by_their_ttl(make_cache: MakeCache) -> None:
    clock = Clock()
    cache = make_cache(clock=clock)
    cache.put("short", b"s", 10)
    cache.put("long", b"l", 100)
    clock.now += 9.9
    assert cache.get("short") == b"s"
    clock.now += 0.1
    assert cache.get("short") is None
    assert cache.get("long") == b"l"
    clock.now += 90
    assert cache.get("long") is None


def test_the_oldest_entries_are_evicted_past_max_entries(make_cache: MakeCache) -> None:
    cache = make_cache(max_entries=3)
    for name in "abcde":
        cache.put(name, name.encode(), 60)
    assert [cache.get(n) for n in "abcde"] == [None, None, b"c", b"d", b"e"]
    assert cache.stats() == (3, 3)
    cache.put("c", b"C", 60)  # rewritten: now the newest
    cache.put("f", b"f", 60)
    assert [cache.get(n) for n in "cdef"] == [b"C", None, b"e", b"f"]


def test_the_oldest_entries_are_evicted_past_max_bytes(make_cache: MakeCache) -> None:
    cache = make_cache(max_bytes=10)
    cache.put("a", b"1234", 60)
    cache.put("b", b"1234", 60)
    cache.put("c", b"1234", 60)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, b"1234", b"1234")
    assert cache.stats() == (2, 8)
    cache.put("big", b"x" * 11, 60)  # more than the whole bound: not kept, nothing evicted
    assert cache.get("big") is None
    assert cache.stats() == (2, 8)


def test_an_expired_entry_makes_room_before_the_oldest_live_one(make_cache: MakeCache) -> None:
    clock = Clock()
    cache = make_cache(max_entries=2, clock=clock)
    cache.put("old-live", b"1", 100)
    cache.put("expiring", b"2", 1)
    clock.now += 5
    cache.put("new", b"3", 100)
    assert cache.get("new") == b"3"
    assert cache.get("expiring") is None
    # SQLite drops expired rows first, so the older live entry stays; memory evicts by age.
    if isinstance(cache, SQLiteCache):
        assert cache.get("old-live") == b"1"


def test_sqlite_entries_are_shared_by_two_stores_on_one_file(tmp_path: Path) -> None:
    first = SQLiteCache(tmp_path / "c.db")
    second = SQLiteCache(tmp_path / "c.db")
    try:
        first.put("k", b"v", 60)
        assert second.get("k") == b"v"
    finally:
        first.close()
        second.close()


def test_a_forked_child_opens_its_own_sqlite_connection(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    cache.put("parent", b"1", 60)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when it read and wrote on a connection of its own
        try:
            inherited = cache._conn
            ok = cache.get("parent") == b"1" and cache._conn is not inherited
            cache.put("child", b"2", 60)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("child") == b"2"
    cache.close()


def test_a_reply_round_trips_through_its_encoding() -> None:
    message = Message(
        "assistant",
        "the answer",
        tool_calls=(ToolCall("c1", "lookup", '{"q": 1}'),),
        reasoning="thought",
        citations=(Citation("url", "Example", url="https://example.com"),),
        state={"gemini": {"signature": "abc"}},
    )
    usage = Usage(5, 7, 1, 2, cost=0.01, cache_write_tokens=3)
    reply = CachedReply(message, "gpt-x", "tool_calls", "id-1", usage)
    assert decode_reply(encode_reply(reply)) == reply
    with_image = CachedReply(Message.with_parts("assistant", ["see", Image(data=png(2, 2))]), "m")
    assert decode_reply(encode_reply(with_image)) == with_image


def test_an_entry_of_another_format_is_a_miss() -> None:
    assert decode_reply(b'{"format": 999, "reply": {}}') is None


# -- keys --------------------------------------------------------------------------------------

BASE: dict[str, object] = {
    "provider": "openai",
    "model": "gpt-x",
    "messages": [Message("user", "hi")],
}


@pytest.mark.parametrize(
    "change",
    [
        {"provider": "other"},
        {"model": "gpt-y"},
        {"messages": [Message("user", "hi!")]},
        {"messages": [Message("system", "be brief"), Message("user", "hi")]},
        {"messages": [Message.with_parts("user", ["hi", Image(data=png(1, 1))])]},
        {"messages": [Message.with_parts("user", ["hi", Image(url="https://x/y.png")])]},
        {"tools": [Tool("lookup", "find things")]},
        {"tools": [HostedTool("web_search")]},
        {"tool_choice": "required"},
        {"schema": {"type": "object"}},
        {"temperature": 0.5},
        {"max_output_tokens": 100},
        {"extra": {"top_p": 0.5}},
        {"extra": {"stop": ["\n"]}},
        {"extra": {"seed": 7}},
        {"scope": ["alice", None]},
        {"scope": [None, "key-1"]},
    ],
)
def test_every_component_changes_the_key(change: dict[str, object]) -> None:
    assert request_key(**{**BASE, **change}) != request_key(**BASE)  # type: ignore[arg-type]


def test_equal_requests_share_a_key() -> None:
    one = request_key(**BASE, temperature=1, extra={"a": 1, "b": 2})  # type: ignore[arg-type]
    two = request_key(**BASE, temperature=1.0, extra={"b": 2, "a": 1})  # type: ignore[arg-type]
    assert one == two

    def key(data: bytes) -> str:
        message = Message.with_parts("user", ["hi", Image(data=data)])
        return request_key(provider="p", model="m", messages=[message])

    assert key(png(1, 1)) == key(png(1, 1))
    assert key(png(1, 1)) != key(png(1, 1, b"other"))


_text = st.text(max_size=8)
_requests = st.fixed_dictionaries(
    {
        "provider": st.sampled_from(["openai", "gemini"]),
        "model": st.sampled_from(["a", "b"]),
        "messages": st.lists(
            st.builds(Message, st.sampled_from(["user", "assistant", "system"]), _text),
            min_size=1,
            max_size=3,
        ),
        "tool_choice": st.none() | st.sampled_from(["auto", "none"]),
        "temperature": st.none() | st.floats(0, 2, allow_nan=False),
        "max_output_tokens": st.none() | st.integers(1, 5),
        "extra": st.dictionaries(st.sampled_from(["top_p", "stop", "seed"]), st.integers(0, 3)),
        "scope": st.tuples(st.none() | _text, st.none() | _text),
    }
)


def _canonical(request: dict[str, object]) -> object:
    temperature = request["temperature"]
    fields = {
        **request,
        "temperature": None if temperature is None else float(temperature),  # type: ignore[arg-type]
        "extra": sorted(request["extra"].items()),  # type: ignore[attr-defined]
    }
    return repr(sorted(fields.items()))


@settings(max_examples=300, deadline=None)
@given(_requests, _requests)
def test_distinct_requests_never_share_a_key(
    one: dict[str, object], two: dict[str, object]
) -> None:
    same = _canonical(one) == _canonical(two)
    assert (request_key(**one) == request_key(**two)) == same  # type: ignore[arg-type]
