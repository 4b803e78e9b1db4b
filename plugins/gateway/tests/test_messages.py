"""Anthropic's Messages API on the gateway, with the real ``anthropic`` SDK as the client.

``POST /v1/messages`` and ``/v1/messages/count_tokens`` are served by any provider through the
Proxy: OpenAI, DeepSeek and Gemini fakes upstream answer in Anthropic's shape, tools are handed
back as ``tool_use`` blocks and continued with ``tool_result`` blocks, errors come in
Anthropic's error shape.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from llmproxy_testing._http import FakeServer
from llmproxy_testing.fake_deepseek import FakeDeepSeek
from llmproxy_testing.fake_gemini import FakeGemini
from llmproxy_testing.fake_openai import FakeOpenAI, Reply

from .conftest import GatewayProcess, chat_bodies, serve_gateway
from .test_client_tools import model_bodies
from .test_parts import PNG

OPENAI = "openai/gpt-4o-mini"
DEEPSEEK = "deepseek/deepseek-flash"
GEMINI = "gemini/gemini-3.8-flash"

WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
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
        tmp_path_factory.mktemp("messages-gateway"),
        deepseek=deepseek,
        gemini=gemini,
    )


def client(gateway: GatewayProcess, *budgets: str) -> tuple[anthropic.Anthropic, str]:
    """An SDK client sending a fresh key as ``x-api-key``; the key's id."""
    record, secret = gateway.keys.create("claude-user", budgets=budgets)
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    return sdk, record.id


