"""DeepSeek through a Proxy: the real openai SDK against FakeDeepSeek, sync, async and streaming."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmproxy import Proxy
from llmproxy.errors import (
    ConfigError,
    MissingCredentials,
    ProviderAuthError,
    ProviderBadRequest,
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
from llmproxy.types import ChatRequest, Message, ToolCall, Usage
from llmproxy_deepseek import env, models
from llmproxy_deepseek.provider import DeepSeekProvider, count_messages, deepseek_message
from llmproxy_testing.fake_deepseek import (
    DEFAULT_REASONING,
    REASONING_REQUIRED_MESSAGE,
    FakeDeepSeek,
    Fault,
    Reply,
)
from llmproxy_testing.proxies import ask as ask_in

MODEL = "deepseek-flash"
NAME = f"deepseek/{MODEL}"
FLASH = Price(0.30, 1.20, 0.006)
# The peak price, set in the configuration: the default table's depends on the hour of the call.
PINNED = {"prices": {NAME: {"input": 0.30, "output": 1.20, "cached_input": 0.006}}}
WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Oslo"}}


def chat_bodies(server: FakeDeepSeek) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path.endswith("/chat/completions")]


async def ask(proxy: Proxy, mode: str, prompt: Any, **kwargs: Any) -> tuple[str, str | None, Any]:
    """Run one call in ``mode`` on this module's model; return the answer, reasoning, usage."""
    kwargs.setdefault("model", NAME)
    return await ask_in(proxy, mode, prompt, **kwargs)


MODES = ["chat", "achat", "stream", "astream"]


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("mode", MODES)
async def test_reasoning_arrives_on_its_own_field(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, mode: str
) -> None:
    proxy = make_proxy(PINNED)
    server.enqueue(Reply(text="Rayleigh scattering.", reasoning="Short waves scatter more."))
    text, reasoning, usage = await ask(proxy, mode, "Why is the sky blue?")
    assert text == "Rayleigh scattering."
    assert reasoning == "Short waves scatter more."
    # prompt 3 + (5 words + 3); output = 4 reasoning words + 2 answer words
    assert usage == Usage(11, 6, 0, 4, cost=FLASH.cost(Usage(11, 6, 0, 4)))
    body = chat_bodies(server)[-1]
    assert body["model"] == MODEL
    assert "thinking" not in body  # DeepSeek's default (on) is left alone


@pytest.mark.parametrize("mode", MODES)
async def test_thinking_disabled_passes_through(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, mode: str
) -> None:
    proxy = make_proxy()
    text, reasoning, usage = await ask(
        proxy, mode, "Hi there", extra_body={"thinking": {"type": "disabled"}}
    )
    assert chat_bodies(server)[-1]["thinking"] == {"type": "disabled"}
    assert text == "Echo: Hi there"
    assert reasoning is None
    assert usage.reasoning_tokens == 0
    assert usage.output_tokens == 3


@pytest.mark.parametrize("mode", MODES)
async def test_output_cap_goes_out_as_max_tokens(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, mode: str
) -> None:
    proxy = make_proxy()
    server.enqueue(Reply(text="one two three four five", reasoning="a b"))
    text, reasoning, usage = await ask(proxy, mode, "Count", max_output_tokens=4)
    body = chat_bodies(server)[-1]
    assert body["max_tokens"] == 4
    assert "max_completion_tokens" not in body
    # DeepSeek's cap covers reasoning too: 2 reasoning words, then 2 of the answer.
    assert (reasoning, text) == ("a b", "one two")
    assert usage.output_tokens == 4


async def test_cache_hits_are_cached_input_billed_at_the_hit_price(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek
) -> None:
    proxy = make_proxy(PINNED)
    server.enqueue(Reply(text="Fine.", usage={"prompt_cache_hit_tokens": 6}))
    r = proxy.chat("How are you today?", model=NAME)
    # prompt 3 + (4 + 3) = 10, of which 6 hit the cache; output 3 reasoning + 1 answer word
    assert r.usage.input_tokens == 10
    assert r.usage.cached_input_tokens == 6
    expected = (4 * 0.30 + 6 * 0.006 + 4 * 1.20) / 1_000_000
    assert r.usage.cost == pytest.approx(expected)
    assert r.usage.cost == FLASH.cost(Usage(10, 4, 6, 3))


