"""Call observers (llmproxy.observe): the steps they hear, headers upstream, no cost unused."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import llmproxy
from llmproxy import LLMBudget
from llmproxy.call import Call, CallOptions
from llmproxy.flow import call_flow
from llmproxy.observe import CallEnd, CallStart, CallTrace, RoundTrip
from llmproxy.plugins import Plugins
from llmproxy.types import ChatRequest, Completion, EmbeddingResult, EmbedRequest
from llmproxy_openai import plugin as openai_plugin
from llmproxy_testing.fake_anthropic import FakeAnthropic
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.proxies import ProxyMaker
from tests.conftest import API_KEY

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Recorder(CallTrace):
    """Writes down every step it hears, and asks for a traceparent upstream."""

    def __init__(self, start: CallStart) -> None:
        self.start = start
        self.steps: list[str] = []
        self.end: CallEnd | None = None

    def began(self) -> None:
        self.steps.append("began")

    def round_trip_started(self, kind: RoundTrip) -> None:
        self.steps.append(f"{kind}>")

    def round_trip_ended(self, kind: RoundTrip, error: BaseException | None) -> None:
        self.steps.append(f"<{kind}")

    def attempt_started(
        self, request: ChatRequest | EmbedRequest, number: int, streamed: bool
    ) -> Mapping[str, str] | None:
        self.steps.append(f"attempt {number} {request.model}{' stream' if streamed else ''}>")
        return {"traceparent": TRACEPARENT}

    def first_chunk(self, seconds: float) -> None:
        self.steps.append("first chunk")

    def attempt_ended(
        self, result: Completion | EmbeddingResult | None, error: BaseException | None
    ) -> None:
        self.steps.append(f"<attempt {type(error).__name__ if error else 'ok'}")

    def call_ended(self, end: CallEnd) -> None:
        self.end = end
        self.steps.append(f"ended {end.outcome}")


class Observer:
    def __init__(self, follow: bool = True) -> None:
        self.follow = follow
        self.traces: list[Recorder] = []

    def start_call(self, call: CallStart) -> CallTrace | None:
        if not self.follow:
            return None
        trace = Recorder(call)
        self.traces.append(trace)
        return trace


def test_a_chat_is_heard_step_by_step_and_sends_the_headers(
    make_proxy: ProxyMaker, upstream: FakeOpenAI
) -> None:
    observer = Observer()
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=10_000)], observers=[observer])
    r = proxy.chat("Hello", session_id="s1", temperature=0.2)
    (trace,) = observer.traces
    assert trace.start.operation == "chat" and trace.start.model == "gpt-5.4-mini"
    assert trace.start.session_id == "s1" and trace.start.temperature == 0.2
    assert trace.steps == [
        "began",
        "history.load>",
        "<history.load",
        "ledger.reserve>",
        "<ledger.reserve",
        "attempt 1 gpt-5.4-mini>",
        "<attempt ok",
        "ledger.settle+history>",
        "<ledger.settle+history",
        "ended ok",
    ]
    assert trace.end is not None and trace.end.usage == r.usage and trace.end.attempts == 1
    assert upstream.requests[-1].headers["traceparent"] == TRACEPARENT


def test_a_stream_hears_its_first_chunk(make_proxy: ProxyMaker) -> None:
    observer = Observer()
    proxy = make_proxy(observers=[observer])
    assert proxy.stream("Hello").text()
    (trace,) = observer.traces
    assert trace.steps == [
        "began",
        "attempt 1 gpt-5.4-mini stream>",
        "first chunk",
        "<attempt ok",
        "ended ok",
    ]
    assert trace.end is not None and trace.end.first_chunk is not None
    assert 0 < trace.end.first_chunk <= trace.end.duration


def test_a_stream_closed_early_ends_interrupted(make_proxy: ProxyMaker) -> None:
    observer = Observer()
    proxy = make_proxy(observers=[observer])
    with proxy.stream("Hello there, how are you") as stream:
        next(iter(stream))
    (trace,) = observer.traces
    assert trace.steps[-2:] == ["<attempt Closed", "ended interrupted"]


def test_a_declined_call_runs_the_flow_unwrapped(make_proxy: ProxyMaker) -> None:
    proxy = make_proxy(observers=[Observer(follow=False)])
    flow = proxy._chat_flow(Call(proxy, "Hello", CallOptions(), False))
    assert flow.gi_code is call_flow.__code__  # type: ignore[attr-defined]  # no generator in between: nothing more to run
    flow.close()
    assert proxy.chat("Hello").text == "Echo: Hello"


def test_a_failing_trace_never_fails_the_call(
    make_proxy: ProxyMaker, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(CallTrace):
        def attempt_started(self, *args: Any) -> Mapping[str, str] | None:
            raise RuntimeError("tracer bug")

    class BrokenObserver:
        def start_call(self, call: CallStart) -> CallTrace:
            return Broken()

    proxy = make_proxy(observers=[BrokenObserver()])
    with caplog.at_level(logging.ERROR, logger="llmproxy"):
        assert proxy.chat("Hello").text == "Echo: Hello"
    assert "tracer bug" in caplog.text


@pytest.fixture
def others() -> Iterator[tuple[FakeGemini, FakeDeepSeek, FakeAnthropic]]:
    with (
        FakeGemini(api_key=API_KEY) as gemini,
        FakeDeepSeek(api_key=API_KEY) as deepseek,
        FakeAnthropic(api_key=API_KEY) as anthropic,
    ):
        yield gemini, deepseek, anthropic


@pytest.mark.parametrize(
    "model", ["gemini/gemini-3.8-flash", "deepseek/deepseek-flash", "anthropic/claude-sonnet-4.5"]
)
@pytest.mark.parametrize("streamed", [False, True])
def test_every_provider_sends_the_attempt_headers(
    env: dict[str, str],
    others: tuple[FakeGemini, FakeDeepSeek, FakeAnthropic],
    model: str,
    streamed: bool,
) -> None:
    gemini, deepseek, anthropic = others
    environ = {
        **env,
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": gemini.base_url,
        "DEEPSEEK_API_KEY": API_KEY,
        "DEEPSEEK_BASE_URL": deepseek.base_url,
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": anthropic.base_url,
    }
    maker = ProxyMaker(environ)
    try:
        proxy = maker(observers=[Observer()])
        if streamed:
            assert proxy.stream("Hello", model=model).text()
        else:
            assert proxy.chat("Hello", model=model).text
    finally:
        maker.close()
    server = {"gemini": gemini, "deepseek": deepseek, "anthropic": anthropic}[model.split("/")[0]]
    assert server.requests[-1].headers["traceparent"] == TRACEPARENT


def test_embeddings_send_the_attempt_headers(make_proxy: ProxyMaker, upstream: FakeOpenAI) -> None:
    observer = Observer()
    proxy = make_proxy(observers=[observer])
    proxy.embed("some text", model="openai/text-embedding-3-small")
    (trace,) = observer.traces
    assert trace.start.operation == "embed" and trace.start.inputs == 1
    assert trace.steps == ["began", "attempt 1 text-embedding-3-small>", "<attempt ok", "ended ok"]
    assert upstream.requests[-1].headers["traceparent"] == TRACEPARENT


class TracedPlugin:
    """A plugin with a per-call hook, to see it logged."""

    @staticmethod
    @llmproxy.hookimpl
    def on_response(event: Any) -> None:
        pass


def test_trace_plugins_logs_every_hook_call(
    make_proxy: ProxyMaker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="llmproxy.plugins"):
        plugins = Plugins(
            environ={"LLMPROXY_TRACE_PLUGINS": "1"},
            entry_points=False,
            extra=[openai_plugin, TracedPlugin],
        )
        registration = [r.getMessage() for r in caplog.records]
        assert any(
            m.startswith("hook register_ledgers: llmproxy.builtins in ") for m in registration
        )
        caplog.clear()
        make_proxy(plugins=plugins).chat("Hello")
    (line,) = [r.getMessage() for r in caplog.records if "on_response" in r.getMessage()]
    assert line.startswith("hook on_response: TracedPlugin in ") and line.endswith(" ms")


def test_plugins_are_not_traced_by_default(
    make_proxy: ProxyMaker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="llmproxy.plugins"):
        plugins = Plugins(environ={}, entry_points=False, extra=[openai_plugin, TracedPlugin])
        make_proxy(plugins=plugins).chat("Hello")
    assert not [r for r in caplog.records if r.name == "llmproxy.plugins"]


def test_a_registered_observer_without_start_call_is_a_plugin_error() -> None:
    class Bad:
        @staticmethod
        @llmproxy.hookimpl
        def register_observers(register: Any) -> None:
            register(object())

    plugins = Plugins(environ={}, entry_points=False, extra=[Bad])
    assert any("no start_call method" in str(e) for e in plugins.errors)
    assert plugins.registry.observers == []


def test_a_registered_observer_follows_every_proxy(make_proxy: ProxyMaker) -> None:
    observer = Observer()

    class Registers:
        @staticmethod
        @llmproxy.hookimpl
        def register_observers(register: Any) -> None:
            register(observer)

    plugins = Plugins(environ={}, entry_points=False, extra=[openai_plugin, Registers])
    make_proxy(plugins=plugins).chat("Hello")
    assert len(observer.traces) == 1 and observer.traces[0].steps[-1] == "ended ok"


def test_the_command_prints_the_trace_to_stderr(tmp_path: Path) -> None:
    """The CLI sets up no logging: the trace still reaches its stderr, as datasette's does."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LLMPROXY"))}
    environ.update(LLMPROXY_TRACE_PLUGINS="1", LLMPROXY_DATA_DIR=str(tmp_path))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("llmproxy")), "plugins"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "llmproxy.plugins: hook register_providers: openai in " in done.stderr
