"""The environment variables the usage-log plugin reads.

==============================  ====================================================================
Variable                        Meaning
==============================  ====================================================================
``LLMPROXY_USAGE_LOG_URL``      Where calls are logged: ``sqlite:///relative.db`` or
                                ``sqlite:////absolute.db`` (default: ``usage.db`` in the core's data
                                dir, ``LLMPROXY_DATA_DIR``), ``redis://host:port/db`` /
                                ``rediss://...``, ``memory://`` (this process only), or ``off``
                                (also ``0``, ``false``, ``no``, ``none``, ``disabled``, any case):
                                nothing is opened, written or logged. ``on`` (``1``, ``true``,
                                ``yes``) or unset: the default.
``LLMPROXY_REDIS_URL``          Read for a bare ``redis://``: the Redis server (and options), as for
                                the Redis history plugin; else ``localhost:6379/0``.
==============================  ====================================================================

Options are query parameters of the URL:

=====================  =============================================================================
Option                 Meaning
=====================  =============================================================================
``flush_interval``     Seconds between background writes (default 0.25; SQLite and Redis).
``batch``              Calls pending before a write is started early (default 256).
``retention``          Seconds calls are kept (SQLite rows, Redis aggregates; default: 90 days
                       for Redis aggregates, forever for SQLite).
``max_calls``          Calls kept for ``recent()`` (memory default 100000, Redis stream default
                       100000; approximate on Redis).
``prefix``             Redis key prefix (default ``llmproxy``).
``socket_timeout``     Redis: seconds to wait for a reply (default 2).
=====================  =============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl

from llmproxy import env as core_env
from llmproxy.errors import ConfigError

USAGE_LOG_URL = "LLMPROXY_USAGE_LOG_URL"
REDIS_URL = "LLMPROXY_REDIS_URL"

DEFAULT_FILENAME = "usage.db"
#: Words that turn the log off besides the core's off words (``llmproxy.env.switch``).
OFF = frozenset(("none", "disabled"))


def default_path(environ: Mapping[str, str]) -> Path:
    """The default SQLite file: ``usage.db`` in the core's data dir."""
    return core_env.data_dir(environ) / DEFAULT_FILENAME


def log_url(environ: Mapping[str, str]) -> str | None:
    """Return the configured usage-log URL, the default SQLite URL, or None when turned off."""
    raw = environ.get(USAGE_LOG_URL, "").strip()
    switch = core_env.switch(raw)
    if switch is False or raw.lower() in OFF:
        return None
    if not raw or switch is True:
        return "sqlite:///" + str(default_path(environ).absolute())
    return raw


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """Return ``url`` without its query string, and the query parameters as a dict."""
    base, _, query = url.partition("?")
    return base, dict(parse_qsl(query, keep_blank_values=True))


def number(options: Mapping[str, str], name: str, default: float | None) -> float | None:
    """Read a positive number option, or ``default`` when absent."""
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"usage log option {name} must be a number, got {raw!r}", path=name
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"usage log option {name} must be greater than 0, got {raw!r}", path=name)
    return value
