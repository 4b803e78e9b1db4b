"""Structured output on DeepSeek: JSON mode, with the schema in the system message.

DeepSeek has no schema mode; the real openai SDK sends the request to FakeDeepSeek, which reads
the schema back out of the system message and answers a fitting instance.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

import pytest

from llmproxy.errors import SchemaError
from llmproxy.structured import output_spec, schema_instructions
from llmproxy_testing.fake_deepseek import FakeDeepSeek, Reply
from llmproxy_testing.proxies import ProxyMaker

from .conftest import MODEL

NAME = f"deepseek/{MODEL}"


class Answer(TypedDict):
    verdict: bool
    reason: str


def bodies(server: FakeDeepSeek) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path.endswith("/chat/completions")]


def test_json_mode_with_the_schema_in_a_system_message(
    make_proxy: ProxyMaker, server: FakeDeepSeek
) -> None:
    response = make_proxy().chat("Is it?", model=NAME, schema=Answer)
    body = bodies(server)[0]
    assert body["response_format"] == {"type": "json_object"}
    instructions = schema_instructions(output_spec(Answer).schema)
    assert body["messages"] == [
        {"role": "system", "content": instructions},
        {"role": "user", "content": "Is it?"},
    ]
    assert "JSON" in instructions
    assert json.dumps(output_spec(Answer).schema.schema, separators=(",", ":")) in instructions
    assert response.parsed == {"verdict": False, "reason": ""}


async def test_the_instructions_join_an_existing_system_prompt(
    make_proxy: ProxyMaker, server: FakeDeepSeek
) -> None:
    await make_proxy().achat("Is it?", model=NAME, system="Be brief.", schema=Answer)
    first = bodies(server)[0]["messages"][0]
    instructions = schema_instructions(output_spec(Answer).schema)
    assert first == {"role": "system", "content": f"Be brief.\n\n{instructions}"}


def test_an_answer_off_the_schema_is_retried_then_raised(
    make_proxy: ProxyMaker, server: FakeDeepSeek
) -> None:
    server.enqueue(Reply(text='{"verdict": "yes"}'))
    server.enqueue(Reply(text='{"verdict": "still yes"}'))
    with pytest.raises(SchemaError) as caught:
        make_proxy().chat("Is it?", model=NAME, schema=Answer, schema_retries=1)
    assert caught.value.raw == '{"verdict": "still yes"}'
    second = bodies(server)[1]["messages"]
    assert second[-2]["role"] == "assistant" and second[-2]["content"] == '{"verdict": "yes"}'
    assert "$.verdict: expected boolean" in second[-1]["content"]
