"""Process-wide tuning the service applies at start."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from sentinel_stream.process import GC_YOUNG_THRESHOLD, MALLOC_ARENAS, settle_heap


def test_settle_heap_freezes_start_up_and_collects_the_young_less_often() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # start-up's objects: no longer walked
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


ARENAS_AFTER_THREADS = """
import ctypes, sys, threading
from sentinel_stream.process import MALLOC_ARENAS, limit_malloc_arenas
print(limit_malloc_arenas() if sys.argv[1] == "cap" else None, MALLOC_ARENAS)
start = threading.Barrier(8)
def work():
    start.wait()
    held = [bytearray(200) for _ in range(2000)]
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena n:" block per arena, on stderr
"""


def arenas_used(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", ARENAS_AFTER_THREADS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip(), out.stderr.count("Arena ")


def test_malloc_arenas_are_capped_before_threads_start() -> None:
    said, arenas = arenas_used("cap")
    assert said == f"True {MALLOC_ARENAS}"
    assert arenas <= MALLOC_ARENAS
    # Without the cap, eight threads that allocate take arenas of their own.
    assert arenas_used("none")[1] > MALLOC_ARENAS


def test_an_operators_malloc_arena_max_wins() -> None:
    said, arenas = arenas_used("cap", MALLOC_ARENA_MAX="4")
    assert said == f"False {MALLOC_ARENAS}"
    assert MALLOC_ARENAS < arenas <= 4


HOLES_IN_THE_HEAP = """
import sys
from sentinel_stream.process import trim_heap
def rss_mib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
held = [bytes(bytearray(100_000)) for _ in range(2000)]  # ~200 MB on malloc's heap
del held[::2]  # every other block freed: holes below live blocks
before = rss_mib()
trimmed = trim_heap() if sys.argv[1] == "trim" else None
print(trimmed, before, rss_mib())
"""


def heap_after(mode: str) -> tuple[str, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", HOLES_IN_THE_HEAP, mode], capture_output=True, text=True, check=True
    )
    trimmed, before, after = out.stdout.split()
    return trimmed, int(before), int(after)


def test_trim_heap_gives_the_holes_of_freed_blocks_back() -> None:
    trimmed, before, after = heap_after("trim")
    assert trimmed == "True"
    assert before - after > 50  # MiB: of the ~100 MB freed
    # Without it, glibc keeps them resident.
    _, before, after = heap_after("none")
    assert before - after < 10
