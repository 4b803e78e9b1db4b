"""Prometheus metrics: ``GET /metrics`` of ``llmproxy serve`` (two workers, one view) and the
collector's counts, parsed with prometheus-client's own text parser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.errors import (
    BudgetExceeded,
    ConfigError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from llmproxy.types import CallEvent, Usage
from llmproxy_gateway import env
from llmproxy_gateway import metrics as metrics_module
from llmproxy_gateway.metrics import BudgetCollector, GatewayMetrics
from llmproxy_testing._http import Fault
from llmproxy_testing.fake_openai import FakeOpenAI

from .conftest import ADMIN_KEY, UPSTREAM_KEY, GatewayProcess, serve_gateway

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0.0 when absent."""
    return found.get((name, frozenset(labels.items())), 0.0)


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


# -- the collector, in this process ------------------------------------------------------------


def event(**fields: Any) -> CallEvent:
    base: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "provider": "openai",
        "usage": Usage(10, 5),
        "latency": 0.3,
        "session_id": None,
        "user": "alice",
        "key": "k1",
    }
    base.update(fields)
    return CallEvent(**base)


def test_events_are_counted_by_model_provider_key_and_outcome() -> None:
    metrics = GatewayMetrics(key_label=lambda key_id: {"k1": "ci"}.get(key_id, key_id))
    metrics.observe(
        event(
            usage=Usage(
                10, 5, cached_input_tokens=4, reasoning_tokens=2, cost=0.5, cache_write_tokens=3
            )
        )
    )
    metrics.observe(event(streamed=True, ttft=0.15, latency=1.2, usage=Usage(3, 7, cost=0.25)))
    metrics.observe(event(key="k2", outcome="interrupted", streamed=True, ttft=0.4))
    found = samples(metrics.render().decode())

    ci = {"model": "gpt-4o-mini", "provider": "openai", "key": "ci"}
    assert value(found, "llmproxy_requests_total", **ci, outcome="ok") == 2
    assert value(found, "llmproxy_requests_total", **ci, outcome="error") == 0
    assert (
        value(found, "llmproxy_requests_total", **{**ci, "key": "k2"}, outcome="interrupted") == 1
    )
    assert value(found, "llmproxy_tokens_total", **ci, kind="input") == 13
    assert value(found, "llmproxy_tokens_total", **ci, kind="output") == 12
    assert value(found, "llmproxy_tokens_total", **ci, kind="cached") == 4
    assert value(found, "llmproxy_tokens_total", **ci, kind="cache_write") == 3
    assert value(found, "llmproxy_tokens_total", **ci, kind="reasoning") == 2
    assert value(found, "llmproxy_spend_usd_total", **ci) == pytest.approx(0.75)
    model = {"model": "gpt-4o-mini", "provider": "openai"}
    assert value(found, "llmproxy_request_duration_seconds_count", **model) == 3
    assert value(found, "llmproxy_request_duration_seconds_sum", **model) == pytest.approx(1.8)
    assert value(found, "llmproxy_request_duration_seconds_bucket", **model, le="0.5") == 2
    # Only the two streams have a time to first token.
    assert value(found, "llmproxy_time_to_first_token_seconds_count", **model) == 2
    assert value(found, "llmproxy_time_to_first_token_seconds_bucket", **model, le="0.2") == 1
    # The secret is never a label: only key names (or ids) appear.
    assert {dict(ls).get("key") for (_n, ls) in found} <= {None, "ci", "k2"}


def test_cache_hits_are_counted_as_requests_with_no_tokens() -> None:
    metrics = GatewayMetrics()
    metrics.observe(event())
    metrics.observe(event(usage=Usage(), cache_hit=True))
    metrics.observe(event(usage=Usage(), cache_hit=True, streamed=True, ttft=0.01))
    found = samples(metrics.render().decode())
    labels = {"model": "gpt-4o-mini", "provider": "openai", "key": "k1"}
    assert value(found, "llmproxy_cache_hits_total", **labels) == 2
    assert value(found, "llmproxy_requests_total", **labels, outcome="ok") == 3
    assert value(found, "llmproxy_tokens_total", **labels, kind="input") == 10


