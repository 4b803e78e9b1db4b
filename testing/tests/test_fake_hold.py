"""The fault-test facilities of the fake upstream: holding requests, and what it billed."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import openai
import pytest

from llmproxy_testing.fake_openai import FakeOpenAI, Reply

KEY = "sk-test-hold-0123456789"
MODEL = "gpt-4o-mini"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY, reply="one two three") as fake:
        try:
            yield fake
        finally:
            fake.release()


def client(server: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=10)


def ask(server: FakeOpenAI, text: str, out: list[int]) -> None:
    with client(server) as c:
        answer = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}]
        )
        assert answer.usage is not None
        out.append(answer.usage.total_tokens)


def test_billed_tokens_sum_the_usage_of_answers(server: FakeOpenAI) -> None:
    got: list[int] = []
    ask(server, "hello there", got)
    server.enqueue(Reply(text="a b c d e"))
    ask(server, "again", got)
    # prompt 3 + (2 + 3) = 8 plus 3 words; prompt 3 + (1 + 3) = 7 plus 5 words
    assert got == [11, 12]
    assert server.billed_tokens == 23
    assert server.billed_answers == 2
    server.clear()
    assert (server.billed_tokens, server.billed_answers) == (0, 0)


def test_held_requests_wait_until_released(server: FakeOpenAI) -> None:
    server.hold(lambda request: b"slow" in request.body)
    got: list[int] = []
    slow = threading.Thread(target=ask, args=(server, "slow please", got))
    slow.start()
    try:
        server.wait_held(1)
        ask(server, "fast", got)  # not matched: answered while the other waits
        assert got == [10] and server.held == 1
        assert server.billed_answers == 1  # the held one is not produced yet
    finally:
        server.release()
        slow.join(10)
    assert not slow.is_alive()
    assert sorted(got) == [10, 11]
    assert server.held == 0 and server.billed_tokens == 21


def test_a_held_request_whose_client_left_is_billed_at_release(server: FakeOpenAI) -> None:
    server.hold()
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "gone"}]})
    raw = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw)
        server.wait_held(1)
        # Reset the connection on close: the server sees it lost, not half-closed.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The client is gone: the request no longer waits, but the upstream still produces and
    # bills the answer once it goes on.
    for _ in range(500):
        if server.held == 0:
            break
        threading.Event().wait(0.01)
    assert server.held == 0
    assert server.billed_answers == 0
    server.release()
    assert server.billed_answers == 1
    assert server.billed_tokens == 7 + 3


def test_wait_held_times_out_with_a_count(server: FakeOpenAI) -> None:
    server.hold()
    with pytest.raises(TimeoutError, match="0 request"):
        server.wait_held(1, timeout=0.05)
