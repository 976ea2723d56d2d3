"""Where models are fitted: off the hot path, within a fixed budget.

A fit costs a fixed slice of CPU whatever the window size (the benchmark report gives
it), and with thousands of routes the fits wanted can exceed what the machine can do.
So refit capacity is a fixed budget:
``SENTINEL_REFIT_WORKERS`` processes (default 1, one core beside the consumer's; a
process, not a thread, so a fit never holds the consumer's GIL). Requests wait in two
FIFO queues, first fits and refits, served in turn when both wait: a route without a
model is scored by rules alone, so its first fit matters, but a flood of new routes must
not starve the refits of the routes already served, so each queue gets every other free
worker (``dispatched_first`` and ``dispatched_again`` count what each got). A route has
at most one request queued or running (the detector guarantees it), so under overload
every route is refit in turn and the queue never holds more entries than there are
routes. The window is copied when
a worker takes the request, not when it was made, so a fit always sees the freshest
rows.

:class:`InlineRefitter` runs the same fit at once in the caller: ``evaluate`` and tests
use it so that results do not depend on timing.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from sentinel_stream.detect.forest import CompiledForest
from sentinel_stream.detect.rules import Grader, fit_grader
from sentinel_stream.detect.threshold import TAIL, tail_threshold, threshold_tail


@dataclass(frozen=True, slots=True)
class FitRequest:
    route: str
    token: int
    rows: npt.NDArray[np.float32]
    n_estimators: int
    max_samples: int
    contamination: float
    score_floor: float
    seed: int | None
    one_sided: tuple[int, ...] = ()
    graded: bool = False
    """Also fit a neighbour grader on the rows, and read a threshold from the training
    rows' forest and neighbour grades together (features of unknown meaning: the
    detector's module doc, point 8)."""
    weighted: int = 0
    """The last this many rows are fit ``copies`` times by the forest (the rows since a
    shift: the detector's module doc, point 3); the grader sees every row once (copies
    would be each other's nearest neighbours, and every distance to them 0)."""
    copies: int = 1
    """How many times the forest sees the last ``weighted`` rows: they travel once, and
    are repeated here, in the worker."""


@dataclass(frozen=True, slots=True)
class FitResult:
    route: str
    token: int
    forest: CompiledForest | None
    """None when the fit failed (``error`` says why)."""
    threshold: float
    trained_on: int
    seconds: float
    error: str | None = None
    tail_score: float = 1.0
    """The training rows' out-of-bag 90th percentile: new rows of the same traffic
    exceed it one time in ten (what tells a route that its traffic moved)."""
    grader: Grader | None = None
    """With ``graded``: what grades rows by their distance to the training rows."""
    graded_threshold: float = 1.0
    """With a grader: the threshold of the mean of a row's forest score and grade, read
    as ``threshold`` is, from the training rows' (out-of-bag scores, each row's grade
    against the others)."""


RequestFactory = Callable[[], FitRequest | None]
"""Builds the request when a worker is free; None if the route is gone by then."""


