"""Gemini through a Proxy: the real google-genai SDK against FakeGemini, sync, async, streaming."""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.errors import (
    ConfigError,
    InvalidRequest,
    MissingCredentials,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    StreamInterrupted,
)
from llmproxy.plugins import Plugins
from llmproxy.pricing import Price
from llmproxy.registry import ProviderSettings
from llmproxy.secret import Secret
from llmproxy.tokens import messages_upper_bound
from llmproxy.tools import Tool
from llmproxy.types import ChatRequest, Message, ToolCall, Usage
from llmproxy_gemini import convert, env, models
from llmproxy_gemini.provider import GeminiProvider, count_messages
from llmproxy_testing._http import FakeServer, RecordedRequest, ResponseWriter
from llmproxy_testing.fake_gemini import SKIP_SIGNATURE, FakeGemini, Fault, Reply
from llmproxy_testing.proxies import ask as ask_in

MODEL = "gemini-3.8-flash"
NAME = f"gemini/{MODEL}"
# gemini-3.8-flash: the introductory price, then the one the page lists from 2027-01-01.
INTRO_ENDS = datetime.datetime(2026, 12, 31, 10, tzinfo=datetime.UTC).timestamp()
LATER = Price(1.50, 7.50, 0.15, "2026-10-07")
PRICE = Price(0.75, 3.75, 0.075, "2026-10-07", until=INTRO_ENDS, then=LATER)
MODES = ["chat", "achat", "stream", "astream"]
WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Oslo"}}


def generate_bodies(server: FakeServer) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if "Content" in r.path]


async def ask(proxy: Proxy, mode: str, prompt: Any, **kwargs: Any) -> tuple[str, str | None, Any]:
    """Run one call in ``mode`` on this module's model; return the answer, reasoning, usage."""
    kwargs.setdefault("model", NAME)
    return await ask_in(proxy, mode, prompt, **kwargs)


class SSEGemini(FakeServer):
    """A Gemini endpoint that answers with exactly the given events (for edge cases)."""

    def __init__(self, events: Sequence[dict[str, Any]], *, status: int = 200) -> None:
        super().__init__()
        self.events = events
        self.status = status

    @property
    def base_url(self) -> str:
        return self.url

    async def dispatch(self, request: RecordedRequest, response: ResponseWriter) -> None:
        if request.path.endswith(":generateContent"):
            response.send_json(self.status, self.events[-1])
            return
        response.start_stream(self.status, {"content-type": "text/event-stream"})
        for event in self.events:
            response.write(b"data: " + json.dumps(event).encode() + b"\r\n\r\n")
            await response.drain()
        response.end()