async def test_prefix_cache_counts_a_session_s_repeated_history(
    make_proxy: Callable[..., Proxy], environ: dict[str, str]
) -> None:
    with FakeDeepSeek(api_key=environ["DEEPSEEK_API_KEY"], prefix_cache=True) as cached:
        proxy = make_proxy(environ={**environ, "DEEPSEEK_BASE_URL": cached.base_url})
        first = proxy.chat("Hello there", model=NAME, session_id="s1")
        second = proxy.chat("And again", model=NAME, session_id="s1")
        assert first.usage.cached_input_tokens == 0
        # The second request starts with the first one's user message: 2 words + 3.
        assert second.usage.cached_input_tokens == 5
        usage = cached.requests[-1].json()
        assert usage["messages"][0] == {"role": "user", "content": "Hello there"}
        await proxy.aclose()


async def test_prices_are_registered_through_the_entry_point() -> None:
    plugins = Plugins(environ={})
    assert "deepseek" in plugins.registry.providers
    info = next(i for i in plugins.infos() if i.name == "deepseek")
    assert info.distribution == "llmproxy-deepseek"
    prices = plugins.registry.prices
    # genai-prices bills DeepSeek's peak hours (01:00-04:00 and 06:00-10:00 UTC) at the peak
    # rate and the rest at the off-peak one, by the time of the call.
    day = datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC)
    peak = (day + datetime.timedelta(hours=2)).timestamp()
    off_peak = (day + datetime.timedelta(hours=12)).timestamp()
    for model in ("deepseek-flash", "deepseek-v4-flash"):
        at_peak = prices.get("deepseek", model, at=peak)
        at_off_peak = prices.get("deepseek", model, at=off_peak)
        assert at_peak is not None and at_off_peak is not None
        assert (at_peak.input, at_peak.cached_input, at_peak.output) == (0.30, 0.006, 1.20)
        assert (at_off_peak.input, at_off_peak.cached_input, at_off_peak.output) == (
            0.15,
            0.003,
            0.60,
        )
    found = prices.lookup("deepseek", "deepseek-v4-pro", at=peak)
    assert found is not None and found.origin.startswith("genai-prices")
    assert (found.price.input, found.price.output) == (1.32, 3.96)


# --------------------------------------------------------------------------- tool calls


