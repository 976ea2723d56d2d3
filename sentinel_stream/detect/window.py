"""Bounded per-route memory: a ring of the last N events and an LRU table of routes.

Both bounds are hard: a window never holds more than its capacity, the table never more
than its route limit. The table hands what it pushes out to its owner (``on_evict``),
which counts it, so an operator can tell a quiet route from an evicted one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

V = TypeVar("V")


class Window:
    """The last ``capacity`` rows of a route's (transformed) features, oldest overwritten.

    Stored as float32: that is what sklearn's trees fit on, so nothing is lost.
    """

    __slots__ = ("_data", "_head", "_size", "total")

    def __init__(self, capacity: int, n_features: int) -> None:
        self._data = np.zeros((capacity, n_features), dtype=np.float32)
        self._head = 0
        self._size = 0
        self.total = 0
        """Rows ever appended (not bounded): drives refit scheduling."""

    @property
    def capacity(self) -> int:
        return int(self._data.shape[0])

    def __len__(self) -> int:
        return self._size

    def extend(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Append rows in order; when full, the oldest rows are overwritten. Returns the
        rows that left the window (oldest first), for the long memory."""
        n = len(rows)
        if n == 0:
            return rows[:0]
        cap = self.capacity
        self.total += n
        overflow = self._size + n - cap
        evicted = rows[:0]
        if overflow > 0:
            kept = min(overflow, self._size)
            oldest = (self._head - self._size) % cap
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
        if self._size < self.capacity:
            return self._data[: self._size].copy()
        return np.concatenate((self._data[self._head :], self._data[: self._head]))


class RouteTable(Generic[V]):
    """Route name -> state, holding at most ``max_routes``; the least recently seen goes first."""

    def __init__(
        self,
        max_routes: int,
        factory: Callable[[str], V],
        on_evict: Callable[[str, V], None] | None = None,
    ) -> None:
        self._items: OrderedDict[str, V] = OrderedDict()
        self._max = max_routes
        self._factory = factory
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, route: object) -> bool:
        return route in self._items

    def get(self, route: str) -> V | None:
        return self._items.get(route)

    def touch(self, route: str) -> V:
        """The route's state, created if new, marked as most recently seen."""
        items = self._items
        state = items.get(route)
        if state is not None:
            items.move_to_end(route)
            return state
        if len(items) >= self._max:
            old_route, old_state = items.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(old_route, old_state)
        state = self._factory(route)
        items[route] = state
        return state

    def replace(self, route: str, state: V) -> None:
        """Hold ``state`` for a route already in the table (as most recently seen)."""
        if route not in self._items:
            raise KeyError(route)
        self._items[route] = state
        self._items.move_to_end(route)

    def remove(self, route: str) -> V | None:
        """Take a route out without calling ``on_evict``: it is not an eviction."""
        return self._items.pop(route, None)

    def oldest_first(self) -> Iterator[tuple[str, V]]:
        return iter(list(self._items.items()))


class Reservoir:
    """A uniform sample of every row that has left a route's window (Vitter's algorithm
    R), kept beside the window so that a model remembers more than the last N events.

    A recent window alone forgets what normal looked like before a long burst; the
    reservoir keeps a fixed-size memory of the older history at the same cost per row.
    It samples only rows the window no longer holds, so no row counts twice in a fit,
    and it takes no memory until the route first outgrows its window.
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

    def extend(self, rows: npt.NDArray[np.float32]) -> None:
        cap = self._capacity
        n = len(rows)
        if n == 0 or cap == 0:
            return
        if self._data is None or self._rng is None:
            self._data = np.zeros((cap, self._n_features), dtype=np.float32)
            self._rng = np.random.default_rng(self._seed)
        fill = min(cap - self._size, n)
        if fill > 0:
            self._data[self._size : self._size + fill] = rows[:fill]
            self._size += fill
        rest = rows[fill:]
        if len(rest):
            # Row number t (0-based, over all rows seen) replaces a random slot with
            # probability cap / (t + 1).
            t = self.seen + fill + np.arange(len(rest))
            slots = (self._rng.random(len(rest)) * (t + 1)).astype(np.int64)
            keep = slots < cap
            self._data[slots[keep]] = rest[keep]
        self.seen += n

    def load(self, rows: npt.NDArray[np.float32], seen: int) -> None:
        """Hold exactly ``rows`` as the sample of ``seen`` rows (a restored state)."""
        n = min(len(rows), self._capacity)
        self._data = np.zeros((self._capacity, self._n_features), dtype=np.float32)
        self._data[:n] = rows[:n]
        self._size = n
        self.seen = max(seen, n)
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)

    def snapshot(self) -> npt.NDArray[np.float32]:
        if self._data is None:
            return np.zeros((0, self._n_features), dtype=np.float32)
        return self._data[: self._size].copy()
