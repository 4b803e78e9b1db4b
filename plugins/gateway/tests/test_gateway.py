"""The real openai SDK against ``llmproxy serve``, in front of the fake OpenAI upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest

from llmproxy_testing.fake_openai import FakeOpenAI, Fault, Reply

from .conftest import ADMIN_KEY, UPSTREAM_KEY, GatewayProcess, chat_bodies


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def test_json_chat_through_the_sdk(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    key = gateway.key("alice")
    r = client(gateway, key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello"}],
        max_tokens=50,
        temperature=0.5,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Echo: Hello"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-4o-mini"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (12, 2, 14)
    sent = chat_bodies(upstream)[-1]
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_completion_tokens"] == 50 and sent["temperature"] == 0.5


def test_streaming_through_the_sdk(gateway: GatewayProcess) -> None:
    key = gateway.key("alice")
    stream = client(gateway, key).chat.completions.create(
        model="openai/gpt-4o",
        messages=[{"role": "user", "content": "Tell me a short story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Tell me a short story"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 6)
    # without include_usage: no usage chunk
    plain = list(
        client(gateway, key).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("requested", "answered", "expected"),
    [
        # OpenAI names the resolved snapshot in its answers: so do both reply forms.
        ("openai/gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),
        # An alias (fast = "openai/gpt-4o-mini"), upstream echoing the name it was sent.
        ("fast", None, "gpt-4o-mini"),
    ],
)
def test_whole_and_streamed_replies_name_the_same_model(
    gateway: GatewayProcess,
    upstream: FakeOpenAI,
    requested: str,
    answered: str | None,
    expected: str,
) -> None:
    sdk = client(gateway, gateway.key("mona"))
    messages: list[Any] = [{"role": "user", "content": "Which model?"}]
    upstream.enqueue(Reply(model=answered), Reply(model=answered))
    whole = sdk.chat.completions.create(model=requested, messages=messages)
    chunks = list(
        sdk.chat.completions.create(
            model=requested,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chat_bodies(upstream)[-1]["model"] == chat_bodies(upstream)[-2]["model"]
    assert whole.model == expected
    assert len(chunks) >= 3  # role and text, finish, usage
    assert {c.model for c in chunks} == {expected}


def test_models_list(gateway: GatewayProcess) -> None:
    ids = [m.id for m in client(gateway, gateway.key()).models.list()]
    assert ids[0] == "openai/gpt-5.4-mini"
    assert "openai/gpt-4o-mini" in ids


def test_a_model_is_retrieved_by_id_as_openai_does(gateway: GatewayProcess) -> None:
    sdk = client(gateway, gateway.key())
    listed = sdk.models.retrieve("openai/gpt-5.4-mini")
    assert (listed.id, listed.object, listed.owned_by) == ("openai/gpt-5.4-mini", "model", "openai")
    # Names that are not listed but that a request may use: the provider's own, and bare
    # names (the default provider's).
    assert sdk.models.retrieve("openai/gpt-4.1-nano").owned_by == "openai"
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as info:
        sdk.models.retrieve("nope/x")
    assert info.value.code == "model_not_found"
    assert "nope/x" in info.value.message
    assert httpx.get(gateway.url + "/v1/models/gpt-4o-mini").status_code == 401


def test_unknown_paths_and_methods_answer_in_openais_error_shape(
    gateway: GatewayProcess,
) -> None:
    key = gateway.key()
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway, key).images.generate(prompt="a cat")
    assert info.value.type == "invalid_request_error"
    assert "POST /v1/images/generations" in info.value.message
    wrong_method = httpx.delete(
        gateway.url + "/v1/models", headers={"authorization": f"Bearer {key}"}
    )
    assert wrong_method.status_code == 405
    error = wrong_method.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "DELETE /v1/models" in error["message"]


def test_a_body_over_the_limit_is_413_before_it_is_read(gateway: GatewayProcess) -> None:
    key = gateway.key("dora")
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    limit = 1_000_000  # LLMPROXY_GATEWAY_MAX_BODY in the fixture
    text = "x" * limit
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    r = httpx.post(gateway.url + "/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "request_too_large" and "LLMPROXY_GATEWAY_MAX_BODY" in error["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield body[: limit // 2].encode()
        yield body[limit // 2 :].encode()

    r = httpx.post(gateway.url + "/v1/chat/completions", content=chunked(), headers=headers)
    assert r.status_code == 413, r.text
    small = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]})
    assert (
        httpx.post(gateway.url + "/v1/chat/completions", content=small, headers=headers)
    ).status_code == 200


def test_missing_wrong_and_revoked_keys_are_401(gateway: GatewayProcess) -> None:
    good = gateway.key("carol")
    record_id = good.split("-")[2]
    for bad in ("sk-llmp-0000000000-nope", good[:-2] + "xx", "not-a-gateway-key"):
        with pytest.raises(openai.AuthenticationError) as info:
            client(gateway, bad).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
            )
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        assert info.value.type == "invalid_request_error"
    no_key = httpx.post(gateway.url + "/v1/chat/completions", json={})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(gateway.url + "/v1/models").status_code == 401
    # revoked while the gateway runs: refused at the next request
    client(gateway, good).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    gateway.keys.revoke(record_id)
    with pytest.raises(openai.AuthenticationError):
        client(gateway, good).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"{not json", None, "could not parse the JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model", "'model'"),
        (b'{"model": "gpt-4o-mini"}', "messages", "'messages'"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "messages", "'messages'"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}',
            "messages[0].role",
            "role",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}',
            "messages[0]",
            "content",
        ),
        (
            b'{"model": "gpt-4o-mini", "max_tokens": 0,'
            b' "messages": [{"role": "user", "content": "x"}]}',
            "max_tokens",
            ">= 1",
        ),
        (
            b'{"model": "gpt-4o-mini", "n": 3, "messages": [{"role": "user", "content": "x"}]}',
            "n",
            "one choice",
        ),
        (
            b'{"model": "nope/x", "messages": [{"role": "user", "content": "x"}]}',
            "model",
            "no installed plugin",
        ),
    ],
)
def test_bad_bodies_are_400_in_openais_shape(
    gateway: GatewayProcess, body: bytes, param: str | None, words: str
) -> None:
    key = gateway.key("dave")
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_bad_request_through_the_sdk(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway, gateway.key()).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "robot", "content": "Hi"}],  # type: ignore[misc, list-item]
        )
    assert info.value.status_code == 400 and info.value.param == "messages[0].role"


def test_each_key_has_its_own_budget_and_a_spent_one_is_429(gateway: GatewayProcess) -> None:
    small = client(gateway, gateway.key("erin", "tokens:40/day"))
    other = client(gateway, gateway.key("erin", "tokens:40/day"))
    messages = [{"role": "user", "content": "Hello"}]
    used = 0
    refused: openai.RateLimitError | None = None
    for _ in range(10):
        try:
            r = small.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        except openai.RateLimitError as exc:
            refused = exc
            break
        assert r.usage is not None
        used += r.usage.total_tokens
    assert 0 < used <= 40
    assert refused is not None
    error = refused
    assert error.status_code == 429
    assert error.type == "insufficient_quota" and error.code == "budget_exceeded"
    assert "key-tokens-40-day" in error.message
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 86400  # the day's budget resets at midnight UTC
    # the same spec on another key is another budget
    assert other.chat.completions.create(model="gpt-4o-mini", messages=messages).choices  # type: ignore[arg-type]
    # streams are refused before the status line too
    with pytest.raises(openai.RateLimitError):
        small.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]


def test_a_key_without_a_reset_has_no_retry_after(gateway: GatewayProcess) -> None:
    spent = client(gateway, gateway.key("fay", "tokens:5"))
    with pytest.raises(openai.RateLimitError) as info:
        spent.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
        )
    assert "retry-after" not in info.value.response.headers


def test_requests_per_minute_per_key_is_429_with_retry_after(gateway: GatewayProcess) -> None:
    limited = client(gateway, gateway.key("gus", "requests:1/minute"))
    messages = [{"role": "user", "content": "Hello"}]
    limited.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:
        limited.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert info.value.code == "rate_limit_exceeded"
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 60


def test_usd_budget(gateway: GatewayProcess) -> None:
    rich = client(gateway, gateway.key("hal", "usd:0.000001/day"))
    codes = []
    for _ in range(5):
        try:
            rich.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hello"}]
            )
        except openai.RateLimitError as exc:
            codes.append((exc.code, "key-usd-1e-06-day" in exc.message))
            break
    assert codes == [("budget_exceeded", True)]


def test_session_header_keeps_history(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    sdk = client(gateway, gateway.key("ivy"))
    headers = {"X-Session-Id": "trip-42"}
    sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "my name is Ada"}],
        extra_headers=headers,
    )
    sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "what is my name?"}],
        extra_headers=headers,
    )
    sent = chat_bodies(upstream)[-1]["messages"]
    assert [m["content"] for m in sent] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "what is my name?",
    ]
    page = httpx.get(
        gateway.url + "/dashboard/sessions/trip-42",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert page.status_code == 200
    assert page.text.count("<tr>") == 4 + 1  # four messages and the header row
    assert "Echo: my name is Ada" in page.text
    bad = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {gateway.key()}", "x-session-id": "a b"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Session-Id"


def test_usage_log_rows_match_the_answers(gateway: GatewayProcess) -> None:
    key = gateway.key("judy")
    key_id = key.split("-")[2]
    sdk = client(gateway, key)
    answers = [
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "count these words please"}],
            extra_headers={"X-Session-Id": "log-1"},
        ).usage
    ]
    stream = sdk.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "and stream them"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    answers.append([c for c in stream][-1].usage)
    rows = gateway.rows(2, key=key_id)
    assert len(rows) == 2
    streamed, plain = rows
    for row, usage in ((plain, answers[0]), (streamed, answers[1])):
        assert usage is not None
        assert (row.input_tokens, row.output_tokens) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert row.user == "judy" and row.key == key_id and row.outcome == "ok"
        assert row.cost is not None and row.cost > 0
    assert plain.session_id == "log-1" and not plain.streamed
    assert streamed.streamed and streamed.model == "openai/gpt-4o"


def test_upstream_failures_map_to_gateway_statuses(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    sdk = client(gateway, gateway.key("ken"))
    messages = [{"role": "user", "content": "Hello"}]
    upstream.enqueue(Fault.status(503), Fault.status(503))  # both attempts fail
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert info.value.status_code == 502 and info.value.code == "upstream_error"
    upstream.enqueue(Fault.status(404, message="The model does not exist"))
    with pytest.raises(openai.NotFoundError) as info404:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert info404.value.code == "upstream_bad_request"
    upstream.enqueue(Fault.status(429, retry_after=7), Fault.status(429, retry_after=7))
    with pytest.raises(openai.RateLimitError) as info429:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert info429.value.code == "upstream_rate_limited"
    assert info429.value.response.headers["retry-after"] == "7"
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=messages).choices  # type: ignore[arg-type]


def test_a_stream_broken_midway_ends_with_an_error_event(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    key = gateway.key("lou")
    upstream.enqueue(Fault.drop_after(2))
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four"}],
        },
        headers={"authorization": f"Bearer {key}"},
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "upstream_error" and "stream broke" in error["message"]
    rows = gateway.rows(1, key=key.split("-")[2])
    assert rows[0].outcome == "interrupted"


def test_dashboard_is_admin_only(gateway: GatewayProcess) -> None:
    user_key = gateway.key("mia")
    admin_key = gateway.key("root", admin=True)
    anonymous = httpx.get(gateway.url + "/dashboard")
    assert anonymous.status_code == 401 and 'name="key"' in anonymous.text
    assert httpx.get(gateway.url + "/dashboard/data").status_code == 401
    as_user = httpx.get(
        gateway.url + "/dashboard/data", headers={"authorization": f"Bearer {user_key}"}
    )
    assert as_user.status_code == 401
    for admin in (ADMIN_KEY, admin_key):
        ok = httpx.get(
            gateway.url + "/dashboard/data", headers={"authorization": f"Bearer {admin}"}
        )
        assert ok.status_code == 200 and "summary" in ok.json()
    wrong = httpx.post(gateway.url + "/dashboard/login", data={"key": user_key})
    assert wrong.status_code == 401 and "not an admin key" in wrong.text
    with httpx.Client(base_url=gateway.url) as browser:
        login = browser.post("/dashboard/login", data={"key": ADMIN_KEY})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert (
            "httponly" in cookie and "samesite=strict" in cookie and ADMIN_KEY.lower() not in cookie
        )
        assert browser.get("/dashboard/data").status_code == 200
        page = browser.get("/dashboard")
        assert page.status_code == 200 and "summary-calls" in page.text
        browser.post("/dashboard/logout")
        assert browser.get("/dashboard/data").status_code == 401


def test_a_client_that_leaves_midway_interrupts_the_call(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    key = gateway.key("nina")
    upstream.enqueue(Reply(text=" ".join(["word"] * 200), chunk_delay=0.02))
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "talk for a while"}],
        },
        headers={"authorization": f"Bearer {key}", "x-session-id": "left-early"},
    ) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    rows = gateway.rows(1, key=key.split("-")[2])
    assert rows[0].outcome == "interrupted"
    assert 0 < rows[0].output_tokens < 200  # counted from what arrived, well before the end


def test_keys_in_a_prompt_are_never_stored_or_sent(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    key = gateway.key("kim")
    other = gateway.key("lee")  # another caller's key, never seen by the gateway
    prompt = f"mine is {key}, theirs {other}, upstream {UPSTREAM_KEY}, admin {ADMIN_KEY}"
    r = client(gateway, key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        extra_headers={"X-Session-Id": "leaky-1"},
    )
    assert r.choices[0].message.content == "Echo: mine is ***, theirs ***, upstream ***, admin ***"
    sent = [r.body for r in upstream.requests if r.path.endswith("/chat/completions")][-1]
    page = httpx.get(
        gateway.url + "/dashboard/sessions/leaky-1",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert page.status_code == 200 and "mine is ***" in page.text
    for secret in (key, other, UPSTREAM_KEY, ADMIN_KEY):
        assert secret.encode() not in sent
        assert secret not in page.text


def test_models_are_listed_per_key_and_a_key_keeps_to_its_allow_list(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    everything = client(gateway, gateway.key("ann"))
    listed = {m.id: m for m in everything.models.list()}
    assert listed["fast"].owned_by == "llmproxy"  # the alias
    assert listed["openai/gpt-4o-mini"].owned_by == "openai"
    assert all(m.object == "model" for m in listed.values())
    assert not any(name.startswith(("gemini/", "deepseek/")) for name in listed)  # no key
    only_fast = client(gateway, gateway.key("ben", models="fast"))
    assert [m.id for m in only_fast.models.list()] == ["fast"]
    mini = client(gateway, gateway.key("cat", models="openai/gpt-4o-mini*"))
    ids = [m.id for m in mini.models.list()]
    assert "fast" in ids and "openai/gpt-4o-mini" in ids  # the alias names an allowed model
    assert "openai/gpt-5.4-mini" not in ids and set(ids) < set(listed)
    sent = len(chat_bodies(upstream))
    with pytest.raises(openai.PermissionDeniedError) as info:
        only_fast.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_allowed"
    assert "openai/gpt-4o-mini" in info.value.message and "fast" in info.value.message
    with pytest.raises(openai.PermissionDeniedError):
        only_fast.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert len(chat_bodies(upstream)) == sent  # refused before any upstream call
    r = only_fast.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content == "Echo: hi"
    assert (
        mini.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "bare"}]
        )
        .choices[0]
        .message.content
        == "Echo: bare"
    )
    with pytest.raises(openai.NotFoundError) as missing:
        only_fast.models.retrieve("openai/gpt-4o")
    assert missing.value.code == "model_not_found"
    assert only_fast.models.retrieve("fast").owned_by == "llmproxy"