async def test_reasoning_round_trips_through_a_session_with_tool_calls(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek
) -> None:
    proxy = make_proxy()
    server.enqueue(Reply(tool_calls=[WEATHER_CALL], reasoning="I should look it up."))
    first = proxy.chat("Weather in Oslo?", model=NAME, session_id="trip")
    [call] = first.message.tool_calls
    assert first.finish_reason == "tool_calls"
    assert first.reasoning == "I should look it up."
    tool = {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": call.id}
    second = proxy.chat([tool], model=NAME, session_id="trip")
    assert second.text == "Echo: Weather in Oslo?"
    sent = chat_bodies(server)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["reasoning_content"] == "I should look it up."
    assert sent[1]["tool_calls"][0]["id"] == call.id
    # The history store keeps the reasoning of both answers.
    stored = [r.message for r in proxy.history.load("trip")]
    assert [m.reasoning for m in stored] == [None, "I should look it up.", None, DEFAULT_REASONING]


async def test_reasoning_survives_a_restart_through_sqlite_history(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    server.enqueue(Reply(tool_calls=[WEATHER_CALL], reasoning="Need the tool."))
    first = make_proxy(history=url).chat("Weather in Oslo?", model=NAME, session_id="s")
    [call] = first.message.tool_calls
    later = make_proxy(history=url)  # a new process would see the same file
    tool = {"role": "tool", "content": "21C", "tool_call_id": call.id}
    answer = await later.achat([tool], model=NAME, session_id="s")
    assert answer.text == "Echo: Weather in Oslo?"
    assert chat_bodies(server)[-1]["messages"][1]["reasoning_content"] == "Need the tool."


async def test_missing_reasoning_after_tool_calls_is_what_deepseek_refuses(
    server: FakeDeepSeek,
) -> None:
    # The fake enforces DeepSeek's rule, so the provider's care is really tested: raw OpenAI
    # wire messages (no reasoning_content) get DeepSeek's 400.
    from llmproxy_openai.provider import OpenAIProvider

    key = str(server.api_key)
    bare = OpenAIProvider(api_key=key, base_url=server.base_url, name="deepseek")
    messages = (
        Message("user", "Weather?"),
        Message("assistant", tool_calls=(ToolCall("c1", "get_weather", "{}"),)),
        Message("tool", "21C", tool_call_id="c1"),
    )
    request = ChatRequest(messages, MODEL, "deepseek")
    with pytest.raises(ProviderBadRequest) as info:
        bare.chat(request)
    assert REASONING_REQUIRED_MESSAGE in str(info.value)
    ours = DeepSeekProvider(api_key=key, base_url=server.base_url)
    assert ours.chat(request).message.content == "Echo: Weather?"
    sent = server.last_request.json()["messages"][1]
    assert sent["reasoning_content"] == ""  # none was kept: an empty one is sent
    bare.close()
    ours.close()


def test_wire_messages_carry_reasoning_only_on_tool_call_turns() -> None:
    call = ToolCall("c1", "f", '{"a": 1}')
    assert deepseek_message(Message("assistant", "hi", reasoning="r")) == {
        "role": "assistant",
        "content": "hi",
    }
    assert deepseek_message(Message("assistant", tool_calls=(call,), reasoning="why")) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
        "reasoning_content": "why",
    }
    assert deepseek_message(Message("user", "q", reasoning="ignored")) == {
        "role": "user",
        "content": "q",
    }


@pytest.mark.parametrize("mode", ["stream", "astream"])
async def test_streamed_tool_calls_keep_their_reasoning(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, mode: str
) -> None:
    proxy = make_proxy()
    server.enqueue(Reply(tool_calls=[WEATHER_CALL], reasoning="Look it up."))
    text, reasoning, _ = await ask(proxy, mode, "Weather?", session_id="st")
    assert (text, reasoning) == ("", "Look it up.")
    [_, answer] = [r.message for r in proxy.history.load("st")]
    assert answer.reasoning == "Look it up."
    assert answer.tool_calls[0].name == "get_weather"
    tool = {"role": "tool", "content": "21C", "tool_call_id": answer.tool_calls[0].id}
    await ask(proxy, mode, [tool], session_id="st")
    assert chat_bodies(server)[-1]["messages"][1]["reasoning_content"] == "Look it up."


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("mode", MODES)
async def test_rate_limit_then_success_is_retried_by_the_proxy(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, mode: str
) -> None:
    proxy = make_proxy()
    server.enqueue(Fault.status(429, retry_after=0.01), Fault.status(500))
    text, _, _ = await ask(proxy, mode, "Hello")
    assert text == "Echo: Hello"
    assert len(chat_bodies(server)) == 3


@pytest.mark.parametrize(
    ("status", "expected"), [(429, ProviderRateLimited), (500, ProviderUnavailable)]
)
@pytest.mark.parametrize("mode", MODES)
async def test_errors_reach_the_caller_with_status_and_retry_after(
    make_proxy: Callable[..., Proxy],
    server: FakeDeepSeek,
    mode: str,
    status: int,
    expected: type[Exception],
) -> None:
    proxy = make_proxy({"retry": {"max_attempts": 1}})
    server.enqueue(Fault.status(status, retry_after=7))
    with pytest.raises(expected) as info:
        await ask(proxy, mode, "Hello")
    assert info.value.status == status  # type: ignore[attr-defined]
    assert info.value.retry_after == 7  # type: ignore[attr-defined]
    assert info.value.provider == "deepseek"  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["stream", "astream"])
async def test_stream_broken_midway_raises_and_keeps_what_arrived(
    make_proxy: Callable[..., Proxy], server: FakeDeepSeek, mode: str
) -> None:
    proxy = make_proxy()
    # 3 reasoning deltas ("Thinking it over."), then 2 of the answer, then the line drops.
    server.enqueue(Fault.drop_after(5))
    with pytest.raises(StreamInterrupted) as info:
        await ask(proxy, mode, "alpha beta gamma delta", session_id="cut")
    assert info.value.provider == "deepseek"
    [_, stored] = [r.message for r in proxy.history.load("cut")]
    assert stored.interrupted
    assert stored.reasoning == DEFAULT_REASONING
    assert stored.content == "Echo: alpha"


