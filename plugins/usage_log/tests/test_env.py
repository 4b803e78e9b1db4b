"""Choosing the usage log from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy.errors import ConfigError
from llmproxy_usage_log import SQLiteUsageLog, open_usage_log
from llmproxy_usage_log.env import log_url


def test_default_is_usage_db_in_the_data_dir(tmp_path: Path) -> None:
    environ = {"LLMPROXY_DATA_DIR": str(tmp_path)}
    assert log_url(environ) == f"sqlite:///{tmp_path}/usage.db"
    log = open_usage_log(None, environ)
    try:
        assert isinstance(log, SQLiteUsageLog) and log.path == tmp_path / "usage.db"
    finally:
        log.close()


OFF_WORDS = ("off", "OFF", "0", "false", "No", "none", "disabled", " off ")


@pytest.mark.parametrize("word", OFF_WORDS)
def test_every_off_word_turns_it_off(word: str) -> None:
    assert log_url({"LLMPROXY_USAGE_LOG_URL": word}) is None


@pytest.mark.parametrize("word", ["on", "1", "TRUE", "yes", ""])
def test_on_words_and_empty_mean_the_default(word: str, tmp_path: Path) -> None:
    environ = {"LLMPROXY_USAGE_LOG_URL": word, "LLMPROXY_DATA_DIR": str(tmp_path)}
    assert log_url(environ) == f"sqlite:///{tmp_path}/usage.db"


def test_off_and_explicit_urls(tmp_path: Path) -> None:
    assert log_url({"LLMPROXY_USAGE_LOG_URL": "off"}) is None
    with pytest.raises(ConfigError, match="turns the usage log off"):
        open_usage_log(None, {"LLMPROXY_USAGE_LOG_URL": "off"})
    log = open_usage_log(
        None, {"LLMPROXY_USAGE_LOG_URL": f"sqlite:///{tmp_path}/x.db?retention=60"}
    )
    try:
        assert isinstance(log, SQLiteUsageLog) and log.retention == 60
    finally:
        log.close()


def test_bad_urls() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        open_usage_log("postgres://db/usage")
    with pytest.raises(ConfigError, match="no scheme"):
        open_usage_log("usage.db")
    with pytest.raises(ConfigError, match="flush_interval must be a number"):
        open_usage_log("sqlite:///x.db?flush_interval=soon")
