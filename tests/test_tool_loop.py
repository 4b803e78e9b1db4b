"""The tool-call loop: the model asks, the Proxy runs the tools, sends outputs back, repeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmproxy import CallEvent, LLMBudget, Proxy, hookimpl
from llmproxy.errors import InvalidRequest, ToolLoopError
from llmproxy.plugins import Plugins
from llmproxy.tools import Tool, tool
from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests

MakeProxy = Callable[..., Proxy]


@tool
def get_weather(location: str, unit: str = "celsius") -> str:
    """Get today's weather.

    Args:
        location: The place to get the weather for.
        unit: celsius or fahrenheit.
    """
    return f"Sunny, 30 degrees {unit} in {location}"


def call(name: str, arguments: dict[str, Any], id: str) -> dict[str, Any]:
    return {"id": id, "name": name, "arguments": json.dumps(arguments)}


def test_loop_runs_tools_and_records_everything(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    events: list[CallEvent] = []
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)], observers=[events.append])
    upstream.enqueue(Reply(tool_calls=[call("get_weather", {"location": "Hanoi"}, "c1")]))
    upstream.enqueue(Reply(text="It is sunny in Hanoi."))
    r = proxy.chat("Weather in Hanoi?", tools=[get_weather], session_id="s")
    assert r.text == "It is sunny in Hanoi."
    first, second = chat_requests(upstream)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["tools"][0]["function"]["parameters"]["required"] == ["location"]
    assert second["messages"][-2]["tool_calls"][0]["id"] == "c1"
    assert second["messages"][-1] == {
        "role": "tool",
        "content": "Sunny, 30 degrees celsius in Hanoi",
        "name": "get_weather",
        "tool_call_id": "c1",
    }
    assert [m.role for m in r.steps] == ["assistant", "tool"]
    stored = proxy.history.load("s")
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].message.tool_calls[0].name == "get_weather"
    [usage] = proxy.usage()
    assert usage.reserved == 0 and usage.used == r.usage.total_tokens  # both rounds counted
    assert r.usage.total_tokens > 0 and len(events) == 1 and events[0].attempts == 2
    # The session continues after the tool exchange: the replayed history is valid wire format.
    proxy.chat("Thanks", session_id="s")
    replay = chat_requests(upstream)[2]["messages"]
    assert [m["role"] for m in replay] == ["user", "assistant", "tool", "assistant", "user"]


async def test_parallel_async_tools_run_concurrently(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    @tool
    async def slow(n: int) -> str:
        """Wait a little and echo."""
        await asyncio.sleep(0.3)
        return f"done {n}"

    proxy = make_proxy()
    upstream.enqueue(Reply(tool_calls=[call("slow", {"n": 1}, "a"), call("slow", {"n": 2}, "b")]))
    upstream.enqueue(Reply(text="both done"))
    started = time.monotonic()
    r = await proxy.achat("go", tools=[slow])
    assert time.monotonic() - started < 0.55  # two 0.3 s tools in parallel
    assert r.text == "both done"
    outputs = [m for m in chat_requests(upstream)[1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in outputs] == [
        ("a", "done 1"),
        ("b", "done 2"),
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"location": 5}, "invalid arguments: $.location: expected string"),
        ({}, "missing required property 'location'"),
        ({"location": "x", "extra": 1}, "unexpected property 'extra'"),
    ],
)
def test_invalid_arguments_are_sent_back_not_run(
    make_proxy: MakeProxy, upstream: FakeOpenAI, arguments: dict[str, Any], expected: str
) -> None:
    ran: list[str] = []

    def weather(location: str) -> str:
        ran.append(location)
        return "sunny"

    proxy = make_proxy()
    upstream.enqueue(Reply(tool_calls=[call("weather", arguments, "c1")]), Reply(text="ok"))
    assert proxy.chat("x", tools=[weather]).text == "ok"
    output = chat_requests(upstream)[1]["messages"][-1]["content"]
    assert expected in output and ran == []


def test_failing_timing_out_and_unknown_tools_become_error_outputs(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    def broken() -> str:
        raise RuntimeError("database down")

    def sleepy() -> str:
        time.sleep(1)
        return "late"

    tools = [Tool.from_function(broken), Tool.from_function(sleepy, timeout=0.1)]
    proxy = make_proxy()
    upstream.enqueue(
        Reply(
            tool_calls=[call("broken", {}, "1"), call("sleepy", {}, "2"), call("nosuch", {}, "3")]
        ),
        Reply(text="recovered"),
    )
    assert proxy.chat("x", tools=tools).text == "recovered"
    outputs = [m["content"] for m in chat_requests(upstream)[1]["messages"] if m["role"] == "tool"]
    assert outputs[0] == "tool failed: RuntimeError: database down"
    assert outputs[1] == "tool timed out after 0.1s"
    assert outputs[2].startswith("unknown tool 'nosuch'")


def test_before_tool_call_hook_can_veto(env: dict[str, str], upstream: FakeOpenAI) -> None:
    seen: list[tuple[str, dict[str, Any], str | None]] = []

    class Guard:
        @staticmethod
        @hookimpl
        def before_tool_call(
            tool_name: str, arguments: dict[str, Any], session_id: str | None
        ) -> bool | None:
            seen.append((tool_name, arguments, session_id))
            return False if arguments.get("location") == "Area 51" else None

    plugins = Plugins(environ=env, extra=[Guard])
    proxy = Proxy({"history_url": "memory://"}, environ=env, plugins=plugins)
    upstream.enqueue(
        Reply(
            tool_calls=[
                call("get_weather", {"location": "Area 51"}, "1"),
                call("get_weather", {"location": "Hue"}, "2"),
            ]
        ),
        Reply(text="done"),
    )
    proxy.chat("x", tools=[get_weather], session_id="s1")
    outputs = [m["content"] for m in chat_requests(upstream)[1]["messages"] if m["role"] == "tool"]
    assert outputs == [
        "tool call 'get_weather' was blocked by policy",
        "Sunny, 30 degrees celsius in Hue",
    ]
    assert seen[0] == ("get_weather", {"location": "Area 51"}, "s1")


def test_max_tool_rounds(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    for i in range(3):
        upstream.enqueue(Reply(tool_calls=[call("get_weather", {"location": "x"}, f"c{i}")]))
    with pytest.raises(ToolLoopError) as info:
        proxy.chat("loop", tools=[get_weather], max_tool_rounds=2, session_id="s")
    assert info.value.rounds == 2 and "max_tool_rounds" in str(info.value)
    assert len(chat_requests(upstream)) == 3
    [usage] = proxy.usage()
    assert usage.reserved == 0 and usage.used > 0  # every round's tokens were settled
    assert proxy.history.load("s") == []  # a failed call stores nothing


def test_stream_with_tools(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)])
    upstream.enqueue(
        Reply(text="Let me check.", tool_calls=[call("get_weather", {"location": "Hue"}, "c1")])
    )
    upstream.enqueue(Reply(text="Sunny in Hue."))
    events = list(proxy.stream("weather?", tools=[get_weather], session_id="s"))
    assert "".join(e.text for e in events) == "Let me check.Sunny in Hue."
    final = events[-1]
    assert final.done and final.response is not None and final.response.text == "Sunny in Hue."
    assert [m.role for m in proxy.history.load("s")] == ["user", "assistant", "tool", "assistant"]
    [usage] = proxy.usage()
    assert usage.reserved == 0 and usage.used == final.usage.total_tokens  # type: ignore[union-attr]


async def test_async_stream_with_tools(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy()
    upstream.enqueue(Reply(tool_calls=[call("get_weather", {"location": "Hue"}, "c1")]))
    upstream.enqueue(Reply(text="Sunny in Hue."))
    texts = [e.text async for e in proxy.astream("weather?", tools=[get_weather])]
    assert "".join(texts) == "Sunny in Hue."


def test_plain_callables_and_bad_tools(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    proxy = make_proxy()
    upstream.enqueue(Reply(tool_calls=[call("add", {"a": 2, "b": 3}, "c")]), Reply(text="5"))
    assert proxy.chat("2+3", tools=[add]).text == "5"
    assert chat_requests(upstream)[1]["messages"][-1]["content"] == "5"
    with pytest.raises(InvalidRequest) as info:
        proxy.chat("x", tools=["no-such-tool"])
    assert info.value.field == "tools[0]"
    with pytest.raises(InvalidRequest):
        proxy.chat("x", tools=[add, add])


def test_tool_definitions_count_into_the_reservation(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=2000)])
    proxy.chat("Weather?", tools=[get_weather])
    provider = proxy.provider("openai")
    from llmproxy import Message

    messages = provider.count_tokens([Message("user", "Weather?")], "gpt-5.4-mini")
    definitions = provider.count_text_tokens(
        json.dumps(get_weather.wire(), separators=(",", ":")), "gpt-5.4-mini"
    )
    assert definitions > 20
    with_tools = chat_requests(upstream)[0]["max_completion_tokens"]
    assert with_tools <= 2000 - messages - definitions
    plain = make_proxy(budgets=[LLMBudget(max_tokens=2000)])
    plain.chat("Weather?")
    without = chat_requests(upstream)[1]["max_completion_tokens"]
    # The definitions (and the margin a provider declares for tools) leave less for output.
    assert without - with_tools >= definitions


def test_time_to_first_token_is_the_first_rounds_text(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    events: list[CallEvent] = []
    proxy = make_proxy(observers=[events.append])
    upstream.enqueue(
        Reply(text="Let me check.", tool_calls=[call("get_weather", {"location": "Hue"}, "c1")])
    )
    upstream.enqueue(Reply(text="Sunny in Hue."))
    before = time.perf_counter()
    stream = iter(proxy.stream("weather?", tools=[get_weather]))
    first = next(stream).text
    # The consumer drives the stream: the second round cannot start before this point.
    seen = time.perf_counter()
    assert first + "".join(e.text for e in stream) == "Let me check.Sunny in Hue."
    [event] = events
    assert event.ttft is not None
    assert 0 < event.ttft <= seen - before
    assert event.ttft < event.latency
