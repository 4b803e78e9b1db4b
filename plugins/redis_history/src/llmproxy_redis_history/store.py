"""``RedisHistoryStore``: history in Redis, in the seed's layout, sync and async.

Round trips per call on a single Redis (after the first use of a connection and script):

* ``append``: 1 (one ``MULTI``/``EXEC`` holding the APPEND script, which writes the hashes, both
  list pushes, the session's meta, index and version and publishes the messages on the feed,
  and, with a cap or TTL, the trimming script).
* ``append_with``: 1 for the append and a ledger's settle together (a Proxy whose Redis ledger
  is on the same server sends its last settle first inside the append's ``MULTI``/``EXEC``; see
  :mod:`llmproxy.pipelining`).
* ``load``: 1 (one Lua script reads the list and every hash), 0 when the session is cached.
* ``load_with``: 1 for the load and a ledger's reserve together (one pipeline; see
  :mod:`llmproxy.pipelining`), the reserve alone when the session is cached.
* ``sessions``: 2 (the index, then one pipeline of every session's meta and length).
* ``delete``: 1 (one Lua script).

On a Redis Cluster ``append`` and ``delete`` take a second round trip: the session's own keys
are written in one transaction in their slot, then the seed's global key list and the session
index (single keys living in other slots) are updated. If that second step fails, the exchange
is stored and loads, but the global list and ``sessions()`` miss it until the next append.

Failures: every Redis error is raised as :class:`~llmproxy.errors.StoreError`, and
:class:`RedisUnavailable` (a subclass) when Redis cannot be reached or does not answer within
``socket_timeout``. With ``on_unavailable="skip"`` a load returns no history and an append is
dropped (both logged) instead; listing and deleting always raise. Nothing is retried after a
timeout (the server may still apply the command, so a retry could store an exchange twice); a
broken connection is retried once on a new connection, and an append first checks whether its
exchange already landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import attrs
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmproxy.errors import InvalidRequest, StoreError
from llmproxy.history.base import HistoryRecord, SessionInfo
from llmproxy.pipelining import QueuedReserve, QueuedSettle
from llmproxy.secret import logger as secret_logger
from llmproxy_redis_history import scripts
from llmproxy_redis_history.cache import SessionCache, Tracker
from llmproxy_redis_history.env import RedisSettings, settings_from_url
from llmproxy_redis_history.layout import (
    Keys,
    from_hash,
    pairs_to_dict,
    session_of_tag,
    session_tag,
    to_hash,
)

log = secret_logger("llmproxy.redis_history")

T = TypeVar("T")

_GLOBAL_HEAD_SCAN = 100
"""How many of the oldest keys of the seed's list an append checks for expiry (TTL only)."""


class RedisUnavailable(StoreError):
    """Redis could not be reached or did not answer in time."""


@attrs.define
class _Plan:
    """One session's part of an append."""

    session_id: str
    tag: str
    list_key: str
    meta_key: str
    message_keys: list[str]
    hashes: list[dict[str, str]]
    created_at: str
    updated_at: float
    records: list[HistoryRecord]
    blobs_key: str
    blobs: dict[str, str]
    """The part data the messages reference (SHA-256 hex -> base64), written with HSETNX."""
    idempotent: bool = False
    """Some record has an id: written by the APPEND script, which skips stored ids."""
    written: list[str] | None = None
    """The keys the APPEND script wrote (None: unknown)."""
    version: int | None = None
    """The session's version after the write (0: nothing written; None: unknown)."""

    def added(self) -> list[HistoryRecord] | None:
        """The records this write stored, for the cache; None when it cannot be known."""
        if not self.idempotent:
            return list(self.records)
        if self.written is None:
            return None
        written = set(self.written)
        return [r for r, k in zip(self.records, self.message_keys, strict=True) if k in written]


