"""Which routes the detector holds: bounded by count and by bytes, frequency-aware.

Plain LRU lets a flood of one-off routes (a scan, a client that puts ids in paths)
push out every route that is seen often, one eviction per new route. This table admits
a new route only when it must, and then only if it has been seen more often than the
route it would push out (TinyLFU: Einziger, Friedman and Manes, "TinyLFU: A Highly
Efficient Cache Admission Policy", 2017):

- **Frequency sketch** (:class:`FrequencySketch`): a count-min sketch of route arrivals,
  four counters per route in a fixed array (no memory per route), halved every
  ``10 x max_routes`` arrivals so that what was frequent long ago fades.
- **Segmented LRU**: a route enters *probation*; seen again, it moves to *protected*
  (at most :data:`PROTECTED_SHARE` of the count bound; the least recently seen there
  falls back to probation). The route to give up (the *victim*) is the least recently
  seen of probation, then of protected: a route that came once goes before one that
  comes back.
- **Admission**: when the table is full, by count (``max_routes``) or by bytes
  (``max_bytes``), a new route is admitted only if the sketch has seen it more often
  than the victim; otherwise it is *refused*: its events are scored as a route with no
  state (cold rules), and it takes no place. A one-off route (seen once) never beats a
  route seen twice; a new route that keeps coming soon does.
- **Bytes**: the owner reports each route's bytes as they change (:meth:`resize`);
  while the total is over ``max_bytes`` (a route grew: a fuller window, a new model),
  victims are evicted. The total is kept as a sum, never recomputed by a scan.

Evictions (by count and by bytes) and refusals are counted for the metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np

PROTECTED_SHARE = 0.8
"""Share of ``max_routes`` the protected segment holds (Caffeine's default)."""
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
"""Odd multiplier (2**64 / golden ratio) that derives the sketch's second hash."""

Reason = Literal["routes", "memory"]
"""Why a route was evicted: the count bound or the memory budget."""


class FrequencySketch:
    """How often each key was seen, approximately, in a fixed number of bytes.

    Four rows of byte counters (capped at 15, as 4-bit counters would be), each key
    counted in one counter per row chosen by double hashing of Python's string hash;
    the estimate is the least of its four counters (count-min: never below the true
    count since the last halving). Every ``sample`` increments, every counter is halved:
    frequencies age.
    """

    ROWS = 4
    CAP = 15

    def __init__(self, keys: int) -> None:
        width = 1 << max(10, (max(keys, 1) - 1).bit_length())
        self._mask = width - 1
        self._width = width
        self._table = bytearray(self.ROWS * width)
        self._sample = 10 * max(keys, 1)
        self._added = 0
        self.resets = 0

    @property
    def nbytes(self) -> int:
        return len(self._table)

    def _slots(self, key: str) -> tuple[int, int, int, int]:
        h = hash(key) & _MASK64
        g = ((h * _GOLDEN) & _MASK64) >> 32 | 1
        m, w = self._mask, self._width
        return (h & m, w + ((h + g) & m), 2 * w + ((h + 2 * g) & m), 3 * w + ((h + 3 * g) & m))

    def add(self, key: str) -> None:
        """Count one arrival of ``key`` (on every route group: kept to plain int ops)."""
        table, cap = self._table, self.CAP
        a, b, c, d = self._slots(key)
        if table[a] < cap:
            table[a] += 1
        if table[b] < cap:
            table[b] += 1
        if table[c] < cap:
            table[c] += 1
        if table[d] < cap:
            table[d] += 1
        self._added += 1
        if self._added >= self._sample:
            self._halve()

    def estimate(self, key: str) -> int:
        table = self._table
        a, b, c, d = self._slots(key)
        return min(table[a], table[b], table[c], table[d])

    def _halve(self) -> None:
        counters = np.frombuffer(self._table, dtype=np.uint8)
        counters >>= 1
        self._added //= 2
        self.resets += 1


class Weighed(Protocol):
    """A table entry: the bytes it holds, as its owner last reported them."""

    held: int


V = TypeVar("V", bound=Weighed)


@dataclass(slots=True)
class TableStats:
    """Counters the metrics module exports (plain ints: this module is I/O-free)."""

    evicted_routes: int = 0
    """Routes evicted by the count bound."""
    evicted_memory: int = 0
    """Routes evicted by the memory budget."""
    refused: int = 0
    """New routes not admitted (their events were scored with no state)."""


class RouteTable(Generic[V]):
    """Route name -> state, within ``max_routes`` and ``max_bytes`` (see the module doc).

    ``factory`` makes a new route's state; ``on_evict`` hears of every eviction (not of
    :meth:`remove`). A state's ``held`` is kept by the table from :meth:`resize`.
    """

    def __init__(
        self,
        max_routes: int,
        max_bytes: int | None,
        factory: Callable[[str], V],
        on_evict: Callable[[str, V, Reason], None] | None = None,
        sketch: FrequencySketch | None = None,
    ) -> None:
        self._probation: OrderedDict[str, V] = OrderedDict()
        self._protected: OrderedDict[str, V] = OrderedDict()
        self._max = max_routes
        self._max_protected = max(int(max_routes * PROTECTED_SHARE), 1)
        self._max_bytes = max_bytes
        self._factory = factory
        self._on_evict = on_evict
        self.sketch = sketch if sketch is not None else FrequencySketch(max_routes)
        self.nbytes = 0
        """Bytes held by every route, as reported (see :meth:`resize`)."""
        self.stats = TableStats()

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def __contains__(self, route: object) -> bool:
        return route in self._protected or route in self._probation

    def get(self, route: str) -> V | None:
        state = self._protected.get(route)
        return state if state is not None else self._probation.get(route)

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    def touch(self, route: str, nbytes: int = 0) -> V | None:
        """The route's state, marked as seen (its arrival counted); a new route is
        created if there is room, or if it is seen more often than the route that would
        make room (``nbytes``: what its new state will hold). None: refused."""
        self.sketch.add(route)
        state = self._protected.get(route)
        if state is not None:
            self._protected.move_to_end(route)
            return state
        state = self._probation.pop(route, None)
        if state is not None:
            self._promote(route, state)
            return state
        if not self._admits(route, nbytes):
            self.stats.refused += 1
            return None
        state = self._factory(route)
        state.held = 0
        self._probation[route] = state
        return state

    def put(self, route: str, state: V) -> None:
        """Hold ``state`` for ``route`` (a restored state: always admitted, making room
        by evicting what the policy gives up), as most recently seen."""
        self.remove(route)
        self._make_room(1, state.held, keep=None)
        self._probation[route] = state
        self.nbytes += state.held
        self._enforce_bytes(route)

    def resize(self, route: str, nbytes: int) -> None:
        """The route now holds ``nbytes``; evict others while over the byte budget."""
        state = self.get(route)
        if state is None or state.held == nbytes:
            return
        self.nbytes += nbytes - state.held
        state.held = nbytes
        self._enforce_bytes(route)

    def remove(self, route: str) -> V | None:
        """Take a route out without calling ``on_evict``: it is not an eviction."""
        state = self._protected.pop(route, None)
        if state is None:
            state = self._probation.pop(route, None)
        if state is not None:
            self.nbytes -= state.held
        return state

    def oldest_first(self) -> Iterator[tuple[str, V]]:
        """Every route, probation then protected, least recently seen first."""
        return iter(list(self._probation.items()) + list(self._protected.items()))

    # -- policy ------------------------------------------------------------------------

    def _promote(self, route: str, state: V) -> None:
        self._protected[route] = state
        if len(self._protected) > self._max_protected:
            demoted, demoted_state = self._protected.popitem(last=False)
            self._probation[demoted] = demoted_state

    def _victim(self, keep: str | None) -> str | None:
        for segment in (self._probation, self._protected):
            for route in segment:
                if route != keep:
                    return route
        return None

    def _over(self, routes: int, nbytes: int) -> Reason | None:
        """Which bound ``routes`` more routes and ``nbytes`` more bytes would break."""
        if len(self) + routes > self._max:
            return "routes"
        if self._max_bytes is not None and self.nbytes + nbytes > self._max_bytes:
            return "memory"
        return None

    def _fits(self, routes: int, held: int, nbytes: int) -> bool:
        return routes + 1 <= self._max and (
            self._max_bytes is None or held + nbytes <= self._max_bytes
        )

    def _admits(self, route: str, nbytes: int) -> bool:
        """Make room for a new route of ``nbytes`` if it is seen more often than each
        route it would push out; if not, evict nothing and return False."""
        routes, held = len(self), self.nbytes
        if self._fits(routes, held, nbytes):
            return True
        freq = self.sketch.estimate(route)
        victims: list[str] = []
        for segment in (self._probation, self._protected):
            for victim, state in segment.items():
                if self.sketch.estimate(victim) >= freq:
                    return False
                victims.append(victim)
                routes, held = routes - 1, held - state.held
                if self._fits(routes, held, nbytes):
                    for gone in victims:
                        self._evict(gone, self._over(1, nbytes) or "routes")
                    return True
        return False  # giving up every route would not make room

    def _make_room(self, routes: int, nbytes: int, keep: str | None) -> None:
        while (reason := self._over(routes, nbytes)) is not None:
            victim = self._victim(keep)
            if victim is None:
                return
            self._evict(victim, reason)

    def _enforce_bytes(self, keep: str) -> None:
        if self._max_bytes is None:
            return
        while self.nbytes > self._max_bytes:
            victim = self._victim(keep)
            if victim is None:
                return
            self._evict(victim, "memory")

    def _evict(self, route: str, reason: Reason) -> None:
        state = self.remove(route)
        if state is None:
            return
        if reason == "memory":
            self.stats.evicted_memory += 1
        else:
            self.stats.evicted_routes += 1
        if self._on_evict is not None:
            self._on_evict(route, state, reason)
