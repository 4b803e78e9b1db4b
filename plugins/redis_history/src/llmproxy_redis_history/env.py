"""The environment variables the Redis history plugin reads, and how a store URL is resolved.

==========================================  ========================================================
Variable                                    Meaning
==========================================  ========================================================
``LLMPROXY_REDIS_URL``                      Where Redis is: ``redis://[user:password@]host:port/db``
                                            or ``rediss://...`` for TLS; store options may follow
                                            as query parameters. Wins over the four seed variables.
``LLM_PROXY_OPEN_AI_IOREDIS_HOST``          The seed library's Redis host (default ``localhost``).
``LLM_PROXY_OPEN_AI_IOREDIS_PORT``          The seed's Redis port (default ``6379``).
``LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX``      The seed's database index (default ``0``).
``LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX``    The seed's key prefix (default ``llm_proxy``); used
                                            unless the URL has ``?prefix=``.
==========================================  ========================================================

The core's ``LLMPROXY_HISTORY_URL`` chooses the store: ``redis://host:port/db?options`` names the
server itself; a bare ``redis://`` (or ``redis://?options``) means "from the environment":
``LLMPROXY_REDIS_URL``, else the seed's ``LLM_PROXY_OPEN_AI_IOREDIS_*`` variables, else
``localhost:6379/0``. ``LLMMessageHandlerImpl()`` reads the same variables, like the seed did.

Store options (query parameters of either URL; those of the history URL win):

=====================  =============================================================================
Option                 Meaning
=====================  =============================================================================
``prefix``             Key prefix (default: the seed's variable, else ``llm_proxy``).
``ttl``                Seconds a message is kept after it was written (default: forever).
``max_messages``       Per-session cap: older messages are dropped, from the seed's key list too.
``on_unavailable``     ``raise`` (default): a load or append fails with ``StoreError`` when Redis
                       is unreachable or times out; ``skip``: the call goes on without history.
``socket_timeout``     Seconds to wait for a reply (default 2).
``connect_timeout``    Seconds to wait for a connection (default 2).
``cache``              ``true`` (default): cache sessions in this process, invalidated by Redis
                       client tracking; ``false`` turns it off. Off on a cluster.
``cache_sessions``     How many sessions the cache keeps (default 1024, least recently used go).
``cache_messages``     How many newest messages of a session the cache keeps (default 1000).
``key_list``           ``true`` (default): keep the seed's global list of message keys;
                       ``false`` skips it (no seed read-back, cheaper deletes).
``cluster``            ``true``: connect with a Redis Cluster client.
=====================  =============================================================================

Other query parameters (``ssl_cert_reqs``, ``ssl_ca_certs``, ``client_name``...) are passed to
``redis-py``'s ``from_url``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from attrs import frozen

from llmproxy.errors import ConfigError

REDIS_URL = "LLMPROXY_REDIS_URL"
SEED_HOST = "LLM_PROXY_OPEN_AI_IOREDIS_HOST"
SEED_PORT = "LLM_PROXY_OPEN_AI_IOREDIS_PORT"
SEED_DB_INDEX = "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX"
SEED_KEY_PREFIX = "LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX"

DEFAULT_PREFIX = "llm_proxy"
SCHEMES = ("redis", "rediss")

OnUnavailable = Literal["raise", "skip"]


@frozen
class RedisSettings:
    """Everything a :class:`~llmproxy_redis_history.RedisHistoryStore` is built from.

    ``url`` is the connection URL handed to ``redis-py`` (store options removed, pass-through
    options kept); the other fields are the store options documented in this module.
    """

    url: str = "redis://localhost:6379/0"
    prefix: str = DEFAULT_PREFIX
    ttl: float | None = None
    max_messages: int | None = None
    on_unavailable: OnUnavailable = "raise"
    socket_timeout: float = 2.0
    connect_timeout: float = 2.0
    cache: bool = True
    cache_sessions: int = 1024
    cache_messages: int = 1000
    key_list: bool = True
    cluster: bool = False

    @property
    def safe_url(self) -> str:
        """The connection URL with any password replaced by ``***``, for messages."""
        return redact(self.url)


def redact(url: str) -> str:
    """Return ``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_OPTIONS = frozenset(
    {
        "prefix",
        "ttl",
        "max_messages",
        "on_unavailable",
        "socket_timeout",
        "connect_timeout",
        "cache",
        "cache_sessions",
        "cache_messages",
        "key_list",
        "cluster",
    }
)


