"""Finding 3: a hung upstream must not hold a call past the retry deadline.

The upstream holds every request (until the test's teardown releases it); the retry deadline
is 1 s. The promise: the call raises ProviderTimeout within the deadline plus a small margin,
not after the SDK's 600 s per-attempt timeout. A guard of ten deadlines fails the test rather
than hanging it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llmproxy import ProviderTimeout, Proxy
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.faults.conftest import duplicate_requests, proxy_env, record_figures

DEADLINE = 1.0
MARGIN = 1.5  # seconds past the deadline a call may take to give up (cancel, close)
GUARD = 10 * DEADLINE


def make_proxy(fake: FakeOpenAI, tmp_path: Path) -> Proxy:
    retry = {"initial_backoff": 0.001, "max_backoff": 0.01, "jitter": 0.0, "deadline": DEADLINE}
    return Proxy(
        {"retry": retry},
        ledger="memory://",
        history="memory://",
        environ=proxy_env(fake, tmp_path / "data"),
    )


def chat(proxy: Proxy) -> None:
    proxy.chat("hello")


def achat(proxy: Proxy) -> None:
    asyncio.run(proxy.achat("hello"))


def stream(proxy: Proxy) -> None:
    for _ in proxy.stream("hello"):
        pass


@pytest.mark.parametrize("call", [chat, achat, stream], ids=["chat", "achat", "stream"])
def test_hung_upstream_times_out_at_the_deadline(
    call: Callable[[Proxy], None], fake: FakeOpenAI, tmp_path: Path
) -> None:
    proxy = make_proxy(fake, tmp_path)
    fake.hold()
    outcome: list[BaseException | None] = []
    finished = threading.Event()

    def run() -> None:
        try:
            call(proxy)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            finished.set()

    started = time.monotonic()
    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    try:
        fake.wait_held(1)
        done = finished.wait(GUARD)
        elapsed = time.monotonic() - started
        assert done, f"the call still hangs {GUARD} s after it began (deadline {DEADLINE} s)"
        # What the hung upstream produced (and billed) by the time the call ended.
        billed, produced = fake.billed_tokens, fake.billed_answers
    finally:
        fake.release()  # the hung upstream answers at last, so the thread can end
        caller.join(30)
        proxy.close()
    [error] = outcome
    record_figures(
        f"upstream hangs, {call.__name__}, {DEADLINE:g} s deadline",
        "memory",
        budget=None,
        billed=billed,
        used=None,
        # An answer produced before the call gave up, and not returned, is lost.
        answers_lost=produced if isinstance(error, BaseException) else 0,
        duplicates=duplicate_requests(fake),
        notes=f"{type(error).__name__} after {elapsed:.2f} s",
    )
    assert isinstance(error, ProviderTimeout), f"expected ProviderTimeout, got {error!r}"
    assert elapsed <= DEADLINE + MARGIN, f"gave up after {elapsed:.1f} s, deadline {DEADLINE} s"
