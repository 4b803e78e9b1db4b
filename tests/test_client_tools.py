"""Client tools: calls handed back to the caller unexecuted, on OpenAI, DeepSeek and Gemini.

``run_tools=False``, a :class:`~llmproxy.tools.ClientTool` or an OpenAI function-tool dict
makes the Proxy hand the model's tool calls back on the response; the caller answers them
with ``role: tool`` messages in its next call. Client tools go out exactly as function tools
of the same definition do, on every provider.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from llmproxy import LLMBudget, Proxy
from llmproxy.errors import ConfigError, InvalidRequest
from llmproxy.tools import ClientTool, Tool
from llmproxy.types import ChatResponse, Message
from llmproxy_testing._http import FakeServer, Reply
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.proxies import FAST_RETRY
from tests.conftest import API_KEY

OPENAI = "openai/gpt-5.4-mini"
DEEPSEEK = "deepseek/deepseek-flash"
GEMINI = "gemini/gemini-3.8-flash"
MODELS = [OPENAI, DEEPSEEK, GEMINI]

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city."}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = ClientTool("get_weather", "Weather of a city.", PARAMETERS)
WEATHER_DICT = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": PARAMETERS,
    },
}
#: Each provider's exact wire form of the weather tool's definition.
WIRE_TOOLS: dict[str, Any] = {
    OPENAI: [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city.",
                "parameters": PARAMETERS,
                "strict": False,
            },
        }
    ],
    GEMINI: [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather of a city.",
                    "parameters_json_schema": PARAMETERS,
                }
            ]
        }
    ],
}
WIRE_TOOLS[DEEPSEEK] = WIRE_TOOLS[OPENAI]


@pytest.fixture
def deepseek() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(api_key=API_KEY, reply="deepseek answers") as server:
        yield server


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=API_KEY, reply="gemini answers") as server:
        yield server


@pytest.fixture
def servers(
    upstream: FakeOpenAI, deepseek: FakeDeepSeek, gemini: FakeGemini
) -> dict[str, FakeServer]:
    return {OPENAI: upstream, DEEPSEEK: deepseek, GEMINI: gemini}


def make(env: dict[str, str], servers: dict[str, FakeServer], **config: Any) -> Proxy:
    deepseek, gemini = servers[DEEPSEEK], servers[GEMINI]
    assert isinstance(deepseek, FakeDeepSeek) and isinstance(gemini, FakeGemini)
    environ = {
        **env,
        "DEEPSEEK_API_KEY": API_KEY,
        "DEEPSEEK_BASE_URL": deepseek.base_url,
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": gemini.base_url,
    }
    return Proxy(
        {"retry": FAST_RETRY, "ledger_url": "memory://", "history_url": "memory://", **config},
        environ=environ,
        budgets=[LLMBudget(max_tokens=100_000)],
    )


@pytest.fixture
def proxy(env: dict[str, str], servers: dict[str, FakeServer]) -> Iterator[Proxy]:
    p = make(env, servers)
    yield p
    p.close()


def bodies(server: FakeServer) -> list[dict[str, Any]]:
    """The JSON bodies of the model requests ``server`` received, oldest first."""
    return [
        r.json()
        for r in server.requests
        if r.path.endswith(("/chat/completions", "/responses")) or "Content" in r.path
    ]


def wire_tools(model: str, body: dict[str, Any]) -> Any:
    return body["tools"]


def ask_weather(server: FakeServer, city: str = "Hue") -> None:
    server.enqueue(
        Reply(tool_calls=[{"id": "call_w1", "name": "get_weather", "arguments": {"city": city}}])
    )


def handed_back(r: ChatResponse) -> None:
    [call] = r.message.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Hue"}
    assert r.finish_reason == "tool_calls"
    assert r.steps == ()  # no tool round ran


def result_sent(model: str, body: dict[str, Any], call_id: str) -> None:
    """The second request carries the caller's tool output in the provider's own form."""
    if model == GEMINI:
        [part] = body["contents"][-1]["parts"]
        response = part.get("functionResponse") or part["function_response"]
        assert response["name"] == "get_weather"
        assert response["response"] == {"output": "Sunny, 31 C"}
        return
    assert body["messages"][-1] == {
        "role": "tool",
        "content": "Sunny, 31 C",
        "tool_call_id": call_id,
    }
    assert body["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("offered", ["ClientTool", "dict"])
def test_client_tool_round_trip(
    proxy: Proxy, servers: dict[str, FakeServer], model: str, offered: str
) -> None:
    server = servers[model]
    ask_weather(server)
    tools: list[Any] = [WEATHER if offered == "ClientTool" else WEATHER_DICT]
    prompt = [Message("user", "Weather in Hue?")]
    r = proxy.chat(prompt, model=model, tools=tools)
    handed_back(r)
    assert len(bodies(server)) == 1  # one request: the Proxy ran nothing
    assert wire_tools(model, bodies(server)[0]) == WIRE_TOOLS[model]
    [call] = r.message.tool_calls
    server.enqueue(Reply(text="It is sunny in Hue."))
    answer = proxy.chat(
        [*prompt, r.message, Message("tool", "Sunny, 31 C", tool_call_id=call.id)],
        model=model,
        tools=tools,
    )
    assert answer.text == "It is sunny in Hue." and answer.finish_reason == "stop"
    second = bodies(server)[1]
    result_sent(model, second, call.id)
    assert wire_tools(model, second) == WIRE_TOOLS[model]
    [usage] = proxy.usage()
    assert usage.used == r.usage.total_tokens + answer.usage.total_tokens  # both rounds budgeted


@pytest.mark.parametrize("model", MODELS)
def test_client_tools_render_as_function_tools(
    proxy: Proxy, servers: dict[str, FakeServer], model: str
) -> None:
    def get_weather(city: str) -> str:
        return city

    python_tool = Tool("get_weather", "Weather of a city.", PARAMETERS, get_weather)
    server = servers[model]
    for tools in ([python_tool], [WEATHER], [WEATHER_DICT]):
        proxy.chat("Weather?", model=model, tools=tools, run_tools=False)
    sent = [wire_tools(model, b) for b in bodies(server)]
    assert sent == [WIRE_TOOLS[model]] * 3


def test_openai_responses_api_sends_client_tools_as_function_tools(
    env: dict[str, str], servers: dict[str, FakeServer], upstream: FakeOpenAI
) -> None:
    p = make(env, servers, providers={"openai": {"api": "responses"}})
    try:
        ask_weather(upstream)
        r = p.chat("Weather in Hue?", model=OPENAI, tools=[WEATHER_DICT])
        handed_back(r)
        [body] = bodies(upstream)
        assert body["tools"] == [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather of a city.",
                "parameters": PARAMETERS,
                "strict": False,
            }
        ]
    finally:
        p.close()


@pytest.mark.parametrize("model", MODELS)
def test_run_tools_false_hands_back_python_tools_unrun(
    proxy: Proxy, servers: dict[str, FakeServer], model: str
) -> None:
    ran: list[str] = []

    def get_weather(city: str) -> str:
        ran.append(city)
        return "Sunny"

    python_tool = Tool("get_weather", "Weather of a city.", PARAMETERS, get_weather)
    ask_weather(servers[model])
    handed_back(proxy.chat("Weather in Hue?", model=model, tools=[python_tool], run_tools=False))
    assert ran == [] and len(bodies(servers[model])) == 1


def test_a_client_tool_among_python_tools_hands_every_call_back(
    proxy: Proxy, upstream: FakeOpenAI
) -> None:
    ran: list[str] = []

    def get_time(zone: str) -> str:
        ran.append(zone)
        return "noon"

    clock = Tool.from_function(get_time)
    upstream.enqueue(
        Reply(
            tool_calls=[
                {"id": "c1", "name": "get_time", "arguments": {"zone": "UTC"}},
                {"id": "c2", "name": "get_weather", "arguments": {"city": "Hue"}},
            ]
        )
    )
    r = proxy.chat("Time and weather?", tools=[clock, WEATHER])
    assert [c.name for c in r.message.tool_calls] == ["get_time", "get_weather"]
    assert r.finish_reason == "tool_calls" and ran == []


def test_python_tools_still_run_by_default(proxy: Proxy, upstream: FakeOpenAI) -> None:
    def get_weather(city: str) -> str:
        return f"Sunny in {city}"

    upstream.enqueue(Reply(tool_calls=[{"id": "c1", "name": "get_weather", "arguments": "{}"}]))
    upstream.enqueue(Reply(text="done"))
    python_tool = Tool("get_weather", "Weather.", {"type": "object"}, get_weather)
    r = proxy.chat("Weather?", tools=[python_tool])
    assert r.text == "done" and len(r.steps) == 2


@pytest.mark.parametrize("model", MODELS)
def test_streams_hand_the_calls_back_on_the_final_event(
    proxy: Proxy, servers: dict[str, FakeServer], model: str
) -> None:
    ask_weather(servers[model])
    events = list(proxy.stream("Weather in Hue?", model=model, tools=[WEATHER]))
    final = events[-1]
    assert final.done and final.response is not None
    assert final.finish_reason == "tool_calls"
    handed_back(final.response)
    assert len(bodies(servers[model])) == 1


async def test_async_calls_hand_back_too(proxy: Proxy, upstream: FakeOpenAI) -> None:
    ask_weather(upstream)
    handed_back(await proxy.achat("Weather in Hue?", tools=[WEATHER_DICT]))
    ask_weather(upstream)
    events = [e async for e in proxy.astream("Weather in Hue?", tools=[WEATHER])]
    assert events[-1].response is not None
    handed_back(events[-1].response)


def test_bad_client_tools_are_refused_by_field(proxy: Proxy, upstream: FakeOpenAI) -> None:
    cases: list[tuple[Any, str]] = [
        ({"type": "function", "function": {"description": "x"}}, "tools[0].function.name"),
        ({"type": "function", "function": {"name": "a b"}}, "tools[0].function.name"),
        (
            {"type": "function", "function": {"name": "f", "parameters": []}},
            "tools[0].function.parameters",
        ),
        ({"type": "web_search"}, "tools[0].type"),
        ({"type": "function", "name": "f", "strict": "yes"}, "tools[0].strict"),
    ]
    for spec, field in cases:
        with pytest.raises(InvalidRequest) as info:
            proxy.chat("hi", tools=[spec])
        assert info.value.field == field
    with pytest.raises(InvalidRequest) as info:
        proxy.chat("hi", tools=[WEATHER], run_tools="no")  # type: ignore[arg-type]
    assert info.value.field == "run_tools"
    with pytest.raises(InvalidRequest, match="unique"):
        proxy.chat("hi", tools=[WEATHER, WEATHER_DICT])
    assert upstream.requests == []


def test_a_client_tool_takes_no_function() -> None:
    with pytest.raises(ConfigError, match="takes no function"):
        ClientTool("f", function=print)
    flat = ClientTool.from_openai({"type": "function", "name": "f", "strict": True})
    assert flat == ClientTool("f", "", {"type": "object", "properties": {}}, strict=True)
    assert flat.wire() == Tool("f", "", {"type": "object", "properties": {}}, strict=True).wire()