@pytest.fixture
def sse_gemini() -> Iterator[Callable[..., SSEGemini]]:
    made: list[SSEGemini] = []

    def make(events: Sequence[dict[str, Any]], **kwargs: Any) -> SSEGemini:
        server = SSEGemini(events, **kwargs).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def text_event(text: str, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    candidate.update(extra.pop("candidate", {}))
    return {"candidates": [candidate], "modelVersion": MODEL, **extra}


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("mode", MODES)
async def test_answer_reasoning_and_usage(
    make_proxy: Callable[..., Proxy], server: FakeGemini, mode: str
) -> None:
    proxy = make_proxy()
    server.enqueue(
        Reply(
            text="Rayleigh scattering.",
            reasoning="Short waves scatter more.",
            usage={"cachedContentTokenCount": 4, "toolUsePromptTokenCount": 5},
        )
    )
    text, reasoning, usage = await ask(proxy, mode, "Why is the sky blue?")
    assert text == "Rayleigh scattering."
    assert reasoning == "Short waves scatter more."
    # prompt 3 + (5 + 3) = 11, plus 5 tool-use prompt tokens; output 2 candidates + 4 thoughts.
    expected = Usage(16, 6, 4, 4)
    price = PRICE.at(time.time())  # the introductory price until 2026-12-31, then the later one
    assert price.cached_input is not None
    assert usage == Usage(16, 6, 4, 4, cost=price.cost(expected))
    assert usage.cost == pytest.approx(
        (12 * price.input + 4 * price.cached_input + 6 * price.output) / 1e6
    )
    request = server.requests[-1]
    assert request.path == f"/v1/models/{MODEL}:" + (
        "streamGenerateContent" if "stream" in mode else "generateContent"
    )
    assert request.headers["x-goog-api-key"] == server.api_key
    body = request.json()
    assert body["generationConfig"]["thinkingConfig"] == {"include_thoughts": True}
    assert "maxOutputTokens" not in body["generationConfig"]


@pytest.mark.parametrize("mode", MODES)
async def test_request_mapping(
    make_proxy: Callable[..., Proxy], server: FakeGemini, mode: str
) -> None:
    proxy = make_proxy()
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "second"},
    ]
    server.enqueue(Reply(text="one two three four five"))
    text, _, usage = await ask(
        proxy, mode, prompt, max_output_tokens=3, temperature=0.25, top_p=0.5
    )
    assert text == "one two three"
    assert usage.output_tokens == 3
    body = generate_bodies(server)[-1]
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert [(c["role"], c["parts"]) for c in body["contents"]] == [
        ("user", [{"text": "first"}]),
        ("model", [{"text": "answer one"}]),
        ("user", [{"text": "second"}]),
    ]
    config = body["generationConfig"]
    assert (config["maxOutputTokens"], config["temperature"], config["topP"]) == (3, 0.25, 0.5)


@pytest.mark.parametrize("mode", ["chat", "astream"])
async def test_finish_reasons(
    make_proxy: Callable[..., Proxy], server: FakeGemini, mode: str
) -> None:
    proxy = make_proxy()
    server.enqueue(Reply(text="partial", finish_reason="SAFETY"), Reply(text="a b c d"))
    if mode == "chat":
        assert proxy.chat("x", model=NAME).finish_reason == "content_filter"
        assert proxy.chat("x", model=NAME, max_output_tokens=2).finish_reason == "length"
    else:
        reasons = []
        for cap in (None, 2):
            async with proxy.astream("x", model=NAME, max_output_tokens=cap) as stream:
                async for ev in stream:
                    if ev.done:
                        reasons.append(ev.finish_reason)
        assert reasons == ["content_filter", "length"]


async def test_blocked_prompt_is_an_empty_content_filter_answer(
    make_proxy: Callable[..., Proxy], environ: dict[str, str], sse_gemini: Callable[..., SSEGemini]
) -> None:
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
    }
    upstream = sse_gemini([blocked])
    proxy = make_proxy(environ={**environ, "GEMINI_BASE_URL": upstream.base_url})
    r = proxy.chat("something unsafe", model=NAME)
    assert (r.text, r.finish_reason, r.usage.input_tokens) == ("", "content_filter", 7)
    with proxy.stream("something unsafe", model=NAME) as stream:
        events = list(stream)
    assert events[-1].finish_reason == "content_filter"


async def test_stream_usage_repeated_on_every_chunk_counts_once(
    make_proxy: Callable[..., Proxy], environ: dict[str, str], sse_gemini: Callable[..., SSEGemini]
) -> None:
    def usage(candidates: int) -> dict[str, Any]:
        return {"promptTokenCount": 9, "candidatesTokenCount": candidates}

    events = [
        text_event("Hello", usageMetadata=usage(1)),
        text_event(" there", usageMetadata=usage(2)),
        text_event(" friend", usageMetadata=usage(3), candidate={"finishReason": "STOP"}),
    ]
    upstream = sse_gemini(events)
    proxy = make_proxy(environ={**environ, "GEMINI_BASE_URL": upstream.base_url})
    text, _, got = await ask(proxy, "astream", "hi")
    assert text == "Hello there friend"
    assert (got.input_tokens, got.output_tokens) == (9, 3)


