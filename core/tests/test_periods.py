"""Calendar periods: local days and months, their ids and bounds, and midnights DST moves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmproxy.budget.periods import Span, neighbours, span, zone


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def test_day_and_month_in_utc() -> None:
    assert span("day", "UTC", utc(2024, 2, 29, 12)) == Span(
        "2024-02-29", utc(2024, 2, 29), utc(2024, 3, 1)
    )
    assert span("month", "UTC", utc(2024, 12, 31, 23, 59)) == Span(
        "2024-12", utc(2024, 12, 1), utc(2025, 1, 1)
    )
    assert span("month", "UTC", utc(2025, 1, 1)).id == "2025-01"


def test_a_zone_ahead_of_utc() -> None:
    # Ho Chi Minh City is UTC+7: its day starts at 17:00 UTC the day before.
    assert span("day", "Asia/Ho_Chi_Minh", utc(2024, 3, 10, 16, 59)) == Span(
        "2024-03-10", utc(2024, 3, 9, 17), utc(2024, 3, 10, 17)
    )
    assert span("day", "Asia/Ho_Chi_Minh", utc(2024, 3, 10, 17)).id == "2024-03-11"
    assert span("month", "Asia/Ho_Chi_Minh", utc(2024, 1, 31, 17)).id == "2024-02"


def test_a_day_with_an_hour_repeated_before_midnight() -> None:
    # Santiago leaves DST at 24:00 on 2024-04-06 (03:00 UTC on the 7th): clocks go back to
    # 23:00, so April 6 lasts 25 hours and its repeated hour is still April 6.
    tz = "America/Santiago"
    sixth = Span("2024-04-06", utc(2024, 4, 6, 3), utc(2024, 4, 7, 4))
    assert span("day", tz, utc(2024, 4, 7, 2, 30)) == sixth
    assert span("day", tz, utc(2024, 4, 7, 3, 30)) == sixth  # 23:30 local, the second time
    assert span("day", tz, utc(2024, 4, 7, 4)).id == "2024-04-07"


def test_a_day_that_never_was() -> None:
    # Samoa skipped 2011-12-30: after 23:59:59 on the 29th came midnight on the 31st.
    tz = "Pacific/Apia"
    skipped = utc(2011, 12, 30, 10)
    assert span("day", tz, skipped - 1) == Span("2011-12-29", utc(2011, 12, 29, 10), skipped)
    assert span("day", tz, skipped).id == "2011-12-31"
    assert neighbours("day", tz, skipped).previous.id == "2011-12-29"


def test_a_skipped_midnight_starts_the_day_after_the_gap() -> None:
    # Santiago enters DST at 00:00 on 2024-09-08 (04:00 UTC): clocks jump to 01:00.
    tz = "America/Santiago"
    assert span("day", tz, utc(2024, 9, 8, 3, 59)).id == "2024-09-07"
    assert span("day", tz, utc(2024, 9, 8, 4)) == Span(
        "2024-09-08", utc(2024, 9, 8, 4), utc(2024, 9, 9, 3)
    )


def test_neighbours() -> None:
    around = neighbours("month", "UTC", utc(2024, 3, 15))
    assert [around.previous.id, around.current.id, around.next.id] == [
        "2024-02",
        "2024-03",
        "2024-04",
    ]
    assert around.previous.end == around.current.start
    assert around.current.end == around.next.start == utc(2024, 4, 1)
    assert neighbours("month", "UTC", utc(2024, 3, 16)) is around  # cached within the period


def test_cached_answers_follow_the_clock() -> None:
    for hour in range(0, 72, 5):
        now = utc(2024, 7, 1) + hour * 3600.0
        found = span("day", "Europe/Berlin", now)
        assert found.start <= now < found.end
        assert found.id == datetime.fromtimestamp(now, zone("Europe/Berlin")).date().isoformat()


def test_unknown_zone_and_period() -> None:
    with pytest.raises(ValueError, match="tzdata"):
        zone("Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="period"):
        span("week", "UTC", 0.0)  # type: ignore[arg-type]
