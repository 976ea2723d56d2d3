"""Timestamps as records carry them: RFC 3339, UTC, milliseconds, across years 1-9999."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_stream.clock import (
    EPOCH_MS_MAX,
    EPOCH_MS_MIN,
    format_event_time,
    in_range,
    iso_utc_ms,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=EPOCH_MS_MIN, max_value=EPOCH_MS_MAX))
def test_epoch_milliseconds_as_text(ms: int) -> None:
    when = EPOCH + timedelta(milliseconds=ms)
    assert iso_utc_ms(ms) == when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert in_range(ms)


def test_the_range_ends() -> None:
    assert not in_range(EPOCH_MS_MIN - 1) and not in_range(EPOCH_MS_MAX + 1)
    assert iso_utc_ms(EPOCH_MS_MIN) == "0001-01-01T00:00:00.000Z"
    assert iso_utc_ms(EPOCH_MS_MAX) == "9999-12-31T23:59:59.999Z"


def test_many_seconds_in_turn_stay_right() -> None:
    # More distinct seconds than the table keeps: it is cleared, never wrong.
    stamps = [1_767_225_600_000 + i * 1_001 for i in range(10_000)]
    for ms in stamps + stamps[:100]:
        expected = (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
        assert iso_utc_ms(ms) == expected.replace("+00:00", "Z")


def test_event_times_are_normalised_to_utc() -> None:
    ts = datetime(2026, 1, 1, 5, 30, 0, 123999, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert format_event_time(ts) == "2026-01-01T00:00:00.123Z"
    assert format_event_time(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000Z"
