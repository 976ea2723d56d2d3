"""What each of the member's processes sets up the same way: its heap, and the explainer.

A member is one process, or two with ``SENTINEL_HTTP_PROCESS`` (the Kafka loop's and the
HTTP door's, :mod:`sentinel_stream.http_process`). Each caps malloc's arenas, freezes
what start-up built away from the garbage collector, gives free pages back, and, when an
LLM is configured, builds the same explainer over its own side producer.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from typing import Any

import orjson

from sentinel_stream.config import Settings
from sentinel_stream.explain.llm import Breaker, ChatBackend, Explainer
from sentinel_stream.metrics import Metrics
from sentinel_stream.stream.side_producer import SideProducer


class Upkeep:
    """What each process's event loop does between requests, ten times a second: serve
    its side producer's delivery reports, and give the heap's free pages back every
    :data:`TRIM_EVERY_S`."""

    def __init__(self, side: SideProducer) -> None:
        self._side = side
        self._next_trim = time.monotonic() + TRIM_EVERY_S

    def tick(self) -> None:
        self._side.poll()
        if time.monotonic() >= self._next_trim:
            trim_heap()
            self._next_trim = time.monotonic() + TRIM_EVERY_S


def make_explainer(s: Settings, side: SideProducer, metrics: Metrics) -> Explainer:
    """The LLM explainer; its explanations go to the output topic through ``side``."""
    assert s.ollama_host and s.ollama_model
    backend = ChatBackend(
        s.llm_api,
        s.ollama_host,
        s.ollama_model,
        s.llm_api_key.get_secret_value() if s.llm_api_key else None,
        s.llm_max_tokens,
    )
    out = s.output_topic
    explainer = Explainer(
        backend,
        lambda record: side.send(out, record["route"], orjson.dumps(record), "explanation"),
        timeout_s=s.llm_timeout_s,
        concurrency=s.llm_concurrency,
        queue_max=s.llm_queue_max,
        cache_max=s.llm_cache_max,
        breaker=Breaker(s.llm_breaker_failures, s.llm_breaker_reset_s),
        observe_seconds=metrics.llm_seconds.observe,
    )
    metrics.watch_explainer(explainer)
    return explainer


SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms).

The HTTP event loop and the Kafka loop share one interpreter; with the default, an HTTP
request arriving while the Kafka thread scores a batch can wait 5 ms for the GIL, more
than once per request."""


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two young-generation collections (Python's default is 700)."""


def settle_heap() -> None:
    """Move what start-up built (modules, the compiled kernels' objects, schemas, the
    engine) out of the garbage collector's sight, and collect the young generation less
    often.

    The hot paths allocate a few objects per event (the decoded fields, the event, its
    verdict's parts), nearly all dead within the batch. With Python's defaults the
    collector runs every 700 allocations and, every hundred of those, walks every object
    the process holds, hundreds of thousands of them from start-up alone, in pauses that
    land on whichever batch is decoding (the benchmark report has what it cost).
    Frozen, start-up's objects are never walked again."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


MALLOC_ARENAS = 2
"""glibc malloc arenas for the process, unless ``MALLOC_ARENA_MAX`` says otherwise."""
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before the first thread starts; True if capped.

    glibc gives each new thread an arena of its own, up to eight per core, and memory a
    thread frees stays in its arena: librdkafka's threads, the HTTP side and the loop
    each kept the high-water mark of what they ever held. Two arenas on these threads
    hold ~30 MiB less after a 1,000 x 1,000 load (the README's *Memory*), at no
    measured cost in speed (the benchmark report). Does nothing where the operator set
    ``MALLOC_ARENA_MAX`` (glibc reads it itself) or off glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = libc("mallopt")
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, arenas))


def libc(name: str) -> Any:
    """The C library's function ``name`` (glibc's malloc tuning, ``prctl``), or None off
    glibc."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


TRIM_EVERY_S = 30.0
"""How often the service gives the heap's free pages back (:func:`trim_heap`)."""


def trim_heap() -> bool:
    """Give the pages malloc holds free back to the kernel; True if any were.

    glibc returns freed memory to the kernel only from the top of its heaps: a window,
    a model or a fetch buffer freed below a live block stays resident. Evictions (the
    memory budget, floods of one-off routes) and backlogs leave such holes;
    ``malloc_trim`` releases the free pages inside them too. The service calls it every
    ``TRIM_EVERY_S`` seconds from the HTTP side's thread (the call leaves the GIL
    free; it takes the allocator's locks only while it walks). Off glibc, nothing."""
    trim = libc("malloc_trim")
    return trim is not None and bool(trim(0))
