"""Findings 6 and 7: bad input raises InvalidRequest; a key in a tool error never leaves.

6. ``chat("\\ud800")`` (a lone surrogate) and ``temperature=float("nan")`` are the caller's
   mistakes: InvalidRequest saying what to fix, not UnicodeEncodeError / ValueError from deep
   inside a client, and nothing is sent upstream.
7. A tool whose error text contains the configured provider key: the key is in neither the
   history nor the request sent upstream.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmproxy import InvalidRequest, Proxy
from llmproxy.tools import Tool
from llmproxy_testing.fake_openai import FakeOpenAI, Reply
from tests.faults.conftest import API_KEY, duplicate_requests, proxy_env, record_figures


@pytest.fixture
def proxy(fake: FakeOpenAI, tmp_path: Path) -> Iterator[Proxy]:
    made = Proxy(
        {"retry": {"initial_backoff": 0.001, "max_backoff": 0.01, "jitter": 0.0}},
        ledger="memory://",
        history="memory://",
        environ=proxy_env(fake, tmp_path / "data"),
    )
    yield made
    made.close()


@pytest.mark.parametrize(
    ("prompt", "options"),
    [
        ("\ud800", {}),
        ("hello", {"temperature": math.nan}),
        ("hello", {"temperature": math.inf}),
    ],
    ids=["lone-surrogate", "temperature-nan", "temperature-inf"],
)
def test_bad_input_is_invalid_request(
    proxy: Proxy,
    fake: FakeOpenAI,
    prompt: str,
    options: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        proxy.chat(prompt, **options)
    record_figures(
        f"bad input ({request.node.callspec.id})",
        "memory",
        budget=None,
        billed=fake.billed_tokens,
        used=None,
        answers_lost=fake.billed_answers,  # the call raised: any answer produced is lost
        duplicates=duplicate_requests(fake),
        notes=f"{type(raised.value).__name__}; {len(fake.requests)} requests sent upstream",
    )
    assert fake.requests == []


def test_key_in_a_tool_error_is_not_stored_nor_sent(proxy: Proxy, fake: FakeOpenAI) -> None:
    def leaky() -> str:
        raise RuntimeError(f"auth failed with key {API_KEY}")

    fake.enqueue(
        Reply(tool_calls=[{"id": "c1", "name": "leaky", "arguments": "{}"}]), Reply(text="done")
    )
    answer = proxy.chat("run it", tools=[Tool.from_function(leaky)], session_id="leak")
    sent = [r.body.decode() for r in fake.requests]
    stored = json.dumps([repr(r) for r in proxy.history.load("leak")])
    leaked_up = sum(API_KEY in body for body in sent)
    record_figures(
        "provider key in a tool's error",
        "memory",
        budget=None,
        billed=fake.billed_tokens,
        used=None,
        answers_lost=0 if answer.text == "done" else 1,
        duplicates=duplicate_requests(fake),
        notes=f"key in {leaked_up} of {len(sent)} upstream requests,"
        f" {'in' if API_KEY in stored else 'not in'} history",
    )
    assert answer.text == "done"
    assert len(sent) == 2
    assert all(API_KEY not in body for body in sent), "the key was sent upstream"
    assert API_KEY not in stored, "the key is stored in history"
