"""The fakes script tool conversations: FakeOpenAI's Responses API and Chat Completions, FakeGemini.

Bodies and stream events are checked against the real ``openai`` SDK's models (strictly, with
pydantic validation, not the SDK's lenient construction), so the fake speaks the real wire shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pydantic
import pytest
from google import genai
from google.genai import types as gtypes
from openai.types.responses import Response, ResponseStreamEvent

from llmproxy_testing._responses import input_tokens
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI, Fault, Reply

KEY = "sk-test-0123456789abcdef-wxyz"
MODEL = "gpt-5.4-mini"
EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
FUNCTION = {"type": "function", "name": "get_weather", "parameters": {}, "strict": False}


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    yield c
    c.close()


def create(client: openai.OpenAI, **params: Any) -> dict[str, Any]:
    """POST /v1/responses and return the JSON body, checked against the SDK's Response model."""
    params.setdefault("model", MODEL)
    raw = client.responses.with_raw_response.create(**params)
    body: dict[str, Any] = json.loads(raw.http_response.content)
    Response.model_validate(body)
    return body


def events(client: openai.OpenAI, **params: Any) -> list[dict[str, Any]]:
    """Stream /v1/responses; return the events, each checked against the SDK's event models."""
    params.setdefault("model", MODEL)
    raw = client.responses.with_raw_response.create(stream=True, **params)
    out: list[dict[str, Any]] = []
    name = None
    for line in raw.http_response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            event = json.loads(line[5:])
            EVENTS.validate_python(event)
            assert event["type"] == name
            out.append(event)
    return out


# --------------------------------------------------------------------------- Responses API


def test_default_answer_echoes_with_usage(client: openai.OpenAI) -> None:
    body = create(client, input="Hello there", instructions="Be brief.")
    [message] = body["output"]
    assert message["content"][0]["text"] == "Echo: Hello there"
    assert body["status"] == "completed" and body["instructions"] == "Be brief."
    # 3 + (2 words + 3) + (2 words + 3) for the input and the instructions
    assert (
        body["usage"]["input_tokens"]
        == 13
        == input_tokens({"input": "Hello there", "instructions": "Be brief."})
    )
    assert body["usage"]["output_tokens"] == 3
    assert body["usage"]["total_tokens"] == 16


