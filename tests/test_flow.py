"""The one request flow: its drivers, dropped streams, the output cap a budget imposed."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmproxy import InvalidRequest, LLMBudget, Proxy
from llmproxy.budget.base import Ledger, Reservation
from llmproxy.call import CallOptions
from llmproxy.flow import Closed, Deliver, Effect, call_flow
from llmproxy_testing._http import Reply
from llmproxy_testing.fake_openai import FakeOpenAI
from tests.conftest import chat_requests

MakeProxy = Callable[..., Proxy]


class _SettleSignal:
    """Wraps a ledger so a test can wait for its next settle (sync or async) to finish."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.done = threading.Event()
        self.threads: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settle, asettle = self.ledger.settle, self.ledger.asettle

        def sync_settle(reservation: Reservation, **kwargs: Any) -> None:
            settle(reservation, **kwargs)
            self.threads.append(threading.current_thread().name)
            self.done.set()

        async def async_settle(reservation: Reservation, **kwargs: Any) -> None:
            await asettle(reservation, **kwargs)
            self.threads.append(threading.current_thread().name)
            self.done.set()

        monkeypatch.setattr(self.ledger, "settle", sync_settle)
        monkeypatch.setattr(self.ledger, "asettle", async_settle)


async def test_a_dropped_async_stream_is_finished_on_its_own_loop(
    make_proxy: MakeProxy, upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    signal = _SettleSignal(proxy.ledger)
    signal.install(monkeypatch)
    upstream.enqueue(Reply(text="alpha beta gamma delta", chunk_delay=0.01))
    stream = proxy.astream("go", session_id="s")
    first = await anext(stream)
    assert first.text == "alpha"
    assert proxy.usage()[0].reserved > 0
    del stream
    gc.collect()
    assert not signal.done.is_set()  # nothing was settled inside the finaliser
    await asyncio.wait_for(asyncio.to_thread(signal.done.wait), 10)
    assert set(signal.threads) == {threading.current_thread().name}  # on the stream's loop
    assert proxy.usage()[0].reserved == 0
    stored = await proxy.history.aload("s")
    assert stored[-1].message.interrupted and stored[-1].content == "alpha"


def test_an_async_stream_dropped_after_its_loop_ended_is_finished_on_a_thread(
    make_proxy: MakeProxy, upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    signal = _SettleSignal(proxy.ledger)
    signal.install(monkeypatch)
    upstream.enqueue(Reply(text="alpha beta gamma delta", chunk_delay=0.01))

    async def start() -> Any:
        stream = proxy.astream("go", session_id="s")
        assert (await anext(stream)).text == "alpha"
        return stream

    holder = [asyncio.run(start())]
    assert proxy.usage()[0].reserved > 0
    holder.clear()
    gc.collect()
    assert signal.done.wait(10)
    assert set(signal.threads) == {"llmproxy-stream-finish"}
    assert proxy.usage()[0].reserved == 0
    assert proxy.history.load("s")[-1].message.interrupted


async def test_an_async_stream_never_read_holds_nothing(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    async with proxy.astream("go", session_id="s"):
        pass
    assert upstream.requests == []
    assert proxy.usage()[0].used == 0


def test_a_budget_that_caps_the_output_says_so(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=40)])
    upstream.enqueue(Reply(text=" ".join(f"w{i}" for i in range(60))))
    response = proxy.chat("Hello", max_output_tokens=500)
    sent = chat_requests(upstream)[0]["max_completion_tokens"]
    assert response.max_output_tokens == sent
    assert sent < 500
    assert response.budget_capped
    assert response.finish_reason == "length" and response.cut_short_by_budget

    roomy = make_proxy(budgets=[LLMBudget(max_tokens=10_000, name="roomy")])
    whole = roomy.chat("Hello", max_output_tokens=5)
    assert whole.max_output_tokens == 5 and not whole.budget_capped
    free = make_proxy()
    assert not free.chat("Hello").budget_capped


def test_a_streamed_answer_capped_by_the_budget_says_so(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    proxy = make_proxy(budgets=[LLMBudget(max_tokens=40)])
    upstream.enqueue(Reply(text=" ".join(f"w{i}" for i in range(60))))
    with proxy.stream("Hello", max_output_tokens=500) as stream:
        final = next(e for e in stream if e.done)
    assert final.response is not None and final.response.cut_short_by_budget
    assert stream.response is final.response


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_tool_rounds": -1}, "max_tool_rounds"),
        ({"fallbacks": "openai/x"}, "fallbacks"),
        ({"tags": {"team": 1}}, "tags"),
        ({"model": 42}, "model"),
    ],
)
def test_call_options_refuse_bad_values_by_name(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        CallOptions(**options)
    assert caught.value.field == field


def test_call_options_are_frozen() -> None:
    options = CallOptions(model="openai/gpt-5.4-mini")
    with pytest.raises(AttributeError):
        options.model = "other"  # type: ignore[misc]


def _effects(proxy: Proxy, flow: Iterator[Effect]) -> list[str]:
    """Drive a flow by hand, blocking, and name each effect it asked for."""
    names: list[str] = []
    gen: Any = flow
    value: Any = None
    while True:
        try:
            effect = gen.send(value)
        except StopIteration:
            return names
        names.append(type(effect).__name__)
        value = None if isinstance(effect, Deliver) else effect.run(proxy)


def test_the_flow_asks_for_each_step_in_order(make_proxy: MakeProxy, upstream: FakeOpenAI) -> None:
    from llmproxy.call import Call

    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    whole = Call(proxy, "Hello", CallOptions(session_id="s"), False)
    assert _effects(proxy, call_flow(whole)) == [
        "LoadHistory",
        "Reserve",
        "Attempt",
        "SettleAndStore",
    ]
    upstream.enqueue(Reply(text="alpha beta"))
    streamed = Call(proxy, "Hello", CallOptions(session_id="s"), True)
    effects = _effects(proxy, call_flow(streamed))
    # Ready (the Deliver after the reserve), then chunks and their events, the end of the
    # upstream stream, the final event, and one write that settles and stores.
    assert effects[:4] == ["LoadHistory", "Reserve", "Deliver", "OpenStream"]
    assert effects[-3:] == ["NextChunk", "Deliver", "SettleAndStore"]
    assert set(effects[4:-3]) == {"NextChunk", "Deliver"}
    assert effects.count("Deliver") == 1 + 2 + 1  # ready, "alpha", " beta", the final event


def test_closing_a_stream_in_flight_settles_what_arrived(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    from llmproxy.call import Call

    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    upstream.enqueue(Reply(text="alpha beta gamma", chunk_delay=0.01))
    call = Call(proxy, "Hello", CallOptions(session_id="s"), True)
    flow = call_flow(call)
    assert proxy._drive(flow).event is None  # ready
    assert proxy._drive(flow).event.text == "alpha"
    assert proxy._drive(flow, Closed()) is None
    assert proxy.usage()[0].reserved == 0
    assert call.final is not None and call.final.message.interrupted


def test_a_cost_budget_alone_caps_the_output_sent_upstream(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    from llmproxy import CostBudget

    # gpt-5.4-mini is priced by the OpenAI plugin; a budget of a tiny fraction of a cent leaves
    # room for far fewer output tokens than the default cap.
    proxy = make_proxy(budgets=[CostBudget(max_usd=0.0005)])
    upstream.enqueue(Reply(text=" ".join(f"w{i}" for i in range(2000))))
    response = proxy.chat("Hello", model="openai/gpt-5.4-mini")
    sent = chat_requests(upstream)[0]["max_completion_tokens"]
    assert response.max_output_tokens == sent
    assert sent < 4096
    assert response.cut_short_by_budget
    [usage] = proxy.usage(model="openai/gpt-5.4-mini")
    assert usage.used <= 0.0005 and usage.reserved == 0


@pytest.mark.parametrize(
    ("prompt", "options", "field"),
    [
        ("\ud800", {}, "prompt"),
        (
            [{"role": "user", "content": "ok"}, {"role": "user", "content": "bad \udfff"}],
            {},
            "prompt[1].content",
        ),
        ("fine", {"system": "sys \ud800"}, "system"),
    ],
)
def test_a_lone_surrogate_is_refused_before_anything_is_sent(
    make_proxy: MakeProxy, upstream: FakeOpenAI, prompt: Any, options: dict[str, Any], field: str
) -> None:
    proxy = make_proxy()
    with pytest.raises(InvalidRequest, match="lone surrogate") as caught:
        proxy.chat(prompt, **options)
    assert caught.value.field == field
    assert upstream.requests == []
    assert proxy.chat("caf\u00e9 \U0001f600").text  # non-ASCII text that is valid goes through


def test_count_input_is_the_providers_count_and_sends_nothing(
    make_proxy: MakeProxy, upstream: FakeOpenAI
) -> None:
    from llmproxy import Message

    proxy = make_proxy(budgets=[LLMBudget(max_tokens=1000)])
    provider = proxy.provider("openai")
    alone = proxy.count_input("Hello there", model="openai/gpt-5.4-mini")
    assert alone == provider.count_tokens([Message("user", "Hello there")], "gpt-5.4-mini")
    with_system = proxy.count_input("Hello there", model="openai/gpt-5.4-mini", system="Be brief")
    assert with_system > alone

    def get_weather(city: str) -> str:
        """Weather of a city."""
        return "sunny"

    assert proxy.count_input("Hello there", tools=[get_weather]) > alone
    assert upstream.requests == []
    assert proxy.usage()[0].used == 0 and proxy.usage()[0].reserved == 0
