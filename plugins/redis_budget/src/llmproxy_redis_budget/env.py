"""The environment variables the Redis ledger reads, and how a ledger URL is resolved.

==========================================  =====================================================
Variable                                    Meaning
==========================================  =====================================================
``LLMPROXY_REDIS_URL``                      Where Redis is, for a bare ``redis://`` ledger URL:
                                            ``redis://[user:password@]host:port/db`` or
                                            ``rediss://...`` (TLS). Ledger options in its query
                                            apply unless the ledger URL gives them.
``LLM_PROXY_OPEN_AI_IOREDIS_HOST``          The seed library's Redis host, read when
                                            ``LLMPROXY_REDIS_URL`` is unset (default
                                            ``localhost``).
``LLM_PROXY_OPEN_AI_IOREDIS_PORT``          The seed's Redis port (default ``6379``).
``LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX``      The seed's database index (default ``0``).
==========================================  =====================================================

The core's ``LLMPROXY_LEDGER_URL`` chooses the ledger. ``redis://host:port/db?options`` names
the server; a bare ``redis://`` (or ``redis://?options``) means "from the environment":
``LLMPROXY_REDIS_URL``, else the seed's variables, else ``localhost:6379/0``.

Ledger options (query parameters; the ledger URL's win over ``LLMPROXY_REDIS_URL``'s):

=====================  ===========================================================================
Option                 Meaning
=====================  ===========================================================================
``prefix``             Namespace of the ledger's keys, all under the hash tag
                       ``{llmproxy-budget:PREFIX}`` (default ``llmproxy``); processes with the
                       same prefix share budgets. No ``{`` or ``}``.
``fail``               ``closed`` (default): when Redis cannot be reached, calls raise
                       ``StoreError``; ``open``: they go on, counted in a local in-memory ledger
                       that enforces the same limits for this process, and a warning is logged.
                       What each process admits is journaled in its data dir
                       (``LLMPROXY_DATA_DIR``) and applied to Redis once it answers again. With
                       ``open``, N processes can each spend up to the budget's limit during an
                       outage (each counts from zero in its own fallback): the overrun is
                       bounded by N x limit per outage, and all of it is counted once Redis
                       returns, so later calls are refused until the window resets.
``socket_timeout``     Seconds to wait for a reply (default 5: a busy machine or a Redis
                       saving to disk answers late, not never; a shorter timeout turns load
                       into errors).
``connect_timeout``    Seconds to wait for a connection (default 1).
``breaker_failures``   Consecutive failures that open the circuit breaker (default 3).
``breaker_cooldown``   Seconds the breaker stays open before one call probes Redis again
                       (default 2).
``breaker_probe``      Seconds between the background ``PING`` probes while the breaker is
                       open (default 0.25): the first one Redis answers closes the breaker, so
                       calls go through again within about this long of Redis coming back.
                       ``0`` or ``off``: no background probe (only the cool-down's).
``cluster``            ``true``: connect with a Redis Cluster client.
=====================  ===========================================================================

Other query parameters of the ledger URL (``ssl_cert_reqs``, ``ssl_ca_certs``,
``client_name``...) go to ``redis-py``'s ``from_url``. From ``LLMPROXY_REDIS_URL``, which other
plugins read too, only the ledger options, ``ssl_*``, ``client_name``, ``protocol`` and
``health_check_interval`` are taken: a history store's options there are not the ledger's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, cast

from attrs import frozen

from llmproxy import redis_url
from llmproxy.errors import ConfigError

REDIS_URL = redis_url.REDIS_URL  # "LLMPROXY_REDIS_URL"
SEED_HOST = redis_url.SEED_HOST  # "LLM_PROXY_OPEN_AI_IOREDIS_HOST"
SEED_PORT = redis_url.SEED_PORT  # "LLM_PROXY_OPEN_AI_IOREDIS_PORT"
SEED_DB_INDEX = redis_url.SEED_DB_INDEX  # "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX"

VARIABLES = (REDIS_URL, SEED_HOST, SEED_PORT, SEED_DB_INDEX)
SCHEMES = ("redis", "rediss")
DEFAULT_URL = redis_url.DEFAULT_URL
DEFAULT_PREFIX = "llmproxy"

Fail = Literal["closed", "open"]

_OPTIONS = frozenset(
    {
        "prefix",
        "fail",
        "socket_timeout",
        "connect_timeout",
        "breaker_failures",
        "breaker_cooldown",
        "breaker_probe",
        "cluster",
    }
)


@frozen
class LedgerSettings:
    """What a :class:`~llmproxy_redis_budget.RedisLedger` is built from.

    ``url`` goes to ``redis-py`` (ledger options removed, pass-through options kept); the other
    fields are the options documented in this module.
    """

    url: str = DEFAULT_URL
    prefix: str = DEFAULT_PREFIX
    fail: Fail = "closed"
    socket_timeout: float = 5.0
    connect_timeout: float = 1.0
    breaker_failures: int = 3
    breaker_cooldown: float = 2.0
    breaker_probe: float = 0.25
    """Seconds between background probes while the breaker is open; 0: none."""
    cluster: bool = False

    @property
    def safe_url(self) -> str:
        """The connection URL without its password, for messages and logs."""
        return redis_url.redact(self.url)


def _probe_interval(options: Mapping[str, str]) -> float:
    """``breaker_probe``: seconds > 0, or ``0``/``off`` for no background probe."""
    raw = options.get("breaker_probe", "").strip().lower()
    if raw in ("0", "0.0", "off", "false", "no"):
        return 0.0
    return redis_url.seconds(options, "breaker_probe", 0.25)


def settings_from_url(url: str | None, environ: Mapping[str, str]) -> LedgerSettings:
    """Resolve a ledger URL (None or a bare ``redis://`` means the environment) to settings.

    >>> settings_from_url("redis://cache:6380/2?prefix=team&fail=open", {}).url
    'redis://cache:6380/2'
    >>> settings_from_url("redis://", {"LLM_PROXY_OPEN_AI_IOREDIS_HOST": "r1"}).url
    'redis://r1:6379/0'
    """
    connection, options = redis_url.resolve(url, environ, _OPTIONS, "ledger URL")
    prefix = options.get("prefix", "").strip() or DEFAULT_PREFIX
    if "{" in prefix or "}" in prefix:
        raise ConfigError(
            f"redis ledger option prefix must not contain braces (they form the keys' hash"
            f" tag), got {prefix!r}",
            path="prefix",
        )
    fail = options.get("fail", "").strip().lower() or "closed"
    if fail not in ("closed", "open"):
        raise ConfigError(
            f"redis ledger option fail must be 'closed' or 'open', got {fail!r}", path="fail"
        )
    return LedgerSettings(
        url=connection,
        prefix=prefix,
        fail=cast(Fail, fail),
        socket_timeout=redis_url.seconds(options, "socket_timeout", 5.0),
        connect_timeout=redis_url.seconds(options, "connect_timeout", 1.0),
        breaker_failures=redis_url.count(options, "breaker_failures", 3),
        breaker_cooldown=redis_url.seconds(options, "breaker_cooldown", 2.0),
        breaker_probe=_probe_interval(options),
        cluster=redis_url.flag(options, "cluster", False),
    )
