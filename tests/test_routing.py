"""Routing an alias over several deployments: strategies, cooldowns, limits, configuration."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import pytest

from llmproxy import (
    BaseProvider,
    BudgetExceeded,
    CallEvent,
    CallScope,
    ChatRequest,
    Completion,
    ConfigError,
    LLMBudget,
    Message,
    ProviderRateLimited,
    ProviderUnavailable,
    Proxy,
    RateLimited,
    Usage,
    flow,
)
from llmproxy.budget.memory import MemoryLedger
from llmproxy.cache import CacheSettings, MemoryCache
from llmproxy.config import load_config
from llmproxy.routing import Cooldown, Deployment, Router, model_table
from llmproxy_testing.proxies import FAST_RETRY

# The chi-square bound for 2 degrees of freedom at p = 1e-6: -2 ln(1e-6).
CHI2_DF2_P1E6 = 27.631


def chi_square(counts: Counter[str], weights: dict[str, float]) -> float:
    total = sum(counts.values())
    whole = sum(weights.values())
    return sum(
        (counts[name] - total * w / whole) ** 2 / (total * w / whole) for name, w in weights.items()
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted(BaseProvider):
    """Answers with its name, or raises the errors queued in ``fail``."""

    def __init__(self, name: str) -> None:
        super().__init__(None)
        self.name = name
        self.fail: list[Exception] = []
        self.calls = 0

    def chat(self, request: ChatRequest) -> Completion:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        return Completion(Message("assistant", self.name), Usage(4, 2), request.model, "stop")

    async def achat(self, request: ChatRequest) -> Completion:
        return self.chat(request)


def down(name: str) -> ProviderUnavailable:
    return ProviderUnavailable("down", provider=name, model="m", status=503)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def providers() -> dict[str, Scripted]:
    return {n: Scripted(n) for n in ("a", "b", "c")}


@pytest.fixture
def events() -> list[CallEvent]:
    return []


def make(
    providers: dict[str, Scripted],
    router: Router,
    events: list[CallEvent],
    **kwargs: object,
) -> Proxy:
    config = {"retry": {**FAST_RETRY, "max_attempts": 2}, "use_history": False}
    return Proxy(
        config,
        providers=providers,
        routers={"smart": router},
        ledger="memory://",
        history="memory://",
        observers=[events.append],
        environ={},
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def proxy(providers: dict[str, Scripted], clock: Clock, events: list[CallEvent]) -> Iterator[Proxy]:
    router = Router(
        [Deployment("a/m", weight=1), Deployment("b/m", weight=2), Deployment("c/m", weight=3)],
        rng=random.Random(7),
        clock=clock,
        cooldown=Cooldown(seconds=10, backoff=2, max_seconds=25),
    )
    p = make(providers, router, events)
    yield p
    p.close()


def test_weights_hold_over_many_picks() -> None:
    weights = {"a/m": 1.0, "b/m": 2.0, "c/m": 3.0}
    router = Router([Deployment(m, weight=w) for m, w in weights.items()], rng=random.Random(42))
    counts = Counter(router.choose().model for _ in range(30_000))  # type: ignore[union-attr]
    assert chi_square(counts, weights) < CHI2_DF2_P1E6


def test_weights_hold_over_many_calls(proxy: Proxy, providers: dict[str, Scripted]) -> None:
    counts = Counter(proxy.chat("hi", model="smart").provider for _ in range(3000))
    assert chi_square(counts, {"a": 1, "b": 2, "c": 3}) < CHI2_DF2_P1E6
    assert {n: p.calls for n, p in providers.items()} == counts


def test_the_weighted_choice_is_wrong_without_weights() -> None:
    # The bound is not loose: even weights are told apart from 1:2:3 at once.
    router = Router([Deployment(m) for m in ("a/m", "b/m", "c/m")], rng=random.Random(42))
    counts = Counter(router.choose().model for _ in range(30_000))  # type: ignore[union-attr]
    assert chi_square(counts, {"a/m": 1, "b/m": 2, "c/m": 3}) > CHI2_DF2_P1E6


def test_failover_is_not_a_retry_and_cools_the_deployment_down(
    proxy: Proxy, providers: dict[str, Scripted], events: list[CallEvent], clock: Clock
) -> None:
    router = proxy.routers["smart"]
    for name, provider in providers.items():
        provider.fail = [down(name), down(name)]
    # every deployment fails once (failover, free), then one retry (max_attempts=2) fails too
    with pytest.raises(ProviderUnavailable):
        proxy.chat("hi", model="smart")
    assert events[-1].attempts == 3 + 1 and events[-1].alias == "smart"
    status = {s.model: s for s in router.status()}
    assert all(s.cooldown_left > 0 for s in status.values())
    assert max(s.failures for s in status.values()) == 2
    # the next call goes to the deployment whose cooldown ends first, and clears it
    first = min(status.values(), key=lambda s: s.cooldown_left).model
    for provider in providers.values():
        provider.fail = []
    response = proxy.chat("hi", model="smart")
    assert f"{response.provider}/m" == first
    assert router.healthy(first) and router.cooldown_left(first) == 0


def test_a_cooling_deployment_is_passed_over_until_its_cooldown_ends(
    proxy: Proxy, providers: dict[str, Scripted], clock: Clock
) -> None:
    router = proxy.routers["smart"]
    router.failed("c/m", down("c"))
    assert router.cooldown_left("c/m") == 10
    served = Counter(proxy.chat("hi", model="smart").provider for _ in range(60))
    assert served["c"] == 0 and served["a"] and served["b"]
    clock.now = 10.0
    served = Counter(proxy.chat("hi", model="smart").provider for _ in range(60))
    assert served["c"] > 0


def test_cooldown_backs_off_and_honours_retry_after(clock: Clock) -> None:
    router = Router([Deployment("a/m"), Deployment("b/m")], clock=clock)
    lengths = [router.failed("a/m", down("a")) for _ in range(3)]
    assert lengths == [5.0, 10.0, 20.0]
    busy = ProviderRateLimited("busy", provider="b", model="m", status=429, retry_after=42)
    assert router.failed("b/m", busy) == 42
    router.succeeded("a/m", 0.1)
    assert router.healthy("a/m") and router.failed("a/m", down("a")) == 5.0
    assert router.failed("a/m", ValueError("not an upstream failure")) == 0.0


def test_least_in_flight_and_lowest_latency(clock: Clock) -> None:
    router = Router(
        [Deployment("a/m"), Deployment("b/m")], strategy="least-in-flight", rng=random.Random(1)
    )
    router.started("a/m")
    assert {router.choose().model for _ in range(20)} == {"b/m"}  # type: ignore[union-attr]
    fast = Router([Deployment("a/m"), Deployment("b/m")], strategy="lowest-latency")
    fast.started("a/m")
    fast.succeeded("a/m", 2.0)
    assert fast.choose().model == "b/m"  # type: ignore[union-attr]  # unmeasured first
    fast.started("b/m")
    fast.succeeded("b/m", 0.5)
    assert {fast.choose().model for _ in range(5)} == {"b/m"}  # type: ignore[union-attr]
    for _ in range(10):  # b slows down: its moving average passes a's
        fast.started("b/m")
        fast.succeeded("b/m", 5.0)
    assert fast.choose().model == "a/m"  # type: ignore[union-attr]


def test_a_deployment_at_its_rpm_is_skipped_then_all_are_rate_limited(
    providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    router = Router([Deployment("a/m", rpm=2), Deployment("b/m", rpm=1)], rng=random.Random(3))
    proxy = make(providers, router, events)
    try:
        served = Counter(proxy.chat("hi", model="smart").provider for _ in range(3))
        assert served == {"a": 2, "b": 1}
        with pytest.raises(RateLimited) as caught:
            proxy.chat("hi", model="smart")
        assert caught.value.policy == "deployment-rpm"
        rows = proxy.usage(model="a/m") + proxy.usage(model="b/m")
        assert {(r.claim.key, r.used) for r in rows} == {
            ("deployment-rpm|model:a/m", 2.0),
            ("deployment-rpm|model:b/m", 1.0),
        }
    finally:
        proxy.close()


def test_a_deployment_at_its_tpm_is_skipped_then_all_are_over_budget(
    providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    # What one call reserves (its input bound plus max_output_tokens=2), asked of the ledger.
    probe = make(providers, Router([Deployment("a/m", tpm=1)]), events)
    with pytest.raises(BudgetExceeded) as needed:
        probe.chat("hi", model="smart", max_output_tokens=2)
    probe.close()
    need = int(needed.value.requested)
    assert need > 6  # each call reserves more than the 6 tokens it settles at
    # a has room for two calls (6 settled + need), b for one.
    router = Router(
        [Deployment("a/m", tpm=need + 6), Deployment("b/m", tpm=need)], rng=random.Random(3)
    )
    proxy = make(providers, router, events)
    try:
        served = Counter(
            proxy.chat("hi", model="smart", max_output_tokens=2).provider for _ in range(3)
        )
        assert served == {"a": 2, "b": 1}
        with pytest.raises(BudgetExceeded) as caught:
            proxy.chat("hi", model="smart", max_output_tokens=2)
        assert caught.value.policy == "deployment-tpm"
        rows = proxy.usage(model="a/m") + proxy.usage(model="b/m")
        assert {(r.claim.key, r.used) for r in rows} == {
            ("deployment-tpm|model:a/m", 12.0),
            ("deployment-tpm|model:b/m", 6.0),
        }
    finally:
        proxy.close()


def test_on_limit_wait_waits_for_a_deployment_s_rpm_window(
    providers: dict[str, Scripted], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ledger's clock is the test's, and a wait moves it on instead of sleeping.
    slept: list[float] = []

    def sleep(effect: flow.Sleep, proxy: Proxy) -> None:
        slept.append(effect.seconds)
        clock.now += effect.seconds

    monkeypatch.setattr(flow.Sleep, "run", sleep)
    router = Router([Deployment("a/m", rpm=1), Deployment("b/m", rpm=1)], rng=random.Random(3))
    proxy = Proxy(
        {"retry": FAST_RETRY, "use_history": False, "on_limit": "wait", "limit_wait": 300},
        providers=providers,
        routers={"smart": router},
        ledger=MemoryLedger(clock=clock),
        history="memory://",
        environ={},
    )
    try:
        last: dict[str, float] = {}
        for _ in range(2):
            clock.now += 10
            last[proxy.chat("hi", model="smart").provider] = clock.now
        assert sorted(last) == ["a", "b"] and not slept
        clock.now += 10  # both have used their one request of the minute
        third = proxy.chat("hi", model="smart").provider
        assert len(slept) == 1 and slept[0] > 0
        assert clock.now - last[third] >= 60  # sent once its deployment's minute had passed
        rows = proxy.usage(model="a/m") + proxy.usage(model="b/m")
        assert sum(r.used for r in rows) == 1  # the minute now holds the third call only
    finally:
        proxy.close()


def test_usage_is_counted_per_deployment_and_rolled_up_to_the_alias(
    providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    router = Router([Deployment("a/m"), Deployment("b/m")], rng=random.Random(5))
    per_deployment = LLMBudget(max_tokens=10_000, scope="model", name="per-model")
    per_alias = LLMBudget(max_tokens=10_000, scope="alias", name="per-alias")
    proxy = make(providers, router, events, budgets=[per_deployment, per_alias])
    try:
        served = Counter(proxy.chat("hi", model="smart").provider for _ in range(20))
        direct = proxy.chat("hi", model="a/m")
        assert direct.provider == "a" and events[-1].alias is None
        assert {e.alias for e in events[:-1]} == {"smart"}
        ledger = proxy.ledger
        a = ledger.usage([per_deployment.claim(CallScope("a/m", "a"))])[0].used
        b = ledger.usage([per_deployment.claim(CallScope("b/m", "b"))])[0].used
        assert (a, b) == (6 * (served["a"] + 1), 6 * served["b"])
        rollup = proxy.usage(model="smart")
        assert [r.used for r in rollup if r.claim.policy == "per-alias"] == [6 * 20]
        alone = ledger.usage([per_alias.claim(CallScope("a/m", "a"))])[0]
        assert (alone.claim.key, alone.used) == ("per-alias|alias:a/m", 6)
    finally:
        proxy.close()


def test_a_stream_fails_over_before_its_first_chunk(
    proxy: Proxy, providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    router = proxy.routers["smart"]
    providers["a"].fail = [down("a")]
    providers["b"].fail = [down("b")]
    with proxy.stream("hi", model="smart") as stream:
        text = stream.text()
    assert text in {"a", "b", "c"}
    assert events[-1].alias == "smart" and events[-1].outcome == "ok"
    assert all(s.in_flight == 0 for s in router.status())


def test_configuration_builds_routers() -> None:
    config = load_config(
        {
            "models": {
                "smart": {
                    "strategy": "least-in-flight",
                    "deployments": [
                        {"model": "openai/gpt-5.4", "weight": 3, "rpm": 10},
                        "azure/gpt-5.4",
                    ],
                    "cooldown_seconds": 1,
                    "cooldown_backoff": 3,
                    "cooldown_max_seconds": 9,
                }
            }
        }
    )
    proxy = Proxy(config, environ={}, ledger="memory://", history="memory://")
    try:
        router = proxy.routers["smart"]
        assert router.strategy == "least-in-flight"
        assert [(d.model, d.weight, d.rpm) for d in router.deployments] == [
            ("openai/gpt-5.4", 3, 10),
            ("azure/gpt-5.4", 1, None),
        ]
        assert router.cooldown == Cooldown(1, 3, 9)
        assert any(getattr(p, "name", "") == "deployment-rpm" for p in proxy.policies)
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ({}, "models.x.deployments"),
        ({"deployments": []}, "models.x.deployments"),
        ({"deployments": [{"model": "gpt-5.4"}]}, "models.x.deployments[0].model"),
        ({"deployments": [{"model": "a/m", "weight": 0}]}, "models.x.deployments[0].weight"),
        ({"deployments": [{"model": "a/m", "rpm": 1.5}]}, "models.x.deployments[0].rpm"),
        ({"deployments": [{"model": "a/m", "region": "eu"}]}, "models.x.deployments[0]"),
        ({"deployments": ["a/m", "a/m"]}, "models.x.deployments"),
        ({"deployments": ["a/m"], "strategy": "fastest"}, "models.x.strategy"),
        ({"deployments": ["a/m"], "cooldown_backoff": 0.5}, "models.x.backoff"),
        ({"deployments": ["a/m"], "cooldown": 5}, "models.x.cooldown"),
    ],
)
def test_bad_model_tables_name_the_key(table: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        model_table("x", table)
    assert caught.value.path == path


def test_an_alias_cannot_also_have_deployments() -> None:
    with pytest.raises(ConfigError, match="both an alias"):
        load_config({"aliases": {"smart": "a/m"}, "models": {"smart": {"deployments": ["b/m"]}}})


def test_one_deployment_has_one_limit() -> None:
    models = {
        "x": {"deployments": [{"model": "a/m", "rpm": 1}]},
        "y": {"deployments": [{"model": "a/m", "rpm": 2}]},
    }
    with pytest.raises(ConfigError, match="one deployment has one limit"):
        Proxy({"models": models}, environ={}, ledger="memory://", history="memory://")


async def test_async_calls_and_streams_fail_over(
    proxy: Proxy, providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    router = proxy.routers["smart"]
    providers["a"].fail = [down("a")]
    providers["b"].fail = [down("b")]
    providers["c"].fail = [down("c")]
    # every deployment fails once; the retry goes to the one whose cooldown ends first
    response = await proxy.achat("hi", model="smart")
    assert events[-1].attempts == 4 and events[-1].alias == "smart"
    assert router.healthy(f"{response.provider}/m")
    async with proxy.astream("hi", model="smart") as stream:
        text = await stream.text()
    assert text == events[-1].provider and events[-1].alias == "smart"
    assert all(s.in_flight == 0 for s in router.status())


def test_a_deployment_that_cannot_be_set_up_is_passed_over(
    providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    router = Router([Deployment("nosuch/m", weight=100), Deployment("a/m")], rng=random.Random(1))
    proxy = make(providers, router, events)
    try:
        assert {proxy.chat("hi", model="smart").provider for _ in range(5)} == {"a"}
    finally:
        proxy.close()


def test_the_alias_falls_back_when_every_deployment_is_spent(
    providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    router = Router([Deployment("a/m"), Deployment("b/m")], rng=random.Random(1))
    proxy = make(providers, router, events, fallbacks={"smart": ["c/m"]})
    try:
        providers["a"].fail = [down("a"), down("a")]
        providers["b"].fail = [down("b"), down("b")]
        response = proxy.chat("hi", model="smart")
        assert response.provider == "c"
        # two deployments (free), one retry (max_attempts=2), then the fallback
        assert providers["a"].calls + providers["b"].calls == 3 and providers["c"].calls == 1
        assert events[-1].attempts == 4 and events[-1].alias is None
    finally:
        proxy.close()


def test_a_refusal_is_not_moved_on_from(
    proxy: Proxy, providers: dict[str, Scripted], events: list[CallEvent]
) -> None:
    from llmproxy import ProviderBadRequest

    for name, provider in providers.items():
        provider.fail = [ProviderBadRequest("no", provider=name, model="m", status=400)]
    with pytest.raises(ProviderBadRequest):
        proxy.chat("hi", model="smart")
    assert sum(p.calls for p in providers.values()) == 1
    assert all(s.cooldown_left == 0 for s in proxy.routers["smart"].status())


def test_the_response_cache_answers_an_alias_whichever_deployment_is_picked(
    providers: dict[str, Scripted], clock: Clock, events: list[CallEvent]
) -> None:
    router = Router([Deployment(f"{n}/m") for n in ("a", "b", "c")], rng=random.Random(3))
    proxy = make(providers, router, events, cache=MemoryCache(CacheSettings()))
    try:
        first = proxy.chat("hi", model="smart", cache=True)
        hits = [proxy.chat("hi", model="smart", cache=True) for _ in range(20)]
    finally:
        proxy.close()
    assert sum(p.calls for p in providers.values()) == 1
    assert all(h.cache_hit and h.text == first.text for h in hits)
    assert [e.alias for e in events] == ["smart"] * 21
