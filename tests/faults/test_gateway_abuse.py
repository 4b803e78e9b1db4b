"""Finding 5 and the admin-login part of 8: a gateway (``llmproxy serve``) under abuse.

Idle half-open connections do not stop a real request; malformed bodies answer 400 in
OpenAI's shape, never 500; a big body of tiny messages does not stall another client (or is
refused up front); wrong admin keys are throttled with a 429. The full form (1,000
connections, a 30 MB body) is bench/bench_faults.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from llmproxy_testing.fake_openai import FakeOpenAI
from plugins.gateway.tests.conftest import GatewayProcess, serve_gateway

IDLE_CONNECTIONS = 200
NESTING = 100_000


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    from plugins.gateway.tests.conftest import UPSTREAM_KEY

    with FakeOpenAI(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(upstream, tmp_path_factory.mktemp("abuse"))


def post(gateway: GatewayProcess, key: str, body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    host, port = gateway.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def chat_body(content: str = "hi", **extra: object) -> bytes:
    return json.dumps(
        {"model": "fast", "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
        b'{"model": "fast", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "fast", "messages": ' + b"[" * NESTING + b"]" * NESTING + b"}",
    ],
    ids=["nan", "1e999", "lone-surrogate", "deep-nesting"],
)
def test_malformed_bodies_answer_400(gateway: GatewayProcess, body: bytes) -> None:
    status, raw = post(gateway, gateway.key("mal"), body)
    assert status == 400, f"{status}: {raw[:200]!r}"
    assert "error" in json.loads(raw)


def test_idle_connections_do_not_block_a_real_request(gateway: GatewayProcess) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    key = gateway.key("idle")
    idle: list[socket.socket] = []
    try:
        # The abuser is one address (127.0.0.2), the real client another: a per-address cap
        # keeps the abuser from using up the worker's connections.
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(
                (host, int(port)), timeout=5, source_address=("127.0.0.2", 0)
            )
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(sock)
        status, raw = post(gateway, key, chat_body(), timeout=10)
        assert status == 200, raw[:200]
    finally:
        for sock in idle:
            sock.close()


def test_a_huge_body_does_not_stall_another_client(gateway: GatewayProcess) -> None:
    key = gateway.key("big")
    messages = [{"role": "user", "content": "x"}] * 300_000
    big = json.dumps({"model": "fast", "messages": messages}).encode()
    outcome: list[int] = []
    sender = threading.Thread(target=lambda: outcome.append(post(gateway, key, big)[0]))
    sender.start()
    try:
        started = time.monotonic()
        status, _ = post(gateway, key, chat_body(), timeout=30)
        small = time.monotonic() - started
    finally:
        sender.join(60)
    assert status == 200
    assert small < 1.0 or (outcome and outcome[0] in (400, 413)), (
        f"a small request took {small:.1f} s while a {len(big) >> 20} MB body was handled"
    )


def test_admin_login_is_throttled(gateway: GatewayProcess) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    statuses = []
    for number in range(20):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(
                "POST",
                "/dashboard/login",
                body=f"key=wrong-{number}",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if response.status == 429:
                assert response.getheader("retry-after")
                break
        finally:
            conn.close()
    assert 429 in statuses, f"20 wrong admin keys in a row, no 429: {statuses}"
