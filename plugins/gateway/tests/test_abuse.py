"""``llmproxy serve`` under abuse: slow and half-open connections, connection caps, bodies
that are malformed or too much work, all against a real gateway process on 127.0.0.1."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmproxy_gateway import wire
from llmproxy_gateway.errors import HTTPError
from llmproxy_testing.fake_openai import FakeOpenAI

from .conftest import GatewayProcess, serve_gateway

EOF_BOUND = 15.0  # seconds a socket may take to see the server's answer and close


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(
        upstream,
        tmp_path_factory.mktemp("abuse"),
        LLMPROXY_GATEWAY_HEADER_TIMEOUT="0.5",
        LLMPROXY_GATEWAY_BODY_TIMEOUT="0.5",
        LLMPROXY_GATEWAY_MAX_HEADER_BYTES="4096",
        LLMPROXY_GATEWAY_MAX_MESSAGES="50",
        LLMPROXY_GATEWAY_MAX_JSON_DEPTH="8",
    )


@pytest.fixture(scope="module")
def capped(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway allowing 3 connections per address and 6 in all, with a long head deadline."""
    yield from serve_gateway(
        upstream,
        tmp_path_factory.mktemp("capped"),
        LLMPROXY_GATEWAY_HEADER_TIMEOUT="60",
        LLMPROXY_GATEWAY_MAX_CLIENT_CONNECTIONS="3",
        LLMPROXY_GATEWAY_MAX_CONNECTIONS="6",
    )


def address(gateway: GatewayProcess) -> tuple[str, int]:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(gateway: GatewayProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(address(gateway), timeout=EOF_BOUND, source_address=(source, 0))
    return sock


def read_to_eof(sock: socket.socket, bound: float = EOF_BOUND) -> bytes:
    """Everything the server sends until it closes the connection (an event, bounded)."""
    data = b""
    while True:
        ready, _, _ = select.select([sock], [], [], bound)
        assert ready, f"the server did not close the connection within {bound} s"
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status_and_json(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def request_head(key: str, length: int, path: bytes = b"/v1/chat/completions") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + key.encode() + b"\r\n"
        b"content-length: " + str(length).encode() + b"\r\n\r\n"
    )


def sdk(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=30)


def ask(gateway: GatewayProcess, key: str) -> str | None:
    reply = sdk(gateway, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}]
    )
    return reply.choices[0].message.content


# -- connections ----------------------------------------------------------------------------------


def test_half_open_and_slow_loris_connections_are_closed_at_the_head_deadline(
    gateway: GatewayProcess,
) -> None:
    key = gateway.key("alice")
    silent = [connect(gateway) for _ in range(20)]
    partial = [connect(gateway) for _ in range(20)]
    for sock in partial:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nx-slow: ")
    try:
        # While they are open, a real client is served.
        assert ask(gateway, key) == "Echo: still there?"
        # Each is closed by the server: silently when nothing was sent, else with a 408.
        for sock in silent:
            assert read_to_eof(sock) == b""
        for sock in partial:
            status, body = status_and_json(read_to_eof(sock))
            assert status == 408
            assert body["error"]["code"] == "request_timeout"
            assert "LLMPROXY_GATEWAY_HEADER_TIMEOUT" in body["error"]["message"]
    finally:
        for sock in silent + partial:
            sock.close()
    assert ask(gateway, key) == "Echo: still there?"


def test_a_body_slower_than_its_deadline_is_answered_408(gateway: GatewayProcess) -> None:
    key = gateway.key("alice")
    with connect(gateway) as sock:
        sock.sendall(request_head(key, 200) + b'{"model": "gpt-4o-mini", ')
        status, body = status_and_json(read_to_eof(sock))
    assert status == 408
    assert "LLMPROXY_GATEWAY_BODY_TIMEOUT" in body["error"]["message"]


