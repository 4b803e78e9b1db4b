"""llmproxy-redis-history: keep llmproxy's history in Redis, in the seed library's layout.

>>> from llmproxy_redis_history import RedisHistoryStore, LLMMessageHandlerImpl
>>> store = RedisHistoryStore("redis://localhost:6379/0?ttl=86400")   # doctest: +SKIP
>>> handler = LLMMessageHandlerImpl()  # the seed variables    # doctest: +SKIP

The classes load on first use, so discovering the plugin does not import redis-py.
"""

from typing import TYPE_CHECKING

from llmproxy.lazy import lazy_exports

if TYPE_CHECKING:
    from llmproxy_redis_history.env import RedisSettings, settings_from_url
    from llmproxy_redis_history.handler import LLMMessageHandlerImpl
    from llmproxy_redis_history.store import RedisHistoryStore, RedisUnavailable

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "LLMMessageHandlerImpl": "llmproxy_redis_history.handler",
        "RedisHistoryStore": "llmproxy_redis_history.store",
        "RedisSettings": "llmproxy_redis_history.env",
        "RedisUnavailable": "llmproxy_redis_history.store",
        "settings_from_url": "llmproxy_redis_history.env",
    },
)

__all__ = [
    "LLMMessageHandlerImpl",
    "RedisHistoryStore",
    "RedisSettings",
    "RedisUnavailable",
    "__version__",
    "settings_from_url",
]