async def test_stream_that_ends_without_a_finish_is_interrupted(
    make_proxy: Callable[..., Proxy], environ: dict[str, str], sse_gemini: Callable[..., SSEGemini]
) -> None:
    upstream = sse_gemini([text_event("Hello"), text_event(" there")])
    proxy = make_proxy(environ={**environ, "GEMINI_BASE_URL": upstream.base_url})
    with pytest.raises(StreamInterrupted, match="ended before the answer was complete"):
        await ask(proxy, "stream", "hi", session_id="cut")
    [_, stored] = [r.message for r in proxy.history.load("cut")]
    assert (stored.content, stored.interrupted) == ("Hello there", True)


@pytest.mark.parametrize("mode", ["stream", "astream"])
async def test_stream_broken_midway_raises_and_keeps_what_arrived(
    make_proxy: Callable[..., Proxy], server: FakeGemini, mode: str
) -> None:
    proxy = make_proxy()
    server.enqueue(Fault.drop_after(3))
    with pytest.raises(StreamInterrupted) as info:
        await ask(proxy, mode, "alpha beta gamma delta", session_id="cut")
    assert info.value.provider == "gemini"
    [_, stored] = [r.message for r in proxy.history.load("cut")]
    assert stored.interrupted
    assert stored.content == "Echo: alpha beta"


# --------------------------------------------------------------------------- tools


async def test_tool_round_trip_sends_the_thought_signature_back(
    make_proxy: Callable[..., Proxy], server: FakeGemini
) -> None:
    proxy = make_proxy()
    server.enqueue(Reply(tool_calls=[WEATHER_CALL], reasoning="Look it up."))
    first = proxy.chat("Weather in Oslo?", model=NAME, session_id="trip")
    [call] = first.message.tool_calls
    assert (first.finish_reason, call.name, json.loads(call.arguments)) == (
        "tool_calls",
        "get_weather",
        {"city": "Oslo"},
    )
    assert call.id.startswith(convert.SYNTHETIC_ID_PREFIX)  # Gemini sent no id
    assert first.reasoning == "Look it up."
    tool = {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": call.id}
    second = await proxy.achat([tool], model=NAME, session_id="trip")
    assert second.text == "Echo: Weather in Oslo?"
    contents = generate_bodies(server)[-1]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    model_part = contents[1]["parts"][0]
    assert model_part["functionCall"] == {"name": "get_weather", "args": {"city": "Oslo"}}
    assert model_part["thoughtSignature"] in server.issued_signatures
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}}
    ]
    stored = [r.message for r in proxy.history.load("trip")]
    assert [m.reasoning for m in stored] == [None, "Look it up.", None, None]


async def test_history_from_elsewhere_gets_the_documented_placeholder_signature(
    make_proxy: Callable[..., Proxy], server: FakeGemini
) -> None:
    # A conversation whose tool call this process never saw (another process, another provider).
    prompt: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "call_abc", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
                {"id": "call_def", "name": "get_time", "arguments": "{}"},
            ],
        },
        {"role": "tool", "content": "21C", "tool_call_id": "call_abc"},
        {"role": "tool", "content": "noon", "tool_call_id": "call_def"},
    ]
    r = make_proxy().chat(prompt, model=NAME)
    assert r.text == "Echo: Weather?"
    contents = generate_bodies(server)[-1]["contents"]
    model = contents[1]["parts"]
    assert model[0] == {"text": "Let me check."}
    assert model[1]["thoughtSignature"] == SKIP_SIGNATURE
    assert model[1]["functionCall"]["id"] == "call_abc"
    assert "thoughtSignature" not in model[2]
    # Parallel results share one user turn, each named after its call.
    assert contents[2] == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "id": "call_abc",
                    "name": "get_weather",
                    "response": {"output": "21C"},
                }
            },
            {
                "functionResponse": {
                    "id": "call_def",
                    "name": "get_time",
                    "response": {"output": "noon"},
                }
            },
        ],
    }


async def test_function_tools_and_tool_choice_are_translated(
    make_proxy: Callable[..., Proxy], server: FakeGemini
) -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    weather = Tool("get_weather", "Weather of a city.", parameters)
    make_proxy().chat("Weather?", model=NAME, tools=[weather], tool_choice="required")
    body = generate_bodies(server)[-1]
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather of a city.",
                    "parameters_json_schema": parameters,
                }
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


