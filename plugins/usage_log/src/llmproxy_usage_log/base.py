"""What a usage log records, what it answers, and the buffered writer every backend shares.

A call's :class:`~llmproxy.CallEvent` becomes one :class:`UsageRecord`. Recording is cheap: the
event is appended to an in-memory queue and a background thread writes queued calls in
batches, so a call never waits for the log and a log failure never reaches a call (it is
logged, and the batch kept for the next try). Every query first writes what is queued, so
answers include every call recorded before the query.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
from attrs import frozen

from llmproxy.errors import BudgetExceeded, ConfigError, ProviderRateLimited, RateLimited
from llmproxy.secret import logger, scrub
from llmproxy.types import CallEvent

log = logger("llmproxy.usage_log")

Dimension = Literal["model", "provider", "user", "key", "alias"]
DIMENSIONS: tuple[Dimension, ...] = ("model", "provider", "user", "key", "alias")
NONE = "-"
"""The group value of calls without a user or key."""


@frozen
class UsageRecord:
    """One call as the usage log keeps it.

    ``ts`` is when the call started (Unix seconds); ``model`` is ``provider/model`` (the model
    that answered, after fallbacks); ``cost`` is USD (None when the model has no price).
    ``outcome`` is ``ok``, ``error`` or ``interrupted``; ``error`` the exception's class name;
    ``limit`` is ``rate`` (our rate limit), ``budget`` (our budget) or ``upstream`` (the
    service's 429) when the call was refused by a limit, with the refusing ``policy``.
    ``operation`` is ``chat`` or ``embed`` (records written before it existed read ``chat``).
    ``cache_hit`` is True for a reply served from the response cache (no tokens spent).
    ``alias`` is the alias the caller named when one of its deployments answered (see
    :mod:`llmproxy.routing`; ``model`` is then the deployment): grouping ``by="alias"`` rolls
    the deployments up under it, and puts a call without one under its model.
    ``cache_write_tokens`` are input tokens written to the provider's prompt cache (a part of
    ``input_tokens``, like ``cached_input_tokens``, and billed at the cache-write price).
    """

    ts: float
    model: str
    provider: str
    user: str | None = None
    session_id: str | None = None
    key: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    latency: float = 0.0
    outcome: str = "ok"
    error: str | None = None
    limit: str | None = None
    policy: str | None = None
    attempts: int = 1
    streamed: bool = False
    estimated: bool = False
    tags: Mapping[str, str] = attrs.Factory(dict)
    operation: str = "chat"
    cache_hit: bool = False
    alias: str | None = None
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def group(self, by: Dimension) -> str:
        """The value this call is grouped under for ``by`` (``-`` when it has none)."""
        if by == "model":
            return self.model
        if by == "provider":
            return self.provider
        if by == "alias":
            return self.alias or self.model
        value = self.user if by == "user" else self.key
        return NONE if value is None else value

    @classmethod
    def from_event(cls, event: CallEvent) -> UsageRecord:
        """Build the record of one observer event.

        Its free-text fields (user, session id, key id, tag values) are scrubbed of the
        process's secrets (:func:`llmproxy.secret.scrub`); the error is only a class name.
        """
        error = event.error
        limit: str | None = None
        policy: str | None = None
        if isinstance(error, RateLimited):
            limit, policy = "rate", error.policy
        elif isinstance(error, BudgetExceeded):
            limit, policy = "budget", error.policy
        elif isinstance(error, ProviderRateLimited):
            limit, policy = "upstream", error.provider
        usage = event.usage
        model = event.model if "/" in event.model else f"{event.provider}/{event.model}"
        return cls(
            event.started_at or time.time(),
            model,
            event.provider,
            _scrubbed(event.user),
            _scrubbed(event.session_id),
            _scrubbed(event.key),
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens,
            usage.reasoning_tokens,
            usage.cost,
            event.latency,
            event.outcome,
            type(error).__name__ if error is not None else None,
            limit,
            policy,
            event.attempts,
            event.streamed,
            usage.estimated,
            {k: scrub(v) for k, v in event.tags.items()} if event.tags else {},
            getattr(event, "operation", "chat"),
            getattr(event, "cache_hit", False),
            getattr(event, "alias", None),
            usage.cache_write_tokens,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        out = attrs.asdict(self)
        out["tags"] = dict(self.tags)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageRecord:
        """Rebuild a record from :meth:`to_json`'s dict (unknown keys are ignored)."""
        names = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _scrubbed(text: str | None) -> str | None:
    return None if text is None else scrub(text)