def _options_query(options: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in options.items():
        if value is None:
            continue
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and limit < 0:
        raise InvalidRequest(f"history limit must be >= 0 or None, got {limit}", field="limit")
    return limit


class RedisHistoryStore:
    """History in Redis (or Redis Cluster), readable by the seed's own ``LRANGE``/``HGETALL``.

    ``url`` is a ``redis://`` or ``rediss://`` URL with options as query parameters (see
    :mod:`llmproxy_redis_history.env`); None or a bare ``redis://`` reads the connection from
    ``environ`` (``LLMPROXY_REDIS_URL``, else the seed's ``LLM_PROXY_OPEN_AI_IOREDIS_*``). Keyword
    options (``prefix="app"``, ``ttl=3600``, ``max_messages=500``, ``on_unavailable="skip"``,
    ``socket_timeout=2``, ``cache=False``...) win over the URL's.

    Thread-safe; the async methods use ``redis.asyncio`` (one client per event loop); on a
    cluster they run the sync client in a worker thread, because ``redis.asyncio``'s cluster
    transactions (redis-py 8.1) bind connections to the wrong event loop. Close with
    :meth:`close` (or ``await`` :meth:`aclose` inside the loop that used the async methods).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        env = os.environ if environ is None else environ
        if options:
            extra = urlencode(_options_query(options))
            base = url or "redis://"
            url = base + ("&" if "?" in base else "?") + extra if extra else base
        self.settings: RedisSettings = settings_from_url(url, env)
        s = self.settings
        self.keys = Keys(s.prefix)
        self._writer_token = secrets.token_hex(6)
        self._ttl_ms = round(s.ttl * 1000) if s.ttl is not None else None
        self._lock = threading.Lock()
        self._client: Any = None
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        self.cache: SessionCache | None = None
        self._tracker: Tracker | None = None
        if s.cache and not s.cluster:
            self.cache = SessionCache(max_sessions=s.cache_sessions, max_messages=s.cache_messages)
            self._tracker = Tracker(
                self._tracking_connection,
                self.keys,
                lambda: self.writer,
                self.cache,
                feed=self._on_feed,
            )

    @property
    def writer(self) -> str:
        """The writer id this store puts in mark keys (a forked child gets its own)."""
        return f"{self._writer_token}.{os.getpid()}"

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> RedisHistoryStore:
        """Build a store from a history URL (the plugin's factory)."""
        return cls(url, environ=environ)

    def __repr__(self) -> str:
        return f"<RedisHistoryStore {self.settings.safe_url} prefix={self.settings.prefix!r}>"

    # -- clients ---------------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        s = self.settings
        return {
            "decode_responses": True,
            "socket_timeout": s.socket_timeout,
            "socket_connect_timeout": s.connect_timeout,
            "socket_keepalive": True,
        }

    def _sync(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._closed:
                    raise StoreError(f"{self!r} is closed; create a new store to use it")
                if self._client is None:
                    kwargs = self._client_kwargs()
                    if self.settings.cluster:
                        from redis.cluster import RedisCluster

                        self._client = RedisCluster.from_url(
                            self.settings.url, retry=Retry(NoBackoff(), 0), **kwargs
                        )
                    else:
                        self._client = redis.Redis.from_url(
                            self.settings.url, retry=Retry(NoBackoff(), 0), **kwargs
                        )
                client = self._client
        return client

    def _async(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._lock:
                if self._closed:
                    raise StoreError(f"{self!r} is closed; create a new store to use it")
                client = self._aclients.get(loop)
                if client is None:
                    from redis.asyncio.retry import Retry as AsyncRetry

                    client = redis.asyncio.Redis.from_url(
                        self.settings.url,
                        retry=AsyncRetry(NoBackoff(), 0),
                        **self._client_kwargs(),
                    )
                    self._aclients[loop] = client
        return client

    def _tracking_connection(self) -> Any:
        pool = self._sync().connection_pool
        return pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})

    def poll_cache(self) -> bool:
        """Apply the invalidations and feed messages that arrived, without a round trip.

        True when the cache is in use (a load then answers from it when it can). Every load
        does this first; tests and tools call it to wait for another process's write to show.
        """
        return self.cache is not None and self._tracker is not None and self._tracker.ready()

    def cached_version(self, session_id: str) -> int | None:
        """The version of the session the cache holds, or None (not cached, or unknown)."""
        return None if self.cache is None else self.cache.version_of(session_id)

    def _on_feed(self, payload: str) -> None:
        """Apply another process's append, read from the feed, to the cache."""
        if self.cache is None or payload.startswith(f'{{"w":{json.dumps(self.writer)},'):
            return  # this store's own append (it applied it itself): not even parsed
        message = json.loads(payload)
        if message["w"] == self.writer:
            return
        session_id = session_of_tag(message["t"])
        blobs = message["b"] or None
        records = [from_hash(pairs_to_dict(row), blobs) for row in message["rows"]]
        if any(record.session_id != session_id for record in records):
            raise ValueError(f"a message of another session in session {session_id!r}")
        self.cache.feed(
            session_id,
            int(message["v"]),
            records,
            int(message["n"]),
            self.settings.max_messages,
            self.settings.ttl,
        )

    # -- errors ----------------------------------------------------------------------------------

    def _error(self, what: str, exc: BaseException) -> StoreError:
        where = f"redis history store {self.settings.safe_url} (prefix {self.settings.prefix!r})"
        text = str(exc) or type(exc).__name__
        if isinstance(exc, redis.AuthenticationError):
            return StoreError(
                f"{where}: {what} failed: {text}; check the user and password in the URL"
            )
        if isinstance(exc, redis.TimeoutError):
            return RedisUnavailable(
                f"{where}: {what} got no answer within {self.settings.socket_timeout:g}s"
                f" ({text}); check that Redis is not overloaded, or raise socket_timeout"
            )
        if isinstance(exc, redis.ConnectionError | OSError) or _is_cluster_down(exc):
            return RedisUnavailable(
                f"{where}: {what} failed: {text}; check that Redis is running and reachable"
                " (LLMPROXY_REDIS_URL or the URL's host and port)"
            )
        if isinstance(exc, redis.ResponseError) and "WRONGTYPE" in text:
            return StoreError(
                f"{where}: {what} failed: {text}; a key under this prefix holds something else:"
                " choose another prefix"
            )
        return StoreError(f"{where}: {what} failed: {text}")

    def _skip(self, what: str, exc: RedisUnavailable) -> bool:
        if self.settings.on_unavailable != "skip":
            return False
        log.warning("%s; going on without history (on_unavailable=skip)", exc)
        return True

    def _run(self, what: str, call: Callable[[Any], T], *, retry: bool = True) -> T:
        client = self._sync()
        try:
            return call(client)
        except redis.TimeoutError as exc:
            raise self._error(what, exc) from exc
        except (redis.ConnectionError, OSError) as exc:
            if not retry:
                raise self._error(what, exc) from exc
            first = exc
        except redis.RedisError as exc:
            raise self._error(what, exc) from exc
        try:  # once more on a new connection: the broken one was dropped from the pool
            return call(client)
        except (redis.RedisError, OSError) as exc:
            raise self._error(what, exc) from first

    async def _arun(
        self, what: str, call: Callable[[Any], Awaitable[T]], *, retry: bool = True
    ) -> T:
        client = self._async()
        try:
            return await call(client)
        except redis.TimeoutError as exc:
            raise self._error(what, exc) from exc
        except (redis.ConnectionError, OSError) as exc:
            if not retry:
                raise self._error(what, exc) from exc
            first = exc
        except redis.RedisError as exc:
            raise self._error(what, exc) from exc
        try:
            return await call(client)
        except (redis.RedisError, OSError) as exc:
            raise self._error(what, exc) from first

    # -- scripts ---------------------------------------------------------------------------------

    @staticmethod
    def _script(client: Any, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(scripts.SHAS[script], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(script, len(keys), *keys, *args)

    @staticmethod
    async def _ascript(client: Any, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(scripts.SHAS[script], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await client.eval(script, len(keys), *keys, *args)

    # -- load ------------------------------------------------------------------------------------

    def _cached(self, session_id: str, limit: int | None) -> tuple[list[HistoryRecord] | None, int]:
        """Return (the cached answer or None, the epoch to store a fresh read at; -1: don't)."""
        if self.cache is None or self._tracker is None or not self._tracker.ready():
            return None, -1
        hit = self.cache.get(session_id, limit)
        return hit, (self.cache.begin_load() if hit is None else -1)

    def _loaded(
        self, session_id: str, limit: int | None, reply: Any, started: int
    ) -> list[HistoryRecord]:
        ttl_ms, rows, blob_json, version = reply
        try:
            blobs = json.loads(blob_json) if blob_json != "{}" else None
            records = [from_hash(pairs_to_dict(row), blobs) for row in json.loads(rows)]
        except (ValueError, TypeError) as exc:
            raise StoreError(
                f"redis history store: session {session_id!r} holds a malformed message ({exc})"
            ) from exc
        for record in records:
            if record.session_id != session_id:
                raise StoreError(
                    f"redis history store: session {session_id!r} lists a message of session"
                    f" {record.session_id!r}; the keys were changed outside llmproxy"
                )
        if self.cache is not None and started >= 0:
            self.cache.store(session_id, records, limit, started, int(ttl_ms), int(version))
        return records

    def load(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Return the last ``limit`` records of a session (all when None), oldest first."""
        if _check_limit(limit) == 0:
            return []
        hit, started = self._cached(session_id, limit)
        if hit is not None:
            return hit
        tag = session_tag(session_id)
        keys = [self.keys.messages(tag), self.keys.blobs(tag), self.keys.meta(tag)]
        return self._load_sent(session_id, limit, keys, -1 if limit is None else limit, started)

    def _load_sent(
        self, session_id: str, limit: int | None, keys: list[str], arg: int, started: int
    ) -> list[HistoryRecord]:
        """Read a session from Redis (one round trip)."""
        try:
            reply = self._run("load", lambda c: self._script(c, scripts.LOAD, keys, [arg]))
        except RedisUnavailable as exc:
            if self._skip("load", exc):
                return []
            raise
        return self._loaded(session_id, limit, reply, started)

    async def aload(self, session_id: str, limit: int | None = None) -> list[HistoryRecord]:
        """Async :meth:`load`."""
        if self.settings.cluster:
            return await asyncio.to_thread(self.load, session_id, limit)
        if _check_limit(limit) == 0:
            return []
        hit, started = self._cached(session_id, limit)
        if hit is not None:
            return hit
        tag = session_tag(session_id)
        keys = [self.keys.messages(tag), self.keys.blobs(tag), self.keys.meta(tag)]
        return await self._aload_sent(
            session_id, limit, keys, -1 if limit is None else limit, started
        )

    async def _aload_sent(
        self, session_id: str, limit: int | None, keys: list[str], arg: int, started: int
    ) -> list[HistoryRecord]:
        """Async :meth:`_load_sent`."""
        try:
            reply = await self._arun("load", lambda c: self._ascript(c, scripts.LOAD, keys, [arg]))
        except RedisUnavailable as exc:
            if self._skip("load", exc):
                return []
            raise
        return self._loaded(session_id, limit, reply, started)

    # -- load with a ledger's reserve on the same server (llmproxy.pipelining) -----------------

    def _shared_load(
        self, session_id: str, limit: int | None, reserve: Callable[[str], QueuedReserve | None]
    ) -> tuple[list[HistoryRecord] | None, int, list[str], int, QueuedReserve | None]:
        """The cached answer, or what a read needs: (hit, epoch, keys, limit arg, reserve)."""
        hit, started = self._cached(session_id, limit)
        tag = session_tag(session_id)
        keys = [self.keys.messages(tag), self.keys.blobs(tag), self.keys.meta(tag)]
        arg = -1 if limit is None else limit
        if hit is not None:
            return hit, started, keys, arg, None
        return None, started, keys, arg, reserve(keys[0])

    @staticmethod
    def _load_pipe(client: Any, keys: list[str], arg: int, queued: QueuedReserve) -> Any:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", scripts.SHAS[scripts.LOAD], len(keys), *keys, arg)
        for command in queued.commands:
            pipe.execute_command(*command)
        return pipe

    def _shared_failed(self, exc: StoreError, queued: QueuedReserve) -> bool:
        """Tell the reserve the shared read failed; True to load again on a new connection."""
        cause = _redis_cause(exc)
        queued.failed(cause)
        return isinstance(cause, redis.ConnectionError | OSError) and not isinstance(
            cause, redis.TimeoutError
        )

    def load_with(
        self, session_id: str, limit: int | None, reserve: Callable[[str], QueuedReserve | None]
    ) -> list[HistoryRecord]:
        """:meth:`load`, with a ledger's reserve in the same round trip (one pipeline).

        ``reserve`` is called only when the session is not cached, with the session's list key
        (the reserve's guard: see :mod:`llmproxy.pipelining`). On a cluster, a plain load.
        """
        if self.settings.cluster or _check_limit(limit) == 0:
            return self.load(session_id, limit)
        hit, started, keys, arg, queued = self._shared_load(session_id, limit, reserve)
        if hit is not None:
            return hit
        if queued is None:
            return self._load_sent(session_id, limit, keys, arg, started)
        try:
            replies = self._run(
                "load",
                lambda c: self._load_pipe(c, keys, arg, queued).execute(raise_on_error=False),
                retry=False,
            )
        except StoreError as exc:
            if self._shared_failed(exc, queued):
                return self._load_sent(session_id, limit, keys, arg, started)
            if isinstance(exc, RedisUnavailable) and self._skip("load", exc):
                return []
            raise
        queued.done(replies[1:])
        reply = replies[0]
        if isinstance(reply, redis.exceptions.NoScriptError):
            return self._load_sent(session_id, limit, keys, arg, started)
        if isinstance(reply, BaseException):
            raise self._error("load", reply) from reply
        return self._loaded(session_id, limit, reply, started)

    async def aload_with(
        self, session_id: str, limit: int | None, reserve: Callable[[str], QueuedReserve | None]
    ) -> list[HistoryRecord]:
        """Async :meth:`load_with`."""
        if self.settings.cluster or _check_limit(limit) == 0:
            return await self.aload(session_id, limit)
        hit, started, keys, arg, queued = self._shared_load(session_id, limit, reserve)
        if hit is not None:
            return hit
        if queued is None:
            return await self._aload_sent(session_id, limit, keys, arg, started)

        async def run(client: Any) -> list[Any]:
            replies: list[Any] = await self._load_pipe(client, keys, arg, queued).execute(
                raise_on_error=False
            )
            return replies

        try:
            replies = await self._arun("load", run, retry=False)
        except StoreError as exc:
            if self._shared_failed(exc, queued):
                return await self._aload_sent(session_id, limit, keys, arg, started)
            if isinstance(exc, RedisUnavailable) and self._skip("load", exc):
                return []
            raise
        queued.done(replies[1:])
        reply = replies[0]
        if isinstance(reply, redis.exceptions.NoScriptError):
            return await self._aload_sent(session_id, limit, keys, arg, started)
        if isinstance(reply, BaseException):
            raise self._error("load", reply) from reply
        return self._loaded(session_id, limit, reply, started)

    # -- append ----------------------------------------------------------------------------------

    def _plans(self, records: Sequence[HistoryRecord]) -> list[_Plan]:
        groups: dict[str, list[HistoryRecord]] = {}
        for record in records:
            groups.setdefault(record.session_id, []).append(record)
        exchange = f"{time.time_ns():x}{secrets.token_hex(4)}"
        plans = []
        for session_id, group in groups.items():
            tag = session_tag(session_id)
            blobs: dict[str, str] = {}
            hashes = [to_hash(record, blobs) for record in group]
            plans.append(
                _Plan(
                    session_id,
                    tag,
                    self.keys.messages(tag),
                    self.keys.meta(tag),
                    [
                        self.keys.message(tag, record.id or f"{exchange}.{i}")
                        for i, record in enumerate(group)
                    ],
                    hashes,
                    repr(float(group[0].created_at)),
                    max(float(record.created_at) for record in group),
                    group,
                    self.keys.blobs(tag),
                    blobs,
                    any(record.id is not None for record in group),
                )
            )
        return plans

    def _queue_session(
        self, pipe: Any, plan: _Plan, *, globals_here: bool
    ) -> tuple[int | None, int | None]:
        """Queue one session's writes; return the indexes of the prune and append scripts' replies.

        The APPEND script writes the messages (skipping a message whose hash exists: the same
        record appended again), the meta hash and the index, and publishes the messages on the
        feed (single Redis) for other processes' caches.
        """
        s, keys, ttl = self.settings, self.keys, self._ttl_ms
        for blob, data in plan.blobs.items():
            # the same bytes sent again in the session are stored once
            pipe.hsetnx(plan.blobs_key, blob, data)
        if plan.blobs and ttl:
            pipe.pexpire(plan.blobs_key, ttl)
        with_list = bool(globals_here and s.key_list)
        script_keys = [
            plan.list_key,
            plan.meta_key,
            *([keys.sessions] if globals_here else []),
            *([keys.key_list] if with_list else []),
        ]
        args: list[Any] = [
            ttl or 0,
            "1" if with_list else "0",
            "1" if globals_here else "0",
            plan.session_id,
            repr(plan.updated_at),
            plan.created_at,
            plan.tag,
            "" if s.cluster else keys.feed,
            self.writer,
            json.dumps(plan.blobs, separators=(",", ":")) if plan.blobs else "{}",
            "" if s.cluster else keys.mark(plan.tag, self.writer),
        ]
        for fields in plan.hashes:
            args.append(len(fields))
            for name, value in fields.items():
                args += (name, value)
        # ``execute_command``: a cluster pipeline has no ``eval`` method, but routes EVAL. EVAL,
        # not EVALSHA: inside MULTI a missing script would fail alone, the rest applied.
        pipe.execute_command(
            "EVAL",
            scripts.APPEND,
            len(script_keys) + len(plan.message_keys),
            *script_keys,
            *plan.message_keys,
            *args,
        )
        append_at = len(pipe) - 1
        prune_at = None
        if s.max_messages is not None or ttl:
            prune_keys = [plan.list_key, plan.meta_key, plan.blobs_key]
            if globals_here and s.key_list:
                prune_keys.append(keys.key_list)
            scan = _GLOBAL_HEAD_SCAN if ttl else 0
            pipe.execute_command(
                "EVAL", scripts.PRUNE, len(prune_keys), *prune_keys, s.max_messages or 0, scan
            )
            prune_at = len(pipe) - 1
        return prune_at, append_at

    def _queue_globals(self, pipe: Any, plan: _Plan, removed: Sequence[str]) -> None:
        """Cluster, second step: the seed's key list and the session index."""
        if self.settings.key_list:
            pushed = plan.message_keys if plan.written is None else plan.written
            if pushed:
                pipe.rpush(self.keys.key_list, *pushed)
            for key in removed:
                pipe.lrem(self.keys.key_list, 1, key)
        pipe.zadd(self.keys.sessions, {plan.tag: plan.updated_at})

    def _write_sync(
        self, client: Any, plans: list[_Plan], extra: Sequence[tuple[Any, ...]] = ()
    ) -> list[Any]:
        """Write the plans; ``extra`` commands go first in the same MULTI (single Redis only).

        Returns the replies of ``extra`` (what they answered, errors included); the plans'
        own errors are raised.
        """
        if not self.settings.cluster:
            pipe = client.pipeline(transaction=True)
            for command in extra:
                pipe.execute_command(*command)
            at = [self._queue_session(pipe, plan, globals_here=True)[1] for plan in plans]
            replies: list[Any] = pipe.execute(raise_on_error=not extra)
            own = _own_replies(replies, len(extra))
            _note_written(plans, at, replies)
            return own
        assert not extra, "a cluster write carries no other commands"
        for plan in plans:
            pipe = client.pipeline(transaction=True)
            prune_at, append_at = self._queue_session(pipe, plan, globals_here=False)
            replies = pipe.execute()
            _note_written([plan], [append_at], replies)
            removed = replies[prune_at] if prune_at is not None else []
            second = client.pipeline(transaction=False)
            self._queue_globals(second, plan, removed)
            try:
                second.execute()
            except (redis.RedisError, OSError) as exc:
                log.warning(
                    "redis history: session %r stored, but the key list or session index"
                    " was not updated (%s)",
                    plan.session_id,
                    exc,
                )
        return []

    async def _write_async(
        self, client: Any, plans: list[_Plan], extra: Sequence[tuple[Any, ...]] = ()
    ) -> list[Any]:
        if not self.settings.cluster:
            pipe = client.pipeline(transaction=True)
            for command in extra:
                pipe.execute_command(*command)
            at = [self._queue_session(pipe, plan, globals_here=True)[1] for plan in plans]
            replies: list[Any] = await pipe.execute(raise_on_error=not extra)
            own = _own_replies(replies, len(extra))
            _note_written(plans, at, replies)
            return own
        assert not extra, "a cluster write carries no other commands"
        for plan in plans:
            pipe = client.pipeline(transaction=True)
            prune_at, append_at = self._queue_session(pipe, plan, globals_here=False)
            replies = await pipe.execute()
            _note_written([plan], [append_at], replies)
            removed = replies[prune_at] if prune_at is not None else []
            second = client.pipeline(transaction=False)
            self._queue_globals(second, plan, removed)
            try:
                await second.execute()
            except (redis.RedisError, OSError) as exc:
                log.warning(
                    "redis history: session %r stored, but the key list or session index"
                    " was not updated (%s)",
                    plan.session_id,
                    exc,
                )
        return []

    def _begin(self, plans: list[_Plan]) -> list[tuple[int, bool]]:
        if self.cache is None:
            return []
        return [self.cache.begin_write(plan.session_id) for plan in plans]

    def _finish(self, plans: list[_Plan], tokens: list[tuple[int, bool]], ok: bool) -> None:
        if self.cache is None:
            return
        for plan, (token, overlapped) in zip(plans, tokens, strict=True):
            self.cache.finish_write(
                plan.session_id,
                token,
                overlapped,
                plan.added() if ok else None,
                self.settings.max_messages,
                self.settings.ttl,
                plan.version if ok else None,
            )

    def _store_sync(
        self, plans: list[_Plan], extra: Sequence[tuple[Any, ...]] = ()
    ) -> list[Any] | BaseException:
        """Write the plans (with ``extra`` in the same MULTI) or raise a StoreError.

        Returns the replies of ``extra``, or, when the connection broke and the exchange was
        then found stored or written again without them, the exception that broke it.
        """
        last_key = plans[-1].message_keys[-1]
        client = self._sync()
        for plan in plans:
            plan.written = plan.version = None
        try:
            return self._write_sync(client, plans, extra)
        except redis.TimeoutError as exc:
            raise self._error("append (it may or may not have been stored)", exc) from exc
        except (redis.ConnectionError, OSError) as exc:
            # The connection broke: the exchange was applied whole or not at all. Look on a
            # new connection, and write it only if it is not there.
            try:
                if not client.exists(last_key):
                    self._write_sync(client, plans)
            except (redis.RedisError, OSError) as again:
                raise self._error("append", again) from exc
            return exc
        except redis.RedisError as exc:
            raise self._error("append", exc) from exc

    async def _store_async(
        self, plans: list[_Plan], extra: Sequence[tuple[Any, ...]] = ()
    ) -> list[Any] | BaseException:
        """Async :meth:`_store_sync`."""
        last_key = plans[-1].message_keys[-1]
        client = self._async()
        for plan in plans:
            plan.written = plan.version = None
        try:
            return await self._write_async(client, plans, extra)
        except redis.TimeoutError as exc:
            raise self._error("append (it may or may not have been stored)", exc) from exc
        except (redis.ConnectionError, OSError) as exc:
            try:
                if not await client.exists(last_key):
                    await self._write_async(client, plans)
            except (redis.RedisError, OSError) as again:
                raise self._error("append", again) from exc
            return exc
        except redis.RedisError as exc:
            raise self._error("append", exc) from exc

    def append(self, records: Sequence[HistoryRecord]) -> None:
        """Append records (one exchange) atomically: one MULTI/EXEC on a single Redis."""
        if not records:
            return
        plans = self._plans(records)
        tokens = self._begin(plans)
        ok = False
        try:
            self._store_sync(plans)
            ok = True
        except RedisUnavailable as exc:
            if not self._skip("append", exc):
                raise
        finally:
            self._finish(plans, tokens, ok)

    async def aappend(self, records: Sequence[HistoryRecord]) -> None:
        """Async :meth:`append`."""
        if self.settings.cluster:
            return await asyncio.to_thread(self.append, records)
        if not records:
            return
        plans = self._plans(records)
        tokens = self._begin(plans)
        ok = False
        try:
            await self._store_async(plans)
            ok = True
        except RedisUnavailable as exc:
            if not self._skip("append", exc):
                raise
        finally:
            self._finish(plans, tokens, ok)

    # -- one write with a ledger on the same server (llmproxy.pipelining) ----------------------

    def pipeline_key(self) -> str | None:
        """The server's identity, so a ledger on it can send its settle with an append.

        None on a cluster (the ledger's keys live in other slots) and once closed.
        """
        if self.settings.cluster or self._closed:
            return None
        return _server_identity(self._sync())

    def append_with(self, records: Sequence[HistoryRecord], settle: QueuedSettle) -> None:
        """:meth:`append`, with a ledger's queued settle first inside the same MULTI/EXEC.

        One round trip for both, atomic together. Each side keeps its own failure handling:
        the append's (``on_unavailable``) here, the settle's in ``settle`` (its ledger's
        ``fail`` and breaker); when both fail, the ledger's error is the one raised.
        """
        if self.settings.cluster or not records:
            settle.failed(StoreError("the history write cannot carry a settle here"))
            self.append(records)
            return
        plans = self._plans(records)
        tokens = self._begin(plans)
        ok = False
        outcome: list[Any] | BaseException
        error: BaseException | None = None
        try:
            outcome = self._store_sync(plans, settle.commands)
            ok = True
        except BaseException as exc:
            outcome = _redis_cause(exc)
            if not (isinstance(exc, RedisUnavailable) and self._skip("append", exc)):
                error = exc
        finally:
            self._finish(plans, tokens, ok)
        if isinstance(outcome, list):
            settle.done(outcome)
        else:
            settle.failed(outcome)
        if error is not None:
            raise error

    async def aappend_with(self, records: Sequence[HistoryRecord], settle: QueuedSettle) -> None:
        """Async :meth:`append_with`."""
        if self.settings.cluster or not records:
            await settle.afailed(StoreError("the history write cannot carry a settle here"))
            await self.aappend(records)
            return
        plans = self._plans(records)
        tokens = self._begin(plans)
        ok = False
        outcome: list[Any] | BaseException
        error: BaseException | None = None
        try:
            outcome = await self._store_async(plans, settle.commands)
            ok = True
        except BaseException as exc:
            outcome = _redis_cause(exc)
            if not (isinstance(exc, RedisUnavailable) and self._skip("append", exc)):
                error = exc
        finally:
            self._finish(plans, tokens, ok)
        if isinstance(outcome, list):
            await settle.adone(outcome)
        else:
            await settle.afailed(outcome)
        if error is not None:
            raise error

    # -- sessions --------------------------------------------------------------------------------

    def _session_pipe(self, client: Any, tags: list[tuple[str, float]]) -> Any:
        pipe = client.pipeline(transaction=False)
        for tag, _ in tags:
            pipe.hmget(self.keys.meta(tag), "session_id", "created_at", "updated_at")
            pipe.llen(self.keys.messages(tag))
        return pipe

    @staticmethod
    def _infos(
        tags: list[tuple[str, float]], replies: list[Any]
    ) -> tuple[list[SessionInfo], list[str]]:
        infos, stale = [], []
        for index, (tag, _) in enumerate(tags):
            (session_id, created, updated), length = replies[2 * index], replies[2 * index + 1]
            if session_id is None or not length:
                stale.append(tag)
                continue
            infos.append(
                SessionInfo(session_id, int(length), float(created or 0), float(updated or 0))
            )
        return infos, stale

    def sessions(self) -> list[SessionInfo]:
        """List stored sessions, most recently updated first (two round trips)."""

        def run(client: Any) -> list[SessionInfo]:
            tags = client.zrevrange(self.keys.sessions, 0, -1, withscores=True)
            if not tags:
                return []
            infos, stale = self._infos(tags, self._session_pipe(client, tags).execute())
            if stale:  # sessions that expired (TTL) or were removed outside llmproxy
                client.zrem(self.keys.sessions, *stale)
            return infos

        return self._run("list sessions", run)

    async def asessions(self) -> list[SessionInfo]:
        """Async :meth:`sessions`."""
        if self.settings.cluster:
            return await asyncio.to_thread(self.sessions)

        async def run(client: Any) -> list[SessionInfo]:
            tags = await client.zrevrange(self.keys.sessions, 0, -1, withscores=True)
            if not tags:
                return []
            infos, stale = self._infos(tags, await self._session_pipe(client, tags).execute())
            if stale:
                await client.zrem(self.keys.sessions, *stale)
            return infos

        return await self._arun("list sessions", run)

    # -- delete ----------------------------------------------------------------------------------

    def _delete_args(self, tag: str) -> tuple[list[str], list[str]]:
        keys = [self.keys.messages(tag), self.keys.meta(tag), self.keys.blobs(tag)]
        if not self.settings.cluster:
            keys.append(self.keys.sessions)
            if self.settings.key_list:
                keys.append(self.keys.key_list)
            return keys, [tag, self.keys.mark(tag, self.writer)]
        return keys, [tag, ""]

    def _queue_delete_globals(self, pipe: Any, tag: str, removed: Sequence[str]) -> None:
        pipe.zrem(self.keys.sessions, tag)
        if self.settings.key_list:
            for key in removed:
                pipe.lrem(self.keys.key_list, 1, key)

    def blob_count(self, session_id: str) -> int:
        """How many distinct blobs (binary part data) the session keeps."""
        key = self.keys.blobs(session_tag(session_id))
        return int(self._run("count blobs", lambda c: c.hlen(key)))

    def delete(self, session_id: str) -> int:
        """Delete a session (its hashes, list, meta and blobs, and its keys in the seed's list)."""
        tag = session_tag(session_id)
        keys, args = self._delete_args(tag)
        token = self.cache.begin_write(session_id) if self.cache is not None else None

        def run(client: Any) -> int:
            count, removed = self._script(client, scripts.DELETE, keys, args)
            if self.settings.cluster:
                pipe = client.pipeline(transaction=False)
                self._queue_delete_globals(pipe, tag, removed)
                pipe.execute()
            return int(count)

        try:
            return self._run("delete", run, retry=False)
        finally:
            if self.cache is not None and token is not None:
                self.cache.finish_write(session_id, token[0], token[1], None, None)

    async def adelete(self, session_id: str) -> int:
        """Async :meth:`delete`."""
        if self.settings.cluster:
            return await asyncio.to_thread(self.delete, session_id)
        tag = session_tag(session_id)
        keys, args = self._delete_args(tag)
        token = self.cache.begin_write(session_id) if self.cache is not None else None

        async def run(client: Any) -> int:
            count, removed = await self._ascript(client, scripts.DELETE, keys, args)
            if self.settings.cluster:
                pipe = client.pipeline(transaction=False)
                self._queue_delete_globals(pipe, tag, removed)
                await pipe.execute()
            return int(count)

        try:
            return await self._arun("delete", run, retry=False)
        finally:
            if self.cache is not None and token is not None:
                self.cache.finish_write(session_id, token[0], token[1], None, None)

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection (sync, async and tracking); the store is not used afterwards.

        Async connections are closed without awaiting (their sockets are shut at once); inside
        a running loop prefer ``await store.aclose()``.
        """
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            aclients = list(self._aclients.values())
            self._aclients.clear()
        if self._tracker is not None:
            self._tracker.close()
        if client is not None:
            client.close()
        for aclient in aclients:
            _drop_async_client(aclient)

    async def aclose(self) -> None:
        """Close the connections, awaiting the async ones of the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            mine = self._aclients.pop(loop, None)
        if mine is not None:
            await mine.aclose()
        self.close()


def _note_written(plans: Sequence[_Plan], at: Sequence[int | None], replies: list[Any]) -> None:
    """Keep on each plan the keys its APPEND script wrote (its reply at index ``at``)."""
    for plan, index in zip(plans, at, strict=True):
        if index is not None:
            reply = replies[index]
            if isinstance(reply, BaseException):
                plan.written = plan.version = None
            else:
                plan.version, plan.written = int(reply[0]), list(reply[1])


def _own_replies(replies: list[Any], extra: int) -> list[Any]:
    """Split a MULTI's replies: raise the first error among the store's own, return the rest."""
    for reply in replies[extra:]:
        if isinstance(reply, redis.RedisError):
            raise reply
    return replies[:extra]


def _redis_cause(exc: BaseException) -> BaseException:
    """The Redis error behind a StoreError (what a queued settle judges the failure by)."""
    if isinstance(exc, StoreError) and isinstance(exc.__cause__, redis.RedisError | OSError):
        return exc.__cause__
    return exc


def _server_identity(client: Any) -> str | None:
    """Which server (and user and database) a redis-py client talks to; None if unknown."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    kw = pool.connection_kwargs
    return (
        f"{pool.connection_class.__name__}|{kw.get('username') or ''}|{kw.get('host')}"
        f"|{kw.get('port')}|{kw.get('path') or ''}|{kw.get('db') or 0}"
    )


def _is_cluster_down(exc: BaseException) -> bool:
    from redis.exceptions import ClusterDownError, MasterDownError, TryAgainError

    return isinstance(exc, ClusterDownError | MasterDownError | TryAgainError)


def _drop_async_client(client: Any) -> None:
    """Shut an async client's sockets without awaiting (its loop may be gone)."""
    pool = client.connection_pool
    for conn in [
        *getattr(pool, "_available_connections", []),
        *getattr(pool, "_in_use_connections", []),
    ]:
        _close_async_connection(conn)


def _close_async_connection(conn: Any) -> None:
    # redis.asyncio connections close their transport synchronously in ``_close`` (what their
    # own ``__del__`` does); a closed event loop refuses, and the socket is then left to GC.
    close = getattr(conn, "_close", None)
    if close is None:
        return
    with contextlib.suppress(RuntimeError):
        close()