async def test_openai_style_tools_in_extra_are_still_translated(
    provider: GeminiProvider, server: FakeGemini
) -> None:
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    request = ChatRequest(
        (Message("user", "Weather?"),),
        MODEL,
        "gemini",
        extra={"tools": tools, "tool_choice": "required"},
    )
    provider.chat(request)
    body = generate_bodies(server)[-1]
    [declaration] = body["tools"][0]["functionDeclarations"]
    assert declaration["parameters_json_schema"] == tools[0]["function"]["parameters"]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


async def test_bad_options_are_invalid_requests(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy()
    with pytest.raises(InvalidRequest, match="not valid for Gemini") as info:
        proxy.chat("x", model=NAME, no_such_option=1)
    assert info.value.field == "extra"
    with pytest.raises(InvalidRequest, match="tool_choice"):
        proxy.chat("x", model=NAME, tool_choice="sometimes")
    with pytest.raises(InvalidRequest, match="name of its function"):
        proxy.chat([{"role": "tool", "content": "orphan", "tool_call_id": "nope"}], model=NAME)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("mode", MODES)
async def test_rate_limit_and_server_error_are_retried_by_the_proxy(
    make_proxy: Callable[..., Proxy], server: FakeGemini, mode: str
) -> None:
    proxy = make_proxy()
    server.enqueue(Fault.status(429, retry_after=0.01), Fault.status(503))
    text, _, _ = await ask(proxy, mode, "Hello")
    assert text == "Echo: Hello"
    assert len(generate_bodies(server)) == 3


@pytest.mark.parametrize(
    ("fault", "expected", "retry_after"),
    [
        (Fault.status(429, retry_after=12), ProviderRateLimited, 12.0),
        (Fault.status(429, retry_after=0.25), ProviderRateLimited, 0.25),
        (Fault.status(429, headers={"Retry-After": "3"}), ProviderRateLimited, 3.0),
        (Fault.status(500), ProviderUnavailable, None),
        (Fault.status(503, retry_after=2), ProviderUnavailable, 2.0),
        (Fault.status(504), ProviderTimeout, None),
        (Fault.status(403), ProviderAuthError, None),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_errors_reach_the_caller_with_status_and_retry_after(
    make_proxy: Callable[..., Proxy],
    server: FakeGemini,
    mode: str,
    fault: Fault,
    expected: type[Exception],
    retry_after: float | None,
) -> None:
    proxy = make_proxy({"retry": {"max_attempts": 1}})
    server.enqueue(fault)
    with pytest.raises(expected) as info:
        await ask(proxy, mode, "Hello")
    error: Any = info.value
    assert error.status == fault.status_code
    assert error.retry_after == retry_after
    assert error.provider == "gemini"
    assert len(generate_bodies(server)) == 1  # the SDK did not retry behind our back


@pytest.mark.parametrize("mode", ["chat", "astream"])
async def test_wrong_or_missing_key_is_an_auth_error(
    make_proxy: Callable[..., Proxy], environ: dict[str, str], server: FakeGemini, mode: str
) -> None:
    wrong = "AIzaWrongKey000000000000000abcd"
    proxy = make_proxy(environ={**environ, "GEMINI_API_KEY": wrong})
    with pytest.raises(ProviderAuthError) as info:
        await ask(proxy, mode, "Hello")
    assert info.value.status == 400  # Gemini's answer to a bad key: INVALID_ARGUMENT
    assert "API key not valid" in str(info.value)
    assert wrong not in str(info.value)


@pytest.mark.parametrize("mode", ["chat", "astream"])
async def test_timeout_and_refused_connection(
    make_proxy: Callable[..., Proxy], environ: dict[str, str], server: FakeGemini, mode: str
) -> None:
    # Through the Proxy a whole answer may take the call's deadline (the read timeout bounds
    # the silences of a stream): the deadline cuts a hung answer off.
    proxy = make_proxy(
        {"retry": {"max_attempts": 1, "deadline": 0.2}},
        environ={**environ, "LLMPROXY_GEMINI_TIMEOUT": "0.2"},
    )
    server.enqueue(Fault.delay(2))
    with pytest.raises(ProviderTimeout):
        await ask(proxy, mode, "Hello")
    closed = FakeServer().start()
    port = closed.port
    closed.stop()
    refused = make_proxy(
        {"retry": {"max_attempts": 1}},
        environ={**environ, "GEMINI_BASE_URL": f"http://127.0.0.1:{port}"},
    )
    with pytest.raises(ProviderConnectionError):
        await ask(refused, mode, "Hello")


# --------------------------------------------------------------------------- configuration


async def test_missing_key_names_both_variables(make_proxy: Callable[..., Proxy]) -> None:
    with pytest.raises(MissingCredentials) as info:
        make_proxy(environ={}).chat("Hello", model=NAME)
    assert info.value.variables == ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    assert "GEMINI_API_KEY or GOOGLE_API_KEY" in str(info.value)


async def test_environment_is_read_from_the_proxy_s_mapping_only(
    make_proxy: Callable[..., Proxy],
    server: FakeGemini,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the SDK would read from the process environment must not matter.
    monkeypatch.setenv("GOOGLE_API_KEY", "AIzaProcessEnvKey0000000000")
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "v1alpha")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    environ = {
        "GOOGLE_API_KEY": str(server.api_key),
        "GOOGLE_GEMINI_BASE_URL": server.base_url,
        "GOOGLE_GENAI_API_VERSION": "beta",
    }
    r = make_proxy(environ=environ).chat("Hello", model=NAME)
    assert r.text == "Echo: Hello"
    request = server.requests[-1]
    assert request.path == f"/v1beta/models/{MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == server.api_key


def test_settings() -> None:
    p = GeminiProvider.from_settings(ProviderSettings("gemini", environ={"GEMINI_API_KEY": "k"}))
    assert (p.base_url, p.api_version, p.timeout, p.connect_timeout) == (
        "https://generativelanguage.googleapis.com/",
        "v1",
        60.0,
        10.0,
    )
    assert p.include_thoughts
    assert repr(p) == (
        "GeminiProvider(name='gemini', base_url='https://generativelanguage.googleapis.com/')"
    )
    p = GeminiProvider.from_settings(
        ProviderSettings(
            "g2",
            api_key=Secret("AIzaFromConfig"),
            base_url="http://127.0.0.1:9",
            options={"api_version": "v1beta", "include_thoughts": False, "connect_timeout": 2},
            environ={
                "GEMINI_API_KEY": "env",
                "LLMPROXY_GEMINI_TIMEOUT": "3",
                "LLMPROXY_GEMINI_CONNECT_TIMEOUT": "5",
            },
        )
    )
    assert (p.name, p.base_url, p.api_version, p.timeout, p.connect_timeout) == (
        "g2",
        "http://127.0.0.1:9",
        "v1beta",
        3.0,
        2.0,  # the table wins over the environment
    )
    with pytest.raises(ConfigError) as info:
        GeminiProvider.from_settings(
            ProviderSettings(
                "gemini", options={"connect_timeout": "soon"}, environ={"GEMINI_API_KEY": "k"}
            )
        )
    assert info.value.path == "providers.gemini.connect_timeout"
    assert not p.include_thoughts
    assert p._api_key.get() == "AIzaFromConfig"
    for bad in ("later", "-1"):
        with pytest.raises(ConfigError, match="LLMPROXY_GEMINI_TIMEOUT"):
            env.timeout({"LLMPROXY_GEMINI_TIMEOUT": bad})


@pytest.mark.parametrize(("word", "expected"), [("false", False), ("off", False), ("1", True)])
def test_include_thoughts_from_a_variable_reads_on_off_words(word: str, expected: bool) -> None:
    # LLMPROXY_PROVIDERS__GEMINI__INCLUDE_THOUGHTS arrives as a string: "false" is off.
    settings = ProviderSettings(
        "gemini", options={"include_thoughts": word}, environ={"GEMINI_API_KEY": "k"}
    )
    assert GeminiProvider.from_settings(settings).include_thoughts is expected
    with pytest.raises(ConfigError) as info:
        GeminiProvider.from_settings(
            ProviderSettings(
                "gemini", options={"include_thoughts": "maybe"}, environ={"GEMINI_API_KEY": "k"}
            )
        )
    assert info.value.path == "providers.gemini.include_thoughts"


async def test_thought_summaries_are_asked_only_of_thinking_models(
    make_proxy: Callable[..., Proxy], server: FakeGemini
) -> None:
    proxy = make_proxy({"providers": {"gemini": {"include_thoughts": False}}})
    server.enqueue(Reply(text="Fine.", reasoning="hidden"))
    r = proxy.chat("x", model=NAME)
    assert "thinkingConfig" not in generate_bodies(server)[-1].get("generationConfig", {})
    assert (r.text, r.reasoning, r.usage.reasoning_tokens) == ("Fine.", None, 1)
    default = make_proxy()
    default.chat("x", model="gemini/gemini-2.0-flash")
    assert "thinkingConfig" not in generate_bodies(server)[-1].get("generationConfig", {})
    default.chat("x", model=NAME, thinking_config={"thinking_level": "low"})
    assert generate_bodies(server)[-1]["generationConfig"]["thinkingConfig"] == {
        "include_thoughts": True,
        "thinking_level": "LOW",
    }


def test_prices_limits_and_estimates() -> None:
    plugins = Plugins(environ={})
    info = next(i for i in plugins.infos() if i.name == "gemini")
    assert info.distribution == "llmproxy-gemini"
    prices = plugins.registry.prices
    before, after = INTRO_ENDS - 1, INTRO_ENDS
    assert prices.get("gemini", MODEL, at=before) == PRICE
    # A variant no table declares is not priced by the family's price.
    assert prices.get("gemini", "gemini-3.8-flash-preview-09", at=before) is None
    assert prices.get("gemini", MODEL, at=after) == LATER
    assert prices.get("gemini", MODEL) == PRICE.at(time.time())  # now: whichever is in effect
    priced = prices.lookup("gemini", MODEL)
    assert priced is not None and priced.origin == "plugin gemini"
    # The rest come from genai-prices (provider "google"), Pro with its prompt-length tier.
    flash = prices.lookup("gemini", "gemini-3.5-flash")
    assert flash is not None
    assert flash.name == "google/gemini-3.5-flash"
    assert flash.origin.startswith("genai-prices ")
    pro = prices.get("gemini", "gemini-3.1-pro-preview")
    assert pro is not None and pro.tiers and pro.tiers[0].above == 200_000
    assert pro.tiers[0].input > pro.input
    p = GeminiProvider(api_key="k")
    assert p.max_output_tokens(MODEL) == 65_536
    assert p.max_output_tokens("models/gemini-2.0-flash") == 8_192
    assert p.max_output_tokens("gemma-5") is None
    assert models.thinks(MODEL)
    assert not models.thinks("gemini-2.0-flash")
    plain = (Message("system", "Sé breve."), Message("user", "¿Qué tal?"))
    assert p.count_tokens(plain, MODEL) == messages_upper_bound(plain)
    tools = (
        Message("assistant", tool_calls=(ToolCall("c1", "f", "{}"),)),
        Message("tool", "ok", tool_call_id="c1"),
    )
    assert count_messages(tools) > messages_upper_bound(tools)
    assert p.count_text_tokens("añb", MODEL) == 4
    request = ChatRequest(plain, MODEL, "gemini")
    contents, system = convert.build_contents(request.messages)
    assert system == "Sé breve."
    assert len(contents) == 1


def test_placeholder_signature_is_sent_as_google_documents_it() -> None:
    assert base64.urlsafe_b64encode(convert.SKIP_SIGNATURE).decode() == SKIP_SIGNATURE