async def test_wrong_key_is_an_auth_error_without_the_key(
    make_proxy: Callable[..., Proxy], environ: dict[str, str]
) -> None:
    wrong = "sk-ds-wrong-key-000000000000abcd"
    proxy = make_proxy(environ={**environ, "DEEPSEEK_API_KEY": wrong})
    with pytest.raises(ProviderAuthError) as info:
        proxy.chat("Hello", model=NAME)
    assert info.value.status == 401
    assert wrong not in str(info.value)
    assert wrong[-4:] not in str(info.value)


# --------------------------------------------------------------------------- configuration


async def test_missing_key_names_the_variable(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(environ={})
    with pytest.raises(MissingCredentials) as info:
        proxy.chat("Hello", model=NAME)
    assert info.value.variables == ("DEEPSEEK_API_KEY",)
    assert "DEEPSEEK_API_KEY" in str(info.value)


def test_settings_and_environment() -> None:
    p = DeepSeekProvider.from_settings(
        ProviderSettings("deepseek", environ={"DEEPSEEK_API_KEY": "sk-x"})
    )
    assert p.base_url == "https://api.deepseek.com"
    assert (p.timeout, p.connect_timeout) == (60.0, 10.0)
    assert repr(p) == "DeepSeekProvider(name='deepseek', base_url='https://api.deepseek.com')"
    p = DeepSeekProvider.from_settings(
        ProviderSettings(
            "ds",
            api_key=Secret("sk-config"),
            environ={
                "DEEPSEEK_API_KEY": "sk-env",
                "DEEPSEEK_BASE_URL": "http://127.0.0.1:9/",
                "LLMPROXY_DEEPSEEK_TIMEOUT": "2.5",
                "LLMPROXY_DEEPSEEK_CONNECT_TIMEOUT": "4",
            },
        )
    )
    assert (p.name, p.base_url, p.timeout, p.connect_timeout) == (
        "ds",
        "http://127.0.0.1:9/",
        2.5,
        4.0,
    )
    configured = DeepSeekProvider.from_settings(
        ProviderSettings(
            "deepseek",
            options={"connect_timeout": 1.5},
            environ={"DEEPSEEK_API_KEY": "sk-x", "LLMPROXY_DEEPSEEK_CONNECT_TIMEOUT": "4"},
        )
    )
    assert configured.connect_timeout == 1.5  # the table wins
    assert p._api_key.get() == "sk-config"
    for bad in ("soon", "0"):
        with pytest.raises(ConfigError, match="LLMPROXY_DEEPSEEK_TIMEOUT"):
            env.timeout({"LLMPROXY_DEEPSEEK_TIMEOUT": bad})


def test_limits_and_estimates() -> None:
    p = DeepSeekProvider(api_key="sk-x")
    assert p.max_output_tokens("deepseek-flash") == 393_216
    assert p.max_output_tokens("deepseek-v4-pro") == 393_216
    assert p.max_output_tokens("someone-elses-model") is None
    assert models.DEFAULT_MODEL == "deepseek-flash"
    plain = (Message("user", "Héllo wörld"),)
    assert p.count_tokens(plain, MODEL) == messages_upper_bound(plain)
    turn = Message("assistant", tool_calls=(ToolCall("c1", "f", "{}"),), reasoning="ré")
    with_tools = (*plain, turn, Message("tool", "ok", tool_call_id="c1"))
    # The reasoning sent back and the call ids count too, so the bound covers what is sent.
    assert count_messages(with_tools) >= messages_upper_bound(with_tools) + len("ré".encode()) + 4
    assert p.count_text_tokens("añb", MODEL) == 4
    assert json.dumps(p.params(ChatRequest(with_tools, MODEL, "deepseek"))["messages"][1])


async def test_a_hung_upstream_is_a_timeout_at_the_request_s_deadline(
    provider: DeepSeekProvider, server: FakeDeepSeek
) -> None:
    """The OpenAI provider's deadline handling holds for DeepSeek (sync and async)."""
    release = threading.Event()
    try:
        for call in ("sync", "async"):
            server.enqueue(Fault.hang(release))
            req = ChatRequest((Message("user", "Hello"),), "deepseek-chat", "deepseek", timeout=0.3)
            started = time.monotonic()
            with pytest.raises(ProviderTimeout):
                await (
                    provider.achat(req)
                    if call == "async"
                    else asyncio.to_thread(provider.chat, req)
                )
            assert time.monotonic() - started < 8.0  # a guard against a hang, not a measure
    finally:
        release.set()
