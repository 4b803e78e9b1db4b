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
``localhost:6379/0``. ``LLMMessageHandlerImpl()`` reads the same variables, like the seed did,
and the seed's services (``OpenAIService``...) use this store whenever one of the seed's
variables is set and ``LLMPROXY_HISTORY_URL`` is not (``llmproxy.service.seed_history_url``).

Store options (query parameters of either URL; those of the history URL win):

=====================  =============================================================================
Option                 Meaning
=====================  =============================================================================
``prefix``             Key prefix (default: the seed's variable, else ``llm_proxy``).
``ttl``                Seconds a message is kept after it was written (default: forever).
``max_messages``       Per-session cap: older messages are dropped, from the seed's key list too.
``on_unavailable``     ``raise`` (default): a load or append fails with ``StoreError`` when Redis
                       is unreachable or times out; ``skip``: the call goes on without history.
``socket_timeout``     Seconds to wait for a reply (default 5: a busy machine answers late,
                       not never; a shorter timeout turns load into errors).
``connect_timeout``    Seconds to wait for a connection (default 2).
``cache``              ``true`` (default): cache sessions in this process, kept current by the
                       history feed (pub/sub) and Redis client tracking; ``false`` turns it
                       off. Off on a cluster.
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

from collections.abc import Mapping
from typing import Literal, cast

from attrs import frozen

from llmproxy import redis_url
from llmproxy.errors import ConfigError

REDIS_URL = redis_url.REDIS_URL  # "LLMPROXY_REDIS_URL"
SEED_HOST = redis_url.SEED_HOST  # "LLM_PROXY_OPEN_AI_IOREDIS_HOST"
SEED_PORT = redis_url.SEED_PORT  # "LLM_PROXY_OPEN_AI_IOREDIS_PORT"
SEED_DB_INDEX = redis_url.SEED_DB_INDEX  # "LLM_PROXY_OPEN_AI_IOREDIS_DB_INDEX"
SEED_KEY_PREFIX = redis_url.SEED_KEY_PREFIX  # "LLM_PROXY_OPEN_AI_IOREDIS_KEY_PREFIX"

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
    socket_timeout: float = 5.0
    connect_timeout: float = 2.0
    cache: bool = True
    cache_sessions: int = 1024
    cache_messages: int = 1000
    key_list: bool = True
    cluster: bool = False

    @property
    def safe_url(self) -> str:
        """The connection URL with any password replaced by ``***``, for messages."""
        return redis_url.redact(self.url)


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


def settings_from_url(url: str | None, environ: Mapping[str, str]) -> RedisSettings:
    """Resolve a store URL (``None`` or a bare ``redis://`` means the environment) to settings.

    Connection: the URL's own host when it has one, else ``LLMPROXY_REDIS_URL``, else the seed's
    ``LLM_PROXY_OPEN_AI_IOREDIS_*`` variables, else ``localhost:6379/0``. Options: the URL's
    query, then ``LLMPROXY_REDIS_URL``'s, then the seed's prefix variable, then the defaults.
    """
    connection_url, options = redis_url.resolve(url, environ, _OPTIONS, "history URL")
    prefix = options.get("prefix") or environ.get(SEED_KEY_PREFIX, "").strip() or DEFAULT_PREFIX
    on_unavailable = options.get("on_unavailable", "raise").strip().lower() or "raise"
    if on_unavailable not in ("raise", "skip"):
        raise ConfigError(
            f"redis option on_unavailable must be 'raise' or 'skip', got {on_unavailable!r}",
            path="on_unavailable",
        )
    return RedisSettings(
        url=connection_url,
        prefix=prefix,
        ttl=redis_url.seconds(options, "ttl", 0.0) or None,
        max_messages=redis_url.count(options, "max_messages", 0) or None,
        on_unavailable=cast(OnUnavailable, on_unavailable),
        socket_timeout=redis_url.seconds(options, "socket_timeout", 5.0),
        connect_timeout=redis_url.seconds(options, "connect_timeout", 2.0),
        cache=redis_url.flag(options, "cache", True),
        cache_sessions=redis_url.count(options, "cache_sessions", 1024),
        cache_messages=redis_url.count(options, "cache_messages", 1000),
        key_list=redis_url.flag(options, "key_list", True),
        cluster=redis_url.flag(options, "cluster", False),
    )