def test_messages_create_answers_in_anthropics_shape(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    sdk, key_id = client(gateway)
    upstream.enqueue(Reply(text="Bonjour!", usage={"prompt_tokens": 12, "completion_tokens": 3}))
    message = sdk.messages.create(
        model="fast",
        max_tokens=50,
        system=[{"type": "text", "text": "Answer in French."}],
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["END"],
        metadata={"user_id": "end-user-7"},
        extra_body={"temperature": 0.2, "top_p": 0.9},  # not typed by this SDK version
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "gpt-4o-mini"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Bonjour!")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 3)
    body = chat_bodies(upstream)[-1]
    assert body["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
    ]
    assert body["stop"] == ["END"] and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert (body.get("max_completion_tokens") or body.get("max_tokens")) == 50
    rows = gateway.rows(1, key=key_id)
    assert len(rows) == 1 and rows[0].outcome == "ok"


def test_max_tokens_is_required_in_anthropics_error_shape(gateway: GatewayProcess) -> None:
    sdk, _ = client(gateway)
    # The SDK's create() requires max_tokens: send the body as raw JSON.
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk.post(
            "/v1/messages",
            body={"model": "fast", "messages": [{"role": "user", "content": "Hi"}]},
            cast_to=object,
        )
    assert info.value.status_code == 400
    assert info.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: field required"},
    }


def test_stream_helper_assembles_the_message(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    sdk, _ = client(gateway)
    upstream.enqueue(Reply(text="one two three", reasoning="Counting."))
    with sdk.messages.stream(
        model=OPENAI,
        max_tokens=100,
        messages=[{"role": "user", "content": "Count"}],
        thinking={"type": "enabled", "budget_tokens": 2048},
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "one two three"
    kinds = [b.type for b in final.content]
    assert kinds == ["thinking", "text"]
    assert final.content[0].thinking == "Counting."  # type: ignore[union-attr]
    assert final.content[1].text == "one two three"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    # thinking's budget maps to OpenAI's reasoning effort (2048 < 4096: low)
    assert chat_bodies(upstream)[-1]["reasoning_effort"] == "low"


def test_raw_stream_event_sequence(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    sdk, _ = client(gateway)
    upstream.enqueue(Reply(text="hi there"))
    events = list(
        sdk.messages.create(
            model=OPENAI,
            max_tokens=20,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert "".join(e.delta.text for e in deltas) == "hi there"  # type: ignore[union-attr]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_round_trip(gateway: GatewayProcess, upstream: FakeOpenAI, streamed: bool) -> None:
    sdk, _ = client(gateway)
    upstream.enqueue(
        Reply(tool_calls=[{"id": "call_w", "name": "get_weather", "arguments": {"city": "Hue"}}])
    )
    question: Any = {"role": "user", "content": "Weather in Hue?"}
    first: anthropic.types.Message
    if streamed:
        with sdk.messages.stream(
            model=OPENAI,
            max_tokens=100,
            messages=[question],
            tools=[WEATHER],
        ) as stream:
            first = stream.get_final_message()
    else:
        first = sdk.messages.create(
            model=OPENAI,
            max_tokens=100,
            messages=[question],
            tools=[WEATHER],
            tool_choice={"type": "any"},
        )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [("call_w", "get_weather", {"city": "Hue"})]
    sent = chat_bodies(upstream)[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    if not streamed:
        assert sent["tool_choice"] == "required"
    upstream.enqueue(Reply(text="Sunny in Hue."))
    second = sdk.messages.create(
        model=OPENAI,
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": uses[0].id,
                        "content": [{"type": "text", "text": "Sunny"}],
                    },
                    {"type": "text", "text": "And briefly."},
                ],
            },
        ],
    )
    assert second.content[0].text == "Sunny in Hue."  # type: ignore[union-attr]
    body = chat_bodies(upstream)[-1]
    assert body["messages"][-3]["tool_calls"][0]["id"] == "call_w"
    assert json.loads(body["messages"][-3]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Hue"
    }
    assert body["messages"][-2:] == [
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_w"},
        {"role": "user", "content": "And briefly."},
    ]


def test_an_image_block_reaches_the_upstream(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    sdk, _ = client(gateway)
    upstream.enqueue(Reply(text="A dot."))
    data = base64.b64encode(PNG).decode()
    message = sdk.messages.create(
        model=OPENAI,
        max_tokens=20,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": data},
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    assert message.content[0].text == "A dot."  # type: ignore[union-attr]
    content = chat_bodies(upstream)[-1]["messages"][-1]["content"]
    assert content[0]["type"] == "image_url"
    assert content[0]["image_url"]["url"] == f"data:image/png;base64,{data}"
    assert content[1] == {"type": "text", "text": "What is this?"}


def test_count_tokens_is_the_proxys_input_count(gateway: GatewayProcess) -> None:
    sdk, _ = client(gateway)
    short = sdk.messages.count_tokens(model=OPENAI, messages=[{"role": "user", "content": "Hi"}])
    longer = sdk.messages.count_tokens(
        model=OPENAI,
        system="You are terse.",
        messages=[{"role": "user", "content": "Hi " * 50}],
        tools=[WEATHER],
    )
    assert 0 < short.input_tokens < longer.input_tokens
    # Gemini's count is an upper bound, never less than the text's share
    gem = sdk.messages.count_tokens(model=GEMINI, messages=[{"role": "user", "content": "Hi"}])
    assert gem.input_tokens > 0


def test_key_as_bearer_and_a_wrong_key(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    _, secret = gateway.keys.create("bearer-user")
    bearer = anthropic.Anthropic(base_url=gateway.url, auth_token=secret, max_retries=0)
    upstream.enqueue(Reply(text="ok"))
    answer = bearer.messages.create(
        model=OPENAI, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.content[0].text == "ok"  # type: ignore[union-attr]
    wrong = anthropic.Anthropic(base_url=gateway.url, api_key="sk-llmp-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(
            model=OPENAI, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 401
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "authentication_error"


def test_a_budget_refusal_is_429_in_anthropics_shape(gateway: GatewayProcess) -> None:
    sdk, _ = client(gateway, "tokens:3/day")
    with pytest.raises(anthropic.RateLimitError) as info:
        sdk.messages.create(
            model=OPENAI, max_tokens=50, messages=[{"role": "user", "content": "Hello there"}]
        )
    error = info.value
    assert error.status_code == 429
    assert isinstance(error.body, dict) and error.body["error"]["type"] == "rate_limit_error"
    assert "key-tokens-3-day" in error.body["error"]["message"]
    assert 1 <= int(error.response.headers["retry-after"]) <= 86400
    # streamed, the refusal comes before the status line: the same error
    with (
        pytest.raises(anthropic.RateLimitError),
        sdk.messages.stream(
            model=OPENAI, max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
        ) as stream,
    ):
        stream.get_final_message()


def test_an_upstream_overload_is_529_overloaded(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    from llmproxy_testing._http import Fault

    sdk, _ = client(gateway)
    upstream.enqueue(Fault.status(503), Fault.status(503))  # both attempts of the retry policy
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk.messages.create(model=OPENAI, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 529
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("model", [DEEPSEEK, GEMINI])
def test_other_providers_answer_in_messages_shape(
    gateway: GatewayProcess, servers: dict[str, FakeServer], model: str
) -> None:
    sdk, _ = client(gateway)
    server = servers[model]
    server.enqueue(Reply(text="Hello from afar.", reasoning="Greeting back."))
    message = sdk.messages.create(
        model=model,
        max_tokens=2000,
        messages=[{"role": "user", "content": "Hello"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    texts = [b.text for b in message.content if b.type == "text"]
    thoughts = [b.thinking for b in message.content if b.type == "thinking"]
    assert texts == ["Hello from afar."] and thoughts == ["Greeting back."]
    assert message.stop_reason == "end_turn"
    body = model_bodies(server)[-1]
    if model == GEMINI:
        config = body["generationConfig"]["thinkingConfig"]
        budget = config.get("thinkingBudget", config.get("thinking_budget"))
        thoughts_on = config.get("includeThoughts", config.get("include_thoughts"))
        assert budget == 1024 and thoughts_on is True
    else:
        assert body["thinking"] == {"type": "enabled"}
    server.enqueue(
        Reply(tool_calls=[{"id": "c1", "name": "get_weather", "arguments": {"city": "Hue"}}])
    )
    with sdk.messages.stream(
        model=model,
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER],
    ) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Hue"})]
    assert final.stop_reason == "tool_use"


def test_bad_blocks_are_400_naming_the_field(gateway: GatewayProcess) -> None:
    sdk, _ = client(gateway)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "content[0].type"),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "bash_20250124", "name": "bash"}],
            },
            "server tool",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "url", "url": "https://x/a.pdf"},
                            }
                        ],
                    }
                ]
            },
            "url sources",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ]
    for extra, fragment in cases:
        with pytest.raises(anthropic.BadRequestError) as info:
            sdk.post(
                "/v1/messages", body={"model": OPENAI, "max_tokens": 5, **extra}, cast_to=object
            )
        assert isinstance(info.value.body, dict)
        assert info.value.body["error"]["type"] == "invalid_request_error"
        assert fragment in info.value.body["error"]["message"]


def test_a_key_limited_to_some_models_is_refused_others_in_anthropics_shape(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    record, secret = gateway.keys.create("limited", models="fast")
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0)
    sent = len(chat_bodies(upstream))
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        sdk.messages.create(
            model="gemini/gemini-3.8-flash",
            max_tokens=20,
            messages=[{"role": "user", "content": "Hello"}],
        )
    assert caught.value.status_code == 403
    assert "gemini/gemini-3.8-flash" in str(caught.value)
    with pytest.raises(anthropic.PermissionDeniedError):
        sdk.messages.count_tokens(
            model="gemini/gemini-3.8-flash", messages=[{"role": "user", "content": "Hi"}]
        )
    assert len(chat_bodies(upstream)) == sent  # refused before any upstream call
    assert record.models
