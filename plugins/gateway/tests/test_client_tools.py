"""Client tools through ``llmproxy serve``, with the real openai SDK, on all three providers.

The gateway runs no tool: it offers the client's ``tools`` upstream, returns the model's
``tool_calls`` (whole, and streamed in OpenAI's delta shape), and the client's next request,
with its ``role: tool`` answers, continues the exchange. Each request is a call of its own:
budgeted and logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from llmproxy_testing._http import FakeServer
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI, Reply

from .conftest import GatewayProcess, serve_gateway

OPENAI = "openai/gpt-4o-mini"
DEEPSEEK = "deepseek/deepseek-flash"
GEMINI = "gemini/gemini-3.8-flash"
MODELS = [OPENAI, DEEPSEEK, GEMINI]

PARAMETERS: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": PARAMETERS,
    },
}
TIME: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def servers(
    upstream: FakeOpenAI, deepseek: FakeDeepSeek, gemini: FakeGemini
) -> dict[str, FakeServer]:
    return {OPENAI: upstream, DEEPSEEK: deepseek, GEMINI: gemini}


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI,
    deepseek: FakeDeepSeek,
    gemini: FakeGemini,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(
        upstream,
        tmp_path_factory.mktemp("tools-gateway"),
        deepseek=deepseek,
        gemini=gemini,
    )


def model_bodies(server: FakeServer) -> list[dict[str, Any]]:
    """The JSON bodies of the model requests ``server`` received, oldest first."""
    return [
        r.json()
        for r in server.requests
        if r.path.endswith("/chat/completions") or "Content" in r.path
    ]


def sdk(gateway: GatewayProcess) -> tuple[openai.OpenAI, str]:
    """An SDK client on a fresh key of its own; the key's id (what the usage log names)."""
    record, secret = gateway.keys.create("tool-user")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    return client, record.id


def ask_tools(server: FakeServer) -> None:
    server.enqueue(
        Reply(
            tool_calls=[
                {"id": "call_w", "name": "get_weather", "arguments": {"city": "Hue"}},
                {"id": "call_t", "name": "get_time", "arguments": {}},
            ]
        )
    )


def check_calls(calls: Any) -> list[dict[str, Any]]:
    """The SDK's tool calls, checked and as plain dicts."""
    out = [c.model_dump() for c in calls]
    assert [(c["type"], c["function"]["name"]) for c in out] == [
        ("function", "get_weather"),
        ("function", "get_time"),
    ]
    assert json.loads(out[0]["function"]["arguments"]) == {"city": "Hue"}
    assert json.loads(out[1]["function"]["arguments"]) == {}
    assert len({c["id"] for c in out}) == 2
    return out


def continuation(server: FakeServer, model: str, calls: list[dict[str, Any]]) -> None:
    """The continuation's upstream request carries both tool outputs in the provider's form."""
    body = model_bodies(server)[-1]
    if model == GEMINI:
        parts = body["contents"][-1]["parts"]
        responses = [p.get("functionResponse") or p["function_response"] for p in parts]
        assert [(r["name"], r["response"]) for r in responses] == [
            ("get_weather", {"output": "Sunny"}),
            ("get_time", {"output": "noon"}),
        ]
        return
    assert body["messages"][-2:] == [
        {"role": "tool", "content": "Sunny", "tool_call_id": calls[0]["id"]},
        {"role": "tool", "content": "noon", "tool_call_id": calls[1]["id"]},
    ]
    assert [c["id"] for c in body["messages"][-3]["tool_calls"]] == [c["id"] for c in calls]


