"""Input reservations: the count plus the provider's margin, corrected by what billing taught.

A provider whose service bills a few more input tokens than the count (a different chat
format's overhead, a new tokenizer) must never overspend a budget: the hold covers the billed
input, so the output cap the ledger grants leaves room for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmproxy
from llmproxy import (
    BaseProvider,
    BudgetExceeded,
    ChatRequest,
    Chunk,
    Completion,
    InputMargin,
    LLMBudget,
    Message,
    ProviderSettings,
    Proxy,
    Usage,
)
from llmproxy.budget.calibration import (
    HALF_LIFE,
    MAX_OFFSET,
    MAX_RATIO,
    MIN_RATIO_COUNT,
    Calibration,
)
from llmproxy.plugins import Plugins
from llmproxy.registry import RegisterProvider
from llmproxy.tokens import DEFAULT_INPUT_MARGIN


def quarter_count(messages: Sequence[Message]) -> int:
    """A count with OpenAI's documented framing: 3 per message, 3 to prime, chars/4 of text."""
    return 3 + sum(3 + math.ceil(len(m.content) / 4) for m in messages)


class Billing(BaseProvider):
    """Counts with :func:`quarter_count`; bills input by :meth:`bill`.

    The output billed is ``output`` tokens, or the whole cap when it is None.
    """

    margin: InputMargin | None = None
    output: int | None = None

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        self.caps: list[int | None] = []

    def bill(self, messages: Sequence[Message], count: int) -> int:
        """The input the upstream bills for ``messages`` we counted as ``count``."""
        return count

    def count_tokens(self, messages: Sequence[Message], model: str) -> int:
        return quarter_count(messages)

    def input_margin(self, model: str) -> InputMargin:
        return self.margin if self.margin is not None else DEFAULT_INPUT_MARGIN

    def usage(self, request: ChatRequest) -> Usage:
        self.caps.append(request.max_output_tokens)
        billed = self.bill(request.messages, quarter_count(request.messages))
        cap = request.max_output_tokens or 1
        return Usage(billed, cap if self.output is None else min(cap, self.output))

    async def achat(self, request: ChatRequest) -> Completion:
        usage = self.usage(request)
        return Completion(Message("assistant", "ok"), usage, request.model, "length")

    async def astream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        yield Chunk("ok")
        yield Chunk(usage=self.usage(request), finish_reason="length")


def make_proxy(provider: type[Billing], limit: int) -> Proxy:
    """A Proxy whose ``billing`` provider is ``provider``, with one global token budget."""

    class Plugin:
        @llmproxy.hookimpl
        def register_providers(self, register: RegisterProvider) -> None:
            register("billing", provider)

    return Proxy(
        {"limit_wait": 0},
        budgets=[LLMBudget(max_tokens=limit)],
        plugins=Plugins(environ={}, entry_points=False, extra=[Plugin()]),
        environ={},
        history="memory://",
        ledger="memory://",
    )


def used(proxy: Proxy) -> float:
    [usage] = proxy.usage()
    assert usage.reserved == 0
    return usage.used


def call(proxy: Proxy, text: str, streamed: bool) -> None:
    if streamed:
        with proxy.stream(text, model="billing/m", max_output_tokens=10**9) as stream:
            for _ in stream:
                pass
    else:
        proxy.chat(text, model="billing/m", max_output_tokens=10**9)


# -- the finding: 4 tokens per message where the count has 3 ----------------------------------


class FourPerMessage(Billing):
    """The server of the finding: 4 tokens per message + chars/4 (the count says 3)."""

    def bill(self, messages: Sequence[Message], count: int) -> int:
        return count + len(messages)


class FourPerMessageNoMargin(FourPerMessage):
    """The same server, with a provider that declares no margin at all (the old behaviour)."""

    margin = InputMargin(per_message=0, overall=0, tools=0, ratio=0.0)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_server_counting_four_per_message_never_reaches_201(streamed: bool) -> None:
    proxy = make_proxy(FourPerMessage, 200)
    try:
        texts = iter(["Tell me a story about a lighthouse keeper.", "go on", "and then?"] * 20)
        refused = None
        for text in texts:
            try:
                call(proxy, text, streamed)
            except BudgetExceeded as exc:
                refused = exc
                break
        assert refused is not None
        assert 150 < used(proxy) <= 200  # spent up to the limit, never past it
    finally:
        proxy.close()


def test_without_a_margin_the_same_server_overspends() -> None:
    """The control: the scenario above does overspend when nothing covers the overhead."""
    proxy = make_proxy(FourPerMessageNoMargin, 200)
    try:
        call(proxy, "Tell me a story about a lighthouse keeper.", False)
        assert used(proxy) == 201
    finally:
        proxy.close()


