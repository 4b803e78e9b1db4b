"""One suite, three backends: memory, SQLite and Redis answer the same queries the same way."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from llmproxy.errors import BudgetExceeded, ConfigError, ProviderRateLimited, RateLimited
from llmproxy.types import CallEvent, Usage
from llmproxy_usage_log import UsageLog, UsageRecord, open_usage_log

T0 = 1_800_000_000.0  # a whole hour: buckets of 60 and 600 seconds start on it


def event(
    at: float,
    model: str = "gpt-4o-mini",
    *,
    user: str | None = "alice",
    key: str | None = "k1",
    tokens: tuple[int, int] = (10, 5),
    cost: float | None = 0.001,
    error: BaseException | None = None,
    session: str | None = None,
    streamed: bool = False,
) -> CallEvent:
    return CallEvent(
        model,
        "openai",
        Usage(tokens[0], tokens[1], cached_input_tokens=2, reasoning_tokens=1, cost=cost),
        0.25,
        session,
        user,
        "error" if error is not None else "ok",
        error,
        1,
        streamed,
        at,
        key,
        {"team": "a"},
    )


def calls() -> list[CallEvent]:
    budget = BudgetExceeded(
        policy="key-tokens-100-day", scope="key:k2", limit=100, used=100, reserved=0, requested=5
    )
    rate = RateLimited(policy="rpm-1-key", scope="key:k2", limit=1, window=60, retry_after=3)
    upstream = ProviderRateLimited("slow down", provider="openai", model="gpt-4o", status=429)
    return [
        event(T0 + 5),
        event(T0 + 30, "gpt-4o", tokens=(100, 50), cost=0.01, session="s1"),
        event(T0 + 70, user="bob", key="k2", streamed=True),
        event(T0 + 75, user="bob", key="k2", tokens=(0, 0), cost=None, error=budget),
        event(T0 + 130, user=None, key=None, tokens=(0, 0), cost=None, error=rate),
        event(T0 + 131, user=None, key=None, tokens=(0, 0), cost=None, error=rate),
        event(T0 + 620, "gpt-4o", tokens=(0, 0), cost=0.0, error=upstream),
    ]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], UsageLog]]:
    made: list[UsageLog] = []

    def make() -> UsageLog:
        if request.param == "memory":
            log = open_usage_log("memory://")
        elif request.param == "sqlite":
            log = open_usage_log(f"sqlite:///{tmp_path}/usage.db?flush_interval=0.05")
        else:
            url = request.getfixturevalue("redis_url")
            log = open_usage_log(url + "?prefix=t&flush_interval=0.05")
        made.append(log)
        return log

    yield make
    for log in made:
        log.close()


def test_totals_by_each_dimension(make_log: Callable[[], UsageLog]) -> None:
    log = make_log()
    for e in calls():
        log.record(e)
    by_model = {t.group: t for t in log.totals("model")}
    assert set(by_model) == {"openai/gpt-4o-mini", "openai/gpt-4o"}
    mini = by_model["openai/gpt-4o-mini"]
    assert (mini.calls, mini.errors, mini.input_tokens, mini.output_tokens) == (5, 3, 20, 10)
    assert mini.cached_input_tokens == 10 and mini.reasoning_tokens == 5
    assert mini.cost == pytest.approx(0.002)
    big = by_model["openai/gpt-4o"]
    assert (big.calls, big.errors, big.total_tokens) == (2, 1, 150)
    assert big.cost == pytest.approx(0.01)
    # biggest spender first
    assert [t.group for t in log.totals("model")] == ["openai/gpt-4o", "openai/gpt-4o-mini"]
    by_user = {t.group: (t.calls, t.total_tokens) for t in log.totals("user")}
    assert by_user == {"alice": (3, 165), "bob": (2, 15), "-": (2, 0)}
    by_key = {t.group: t.calls for t in log.totals("key")}
    assert by_key == {"k1": 3, "k2": 2, "-": 2}
    assert {t.group: t.calls for t in log.totals("provider")} == {"openai": 7}


def test_summary_and_time_ranges(make_log: Callable[[], UsageLog]) -> None:
    log = make_log()
    for e in calls():
        log.record(e)
    total = log.summary()
    assert (total.group, total.calls, total.errors, total.total_tokens) == ("*", 7, 4, 180)
    assert total.cost == pytest.approx(0.012)
    # whole minutes, so that Redis (minute sums) answers like the others
    first_two_minutes = log.summary(since=T0, until=T0 + 120)
    assert (first_two_minutes.calls, first_two_minutes.total_tokens) == (4, 180)
    assert log.summary(since=T0 + 600).calls == 1
    assert log.summary(since=T0 + 3600).calls == 0


def test_series_in_buckets(make_log: Callable[[], UsageLog]) -> None:
    log = make_log()
    for e in calls():
        log.record(e)
    points = log.series("user", since=T0, bucket=60)
    got = [(p.start - T0, p.totals.group, p.totals.calls, p.totals.total_tokens) for p in points]
    assert got == [
        (0, "alice", 2, 165),
        (60, "bob", 2, 15),
        (120, "-", 2, 0),
        (600, "alice", 1, 0),
    ]
    ten = log.series("model", since=T0 + 42, bucket=600)  # since is aligned down to the bucket
    assert [(p.start - T0, p.totals.group, p.totals.calls) for p in ten] == [
        (0, "openai/gpt-4o", 1),
        (0, "openai/gpt-4o-mini", 5),
        (600, "openai/gpt-4o", 1),
    ]


def test_recent_calls_newest_first_with_filters(make_log: Callable[[], UsageLog]) -> None:
    log = make_log()
    for e in calls():
        log.record(e)
    recent = log.recent(3)
    assert [r.ts - T0 for r in recent] == [620, 131, 130]
    first = log.recent(10, key="k1")
    assert [r.ts - T0 for r in first] == [620, 30, 5]
    s1 = first[1]
    assert isinstance(s1, UsageRecord)
    assert (s1.model, s1.session_id, s1.user, s1.tags) == (
        "openai/gpt-4o",
        "s1",
        "alice",
        {"team": "a"},
    )
    assert (s1.input_tokens, s1.output_tokens, s1.cached_input_tokens, s1.reasoning_tokens) == (
        100,
        50,
        2,
        1,
    )
    assert s1.latency == 0.25 and s1.outcome == "ok" and s1.error is None
    bob = log.recent(10, user="bob")
    assert [(r.streamed, r.outcome, r.error, r.limit) for r in bob] == [
        (False, "error", "BudgetExceeded", "budget"),
        (True, "ok", None, None),
    ]


def test_limit_hits(make_log: Callable[[], UsageLog]) -> None:
    log = make_log()
    for e in calls():
        log.record(e)
    hits = [(h.kind, h.policy, h.hits, h.last - T0) for h in log.limit_hits()]
    assert hits == [
        ("rate", "rpm-1-key", 2, 131),
        ("budget", "key-tokens-100-day", 1, 75),
        ("upstream", "openai", 1, 620),
    ]
    assert [h.kind for h in log.limit_hits(since=T0 + 600)] == ["upstream"]


def test_background_writer_and_a_second_reader(make_log: Callable[[], UsageLog]) -> None:
    """Calls are written by the background writer without a query; a new log sees them."""
    log = make_log()
    if log.describe() == "memory://":
        pytest.skip("memory logs are per process")
    log.record(event(T0))
    deadline = time.monotonic() + 5
    reader = make_log()
    while reader.summary().calls < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reader.summary().calls == 1


def test_bad_arguments(make_log: Callable[[], UsageLog]) -> None:
    log = make_log()
    with pytest.raises(ConfigError, match="grouped by"):
        log.totals("team")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bucket"):
        log.series("model", since=T0, bucket=0)
    assert log.bucket_size(1) == log.resolution


def test_cache_hits_are_counted_per_group(make_log: Callable[[], UsageLog]) -> None:
    log = make_log()
    hit = CallEvent(
        "gpt-4o-mini", "openai", Usage(), 0.01, None, "alice", started_at=T0 + 1, key="k1",
        cache_hit=True,
    )  # fmt: skip
    for e in [*calls(), hit, attrs.evolve(hit, user="bob", key="k2", started_at=T0 + 80)]:
        log.record(e)
    total = log.summary()
    assert (total.calls, total.cache_hits) == (9, 2)
    assert total.cache_hit_rate == pytest.approx(2 / 9)
    assert {t.group: t.cache_hits for t in log.totals("user")} == {"alice": 1, "bob": 1, "-": 0}
    points = log.series("key", since=T0, bucket=60)
    assert [(p.start - T0, p.totals.group, p.totals.cache_hits) for p in points][:2] == [
        (0, "k1", 1),
        (60, "k2", 1),
    ]
    newest = log.recent(1, key="k2")[0]
    assert newest.cache_hit and newest.total_tokens == 0
    assert [r.cache_hit for r in log.recent(10, key="k1")] == [False, False, False, True]


def test_cache_write_tokens_are_summed_and_kept(make_log: Callable[[], UsageLog]) -> None:
    """Cache writes (a part of input) are kept per call and summed in totals and series.

    100 calls in one batch also cross SQLite's rows-per-INSERT chunk with the extra column.
    """
    log = make_log()
    written = CallEvent(
        "claude-sonnet-4-5", "anthropic",
        Usage(1000, 20, cached_input_tokens=300, cache_write_tokens=600, cost=0.01),
        0.2, None, "alice", started_at=T0 + 1, key="k1",
    )  # fmt: skip
    log.add(
        UsageRecord.from_event(attrs.evolve(written, started_at=T0 + 1 + i / 1000))
        for i in range(100)
    )
    log.record(attrs.evolve(written, user="bob", key="kw", started_at=T0 + 61))
    for e in calls():  # no cache writes
        log.record(e)
    total = log.summary()
    assert (total.calls, total.cache_write_tokens) == (108, 101 * 600)
    assert total.to_json()["cache_write_tokens"] == 101 * 600
    by_user = {t.group: t.cache_write_tokens for t in log.totals("user")}
    assert by_user == {"alice": 100 * 600, "bob": 600, "-": 0}
    points = log.series("model", since=T0, bucket=60)
    writes = [(p.start - T0, p.totals.group, p.totals.cache_write_tokens) for p in points]
    assert (0, "anthropic/claude-sonnet-4-5", 100 * 600) in writes
    assert (60, "anthropic/claude-sonnet-4-5", 600) in writes
    newest = log.recent(1, key="kw")[0]
    assert (newest.input_tokens, newest.cached_input_tokens, newest.cache_write_tokens) == (
        1000,
        300,
        600,
    )
    assert UsageRecord.from_json(newest.to_json()) == newest
