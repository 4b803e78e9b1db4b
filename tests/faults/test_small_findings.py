"""Finding 8 (the rest): a provider that counts more input than we do; a hung sync tool.

- A server billing 4 tokens per message plus characters/4 for the input (more than our count)
  must not make a 200-token budget overspend.
- A sync tool that hangs past its timeout must not keep ``asyncio.run`` from exiting (the
  program ends within a few seconds of the answer, not 30 s later).
The SQLite lease length as a setting is exercised by test_killed_worker (sqlite-lease), the
admin-login throttle by test_gateway_abuse.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmproxy import BudgetExceeded, Proxy
from llmproxy_testing.fake_openai import FakeOpenAI, Reply, message_text
from tests.faults.conftest import (
    duplicate_requests,
    proxy_config,
    proxy_env,
    record_figures,
    size,
)

BUDGET = size("INPUT_BUDGET", 200)
#: Each call bills at least its 10 output tokens, so the last of these is refused.
CALLS = BUDGET // 10 + 1


def heavy_usage(body: dict[str, Any]) -> Reply:
    """Bill 4 tokens per message plus characters/4 of input, 10 words of output."""
    messages = body.get("messages") or []
    prompt = sum(4 + len(message_text(m)) // 4 for m in messages)
    return Reply(text=" ".join(["w"] * 10), usage={"prompt_tokens": prompt})


def test_provider_counting_more_input_does_not_overspend(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.reply = heavy_usage
    proxy = Proxy(
        proxy_config(BUDGET, lease=60.0),
        ledger="memory://",
        history="memory://",
        environ=proxy_env(fake, tmp_path / "data"),
    )
    answered = 0
    try:
        for number in range(CALLS):
            try:
                proxy.chat(f"call {number} " + "lorem ipsum dolor " * 8, max_output_tokens=10)
                answered += 1
            except BudgetExceeded:
                break
        [usage] = proxy.usage()
    finally:
        proxy.close()
    record_figures(
        "provider bills 4 tokens a message + characters/4 of input",
        "memory",
        budget=BUDGET,
        billed=fake.billed_tokens,
        used=usage.used,
        answers_lost=fake.billed_answers - answered,
        duplicates=duplicate_requests(fake),
        notes=f"{answered} answers, then refused",
    )
    assert fake.billed_tokens <= BUDGET, (
        f"overspent: billed {fake.billed_tokens} of {BUDGET} ({fake.billed_answers} answers)"
    )


HUNG_TOOL_PROGRAM = """
import asyncio, sys, threading
from llmproxy import Proxy
from llmproxy.tools import Tool
never = threading.Event()
def hang() -> str:
    never.wait(30)
    return "late"
proxy = Proxy({}, ledger="memory://", history="memory://")
tool = Tool.from_function(hang, timeout=0.2)
answer = asyncio.run(proxy.achat("go", tools=[tool]))
proxy.close()
print(answer.text, flush=True)
"""


def test_hung_sync_tool_does_not_delay_exit(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.enqueue(
        Reply(tool_calls=[{"id": "c1", "name": "hang", "arguments": "{}"}]), Reply(text="done")
    )
    env = {**os.environ, **proxy_env(fake, tmp_path / "data")}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", HUNG_TOOL_PROGRAM], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        out, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the program still runs 20 s after start; a 0.2 s tool timed out in it")
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
    elapsed = time.monotonic() - started
    record_figures(
        "a sync tool hangs past its 0.2 s timeout",
        "memory",
        budget=None,
        billed=fake.billed_tokens,
        used=None,
        answers_lost=0 if out.strip() == "done" else 1,
        duplicates=duplicate_requests(fake),
        notes=f"the program exited {elapsed:.1f} s after it started",
    )
    assert out.strip() == "done"
    assert elapsed < 10, f"the program took {elapsed:.1f} s to exit after a 0.2 s tool timeout"
