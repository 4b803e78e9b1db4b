"""The router under a hypothesis state machine, through a real Proxy and a memory ledger.

Deployments answer, fail retryably (503, 429) or refuse (400) as the rules say; a clock the
test controls moves cooldowns on. Checked after every step: no attempt went to a deployment
cooling down while another was healthy, every reservation was settled exactly once, nothing
is left held, and a call's attempts stay within ``deployments + retry.max_attempts - 1``.
At the end of a run, the weights hold: the deployments picked first by calls made while all
three were healthy (weighted picks) pass a chi-square test against the weights 1:2:3 at
p = 1e-6, once there are at least :data:`MIN_PICKS` of them. The run is derandomized (a fixed
seed for hypothesis, and so for each router's generator), so the check cannot flake.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmproxy import (
    BaseProvider,
    CallEvent,
    CallScope,
    ChatRequest,
    Completion,
    LLMBudget,
    Message,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    Proxy,
    Usage,
)
from llmproxy.budget.base import Claim, Rates, Reservation
from llmproxy.budget.memory import MemoryLedger
from llmproxy.routing import STRATEGIES, Cooldown, Deployment, Router
from llmproxy_testing.proxies import FAST_RETRY

NAMES = ("d0", "d1", "d2")
WEIGHTS = {name: float(i + 1) for i, name in enumerate(NAMES)}
MAX_ATTEMPTS = 2
#: Healthy picks needed before the weights are checked: the fewest expected (weight 1 of 6)
#: is then 50, where the chi-square approximation holds and a 1:2:3 split is told apart from
#: an even one (the test in test_routing.py shows the bound is not loose).
MIN_PICKS = 300
#: The chi-square bound for 2 degrees of freedom at p = 1e-6: -2 ln(1e-6).
CHI2_DF2_P1E6 = 27.631
#: Calls one ``burst`` step makes, so that a run reaches :data:`MIN_PICKS`.
BURST = 60


def chi_square(counts: Counter[str], weights: dict[str, float]) -> float:
    """Pearson's statistic of ``counts`` against the shares of ``weights``."""
    total = sum(counts.values())
    whole = sum(weights.values())
    return sum(
        (counts[name] - total * w / whole) ** 2 / (total * w / whole) for name, w in weights.items()
    )


class CountingLedger(MemoryLedger):
    """A memory ledger that counts each reservation's settles."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved: list[str] = []
        self.settles: Counter[str] = Counter()

    def reserve(
        self,
        claims: Any,
        *,
        input_tokens: int,
        max_output_tokens: int,
        min_output_tokens: int = 1,
        lease: float = 600.0,
        rates: Rates | None = None,
    ) -> Reservation:
        reservation = super().reserve(
            claims,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            min_output_tokens=min_output_tokens,
            lease=lease,
            rates=rates,
        )
        self.reserved.append(reservation.id)
        return reservation

    def settle(
        self, reservation: Reservation, *, tokens: int, requests: int = 1, cost: float = 0.0
    ) -> None:
        self.settles[reservation.id] += 1
        super().settle(reservation, tokens=tokens, requests=requests, cost=cost)

    def held(self, claims: list[Claim]) -> float:
        return sum(row.reserved for row in self.usage(claims))


class Scripted(BaseProvider):
    """Answers or fails as its ``mode`` says; checks the router's invariant at each attempt."""

    def __init__(self, name: str, machine: RouterMachine) -> None:
        super().__init__(None)
        self.name = name
        self.machine = machine
        self.mode = "ok"

    def chat(self, request: ChatRequest) -> Completion:
        self.machine.attempted(f"{self.name}/{request.model}")
        error: ProviderError | None = None
        if self.mode == "503":
            error = ProviderUnavailable("down", provider=self.name, model=request.model, status=503)
        elif self.mode == "429":
            error = ProviderRateLimited("busy", provider=self.name, model=request.model, status=429)
        elif self.mode == "400":
            error = ProviderBadRequest("no", provider=self.name, model=request.model, status=400)
        if error is not None:
            raise error
        return Completion(Message("assistant", self.name), Usage(4, 2), request.model, "stop")

    async def achat(self, request: ChatRequest) -> Completion:
        return self.chat(request)


