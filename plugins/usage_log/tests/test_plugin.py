"""The plugin records every call of a real Proxy (upstream: the fake OpenAI server)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from llmproxy import LLMBudget, Proxy
from llmproxy.errors import BudgetExceeded
from llmproxy.plugins import load_plugins
from llmproxy_testing.fake_openai import FakeOpenAI
from llmproxy_testing.redis_server import free_port
from llmproxy_usage_log import (
    MemoryUsageLog,
    UsageLog,
    UsageRecord,
    open_usage_log,
    plugin,
    set_usage_log,
)

KEY = "sk-test-usage-log-0123456789"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def log() -> Iterator[UsageLog]:
    mine = open_usage_log("memory://")
    old = set_usage_log(mine)
    yield mine
    set_usage_log(old)


def make_proxy(upstream: FakeOpenAI, **kwargs: object) -> Proxy:
    return Proxy(
        {"history_url": "memory://", "ledger_url": "memory://"},
        environ={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.base_url},
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_plugin_is_discovered_and_observes() -> None:
    plugins = load_plugins({})
    assert plugins.pm.is_registered(plugin)
    assert plugins.observes


async def test_every_call_is_recorded(upstream: FakeOpenAI, log: UsageLog) -> None:
    proxy = make_proxy(upstream, budgets=[LLMBudget(max_tokens=40, scope="key")])
    try:
        proxy.chat("Hello there", model="openai/gpt-4o-mini", user="ann", key="k1", session_id="s1")
        text = "".join(
            e.text
            for e in proxy.stream(
                "Tell me more", model="openai/gpt-4o", key="k1", tags={"team": "x"}
            )
        )
        assert text == "Echo: Tell me more"
        await proxy.achat("Hello", model="openai/gpt-4o-mini", key="k2")
        with pytest.raises(BudgetExceeded):
            proxy.chat("one two three four five " * 20, model="openai/gpt-4o-mini", key="k2")
    finally:
        proxy.close()
    rows = log.recent(10)
    assert [r.key for r in rows] == ["k2", "k2", "k1", "k1"]
    refused, asynced, streamed, first = rows
    assert (first.model, first.provider, first.user, first.session_id) == (
        "openai/gpt-4o-mini",
        "openai",
        "ann",
        "s1",
    )
    assert (first.input_tokens, first.output_tokens, first.outcome) == (8, 3, "ok")
    assert first.cost is not None and first.cost > 0 and first.latency > 0
    assert (
        streamed.streamed and streamed.tags == {"team": "x"} and streamed.model == "openai/gpt-4o"
    )
    assert not asynced.streamed and asynced.outcome == "ok"
    assert (refused.outcome, refused.error, refused.limit) == ("error", "BudgetExceeded", "budget")
    assert refused.policy == "tokens-40-key"
    assert log.summary().calls == 4


class FlakyLog(MemoryUsageLog):
    """A memory log whose writes fail while ``down`` is set."""

    down = True

    def _write(self, records: Sequence[UsageRecord]) -> None:
        if self.down:
            raise OSError("disk on fire")
        super()._write(records)


def test_a_failing_log_never_fails_a_call(
    upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyLog()
    old = set_usage_log(flaky)
    proxy = make_proxy(upstream)
    try:
        with caplog.at_level(logging.WARNING, "llmproxy.usage_log"):
            assert proxy.chat("Hello", model="openai/gpt-4o-mini").text == "Echo: Hello"
        assert "could not write 1 calls" in caplog.text
        flaky.down = False
        assert flaky.flush()
        assert flaky.summary().calls == 1  # kept, then written once the backend was back
    finally:
        proxy.close()
        set_usage_log(old)


def test_an_unreachable_redis_keeps_calls_queued(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    log = open_usage_log(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2&flush_interval=10")
    try:
        record = UsageRecord(1.0, "openai/gpt-4o-mini", "openai")
        log.record(record)
        with caplog.at_level(logging.WARNING, "llmproxy.usage_log"):
            assert log.flush() is False
        assert "could not write" in caplog.text and f"127.0.0.1:{port}" in caplog.text
    finally:
        log._closed = True  # nothing to write to: skip the final flush
        log._close()


def test_the_process_log_opens_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("LLMPROXY_USAGE_LOG_URL", "memory://")
    old = set_usage_log(None)
    try:
        plugin._configured = False
        opened = plugin.usage_log()
        assert opened is not None and opened.describe() == "memory://"
        assert plugin.usage_log() is opened
        monkeypatch.setenv("LLMPROXY_USAGE_LOG_URL", "off")
        plugin._configured = False
        assert plugin.usage_log() is None
    finally:
        set_usage_log(old)


@pytest.mark.parametrize("word", ["off", "OFF", "0", "false", "no", "none", "disabled"])
def test_off_means_off_silently(
    word: str,
    upstream: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("LLMPROXY_USAGE_LOG_URL", word)
    monkeypatch.setenv("LLMPROXY_DATA_DIR", str(tmp_path))
    old = set_usage_log(None)
    plugin._configured = False  # as in a fresh process: the log opens on the first event
    try:
        proxy = make_proxy(upstream)
        with caplog.at_level(logging.DEBUG, "llmproxy.usage_log"):
            proxy.chat("Hello")
            proxy.chat("Hello again")  # the plugin's hooks ran twice, the second time settled
        proxy.close()
        assert plugin._configured and plugin.usage_log() is None
        assert [r.getMessage() for r in caplog.records if r.name.startswith("llmproxy.usage")] == []
        assert list(tmp_path.iterdir()) == []  # no usage.db (history and ledger are in memory)
    finally:
        set_usage_log(old)


def test_embed_calls_are_recorded_with_their_operation(upstream: FakeOpenAI, log: UsageLog) -> None:
    proxy = make_proxy(upstream)
    try:
        proxy.embed(["two words", "three more words"], key="k3")
        proxy.chat("Hello", model="openai/gpt-4o-mini", key="k3")
    finally:
        proxy.close()
    chat, embed = log.recent(10, key="k3")
    assert (embed.operation, embed.model, embed.input_tokens, embed.output_tokens) == (
        "embed",
        "openai/text-embedding-3-small",
        5,
        0,
    )
    assert embed.cost is not None and embed.cost > 0
    assert chat.operation == "chat"


def test_an_old_sqlite_log_gains_the_newer_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY, ts REAL NOT NULL, model TEXT NOT NULL,
            provider TEXT NOT NULL, "user" TEXT, session_id TEXT, "key" TEXT,
            input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL, cost REAL,
            latency REAL NOT NULL, outcome TEXT NOT NULL, error TEXT, limit_kind TEXT,
            policy TEXT, attempts INTEGER NOT NULL, streamed INTEGER NOT NULL,
            estimated INTEGER NOT NULL, tags TEXT
        );
        INSERT INTO calls VALUES
            (1, 1.0, 'openai/gpt-4o', 'openai', NULL, NULL, NULL, 3, 2, 0, 0, NULL, 0.1, 'ok',
             NULL, NULL, NULL, 1, 0, 0, NULL);
        """
    )
    conn.close()
    old = open_usage_log(f"sqlite:///{path}?flush_interval=0.01")
    try:
        old.record(UsageRecord(2.0, "openai/text-embedding-3-small", "openai", operation="embed"))
        old.flush()
        rows = old.recent(10)
        assert old.summary().cache_write_tokens == 0
    finally:
        old.close()
    assert [(r.model, r.operation, r.cache_hit, r.cache_write_tokens) for r in rows] == [
        ("openai/text-embedding-3-small", "embed", False, 0),
        ("openai/gpt-4o", "chat", False, 0),
    ]
