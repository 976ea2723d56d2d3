"""Bounded per-route memory: a ring of the last N events, and a sample of older ones.

Both bounds are hard: a window never holds more than its capacity, a sample never more
than its size. Both take memory as they fill, doubling from :data:`FIRST_ROWS` rows up
to their capacity, so a route seen once holds a few hundred bytes, not a full window (a
flood of one-off routes is cheap to hold while it lasts); ``nbytes`` is what each
holds, for the detector's memory budget (:mod:`.routes`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FIRST_ROWS = 16
"""Rows a window or sample allocates first; it doubles from there up to its capacity."""
SMALL = 8
"""Up to this many rows, a sample draws its slots one at a time (see
:meth:`Reservoir.extend`)."""


def _grown(data: npt.NDArray[np.float32], rows: int, capacity: int) -> npt.NDArray[np.float32]:
    """A copy of ``data`` with room for ``rows`` rows: doubled, at most ``capacity``."""
    size = min(capacity, max(rows, 2 * data.shape[0], FIRST_ROWS))
    grown = np.empty((size, data.shape[1]), dtype=np.float32)
    grown[: data.shape[0]] = data
    return grown


class Window:
    """The last ``capacity`` rows of a route's (transformed) features, oldest overwritten.

    Stored as float32: that is what sklearn's trees fit on, so nothing is lost. Until it
    is full, the rows lie in order from the start of a buffer that grows as they come.
    """

    __slots__ = ("_capacity", "_data", "_head", "_size", "total")

    def __init__(self, capacity: int, n_features: int) -> None:
        self._capacity = capacity
        self._data = np.empty((0, n_features), dtype=np.float32)
        self._head = 0
        self._size = 0
        self.total = 0
        """Rows ever appended (not bounded): drives refit scheduling."""

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def nbytes(self) -> int:
        """Bytes of rows allocated (the buffer; its header is the route's overhead)."""
        return int(self._data.nbytes)

    @property
    def full(self) -> bool:
        return self._size == self._capacity

    def __len__(self) -> int:
        return self._size

    def extend(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Append rows in order; when full, the oldest rows are overwritten. Returns the
        rows that left the window (oldest first), for the long memory."""
        n = len(rows)
        cap, head = self._capacity, self._head
        if self._size == cap and n > 0 and head + n <= cap:
            # A full window, the rows fit before its end: the steady state, in two
            # slices (what the general path below does, without its index arithmetic).
            data = self._data
            evicted = data[head : head + n].copy()
            data[head : head + n] = rows
            self._head = (head + n) % cap
            self.total += n
            return evicted
        if n == 0:
            return rows[:0]
        if self._size + n > self._data.shape[0] and self._data.shape[0] < cap:
            self._data = _grown(self._data[: self._size], self._size + n, cap)
        self.total += n
        overflow = self._size + n - cap
        evicted = rows[:0]
        if overflow > 0:
            kept = min(overflow, self._size)
            oldest = (self._head - self._size) % cap
            if oldest + kept <= cap:  # the common case: one slice, no index arrays
                evicted = self._data[oldest : oldest + kept].copy()
            else:
                evicted = self._data[(oldest + np.arange(kept)) % cap]
            if overflow > kept:  # rows that pass straight through a too-small window
                evicted = np.concatenate((evicted, rows[: overflow - kept]))
        if n >= cap:
            self._data[:] = rows[n - cap :]
            self._head = 0
            self._size = cap
            return evicted
        end = self._head + n
        if end <= cap:
            self._data[self._head : end] = rows
        else:
            first = cap - self._head
            self._data[self._head :] = rows[:first]
            self._data[: n - first] = rows[first:]
        self._head = end % cap
        self._size = min(cap, self._size + n)
        return evicted

    def snapshot(self) -> npt.NDArray[np.float32]:
        """A copy of the rows, oldest first (safe to hand to another thread or process)."""
        if self._size < self._capacity:
            return self._data[: self._size].copy()
        return np.concatenate((self._data[self._head :], self._data[: self._head]))


class Reservoir:
    """A uniform sample of every row that has left a route's window (Vitter's algorithm
    R), kept beside the window so that a model remembers more than the last N events.

    A recent window alone forgets what normal looked like before a long burst; the
    reservoir keeps a fixed-size memory of the older history at the same cost per row.
    It samples only rows the window no longer holds, so no row counts twice in a fit,
    and it takes no memory until the route first outgrows its window (then it grows as
    it fills, as the window does).
    """

    __slots__ = ("_capacity", "_data", "_n_features", "_rng", "_seed", "_size", "seen")

    def __init__(self, capacity: int, n_features: int, seed: int | None = None) -> None:
        self._capacity = capacity
        self._n_features = n_features
        self._data: npt.NDArray[np.float32] | None = None
        self._size = 0
        self._seed = seed
        self._rng: np.random.Generator | None = None
        self.seen = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes of rows allocated (see :attr:`Window.nbytes`)."""
        return 0 if self._data is None else int(self._data.nbytes)

    @property
    def full(self) -> bool:
        return self._size == self._capacity

    @property
    def sampling(self) -> bool:
        """Whether it holds a random generator (from its first row on)."""
        return self._rng is not None

    def extend(self, rows: npt.NDArray[np.float32]) -> None:
        cap = self._capacity
        n = len(rows)
        if n == 0 or cap == 0:
            return
        if self._data is None or self._rng is None:
            self._data = np.empty((0, self._n_features), dtype=np.float32)
            self._rng = np.random.default_rng(self._seed)
        fill = min(cap - self._size, n)
        if fill > 0:
            if self._size + fill > self._data.shape[0]:
                self._data = _grown(self._data[: self._size], self._size + fill, cap)
            self._data[self._size : self._size + fill] = rows[:fill]
            self._size += fill
        rest = n - fill
        if rest > SMALL:
            # Row number t (0-based, over all rows seen) replaces a random slot with
            # probability cap / (t + 1).
            rank = self.seen + fill + np.arange(rest)
            slots = (self._rng.random(rest) * (rank + 1)).astype(np.int64)
            keep = slots < cap
            self._data[slots[keep]] = rows[fill:][keep]
        elif rest:
            # The same draws one at a time (a few rows: array operations cost more than
            # the rows): the same generator output in the same order, the same sample.
            data, rng, seen = self._data, self._rng, self.seen + fill
            for k in range(fill, n):
                seen += 1
                slot = int(rng.random() * seen)
                if slot < cap:
                    data[slot] = rows[k]
        self.seen += n

    def load(self, rows: npt.NDArray[np.float32], seen: int) -> None:
        """Hold exactly ``rows`` as the sample of ``seen`` rows (a restored state)."""
        n = min(len(rows), self._capacity)
        self._data = np.array(rows[:n], dtype=np.float32).reshape(n, self._n_features)
        self._size = n
        self.seen = max(seen, n)
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)

    def snapshot(self) -> npt.NDArray[np.float32]:
        if self._data is None:
            return np.zeros((0, self._n_features), dtype=np.float32)
        return self._data[: self._size].copy()
