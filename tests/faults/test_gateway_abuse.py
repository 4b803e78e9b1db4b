"""Finding 5 and the admin-login part of 8: a gateway (``llmproxy serve``) under abuse.

Idle half-open connections do not stop a real request; malformed bodies answer 400 in
OpenAI's shape, never 500; a big body of tiny messages does not stall another client (or is
refused up front); wrong admin keys are throttled with a 429. The full form (1,000
connections, a 30 MB body) is bench/bench_faults.py.
"""

from __future__ import annotations

import http.client
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from llmproxy_testing.fake_openai import FakeOpenAI
from plugins.gateway.tests.conftest import GatewayProcess, serve_gateway
from tests.faults.conftest import record_figures, size

IDLE_CONNECTIONS = size("IDLE_CONNECTIONS", 200)
NESTING = 100_000
#: Messages of the huge body: 300,000 make about 10 MB, 900,000 about 30 MB (the full form).
BODY_MESSAGES = size("BODY_MESSAGES", 300_000)


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


def record_gateway(
    fault: str,
    upstream: FakeOpenAI,
    start: tuple[int, int],
    *,
    forwarded: int,
    lost: int,
    notes: str,
) -> None:
    """Record a gateway scenario's figures: what the upstream billed and received meanwhile.

    ``start`` is the upstream's (billed tokens, requests) before the scenario; ``forwarded``
    how many requests should have reached it; any more are counted as duplicates.
    """
    billed, received = upstream.billed_tokens - start[0], len(upstream.requests) - start[1]
    record_figures(
        fault,
        "gateway (SQLite)",
        budget=None,
        billed=billed,
        used=None,
        answers_lost=lost,
        duplicates=max(0, received - forwarded),
        notes=notes,
    )


def upstream_now(upstream: FakeOpenAI) -> tuple[int, int]:
    """The upstream's billed tokens and request count now."""
    return upstream.billed_tokens, len(upstream.requests)


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
def test_malformed_bodies_answer_400(
    gateway: GatewayProcess, upstream: FakeOpenAI, body: bytes, request: pytest.FixtureRequest
) -> None:
    start = upstream_now(upstream)
    status, raw = post(gateway, gateway.key("mal"), body)
    record_gateway(
        f"gateway: malformed body ({request.node.callspec.id})",
        upstream,
        start,
        forwarded=0,
        lost=0,
        notes=f"HTTP {status}",
    )
    assert status == 400, f"{status}: {raw[:200]!r}"
    assert "error" in json.loads(raw)


def test_idle_connections_do_not_block_a_real_request(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    key = gateway.key("idle")
    idle: list[socket.socket] = []
    # The client side needs a descriptor per idle connection (the gateway raises its own limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_CONNECTIONS + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    start = upstream_now(upstream)
    try:
        # The abuser is one address (127.0.0.2), the real client another: a per-address cap
        # keeps the abuser from using up the worker's connections.
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(
                (host, int(port)), timeout=5, source_address=("127.0.0.2", 0)
            )
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(sock)
        started = time.monotonic()
        status, raw = post(gateway, key, chat_body(), timeout=10)
        elapsed = time.monotonic() - started
        record_gateway(
            f"gateway: {IDLE_CONNECTIONS} idle half-open connections",
            upstream,
            start,
            forwarded=1,
            lost=0 if status == 200 else 1,
            notes=f"a real request from another address: HTTP {status} in {elapsed:.2f} s",
        )
        assert status == 200, raw[:200]
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_huge_body_does_not_stall_another_client(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    key = gateway.key("big")
    messages = [{"role": "user", "content": "x"}] * BODY_MESSAGES
    big = json.dumps({"model": "fast", "messages": messages}).encode()
    outcome: list[int] = []
    sender = threading.Thread(target=lambda: outcome.append(post(gateway, key, big)[0]))
    start = upstream_now(upstream)
    sender.start()
    try:
        started = time.monotonic()
        status, _ = post(gateway, key, chat_body(), timeout=30)
        small = time.monotonic() - started
    finally:
        sender.join(60)
    big_status = outcome[0] if outcome else None
    record_gateway(
        f"gateway: a {len(big) / 2**20:.0f} MB body of {BODY_MESSAGES:,} tiny messages",
        upstream,
        start,
        forwarded=1 + (big_status == 200),
        lost=0 if status == 200 else 1,
        notes=f"the big body: HTTP {big_status}; a small request meanwhile: HTTP {status}"
        f" in {small:.2f} s",
    )
    assert status == 200
    assert small < 1.0 or (outcome and outcome[0] in (400, 413)), (
        f"a small request took {small:.1f} s while a {len(big) >> 20} MB body was handled"
    )


def test_admin_login_is_throttled(gateway: GatewayProcess, upstream: FakeOpenAI) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    statuses = []
    start = upstream_now(upstream)
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
    record_gateway(
        "gateway: wrong admin keys in a row",
        upstream,
        start,
        forwarded=0,
        lost=0,
        notes=f"HTTP 429 after {len(statuses) - 1} wrong keys"
        if 429 in statuses
        else f"no 429 after {len(statuses)} wrong keys",
    )
    assert 429 in statuses, f"20 wrong admin keys in a row, no 429: {statuses}"
