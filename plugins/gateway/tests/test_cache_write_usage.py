"""Prompt-cache writes reported upstream reach every gateway API's usage and the usage log.

The OpenAI fake upstream reports ``prompt_tokens_details.cache_write_tokens`` (OpenRouter's
field, which the OpenAI provider reads as :attr:`llmproxy.types.Usage.cache_write_tokens`);
the gateway renders them in Chat Completions (``prompt_tokens_details.cache_write_tokens``),
the Responses API (``input_tokens_details.cache_write_tokens``) and Anthropic's Messages
(``cache_creation_input_tokens``, with ``input_tokens`` the uncached rest), and logs them.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from llmproxy.types import Usage
from llmproxy_gateway import messages_wire, responses_wire, wire
from llmproxy_testing.fake_openai import FakeOpenAI, Reply

from .conftest import GatewayProcess

USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 4,
    "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 600},
}


def post(gateway: GatewayProcess, path: str, secret: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        gateway.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_cache_writes_in_every_api_and_the_usage_log(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    record, secret = gateway.keys.create("cache-writer")
    messages = [{"role": "user", "content": "Hello"}]

    upstream.enqueue(Reply(text="one", usage=USAGE))
    chat = post(gateway, "/v1/chat/completions", secret, {"model": "fast", "messages": messages})
    assert chat["usage"]["prompt_tokens"] == 1000
    assert chat["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 300,
        "cache_write_tokens": 600,
    }

    upstream.enqueue(Reply(text="two", usage=USAGE))
    response = post(gateway, "/v1/responses", secret, {"model": "fast", "input": "Hello"})
    assert response["usage"]["input_tokens"] == 1000
    assert response["usage"]["input_tokens_details"] == {
        "cached_tokens": 300,
        "cache_write_tokens": 600,
    }

    upstream.enqueue(Reply(text="three", usage=USAGE))
    message = post(
        gateway, "/v1/messages", secret, {"model": "fast", "max_tokens": 20, "messages": messages}
    )
    assert message["usage"] == {
        "input_tokens": 100,
        "output_tokens": 4,
        "cache_read_input_tokens": 300,
        "cache_creation_input_tokens": 600,
        "cache_creation": {"ephemeral_5m_input_tokens": 600, "ephemeral_1h_input_tokens": 0},
    }

    rows = gateway.rows(3, key=record.id)
    assert [(r.input_tokens, r.cached_input_tokens, r.cache_write_tokens) for r in rows] == [
        (1000, 300, 600)
    ] * 3
    log = gateway.usage_log()
    try:
        assert {t.group: t.cache_write_tokens for t in log.totals("key")}[record.id] == 1800
    finally:
        log.close()


def test_no_cache_writes_keep_openais_usage_shape() -> None:
    """Without writes the OpenAI shapes carry only OpenAI's own fields."""
    plain = Usage(10, 2, cached_input_tokens=4)
    assert wire.usage_json(plain)["prompt_tokens_details"] == {"cached_tokens": 4}
    assert responses_wire.usage_json(plain)["input_tokens_details"] == {"cached_tokens": 4}
    assert messages_wire.usage_json(plain)["cache_creation_input_tokens"] == 0
    assert messages_wire.usage_json(plain)["input_tokens"] == 6


def test_messages_split_cache_writes_by_their_lifetime() -> None:
    """Anthropic's shape says how many writes were for an hour and how many for 5 minutes."""
    usage = Usage(
        1000, 4, cached_input_tokens=300, cache_write_tokens=600, cache_write_1h_tokens=200
    )
    body = messages_wire.usage_json(usage)
    assert body["input_tokens"] == 100
    assert body["cache_creation_input_tokens"] == 600
    assert body["cache_creation"] == {
        "ephemeral_5m_input_tokens": 400,
        "ephemeral_1h_input_tokens": 200,
    }
