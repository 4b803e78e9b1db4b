"""``response_format`` with a JSON schema through ``llmproxy serve``, on all three providers.

The gateway turns OpenAI's ``{"type": "json_schema", ...}`` into the Proxy's ``schema=``, so
each provider is asked for JSON in its own way and the answer is checked before it is sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmproxy_testing._http import FakeServer
from llmproxy_testing.fake_openai import Reply

from .test_client_tools import (
    DEEPSEEK,
    GEMINI,
    MODELS,
    OPENAI,
    gateway,
    model_bodies,
    sdk,
    servers,
)

__all__ = ["gateway", "servers"]  # the fixtures this module uses (deepseek, gemini: conftest)

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


@pytest.mark.parametrize("model", MODELS)
def test_a_json_schema_is_asked_in_each_providers_way(
    gateway: Any, servers: dict[str, FakeServer], model: str
) -> None:
    client, _key = sdk(gateway)
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Invent a person"}],
        response_format=FORMAT,
    )
    person = json.loads(answer.choices[0].message.content or "")
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    body = model_bodies(servers[model])[-1]
    if model == OPENAI:
        sent = body["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
        assert sent["json_schema"]["name"] == "person"
        assert sent["json_schema"]["schema"]["additionalProperties"] is False
    elif model == DEEPSEEK:
        assert body["response_format"] == {"type": "json_object"}
        assert "age" in body["messages"][0]["content"]  # the schema is in the instructions
    else:
        assert model == GEMINI
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"]["required"] == ["name", "age"]


def test_an_answer_that_does_not_fit_is_an_error_not_a_wrong_json(
    gateway: Any, servers: dict[str, FakeServer]
) -> None:
    import openai

    client, _key = sdk(gateway)
    servers[OPENAI].enqueue(Reply(text='{"name": "Ann"}'))  # no age
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=OPENAI,
            messages=[{"role": "user", "content": "Invent a person"}],
            response_format=FORMAT,
        )
    assert caught.value.status_code == 502
    assert "age" in str(caught.value)


def test_a_malformed_json_schema_format_is_a_400(gateway: Any) -> None:
    import openai

    client, _key = sdk(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=OPENAI,
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x"}},
        )
    assert "response_format" in str(caught.value)
