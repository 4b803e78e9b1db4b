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
``socket_timeout``     Seconds to wait for a reply (default 0.5).
``connect_timeout``    Seconds to wait for a connection (default 1).
``breaker_failures``   Consecutive failures that open the circuit breaker (default 3).
``breaker_cooldown``   Seconds the breaker stays open before one call probes Redis again
                       (default 5).
``cluster``            ``true``: connect with a Redis Cluster client.
=====================  ===========================================================================

Other query parameters of the ledger URL (``ssl_cert_reqs``, ``ssl_ca_certs``,
``client_name``...) go to ``redis-py``'s ``from_url``. From ``LLMPROXY_REDIS_URL``, which other
plugins read too, only the ledger options, ``ssl_*``, ``client_name``, ``protocol`` and
``health_check_interval`` are taken: a history store's options there are not the ledger's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from attrs import frozen

from llmproxy.errors import ConfigError

REDIS_URL = "LLMPROXY_REDIS_URL"
SEED_HOST = "LLM_PROXY_OPEN_AI_IOREDIS_HOST"
SEED_PORT = "LLM_PROXY_OPEN_AI_IOREDIS_PORT"
SEED_DB_INDEX = "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX"

VARIABLES = (REDIS_URL, SEED_HOST, SEED_PORT, SEED_DB_INDEX)
SCHEMES = ("redis", "rediss")
DEFAULT_URL = "redis://localhost:6379/0"
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
        "cluster",
    }
)
_SHARED_PASSTHROUGH = frozenset({"client_name", "protocol", "health_check_interval"})


@frozen
class LedgerSettings:
    """What a :class:`~llmproxy_redis_budget.RedisLedger` is built from.

    ``url`` goes to ``redis-py`` (ledger options removed, pass-through options kept); the other
    fields are the options documented in this module.
    """

    url: str = DEFAULT_URL
    prefix: str = DEFAULT_PREFIX
    fail: Fail = "closed"
    socket_timeout: float = 0.5
    connect_timeout: float = 1.0
    breaker_failures: int = 3
    breaker_cooldown: float = 5.0
    cluster: bool = False

    @property
    def safe_url(self) -> str:
        """The connection URL without its password, for messages and logs."""
        return redact(self.url)


def redact(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _split(url: str, what: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Split a redis URL into (base without query, ledger options, other query parameters)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(
            f"{what} {redact(url)!r} must start with redis:// or rediss:// (TLS)", path=what
        )
    options: dict[str, str] = {}
    rest: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (options if key in _OPTIONS else rest)[key] = value
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path, "", "")), options, rest


def _seed_url(environ: Mapping[str, str]) -> str | None:
    host = environ.get(SEED_HOST, "").strip()
    port = environ.get(SEED_PORT, "").strip()
    db = environ.get(SEED_DB_INDEX, "").strip()
    if not (host or port or db):
        return None
    for name, value in ((SEED_PORT, port), (SEED_DB_INDEX, db)):
        if value and not value.isdigit():
            raise ConfigError(f"{name} must be a whole number, got {value!r}", path=name)
    host = host or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"redis://{host}:{port or 6379}/{db or 0}"


def _number(options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"redis ledger option {name} must be a number of seconds > 0, got {raw!r}", path=name
        )
    return value


def _count(options: Mapping[str, str], name: str, default: int) -> int:
    raw = options.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"redis ledger option {name} must be a whole number >= 1, got {raw!r}", path=name
        )
    return int(raw)


def _flag(options: Mapping[str, str], name: str) -> bool:
    raw = options.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"redis ledger option {name} must be true or false, got {raw!r}", path=name)


def settings_from_url(url: str | None, environ: Mapping[str, str]) -> LedgerSettings:
    """Resolve a ledger URL (None or a bare ``redis://`` means the environment) to settings.

    >>> settings_from_url("redis://cache:6380/2?prefix=team&fail=open", {}).url
    'redis://cache:6380/2'
    >>> settings_from_url("redis://", {"LLM_PROXY_OPEN_AI_IOREDIS_HOST": "r1"}).url
    'redis://r1:6379/0'
    """
    base: str | None = None
    options: dict[str, str] = {}
    passthrough: dict[str, str] = {}
    if url:
        own_base, options, passthrough = _split(url, "ledger URL")
        if urlsplit(own_base).netloc:
            base = own_base
    if base is None:
        env_url = environ.get(REDIS_URL, "").strip()
        if env_url:
            env_base, env_options, env_rest = _split(env_url, REDIS_URL)
            if urlsplit(env_base).netloc:
                base = env_base
            options = {**env_options, **options}
            shared = {
                key: value
                for key, value in env_rest.items()
                if key in _SHARED_PASSTHROUGH or key.startswith("ssl_")
            }
            passthrough = {**shared, **passthrough}
        if base is None:
            base = _seed_url(environ) or DEFAULT_URL
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
        url=base + (f"?{urlencode(passthrough)}" if passthrough else ""),
        prefix=prefix,
        fail=cast(Fail, fail),
        socket_timeout=_number(options, "socket_timeout", 0.5),
        connect_timeout=_number(options, "connect_timeout", 1.0),
        breaker_failures=_count(options, "breaker_failures", 3),
        breaker_cooldown=_number(options, "breaker_cooldown", 5.0),
        cluster=_flag(options, "cluster"),
    )