def answers(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outputs = {"get_weather": "Sunny", "get_time": "noon"}
    return [
        {"role": "tool", "tool_call_id": c["id"], "content": outputs[c["function"]["name"]]}
        for c in calls
    ]


def sent_tools(server: FakeServer, model: str) -> Any:
    body = model_bodies(server)[-1]
    if model == GEMINI:
        return [d["name"] for d in body["tools"][0]["functionDeclarations"]]
    return [t["function"]["name"] for t in body["tools"]]


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_round_trip_through_the_gateway(
    gateway: GatewayProcess, servers: dict[str, FakeServer], model: str
) -> None:
    client, key_id = sdk(gateway)
    server = servers[model]
    ask_tools(server)
    messages: list[Any] = [{"role": "user", "content": "Weather and time in Hue?"}]
    first = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice="auto",
        parallel_tool_calls=True,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = check_calls(choice.message.tool_calls)
    assert sent_tools(server, model) == ["get_weather", "get_time"]
    parallel = model_bodies(server)[-1].get("parallel_tool_calls")
    assert parallel is (True if model == OPENAI else None)  # OpenAI's switch only
    requests = len(model_bodies(server))
    # The client runs its tools and continues with the SDK's own assistant message.
    server.enqueue(Reply(text="Sunny in Hue at noon."))
    messages += [choice.message, *answers(calls)]
    second = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER, TIME],
    )
    assert second.choices[0].message.content == "Sunny in Hue at noon."
    assert second.choices[0].finish_reason == "stop"
    assert len(model_bodies(server)) == requests + 1  # the gateway ran no tool round itself
    continuation(server, model, calls)
    rows = gateway.rows(2, key=key_id)
    assert len(rows) == 2 and all(r.outcome == "ok" for r in rows)
    assert first.usage is not None and second.usage is not None
    assert sorted(r.input_tokens + r.output_tokens for r in rows) == sorted(
        (first.usage.total_tokens, second.usage.total_tokens)
    )


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_calls_in_openai_delta_shape(
    gateway: GatewayProcess, servers: dict[str, FakeServer], model: str
) -> None:
    client, _key_id = sdk(gateway)
    server = servers[model]
    ask_tools(server)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Weather and time in Hue?"}],
            tools=[WEATHER, TIME],
            stream=True,
        )
    )
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    heads = [d for d in deltas if d.id is not None]
    assert [(d.index, d.type, d.function and d.function.name) for d in heads] == [
        (0, "function", "get_weather"),
        (1, "function", "get_time"),
    ]
    pieces = ["", ""]
    for d in deltas:
        pieces[d.index] += (d.function and d.function.arguments) or ""
    assert [json.loads(p) for p in pieces] == [{"city": "Hue"}, {}]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"]

    # The SDK's stream accumulation gives the same calls as a whole answer, and the
    # continuation goes on streamed.
    ask_tools(server)
    with client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": "Weather and time in Hue?"}],
        tools=[WEATHER, TIME],
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    calls = check_calls(final.choices[0].message.tool_calls)
    server.enqueue(Reply(text="Sunny at noon."))
    # A client that keeps plain dicts: the assistant turn rebuilt from the calls.
    continued: list[Any] = [
        {"role": "user", "content": "Weather and time in Hue?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *answers(calls),
    ]
    with client.chat.completions.stream(
        model=model, messages=continued, tools=[WEATHER, TIME]
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "content.delta")
    assert text == "Sunny at noon."
    continuation(server, model, calls)


def test_tool_choice_names_a_function(
    gateway: GatewayProcess, upstream: FakeOpenAI, gemini: FakeGemini
) -> None:
    client, _key_id = sdk(gateway)
    for model, server in ((OPENAI, upstream), (GEMINI, gemini)):
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
        body = model_bodies(server)[-1]
        if model == OPENAI:
            assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        else:
            assert body["toolConfig"]["functionCallingConfig"] == {
                "mode": "ANY",
                "allowedFunctionNames": ["get_weather"],
            }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tools"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"functions": [WEATHER["function"]]}, "functions"),
    ],
)
def test_bad_tools_are_a_400_naming_the_field(
    gateway: GatewayProcess, tmp_path: Path, extra: dict[str, Any], param: str
) -> None:
    client, _key_id = sdk(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=OPENAI,
            messages=[{"role": "user", "content": "hi"}],
            extra_body=extra,
        )
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == param
