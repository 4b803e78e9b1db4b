"""Tests for the fake Gemini upstream, driven by the real ``google-genai`` SDK (and raw HTTP)."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors, types

from llmproxy_testing.fake_gemini import (
    SKIP_SIGNATURE,
    FakeGemini,
    Fault,
    Reply,
    content_text,
    prompt_token_count,
)

KEY = "AIzaFake-0123456789abcdef"
MODEL = "gemini-3.8-flash"
THOUGHTS = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))


def make_client(server: FakeGemini, key: str = KEY, version: str = "v1") -> genai.Client:
    options = types.HttpOptions(
        base_url=server.base_url,
        api_version=version,
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key=key, vertexai=False, http_options=options)


@pytest.fixture
def server() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def client(server: FakeGemini) -> Iterator[genai.Client]:
    c = make_client(server)
    yield c
    c.close()


@pytest.fixture
async def aclient(server: FakeGemini) -> AsyncIterator[genai.Client]:
    c = make_client(server)
    yield c
    await c.aio.aclose()
    c.close()


def raw(
    server: FakeGemini, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"content-type": "application/json", **headers})
    response = conn.getresponse()
    status, payload = response.status, response.read()
    conn.close()
    return status, json.loads(payload) if payload else None


def test_generate_content_text_thoughts_and_usage(server: FakeGemini, client: genai.Client) -> None:
    server.enqueue(Reply(text="Blue light scatters.", reasoning="think about light"))
    r = client.models.generate_content(model=MODEL, contents="Why blue?", config=THOUGHTS)
    parts = r.candidates[0].content.parts  # type: ignore[index,union-attr]
    assert [(p.text, p.thought) for p in parts] == [  # type: ignore[union-attr]
        ("think about light", True),
        ("Blue light scatters.", None),
    ]
    assert r.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    usage = r.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count) == (3 + 2 + 3, 3)
    assert (usage.thoughts_token_count, usage.total_token_count) == (3, 8 + 3 + 3)
    assert r.model_version == MODEL
    assert server.last_request.path == f"/v1/models/{MODEL}:generateContent"
    assert server.last_request.headers["x-goog-api-key"] == KEY


def test_thoughts_are_counted_but_hidden_without_include_thoughts(
    server: FakeGemini, client: genai.Client
) -> None:
    server.enqueue(Reply(text="Fine.", reasoning="one two"))
    r = client.models.generate_content(model=MODEL, contents="How?")
    assert r.text == "Fine."
    assert r.usage_metadata is not None
    assert r.usage_metadata.thoughts_token_count == 2


def test_usage_overrides_and_system_instruction(server: FakeGemini, client: genai.Client) -> None:
    server.enqueue(
        Reply(text="ok", usage={"cachedContentTokenCount": 5, "toolUsePromptTokenCount": 4})
    )
    config = types.GenerateContentConfig(system_instruction="Be very brief.")
    r = client.models.generate_content(model=MODEL, contents="Hi", config=config)
    usage = r.usage_metadata
    assert usage is not None
    # contents (1 + 3) and system instruction (3 + 3), plus 3
    assert usage.prompt_token_count == 13
    assert (usage.cached_content_token_count, usage.tool_use_prompt_token_count) == (5, 4)
    assert usage.total_token_count == 13 + 1 + 4
    body = server.last_request.json()
    assert prompt_token_count(body) == 13
    assert content_text(body["systemInstruction"]) == "Be very brief."


async def test_stream_sends_pieces_and_finishes_with_usage(
    server: FakeGemini, aclient: genai.Client
) -> None:
    server.enqueue(Reply(text="Once upon a time", reasoning="a story"))
    chunks = [
        c
        async for c in await aclient.aio.models.generate_content_stream(
            model=MODEL, contents="Tell me", config=THOUGHTS
        )
    ]
    pieces = [(p.text, bool(p.thought)) for c in chunks for p in c.candidates[0].content.parts]  # type: ignore[index,union-attr]
    assert pieces == [
        ("a", True),
        (" story", True),
        ("Once", False),
        (" upon", False),
        (" a", False),
        (" time", False),
    ]
    assert [c.usage_metadata is not None for c in chunks] == [False] * 5 + [True]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert server.last_request.query == {"alt": "sse"}


def test_max_output_tokens_cuts_thoughts_first(server: FakeGemini, client: genai.Client) -> None:
    server.enqueue(Reply(text="one two three", reasoning="hmm"))
    config = types.GenerateContentConfig(max_output_tokens=2)
    r = client.models.generate_content(model=MODEL, contents="count", config=config)
    assert r.text == "one"
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS  # type: ignore[index]
    with pytest.raises(errors.ClientError, match="max_output_tokens"):
        client.models.generate_content(model=MODEL, contents="x", config={"max_output_tokens": 0})


def test_function_calls_and_signatures(server: FakeGemini, client: genai.Client) -> None:
    server.enqueue(
        Reply(tool_calls=[{"name": "f", "arguments": '{"a": 1}'}, {"name": "g", "arguments": {}}])
    )
    r = client.models.generate_content(model=MODEL, contents="call")
    first, second = r.candidates[0].content.parts  # type: ignore[index,union-attr,misc]
    assert (first.function_call.name, first.function_call.args) == ("f", {"a": 1})  # type: ignore[union-attr]
    assert second.function_call.name == "g"  # type: ignore[union-attr]
    assert first.thought_signature is not None
    assert second.thought_signature is None
    issued = base64.b64encode(first.thought_signature).decode()
    assert issued in server.issued_signatures

    def history(signature: bytes | None) -> list[types.Content]:
        call = types.Part(
            function_call=types.FunctionCall(name="f", args={"a": 1}), thought_signature=signature
        )
        answer = types.Part(function_response=types.FunctionResponse(name="f", response={"r": 2}))
        return [
            types.Content(role="user", parts=[types.Part(text="call")]),
            types.Content(role="model", parts=[call]),
            types.Content(role="user", parts=[answer]),
        ]

    assert (
        client.models.generate_content(model=MODEL, contents=history(first.thought_signature)).text
        == "Echo: call"
    )
    skip = base64.urlsafe_b64decode(SKIP_SIGNATURE)
    assert client.models.generate_content(model=MODEL, contents=history(skip)).text == "Echo: call"
    with pytest.raises(errors.ClientError, match="missing a thought_signature") as info:
        client.models.generate_content(model=MODEL, contents=history(None))
    assert info.value.code == 400
    with pytest.raises(errors.ClientError, match="Corrupted thought signature"):
        client.models.generate_content(model=MODEL, contents=history(b"forged"))
    with FakeGemini(require_signatures=False) as lenient:
        c = make_client(lenient)
        assert c.models.generate_content(model=MODEL, contents=history(None)).text == "Echo: call"
        c.close()


def test_errors_in_gemini_shape(server: FakeGemini, client: genai.Client) -> None:
    server.enqueue(Fault.status(429, retry_after=1.5))
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents="x")
    assert (info.value.code, info.value.status) == (429, "RESOURCE_EXHAUSTED")
    details = info.value.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"} in details
    server.enqueue(
        Fault.status(503, message="busy", error_type="UNAVAILABLE", headers={"retry-after": "2"})
    )
    with pytest.raises(errors.ServerError) as server_error:
        client.models.generate_content(model=MODEL, contents="x")
    assert (server_error.value.code, server_error.value.message) == (503, "busy")
    assert server_error.value.response.headers["retry-after"] == "2"


def test_keys_header_query_missing_and_wrong(server: FakeGemini) -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    path = f"/v1beta/models/{MODEL}:generateContent"
    status, answer = raw(server, "POST", f"{path}?key={KEY}", body)
    assert status == 200
    assert answer["candidates"][0]["content"]["parts"] == [{"text": "Echo: hi"}]
    status, answer = raw(server, "POST", path, body)
    assert (status, answer["error"]["status"]) == (403, "PERMISSION_DENIED")
    status, answer = raw(server, "POST", path, body, **{"x-goog-api-key": "AIzaWrong"})
    assert (status, answer["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert answer["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_routing_and_validation(server: FakeGemini) -> None:
    auth = {"x-goog-api-key": KEY}
    status, answer = raw(server, "GET", "/v1/models", **auth)
    assert status == 200
    assert answer["models"][0]["name"] == "models/gemini-3.8-flash"
    assert raw(server, "GET", "/nowhere", **auth)[1]["error"]["status"] == "NOT_FOUND"
    assert raw(server, "GET", f"/v1/models/{MODEL}:generateContent", **auth)[0] == 405
    path = f"/v1/models/{MODEL}:generateContent"
    bad: dict[str, Any]
    for bad in (
        {"contents": []},
        {"contents": [{"role": "robot", "parts": [{"text": "x"}]}]},
        {"contents": [{"role": "user", "parts": []}]},
    ):
        status, answer = raw(server, "POST", path, bad, **auth)
        assert (status, answer["error"]["status"]) == (400, "INVALID_ARGUMENT")
    stream = f"/v1/models/{MODEL}:streamGenerateContent"
    assert raw(server, "POST", stream, {"contents": [{"parts": [{"text": "x"}]}]}, **auth)[0] == 400


def test_dropped_and_malformed(server: FakeGemini, client: genai.Client) -> None:
    server.enqueue(Fault.drop_after(0))
    with pytest.raises(httpx2.TransportError):
        client.models.generate_content(model=MODEL, contents="x")
    server.enqueue(Fault.drop_after(2))
    seen: list[str] = []

    def read() -> None:
        for chunk in client.models.generate_content_stream(model=MODEL, contents="a b c d"):
            seen.append(chunk.text or "")

    with pytest.raises(httpx2.TransportError):
        read()
    assert seen == ["Echo:", " a"]
    server.enqueue(Fault.malformed())
    with pytest.raises(ValueError):  # noqa: PT011 - the SDK's JSON error
        client.models.generate_content(model=MODEL, contents="x")


def test_reply_function(client: genai.Client) -> None:
    with FakeGemini(reply=lambda body: Reply(text=f"{len(body['contents'])} turn(s)")) as srv:
        c = make_client(srv)
        assert c.models.generate_content(model=MODEL, contents="x").text == "1 turn(s)"
        c.close()
