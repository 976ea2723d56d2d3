"""Timestamps as the records carry them: RFC 3339, UTC, milliseconds, a ``Z``.

Every record the service writes (verdicts, explanations) uses this one format, so that
verdicts sort as text whichever door produced them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

EPOCH_MS_MIN = -62_135_596_800_000
"""0001-01-01T00:00:00.000Z in milliseconds since the epoch."""
EPOCH_MS_MAX = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last instant RFC 3339 can write."""

_seconds: dict[int, str] = {}
"""Second -> its text: a batch holds records of a few seconds (partitions interleave, each
with its own), so a small table of them saves formatting nearly every time."""
_SECONDS_MAX = 4096


def _seconds_text(utc: datetime) -> str:
    # Not strftime: C's %Y does not pad years before 1000 to four digits everywhere.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}."
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))


def in_range(epoch_ms: int) -> bool:
    """True when ``epoch_ms`` falls in years 1-9999 (what :func:`iso_utc_ms` can write)."""
    return EPOCH_MS_MIN <= epoch_ms <= EPOCH_MS_MAX


def iso_utc_ms(epoch_ms: int) -> str:
    """``epoch_ms`` (within :func:`in_range`) as RFC 3339 UTC with milliseconds.

    Records mostly share their second with others, so each second's text is formatted
    once and kept: this runs for every record that has no timestamp of its own.
    """
    sec, ms = divmod(epoch_ms, 1000)
    prefix = _seconds.get(sec)
    if prefix is None:
        if len(_seconds) >= _SECONDS_MAX:
            _seconds.clear()
        prefix = _seconds_text(_EPOCH + timedelta(seconds=sec))
        _seconds[sec] = prefix
    return prefix + _MILLIS[ms]


def format_event_time(ts: datetime) -> str:
    """An event's own timestamp, normalised to UTC (validated to be writable, see
    :class:`~sentinel_stream.records.TelemetryEvent`)."""
    utc = ts.astimezone(UTC)
    return _seconds_text(utc) + f"{utc.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso_utc_ms(int(time.time() * 1000))
