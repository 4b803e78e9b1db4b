"""Calendar periods of budgets: which day or month an instant falls in, in an IANA time zone.

A ``day`` starts at local midnight and a ``month`` at local midnight on the 1st, so a monthly
budget resets on the 1st whatever the length of the month, and a daily one at midnight where
its users are, not at UTC midnight. A period's id is its local date (``2024-01-31``) or
year-month (``2024-01``); ids of one kind sort in time order, which ledgers rely on to tell an
old period's total from the current one.

Time zones come from :mod:`zoneinfo`, which reads the system's tz database
(``/usr/share/zoneinfo``); a system without one (Windows, slim containers) needs the ``tzdata``
package (``pip install tzdata``), which :mod:`zoneinfo` then uses by itself.

Daylight saving time: a day is as long as its clocks make it (23 or 25 hours); a midnight that
a spring-forward gap skips starts the day at the end of the gap, and a day skipped whole
(Samoa, 2011-12-30) has no period. Should clocks ever fall back across midnight, the day that
had begun stays current until the next midnight: period ids never go back.
"""

from __future__ import annotations

import datetime as _dt
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import frozen

from llmproxy.budget.base import Period

PERIODS: Final = frozenset(("day", "month"))

_Key = tuple[int, int, int]


@frozen
class Span:
    """One calendar period: its id and its bounds in Unix seconds (``start <= t < end``)."""

    id: str
    start: float
    end: float


@frozen
class Neighbours:
    """A period with the one before and the one after it.

    A ledger whose clock is elsewhere (a Redis server's) picks the right one itself: see
    :func:`neighbours`.
    """

    previous: Span
    current: Span
    next: Span


@lru_cache(maxsize=256)
def zone(tz: str) -> ZoneInfo:
    """Return the time zone named ``tz`` or raise ValueError saying what to do."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}: use an IANA name such as 'UTC' or 'Asia/Ho_Chi_Minh'"
            " (systems without a tz database need the tzdata package)"
        ) from exc


def _key(period: Period, local: _dt.datetime) -> _Key:
    return (local.year, local.month, local.day if period == "day" else 1)


def _after(period: Period, key: _Key) -> _Key:
    year, month, day = key
    if period == "day":
        following = _dt.date(year, month, day) + _dt.timedelta(days=1)
        return (following.year, following.month, following.day)
    return (year + 1, 1, 1) if month == 12 else (year, month + 1, 1)


def _before(period: Period, key: _Key) -> _Key:
    year, month, day = key
    if period == "day":
        previous = _dt.date(year, month, day) - _dt.timedelta(days=1)
        return (previous.year, previous.month, previous.day)
    return (year - 1, 12, 1) if month == 1 else (year, month - 1, 1)


def _start(key: _Key, tz: ZoneInfo) -> float:
    # fold=0: a midnight that happens twice starts at its first occurrence; a skipped one at
    # the end of the gap (zoneinfo reads a missing local time with the offset before it).
    return _dt.datetime(key[0], key[1], key[2], tzinfo=tz).timestamp()


def _id(period: Period, key: _Key) -> str:
    if period == "day":
        return f"{key[0]:04d}-{key[1]:02d}-{key[2]:02d}"
    return f"{key[0]:04d}-{key[1]:02d}"


def _compute(period: Period, tz: ZoneInfo, now: float) -> Span:
    key = _key(period, _dt.datetime.fromtimestamp(now, tz))
    for _ in range(4):
        start = _start(key, tz)
        if now < start:
            key = _before(period, key)
            continue
        end = _start(_after(period, key), tz)
        if now >= end:  # back before a midnight already passed: stay in the later day
            key = _after(period, key)
            continue
        return Span(_id(period, key), start, end)
    raise ValueError(f"cannot place {now} in a {period} of {tz}")  # pragma: no cover


_last: dict[tuple[str, str], Span] = {}
_last_neighbours: dict[tuple[str, str], Neighbours] = {}


def span(period: Period, tz: str, now: float) -> Span:
    """Return the ``period`` (``day`` or ``month``) of zone ``tz`` that contains ``now``.

    >>> span("month", "UTC", 1706745600.0)  # 2024-02-01T00:00:00Z
    Span(id='2024-02', start=1706745600.0, end=1709251200.0)

    The last answer per (period, zone) is kept, so calls within one period cost a dict lookup.
    """
    cache_key = (period, tz)
    last = _last.get(cache_key)
    if last is not None and last.start <= now < last.end:
        return last
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}: use 'day' or 'month'")
    found = _compute(period, zone(tz), now)
    _last[cache_key] = found
    return found


def neighbours(period: Period, tz: str, now: float) -> Neighbours:
    """Return the period containing ``now`` with the one before and the one after it.

    A ledger whose clock differs from ours picks among the three by its own time: whichever
    contains it. So the boundary is exact on the ledger's clock as long as ours is off by less
    than a period.
    """
    cache_key = (period, tz)
    last = _last_neighbours.get(cache_key)
    if last is not None and last.current.start <= now < last.current.end:
        return last
    current = span(period, tz, now)
    tz_info = zone(tz)
    found = Neighbours(
        _compute(period, tz_info, current.start - 0.001),
        current,
        _compute(period, tz_info, current.end),
    )
    _last_neighbours[cache_key] = found
    return found