class RouterMachine(RuleBasedStateMachine):
    """Calls through one alias over three deployments while their health changes."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.violations: list[str] = []
        self.attempts_in_call: list[str] = []
        self.events: list[CallEvent] = []
        self.proxy: Proxy | None = None
        self.strategy = ""
        self.healthy_picks: Counter[str] = Counter()

    @initialize(strategy=st.sampled_from(STRATEGIES), seed=st.integers(0, 2**16))
    def setup(self, strategy: str, seed: int) -> None:
        self.strategy = strategy
        self.router = Router(
            [Deployment(f"{n}/m", weight=WEIGHTS[n]) for n in NAMES],
            strategy=strategy,
            cooldown=Cooldown(seconds=10, backoff=2, max_seconds=60),
            rng=random.Random(seed),
            clock=lambda: self.now,
        )
        self.providers = {n: Scripted(n, self) for n in NAMES}
        self.ledger = CountingLedger()
        self.budget = LLMBudget(max_tokens=10**9, name="all", scope="model")
        self.proxy = Proxy(
            {"retry": {**FAST_RETRY, "max_attempts": MAX_ATTEMPTS}, "use_history": False},
            providers=self.providers,
            routers={"smart": self.router},
            ledger=self.ledger,
            history="memory://",
            budgets=[self.budget],
            observers=[self.events.append],
            environ={},
        )

    def teardown(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        # Weights hold over many calls: checked once the picks are enough to tell.
        if sum(self.healthy_picks.values()) >= MIN_PICKS:
            statistic = chi_square(self.healthy_picks, WEIGHTS)
            assert statistic < CHI2_DF2_P1E6, (self.strategy, self.healthy_picks)

    def attempted(self, model: str) -> None:
        """Called by a deployment as an attempt reaches it: was it a healthy choice?"""
        self.attempts_in_call.append(model)
        if not self.router.healthy(model):
            healthy = [n for n in NAMES if self.router.healthy(f"{n}/m")]
            if healthy:
                self.violations.append(f"{model} cooling down while {healthy} healthy")

    @rule(name=st.sampled_from(NAMES), mode=st.sampled_from(("ok", "ok", "503", "429", "400")))
    def set_mode(self, name: str, mode: str) -> None:
        self.providers[name].mode = mode

    @rule(seconds=st.sampled_from((1.0, 5.0, 15.0, 70.0)))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.proxy is not None)
    @rule()
    def call(self) -> None:
        assert self.proxy is not None
        self.attempts_in_call = []
        cooling_before = {n for n in NAMES if not self.router.healthy(f"{n}/m")}
        try:
            response = self.proxy.chat("hi", model="smart")
        except ProviderError as exc:
            assert self.events[-1].outcome == "error"
            last = self.attempts_in_call[-1].partition("/")[0]
            if not exc.retryable:  # a refusal is not moved on from
                assert self.providers[last].mode == "400"
        else:
            assert response.text == response.provider
            event = self.events[-1]
            assert event.alias == "smart" and f"{event.provider}/m" == self.attempts_in_call[-1]
            # the deployment that answered is healthy again
            assert self.router.healthy(self.attempts_in_call[-1])
        assert 1 <= len(self.attempts_in_call) <= len(NAMES) + MAX_ATTEMPTS - 1
        assert self.events[-1].attempts == len(self.attempts_in_call)
        if len(cooling_before) < len(NAMES):  # a healthy one existed: the first attempt is one
            assert self.attempts_in_call[0].partition("/")[0] not in cooling_before
        if not cooling_before and self.strategy != "lowest-latency":
            # All healthy and none in flight: the first attempt is a pick at random by weight
            # (``least-in-flight`` breaks its tie so); ``lowest-latency`` picks by latency.
            self.healthy_picks[self.attempts_in_call[0].partition("/")[0]] += 1

    @precondition(lambda self: self.proxy is not None)
    @rule()
    def burst(self) -> None:
        """Many calls in a row, each checked as :meth:`call` checks one."""
        for _ in range(BURST):
            self.call()

    @invariant()
    def no_attempt_to_a_cooling_deployment_while_another_is_healthy(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def every_reservation_settled_exactly_once(self) -> None:
        if self.proxy is None:
            return
        assert all(self.ledger.settles[r] == 1 for r in self.ledger.reserved), self.ledger.settles
        assert set(self.ledger.settles) == set(self.ledger.reserved)
        claims = [c for n in NAMES if (c := self.budget.claim(CallScope(f"{n}/m", n))) is not None]
        assert self.ledger.held(claims) == 0

    @invariant()
    def nothing_in_flight_between_calls(self) -> None:
        if self.proxy is not None:
            assert all(s.in_flight == 0 for s in self.router.status())


RouterMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, derandomize=True
)
TestRouterMachine = RouterMachine.TestCase