@frozen
class Totals:
    """Calls, failures, tokens by kind and spend of one group (or of everything: ``*``)."""

    group: str
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    cache_hits: int = 0
    """Calls answered from the response cache."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's prompt cache (a part of ``input_tokens``)."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def cache_hit_rate(self) -> float:
        """The share of calls answered from the response cache (0.0 without calls)."""
        return self.cache_hits / self.calls if self.calls else 0.0

    def to_json(self) -> dict[str, Any]:
        """The totals as a JSON-ready dict (with ``total_tokens`` and ``cache_hit_rate``)."""
        out = attrs.asdict(self)
        out["total_tokens"] = self.total_tokens
        out["cache_hit_rate"] = self.cache_hit_rate
        return out


@frozen
class Point:
    """The totals of one group in one time bucket starting at ``start`` (Unix seconds)."""

    start: float
    totals: Totals


@frozen
class LimitHit:
    """How often a limit refused calls: ``kind`` is ``rate``, ``budget`` or ``upstream``."""

    kind: str
    policy: str
    hits: int
    last: float


def _check_by(by: str) -> Dimension:
    if by not in DIMENSIONS:
        raise ConfigError(f"usage can be grouped by {', '.join(DIMENSIONS)}; got {by!r}", path="by")
    return by


class _Sum:
    """A mutable running total, turned into :class:`Totals` at the end."""

    __slots__ = (
        "cached",
        "calls",
        "cost",
        "errors",
        "hits",
        "input",
        "output",
        "reasoning",
        "writes",
    )

    def __init__(self) -> None:
        self.calls = self.errors = self.input = self.output = self.cached = self.reasoning = 0
        self.hits = self.writes = 0
        self.cost = 0.0

    def add(self, r: UsageRecord) -> None:
        self.calls += 1
        self.errors += r.outcome == "error"
        self.input += r.input_tokens
        self.output += r.output_tokens
        self.cached += r.cached_input_tokens
        self.reasoning += r.reasoning_tokens
        self.cost += r.cost or 0.0
        self.hits += r.cache_hit
        self.writes += r.cache_write_tokens

    def totals(self, group: str) -> Totals:
        return Totals(
            group,
            self.calls,
            self.errors,
            self.input,
            self.output,
            self.cached,
            self.reasoning,
            self.cost,
            self.hits,
            self.writes,
        )


def sort_totals(rows: Iterable[Totals]) -> list[Totals]:
    """Biggest spenders first: by cost, then tokens, then calls, then name."""
    return sorted(rows, key=lambda t: (-t.cost, -t.total_tokens, -t.calls, t.group))


def aggregate(
    records: Iterable[UsageRecord], by: Dimension | None, bucket: float | None = None
) -> dict[tuple[float, str], Totals]:
    """Sum records per (bucket start, group); ``by=None`` sums everything under ``*``."""
    sums: dict[tuple[float, str], _Sum] = {}
    for r in records:
        start = (r.ts // bucket) * bucket if bucket else 0.0
        key = (start, r.group(by) if by else "*")
        s = sums.get(key)
        if s is None:
            s = sums[key] = _Sum()
        s.add(r)
    return {k: s.totals(k[1]) for k, s in sums.items()}


def aggregate_hits(records: Iterable[UsageRecord]) -> list[LimitHit]:
    """Count limit refusals per (kind, policy), most frequent first."""
    hits: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r.limit is None:
            continue
        entry = hits.setdefault((r.limit, r.policy or NONE), [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], r.ts)
    return sorted(
        (LimitHit(kind, policy, int(n), last) for (kind, policy), (n, last) in hits.items()),
        key=lambda h: (-h.hits, h.kind, h.policy),
    )


class UsageLog:
    """A usage log: :meth:`record` every call, then ask for totals, series, recent calls, hits.

    Subclasses write batches in :meth:`_write` and answer the ``_``-prefixed queries; this
    class owns the queue, the background writer and the error handling. ``resolution`` is the
    smallest time bucket the backend can answer (a series' bucket is rounded up to it).
    """

    resolution: float = 1.0

    def __init__(
        self, *, flush_interval: float = 0.25, batch: int = 256, max_pending: int = 100_000
    ) -> None:
        self.flush_interval = flush_interval
        self.batch = batch
        self.max_pending = max_pending
        self._pending: deque[CallEvent | UsageRecord] = deque()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_warning = 0.0
        self.dropped = 0
        """Calls dropped because the backend stayed unavailable while the queue was full."""

    # -- writing ------------------------------------------------------------------------------

    def record(self, event: CallEvent | UsageRecord) -> None:
        """Queue one call (an observer event or a ready record); never raises, never blocks."""
        try:
            if self._closed:
                return
            pending = self._pending
            pending.append(event)
            if self.flush_interval <= 0:  # a synchronous backend (memory) writes at once
                self.flush()
            elif self._thread is None:
                self._start()
            elif len(pending) >= self.batch:
                self._wake.set()
        except Exception:  # a usage log must never break a call
            log.exception("could not queue a call for the usage log")

    def __call__(self, event: CallEvent) -> None:
        """Record ``event``: a log is also a ``Proxy(observers=[log])`` observer."""
        self.record(event)

    def add(self, records: Iterable[UsageRecord]) -> None:
        """Write records now (imports, tests); raises when the backend fails."""
        batch = list(records)
        if batch:
            with self._flush_lock:
                self._write(batch)

    def flush(self) -> bool:
        """Write every queued call now; False (logged) when the backend failed."""
        with self._flush_lock:
            pending = self._pending
            if not pending:
                return True
            batch: list[UsageRecord] = []
            try:
                while pending:
                    item = pending.popleft()
                    batch.append(
                        item if isinstance(item, UsageRecord) else UsageRecord.from_event(item)
                    )
            except IndexError:
                pass
            try:
                self._write(batch)
            except Exception as exc:
                self._requeue(batch, exc)
                return False
            return True

    def _requeue(self, batch: list[UsageRecord], exc: BaseException) -> None:
        room = self.max_pending - len(self._pending)
        keep = batch[-room:] if room > 0 else []
        self.dropped += len(batch) - len(keep)
        self._pending.extendleft(reversed(keep))
        now = time.monotonic()
        if now - self._last_warning > 30:
            self._last_warning = now
            log.warning(
                "usage log %s: could not write %d calls (kept for the next try; %d dropped so"
                " far): %s",
                self.describe(),
                len(batch),
                self.dropped,
                exc,
            )

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(
                target=self._run, name=f"llmproxy-usage-log-{id(self):x}", daemon=True
            )
            self._thread = thread
            atexit.register(self.close)
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # pragma: no cover - flush() already catches backend failures
                log.exception("usage log writer failed")

    def close(self) -> None:
        """Write what is queued, stop the writer and release the backend."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.daemon:
            thread.join(timeout=5)
        atexit.unregister(self.close)
        self.flush()
        self._close()

    def describe(self) -> str:
        """Where this log writes, without secrets (for messages)."""
        return type(self).__name__

    # -- queries ------------------------------------------------------------------------------

    def totals(
        self, by: Dimension, *, since: float | None = None, until: float | None = None
    ) -> list[Totals]:
        """Totals per model, provider, user or key over ``[since, until)``, biggest first."""
        by = _check_by(by)
        self.flush()
        return sort_totals(self._totals(by, since, until))

    def summary(self, *, since: float | None = None, until: float | None = None) -> Totals:
        """Totals of every call over ``[since, until)`` (group ``*``)."""
        self.flush()
        return self._summary(since, until)

    def series(
        self,
        by: Dimension,
        *,
        since: float,
        until: float | None = None,
        bucket: float = 60.0,
    ) -> list[Point]:
        """Totals per group per time bucket, oldest first; ``since`` is aligned to a bucket.

        Only buckets with calls are returned. ``bucket`` is rounded up to a multiple of
        :attr:`resolution`.
        """
        by = _check_by(by)
        bucket = self.bucket_size(bucket)
        since = (since // bucket) * bucket
        self.flush()
        points = self._series(by, since, until, bucket)
        return sorted(points, key=lambda p: (p.start, p.totals.group))

    def bucket_size(self, bucket: float) -> float:
        """``bucket`` rounded up to a whole multiple of :attr:`resolution`."""
        if bucket <= 0:
            raise ConfigError(f"bucket must be positive, got {bucket}", path="bucket")
        steps = -(-bucket // self.resolution)
        return float(max(steps, 1) * self.resolution)

    def recent(
        self, limit: int = 50, *, key: str | None = None, user: str | None = None
    ) -> list[UsageRecord]:
        """The newest calls first (of one key or user when given)."""
        self.flush()
        return self._recent(limit, key, user)

    def limit_hits(
        self, *, since: float | None = None, until: float | None = None
    ) -> list[LimitHit]:
        """Calls refused by a rate limit, a budget or the service's 429, per policy."""
        self.flush()
        return self._limit_hits(since, until)

    # -- what backends implement --------------------------------------------------------------

    def _write(self, records: Sequence[UsageRecord]) -> None:
        raise NotImplementedError

    def _totals(self, by: Dimension, since: float | None, until: float | None) -> list[Totals]:
        raise NotImplementedError

    def _summary(self, since: float | None, until: float | None) -> Totals:
        rows = self._totals("provider", since, until)
        s = _Sum()
        for t in rows:
            s.calls += t.calls
            s.errors += t.errors
            s.input += t.input_tokens
            s.output += t.output_tokens
            s.cached += t.cached_input_tokens
            s.reasoning += t.reasoning_tokens
            s.cost += t.cost
            s.hits += t.cache_hits
            s.writes += t.cache_write_tokens
        return s.totals("*")

    def _series(
        self, by: Dimension, since: float, until: float | None, bucket: float
    ) -> list[Point]:
        raise NotImplementedError

    def _recent(self, limit: int, key: str | None, user: str | None) -> list[UsageRecord]:
        raise NotImplementedError

    def _limit_hits(self, since: float | None, until: float | None) -> list[LimitHit]:
        raise NotImplementedError

    def _close(self) -> None:
        """Release connections."""


def in_range(ts: float, since: float | None, until: float | None) -> bool:
    """Whether ``ts`` is in ``[since, until)`` (open ends when None)."""
    return (since is None or ts >= since) and (until is None or ts < until)
