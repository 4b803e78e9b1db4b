"""Tests for the fake OpenAI upstream, driven by the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

from llmproxy_testing._http import FakeServer, RecordedRequest, ResponseWriter
from llmproxy_testing.fake_openai import (
    FakeOpenAI,
    Fault,
    Reply,
    count_tokens,
    mask_api_key,
    message_text,
    prompt_tokens,
    split_words,
)

KEY = "sk-test-0123456789abcdef-wxyz"
MODEL = "gpt-4o-mini"


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAI) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    yield c
    c.close()


@pytest.fixture
async def aclient(server: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    yield c
    await c.close()


def raw_request(
    server: FakeServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- basics


def test_base_url_and_lifecycle_properties() -> None:
    srv = FakeOpenAI()
    with pytest.raises(RuntimeError):
        _ = srv.port
    with srv:
        assert srv.running
        assert srv.host == "127.0.0.1"
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        assert srv.start() is srv  # idempotent while running
    assert not srv.running


def test_sync_chat_completion_shape(server: FakeOpenAI, client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    result = client.chat.completions.create(model=MODEL, messages=messages)
    assert result.id.startswith("chatcmpl-")
    assert result.object == "chat.completion"
    assert result.model == MODEL
    assert abs(result.created - time.time()) < 60
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: hello there"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    usage = result.usage
    assert usage is not None
    # 3 + (2 + 3) + (2 + 3)
    assert usage.prompt_tokens == 13 == prompt_tokens(messages)
    assert usage.completion_tokens == 3
    assert usage.total_tokens == 16
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    (req,) = server.requests
    assert isinstance(req, RecordedRequest)
    assert (req.method, req.path, req.query) == ("POST", "/v1/chat/completions", {})
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.json() == {"model": MODEL, "messages": messages}
    assert server.last_request is req


def test_raw_json_wire_shape(server: FakeOpenAI) -> None:
    body = json.dumps({"model": "m-1", "messages": user("a b")}).encode()
    status, headers, raw = raw_request(
        server,
        "POST",
        "/v1/chat/completions",
        body,
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"].startswith("req_")
    data = json.loads(raw)
    assert set(data) >= {"id", "object", "created", "model", "choices", "usage"}
    assert data["model"] == "m-1"
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Echo: a b",
        "refusal": None,
        "annotations": [],
    }
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


async def test_async_chat_completion(server: FakeOpenAI, aclient: openai.AsyncOpenAI) -> None:
    result = await aclient.chat.completions.create(model="gpt-4o", messages=user("ping"))
    assert result.choices[0].message.content == "Echo: ping"
    assert result.model == "gpt-4o"
    assert server.requests[-1].headers["x-stainless-async"] != "false"


def test_models_list(server: FakeOpenAI, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == list(server.models)
    status, _, raw = raw_request(
        server, "GET", "/v1/models?limit=5&x=", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert status == 200
    assert json.loads(raw)["object"] == "list"
    assert server.last_request.query == {"limit": "5", "x": ""}
    assert server.last_request.path == "/v1/models"


def test_list_content_parts_and_no_user_message(client: openai.OpenAI) -> None:
    message: ChatCompletionMessageParam = {
        "role": "user",
        "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}],
    }
    result = client.chat.completions.create(model=MODEL, messages=[message])
    assert result.choices[0].message.content == "Echo: one two three"
    result = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "x"}]
    )
    assert result.choices[0].message.content == "Echo: "


# --------------------------------------------------------------------------- token rule


def test_token_helpers() -> None:
    assert count_tokens("") == 1
    assert count_tokens(None) == 1
    assert count_tokens("  a  b\tc\n") == 3
    assert message_text({"content": None}) == ""
    assert message_text({"content": [{"type": "image_url"}, {"type": "text", "text": "x"}]}) == "x"
    assert prompt_tokens([]) == 3
    assert prompt_tokens(user("a b c")) == 3 + 3 + 3
    assert split_words(" Hello,  world \n") == [" Hello,", "  world", " \n"]
    assert mask_api_key("sk-abcdefghwxyz") == "sk-a****wxyz"
    assert mask_api_key("short") == "****"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(min_size=0, max_size=60))
def test_stream_deltas_reproduce_any_text(text: str) -> None:
    with FakeOpenAI(reply=text) as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        try:
            full = c.chat.completions.create(model=MODEL, messages=user("x"))
            assert full.choices[0].message.content == text
            assert full.usage is not None
            assert full.usage.completion_tokens == count_tokens(text)
            chunks = list(
                c.chat.completions.create(
                    model=MODEL,
                    messages=user("x"),
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        finally:
            c.close()
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert "".join(p or "" for p in pieces) == text
    # role chunk + one chunk per piece + finish chunk + usage chunk
    assert len(chunks) == len(split_words(text)) + 3
    assert len([p for p in split_words(text) if p.strip()]) == len(text.split())


# --------------------------------------------------------------------------- streaming


def test_sync_stream_without_usage(server: FakeOpenAI, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=user("the quick  brown fox"), stream=True
    )
    chunks = list(stream)
    first, *middle, last = chunks
    assert first.object == "chat.completion.chunk"
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in middle] == [
        "Echo:",
        " the",
        " quick",
        "  brown",
        " fox",
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: the quick  brown fox"
    assert last.choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert {c.id for c in chunks} == {first.id}
    assert server.last_request.json()["stream"] is True


async def test_async_stream_with_usage(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=user("alpha beta"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    *content_chunks, finish, usage_chunk = chunks
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == "Echo: alpha beta"
    assert finish.choices[0].finish_reason == "stop"
    assert finish.usage is None
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == 3 + 2 + 3
    assert usage_chunk.usage.completion_tokens == 3
    assert usage_chunk.usage.total_tokens == 11


def test_stream_raw_sse_framing(server: FakeOpenAI) -> None:
    def events(include_usage: bool) -> tuple[dict[str, str], list[str]]:
        payload: dict[str, Any] = {"model": MODEL, "messages": user("hi"), "stream": True}
        if include_usage:
            payload["stream_options"] = {"include_usage": True}
        status, headers, raw = raw_request(
            server,
            "POST",
            "/v1/chat/completions",
            json.dumps(payload).encode(),
            {"Authorization": f"Bearer {KEY}"},
        )
        assert status == 200
        text = raw.decode()
        assert text.endswith("data: [DONE]\n\n")
        return headers, [e for e in text.split("\n\n") if e]

    headers, plain = events(include_usage=False)
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    assert all(e.startswith("data: ") for e in plain)
    decoded = [json.loads(e[6:]) for e in plain[:-1]]
    assert all("usage" not in d for d in decoded)
    assert decoded[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "refusal": None,
    }
    assert decoded[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }

    _, with_usage = events(include_usage=True)
    decoded = [json.loads(e[6:]) for e in with_usage[:-1]]
    assert all(d["usage"] is None for d in decoded[:-1])
    assert decoded[-1]["choices"] == []
    assert decoded[-1]["usage"]["total_tokens"] == 3 + 1 + 3 + 2


# --------------------------------------------------------------------------- replies


def test_reply_string_and_callable() -> None:
    with FakeOpenAI(reply="fixed answer") as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=user("q"))
        assert r.choices[0].message.content == "fixed answer"
        seen: list[dict[str, Any]] = []

        def reply(body: dict[str, Any]) -> str | Reply:
            seen.append(body)
            if body.get("temperature") == 0:
                return Reply(text="cold", reasoning="hmm ok")
            return f"{body['model']} says hi"

        srv.reply = reply
        r = c.chat.completions.create(model="m2", messages=user("q"))
        assert r.choices[0].message.content == "m2 says hi"
        r = c.chat.completions.create(model="m2", messages=user("q"), temperature=0)
        assert r.choices[0].message.content == "cold"
        assert r.choices[0].message.model_extra == {"reasoning_content": "hmm ok"}
        assert len(seen) == 2
        c.close()


def test_scripted_reply_with_reasoning_usage_and_tools(
    server: FakeOpenAI, client: openai.OpenAI
) -> None:
    server.enqueue(
        Reply(
            text="scripted  text",
            reasoning="think hard",
            usage={"prompt_tokens_details": {"cached_tokens": 4}},
        ),
        Reply(
            tool_calls=[
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {
                    "id": "call_given",
                    "type": "function",
                    "function": {"name": "noop", "arguments": "{}"},
                },
            ]
        ),
        Reply(text="x", finish_reason="content_filter", usage={"completion_tokens": 50}),
    )
    assert server.pending == 3
    r = client.chat.completions.create(model=MODEL, messages=user("q"))
    msg = r.choices[0].message
    assert msg.content == "scripted  text"
    assert (msg.model_extra or {})["reasoning_content"] == "think hard"
    assert r.usage is not None
    assert r.usage.completion_tokens == 4
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 2
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 4

    r = client.chat.completions.create(model=MODEL, messages=user("q"))
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    assert msg.tool_calls is not None
    first, second = msg.tool_calls
    assert first.type == "function"
    assert first.function.name == "get_weather"
    assert json.loads(first.function.arguments) == {"city": "Paris"}
    assert first.id.startswith("call_")
    assert second.id == "call_given"

    r = client.chat.completions.create(model=MODEL, messages=user("q"))
    assert r.choices[0].finish_reason == "content_filter"
    assert r.usage is not None
    assert (r.usage.completion_tokens, r.usage.total_tokens) == (50, 50 + r.usage.prompt_tokens)

    # Queue empty: default behaviour again.
    r = client.chat.completions.create(model=MODEL, messages=user("back"))
    assert r.choices[0].message.content == "Echo: back"
    assert server.pending == 0


def test_streamed_reasoning_and_tool_calls(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(
        Reply(text="done", reasoning="step one", tool_calls=[{"name": "f", "arguments": "{}"}])
    )
    chunks = list(client.chat.completions.create(model=MODEL, messages=user("q"), stream=True))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks
    )
    assert reasoning == "step one"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "done"
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].index == 0
    assert calls[0].function is not None
    assert calls[0].function.name == "f"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_max_completion_tokens_truncates(server: FakeOpenAI, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=user("one two three"), max_completion_tokens=3
    )
    assert r.choices[0].message.content == "Echo: one two"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.completion_tokens == 3

    r = client.chat.completions.create(model=MODEL, messages=user("one two three"), max_tokens=2)
    assert r.choices[0].message.content == "Echo: one"
    assert r.choices[0].finish_reason == "length"

    r = client.chat.completions.create(
        model=MODEL, messages=user("one two three"), max_completion_tokens=4
    )
    assert r.choices[0].message.content == "Echo: one two three"
    assert r.choices[0].finish_reason == "stop"

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("one two three"),
            max_completion_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: one"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2

    # Reasoning words count first.
    server.enqueue(Reply(text="a b c", reasoning="r1 r2"))
    r = client.chat.completions.create(model=MODEL, messages=user("q"), max_completion_tokens=3)
    assert r.choices[0].message.content == "a"
    assert (r.choices[0].message.model_extra or {})["reasoning_content"] == "r1 r2"
    assert r.choices[0].finish_reason == "length"

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=user("q"), max_completion_tokens=0)
    assert info.value.code == "integer_below_min_value"


# --------------------------------------------------------------------------- faults


def test_rate_limit_fault(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(Fault.status(429, retry_after=0.05))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=user("q"))
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "0.05"
    assert err.response.headers["retry-after-ms"] == "50"
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert err.body == {
        "message": "Rate limit reached for requests. Please try again in 50ms.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    server.enqueue(Fault.status(429, message="slow down", error_code="insufficient_quota"))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=user("q"))
    assert info.value.message.endswith("slow down")
    assert info.value.code == "insufficient_quota"
    assert "retry-after" not in info.value.response.headers


def test_sdk_retries_honour_retry_after(server: FakeOpenAI) -> None:
    server.enqueue(Fault.status(429, retry_after=0.01), Fault.status(500))
    c = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=2)
    try:
        start = time.perf_counter()
        r = c.chat.completions.create(model=MODEL, messages=user("finally"))
        elapsed = time.perf_counter() - start
    finally:
        c.close()
    assert r.choices[0].message.content == "Echo: finally"
    assert len(server.requests) == 3
    assert [q.headers["x-stainless-retry-count"] for q in server.requests] == ["0", "1", "2"]
    assert elapsed < 5


async def test_server_error_and_bad_request_faults(
    server: FakeOpenAI, aclient: openai.AsyncOpenAI
) -> None:
    server.enqueue(Fault.status(500), Fault.status(400, message="bad thing"), Fault.status(503))
    with pytest.raises(openai.InternalServerError) as err500:
        await aclient.chat.completions.create(model=MODEL, messages=user("q"))
    assert err500.value.type == "server_error"
    with pytest.raises(openai.BadRequestError) as err400:
        await aclient.chat.completions.create(model=MODEL, messages=user("q"))
    assert err400.value.body == {
        "message": "bad thing",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.InternalServerError) as err503:
        await aclient.chat.completions.create(model=MODEL, messages=user("q"), stream=True)
    assert err503.value.status_code == 503


def test_drop_after_sync_stream(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(Fault.drop_after(2))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        for chunk in client.chat.completions.create(
            model=MODEL, messages=user("a b c d e"), stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["", "Echo:", " a"]
    # The client recovers on a fresh connection.
    r = client.chat.completions.create(model=MODEL, messages=user("ok"))
    assert r.choices[0].message.content == "Echo: ok"


async def test_drop_after_async_stream(server: FakeOpenAI, aclient: openai.AsyncOpenAI) -> None:
    server.enqueue(Fault.drop_after(0))
    stream = await aclient.chat.completions.create(model=MODEL, messages=user("a b"), stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == [""]


def test_drop_non_stream(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(Fault.drop_after(0))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=user("q"))
    assert len(server.requests) == 1


def test_malformed_faults(server: FakeOpenAI, client: openai.OpenAI) -> None:
    server.enqueue(Fault.malformed(), Fault.malformed())
    with pytest.raises((ValueError, openai.APIError)):
        client.chat.completions.create(model=MODEL, messages=user("q"))
    with pytest.raises((ValueError, openai.APIError)):
        for _ in client.chat.completions.create(model=MODEL, messages=user("q"), stream=True):
            pass
    status, _, _ = raw_request(
        server,
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": user("q")}).encode(),
        {"Authorization": f"Bearer {KEY}"},
    )
    assert status == 200  # queue is empty again


async def test_delay_does_not_block_other_connections(
    server: FakeOpenAI, aclient: openai.AsyncOpenAI
) -> None:
    server.enqueue(Fault.delay(0.6))
    slow = asyncio.create_task(aclient.chat.completions.create(model=MODEL, messages=user("slow")))
    for _ in range(1000):
        if server.requests:
            break
        await asyncio.sleep(0.005)
    start = time.perf_counter()
    fast = await aclient.chat.completions.create(model=MODEL, messages=user("fast"))
    assert time.perf_counter() - start < 0.4
    assert fast.choices[0].message.content == "Echo: fast"
    assert not slow.done()
    result = await slow
    assert result.choices[0].message.content == "Echo: slow"


async def test_reply_delay_and_fault_pre_delay(
    server: FakeOpenAI, aclient: openai.AsyncOpenAI
) -> None:
    server.enqueue(Reply(text="late", delay=0.1), Fault.status(500, delay=0.1))
    start = time.perf_counter()
    r = await aclient.chat.completions.create(model=MODEL, messages=user("q"))
    assert r.choices[0].message.content == "late"
    with pytest.raises(openai.InternalServerError):
        await aclient.chat.completions.create(model=MODEL, messages=user("q"))
    assert time.perf_counter() - start >= 0.2


# --------------------------------------------------------------------------- auth and errors


def test_wrong_api_key_is_masked(server: FakeOpenAI) -> None:
    sent = "sk-ab-this-is-the-wrong-key-wxyz"
    c = openai.OpenAI(base_url=server.base_url, api_key=sent, max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError) as info:
            c.chat.completions.create(model=MODEL, messages=user("q"))
    finally:
        c.close()
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert isinstance(err.body, dict)
    assert err.body["param"] is None
    assert err.body["message"] == (
        "Incorrect API key provided: sk-a****wxyz. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    assert sent not in str(err)
    assert sent not in err.response.text
    # A 401 does not consume the scripted queue, but is recorded.
    assert server.requests[-1].headers["authorization"] == f"Bearer {sent}"


def test_missing_api_key(server: FakeOpenAI) -> None:
    status, _, raw = raw_request(server, "GET", "/v1/models")
    assert status == 401
    error = json.loads(raw)["error"]
    assert error["message"].startswith("You didn't provide an API key.")
    assert error["code"] is None


def test_auth_does_not_consume_queue(server: FakeOpenAI) -> None:
    server.enqueue(Fault.status(500))
    status, _, _ = raw_request(
        server, "POST", "/v1/chat/completions", b"{}", {"Authorization": "Bearer nope"}
    )
    assert status == 401
    assert server.pending == 1


def test_bad_requests(server: FakeOpenAI, client: openai.OpenAI) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    status, _, raw = raw_request(server, "POST", "/v1/chat/completions", b"{nope", auth)
    assert status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = raw_request(
        server, "POST", "/v1/chat/completions", json.dumps({"model": MODEL}).encode(), auth
    )
    assert status == 400
    assert json.loads(raw)["error"]["param"] == "messages"
    status, _, raw = raw_request(server, "GET", "/v1/nothing", None, auth)
    assert status == 404
    assert json.loads(raw)["error"] == {
        "message": "Invalid URL (GET /v1/nothing)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    status, _, _ = raw_request(server, "GET", "/v1/chat/completions", None, auth)
    assert status == 405
    with pytest.raises(openai.NotFoundError):  # a route the fake does not serve
        client.moderations.create(input="x")


def test_chunked_request_body_rejected(server: FakeOpenAI) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=iter([b'{"model":', b'"x"}']),
            headers={"Authorization": f"Bearer {KEY}"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 411
        assert resp.getheader("connection") == "close"
        resp.read()
    finally:
        conn.close()


def test_keep_alive_and_pipelining(server: FakeOpenAI) -> None:
    auth = f"Authorization: Bearer {KEY}\r\n"
    one = f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
    last = f"GET /v1/models?n=3 HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(one + one + last)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert [r.query for r in server.requests] == [{}, {}, {"n": "3"}]


# --------------------------------------------------------------------------- concurrency, stop


async def test_concurrent_async_calls(server: FakeOpenAI, aclient: openai.AsyncOpenAI) -> None:
    results = await asyncio.gather(
        *(aclient.chat.completions.create(model=MODEL, messages=user(f"n{i}")) for i in range(32))
    )
    assert [r.choices[0].message.content for r in results] == [f"Echo: n{i}" for i in range(32)]
    assert len(server.requests) == 32


async def test_concurrent_streams(aclient: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> str:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=user(f"s {i} x"), stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    texts = await asyncio.gather(*(one(i) for i in range(16)))
    assert texts == [f"Echo: s {i} x" for i in range(16)]


def test_threaded_sync_clients(server: FakeOpenAI) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        c = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        try:
            for j in range(10):
                r = c.chat.completions.create(model=MODEL, messages=user(f"{i}-{j}"))
                assert r.choices[0].message.content == f"Echo: {i}-{j}"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(server.requests) == 80


def test_stop_closes_connections_and_is_idempotent() -> None:
    srv = FakeOpenAI().start()
    c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
    try:
        c.chat.completions.create(model=MODEL, messages=user("q"))
        assert srv.connection_count == 1  # kept alive
        srv.stop()
        assert srv.connection_count == 0
        assert not srv.running
        srv.stop()
        with pytest.raises(openai.APIConnectionError):
            c.chat.completions.create(model=MODEL, messages=user("q"))
    finally:
        c.close()
        srv.stop()


def test_stop_cancels_in_flight_requests() -> None:
    srv = FakeOpenAI().start()
    srv.enqueue(Fault.delay(30))
    outcome: list[BaseException | None] = []

    def call() -> None:
        c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        try:
            c.chat.completions.create(model=MODEL, messages=user("q"))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            c.close()

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 5
    while not srv.requests and time.monotonic() < deadline:
        time.sleep(0.005)
    start = time.perf_counter()
    srv.stop()
    worker.join(5)
    assert time.perf_counter() - start < 2
    assert len(outcome) == 1
    assert isinstance(outcome[0], openai.APIConnectionError)


def test_stop_during_stream_and_restart() -> None:
    srv = FakeOpenAI(reply="w " * 50).start()
    srv.enqueue(Reply(chunk_delay=0.05))
    c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
    try:
        stream = c.chat.completions.create(model=MODEL, messages=user("q"), stream=True)
        next(iter(stream))
        srv.stop()
        with pytest.raises(openai.APIConnectionError):
            for _ in stream:
                pass
        srv.start()
        c2 = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        assert (
            c2.chat.completions.create(model=MODEL, messages=user("z")).choices[0].message.content
        )
        c2.close()
    finally:
        c.close()
        srv.stop()


def test_clear_resets_queue_and_requests(server: FakeOpenAI, client: openai.OpenAI) -> None:
    client.models.list()
    server.enqueue(Fault.status(500))
    server.clear()
    assert server.requests == []
    assert server.pending == 0
    with pytest.raises(LookupError):
        _ = server.last_request
    r = client.chat.completions.create(model=MODEL, messages=user("q"))
    assert r.choices[0].finish_reason == "stop"


def test_enqueue_type_checked(server: FakeOpenAI) -> None:
    with pytest.raises(TypeError):
        server.enqueue("not a fault")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-1)
    with pytest.raises(ValueError, match="chunks"):
        Fault.drop_after(-1)
    with pytest.raises(ValueError, match="invalid HTTP status"):
        Fault.status(42)


# --------------------------------------------------------------------------- base server


def test_base_server_custom_routes_and_handler_errors() -> None:
    srv = FakeServer()

    async def echo(request: RecordedRequest, response: ResponseWriter) -> None:
        response.send(201, request.body[::-1], {"content-type": "text/plain", "X-Extra": "1"})

    async def stream(request: RecordedRequest, response: ResponseWriter) -> None:
        response.start_stream(200, {"content-type": "text/plain"})
        for part in (b"ab", b"", b"cd"):
            response.write(part)
            await response.drain()
        # Returning without end(): the server finishes the stream.

    async def boom(request: RecordedRequest, response: ResponseWriter) -> None:
        raise RuntimeError("kaput")

    async def silent(request: RecordedRequest, response: ResponseWriter) -> None:
        return None

    srv.add_route("POST", "/echo", echo)
    srv.add_route("GET", "/stream", stream)
    srv.add_route("GET", "/boom", boom)
    srv.add_route("GET", "/silent", silent)
    with srv:
        status, headers, body = raw_request(srv, "POST", "/echo", b"hello")
        assert (status, body, headers["x-extra"]) == (201, b"olleh", "1")
        status, headers, body = raw_request(srv, "GET", "/stream")
        assert (status, body, headers["transfer-encoding"]) == (200, b"abcd", "chunked")
        status, _, body = raw_request(srv, "GET", "/boom")
        assert status == 500
        assert b"kaput" in body
        status, _, _ = raw_request(srv, "GET", "/silent")
        assert status == 500
        status, _, body = raw_request(srv, "GET", "/missing")
        assert status == 404
        assert json.loads(body) == {"error": {"message": "Invalid URL (GET /missing)"}}
        assert [r.path for r in srv.requests] == [
            "/echo",
            "/stream",
            "/boom",
            "/silent",
            "/missing",
        ]


# --------------------------------------------------------------------------- hang


def _post(server: FakeOpenAI, body: dict[str, Any], into: list[bytes]) -> None:
    """POST a chat request on a raw connection; collect what arrives until it closes."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        data = json.dumps(body).encode()
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
        )
        while chunk := conn.recv(65536):
            into.append(chunk)
    except OSError:
        pass  # an aborted connection may end in a reset
    finally:
        conn.close()


