"""Claude through a Proxy: the real anthropic SDK against FakeAnthropic, sync, async, streaming.

Every test looks at the exact bodies the SDK put on the wire (``server.requests``) and at what
the Proxy made of the answers.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from llmproxy import CostBudget, LLMBudget, Proxy
from llmproxy.config import load_config
from llmproxy.errors import (
    ConfigError,
    InvalidRequest,
    MissingCredentials,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderRateLimited,
    ProviderUnavailable,
    StreamInterrupted,
    UnsupportedContent,
)
from llmproxy.registry import ProviderSettings
from llmproxy.structured import output_spec
from llmproxy.tools import Tool, tool
from llmproxy.types import Audio, ChatRequest, Chunk, Document, Image, Message, ToolCall
from llmproxy_anthropic import models
from llmproxy_anthropic.provider import (
    AUTO_CACHE_CHARS,
    FILES_BETA,
    AnthropicProvider,
    count_messages,
)
from llmproxy_testing.fake_anthropic import FakeAnthropic, Fault, Reply, input_token_count
from llmproxy_testing.proxies import ProxyMaker
from llmproxy_testing.proxies import ask as ask_in

from .conftest import API_KEY

MODEL = "claude-sonnet-4-6"
NAME = f"anthropic/{MODEL}"
MODES = ["chat", "achat", "stream", "astream"]
THINKING = {"type": "enabled", "budget_tokens": 2000}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
PDF = b"%PDF-1.7\n" + bytes(range(60))


@tool
def get_weather(city: str) -> str:
    """Get today's weather.

    Args:
        city: The city.
    """
    return f"Sunny in {city}"


@tool
async def get_time(city: str) -> str:
    """Get the local time.

    Args:
        city: The city.
    """
    return f"Noon in {city}"


def bodies(server: FakeAnthropic) -> list[dict[str, Any]]:
    return [r.json() for r in server.requests if r.path == "/v1/messages"]


async def ask(proxy: Proxy, mode: str, prompt: Any, **kwargs: Any) -> tuple[str, str | None, Any]:
    """Run one call in ``mode`` on this module's model; return the answer, reasoning, usage."""
    kwargs.setdefault("model", NAME)
    return await ask_in(proxy, mode, prompt, **kwargs)


def request(*messages: Message, **kwargs: Any) -> ChatRequest:
    return ChatRequest(messages or (Message("user", "Hello"),), MODEL, "anthropic", **kwargs)


# --------------------------------------------------------------------------- the wire


async def test_plain_chat_body_and_headers(make_proxy: ProxyMaker, server: FakeAnthropic) -> None:
    r = make_proxy().chat(
        "Hello there",
        model=NAME,
        system="Be brief.",
        temperature=0.5,  # the SDK has no argument for it: sent in extra_body
        top_k=5,
        stop_sequences=["END"],
        user="user-7",
    )
    assert r.text == "Echo: Hello there"
    [body] = bodies(server)
    assert body == {
        "model": MODEL,
        "max_tokens": 64_000,  # no cap: the model's own limit
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        "temperature": 0.5,
        "top_k": 5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-7"},
    }
    sent = server.requests[-1]
    key = sent.headers.get("x-api-key") or sent.headers["authorization"].removeprefix("Bearer ")
    assert key == API_KEY
    assert sent.headers["anthropic-version"]
    assert sent.headers["x-stainless-retry-count"] == "0"


async def test_max_tokens_is_always_sent(make_proxy: ProxyMaker, server: FakeAnthropic) -> None:
    proxy = make_proxy()
    proxy.chat("one", model=NAME, max_output_tokens=77)
    proxy.chat("two", model="anthropic/claude-3-haiku-20240307")
    proxy.chat("three", model="anthropic/claude-next-unknown")
    budgeted = make_proxy(budgets=[LLMBudget(max_tokens=900)])
    budgeted.chat("four", model=NAME)
    caps = [b["max_tokens"] for b in bodies(server)]
    assert caps[:3] == [77, 4096, models.FALLBACK_OUTPUT_LIMIT]
    assert 0 < caps[3] < 900  # the budget's cap, what is left after the input


