"""A call's overall deadline holds during an attempt, streams included; live holds are renewed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmproxy import LLMBudget, ProviderTimeout, Proxy, StreamInterrupted
from llmproxy.budget.base import Reservation
from llmproxy.budget.memory import MemoryLedger
from llmproxy.budget.renewal import Renewer
from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests

MakeProxy = Callable[..., Proxy]

HANG = 30.0
"""How long the fake upstream waits before answering: far past every deadline below."""


def _deadline(seconds: float, attempts: int = 1) -> dict[str, Any]:
    return {"retry": {"deadline": seconds, "max_attempts": attempts, "initial_backoff": 0.001}}


async def test_a_hung_upstream_is_cut_off_at_the_deadline_in_the_event_loop(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(_deadline(0.3), budgets=[LLMBudget(max_tokens=1000)])
    upstream.enqueue(Reply(text="late", delay=HANG))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="deadline"):
        await proxy.achat("Hello")
    assert time.monotonic() - started < HANG / 2  # not the upstream's answer: the deadline
    [usage] = proxy.usage()
    assert usage.reserved == 0 and usage.used == 0


def test_each_attempt_is_told_the_time_left(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    seen: list[float | None] = []
    proxy = make_proxy(_deadline(50.0, attempts=3))
    provider = proxy.provider("openai")
    chat = provider.chat

    def spy(request: Any) -> Any:
        seen.append(request.timeout)
        return chat(request)

    provider.chat = spy  # type: ignore[method-assign]
    from llmproxy_testing._http import Fault

    upstream.enqueue(Fault.status(503))
    upstream.enqueue(Reply(text="fine"))
    assert proxy.chat("Hello").text == "fine"
    assert len(seen) == 2
    first, second = seen
    assert first is not None and second is not None
    assert 0 < second <= first <= 50.0


def test_no_deadline_leaves_the_providers_own_timeouts(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"retry": {"deadline": None}})
    from llmproxy.call import Call, CallOptions

    assert Call(proxy, "x", CallOptions(), False).build_request().timeout is None
    assert Call(proxy, "x", CallOptions(), True).build_request().timeout is None


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_stream_past_its_deadline_ends_interrupted(
    make_proxy: MakeProxy, upstream: FakeOpenAI, asynchronous: bool
) -> None:
    proxy = make_proxy(_deadline(0.3), budgets=[LLMBudget(max_tokens=10_000)])
    upstream.enqueue(Reply(text=" ".join(f"w{i}" for i in range(400)), chunk_delay=0.01))
    received: list[str] = []

    async def read() -> None:
        if asynchronous:
            async for event in proxy.astream("go", session_id="s"):
                received.append(event.text)
        else:
            for event in proxy.stream("go", session_id="s"):
                received.append(event.text)

    with pytest.raises(StreamInterrupted, match="deadline"):
        await read()
    assert received and len(received) < 400
    stored = proxy.history.load("s")
    assert stored[-1].message.interrupted and stored[-1].content == "".join(received)
    [usage] = proxy.usage()
    assert usage.reserved == 0 and usage.used > 0
    assert chat_requests(upstream)[0]["stream"] is True


async def test_a_stream_whose_first_text_never_comes_is_cut_off_at_the_deadline(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(_deadline(0.3), budgets=[LLMBudget(max_tokens=1000)])
    upstream.enqueue(Reply(text="late", delay=HANG))
    with pytest.raises(ProviderTimeout, match="deadline"):
        async for _event in proxy.astream("go"):
            pass
    assert proxy.usage()[0].reserved == 0


class _RenewingLedger(MemoryLedger):
    """A memory ledger that counts renewals and signals after ``wanted`` of them."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.renewed: list[tuple[str, float]] = []
        self.enough = threading.Event()
        self.wanted = wanted

    def renew(self, reservation: Reservation, *, lease: float) -> bool:
        self.renewed.append((reservation.id, lease))
        if len(self.renewed) >= self.wanted:
            self.enough.set()
        return True


def test_the_renewer_renews_live_holds_until_they_end() -> None:
    ledger = _RenewingLedger(wanted=3)
    renewer = Renewer(lambda: ledger, lease=0.15)
    claims: list[Any] = []
    reservation = ledger.reserve(
        claims, input_tokens=0, max_output_tokens=0, min_output_tokens=0, lease=0.15
    )
    renewer.hold(reservation)
    try:
        assert ledger.enough.wait(10)
        assert {rid for rid, _ in ledger.renewed} == {reservation.id}
        assert all(lease == 0.15 for _, lease in ledger.renewed)
        renewer.release(reservation)
        assert renewer.live() == 0
    finally:
        renewer.close()


def test_a_hold_lost_without_a_settle_stops_being_renewed() -> None:
    now = [0.0]
    ledger = _RenewingLedger(wanted=1)
    renewer = Renewer(lambda: ledger, lease=0.15, clock=lambda: now[0], max_age=1.0)
    reservation = ledger.reserve(
        [], input_tokens=0, max_output_tokens=0, min_output_tokens=0, lease=0.15
    )
    renewer.hold(reservation)
    try:
        now[0] = 0.06  # due: renewed
        assert ledger.enough.wait(10)
        now[0] = 10.0  # far past the longest call: a lost hold, left to expire (charged)
        for _ in range(1000):
            if renewer.live() == 0:
                break
            time.sleep(0.01)
        assert renewer.live() == 0
    finally:
        renewer.close()


async def test_a_slow_call_keeps_its_hold_past_the_lease(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    ledger = _RenewingLedger(wanted=2)
    proxy = make_proxy(
        {"reservation_lease": 0.15, **_deadline(1.0)},
        ledger=ledger,
        budgets=[LLMBudget(max_tokens=1000)],
    )
    upstream.enqueue(Reply(text="slow", delay=HANG))
    with pytest.raises(ProviderTimeout):
        await proxy.achat("Hello", max_output_tokens=5)
    # Renewed while the upstream kept it waiting (the lease is far shorter than the call).
    assert ledger.enough.is_set()
    assert proxy.usage()[0].reserved == 0
    assert proxy._renewer.live() == 0