def test_a_scripted_tool_conversation(client: openai.OpenAI, server: FakeOpenAI) -> None:
    server.enqueue(
        Reply(
            tool_calls=[
                {"id": "call_1", "name": "get_weather", "arguments": {"city": "Hanoi"}},
                {"id": "call_2", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
            ]
        ),
        Reply(
            text="Sunny and rainy.",
            citations=[{"type": "url_citation", "url": "https://w.example", "title": "W"}],
        ),
    )
    question = {"role": "user", "content": "Hanoi and Oslo?"}
    first = create(client, input=[question], tools=[FUNCTION])
    assert [(i["type"], i["call_id"]) for i in first["output"]] == [
        ("function_call", "call_1"),
        ("function_call", "call_2"),
    ]
    assert json.loads(first["output"][0]["arguments"]) == {"city": "Hanoi"}
    calls = [{k: i[k] for k in ("type", "call_id", "name", "arguments")} for i in first["output"]]
    outputs = [
        {"type": "function_call_output", "call_id": c["call_id"], "output": "ok"} for c in calls
    ]
    second = create(client, input=[question, *calls, *outputs], tools=[FUNCTION])
    [message] = second["output"]
    assert message["content"][0]["text"] == "Sunny and rainy."
    assert message["content"][0]["annotations"] == [
        {
            "type": "url_citation",
            "url": "https://w.example",
            "title": "W",
            "start_index": 0,
            "end_index": 16,
        }
    ]


def test_hosted_outputs_come_with_results_only_when_included(
    client: openai.OpenAI, server: FakeOpenAI
) -> None:
    reply = Reply(
        text="Found it.",
        reasoning="Look in the files.",
        hosted_outputs=[
            {"type": "file_search_call", "queries": ["q"], "results": [{"file_id": "f1"}]},
            {
                "type": "code_interpreter_call",
                "code": "1+1",
                "outputs": [{"type": "logs", "logs": "2"}],
            },
        ],
    )
    tools = [
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
    ]
    server.enqueue(reply, reply)
    bare = create(client, input="q", tools=tools)
    reasoning, search, code, _message = bare["output"]
    assert (reasoning["type"], reasoning["summary"]) == ("reasoning", [])
    assert search["results"] is None and code["outputs"] is None
    full = create(
        client,
        input="q",
        tools=tools,
        include=["file_search_call.results", "code_interpreter_call.outputs"],
        reasoning={"summary": "auto"},
    )
    reasoning, search, code, _message = full["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Look in the files."}]
    assert search["results"] == [{"file_id": "f1"}] and search["status"] == "completed"
    assert code["outputs"] == [{"type": "logs", "logs": "2"}]
    assert code["container_id"].startswith("cntr_")
    assert full["usage"]["output_tokens_details"]["reasoning_tokens"] == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"input": []}, "Missing required parameter: 'input'."),
        (
            {"input": "q", "tools": [{"type": "file_search"}]},
            "Missing required parameter: 'tools[0].vector_store_ids'.",
        ),
        (
            {"input": "q", "tools": [{"type": "code_interpreter"}]},
            "Missing required parameter: 'tools[0].container'.",
        ),
        ({"input": "q", "tools": [{"type": "teleport"}]}, "Invalid value: 'teleport'"),
        (
            {"input": "q", "tools": [FUNCTION], "tool_choice": {"type": "function", "name": "x"}},
            "Tool choice 'function' not found",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
            "No tool call found for function call output with call_id c.",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": "q"},
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                ]
            },
            "No tool output found for function call c.",
        ),
        ({"input": [{"role": "robot", "content": "q"}]}, "Invalid value: 'robot'"),
        ({"input": "q", "max_output_tokens": 8}, "Expected a value >= 16, but got 8"),
    ],
)
def test_requests_the_real_api_refuses(
    client: openai.OpenAI, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        create(client, **params)
    assert message in info.value.message


def test_the_output_cap_cuts_and_marks_the_response_incomplete(
    client: openai.OpenAI, server: FakeOpenAI
) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    server.enqueue(Reply(text=words, tool_calls=[{"name": "f", "arguments": "{}"}]))
    body = create(client, input="q", max_output_tokens=16)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    [message] = body["output"]  # the function call was cut too
    assert len(message["content"][0]["text"].split()) == 16
    assert message["status"] == "incomplete"
    assert body["usage"]["output_tokens"] == 16


def test_stream_events_in_order(client: openai.OpenAI, server: FakeOpenAI) -> None:
    server.enqueue(
        Reply(
            text="Hanoi is sunny.",
            reasoning="Check it.",
            hosted_outputs=[{"type": "file_search_call", "queries": ["hanoi"]}],
            citations=[{"type": "file_citation", "file_id": "f1", "filename": "a.md"}],
            tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Hanoi"}}],
        )
    )
    got = events(
        client,
        input="q",
        tools=[FUNCTION, {"type": "file_search", "vector_store_ids": ["v"]}],
        reasoning={"summary": "auto"},
    )
    kinds = [e["type"] for e in got]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    text = "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta")
    summary = "".join(
        e["delta"] for e in got if e["type"] == "response.reasoning_summary_text.delta"
    )
    arguments = "".join(
        e["delta"] for e in got if e["type"] == "response.function_call_arguments.delta"
    )
    assert (text, summary, json.loads(arguments)) == (
        "Hanoi is sunny.",
        "Check it.",
        {"city": "Hanoi"},
    )
    assert "response.file_search_call.searching" in kinds
    assert "response.output_text.annotation.added" in kinds
    final = got[-1]["response"]
    assert [i["type"] for i in final["output"]] == [
        "reasoning",
        "file_search_call",
        "message",
        "function_call",
    ]
    done = [e["item"]["type"] for e in got if e["type"] == "response.output_item.done"]
    assert done == ["reasoning", "file_search_call", "message", "function_call"]


def test_stream_faults(client: openai.OpenAI, server: FakeOpenAI) -> None:
    server.enqueue(Fault.drop_after(1))
    with pytest.raises(httpx2.RemoteProtocolError):  # read raw: the transport's own error
        events(client, input="one two three")
    server.enqueue(Fault.malformed())
    with pytest.raises(json.JSONDecodeError):
        events(client, input="q")
    server.enqueue(Fault.status(503))
    with pytest.raises(openai.InternalServerError):
        events(client, input="q")
    words = " ".join(f"w{i}" for i in range(30))
    incomplete = events(client, input=words, max_output_tokens=16)
    assert incomplete[-1]["type"] == "response.incomplete"