async def test_history_roles_merge_into_alternating_turns(
    provider: AnthropicProvider, server: FakeAnthropic
) -> None:
    calls = (ToolCall("toolu_1", "get_weather", '{"city": "Oslo"}'),)
    provider.chat(
        request(
            Message("system", "Rule one."),
            Message("user", "Hi"),
            Message("system", "Rule two."),
            Message("user", "Weather?"),
            Message("assistant", "Let me look.", tool_calls=calls),
            Message("tool", "21C", tool_call_id="toolu_1"),
            Message("user", "And tomorrow?"),
        )
    )
    [body] = bodies(server)
    assert body["system"] == [
        {"type": "text", "text": "Rule one."},
        {"type": "text", "text": "Rule two."},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Weather?"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


async def test_an_empty_assistant_turn_is_left_out(
    provider: AnthropicProvider, server: FakeAnthropic
) -> None:
    # A stream cut before any text leaves an empty answer in history; the API refuses empty
    # text blocks, so the turn is dropped and the user turns around it merge.
    provider.chat(request(Message("user", "One"), Message("assistant", ""), Message("user", "Two")))
    [body] = bodies(server)
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}],
        }
    ]


async def test_images_and_documents_go_out_as_sources(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    data_url = "data:image/jpeg;base64," + base64.b64encode(b"jpeg-bytes").decode()
    prompt: list[str | Image | Document] = [
        "Look:",
        Image(data=PNG, media_type="image/png"),
        Image(url=data_url),
        Image(url="https://example.com/cat.png"),
        Document(data=PDF, filename="report.pdf"),
        Document(file_id="file_011CNha8iCJcU1wXNR6q4V8w"),
    ]
    r = make_proxy().chat(prompt, model=NAME)
    assert r.text == "Echo: Look:"
    [body] = bodies(server)
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Look:"},
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": base64.b64encode(PNG).decode(),
            },
        },
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/jpeg",
                "data": base64.b64encode(b"jpeg-bytes").decode(),
            },
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {
            "type": "document",
            "source": {
                "type": "base64",
                "media_type": "application/pdf",
                "data": base64.b64encode(PDF).decode(),
            },
            "title": "report.pdf",
        },
        {
            "type": "document",
            "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"},
        },
    ]