def _split(url: str, what: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Return (url without query, store options, pass-through query) of a redis URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(
            f"{what} {redact(url)!r} must start with redis:// or rediss:// (TLS)", path=what
        )
    ours: dict[str, str] = {}
    rest: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours if key in _OPTIONS else rest)[key] = value
    base = urlunsplit((parts.scheme.lower(), parts.netloc, parts.path, "", ""))
    return base, ours, rest


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
        host = f"[{host}]"
    return f"redis://{quote(host, safe='[]:')}:{port or 6379}/{db or 0}"


def _float(options: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"redis option {name} must be a number, got {raw!r}", path=name) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"redis option {name} must be greater than 0, got {raw!r}", path=name)
    return value


def _int(options: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"redis option {name} must be a whole number, got {raw!r}", path=name
        ) from None
    if value < 1:
        raise ConfigError(f"redis option {name} must be at least 1, got {raw!r}", path=name)
    return value


def _bool(options: Mapping[str, str], name: str, default: bool) -> bool:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"redis option {name} must be true or false, got {raw!r}", path=name)


def settings_from_url(url: str | None, environ: Mapping[str, str]) -> RedisSettings:
    """Resolve a store URL (``None`` or a bare ``redis://`` means the environment) to settings.

    Connection: the URL's own host when it has one, else ``LLMPROXY_REDIS_URL``, else the seed's
    ``LLM_PROXY_OPEN_AI_IOREDIS_*`` variables, else ``localhost:6379/0``. Options: the URL's
    query, then ``LLMPROXY_REDIS_URL``'s, then the seed's prefix variable, then the defaults.
    """
    options: dict[str, str] = {}
    passthrough: dict[str, str] = {}
    base: str | None = None
    if url:
        own_base, own_options, own_rest = _split(url, "history URL")
        if urlsplit(own_base).netloc:
            base = own_base
        options, passthrough = own_options, own_rest
    if base is None:
        env_url = environ.get(REDIS_URL, "").strip()
        if env_url:
            env_base, env_options, env_rest = _split(env_url, REDIS_URL)
            base = env_base if urlsplit(env_base).netloc else None
            options = {**env_options, **options}
            passthrough = {**env_rest, **passthrough}
        if base is None:
            base = _seed_url(environ) or "redis://localhost:6379/0"
    prefix = options.get("prefix") or environ.get(SEED_KEY_PREFIX, "").strip() or DEFAULT_PREFIX
    on_unavailable = options.get("on_unavailable", "raise").strip().lower() or "raise"
    if on_unavailable not in ("raise", "skip"):
        raise ConfigError(
            f"redis option on_unavailable must be 'raise' or 'skip', got {on_unavailable!r}",
            path="on_unavailable",
        )
    connection_url = base + (f"?{urlencode(passthrough)}" if passthrough else "")
    return RedisSettings(
        url=connection_url,
        prefix=prefix,
        ttl=_float(options, "ttl", None),
        max_messages=_int(options, "max_messages", None),
        on_unavailable=cast(OnUnavailable, on_unavailable),
        socket_timeout=_float(options, "socket_timeout", 2.0) or 2.0,
        connect_timeout=_float(options, "connect_timeout", 2.0) or 2.0,
        cache=_bool(options, "cache", True),
        cache_sessions=_int(options, "cache_sessions", 1024) or 1024,
        cache_messages=_int(options, "cache_messages", 1000) or 1000,
        key_list=_bool(options, "key_list", True),
        cluster=_bool(options, "cluster", False),
    )
