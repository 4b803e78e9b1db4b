"""Structured output on OpenAI: the exact wire forms (Chat Completions, Responses) and parsing.

The real openai SDK sends the requests to FakeOpenAI, which refuses a strict schema that strict
mode cannot take (as OpenAI does) and answers a fitting instance when nothing is enqueued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from llmproxy import Proxy
from llmproxy.errors import ProviderBadRequest
from llmproxy.structured import output_spec
from llmproxy.types import ChatRequest, Message, ResponseSchema
from llmproxy_openai.provider import OpenAIProvider
from llmproxy_testing.fake_openai import FakeOpenAI, Reply
from llmproxy_testing.proxies import ProxyMaker

from .conftest import API_KEY

MODEL = "gpt-5.4-mini"


@attrs.frozen
class Weather:
    city: str
    celsius: float
    note: str | None = None


#: Weather's schema as strict mode gets it: all required, the optional one nullable.
STRICT = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "celsius": {"type": "number"},
        "note": {"type": ["string", "null"]},
    },
    "required": ["city", "celsius", "note"],
    "additionalProperties": False,
}


def request(schema: ResponseSchema) -> ChatRequest:
    return ChatRequest(
        (Message("user", "Weather?"),),
        MODEL,
        "openai",
        max_output_tokens=50,
        response_schema=schema,
    )


def bodies(server: FakeOpenAI, path: str) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path == path]


@pytest.fixture
def make_proxy(server: FakeOpenAI) -> Iterator[ProxyMaker]:
    maker = ProxyMaker({"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": server.base_url})
    yield maker
    maker.close()


def test_chat_completions_sends_a_strict_json_schema_response_format(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    completion = provider.chat(request(output_spec(Weather).schema))
    assert bodies(server, "/v1/chat/completions") == [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Weather?"}],
            "max_completion_tokens": 50,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "Weather", "schema": STRICT, "strict": True},
            },
        }
    ]
    assert completion.message.content == '{"city": "", "celsius": 0, "note": ""}'


def test_a_non_strict_schema_goes_out_as_it_is(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    loose = {"type": "object", "properties": {"a": {"type": "integer"}}}
    provider.chat(request(ResponseSchema("loose", loose, strict=False)))
    sent = bodies(server, "/v1/chat/completions")[0]["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "loose", "schema": loose, "strict": False},
    }


async def test_the_responses_api_sends_text_format(
    make_provider: Callable[..., OpenAIProvider], server: FakeOpenAI, mode: str
) -> None:
    provider = make_provider(api="responses")
    req = request(output_spec(Weather).schema)
    if mode == "sync":
        completion = provider.chat(req)
    else:
        completion = await provider.achat(req)
    body = bodies(server, "/v1/responses")[0]
    assert body["text"] == {
        "format": {"type": "json_schema", "name": "Weather", "schema": STRICT, "strict": True}
    }
    assert completion.message.content == '{"city": "", "celsius": 0, "note": ""}'


def test_the_proxy_parses_a_streamed_answer(make_proxy: ProxyMaker, server: FakeOpenAI) -> None:
    server.enqueue(Reply(text='{"city": "Oslo", "celsius": -3.5, "note": null}'))
    events = list(make_proxy().stream("Weather?", model=f"openai/{MODEL}", schema=Weather))
    final = events[-1].response
    assert final is not None and final.parsed == Weather("Oslo", -3.5)
    body = bodies(server, "/v1/chat/completions")[0]
    assert body["stream"] is True
    assert body["response_format"]["json_schema"]["schema"] == STRICT


def test_a_strict_schema_strict_mode_cannot_take_is_refused_by_the_fake(
    make_proxy: ProxyMaker, server: FakeOpenAI
) -> None:
    # What a provider that skipped the strict rewrite would send: OpenAI answers 400.
    proxy: Proxy = make_proxy()
    with pytest.raises(ProviderBadRequest, match="additionalProperties"):
        proxy.chat(
            "Weather?",
            model=f"openai/{MODEL}",
            schema=Weather,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "w", "strict": True, "schema": {"type": "object"}},
            },
        )
