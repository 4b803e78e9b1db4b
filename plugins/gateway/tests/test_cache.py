"""The response cache through ``llmproxy serve``: per key, per request, in the log and dashboard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from llmproxy.errors import ConfigError
from llmproxy_gateway.keys import parse_cache
from llmproxy_testing.fake_openai import FakeOpenAI

from .conftest import ADMIN_KEY, GatewayProcess, chat_bodies, serve_gateway


@pytest.fixture(scope="module")
def cached(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("cached")
    yield from serve_gateway(upstream, root, LLMPROXY_CACHE_URL=f"sqlite:///{root}/data/cache.db")


def sdk(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def new_key(gateway: GatewayProcess, user: str, cache: bool | float = False) -> tuple[str, str]:
    record, secret = gateway.keys.create(user, cache=cache)
    return secret, record.id


def ask(gateway: GatewayProcess, key: str, text: str, header: str | None = None) -> str:
    r = sdk(gateway, key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        extra_headers={"x-llmproxy-cache": header} if header is not None else None,
    )
    return r.choices[0].message.content or ""


def test_a_key_with_the_cache_is_answered_once_per_request(
    cached: GatewayProcess, upstream: FakeOpenAI
) -> None:
    key, key_id = new_key(cached, "alice", cache=True)
    before = len(chat_bodies(upstream))
    assert ask(cached, key, "cache me") == ask(cached, key, "cache me") == "Echo: cache me"
    assert len(chat_bodies(upstream)) == before + 1
    hit, miss = cached.rows(2, key=key_id)
    assert (miss.cache_hit, hit.cache_hit) == (False, True)
    assert hit.total_tokens == 0 and miss.total_tokens > 0
    # Streamed, the same request is served from the entry as a stream.
    stream = sdk(cached, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "cache me"}], stream=True
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: cache me"
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len(chat_bodies(upstream)) == before + 1
    data = httpx.get(
        cached.url + "/dashboard/data", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).json()
    assert data["summary"]["cache_hits"] >= 2
    assert 0 < data["summary"]["cache_hit_rate"] <= 1
    assert data["keys"][key_id]["cache"] is True


def test_keys_and_users_never_share_entries(cached: GatewayProcess, upstream: FakeOpenAI) -> None:
    one, _ = new_key(cached, "bob", cache=600)
    two, _ = new_key(cached, "bob", cache=600)
    other, _ = new_key(cached, "carol", cache=600)
    before = len(chat_bodies(upstream))
    for key in (one, two, other, one):
        ask(cached, key, "isolated")
    assert len(chat_bodies(upstream)) == before + 3


def test_a_request_header_asks_for_the_cache_or_skips_it(
    cached: GatewayProcess, upstream: FakeOpenAI
) -> None:
    plain, _ = new_key(cached, "dave")
    before = len(chat_bodies(upstream))
    ask(cached, plain, "by header")
    ask(cached, plain, "by header")
    assert len(chat_bodies(upstream)) == before + 2  # no cache for a key without it
    ask(cached, plain, "by header", "on")
    ask(cached, plain, "by header", "on")
    assert len(chat_bodies(upstream)) == before + 3
    caching, _ = new_key(cached, "dave", cache=True)
    ask(cached, caching, "skip it", "off")
    ask(cached, caching, "skip it", "off")
    assert len(chat_bodies(upstream)) == before + 5


def test_a_bad_header_is_400(cached: GatewayProcess) -> None:
    key, _ = new_key(cached, "erin")
    with pytest.raises(openai.BadRequestError, match="x-llmproxy-cache must be on, off"):
        ask(cached, key, "x", "forever")


def test_a_gateway_without_a_cache_refuses_the_header_and_ignores_keys(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    record, key = gateway.keys.create("frank", cache=True)
    assert record.cache is True
    before = len(chat_bodies(upstream))
    ask(gateway, key, "no cache here")
    ask(gateway, key, "no cache here")
    assert len(chat_bodies(upstream)) == before + 2
    with pytest.raises(openai.BadRequestError, match="has none"):
        ask(gateway, key, "x", "60")


def test_parse_cache_words_and_numbers() -> None:
    assert [parse_cache(v) for v in ("on", "TRUE", "off", "", "90", "0.5")] == [
        True,
        True,
        False,
        False,
        90.0,
        0.5,
    ]
    for bad in ("0", "-5", "inf", "soon"):
        with pytest.raises(ConfigError, match="time to live"):
            parse_cache(bad)


def test_a_key_store_gains_the_cache_column(tmp_path: Path) -> None:
    import sqlite3

    from llmproxy_gateway.keys import KeyStore

    path = tmp_path / "keys.db"
    first = KeyStore(path)
    record, _ = first.create("gina", models="openai/*")
    first.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE gateway_keys DROP COLUMN cache")  # as a store made before it
    conn.commit()
    conn.close()
    again = KeyStore(path)
    try:
        assert again.get(record.id) == record
        made, _ = again.create("gina", cache="120")
        assert again.get(made.id) is not None and again.get(made.id).cache == 120.0  # type: ignore[union-attr]
    finally:
        again.close()
