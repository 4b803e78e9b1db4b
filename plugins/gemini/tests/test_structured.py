"""Structured output on Gemini: ``responseMimeType`` and ``responseJsonSchema`` on the wire.

The real google-genai SDK sends the requests to FakeGemini, which answers a fitting instance of
the requested schema when nothing is enqueued.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmproxy.structured import output_spec
from llmproxy_testing.fake_gemini import FakeGemini, Reply
from llmproxy_testing.proxies import ProxyMaker

MODEL = "gemini-3.8-flash"
NAME = f"gemini/{MODEL}"


@dataclasses.dataclass
class Recipe:
    title: str
    minutes: int
    steps: list[str]
    vegan: bool = False


def generate_bodies(server: FakeGemini) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if "Content" in r.path]


async def test_the_schema_goes_out_as_response_json_schema(
    make_proxy: ProxyMaker, server: FakeGemini
) -> None:
    response = await make_proxy().achat("A recipe", model=NAME, schema=Recipe)
    config = generate_bodies(server)[0]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == output_spec(Recipe).schema.schema
    assert config["responseJsonSchema"] == {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "minutes": {"type": "integer"},
            "steps": {"type": "array", "items": {"type": "string"}},
            "vegan": {"type": "boolean"},
        },
        "required": ["title", "minutes", "steps"],
        "additionalProperties": False,
    }
    assert response.parsed == Recipe("", 0, [])


def test_a_streamed_answer_is_parsed_on_the_final_event(
    make_proxy: ProxyMaker, server: FakeGemini
) -> None:
    server.enqueue(Reply(text='{"title": "Soup", "minutes": 20, "steps": ["boil"], "vegan": true}'))
    events = list(make_proxy().stream("A recipe", model=NAME, schema=Recipe))
    assert "".join(e.text for e in events).startswith('{"title": "Soup"')
    final = events[-1].response
    assert final is not None and final.parsed == Recipe("Soup", 20, ["boil"], True)
    assert "responseJsonSchema" in generate_bodies(server)[0]["generationConfig"]


def test_no_schema_sends_no_json_mode(make_proxy: ProxyMaker, server: FakeGemini) -> None:
    make_proxy().chat("Hi", model=NAME)
    config = generate_bodies(server)[0].get("generationConfig", {})
    assert "responseMimeType" not in config and "responseJsonSchema" not in config
