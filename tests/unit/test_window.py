"""Bounded per-route memory: the window ring, the long-memory reservoir, the route table."""

from __future__ import annotations

import numpy as np

from sentinel_stream.detect.window import Reservoir, Window


def test_window_keeps_last_rows_in_order() -> None:
    w = Window(5, 1)
    for chunk in ([1, 2], [3], [4, 5, 6, 7], [8]):
        w.extend(np.array(chunk, dtype=np.float32).reshape(-1, 1))
    assert w.snapshot().ravel().tolist() == [4, 5, 6, 7, 8]
    assert len(w) == 5 and w.total == 8
    w.extend(np.arange(20, 32, dtype=np.float32).reshape(-1, 1))
    assert w.snapshot().ravel().tolist() == [27, 28, 29, 30, 31]


def test_the_window_hands_what_leaves_it_to_the_long_memory() -> None:
    w = Window(5, 1)
    rows = np.arange(12, dtype=np.float32).reshape(-1, 1)
    assert len(w.extend(rows[:3])) == 0
    assert w.extend(rows[3:7]).ravel().tolist() == [0, 1]
    assert w.extend(rows[7:8]).ravel().tolist() == [2]
    # More rows than the window holds: the old rows, then those that pass straight through.
    assert w.extend(rows[8:12]).ravel().tolist() == [3, 4, 5, 6]
    assert w.snapshot().ravel().tolist() == [7, 8, 9, 10, 11]
    big = Window(3, 1)
    big.extend(rows[:2])
    assert big.extend(rows[2:8]).ravel().tolist() == [0, 1, 2, 3, 4]


def test_reservoir_is_bounded_and_uniform() -> None:
    r = Reservoir(500, 1, seed=1)
    for start in range(0, 20000, 137):
        r.extend(np.arange(start, min(start + 137, 20000), dtype=np.float32).reshape(-1, 1))
    sample = r.snapshot().ravel()
    assert len(sample) == 500 and r.seen == 20000
    # A uniform sample of 0..19999: each quarter holds about a quarter of it.
    counts = np.histogram(sample, bins=4, range=(0, 20000))[0]
    assert counts.min() > 90 and counts.max() < 160


def test_a_sample_drawn_row_by_row_is_the_one_drawn_in_batches() -> None:
    # A few rows at a time take the one-at-a-time path: the same draws, the same sample.
    rows = np.arange(5000, dtype=np.float32).reshape(-1, 1)
    a, b = Reservoir(300, 1, seed=4), Reservoir(300, 1, seed=4)
    a.extend(rows)
    for start in range(0, 5000, 3):
        b.extend(rows[start : start + 3])
    assert a.seen == b.seen == 5000
    assert a.snapshot().tolist() == b.snapshot().tolist()


def test_windows_and_samples_take_memory_as_they_fill() -> None:
    w = Window(1000, 3)
    assert w.nbytes == 0
    w.extend(np.zeros((1, 3), dtype=np.float32))
    assert w.nbytes == 16 * 3 * 4
    w.extend(np.zeros((100, 3), dtype=np.float32))
    assert w.nbytes == 101 * 3 * 4 and not w.full  # at least doubled, at least enough
    w.extend(np.zeros((2000, 3), dtype=np.float32))
    assert w.nbytes == 1000 * 3 * 4 and w.full
    r = Reservoir(1000, 3, seed=1)
    assert r.nbytes == 0 and not r.sampling
    r.extend(np.zeros((5, 3), dtype=np.float32))
    assert r.nbytes == 16 * 3 * 4 and r.sampling