def fit_route(request: FitRequest) -> FitResult:
    """Fit one route's model, its threshold and its baseline. Runs in a refit worker."""
    from sentinel_stream.detect.fit import fit_scored  # scikit-learn: only where fits run

    started = time.perf_counter()
    # The threshold is read from out-of-bag scores, so no tree samples more than half of a
    # young window: with 128 rows and 256-row trees every tree would sample every row,
    # the threshold would come from in-bag scores, lower than new rows will score, and a
    # young route would flag several times its contamination.
    max_samples = max(min(request.max_samples, len(request.rows) // 2), 2)
    rows = request.rows
    if request.weighted and request.copies > 1:
        recent = rows[len(rows) - request.weighted :]
        rows = np.concatenate((rows, *([recent] * (request.copies - 1))))
    forest, _, train_scores = fit_scored(
        rows, request.n_estimators, max_samples, request.seed, request.one_sided
    )
    assert train_scores is not None
    threshold = tail_threshold(
        train_scores, request.contamination, threshold_tail(len(train_scores))
    )
    tail_score = float(np.quantile(train_scores, 1.0 - TAIL))
    threshold = min(max(threshold, request.score_floor), 1.0)
    grader, graded_threshold = None, threshold
    graded = fit_grader(request.rows) if request.graded else None
    if graded is not None:
        grader, own = graded
        blended = 0.5 * (train_scores[: len(own)] + own)
        value = tail_threshold(blended, request.contamination, threshold_tail(len(blended)))
        graded_threshold = min(max(value, request.score_floor), 1.0)
    return FitResult(
        route=request.route,
        token=request.token,
        forest=forest,
        threshold=threshold,
        trained_on=len(request.rows),
        seconds=time.perf_counter() - started,
        tail_score=tail_score,
        grader=grader,
        graded_threshold=graded_threshold,
    )


def _load_fit(nice: int = 0) -> None:
    """A worker's start: import what a fit needs (scikit-learn) before the first request,
    and nothing of the service.

    ``nice``: how much lower than the service's the worker's CPU priority is. A fit is
    background work that can wait a few milliseconds; the consumer loop's batch cannot
    (on a machine with fewer spare cores than workers, equal priority lets a fit hold
    the core the loop needs and every verdict waits behind it)."""
    if nice > 0:
        os.nice(nice)
    import sentinel_stream.detect.fit  # noqa: F401


def _failed(route: str, token: int, error: str) -> FitResult:
    return FitResult(route, token, None, 1.0, 0, 0.0, error)


class Refitter(Protocol):
    def submit(self, route: str, first: bool, make: RequestFactory) -> None: ...

    def collect(self) -> list[FitResult]: ...

    @property
    def queued(self) -> int: ...

    @property
    def running(self) -> int: ...

    def close(self) -> None: ...


class InlineRefitter:
    """Fits at once, in the caller's thread: deterministic, for evaluate and tests."""

    def __init__(self) -> None:
        self._done: list[FitResult] = []
        self.failures = 0

    def submit(self, route: str, first: bool, make: RequestFactory) -> None:
        request = make()
        if request is None:
            return
        try:
            self._done.append(fit_route(request))
        except Exception as exc:  # a bad fit must not stop scoring
            self.failures += 1
            self._done.append(_failed(route, request.token, repr(exc)))

    def collect(self) -> list[FitResult]:
        done, self._done = self._done, []
        return done

    @property
    def queued(self) -> int:
        return 0

    @property
    def running(self) -> int:
        return 0

    def close(self) -> None:
        self._done.clear()


class ProcessRefitter:
    """Fits in worker processes, first fits and refits in turn, at most ``workers`` at once."""

    def __init__(self, workers: int, nice: int = 0) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._workers = workers
        self._nice = nice
        self._first: deque[tuple[str, RequestFactory]] = deque()
        self._again: deque[tuple[str, RequestFactory]] = deque()
        self._inflight: dict[Future[FitResult], tuple[str, int]] = {}
        self._done: list[FitResult] = []
        self._pool = self._new_pool()
        self.failures = 0
        self._first_turn = True
        self.dispatched_first = 0
        self.dispatched_again = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs librdkafka threads, which fork does not copy.
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_fit,
            initargs=(self._nice,),
        )

    def submit(self, route: str, first: bool, make: RequestFactory) -> None:
        (self._first if first else self._again).append((route, make))
        self._dispatch()

    def _dispatch(self) -> None:
        while len(self._inflight) < self._workers and (self._first or self._again):
            take_first = bool(self._first) and (self._first_turn or not self._again)
            self._first_turn = not take_first
            if take_first:
                route, make = self._first.popleft()
                self.dispatched_first += 1
            else:
                route, make = self._again.popleft()
                self.dispatched_again += 1
            request = make()
            if request is None:
                continue
            try:
                future = self._pool.submit(fit_route, request)
            except (BrokenProcessPool, RuntimeError) as exc:
                self.failures += 1
                self._done.append(_failed(route, request.token, repr(exc)))
                self._pool = self._new_pool()
                continue
            self._inflight[future] = (route, request.token)

    def collect(self) -> list[FitResult]:
        for future in [f for f in self._inflight if f.done()]:
            route, token = self._inflight.pop(future)
            try:
                self._done.append(future.result())
            except Exception as exc:  # a worker died or the fit raised
                self.failures += 1
                self._done.append(_failed(route, token, repr(exc)))
                if isinstance(exc, BrokenProcessPool):
                    self._pool = self._new_pool()
        self._dispatch()
        done, self._done = self._done, []
        return done

    @property
    def queued(self) -> int:
        return len(self._first) + len(self._again)

    @property
    def running(self) -> int:
        return len(self._inflight)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or running (tests, benchmarks, drain)."""
        deadline = time.monotonic() + timeout
        while self.queued or self.running:
            if time.monotonic() > deadline:
                return False
            pending = list(self._inflight)
            if pending:
                wait(
                    pending,
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=FIRST_COMPLETED,
                )
            done = self.collect()  # collect() swaps self._done: keep what it returns
            self._done.extend(done)
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._first.clear()
        self._again.clear()
        self._inflight.clear()


def make_refitter(workers: int, nice: int = 0) -> Refitter:
    """Worker processes (``nice`` lower in priority), or inline fits with ``workers == 0``."""
    return ProcessRefitter(workers, nice) if workers > 0 else InlineRefitter()
