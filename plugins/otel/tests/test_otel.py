"""The OpenTelemetry plugin with the real SDK and in-memory exporters, over the fake upstream."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from llmproxy import LLMBudget, Proxy
from llmproxy.errors import ProviderBadRequest
from llmproxy.observe import CallStart
from llmproxy_openai import OpenAIProvider
from llmproxy_otel import DURATION_BUCKETS, TOKEN_BUCKETS, OtelObserver
from llmproxy_otel.env import CAPTURE_MESSAGE_CONTENT
from llmproxy_testing._http import Fault, Reply
from llmproxy_testing.fake_openai import FakeOpenAI

from .conftest import API_KEY, Telemetry, attributes

MakeProxy = Callable[..., Proxy]
CONTENT_KEYS = {
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
}


def test_a_chat_is_one_span_with_the_conventions_attributes(
    make_proxy: MakeProxy, telemetry: Telemetry
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=100_000)])
    r = proxy.chat("Hello", session_id="s1", max_output_tokens=50, temperature=0.5)
    span = telemetry.span("chat gpt-5.4-mini")
    assert span.kind is SpanKind.CLIENT and span.parent is None
    a = attributes(span)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-5.4-mini"
    assert a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.response.model"] == r.model
    assert a["gen_ai.response.id"] == r.id
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == r.usage.input_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == r.usage.output_tokens > 0
    assert a["gen_ai.conversation.id"] == "s1"
    assert "error.type" not in a and span.status.status_code is StatusCode.UNSET
    children = {s.name: s for s in telemetry.children(span)}
    assert set(children) == {
        "llmproxy.history.load",
        "llmproxy.ledger.reserve",
        "attempt gpt-5.4-mini",
        "llmproxy.ledger.settle+history",
    }
    attempt = attributes(children["attempt gpt-5.4-mini"])
    assert attempt["llmproxy.attempt"] == 1 and attempt["gen_ai.request.max_tokens"] == 50
    assert not CONTENT_KEYS & set(a)  # content is never recorded by default
    assert all("Hello" not in str(v) for s in telemetry.spans() for v in attributes(s).values())

    (duration,) = telemetry.points("gen_ai.client.operation.duration")
    assert duration.count == 1 and tuple(duration.explicit_bounds) == DURATION_BUCKETS
    assert dict(duration.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-5.4-mini",
        "gen_ai.response.model": r.model,
    }
    tokens = {
        dict(p.attributes or {})["gen_ai.token.type"]: p
        for p in telemetry.points("gen_ai.client.token.usage")
    }
    assert tokens["input"].sum == r.usage.input_tokens
    assert tokens["output"].sum == r.usage.output_tokens
    assert tuple(tokens["input"].explicit_bounds) == TOKEN_BUCKETS
    assert telemetry.points("gen_ai.client.operation.time_to_first_chunk") == []


def test_a_cache_hit_is_a_span_with_no_attempt(make_proxy: MakeProxy, telemetry: Telemetry) -> None:
    proxy = make_proxy({"cache": {"url": "memory://"}})
    proxy.chat("Hello", cache=True, use_history=False)
    hit = proxy.chat("Hello", cache=True, use_history=False)
    assert hit.cache_hit
    first, second = (s for s in telemetry.spans() if s.name == "chat gpt-5.4-mini")
    assert "llmproxy.cache_hit" not in attributes(first)
    assert attributes(second)["llmproxy.cache_hit"] is True
    assert attributes(second)["llmproxy.attempts"] == 0
    assert {s.name for s in telemetry.children(first)} == {
        "llmproxy.cache.get",
        "attempt gpt-5.4-mini",
        "llmproxy.cache.put",
    }
    assert {s.name for s in telemetry.children(second)} == {"llmproxy.cache.get"}


def test_content_is_recorded_when_the_user_opts_in(
    make_proxy: MakeProxy, telemetry: Telemetry
) -> None:
    observer = telemetry.observer(environ={CAPTURE_MESSAGE_CONTENT: "true"})
    proxy = make_proxy(observers=[observer])
    proxy.chat("Hello", system="Be brief.")
    a = attributes(telemetry.span("chat gpt-5.4-mini"))
    assert json.loads(str(a["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "Be brief."}
    ]
    assert json.loads(str(a["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "Hello"}]}
    ]
    assert json.loads(str(a["gen_ai.output.messages"])) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Echo: Hello"}],
            "finish_reason": "stop",
        }
    ]


def test_a_stream_records_its_time_to_first_chunk(
    make_proxy: MakeProxy, telemetry: Telemetry
) -> None:
    proxy = make_proxy()
    with proxy.stream("Tell me a story") as stream:
        text = stream.text()
    assert text
    span = telemetry.span("chat gpt-5.4-mini")
    a = attributes(span)
    assert a["llmproxy.streamed"] is True
    assert a["gen_ai.usage.output_tokens"] > 0 and a["gen_ai.response.finish_reasons"] == ("stop",)
    assert span.end_time is not None and span.start_time is not None
    first = float(a["gen_ai.response.time_to_first_chunk"])
    assert 0 < first <= (span.end_time - span.start_time) / 1e9
    (attempt,) = [s for s in telemetry.children(span) if s.name.startswith("attempt")]
    assert [e.name for e in attempt.events] == ["gen_ai.first_chunk"]
    (point,) = telemetry.points("gen_ai.client.operation.time_to_first_chunk")
    assert point.count == 1 and point.sum == pytest.approx(first)
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_each_tool_run_is_an_execute_tool_span(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(
        Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Hanoi"}, "id": "c1"}]),
        Reply(text="It is sunny."),
    )
    proxy = make_proxy()
    assert proxy.chat("Weather?", tools=[get_weather]).text == "It is sunny."
    call = telemetry.span("chat gpt-5.4-mini")
    tool = telemetry.span("execute_tool get_weather")
    assert tool.parent is not None and tool.parent.span_id == call.context.span_id
    assert dict(attributes(tool)) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.call.id": "c1",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.description": "The weather in a city.",
    }
    attempts = [s for s in telemetry.children(call) if s.name.startswith("attempt")]
    assert [attributes(s)["gen_ai.response.finish_reasons"] for s in attempts] == [
        ("tool_calls",),
        ("stop",),
    ]
    assert attributes(call)["llmproxy.attempts"] == 2


def test_tool_arguments_and_results_are_content(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(
        Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Hue"}, "id": "c1"}]),
        Reply(text="ok"),
    )
    proxy = make_proxy(observers=[telemetry.observer(capture_content=True)])
    proxy.chat("Weather?", tools=[get_weather])
    a = attributes(telemetry.span("execute_tool get_weather"))
    assert json.loads(str(a["gen_ai.tool.call.arguments"])) == {"city": "Hue"}
    assert a["gen_ai.tool.call.result"] == "sunny in Hue"
    # The last request sent the whole exchange: the question, the call, its result.
    sent = json.loads(str(attributes(telemetry.span("chat gpt-5.4-mini"))["gen_ai.input.messages"]))
    assert sent == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather?"}]},
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "c1",
                    "name": "get_weather",
                    "arguments": {"city": "Hue"},
                }
            ],
        },
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "c1", "response": "sunny in Hue"}],
        },
    ]


def test_embeddings_are_an_embeddings_span(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()
    result = proxy.embed(["first", "second"], model="openai/text-embedding-3-small", dimensions=8)
    span = telemetry.span("embeddings text-embedding-3-small")
    a = attributes(span)
    assert a["gen_ai.operation.name"] == "embeddings"
    assert a["gen_ai.embeddings.dimension.count"] == 8
    assert a["gen_ai.usage.input_tokens"] == result.usage.input_tokens > 0
    assert "gen_ai.usage.output_tokens" not in a
    tokens = telemetry.points("gen_ai.client.token.usage")
    assert [dict(p.attributes or {})["gen_ai.token.type"] for p in tokens] == ["input"]
    (attempt,) = telemetry.children(span)
    header = upstream.requests[-1].headers["traceparent"]
    assert header.split("-")[1:3] == [
        f"{span.context.trace_id:032x}",
        f"{attempt.context.span_id:016x}",
    ]


def test_a_retry_is_a_second_attempt_span(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(Fault.status(500))
    proxy = make_proxy()
    proxy.chat("Hello")
    call = telemetry.span("chat gpt-5.4-mini")
    first, second = sorted(
        (s for s in telemetry.children(call) if s.name.startswith("attempt")),
        key=lambda s: attributes(s)["llmproxy.attempt"],
    )
    assert first.status.status_code is StatusCode.ERROR
    assert attributes(first)["error.type"] == "ProviderUnavailable"
    assert second.status.status_code is StatusCode.UNSET and "error.type" not in attributes(second)
    assert call.status.status_code is StatusCode.UNSET
    assert attributes(call)["llmproxy.attempts"] == 2
    assert [e.name for e in call.events] == ["llmproxy.wait"]  # the backoff before the retry
    # Each attempt sent its own span as the upstream request's parent.
    sent = [r.headers["traceparent"].split("-")[2] for r in upstream.requests]
    assert sent == [f"{first.context.span_id:016x}", f"{second.context.span_id:016x}"]


@pytest.fixture
def backup() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY, reply="from backup") as server:
        yield server


def test_a_fallback_is_an_attempt_on_the_other_model(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI, backup: FakeOpenAI
) -> None:
    proxy = make_proxy(
        {"retry": {"initial_backoff": 0.001, "max_backoff": 0.01, "max_attempts": 2}},
        providers={
            "backup": OpenAIProvider(api_key=API_KEY, base_url=backup.base_url, name="backup")
        },
        fallbacks={"openai/gpt-5.4-mini": ["backup/b-model"]},
    )
    upstream.enqueue(Fault.status(500), Fault.status(503))
    assert proxy.chat("hi").text == "from backup"
    call = telemetry.span("chat gpt-5.4-mini")
    a = attributes(call)
    assert a["gen_ai.request.model"] == "gpt-5.4-mini" and a["gen_ai.response.model"] == "b-model"
    assert a["llmproxy.response.provider"] == "backup" and a["llmproxy.attempts"] == 3
    attempts = sorted(
        (s for s in telemetry.children(call) if s.name.startswith("attempt")),
        key=lambda s: attributes(s)["llmproxy.attempt"],
    )
    assert [(s.name, attributes(s).get("error.type")) for s in attempts] == [
        ("attempt gpt-5.4-mini", "ProviderUnavailable"),
        ("attempt gpt-5.4-mini", "ProviderUnavailable"),
        ("attempt b-model", None),
    ]
    assert attributes(attempts[2])["gen_ai.provider.name"] == "backup"
    assert "traceparent" in backup.requests[-1].headers


def test_a_failed_call_has_its_error_type(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    upstream.enqueue(Fault.status(400, message="bad request"))
    proxy = make_proxy()
    with pytest.raises(ProviderBadRequest):
        proxy.chat("Hello")
    span = telemetry.span("chat gpt-5.4-mini")
    assert span.status.status_code is StatusCode.ERROR
    assert attributes(span)["error.type"] == "ProviderBadRequest"
    (duration,) = telemetry.points("gen_ai.client.operation.duration")
    assert dict(duration.attributes or {})["error.type"] == "ProviderBadRequest"


async def test_async_calls_send_the_attempt_as_traceparent(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()
    await proxy.achat("Hello")
    async with proxy.astream("Again") as stream:
        assert await stream.text()
    await proxy.aclose()
    calls = [s for s in telemetry.spans() if s.name == "chat gpt-5.4-mini"]
    assert len(calls) == 2
    for call, request in zip(calls, upstream.requests, strict=True):
        (attempt,) = telemetry.children(call)
        version, trace_id, parent, _flags = request.headers["traceparent"].split("-")
        assert (version, trace_id, parent) == (
            "00",
            f"{call.context.trace_id:032x}",
            f"{attempt.context.span_id:016x}",
        )


def test_without_an_sdk_no_call_is_followed() -> None:
    """The installed plugin's observer uses the global providers: the API's no-ops here."""
    assert OtelObserver().start_call(CallStart("chat", "openai", "gpt-5.4-mini")) is None


def test_the_installed_plugin_registers_its_observer(env: dict[str, str]) -> None:
    from llmproxy.plugins import Plugins

    plugins = Plugins(environ=env)
    assert any(isinstance(o, OtelObserver) for o in plugins.registry.observers)


def test_a_gateway_call_continues_the_clients_trace(
    env: dict[str, str], telemetry: Telemetry, tmp_path: Path
) -> None:
    import asyncio

    from llmproxy_gateway import KeyStore
    from llmproxy_gateway.app import Gateway, create_app
    from llmproxy_usage_log import open_usage_log

    proxy = Proxy(
        {"history_url": "memory://", "ledger_url": "memory://"},
        environ=env,
        observers=[telemetry.observer()],
    )
    keys = KeyStore(tmp_path / "keys.db")
    _record, key = keys.create("alice")
    gateway = Gateway(proxy=proxy, keys=keys, usage=open_usage_log("memory://"), environ=env)
    app = create_app(gateway)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = json.dumps(
        {"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"traceparent", f"00-{trace_id}-{parent_id}-01".encode()),
        ],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body.encode(), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await app(scope, receive, send)
        await proxy.aclose()

    asyncio.run(run())
    assert sent[0]["status"] == 200
    call = telemetry.span("chat gpt-5.4-mini")
    assert f"{call.context.trace_id:032x}" == trace_id
    assert call.parent is not None and f"{call.parent.span_id:016x}" == parent_id
    assert call.parent.is_remote
    keys.close()


GLOBAL_SDK = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from llmproxy import Proxy

proxy = Proxy({"history_url": "memory://", "ledger_url": "memory://"})
proxy.chat("before the SDK")
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
proxy.chat("after the SDK")
print(json.dumps(sorted(s.name for s in exporter.get_finished_spans())))
"""


