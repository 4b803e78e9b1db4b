"""``POST /v1/responses`` through ``llmproxy serve``, with the real openai SDK as the client.

The gateway translates the Responses API into the core's messages and call options and renders
the Proxy's answer back in the Responses shape, so any provider answers: OpenAI's and Gemini's
fakes stand upstream here (the OpenAI fake is called on its Chat Completions endpoint).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import EasyInputMessageParam, FunctionToolParam

from llmproxy.types import Document
from llmproxy_gateway import responses_wire
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI, Fault, Reply

from .conftest import GatewayProcess, chat_bodies, serve_gateway
from .test_parts import PDF, PNG

GEMINI = "gemini/gemini-3.8-flash"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": False,
}


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, gemini: FakeGemini, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(
        upstream,
        tmp_path_factory.mktemp("responses-gateway"),
        gemini=gemini,
    )


def sdk(
    gateway: GatewayProcess, user: str = "resp-user", *budgets: str
) -> tuple[openai.OpenAI, str]:
    """An SDK client on a fresh key of its own; the key's id."""
    record, secret = gateway.keys.create(user, budgets=budgets)
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0), record.id


def last_messages(upstream: FakeOpenAI) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = chat_bodies(upstream)[-1]["messages"]
    return messages


def test_text_with_instructions_answers_a_response_object(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    client, _ = sdk(gateway)
    r = client.responses.create(model="gpt-4o-mini", input="Hello", instructions="Be brief.")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Echo: Hello"
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.instructions == "Be brief."
    assert r.usage is not None
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert last_messages(upstream) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]


def test_an_image_part_reaches_the_upstream(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    client, _ = sdk(gateway)
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    r = client.responses.create(
        model="gpt-4o-mini",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is it?"},
                    {"type": "input_image", "image_url": url, "detail": "low"},
                ],
            }
        ],
    )
    assert r.output_text == "Echo: What is it?"
    content = last_messages(upstream)[-1]["content"]
    assert content[0] == {"type": "text", "text": "What is it?"}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"] == url and content[1]["image_url"]["detail"] == "low"


