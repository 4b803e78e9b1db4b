"""``memory://``: a usage log in this process's memory, for tests and short-lived tools."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from llmproxy_usage_log.base import (
    Dimension,
    LimitHit,
    Point,
    Totals,
    UsageLog,
    UsageRecord,
    aggregate,
    aggregate_hits,
    in_range,
)


class MemoryUsageLog(UsageLog):
    """Keeps the newest ``max_calls`` calls in a list; every query scans them."""

    def __init__(self, *, max_calls: int = 100_000) -> None:
        super().__init__(flush_interval=0)
        self._rows: deque[UsageRecord] = deque(maxlen=max_calls)
        self._lock = threading.Lock()

    def describe(self) -> str:
        """``memory://``."""
        return "memory://"

    def _snapshot(self, since: float | None, until: float | None) -> list[UsageRecord]:
        with self._lock:
            rows = list(self._rows)
        return [r for r in rows if in_range(r.ts, since, until)]

    def _write(self, records: Sequence[UsageRecord]) -> None:
        with self._lock:
            self._rows.extend(records)

    def _totals(self, by: Dimension, since: float | None, until: float | None) -> list[Totals]:
        return list(aggregate(self._snapshot(since, until), by).values())

    def _series(
        self, by: Dimension, since: float, until: float | None, bucket: float
    ) -> list[Point]:
        sums = aggregate(self._snapshot(since, until), by, bucket)
        return [Point(start, totals) for (start, _group), totals in sums.items()]

    def _recent(self, limit: int, key: str | None, user: str | None) -> list[UsageRecord]:
        with self._lock:
            rows = list(self._rows)
        out: list[UsageRecord] = []
        for r in sorted(rows, key=lambda r: r.ts, reverse=True):
            if (key is None or r.key == key) and (user is None or r.user == user):
                out.append(r)
                if len(out) >= limit:
                    break
        return out

    def _limit_hits(self, since: float | None, until: float | None) -> list[LimitHit]:
        return aggregate_hits(self._snapshot(since, until))