def test_refusals_and_upstream_errors_are_counted_by_kind() -> None:
    metrics = GatewayMetrics()
    limited = RateLimited(policy="rpm", scope="key:k1", limit=1, window=60, retry_after=3)
    spent = BudgetExceeded(policy="b", scope="key:k1", limit=1, used=1, reserved=0, requested=1)
    late = ProviderTimeout("took too long", provider="openai", model="gpt-4o-mini")
    for error in (limited, limited, spent, late):
        metrics.observe(event(outcome="error", error=error, usage=Usage()))
    found = samples(metrics.render().decode())

    labels = {"model": "gpt-4o-mini", "provider": "openai", "key": "k1"}
    assert value(found, "llmproxy_requests_total", **labels, outcome="error") == 4
    assert value(found, "llmproxy_rate_limited_total", **labels) == 2
    assert value(found, "llmproxy_budget_exceeded_total", **labels) == 1
    assert (
        value(
            found,
            "llmproxy_upstream_errors_total",
            model="gpt-4o-mini",
            provider="openai",
            kind="ProviderTimeout",
        )
        == 1
    )
    assert total(found, "llmproxy_upstream_errors_total") == 1


def test_attempt_errors_are_counted_where_their_attempts_went() -> None:
    metrics = GatewayMetrics()
    retried = ProviderUnavailable("busy", provider="openai", model="gpt-4o-mini", status=503)
    moved = ProviderUnavailable("overloaded", provider="azure", model="gpt-4o", status=529)
    metrics.observe(event(attempt_errors=(retried,)))
    late = ProviderTimeout("late", provider="openai", model="gpt-4o-mini")
    metrics.observe(event(outcome="error", error=late, attempt_errors=(retried, moved)))
    metrics.observe(event(attempt_errors=(ValueError("not an upstream error"),)))
    found = samples(metrics.render().decode())

    here = {"model": "gpt-4o-mini", "provider": "openai"}
    assert value(found, "llmproxy_upstream_errors_total", **here, kind="ProviderUnavailable") == 2
    assert value(found, "llmproxy_upstream_errors_total", **here, kind="ProviderTimeout") == 1
    there = {"model": "gpt-4o", "provider": "azure"}
    assert value(found, "llmproxy_upstream_errors_total", **there, kind="ProviderUnavailable") == 1
    assert total(found, "llmproxy_upstream_errors_total") == 4
    assert value(found, "llmproxy_requests_total", **here, key="k1", outcome="ok") == 2
    assert total(found, "llmproxy_requests_total", model="gpt-4o") == 0  # no call ended there