@pytest.mark.parametrize("after", [None, 1])
def test_hang_holds_until_released_then_drops(server: FakeOpenAI, after: int | None) -> None:
    release = threading.Event()
    server.enqueue(Fault.hang(release, after=after))
    received: list[bytes] = []
    body = {"model": "gpt-4o-mini", "messages": user("one two three"), "stream": True}
    client = threading.Thread(target=_post, args=(server, body, received))
    client.start()
    client.join(0.3)
    assert client.is_alive()  # hanging: no end of the response
    release.set()
    client.join(10)
    assert not client.is_alive()
    sent = b"".join(received)
    assert b"[DONE]" not in sent  # dropped, never finished
    if after is None:
        assert sent == b""  # nothing before the hang
    else:
        assert sent.count(b'"content":"Echo:"') == 1  # the first delta, then the stall
        assert b'"content":" one' not in sent


def test_hang_ends_when_the_client_goes_away(server: FakeOpenAI) -> None:
    release = threading.Event()
    try:
        server.enqueue(Fault.hang(release))
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        data = json.dumps({"model": "gpt-4o-mini", "messages": user("hi")}).encode()
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\nContent-Length: "
            + str(len(data)).encode()
            + b"\r\n\r\n"
            + data
        )
        deadline = time.monotonic() + 10
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.connection_count == 1
        conn.close()
        while server.connection_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.connection_count == 0  # the fake let go without a release
    finally:
        release.set()