def test_the_installed_plugin_follows_calls_once_an_sdk_is_set_globally(
    env: dict[str, str], upstream: FakeOpenAI
) -> None:
    """In a process of its own (the global provider is set once per process)."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LLMPROXY"))}
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_SDK],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == ["attempt gpt-5.4-mini", "chat gpt-5.4-mini"]
    before, after = upstream.requests
    assert "traceparent" not in before.headers and "traceparent" in after.headers


NO_OTEL = """
import sys
from llmproxy import Proxy

proxy = Proxy({"history_url": "memory://", "ledger_url": "memory://"})
assert any(type(o).__name__ == "OtelObserver" for o in proxy._call_observers)
proxy.chat("Hello")
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_without_opentelemetry_imported_the_plugin_imports_none(
    env: dict[str, str], upstream: FakeOpenAI
) -> None:
    """Discovery and a declined call import no OpenTelemetry (it would slow every start-up)."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LLMPROXY"))}
    done = subprocess.run(
        [sys.executable, "-c", NO_OTEL],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.splitlines()[-1] == "[]"
    assert "traceparent" not in upstream.requests[-1].headers


def test_a_gemini_call_names_its_provider_as_the_convention_does(
    env: dict[str, str], telemetry: Telemetry
) -> None:
    from llmproxy_testing.fake_gemini import FakeGemini

    with FakeGemini(api_key=API_KEY) as gemini:
        environ = {**env, "GEMINI_API_KEY": API_KEY, "GEMINI_BASE_URL": gemini.base_url}
        proxy = Proxy(
            {"history_url": "memory://", "ledger_url": "memory://"},
            environ=environ,
            observers=[telemetry.observer()],
        )
        try:
            with proxy.stream("Hello", model="gemini/gemini-3.8-flash") as stream:
                assert stream.text()
        finally:
            proxy.close()
        header = gemini.requests[-1].headers["traceparent"]
    span = telemetry.span("chat gemini-3.8-flash")
    a = attributes(span)
    assert a["gen_ai.provider.name"] == "gcp.gemini"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    (attempt,) = telemetry.children(span)
    assert attributes(attempt)["gen_ai.provider.name"] == "gcp.gemini"
    assert header.split("-")[1:3] == [
        f"{span.context.trace_id:032x}",
        f"{attempt.context.span_id:016x}",
    ]


def test_a_call_a_tool_makes_is_a_child_of_its_execute_tool_span(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()

    def ask_again(question: str) -> str:
        """Ask the model a sub-question."""
        return proxy.chat(question).text

    upstream.enqueue(
        Reply(tool_calls=[{"name": "ask_again", "arguments": {"question": "sub"}, "id": "c1"}]),
        Reply(text="inner answer"),
        Reply(text="outer answer"),
    )
    assert proxy.chat("Outer?", tools=[ask_again]).text == "outer answer"
    calls = [s for s in telemetry.spans() if s.name == "chat gpt-5.4-mini"]
    outer = next(s for s in calls if s.parent is None)
    inner = next(s for s in calls if s.parent is not None)
    tool = telemetry.span("execute_tool ask_again")
    assert tool.parent is not None and tool.parent.span_id == outer.context.span_id
    assert inner.parent is not None and inner.parent.span_id == tool.context.span_id
    assert inner.context.trace_id == outer.context.trace_id


async def test_an_async_tools_call_is_a_child_of_its_execute_tool_span(
    make_proxy: MakeProxy, telemetry: Telemetry, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy()

    async def ask_again(question: str) -> str:
        """Ask the model a sub-question."""
        return (await proxy.achat(question)).text

    upstream.enqueue(
        Reply(tool_calls=[{"name": "ask_again", "arguments": {"question": "sub"}, "id": "c1"}]),
        Reply(text="inner answer"),
        Reply(text="outer answer"),
    )
    assert (await proxy.achat("Outer?", tools=[ask_again])).text == "outer answer"
    await proxy.aclose()
    tool = telemetry.span("execute_tool ask_again")
    (inner,) = [s for s in telemetry.children(tool) if s.name == "chat gpt-5.4-mini"]
    assert inner.context.trace_id == tool.context.trace_id