def test_the_sdk_stream_helper_reads_the_fake(client: openai.OpenAI, server: FakeOpenAI) -> None:
    server.enqueue(Reply(text="All good.", tool_calls=[{"name": "f", "arguments": {"a": 1}}]))
    with client.responses.stream(model=MODEL, input="q") as stream:
        for _event in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "All good."
    assert [item.type for item in final.output] == ["message", "function_call"]


def test_deepseek_has_no_responses_api() -> None:
    with FakeDeepSeek() as deepseek:
        c = openai.OpenAI(base_url=deepseek.base_url, api_key="k", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            c.responses.create(model="deepseek-flash", input="q")
        c.close()


# --------------------------------------------------------------------------- Chat Completions


def test_chat_tools_are_checked_like_the_real_api(client: openai.OpenAI) -> None:
    user: Any = {"role": "user", "content": "q"}
    with pytest.raises(openai.BadRequestError, match="Supported values are: 'function'"):
        client.chat.completions.create(
            model=MODEL,
            messages=[user],
            tools=[{"type": "file_search"}],  # type: ignore[list-item]
        )
    with pytest.raises(openai.BadRequestError, match="only allowed when 'tools'"):
        client.chat.completions.create(model=MODEL, messages=[user], tool_choice="auto")
    asked: Any = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        ],
    }
    answer_a: Any = {"role": "tool", "tool_call_id": "a", "content": "1"}
    answer_b: Any = {"role": "tool", "tool_call_id": "b", "content": "2"}
    ok = client.chat.completions.create(model=MODEL, messages=[user, asked, answer_a, answer_b])
    assert ok.choices[0].message.content == "Echo: q"
    with pytest.raises(openai.BadRequestError, match="did not have response messages: b"):
        client.chat.completions.create(model=MODEL, messages=[user, asked, answer_a, user])
    with pytest.raises(openai.BadRequestError, match="preceeding message with 'tool_calls'"):
        client.chat.completions.create(model=MODEL, messages=[user, answer_a])


def test_chat_streams_tool_arguments_in_pieces(client: openai.OpenAI, server: FakeOpenAI) -> None:
    server.enqueue(
        Reply(
            tool_calls=[
                {"id": "a", "name": "f", "arguments": {"city": "Hanoi", "days": 3}},
                {"id": "b", "name": "g", "arguments": {}},
            ]
        )
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "q"}], stream=True
        )
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    first = [d for d in deltas if d.index == 0]
    assert first[0].id == "a" and first[0].function is not None and first[0].function.name == "f"
    assert len(first) > 1 and all(d.id is None for d in first[1:])
    arguments = "".join(d.function.arguments or "" for d in first if d.function)
    assert json.loads(arguments) == {"city": "Hanoi", "days": 3}
    assert [d.index for d in deltas if d.id] == [0, 1]


# --------------------------------------------------------------------------- Gemini


def test_gemini_parallel_calls_must_be_answered_together() -> None:
    with FakeGemini(api_key="g-key") as gemini:
        client = genai.Client(
            api_key="g-key",
            http_options=gtypes.HttpOptions(base_url=gemini.base_url, api_version="v1beta"),
        )
        gemini.enqueue(
            Reply(
                tool_calls=[
                    {"name": "f", "arguments": {"x": 1}},
                    {"name": "g", "arguments": {"y": 2}},
                ]
            )
        )
        config = gtypes.GenerateContentConfig(
            automatic_function_calling=gtypes.AutomaticFunctionCallingConfig(disable=True)
        )
        first = client.models.generate_content(
            model="gemini-3.8-flash", contents="q", config=config
        )
        assert (
            first.candidates and first.candidates[0].content and first.candidates[0].content.parts
        )
        parts = first.candidates[0].content.parts
        assert [p.function_call.name for p in parts if p.function_call] == ["f", "g"]
        question = gtypes.Content(role="user", parts=[gtypes.Part(text="q")])
        asked = first.candidates[0].content

        def answer(*names: str) -> gtypes.Content:
            return gtypes.Content(
                role="user",
                parts=[
                    gtypes.Part(
                        function_response=gtypes.FunctionResponse(name=n, response={"ok": 1})
                    )
                    for n in names
                ],
            )

        second = client.models.generate_content(
            model="gemini-3.8-flash", contents=[question, asked, answer("f", "g")], config=config
        )
        assert second.text == "Echo: q"
        with pytest.raises(genai.errors.ClientError, match="number of function response parts"):
            client.models.generate_content(
                model="gemini-3.8-flash", contents=[question, asked, answer("f")], config=config
            )
