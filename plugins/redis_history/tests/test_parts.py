"""Parts and provider state in the seed's layout: text stays in ``content``, data kept once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
import redis

from llmproxy.errors import StoreError
from llmproxy.history.base import HistoryRecord
from llmproxy.history.codec import blob_hash
from llmproxy.types import Audio, Document, Image, Message
from llmproxy_redis_history import RedisHistoryStore
from llmproxy_redis_history.layout import session_tag
from llmproxy_testing.parts import pdf, png, wav

Make = Callable[..., RedisHistoryStore]


def _seed_read_back(raw: redis.Redis, prefix: str = "llm_proxy") -> list[dict[bytes, bytes]]:
    """What the seed's documented example does: LRANGE the key list, HGETALL each key."""
    keys = raw.lrange(f"{prefix}:llm_proxy_history_key_list", 0, -1)
    return [raw.hgetall(key) for key in keys]  # type: ignore[misc]


def test_a_text_only_message_keeps_the_seeds_hash_exactly(
    make_store: Make, raw: redis.Redis
) -> None:
    store = make_store()
    store.append([HistoryRecord("s", Message("user", "hi"), created_at=5.0)])
    (fields,) = _seed_read_back(raw)
    assert fields == {
        b"role": b"user",
        b"content": b"hi",
        b"session_id": b"s",
        b"created_at": b"5.0",
        b"input_tokens": b"0",
        b"output_tokens": b"0",
        b"interrupted": b"0",
    }
    assert raw.keys("*blobs*") == []


def test_a_message_with_parts_reads_back_the_seeds_way(make_store: Make, raw: redis.Redis) -> None:
    store = make_store()
    image = png(20, 10)
    message = Message.with_parts(
        "user",
        ["What is in this picture?", Image(data=image, detail="high"), "And this file?"],
        state={"gemini": {"thought_signature": "c2ln"}},
    )
    store.append([HistoryRecord("s", message, created_at=1.0)])
    (fields,) = _seed_read_back(raw)
    assert fields[b"content"] == b"What is in this picture?\n\nAnd this file?"
    assert fields[b"role"] == b"user"
    parts = json.loads(fields[b"parts"])
    assert [p["type"] for p in parts] == ["text", "image", "text"]
    assert parts[1] == {
        "type": "image",
        "blob": blob_hash(image),
        "media_type": "image/png",
        "detail": "high",
        "width": 20,
        "height": 10,
    }
    assert json.loads(fields[b"state"]) == {"gemini": {"thought_signature": "c2ln"}}
    assert image not in b"".join(fields.values())  # the bytes are in the blobs hash
    blobs_key = f"llm_proxy:session:{{{session_tag('s')}}}:blobs"
    assert raw.hgetall(blobs_key) == {
        blob_hash(image).encode(): base64.b64encode(image),
    }
    # a new store (no cache) rebuilds the message exactly
    assert make_store(cache=False).load("s")[0].message == message


def test_the_same_data_twice_in_a_session_is_stored_once(
    make_store: Make, raw: redis.Redis
) -> None:
    store = make_store()
    image, sound, doc = png(8, 8), wav(0.01), pdf(3)
    for n in range(3):
        store.append(
            [
                HistoryRecord(
                    "s",
                    Message.with_parts(
                        "user", [f"turn {n}", Image(data=bytes(image)), Audio(sound), Document(doc)]
                    ),
                    created_at=float(n),
                    id=f"r{n}",
                )
            ]
        )
    assert store.blob_count("s") == 3
    store.append([HistoryRecord("other", Message.with_parts("user", [Image(data=image)]))])
    assert store.blob_count("other") == 1  # sessions do not share blobs
    loaded = make_store(cache=False).load("s")
    assert [r.message.parts[1:] for r in loaded] == [
        (Image(data=image), Audio(sound), Document(doc))
    ] * 3
    assert store.delete("s") == 3
    assert store.blob_count("s") == 0
    assert store.blob_count("other") == 1


def test_blobs_go_when_no_kept_message_references_them(make_store: Make) -> None:
    store = make_store(max_messages=2)
    kept, dropped = png(4, 4), png(5, 5)
    store.append([HistoryRecord("s", Message.with_parts("user", [Image(data=dropped)]))])
    store.append([HistoryRecord("s", Message.with_parts("user", [Image(data=kept)]))])
    assert store.blob_count("s") == 2
    store.append([HistoryRecord("s", Message("assistant", "text only"))])  # pushes `dropped` out
    assert store.blob_count("s") == 1
    assert [r.message.parts for r in make_store(cache=False).load("s")] == [
        (Image(data=kept),),
        (),
    ]
    # the same bytes in a new message are stored again after being trimmed
    store.append([HistoryRecord("s", Message.with_parts("user", [Image(data=dropped)]))])
    assert store.blob_count("s") == 1  # `kept` went out with its message
    assert [r.message.parts for r in store.load("s")] == [(), (Image(data=dropped),)]


def test_blobs_expire_with_the_session(make_store: Make, raw: redis.Redis) -> None:
    store = make_store(ttl=1000)
    store.append([HistoryRecord("s", Message.with_parts("user", [Image(data=png(2, 2))]))])
    ttl = raw.pttl(f"llm_proxy:session:{{{session_tag('s')}}}:blobs")
    assert 0 < ttl <= 1_000_000


def test_a_missing_blob_is_a_clear_error(make_store: Make, raw: redis.Redis) -> None:
    store = make_store(cache=False)
    store.append([HistoryRecord("s", Message.with_parts("user", [Image(data=png(2, 2))]))])
    raw.delete(f"llm_proxy:session:{{{session_tag('s')}}}:blobs")
    with pytest.raises(StoreError, match="not stored"):
        store.load("s")
