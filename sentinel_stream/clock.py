"""Timestamps as the records carry them: RFC 3339, UTC, milliseconds, a ``Z``.

Every record the service writes (verdicts, explanations) uses this one format, so that
verdicts sort as text whichever door produced them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_second_cache: list[tuple[int, str]] = [(-1, "")]


def iso_utc_ms(epoch_ms: int) -> str:
    """``epoch_ms`` as RFC 3339 UTC with milliseconds.

    A batch's records mostly share their second, so the second's text is formatted once
    and reused: this runs for every record that has no timestamp of its own, and
    ``strftime`` is the costly part.
    """
    sec, ms = divmod(epoch_ms, 1000)
    cached_sec, prefix = _second_cache[0]
    if sec != cached_sec:
        prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_cache[0] = (sec, prefix)
    return f"{prefix}{ms:03d}Z"


def format_event_time(ts: datetime) -> str:
    """An event's own timestamp, normalised to UTC."""
    utc = ts.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso_utc_ms(int(time.time() * 1000))