# -- any overhead within the declared margin ---------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    per_message=st.integers(0, 6),
    overall=st.integers(0, 20),
    ratio=st.sampled_from([0.0, 0.02, 0.05]),
    data=st.data(),
    limit=st.integers(20, 3_000),
)
def test_overhead_within_the_margin_never_overspends_nor_refuses_early(
    per_message: int, overall: int, ratio: float, data: st.DataObject, limit: int
) -> None:
    margin = InputMargin(per_message=per_message, overall=overall, tools=0, ratio=ratio)
    k = data.draw(st.integers(0, per_message), label="billed per message")
    c = data.draw(st.integers(0, overall), label="billed per request")
    share = data.draw(st.integers(0, 100), label="percent of the ratio billed")

    class Declared(Billing):
        def bill(self, messages: Sequence[Message], count: int) -> int:
            return count + k * len(messages) + c + math.floor(count * ratio * share / 100)

    Declared.margin = margin
    texts = data.draw(
        st.lists(st.text(min_size=1, max_size=400).filter(str.strip), min_size=1, max_size=8),
        label="prompts",
    )
    streams = data.draw(st.lists(st.booleans(), min_size=len(texts), max_size=len(texts)))
    proxy = make_proxy(Declared, limit)
    try:
        for text, streamed in zip(texts, streams, strict=True):
            before = used(proxy)
            needed = margin.reserve(quarter_count([Message("user", text)]), messages=1) + 1
            try:
                call(proxy, text, streamed)
            except BudgetExceeded:
                # Refused only when the count, the margin and one output token do not fit.
                assert limit - before < needed
                break
            assert limit - before >= needed
            assert used(proxy) <= limit
    finally:
        proxy.close()


# -- learning ----------------------------------------------------------------------------------


class FivePercentMore(Billing):
    """A tokenizer 5% off: the upstream bills 5% more input than the count."""

    margin = InputMargin(per_message=1, overall=4, tools=0, ratio=0.02)
    output = 1

    def bill(self, messages: Sequence[Message], count: int) -> int:
        return math.ceil(count * 1.05)


@pytest.mark.parametrize("streamed", [False, True])
def test_five_percent_more_is_learned_and_the_next_reservation_grows(streamed: bool) -> None:
    limit = 1_000_000
    proxy = make_proxy(FivePercentMore, limit)
    text = "word " * 2_000
    count = quarter_count([Message("user", text)])
    billed = math.ceil(count * 1.05)
    try:
        call(proxy, text, streamed)
        provider = proxy.provider("billing")
        assert isinstance(provider, FivePercentMore)
        first = limit - (provider.caps[-1] or 0)  # the input the first call reserved
        assert first == InputMargin(1, 4, 0, 0.02).reserve(count, messages=1) < billed
        spent = used(proxy)
        call(proxy, text, streamed)
        second = limit - spent - (provider.caps[-1] or 0)
        assert billed <= second < billed + 10  # learned: the hold covers the bill, just
        assert used(proxy) <= limit
    finally:
        proxy.close()


def test_a_template_preamble_is_learned_as_an_offset() -> None:
    """A constant 40 tokens more on small prompts: an offset, not a ratio."""

    class Preamble(Billing):
        margin = InputMargin(per_message=1, overall=4, tools=0, ratio=0.02)
        output = 1

        def bill(self, messages: Sequence[Message], count: int) -> int:
            return count + 40

    proxy = make_proxy(Preamble, 1_000_000)
    try:
        call(proxy, "hi", False)
        ratio, offset = proxy.calibration.learned("billing", "m")
        assert ratio == 1.0 and offset > 0
        provider = proxy.provider("billing")
        assert isinstance(provider, Preamble)
        spent = used(proxy)
        call(proxy, "hello there", False)
        count = quarter_count([Message("user", "hello there")])
        assert 1_000_000 - spent - (provider.caps[-1] or 0) >= count + 40
    finally:
        proxy.close()


def test_calibration_decays_and_is_bounded() -> None:
    now = [0.0]
    table = Calibration(clock=lambda: now[0])
    exact = InputMargin(per_message=0, overall=0, tools=0, ratio=0.0)
    # Small counts teach an offset, never a ratio.
    table.observe("p", "m", exact, billed=MIN_RATIO_COUNT, counted=MIN_RATIO_COUNT - 1, messages=1)
    assert table.learned("p", "m") == (1.0, 1)
    # A nonsense bill is bounded.
    table.observe("p", "m", exact, billed=10**9, counted=1_000, messages=1)
    assert table.learned("p", "m") == (MAX_RATIO, MAX_OFFSET)
    now[0] = 2 * HALF_LIFE
    ratio, offset = table.learned("p", "m")
    assert ratio == pytest.approx(1 + (MAX_RATIO - 1) / 4)
    assert offset == MAX_OFFSET // 4
    # A bill below the count teaches nothing; an estimated usage is never observed at all.
    table.observe("q", "m", exact, billed=900, counted=1_000, messages=1)
    assert table.learned("q", "m") == (1.0, 0)
    table.clear()
    assert table.learned("p", "m") == (1.0, 0)
    with pytest.raises(ValueError, match="half_life"):
        Calibration(half_life=0)


def test_input_margin_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="per_message"):
        InputMargin(per_message=-1)
    with pytest.raises(ValueError, match="ratio"):
        InputMargin(ratio=float("nan"))
    with pytest.raises(ValueError, match="tools"):
        InputMargin(tools=1.5)  # type: ignore[arg-type]


def test_a_broken_margin_falls_back_to_the_default(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Billing):
        def input_margin(self, model: str) -> InputMargin:
            raise RuntimeError("plugin bug")

    proxy = make_proxy(Broken, 10_000)
    try:
        with caplog.at_level(logging.ERROR, logger="llmproxy"):
            proxy.chat("hello", model="billing/m", max_output_tokens=100)
        assert "failed to give its input margin" in caplog.text
        provider = proxy.provider("billing")
        assert isinstance(provider, Broken)
        count = quarter_count([Message("user", "hello")])
        assert provider.caps[-1] == 100  # the default margin left plenty of room
        assert DEFAULT_INPUT_MARGIN.reserve(count, messages=1) > count
    finally:
        proxy.close()