def test_text_format_json_schema_is_structured_output(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    client, _ = sdk(gateway)
    upstream.enqueue(Reply(text='{"city": "Hue"}'))
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model="gpt-4o-mini",
        input="Where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )
    assert json.loads(r.output_text) == {"city": "Hue"}
    sent = chat_bodies(upstream)[-1]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"]["properties"] == schema["properties"]


def test_a_function_call_round_trip(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    client, _ = sdk(gateway)
    upstream.enqueue(
        Reply(tool_calls=[{"id": "call_w", "name": "get_weather", "arguments": {"city": "Hue"}}])
    )
    question: EasyInputMessageParam = {"role": "user", "content": "Weather in Hue?"}
    first = client.responses.create(
        model="gpt-4o-mini", input=[question], tools=[WEATHER], store=False
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_w", "get_weather", {"city": "Hue"})
    ]
    assert chat_bodies(upstream)[-1]["tools"][0]["function"]["name"] == "get_weather"
    # The client runs the tool and sends the call and its output back.
    items: list[Any] = [
        question,
        *[c.model_dump() for c in calls],
        {"type": "function_call_output", "call_id": "call_w", "output": "sunny, 31 C"},
    ]
    second = client.responses.create(
        model="gpt-4o-mini",
        input=items,
        tools=[WEATHER],
    )
    assert second.status == "completed"
    sent = last_messages(upstream)
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["id"] == "call_w"
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2] == {"role": "tool", "content": "sunny, 31 C", "tool_call_id": "call_w"}


def test_previous_response_id_continues_the_stored_exchange(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    client, _ = sdk(gateway, "carla")
    first = client.responses.create(model="gpt-4o-mini", input="My name is Ana.")
    second = client.responses.create(
        model="gpt-4o-mini", input="What is my name?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert last_messages(upstream) == [
        {"role": "user", "content": "My name is Ana."},
        {"role": "assistant", "content": "Echo: My name is Ana."},
        {"role": "user", "content": "What is my name?"},
    ]
    # A fork from the first response does not see the second exchange.
    client.responses.create(model="gpt-4o-mini", input="Bye.", previous_response_id=first.id)
    assert [m["content"] for m in last_messages(upstream)] == [
        "My name is Ana.",
        "Echo: My name is Ana.",
        "Bye.",
    ]
    # The second continues from its own history, three deep.
    client.responses.create(model="gpt-4o-mini", input="Again?", previous_response_id=second.id)
    assert len(last_messages(upstream)) == 5


def test_unstored_and_other_users_responses_are_not_found(gateway: GatewayProcess) -> None:
    client, _ = sdk(gateway, "dora")
    kept = client.responses.create(model="gpt-4o-mini", input="Hi")
    unkept = client.responses.create(model="gpt-4o-mini", input="Hi", store=False)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-4o-mini", input="x", previous_response_id=unkept.id)
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"
    stranger, _ = sdk(gateway, "eve")
    with pytest.raises(openai.BadRequestError):
        stranger.responses.create(model="gpt-4o-mini", input="x", previous_response_id=kept.id)


def test_the_stream_helper_assembles_the_final_response(gateway: GatewayProcess) -> None:
    client, _ = sdk(gateway)
    with client.responses.stream(model="gpt-4o-mini", input="Hello there") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == "Echo: Hello there"
    assert final.status == "completed" and final.usage is not None
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "Echo: Hello there"
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_streamed_function_call(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    client, _ = sdk(gateway)
    upstream.enqueue(
        Reply(tool_calls=[{"id": "call_s", "name": "get_weather", "arguments": {"city": "Hoi An"}}])
    )
    with client.responses.stream(model="gpt-4o-mini", input="Weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    call = final.output[-1]
    assert call.type == "function_call" and call.call_id == "call_s"
    assert json.loads(call.arguments) == {"city": "Hoi An"}
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds


def test_a_gemini_model_answers_in_the_responses_shape(
    gateway: GatewayProcess, gemini: FakeGemini
) -> None:
    client, _ = sdk(gateway)
    r = client.responses.create(model=GEMINI, input="Hello", instructions="Be kind.")
    assert r.output_text == "Echo: Hello" and r.status == "completed"
    body = next(q.json() for q in reversed(gemini.requests) if "Content" in q.path)
    assert body["systemInstruction"]["parts"][0]["text"] == "Be kind."
    with client.responses.stream(model=GEMINI, input="Streamed") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Echo: Streamed"


def test_a_cut_short_answer_is_incomplete(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    client, _ = sdk(gateway)
    upstream.enqueue(Reply(text="partial", finish_reason="length"))
    r = client.responses.create(model="gpt-4o-mini", input="Long story", max_output_tokens=16)
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert chat_bodies(upstream)[-1]["max_completion_tokens"] == 16


def test_a_spent_budget_is_429_in_openais_error_shape(gateway: GatewayProcess) -> None:
    client, _ = sdk(gateway, "frank", "tokens:5")
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="gpt-4o-mini", input="Hello")
    assert info.value.status_code == 429
    assert info.value.code == "budget_exceeded" and info.value.type == "insufficient_quota"
    with (
        pytest.raises(openai.RateLimitError),
        client.responses.stream(model="gpt-4o-mini", input="Hello") as stream,
    ):
        list(stream)


def test_bad_requests_are_400_naming_the_field(gateway: GatewayProcess) -> None:
    _record, secret = gateway.keys.create("bad-user")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "x"}, "model"),
        ({"model": "gpt-4o-mini"}, "input"),
        ({"model": "gpt-4o-mini", "input": [{"type": "mystery"}]}, "input[0].type"),
        (
            {"model": "gpt-4o-mini", "input": "x", "tools": [{"type": "web_search"}]},
            "tools[0].type",
        ),
        ({"model": "gpt-4o-mini", "input": "x", "background": True}, "background"),
    ]
    for body, param in cases:
        request = urllib.request.Request(
            gateway.url + "/v1/responses",
            data=json.dumps(body).encode(),
            headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == 400, body
        assert json.loads(info.value.read())["error"]["param"] == param


def test_each_response_is_a_usage_log_row(gateway: GatewayProcess) -> None:
    client, key_id = sdk(gateway, "gina")
    client.responses.create(model="gpt-4o-mini", input="One")
    with client.responses.stream(model="gpt-4o-mini", input="Two") as stream:
        stream.get_final_response()
    rows = gateway.rows(2, key=key_id)
    assert len(rows) == 2
    assert all(row.user == "gina" and row.key == key_id for row in rows)
    assert all(row.input_tokens > 0 and row.output_tokens > 0 for row in rows)


def test_a_streamed_response_is_stored_before_it_ends(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    client, _ = sdk(gateway, "hana")
    with client.responses.stream(model="gpt-4o-mini", input="Remember 7.") as stream:
        first = stream.get_final_response()
    # Continued at once: the exchange was written before response.completed went out.
    client.responses.create(model="gpt-4o-mini", input="Which?", previous_response_id=first.id)
    assert [m["content"] for m in last_messages(upstream)] == [
        "Remember 7.",
        "Echo: Remember 7.",
        "Which?",
    ]


def test_a_stream_broken_upstream_ends_in_error_and_failed(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    client, _ = sdk(gateway)
    upstream.enqueue(Fault.drop_after(2))
    with client.responses.stream(model="gpt-4o-mini", input="one two three four") as stream:
        events = list(stream)
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    error = events[-2]
    assert error.type == "error" and error.code == "upstream_error"
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_items_map_onto_core_messages() -> None:
    call = responses_wire.parse(
        json.dumps(
            {
                "model": "m",
                "input": [
                    {"role": "developer", "content": "Be terse."},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Q"}],
                    },
                    {"type": "reasoning", "id": "rs_1", "summary": []},
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Let me look."}],
                    },
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "one"},
                    {
                        "type": "function_call_output",
                        "call_id": "c2",
                        "output": [{"type": "input_text", "text": "two"}],
                    },
                ],
                "tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "g"}],
                "tool_choice": {"type": "function", "name": "g"},
                "text": {"format": {"type": "json_object"}},
                "user": "u-1",
            }
        ).encode()
    )
    roles = [
        (m.role, m.content, [c.id for c in m.tool_calls], m.tool_call_id) for m in call.messages
    ]
    assert roles == [
        ("system", "Be terse.", [], None),
        ("user", "Q", [], None),
        ("assistant", "Let me look.", ["c1", "c2"], None),
        ("tool", "one", [], "c1"),
        ("tool", "two", [], "c2"),
    ]
    assert call.kwargs["run_tools"] is False and call.kwargs["tool_choice"] == "g"
    assert call.kwargs["response_format"] == {"type": "json_object"}
    assert call.kwargs["tags"] == {"end_user": "u-1"}
    assert call.store and not call.stream and call.previous_response_id is None


def test_a_pdf_file_part_becomes_a_document() -> None:
    pdf = base64.b64encode(PDF).decode()
    call = responses_wire.parse(
        json.dumps(
            {
                "model": "m",
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_file",
                                "filename": "a.pdf",
                                "file_data": f"data:application/pdf;base64,{pdf}",
                            },
                            {"type": "input_file", "file_id": "file-1"},
                        ],
                    }
                ],
            }
        ).encode()
    )
    parts = call.messages[0].parts
    assert isinstance(parts[0], Document) and parts[0].data == PDF and parts[0].filename == "a.pdf"
    assert isinstance(parts[1], Document) and parts[1].file_id == "file-1"