def test_a_retried_503_then_ok_is_counted_once_through_a_proxy(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    from llmproxy import Proxy

    metrics = GatewayMetrics()
    proxy = Proxy(
        {"retry": {"max_attempts": 2, "initial_backoff": 0.001, "jitter": 0.0}},
        environ={
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "OPENAI_BASE_URL": upstream.base_url,
            "LLMPROXY_DATA_DIR": str(tmp_path),
        },
        history="memory://",
        ledger="memory://",
        observers=[metrics.observe],
    )
    try:
        upstream.enqueue(Fault.status(503))
        proxy.chat("hi", model="openai/gpt-4o-mini")
        upstream.enqueue(Fault.status(503), Fault.status(503))  # retried, then the call's end
        with pytest.raises(ProviderUnavailable):
            proxy.chat("hi", model="openai/gpt-4o-mini")
    finally:
        proxy.close()
    found = samples(metrics.render().decode())
    labels = {"model": "gpt-4o-mini", "provider": "openai"}
    assert value(found, "llmproxy_requests_total", **labels, key="", outcome="ok") == 1
    assert value(found, "llmproxy_requests_total", **labels, key="", outcome="error") == 1
    # One for the first call's retried attempt, two for the second's (not three).
    assert value(found, "llmproxy_upstream_errors_total", **labels, kind="ProviderUnavailable") == 3


def test_an_error_seen_in_an_event_is_not_counted_again_as_rejected() -> None:
    metrics = GatewayMetrics()
    seen = ProviderTimeout("late", provider="openai", model="gpt-4o-mini")
    metrics.observe(event(outcome="error", error=seen))
    assert metrics.counted(seen)
    assert not metrics.counted(ValueError("a bad body"))
    metrics.rejected("k1")
    metrics.rejected(None)
    found = samples(metrics.render().decode())
    rejected = {"model": "", "provider": "", "outcome": "rejected"}
    assert value(found, "llmproxy_requests_total", **rejected, key="k1") == 1
    assert value(found, "llmproxy_requests_total", **rejected, key="") == 1


def test_made_up_model_names_past_the_bound_count_as_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_MODELS", 3)
    metrics = GatewayMetrics()
    late = ProviderTimeout("late", provider="openai", model="x")
    for n in range(10):
        metrics.observe(event(model=f"made-up-{n}", outcome="error", error=late))
    found = samples(metrics.render().decode())
    models = {dict(ls)["model"] for (name, ls) in found if name == "llmproxy_requests_total"}
    assert models == {"made-up-0", "made-up-1", "made-up-2", "other"}
    other = {"model": "other", "provider": "openai", "key": "k1"}
    assert value(found, "llmproxy_requests_total", **other, outcome="error") == 7
    del other["key"]
    assert value(found, "llmproxy_upstream_errors_total", **other, kind="ProviderTimeout") == 7
    assert value(found, "llmproxy_request_duration_seconds_count", **other) == 7


def test_the_budget_collector_reads_the_rows_at_each_scrape() -> None:
    rows = [{"id": "key-requests-3-minute|key:k1", "unit": "requests", "used": 1, "limit": 3}]
    metrics = GatewayMetrics(budgets=lambda: rows)
    first = samples(metrics.render().decode())
    budget = {"budget": "key-requests-3-minute|key:k1", "unit": "requests"}
    assert value(first, "llmproxy_budget_used", **budget) == 1
    assert value(first, "llmproxy_budget_limit", **budget) == 3
    rows[0] = {**rows[0], "used": 2}
    assert value(samples(metrics.render().decode()), "llmproxy_budget_used", **budget) == 2


def test_a_ledger_that_cannot_be_read_leaves_the_gauges_empty() -> None:
    def broken() -> list[dict[str, Any]]:
        raise OSError("the ledger is down")

    families = {f.name: f for f in BudgetCollector(broken).collect()}
    assert set(families) == {"llmproxy_budget_used", "llmproxy_budget_limit"}
    assert all(not f.samples for f in families.values())
    metrics = GatewayMetrics(budgets=broken)
    metrics.observe(event())
    assert "llmproxy_requests_total" in metrics.render().decode()  # the scrape still works


def test_metrics_variables() -> None:
    assert env.metrics_port({}) is None
    assert env.metrics_port({env.METRICS_PORT: "9464"}) == 9464
    assert env.metrics_port({env.METRICS_PORT: "0"}) == 0
    for bad in ("-1", "65536", "nine"):
        with pytest.raises(ConfigError, match=env.METRICS_PORT):
            env.metrics_port({env.METRICS_PORT: bad})
    assert env.metrics_open({}) is False
    assert env.metrics_open({env.METRICS_PORT: "9464", env.METRICS_AUTH: "none"}) is True
    assert env.metrics_open({env.METRICS_PORT: "9464", env.METRICS_AUTH: "admin"}) is False
    with pytest.raises(ConfigError, match="needs LLMPROXY_GATEWAY_METRICS_PORT"):
        env.metrics_open({env.METRICS_AUTH: "none"})
    with pytest.raises(ConfigError, match="admin or none"):
        env.metrics_open({env.METRICS_PORT: "9464", env.METRICS_AUTH: "open"})


def test_serve_flags_win_over_the_metrics_variables() -> None:
    # --metrics-port and --metrics-auth (the given values) over the variables.
    assert env.metrics_port({}, 9464) == 9464
    assert env.metrics_port({env.METRICS_PORT: "9000"}, 0) == 0
    assert env.metrics_port({env.METRICS_PORT: "nine"}, 9464) == 9464
    with pytest.raises(ConfigError, match="--metrics-port must be a port number"):
        env.metrics_port({}, 70000)
    assert env.metrics_open({}, "none", 9464) is True
    assert env.metrics_open({env.METRICS_PORT: "9464"}, "none") is True
    assert env.metrics_open({env.METRICS_AUTH: "none"}, None, 0) is True  # the flag's port
    assert env.metrics_open({env.METRICS_PORT: "9464", env.METRICS_AUTH: "none"}, "admin") is False
    with pytest.raises(ConfigError, match="--metrics-auth none needs"):
        env.metrics_open({}, "none")
    with pytest.raises(ConfigError, match="--metrics-auth must be admin or none"):
        env.metrics_open({}, "open", 9464)


# -- llmproxy serve --workers 2 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("metrics")
    yield from serve_gateway(
        upstream,
        root,
        LLMPROXY_GATEWAY_WORKERS="2",
        LLMPROXY_GATEWAY_METRICS_PORT="0",
        LLMPROXY_GATEWAY_METRICS_AUTH="none",
    )


def metrics_url(gateway: GatewayProcess) -> str:
    found = re.search(r"metrics: (http://\S+/metrics)", gateway.announced)
    assert found is not None, gateway.announced
    return found.group(1)


def scrape(gateway: GatewayProcess) -> Samples:
    """One scrape of the gateway's own port, with the admin key, on a new connection."""
    response = httpx.get(
        f"{gateway.url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def private_dirs(gateway: GatewayProcess) -> list[Path]:
    """The multiprocess directories named after the gateway's supervisor."""
    return list(Path(tempfile.gettempdir()).glob(f"llmproxy-gateway-metrics-{gateway.proc.pid}-*"))


def metrics_dir(gateway: GatewayProcess) -> Path:
    """The private multiprocess directory of the gateway (named after its supervisor's pid)."""
    found = private_dirs(gateway)
    assert len(found) == 1, found
    return found[0]


def test_two_workers_report_one_view_of_every_request(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    from .test_workers import workers_of

    secret = gateway.key("metrics-user")
    record = gateway.keys.verify(secret)
    assert record is not None
    headers = {"authorization": f"Bearer {secret}"}
    whole, streamed = 12, 6
    before = scrape(gateway)  # other tests' calls count under the same model
    # A new connection per request: the kernel spreads them over both workers' sockets.
    with httpx.Client(
        base_url=gateway.url, limits=httpx.Limits(max_keepalive_connections=0), timeout=30
    ) as client:
        for _ in range(whole):
            assert client.post("/v1/chat/completions", json=BODY, headers=headers).is_success
        for _ in range(streamed):
            with client.stream(
                "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=headers
            ) as response:
                assert response.status_code == 200
                assert "[DONE]" in response.read().decode()
        upstream.enqueue(Fault.status(400, message="no such parameter"))
        assert client.post("/v1/chat/completions", json=BODY, headers=headers).status_code == 400
        # Refused before the Proxy: a body that is not JSON, and a key that does not exist.
        assert client.post("/v1/chat/completions", content=b"{", headers=headers).status_code == 400
        wrong = {"authorization": "Bearer sk-llmp-nope-nope"}
        assert client.post("/v1/chat/completions", json=BODY, headers=wrong).status_code == 401

    # Both workers answered calls: each wrote its counts to a file of its own.
    pids = set(workers_of(gateway, 2))
    directory = metrics_dir(gateway)
    writers = {int(f.stem.rpartition("_")[2]) for f in directory.glob("counter_*.db")}
    assert len(writers & pids) == 2, (writers, pids)

    labels = {"model": "gpt-4o-mini", "provider": "openai", "key": record.id}
    views = [scrape(gateway) for _ in range(4)]  # whichever worker answers, the same sums
    first = views[0]
    assert all(
        total(v, "llmproxy_requests_total") == total(first, "llmproxy_requests_total")
        for v in views
    )
    assert value(first, "llmproxy_requests_total", **labels, outcome="ok") == whole + streamed
    assert value(first, "llmproxy_requests_total", **labels, outcome="error") == 1
    rejected = {"model": "", "provider": "", "outcome": "rejected"}
    assert value(first, "llmproxy_requests_total", **rejected, key=record.id) == 1

    def delta(name: str, **labels: str) -> float:
        return value(first, name, **labels) - value(before, name, **labels)

    assert delta("llmproxy_requests_total", **rejected, key="") == 1
    upstream_error = {"model": "gpt-4o-mini", "provider": "openai", "kind": "ProviderBadRequest"}
    assert delta("llmproxy_upstream_errors_total", **upstream_error) == 1
    model = {"model": "gpt-4o-mini", "provider": "openai"}
    assert delta("llmproxy_request_duration_seconds_count", **model) == whole + streamed + 1
    assert delta("llmproxy_time_to_first_token_seconds_count", **model) == streamed
    # The tokens add up to what the usage log recorded of the same calls.
    rows = gateway.rows(whole + streamed + 1, key=record.id)
    assert value(first, "llmproxy_tokens_total", **labels, kind="input") == sum(
        r.input_tokens for r in rows
    )
    assert value(first, "llmproxy_tokens_total", **labels, kind="output") == sum(
        r.output_tokens for r in rows
    )


def test_a_retried_upstream_error_is_counted_through_the_gateway(
    gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    secret = gateway.key("retried")
    record = gateway.keys.verify(secret)
    assert record is not None
    before = scrape(gateway)
    upstream.enqueue(Fault.status(503))  # the gateway's configuration retries once
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=BODY,
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    found = scrape(gateway)
    labels = {"model": "gpt-4o-mini", "provider": "openai", "key": record.id}
    assert value(found, "llmproxy_requests_total", **labels, outcome="ok") == 1
    assert value(found, "llmproxy_requests_total", **labels, outcome="error") == 0
    kind = {"model": "gpt-4o-mini", "provider": "openai", "kind": "ProviderUnavailable"}
    assert (
        value(found, "llmproxy_upstream_errors_total", **kind)
        - value(before, "llmproxy_upstream_errors_total", **kind)
        == 1
    )


def test_rate_limit_refusals_and_budget_gauges(gateway: GatewayProcess) -> None:
    record, secret = gateway.keys.create("limited", budgets=["requests:3/minute"], name="ci-bot")
    headers = {"authorization": f"Bearer {secret}"}
    with httpx.Client(
        base_url=gateway.url, limits=httpx.Limits(max_keepalive_connections=0), timeout=30
    ) as client:
        statuses = [
            client.post("/v1/chat/completions", json=BODY, headers=headers).status_code
            for _ in range(4)
        ]
        streamed = {**BODY, "stream": True}
        statuses.append(
            client.post("/v1/chat/completions", json=streamed, headers=headers).status_code
        )
    assert statuses == [200, 200, 200, 429, 429]
    found = scrape(gateway)
    labels = {"model": "gpt-4o-mini", "provider": "openai", "key": "ci-bot"}  # the key's name
    assert value(found, "llmproxy_requests_total", **labels, outcome="ok") == 3
    assert value(found, "llmproxy_requests_total", **labels, outcome="error") == 2
    assert value(found, "llmproxy_rate_limited_total", **labels) == 2
    # Refusals the Proxy made are counted once, from their events, not again as rejected.
    rejected = {"model": "", "provider": "", "key": "ci-bot", "outcome": "rejected"}
    assert value(found, "llmproxy_requests_total", **rejected) == 0
    budget = {"budget": f"key-requests-3-60s|key:{record.id}", "unit": "requests"}
    assert value(found, "llmproxy_budget_limit", **budget) == 3
    assert value(found, "llmproxy_budget_used", **budget) == 3


def test_metrics_need_the_admin_key_on_the_gateway_port(gateway: GatewayProcess) -> None:
    user = gateway.key("not-admin")
    for headers in ({}, {"authorization": f"Bearer {user}"}):
        response = httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=30)
        assert response.status_code == 401
        assert "llmproxy_" not in response.text
    admin = gateway.key("ops", admin=True)
    response = httpx.get(
        f"{gateway.url}/metrics", headers={"authorization": f"Bearer {admin}"}, timeout=30
    )
    assert response.status_code == 200
    assert "# TYPE llmproxy_budget_used gauge" in response.text


def test_the_separate_port_serves_metrics_only(gateway: GatewayProcess) -> None:
    url = metrics_url(gateway)
    assert not url.startswith(gateway.url + "/")  # another port
    secret = gateway.key("elsewhere")
    record = gateway.keys.verify(secret)
    assert record is not None
    headers = {"authorization": f"Bearer {secret}"}
    call = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=headers, timeout=30)
    assert call.status_code == 200
    response = httpx.get(url, timeout=30)  # LLMPROXY_GATEWAY_METRICS_AUTH=none: no key
    assert response.status_code == 200
    labels = {"model": "gpt-4o-mini", "provider": "openai", "key": record.id, "outcome": "ok"}
    assert value(samples(response.text), "llmproxy_requests_total", **labels) == 1
    base = url.removesuffix("/metrics")
    refused = httpx.post(f"{base}/v1/chat/completions", json=BODY, headers=headers, timeout=30)
    assert refused.status_code == 404
    assert httpx.get(f"{base}/dashboard", timeout=30).status_code == 404


def test_the_metrics_directory_is_removed_when_the_gateway_stops(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    served = serve_gateway(upstream, tmp_path, LLMPROXY_GATEWAY_WORKERS="2")
    gateway = next(served)
    try:
        directory = metrics_dir(gateway)
        assert directory.is_dir()
    finally:
        for _ in served:  # the generator's end stops the gateway (SIGTERM)
            pass
    assert gateway.proc.returncode == 0
    assert not directory.exists()


def test_a_separate_port_that_needs_the_key(upstream: FakeOpenAI, tmp_path: Path) -> None:
    served = serve_gateway(upstream, tmp_path, LLMPROXY_GATEWAY_METRICS_PORT="0")
    gateway = next(served)
    try:
        secret = gateway.key("solo")
        call = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=BODY,
            headers={"authorization": f"Bearer {secret}"},
            timeout=30,
        )
        assert call.status_code == 200
        url = metrics_url(gateway)
        assert httpx.get(url, timeout=30).status_code == 401
        ok = httpx.get(url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        assert ok.status_code == 200
        # One worker: its counts stay in its memory, no directory of files.
        assert total(samples(ok.text), "llmproxy_requests_total", outcome="ok") == 1
        assert not private_dirs(gateway)
    finally:
        for _ in served:  # the generator's end stops the gateway
            pass


def test_the_serve_flags_open_a_separate_metrics_port(upstream: FakeOpenAI, tmp_path: Path) -> None:
    """``--metrics-port 0 --metrics-auth none``, over a variable that asks for the key."""
    served = serve_gateway(
        upstream,
        tmp_path,
        args=("--metrics-port", "0", "--metrics-auth", "none"),
        LLMPROXY_GATEWAY_METRICS_AUTH="admin",
    )
    gateway = next(served)
    try:
        url = metrics_url(gateway)
        assert not url.startswith(gateway.url + "/")  # another port
        secret = gateway.key("flagged")
        call = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=BODY,
            headers={"authorization": f"Bearer {secret}"},
            timeout=30,
        )
        assert call.status_code == 200
        response = httpx.get(url, timeout=30)  # no key: --metrics-auth none won
        assert response.status_code == 200
        assert total(samples(response.text), "llmproxy_requests_total", outcome="ok") == 1
        base = url.removesuffix("/metrics")
        assert httpx.get(f"{base}/dashboard", timeout=30).status_code == 404
        # The gateway's own port still asks for the admin key.
        assert httpx.get(f"{gateway.url}/metrics", timeout=30).status_code == 401
    finally:
        for _ in served:  # the generator's end stops the gateway
            pass


def test_bad_metrics_flags_are_refused_before_serving(tmp_path: Path) -> None:
    from .conftest import LLMPROXY, clean_env

    environ = clean_env(LLMPROXY_DATA_DIR=str(tmp_path), LLMPROXY_ADMIN_KEY=ADMIN_KEY)
    for args, message in (
        (["--metrics-auth", "none"], "--metrics-auth none needs LLMPROXY_GATEWAY_METRICS_PORT"),
        (["--metrics-port", "70000"], "--metrics-port must be a port number from 0 to 65535"),
        (["--metrics-auth", "open"], "invalid choice: 'open'"),
    ):
        done = subprocess.run(
            [LLMPROXY, "serve", "--port", "0", *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "gateway on" not in done.stdout


def test_the_private_directory_replaces_those_of_gateways_that_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = tmp_path / f"llmproxy-gateway-metrics-{int(gone.stdout)}-abc"
    alive = tmp_path / f"llmproxy-gateway-metrics-{os.getppid()}-def"  # our parent runs on
    for old in (dead, alive):
        old.mkdir()
        (old / "counter_1.db").write_bytes(b"")
    environ: dict[str, str] = {}
    made = metrics_module.private_dir(environ)
    assert environ[metrics_module.MULTIPROC_DIR] == str(made)
    assert made.is_dir() and not list(made.iterdir())
    assert made.name.startswith(f"llmproxy-gateway-metrics-{os.getpid()}-")
    assert not dead.exists() and alive.exists()
    metrics_module.remove_private_dir(made)
    assert not made.exists()