def beta_headers(server: FakeAnthropic) -> list[str | None]:
    return [r.headers.get("anthropic-beta") for r in server.requests if r.path == "/v1/messages"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_file_reference_names_the_files_api_beta(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    proxy = make_proxy()
    await ask(proxy, mode, ["Summarise:", Document(file_id="file_011CNha8iCJcU1wXNR6q4V8w")])
    await ask(proxy, mode, ["Summarise:", Document(data=PDF)])  # no file: no beta
    assert beta_headers(server) == ["files-api-2025-04-14", None]


async def test_the_files_beta_joins_betas_already_asked_for(
    server: FakeAnthropic,
) -> None:
    provider = AnthropicProvider(
        api_key=API_KEY,
        base_url=server.base_url,
        default_headers={"anthropic-beta": "context-1m-2025-08-07"},
    )
    try:
        in_result = Message("tool", tool_call_id="toolu_1", parts=(Document(file_id="file_abc"),))
        call = Message("assistant", tool_calls=(ToolCall("toolu_1", "fetch", "{}"),))
        provider.chat(request(Message("user", "Get it"), call, in_result))
        provider.chat(request(extra={"extra_headers": {"anthropic-beta": "files-api-2025-04-14"}}))
        provider.chat(request())
    finally:
        provider.close()
    assert beta_headers(server) == [
        "context-1m-2025-08-07,files-api-2025-04-14",  # a file in a tool result counts too
        "files-api-2025-04-14",  # the caller's own header, untouched
        "context-1m-2025-08-07",
    ]


async def test_audio_is_refused_naming_the_part(
    provider: AnthropicProvider, server: FakeAnthropic
) -> None:
    message = Message("user", parts=(Audio(data=b"RIFF....WAVE", format="wav"),))
    with pytest.raises(UnsupportedContent) as info:
        provider.chat(request(message))
    assert "audio" in str(info.value) and info.value.part == "messages[0].parts[0]"
    assert server.requests == []


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (None, None),
        ("auto", None),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ("get_time", {"type": "tool", "name": "get_time"}),
    ],
)
async def test_tools_and_tool_choice_on_the_wire(
    provider: AnthropicProvider, server: FakeAnthropic, choice: str | None, wire: Any
) -> None:
    bare = Tool("ping")
    provider.chat(request(tools=(get_weather, get_time, bare), tool_choice=choice))
    [body] = bodies(server)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get today's weather.",
            "input_schema": dict(get_weather.parameters),
        },
        {
            "name": "get_time",
            "description": "Get the local time.",
            "input_schema": dict(get_time.parameters),
        },
        {"name": "ping", "description": "", "input_schema": dict(bare.parameters)},
    ]
    assert body.get("tool_choice") == wire


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("mode", MODES)
async def test_answer_reasoning_and_usage(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    server.enqueue(Reply(text="Hi there friend", reasoning="Be kind back."))
    text, reasoning, usage = await ask(make_proxy(), mode, "Hello", thinking=THINKING)
    assert (text, reasoning) == ("Hi there friend", "Be kind back.")
    [body] = bodies(server)
    assert body["thinking"] == THINKING
    assert usage.input_tokens == input_token_count(body)
    assert usage.output_tokens == 6  # three words of thinking, three of text
    assert usage.reasoning_tokens == 3  # output_tokens_details, in streams too
    assert bool(body.get("stream")) == (mode in ("stream", "astream"))


async def test_thinking_budget_is_lowered_under_the_cap(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    server.enqueue(Reply(text="Done", reasoning="Thought."))
    r = make_proxy().chat(
        "Hi", model=NAME, max_output_tokens=3000, thinking=THINKING | {"budget_tokens": 5000}
    )
    assert (r.text, r.reasoning) == ("Done", "Thought.")
    [body] = bodies(server)
    assert body["max_tokens"] == 3000
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2999}
    # Too small a cap to think in: the API's own refusal names it.
    proxy = make_proxy()
    with pytest.raises(ProviderBadRequest, match="budget_tokens"):
        proxy.chat("Hi", model=NAME, max_output_tokens=500, thinking=THINKING)
    assert bodies(server)[-1]["thinking"] == THINKING


@pytest.mark.parametrize("mode", ["stream", "astream"])
async def test_stream_events_become_chunks(
    provider: AnthropicProvider, server: FakeAnthropic, mode: str
) -> None:
    server.enqueue(
        Reply(
            text="One two",
            reasoning="Think hard",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        )
    )
    req = request(tools=(get_weather,), extra={"thinking": THINKING})
    if mode == "stream":
        chunks = list(provider.stream(req))
    else:
        chunks = [c async for c in provider.astream(req)]
    assert "".join(c.reasoning or "" for c in chunks) == "Think hard"
    assert "".join(c.text for c in chunks) == "One two"
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    [call] = last.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    assert call.id.startswith("toolu_")
    [block] = last.state["anthropic"]["thinking"]  # type: ignore[index]
    assert block["thinking"] == "Think hard"
    assert block["signature"] in server.issued_signatures
    assert last.usage is not None and last.usage.output_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
async def test_stop_reasons_become_finish_reasons(
    provider: AnthropicProvider, server: FakeAnthropic, stop: str, finish: str, streamed: bool
) -> None:
    server.enqueue(Reply(text="Some answer", finish_reason=stop))
    if streamed:
        got = [c async for c in provider.astream(request())][-1].finish_reason
    else:
        got = provider.chat(request()).finish_reason
    assert got == finish


async def test_answer_cut_by_max_tokens_is_length(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    r = make_proxy().chat("one two three four five six", model=NAME, max_output_tokens=3)
    assert r.finish_reason == "length"
    assert bodies(server)[0]["max_tokens"] == 3


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("choice", ["required", "get_weather"])
async def test_thinking_with_a_forced_tool_is_refused_before_sending(
    provider: AnthropicProvider, server: FakeAnthropic, choice: str
) -> None:
    req = request(tools=(get_weather,), tool_choice=choice, extra={"thinking": THINKING})
    with pytest.raises(InvalidRequest, match="cannot think while tool_choice forces") as info:
        provider.chat(req)
    assert info.value.field == "tool_choice"
    assert server.requests == []
    provider.chat(request(tools=(get_weather,), tool_choice="auto", extra={"thinking": THINKING}))
    assert bodies(server)[-1]["thinking"] == THINKING


@pytest.mark.parametrize("mode", MODES)
async def test_the_loop_sends_thinking_and_results_back(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    # FakeAnthropic refuses a tool round without the signed thinking block it issued, and a
    # tool_use without its tool_result, as the real API does.
    server.enqueue(
        Reply(
            reasoning="Both at once.",
            tool_calls=[
                {"name": "get_weather", "arguments": {"city": "Hanoi"}},
                {"name": "get_time", "arguments": {"city": "Hanoi"}},
            ],
        ),
        Reply(text="Sunny, and it is noon.", reasoning="Now answer."),
    )
    text, reasoning, _ = await ask(
        make_proxy(), mode, "Hanoi?", tools=[get_weather, get_time], thinking=THINKING
    )
    assert text == "Sunny, and it is noon."
    assert reasoning is not None and "Now answer." in reasoning
    first, second = bodies(server)
    assert [t["name"] for t in first["tools"]] == ["get_weather", "get_time"]
    assistant, results = second["messages"][1:]
    assert assistant["role"] == "assistant"
    thinking = assistant["content"][0]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "Both at once."
    assert thinking["signature"] in server.issued_signatures
    uses = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [
        ("get_weather", {"city": "Hanoi"}),
        ("get_time", {"city": "Hanoi"}),
    ]
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": uses[0]["id"], "content": "Sunny in Hanoi"},
            {"type": "tool_result", "tool_use_id": uses[1]["id"], "content": "Noon in Hanoi"},
        ],
    }


@pytest.mark.parametrize("mode", ["chat", "astream"])
async def test_hand_back_then_continue_from_a_stored_history(
    make_proxy: ProxyMaker, server: FakeAnthropic, tmp_path: Path, mode: str
) -> None:
    # The thinking block and its signature live in Message.state: stored in SQLite with the
    # answer, loaded by another Proxy, sent back on the next round.
    url = f"sqlite:///{tmp_path / 'history.db'}"
    server.enqueue(
        Reply(
            reasoning="Look it up.",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        )
    )
    first = make_proxy(history=url).chat(
        "Weather in Oslo?",
        model=NAME,
        session_id="trip",
        tools=[get_weather],
        run_tools=False,
        thinking=THINKING,
    )
    [call] = first.message.tool_calls
    assert first.finish_reason == "tool_calls" and first.reasoning == "Look it up."
    later = make_proxy(history=url)
    tool_turn = {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": call.id}
    text, _, _ = await ask(
        later, mode, [tool_turn], session_id="trip", tools=[get_weather], thinking=THINKING
    )
    assert text == "Echo: Weather in Oslo?"
    turns = bodies(server)[-1]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    thinking, use = turns[1]["content"]
    assert thinking["signature"] in server.issued_signatures
    assert thinking["thinking"] == "Look it up."
    assert use == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": '{"celsius": 21}'}
    ]


async def test_a_tool_round_without_its_signed_thinking_is_refused_upstream(
    provider: AnthropicProvider, server: FakeAnthropic
) -> None:
    calls = (ToolCall("toolu_1", "get_weather", "{}"),)
    messages = (
        Message("user", "q"),
        Message("assistant", tool_calls=calls),  # its thinking was lost
        Message("tool", "Sunny", tool_call_id="toolu_1"),
    )
    with pytest.raises(ProviderBadRequest, match="thinking block") as info:
        provider.chat(request(*messages, extra={"thinking": THINKING}))
    assert info.value.status == 400 and not info.value.retryable


# --------------------------------------------------------------------------- structured output


@dataclasses.dataclass
class Recipe:
    title: str
    minutes: int


@pytest.mark.parametrize("mode", ["achat", "stream"])
async def test_the_schema_goes_out_as_output_config(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    server.enqueue(Reply(text='{"title": "Soup", "minutes": 20}'))
    proxy = make_proxy()
    if mode == "achat":
        parsed = (await proxy.achat("A recipe", model=NAME, schema=Recipe)).parsed
    else:
        events = list(proxy.stream("A recipe", model=NAME, schema=Recipe))
        final = events[-1].response
        assert final is not None
        parsed = final.parsed
    assert parsed == Recipe("Soup", 20)
    [body] = bodies(server)
    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": dict(output_spec(Recipe).schema.schema)}
    }


# --------------------------------------------------------------------------- prompt caching


def cached_blocks(body: dict[str, Any]) -> list[str]:
    """Where the body has ``cache_control`` breakpoints: "system", "tools", "messages"."""
    found = []
    if any("cache_control" in b for b in body.get("system", [])):
        found.append("system")
    if any("cache_control" in t for t in body.get("tools", [])):
        found.append("tools")
    for turn in body["messages"]:
        if any("cache_control" in b for b in turn["content"]):
            found.append("messages")
    return found


async def test_no_breakpoint_by_default_on_short_prompts(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    make_proxy().chat("Hi", model=NAME, system="Short.", tools=[get_weather], tool_choice="none")
    assert cached_blocks(bodies(server)[0]) == []


async def test_explicit_cache_marks_the_last_block(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    make_proxy().chat("Hi there", model=NAME, prompt_cache=True)
    [body] = bodies(server)
    assert body["messages"][-1]["content"][-1] == {
        "type": "text",
        "text": "Hi there",
        "cache_control": {"type": "ephemeral"},
    }
    assert "prompt_cache" not in body  # the option is ours, not a wire field


async def test_long_system_prompt_and_tool_list_get_breakpoints_by_default(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    long_system = "Follow the house style. " * (AUTO_CACHE_CHARS // 20)
    described = Tool("lookup", "Look a thing up. " * (AUTO_CACHE_CHARS // 15))
    make_proxy().chat("Hi", model=NAME, system=long_system, tools=[described], tool_choice="none")
    [body] = bodies(server)
    assert cached_blocks(body) == ["system", "tools"]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}


async def test_auto_cache_can_be_turned_off_and_cache_on_in_configuration(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    long_system = "Follow the house style. " * (AUTO_CACHE_CHARS // 20)
    config = {"providers": {"anthropic": {"auto_cache": False, "prompt_cache": True}}}
    make_proxy(config).chat("Hi", model=NAME, system=long_system)
    assert cached_blocks(bodies(server)[0]) == ["messages"]


@pytest.mark.parametrize("mode", MODES)
async def test_cache_reads_and_writes_are_reported(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    server.enqueue(
        Reply(usage={"cache_read_input_tokens": 1000, "cache_creation_input_tokens": 300})
    )
    _, _, usage = await ask(make_proxy(), mode, "Hello")
    fresh = input_token_count(bodies(server)[0])
    assert usage.cached_input_tokens == 1000
    assert usage.cache_write_tokens == 300
    assert usage.cache_write_1h_tokens == 0  # the fake's split: all 5-minute writes
    assert usage.input_tokens == fresh + 1000 + 300
    # Claude Sonnet 4.6 at its default (genai-prices) rates: $3 input, $0.30 cache reads,
    # $3.75 5-minute cache writes (1.25x input), $15 output per million tokens.
    output = usage.output_tokens
    assert usage.cost == pytest.approx((fresh * 3 + 1000 * 0.3 + 300 * 3.75 + output * 15) / 1e6)


@pytest.mark.parametrize("mode", MODES)
async def test_hour_long_cache_writes_are_billed_at_the_hour_rate(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    split = {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100}
    server.enqueue(Reply(usage={"cache_creation_input_tokens": 300, "cache_creation": split}))
    _, _, usage = await ask(make_proxy(), mode, "Hello")
    fresh = input_token_count(bodies(server)[0])
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (300, 100)
    output = usage.output_tokens
    # 5-minute writes at $3.75 (1.25x input), 1-hour ones at $6 (2x input).
    assert usage.cost == pytest.approx((fresh * 3 + 200 * 3.75 + 100 * 6 + output * 15) / 1e6)


@pytest.mark.parametrize("mode", MODES)
async def test_a_cost_budget_is_charged_cache_reads_and_writes_at_their_rates(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    split = {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100}
    server.enqueue(
        Reply(
            usage={
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 300,
                "cache_creation": split,
            }
        )
    )
    budget = CostBudget(max_usd=5.0, name="usd")
    proxy = make_proxy(budgets=[budget])
    _, _, usage = await ask(proxy, mode, "Hello")
    fresh = input_token_count(bodies(server)[0])
    # The default table's (genai-prices) Claude Sonnet 4.6 rates per million tokens: $3
    # input, $0.30 cache reads, $3.75 5-minute writes, $6 1-hour writes, $15 output.
    expected = (
        fresh * 3 + 1000 * 0.3 + 200 * 3.75 + 100 * 6 + usage.output_tokens * 15
    ) / 1_000_000
    assert usage.cost == pytest.approx(expected)
    [row] = proxy.usage(model=NAME)
    assert row.claim.policy == "usd"
    assert row.used == pytest.approx(expected)  # the ledger's spend: settled at the bill
    assert row.reserved == 0


def test_the_dated_sonnet_4_pattern_prices_snapshots_only(make_proxy: ProxyMaker) -> None:
    proxy = make_proxy()
    dated = proxy.prices.lookup("anthropic", "claude-sonnet-4-20250514")
    assert dated is not None
    assert dated.name == "anthropic/claude-sonnet-4-{date}"
    assert dated.origin == "plugin anthropic"
    assert (dated.price.input, dated.price.output) == (3.0, 15.0)
    assert (dated.price.cache_write, dated.price.cache_write_1h) == (3.75, 6.0)
    assert proxy.prices.lookup("anthropic", "claude-sonnet-4-2025-05-14") is not None
    # Not a snapshot date: the pattern does not price it (nor does genai-prices).
    assert proxy.prices.lookup("anthropic", "claude-sonnet-4-fast") is None
    assert proxy.prices.lookup("anthropic", "claude-sonnet-4-20250514-fast") is None
    # The undated name is not the pattern's: genai-prices' own Sonnet 4 entry declares it.
    undated = proxy.prices.lookup("anthropic", "claude-sonnet-4")
    assert undated is not None and undated.name == "anthropic/claude-sonnet-4-0"
    assert undated.origin.startswith("genai-prices")


# --------------------------------------------------------------------------- counting


def test_offline_count_is_an_upper_bound_of_the_bill(
    provider: AnthropicProvider, server: FakeAnthropic
) -> None:
    messages = (
        Message("system", "Be brief and kind."),
        Message("user", "Describe these two things, please.", parts=()),
        Message("user", parts=(Image(data=PNG, media_type="image/png", width=200, height=100),)),
        Message("user", parts=(Document(data=PDF, pages=2),)),
    )
    bound = provider.count_tokens(messages, MODEL)
    assert bound == count_messages(messages)
    assert server.requests == []  # offline
    answer = provider.chat(request(*messages))
    assert answer.usage is not None and bound >= answer.usage.input_tokens


def test_count_tokens_online_when_asked(server: FakeAnthropic) -> None:
    p = AnthropicProvider(api_key=API_KEY, base_url=server.base_url, count_tokens_online=True)
    messages = (Message("system", "Be brief."), Message("user", "one two three"))
    try:
        counted = p.count_tokens(messages, MODEL)
        [sent] = server.requests
        assert sent.path == "/v1/messages/count_tokens"
        body = sent.json()
        assert body == {
            "model": MODEL,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
        }
        assert counted == input_token_count(body)
        server.enqueue(Fault.status(500))  # a failed count falls back on the offline bound
        assert p.count_tokens(messages, MODEL) == count_messages(messages)
    finally:
        p.close()


def test_count_tokens_online_names_the_files_beta_for_a_file(server: FakeAnthropic) -> None:
    # The API refuses a count that references a file without the Files API beta, as it refuses
    # the message itself; without the header the count would fall back on the offline bound.
    p = AnthropicProvider(api_key=API_KEY, base_url=server.base_url, count_tokens_online=True)
    messages = (
        Message.with_parts(
            "user", ("Summarise:", Document(file_id="file_011CNha8iCJcU1wXNR6q4V8w"))
        ),
    )
    try:
        counted = p.count_tokens(messages, MODEL)
        [sent] = server.requests
        assert sent.path == "/v1/messages/count_tokens"
        assert FILES_BETA in sent.headers.get("anthropic-beta", "")
        assert counted == input_token_count(sent.json())
    finally:
        p.close()


def test_count_tokens_option_counts_a_budgeted_call_online(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    config = {"providers": {"anthropic": {"count_tokens": True}}}
    proxy = make_proxy(config, budgets=[LLMBudget(max_tokens=100_000)])
    assert proxy.chat("one two three", model=NAME).text == "Echo: one two three"
    paths = [r.path for r in server.requests]
    assert "/v1/messages/count_tokens" in paths
    assert paths[-1] == "/v1/messages"
    make_proxy(budgets=[LLMBudget(max_tokens=100_000)]).chat("offline", model=NAME)
    assert [r.path for r in server.requests][len(paths) :] == ["/v1/messages"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("mode", MODES)
async def test_overloaded_and_rate_limited_are_retried_by_the_proxy(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    server.enqueue(Fault.status(529, retry_after=0.01), Fault.status(429))
    text, _, _ = await ask(make_proxy({"retry": {"max_attempts": 3}}), mode, "Hello")
    assert text == "Echo: Hello"
    assert len(bodies(server)) == 3


@pytest.mark.parametrize(
    ("fault", "expected", "retry_after", "retryable"),
    [
        (Fault.status(529, retry_after=3), ProviderUnavailable, 3.0, True),
        (Fault.status(429, retry_after=12), ProviderRateLimited, 12.0, True),
        (Fault.status(429, retry_after=0.25), ProviderRateLimited, 0.25, True),
        (Fault.status(500), ProviderUnavailable, None, True),
        (Fault.status(503), ProviderUnavailable, None, True),
        (Fault.status(400, message="messages: bad"), ProviderBadRequest, None, False),
        (Fault.status(401), ProviderAuthError, None, False),
        (Fault.status(403), ProviderAuthError, None, False),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_errors_reach_the_caller_with_status_and_retry_after(
    make_proxy: ProxyMaker,
    server: FakeAnthropic,
    mode: str,
    fault: Fault,
    expected: type[Exception],
    retry_after: float | None,
    retryable: bool,
) -> None:
    proxy = make_proxy({"retry": {"max_attempts": 1}})
    server.enqueue(fault)
    with pytest.raises(expected) as info:
        await ask(proxy, mode, "Hello")
    error: Any = info.value
    assert error.status == fault.status_code
    assert error.retry_after == retry_after
    assert error.retryable == retryable
    assert error.provider == "anthropic"
    assert "Error code" not in str(error)  # the API's own message, not the SDK's wrapping
    assert len(bodies(server)) == 1  # the SDK did not retry behind our back


async def test_retry_after_is_honoured_by_the_proxy(
    make_proxy: ProxyMaker, server: FakeAnthropic
) -> None:
    # The test Proxy's own backoff is at most 10 ms: only the header can make it wait longer.
    proxy = make_proxy({"retry": {"max_attempts": 2}})
    server.enqueue(Fault.status(529, retry_after=0.25))
    started = time.monotonic()
    assert proxy.chat("Hello", model=NAME).text == "Echo: Hello"
    assert time.monotonic() - started >= 0.25
    assert len(bodies(server)) == 2


@pytest.mark.parametrize("mode", ["stream", "astream"])
async def test_an_error_event_in_a_stream_is_mapped(
    provider: AnthropicProvider, server: FakeAnthropic, mode: str
) -> None:
    server.fail_stream(after=1)
    req = request(Message("user", "one two three four"))
    chunks: list[Chunk] = []

    async def read() -> None:
        if mode == "stream":
            chunks.extend(provider.stream(req))
        else:
            async for c in provider.astream(req):
                chunks.append(c)

    with pytest.raises(ProviderUnavailable) as info:
        await read()
    assert info.value.status == 529 and info.value.retryable
    assert str(info.value).endswith(": Overloaded")
    assert "".join(c.text for c in chunks) == "Echo:"


@pytest.mark.parametrize("mode", ["stream", "astream"])
async def test_an_overloaded_stream_before_any_text_is_retried(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    server.fail_stream(after=0)
    text, _, _ = await ask(make_proxy(), mode, "Hello")
    assert text == "Echo: Hello"
    assert len(bodies(server)) == 2


@pytest.mark.parametrize("mode", ["stream", "astream"])
async def test_a_stream_cut_midway_keeps_what_arrived(
    make_proxy: ProxyMaker, server: FakeAnthropic, mode: str
) -> None:
    server.enqueue(Fault.drop_after(2))
    proxy = make_proxy({"retry": {"max_attempts": 1}})
    with pytest.raises((StreamInterrupted, ProviderConnectionError)):
        await ask(proxy, mode, "alpha beta gamma delta", session_id="cut")
    [stored] = [r.message for r in proxy.history.load("cut") if r.message.role == "assistant"]
    assert stored.content == "Echo: alpha"


async def test_wrong_key_is_an_auth_error_without_the_key(
    make_proxy: ProxyMaker, environ: dict[str, str], server: FakeAnthropic
) -> None:
    wrong = "sk-ant-wrong-key-000000000000"
    proxy = make_proxy(environ={**environ, "ANTHROPIC_API_KEY": wrong})
    with pytest.raises(ProviderAuthError) as info:
        proxy.chat("Hello", model=NAME)
    assert info.value.status == 401
    assert wrong not in str(info.value)


# --------------------------------------------------------------------------- configuration


def test_settings_read_on_off_options_from_tables_and_variables() -> None:
    def make(options: dict[str, Any]) -> AnthropicProvider:
        return AnthropicProvider.from_settings(
            ProviderSettings("anthropic", options=options, environ={"ANTHROPIC_API_KEY": "k"})
        )

    p = make({})
    assert (p.prompt_cache, p.auto_cache, p.count_tokens_online) == (False, True, False)
    assert p.base_url == "https://api.anthropic.com"
    p = make({"prompt_cache": True, "auto_cache": False, "count_tokens": True})
    assert (p.prompt_cache, p.auto_cache, p.count_tokens_online) == (True, False, True)
    # LLMPROXY_PROVIDERS__ANTHROPIC__AUTO_CACHE=false arrives as the string "false".
    environ = {"LLMPROXY_PROVIDERS__ANTHROPIC__AUTO_CACHE": "false"}
    p = make(dict(load_config(environ=environ).providers["anthropic"]))
    assert p.auto_cache is False
    must = r"providers\.anthropic\.prompt_cache must be true or false"
    with pytest.raises(ConfigError, match=must):
        make({"prompt_cache": "maybe"})
    with pytest.raises(MissingCredentials, match="ANTHROPIC_API_KEY"):
        AnthropicProvider.from_settings(ProviderSettings("anthropic", environ={}))


@pytest.mark.parametrize("mode", ["chat", "astream"])
async def test_environment_is_read_from_the_proxy_s_mapping_only(
    make_proxy: ProxyMaker,
    server: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    # What the SDK would read from the process environment must not matter.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-process-env-key")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "process-env-token")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ANTHROPIC_CUSTOM_HEADERS", "X-From-Process: 1")
    text, _, _ = await ask(make_proxy(), mode, "Hello")
    assert text == "Echo: Hello"
    sent = server.requests[-1]
    assert "x-from-process" not in sent.headers
    key = sent.headers.get("x-api-key") or sent.headers["authorization"].removeprefix("Bearer ")
    assert key == API_KEY
    assert "process-env" not in json.dumps(sent.headers)


def test_default_headers_of_the_provider_are_sent(server: FakeAnthropic) -> None:
    p = AnthropicProvider(
        api_key=API_KEY, base_url=server.base_url, default_headers={"anthropic-beta": "x-1"}
    )
    try:
        p.chat(request())
    finally:
        p.close()
    assert server.last_request.headers["anthropic-beta"] == "x-1"
