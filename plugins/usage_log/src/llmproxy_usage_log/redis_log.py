r"""``redis://`` / ``rediss://``: a usage log several gateways and apps can share.

Layout, with prefix ``P``:

==============================  ===================================================================
key                             what
==============================  ===================================================================
``P:usage:calls``               a stream of the newest calls (field ``r``: the record as JSON),
                                capped at about ``max_calls``: :meth:`recent` reads it
``P:usage:m:<minute>``          a hash of one minute's sums (``<minute>`` is its Unix start):
                                fields ``<dimension>\x1f<value>\x1f<metric>`` for dimensions
                                ``model``, ``provider``, ``user``, ``key``, ``alias`` (its
                                model for a call without one) and ``all``, metrics
                                ``calls errors input output cached reasoning cost hits writes``
                                (hits: calls answered from the response cache; writes: input
                                tokens written to the provider's prompt cache), and
                                ``limit\x1f<kind>:<policy>\x1fhits``; expires after ``retention``
``P:usage:minutes``             a sorted set of the minutes that have a hash
==============================  ===================================================================

A batch of calls is summed per minute in Python and written in one ``MULTI``/``EXEC`` (one round
trip). Series, totals and limit hits read the minute hashes of the range in one pipeline, so
queries cost the same however many calls were made; the smallest bucket is a minute.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

from llmproxy.errors import StoreError
from llmproxy_usage_log import env
from llmproxy_usage_log.base import (
    NONE,
    Dimension,
    LimitHit,
    Point,
    Totals,
    UsageLog,
    UsageRecord,
)

SEP = "\x1f"
_METRICS = (
    "calls",
    "errors",
    "input",
    "output",
    "cached",
    "reasoning",
    "cost",
    "hits",
    "writes",
)
_OPTIONS = frozenset(
    ("prefix", "max_calls", "retention", "socket_timeout", "flush_interval", "batch")
)
DEFAULT_RETENTION = 90 * 86400.0


def _safe(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@")


class RedisUsageLog(UsageLog):
    """A usage log in Redis: a capped stream of calls and per-minute sums."""

    resolution = 60.0

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "llmproxy",
        max_calls: int = 100_000,
        retention: float = DEFAULT_RETENTION,
        socket_timeout: float = 2.0,
        flush_interval: float = 0.25,
        batch: int = 256,
    ) -> None:
        import redis

        super().__init__(flush_interval=flush_interval, batch=batch)
        self.url = url
        self.prefix = prefix
        self.max_calls = max_calls
        self.retention = retention
        self._redis_error: type[Exception] = redis.RedisError
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
        self._calls = f"{prefix}:usage:calls"
        self._minutes = f"{prefix}:usage:minutes"

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str]) -> RedisUsageLog:
        """Open the log a ``redis://`` URL names; a bare ``redis://`` reads the environment."""
        base, options = env.split_options(url)
        if not urlsplit(base).netloc:
            env_url = environ.get(env.REDIS_URL, "").strip()
            if env_url:
                env_base, env_options = env.split_options(env_url)
                base = env_base
                options = {**env_options, **options}
            else:
                base = "redis://localhost:6379/0"
        ours = {k: v for k, v in options.items() if k in _OPTIONS}
        rest = {k: v for k, v in options.items() if k not in _OPTIONS}
        connection = base + (f"?{urlencode(rest)}" if rest else "")
        return cls(
            connection,
            prefix=ours.get("prefix") or "llmproxy",
            max_calls=int(env.number(ours, "max_calls", 100_000) or 100_000),
            retention=env.number(ours, "retention", DEFAULT_RETENTION) or DEFAULT_RETENTION,
            socket_timeout=env.number(ours, "socket_timeout", 2.0) or 2.0,
            flush_interval=env.number(ours, "flush_interval", 0.25) or 0.25,
            batch=int(env.number(ours, "batch", 256) or 256),
        )

    def describe(self) -> str:
        """The Redis URL, password hidden."""
        return _safe(self.url)

    def _fail(self, exc: Exception) -> StoreError:
        return StoreError(f"usage log {self.describe()}: {exc}")

    def _minute_key(self, minute: float) -> str:
        return f"{self.prefix}:usage:m:{int(minute)}"

    # -- writing ------------------------------------------------------------------------------

    def _write(self, records: Sequence[UsageRecord]) -> None:
        sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        last_hit: dict[int, dict[str, float]] = defaultdict(dict)
        for r in records:
            minute = int(r.ts // 60) * 60
            fields = sums[minute]
            values = (
                1,
                r.outcome == "error",
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.reasoning_tokens,
                r.cost or 0.0,
                r.cache_hit,
                r.cache_write_tokens,
            )
            for dim, value in (
                ("all", "*"),
                ("model", r.model),
                ("provider", r.provider),
                ("user", NONE if r.user is None else r.user),
                ("key", NONE if r.key is None else r.key),
                ("alias", r.alias or r.model),
            ):
                head = f"{dim}{SEP}{value}{SEP}"
                for metric, amount in zip(_METRICS, values, strict=True):
                    if amount:
                        fields[head + metric] += amount
            if r.limit is not None:
                head = f"limit{SEP}{r.limit}:{r.policy or NONE}{SEP}"
                fields[head + "hits"] += 1
                last = last_hit[minute]
                last[head + "last"] = max(last.get(head + "last", 0.0), r.ts)
        expire = max(int(self.retention), 60) + 60
        pipe = self._client.pipeline(transaction=True)
        for minute, fields in sums.items():
            key = self._minute_key(minute)
            for field, amount in fields.items():
                if field.endswith(f"{SEP}cost"):
                    pipe.hincrbyfloat(key, field, amount)
                else:
                    pipe.hincrby(key, field, int(amount))
            if last_hit.get(minute):
                marks: dict[Any, Any] = last_hit[minute]
                pipe.hset(key, mapping=marks)
            pipe.expire(key, expire)
            pipe.zadd(self._minutes, {str(minute): minute})
        pipe.zremrangebyscore(self._minutes, "-inf", f"({time.time() - self.retention}")
        for r in records:
            pipe.xadd(
                self._calls,
                {"r": json.dumps(r.to_json(), separators=(",", ":"))},
                maxlen=self.max_calls,
                approximate=True,
            )
        try:
            pipe.execute()
        except self._redis_error as exc:
            raise self._fail(exc) from exc

    # -- reading ------------------------------------------------------------------------------

    def _hashes(self, since: float | None, until: float | None) -> list[tuple[int, dict[str, str]]]:
        """The minute hashes of ``[since, until)``: (minute start, fields)."""
        low = "-inf" if since is None else (since // 60) * 60
        high = "+inf" if until is None else f"({until}"
        try:
            found = cast("list[str]", self._client.zrangebyscore(self._minutes, low, high))
            minutes = [int(float(m)) for m in found]
            pipe = self._client.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(self._minute_key(minute))
            hashes: list[dict[str, str]] = pipe.execute() if minutes else []
        except self._redis_error as exc:
            raise self._fail(exc) from exc
        return list(zip(minutes, hashes, strict=True))

    @staticmethod
    def _groups(fields: Mapping[str, str], by: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(dict)
        head = by + SEP
        for field, value in fields.items():
            if not field.startswith(head):
                continue
            _dim, group, metric = field.split(SEP)
            out[group][metric] = float(value)
        return out

    @staticmethod
    def _add(into: dict[str, float], metrics: Mapping[str, float]) -> None:
        for metric, value in metrics.items():
            into[metric] = into.get(metric, 0.0) + value

    @staticmethod
    def _totals_of(group: str, m: Mapping[str, float]) -> Totals:
        return Totals(
            group,
            int(m.get("calls", 0)),
            int(m.get("errors", 0)),
            int(m.get("input", 0)),
            int(m.get("output", 0)),
            int(m.get("cached", 0)),
            int(m.get("reasoning", 0)),
            float(m.get("cost", 0.0)),
            int(m.get("hits", 0)),
            int(m.get("writes", 0)),
        )

    def _sum(
        self, by: str, since: float | None, until: float | None
    ) -> dict[str, dict[str, float]]:
        total: dict[str, dict[str, float]] = defaultdict(dict)
        for _minute, fields in self._hashes(since, until):
            for group, metrics in self._groups(fields, by).items():
                self._add(total[group], metrics)
        return total

    def _totals(self, by: Dimension, since: float | None, until: float | None) -> list[Totals]:
        return [self._totals_of(g, m) for g, m in self._sum(by, since, until).items()]

    def _summary(self, since: float | None, until: float | None) -> Totals:
        return self._totals_of("*", self._sum("all", since, until).get("*", {}))

    def _series(
        self, by: Dimension, since: float, until: float | None, bucket: float
    ) -> list[Point]:
        buckets: dict[tuple[float, str], dict[str, float]] = defaultdict(dict)
        for minute, fields in self._hashes(since, until):
            start = (minute // bucket) * bucket
            for group, metrics in self._groups(fields, by).items():
                self._add(buckets[(start, group)], metrics)
        return [Point(start, self._totals_of(g, m)) for (start, g), m in buckets.items()]

    def _recent(self, limit: int, key: str | None, user: str | None) -> list[UsageRecord]:
        out: list[UsageRecord] = []
        high = "+"
        page = limit if key is None and user is None else max(limit * 4, 200)
        try:
            for _ in range(50):
                entries = cast(
                    "list[tuple[str, dict[str, str]]]",
                    self._client.xrevrange(self._calls, high, "-", count=page),
                )
                for entry_id, fields in entries:
                    r = UsageRecord.from_json(json.loads(fields["r"]))
                    if (key is None or r.key == key) and (user is None or r.user == user):
                        out.append(r)
                        if len(out) >= limit:
                            return sorted(out, key=lambda r: r.ts, reverse=True)
                    high = f"({entry_id}"
                if len(entries) < page:
                    break
        except self._redis_error as exc:
            raise self._fail(exc) from exc
        return sorted(out, key=lambda r: r.ts, reverse=True)

    def _limit_hits(self, since: float | None, until: float | None) -> list[LimitHit]:
        hits: dict[str, dict[str, float]] = defaultdict(dict)
        for _minute, fields in self._hashes(since, until):
            for group, metrics in self._groups(fields, "limit").items():
                entry = hits[group]
                entry["hits"] = entry.get("hits", 0.0) + metrics.get("hits", 0.0)
                entry["last"] = max(entry.get("last", 0.0), metrics.get("last", 0.0))
        out = []
        for group, m in hits.items():
            kind, _, policy = group.partition(":")
            out.append(LimitHit(kind, policy, int(m["hits"]), m.get("last", 0.0)))
        return sorted(out, key=lambda h: (-h.hits, h.kind, h.policy))

    def _close(self) -> None:
        self._client.close()

    def clear(self) -> None:
        """Delete every key of this log (for tests)."""
        keys: list[Any] = list(self._client.scan_iter(f"{self.prefix}:usage:*"))
        if keys:
            self._client.delete(*keys)