def test_an_oversized_head_is_answered_431(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\n")
        sock.sendall(b"x-padding: " + b"a" * 8000 + b"\r\n")
        status, body = status_and_json(read_to_eof(sock))
    assert status == 431
    assert body["error"]["code"] == "request_header_fields_too_large"


def test_connections_beyond_the_per_address_and_per_worker_caps_are_refused(
    capped: GatewayProcess,
) -> None:
    key = capped.key("alice")
    held: list[socket.socket] = []
    try:
        for _ in range(3):  # the address's 3, each half-way through its head
            held.append(connect(capped))
            held[-1].sendall(b"GET /v1/models HTTP/1.1\r\n")
        with connect(capped) as fourth:
            fourth.sendall(request_head(key, 2) + b"{}")
            status, body = status_and_json(read_to_eof(fourth))
        assert status == 429
        assert body["error"]["code"] == "too_many_connections"
        assert "LLMPROXY_GATEWAY_MAX_CLIENT_CONNECTIONS" in body["error"]["message"]
        for _ in range(3):  # another address fills the worker's 6
            held.append(connect(capped, "127.0.0.2"))
            held[-1].sendall(b"GET /v1/models HTTP/1.1\r\n")
        with connect(capped, "127.0.0.3") as seventh:
            seventh.sendall(b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n")
            status, body = status_and_json(read_to_eof(seventh))
        assert status == 503
        assert "LLMPROXY_GATEWAY_MAX_CONNECTIONS" in body["error"]["message"]
        # A held connection that finishes its head is served as usual.
        held[0].sendall(
            b"host: gateway\r\nauthorization: Bearer " + key.encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        assert read_to_eof(held[0]).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()


# -- bodies ---------------------------------------------------------------------------------------


def post(gateway: GatewayProcess, key: str, body: bytes) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
    )


MESSAGES = '"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"model": "gpt-4o-mini", ' + MESSAGES.encode() + b', "temperature": NaN}', "NaN"),
        (b'{"model": "gpt-4o-mini", ' + MESSAGES.encode() + b', "temperature": 1e999}', "1e999"),
        (b'{"model": "gpt-4o-mini", ' + MESSAGES.encode() + b', "top_p": -Infinity}', "Infinity"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}', "surr"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
            "UTF-8",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "deeply"),
        (b'{"model": "gpt-4o-mini", ' + MESSAGES.encode() + b', "stop": 5}', "'stop'"),
        (b'{"model": "gpt-4o-mini", ' + MESSAGES.encode() + b', "seed": "x"}', "'seed'"),
        (b'{"model": ["x"], ' + MESSAGES.encode() + b"}", "model"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', "messages"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}', "content"),
        (
            b'{"model": "gpt-4o-mini", '
            + MESSAGES.encode()
            + b', "response_format": '
            + b'{"a": ' * 20
            + b"1"
            + b"}" * 20
            + b"}",
            "8 levels",
        ),
        (
            b'{"model": "gpt-4o-mini", "messages": ['
            + b",".join([b'{"role": "user", "content": "hi"}'] * 51)
            + b"]}",
            "LLMPROXY_GATEWAY_MAX_MESSAGES",
        ),
    ],
)
def test_malformed_bodies_are_400_in_openais_shape(
    gateway: GatewayProcess, body: bytes, said: str
) -> None:
    response = post(gateway, gateway.key("alice"), body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert said.lower()[:4] in error["message"].lower()


def tiny_messages(count: int) -> bytes:
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}] * count}
    ).encode()


def test_a_body_of_a_million_tiny_values_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoDecoder:
        def decode(self, _text: str) -> Any:
            raise AssertionError("the body was parsed")

    body = tiny_messages(900_000)  # 27 MB, 2.7 million items
    monkeypatch.setattr(wire, "_DECODER", NoDecoder())
    with pytest.raises(HTTPError) as caught:
        wire.parse(body)
    assert caught.value.status == 413
    assert "LLMPROXY_GATEWAY_MAX_JSON_ITEMS" in caught.value.message


def test_the_item_count_ignores_brackets_and_commas_inside_strings() -> None:
    text = "a, [b], {c}, " * 50_000  # 200,000 structural bytes, all in one string
    call = wire.parse(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode(),
        wire.BodyLimits(max_items=1000),
    )
    assert call.messages[0].content == text
    with pytest.raises(HTTPError):
        wire.parse(tiny_messages(600), wire.BodyLimits(max_items=1000))


def test_an_abusive_body_does_not_hold_up_another_client(gateway: GatewayProcess) -> None:
    key = gateway.key("alice")
    body = tiny_messages(900_000)
    with connect(gateway) as sock:
        sock.sendall(request_head(key, len(body)) + body[: len(body) // 2])
        # Half of it is in: another client is served meanwhile, the abusive one not answered.
        assert ask(gateway, key) == "Echo: still there?"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.setblocking(True)
        sock.sendall(body[len(body) // 2 :])
        raw = read_to_eof(sock)  # 413 closes the connection
    status, answer = status_and_json(raw)
    assert status == 413
    assert answer["error"]["code"] == "request_too_large"
    assert ask(gateway, key) == "Echo: still there?"


# -- property: no 5xx, whatever the body ----------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot"])
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES | JSON, "content": st.text(max_size=30) | JSON},
    optional={"name": JSON, "tool_calls": JSON, "tool_call_id": JSON},
)
FIELDS = st.sampled_from(
    [
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "n",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        *sorted(wire.PASSTHROUGH),
    ]
)
REQUEST = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["gpt-4o-mini", "fast", "openai/gpt-4o", "nope/x", ""]) | JSON,
        "messages": st.lists(MESSAGE, max_size=3) | JSON,
    }
).flatmap(
    lambda base: st.dictionaries(FIELDS, JSON, max_size=3).map(lambda extra: {**base, **extra})
)
RAW = (
    REQUEST.map(lambda r: json.dumps(r).encode())
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | REQUEST.map(lambda r: json.dumps(r).encode()).flatmap(
        lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda cut: b[:cut])
    )
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=RAW)
def test_no_body_gets_a_5xx(gateway: GatewayProcess, body: bytes) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.post(
            "/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {_property_key(gateway)}"},
        )
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


_KEYS: dict[int, str] = {}


def _property_key(gateway: GatewayProcess) -> str:
    if id(gateway) not in _KEYS:
        _KEYS[id(gateway)] = gateway.key("fuzz")
    return _KEYS[id(gateway)]
