"""Open a usage log from its URL: ``sqlite:///...``, ``redis://...``, ``memory://``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from llmproxy.errors import ConfigError
from llmproxy.urls import scheme_of, sqlite_path
from llmproxy_usage_log import env
from llmproxy_usage_log.base import UsageLog


def open_usage_log(url: str | None = None, environ: Mapping[str, str] | None = None) -> UsageLog:
    """Open the usage log ``url`` names; None reads ``LLMPROXY_USAGE_LOG_URL`` from ``environ``.

    Raises :class:`~llmproxy.ConfigError` for an unknown scheme or option, or when the
    variable turns logging off and no URL is given.
    """
    environ = os.environ if environ is None else environ
    if url is None:
        url = env.log_url(environ)
        if url is None:
            raise ConfigError(
                f"{env.USAGE_LOG_URL} turns the usage log off; set it to a URL to open one",
                path=env.USAGE_LOG_URL,
            )
    scheme = scheme_of(url, what="usage log")
    base, options = env.split_options(url)
    if scheme == "memory":
        from llmproxy_usage_log.memory import MemoryUsageLog

        return MemoryUsageLog(max_calls=int(env.number(options, "max_calls", 100_000) or 100_000))
    if scheme == "sqlite":
        from llmproxy_usage_log.sqlite import SQLiteUsageLog

        return SQLiteUsageLog(
            sqlite_path(base, env.default_path(environ)),
            retention=env.number(options, "retention", None),
            flush_interval=env.number(options, "flush_interval", 0.25) or 0.25,
            batch=int(env.number(options, "batch", 256) or 256),
        )
    if scheme in ("redis", "rediss"):
        from llmproxy_usage_log.redis_log import RedisUsageLog

        return RedisUsageLog.from_url(url, environ)
    raise ConfigError(
        f"usage log URL scheme '{scheme}://' is not supported; use sqlite:///path.db,"
        " redis://host:6379/0 or memory://",
        path=env.USAGE_LOG_URL,
    )
