"""Process-wide tuning the service applies at start."""

from __future__ import annotations

import gc

from sentinel_stream.app import GC_YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_start_up_and_collects_the_young_less_often() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # start-up's objects: no longer walked
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
