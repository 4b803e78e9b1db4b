"""The response cache in Redis (``redis://`` and ``rediss://`` cache URLs).

The URL is read as a history URL is (:func:`llmproxy_redis_history.env.settings_from_url`: the
connection from the URL, ``LLMPROXY_REDIS_URL`` or the seed's variables; options ``prefix``,
``socket_timeout``, ``connect_timeout``, ``cluster``); the other history options do not apply.

Layout, under the hash tag ``{PREFIX:response_cache}`` so that a cluster keeps it in one slot:

* ``{PREFIX:response_cache}:e:<key>``: a string, the encoded reply, with its TTL (``PX``).
* ``{PREFIX:response_cache}:index``: a sorted set of keys scored by expiry (milliseconds).
* ``{PREFIX:response_cache}:sizes``: a hash of each key's size in bytes, and ``:bytes`` their
  total.

A read is one round trip (a script: the entry, unless the index says it expired by the
store's clock); a write is one round trip (a script that drops expired entries, writes the
entry, then drops the entries closest to expiry, the oldest under one TTL, while the store holds
more than ``max_entries`` entries or ``max_bytes`` bytes). Redis's own ``maxmemory`` policy may
evict entries as well; a dropped entry is a miss.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Final

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmproxy.cache.base import CacheSettings, ResponseCache
from llmproxy.errors import StoreError
from llmproxy_redis_history.env import RedisSettings, settings_from_url

_GET: Final = """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expires or tonumber(expires) <= tonumber(ARGV[2]) then
    return false
end
return redis.call('GET', KEYS[1])
"""

_PUT: Final = """
local index, sizes, total = KEYS[2], KEYS[3], KEYS[4]
local id, value, ttl, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_entries, max_bytes, entry = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local function drop(key)
    local size = redis.call('HGET', sizes, key)
    if size then
        redis.call('DECRBY', total, size)
        redis.call('HDEL', sizes, key)
    end
    redis.call('ZREM', index, key)
    redis.call('DEL', entry .. key)
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now)) do
    drop(key)
end
drop(id)
local size = string.len(value)
if size > max_bytes then
    return 0
end
redis.call('SET', KEYS[1], value, 'PX', ttl)
redis.call('ZADD', index, now + ttl, id)
redis.call('HSET', sizes, id, size)
redis.call('INCRBY', total, size)
while redis.call('ZCARD', index) > max_entries
        or tonumber(redis.call('GET', total) or '0') > max_bytes do
    drop(redis.call('ZRANGE', index, 0, 0)[1])
end
return 1
"""


class RedisResponseCache(ResponseCache):
    """Cached replies in Redis (or Redis Cluster), shared by every process using the server.

    Thread-safe; the async methods use ``redis.asyncio`` (one client per event loop), or the
    sync client in a worker thread on a cluster. A Redis error is a
    :class:`~llmproxy.errors.StoreError` (the call then goes on uncached).
    """

    def __init__(self, url: str | None, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self.redis: RedisSettings = settings_from_url(url, self.settings.environ)
        base = "{" + self.redis.prefix + ":response_cache}"
        self._entry = base + ":e:"
        self._index = base + ":index"
        self._sizes = base + ":sizes"
        self._total = base + ":bytes"
        self._lock = threading.Lock()
        self._client: Any = None
        self._scripts: tuple[Any, Any] | None = None
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, Any, Any]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<RedisResponseCache {self.redis.safe_url} prefix={self.redis.prefix!r}>"

    def _kwargs(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.redis.socket_timeout,
            "socket_connect_timeout": self.redis.connect_timeout,
            "socket_keepalive": True,
        }

    def _sync(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._client is None:
                if self.redis.cluster:
                    from redis.cluster import RedisCluster

                    self._client = RedisCluster.from_url(
                        self.redis.url, retry=Retry(NoBackoff(), 0), **self._kwargs()
                    )
                else:
                    self._client = redis.Redis.from_url(
                        self.redis.url, retry=Retry(NoBackoff(), 0), **self._kwargs()
                    )
                self._scripts = (
                    self._client.register_script(_GET),
                    self._client.register_script(_PUT),
                )
            assert self._scripts is not None
            return self._client, *self._scripts

    def _async(self) -> tuple[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        found = self._aclients.get(loop)
        if found is None:
            from redis.asyncio.retry import Retry as AsyncRetry

            client = redis.asyncio.Redis.from_url(
                self.redis.url, retry=AsyncRetry(NoBackoff(), 0), **self._kwargs()
            )
            found = (client, client.register_script(_GET), client.register_script(_PUT))
            self._aclients[loop] = found
        return found

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(
            f"redis response cache {self.redis.safe_url} (prefix {self.redis.prefix!r}): {what}"
            f" failed: {exc or type(exc).__name__}; check that Redis is running and reachable"
        )

    def _now_ms(self) -> int:
        return round(self.settings.clock() * 1000)

    def _put_args(self, key: str, value: bytes, ttl: float) -> tuple[list[str], list[Any]]:
        keys = [self._entry + key, self._index, self._sizes, self._total]
        args = [
            key,
            value,
            max(round(ttl * 1000), 1),
            self._now_ms(),
            self.settings.max_entries,
            self.settings.max_bytes,
            self._entry,
        ]
        return keys, args

    def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None (absent or expired)."""
        _, get, _ = self._sync()
        try:
            value = get(keys=[self._entry + key, self._index], args=[key, self._now_ms()])
        except (redis.RedisError, OSError) as exc:
            raise self._error("a lookup", exc) from exc
        return None if value is None else bytes(value)

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds, evicting expired then oldest entries."""
        _, _, put = self._sync()
        keys, args = self._put_args(key, value, ttl)
        try:
            put(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            raise self._error("a write", exc) from exc

    async def aget(self, key: str) -> bytes | None:
        """Async :meth:`get`."""
        if self.redis.cluster:
            return await asyncio.to_thread(self.get, key)
        _, get, _ = self._async()
        try:
            value = await get(keys=[self._entry + key, self._index], args=[key, self._now_ms()])
        except (redis.RedisError, OSError) as exc:
            raise self._error("a lookup", exc) from exc
        return None if value is None else bytes(value)

    async def aput(self, key: str, value: bytes, ttl: float) -> None:
        """Async :meth:`put`."""
        if self.redis.cluster:
            await asyncio.to_thread(self.put, key, value, ttl)
            return
        _, _, put = self._async()
        keys, args = self._put_args(key, value, ttl)
        try:
            await put(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            raise self._error("a write", exc) from exc

    def clear(self) -> None:
        """Drop every entry of this prefix."""
        client, _, _ = self._sync()
        try:
            ids = client.zrange(self._index, 0, -1)
            keys = [self._entry + i.decode() for i in ids]
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            client.delete(self._index, self._sizes, self._total)
        except (redis.RedisError, OSError) as exc:
            raise self._error("clearing", exc) from exc

    def stats(self) -> tuple[int, int]:
        """Entries indexed and their bytes."""
        client, _, _ = self._sync()
        try:
            entries = client.zcard(self._index)
            size = client.get(self._total)
        except (redis.RedisError, OSError) as exc:
            raise self._error("reading the size", exc) from exc
        return int(entries), int(size or 0)

    def close(self) -> None:
        """Close the sync client (async clients are closed by :meth:`aclose`)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
                self._scripts = None

    async def aclose(self) -> None:
        """Close this event loop's async client, then the sync one."""
        loop = asyncio.get_running_loop()
        found = self._aclients.pop(loop, None)
        if found is not None:
            await found[0].aclose()
        self.close()
