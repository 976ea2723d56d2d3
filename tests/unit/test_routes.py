"""The route table: bounded by count and bytes, frequency-aware admission, SLRU victims."""

from __future__ import annotations

from dataclasses import dataclass

from sentinel_stream.detect.routes import FrequencySketch, Reason, RouteTable


@dataclass
class Entry:
    name: str
    held: int = 0


class Recorder:
    def __init__(self) -> None:
        self.evicted: list[tuple[str, Reason]] = []

    def __call__(self, route: str, state: Entry, reason: Reason) -> None:
        assert state.name == route
        self.evicted.append((route, reason))


def table(max_routes: int, max_bytes: int | None = None) -> tuple[RouteTable[Entry], Recorder]:
    rec = Recorder()
    return RouteTable(max_routes, max_bytes, Entry, rec), rec


def test_the_sketch_counts_ages_and_never_undercounts() -> None:
    s = FrequencySketch(1000)
    for i in range(200):
        for _ in range(i % 7):
            s.add(f"/k{i}")
    assert all(s.estimate(f"/k{i}") >= min(i % 7, s.CAP) for i in range(200))
    exact = sum(s.estimate(f"/k{i}") == i % 7 for i in range(200))
    assert exact >= 190  # 200 keys in 4 x 1024 counters: collisions are rare
    # An unseen key reads its four counters' least: above 1 only if all four collide
    # with counted keys (about 1 key in 1,200 here, so one unseen key alone would make
    # the test fail about that often, with Python's per-process string hash).
    assert sum(s.estimate(f"/never{i}") > 1 for i in range(200)) <= 5
    for _ in range(15):
        s.add("/hot")
    assert s.estimate("/hot") == s.CAP
    resets = s.resets
    for i in range(10 * 1000):  # a sample's worth of arrivals halves every counter
        s.add(f"/once{i}")
    assert s.resets == resets + 1
    assert s.estimate("/hot") <= s.CAP // 2 + 1


def test_new_routes_fill_the_table_then_must_beat_the_victim() -> None:
    t, rec = table(3)
    for r in ("a", "b", "c"):
        assert t.touch(r) is not None
    assert t.touch("a") is not None and t.touch("b") is not None  # seen twice
    # A one-off route is seen once, as often as "c": refused, nothing evicted.
    assert t.touch("d") is None
    assert rec.evicted == [] and t.stats.refused == 1 and "d" not in t
    # Seen again, it is now more frequent than "c", the route seen least recently in
    # probation: admitted, "c" evicted.
    assert t.touch("d") is not None
    assert rec.evicted == [("c", "routes")] and len(t) == 3
    assert t.stats.evicted_routes == 1


def test_a_flood_of_one_off_routes_evicts_none_of_the_routes_seen_often() -> None:
    t, rec = table(100)
    warm = [f"/warm{i}" for i in range(60)]
    for _ in range(5):
        for r in warm:
            assert t.touch(r) is not None
    for i in range(20_000):
        t.touch(f"/flood{i}")
    assert all(r in t for r in warm)
    assert len(t) == 100
    # Most of the flood is refused; what gets in (once aging has halved the counts of
    # the flood routes it would push out) pushes out flood, never a warm route.
    assert t.stats.refused > 15_000
    assert rec.evicted and all(r.startswith("/flood") for r, _ in rec.evicted)


def test_protected_routes_go_after_probation_ones() -> None:
    t, rec = table(5)
    for r in ("p1", "p2", "p3"):
        t.touch(r)
        t.touch(r)  # second sight: protected
    t.touch("once1")
    t.touch("once2")
    for _ in range(3):
        t.touch("new")  # beats the one-off routes, not the protected ones
    assert rec.evicted == [("once1", "routes")]
    assert {"p1", "p2", "p3", "once2", "new"} == {r for r, _ in t.oldest_first()}


def test_the_byte_budget_holds_and_evicts_the_least_valuable() -> None:
    t, rec = table(1000, max_bytes=10_000)
    for i in range(10):
        r = f"/r{i}"
        for _ in range(1 + i):  # /r9 seen most often
            t.touch(r, 100)
        t.resize(r, 900)
    assert t.nbytes == 9_000 and rec.evicted == []
    t.resize("/r9", 2_900)  # a route grows past the budget: the least valuable goes
    assert t.nbytes <= 10_000
    # Probation first (/r0, seen once), then the least recently seen protected route.
    assert [r for r, _ in rec.evicted] == ["/r0", "/r1"]
    assert all(reason == "memory" for _, reason in rec.evicted)
    assert t.stats.evicted_memory == 2 and t.nbytes == sum(e.held for _, e in t.oldest_first())
    # A new route that would not fit must beat every route it pushes out.
    assert t.touch("/new", 950) is None
    assert t.stats.refused == 1


def test_a_route_never_evicts_itself_and_removal_is_not_eviction() -> None:
    t, rec = table(10, max_bytes=1_000)
    t.touch("a")
    t.resize("a", 5_000)  # alone over budget: nothing else to give up
    assert "a" in t and rec.evicted == []
    assert t.remove("a") is not None and t.nbytes == 0 and rec.evicted == []


def test_put_always_holds_a_restored_route() -> None:
    t, rec = table(2, max_bytes=1_000)
    for r in ("a", "b"):
        for _ in range(5):
            t.touch(r)
        t.resize(r, 400)
    t.put("restored", Entry("restored", 500))
    assert "restored" in t and t.nbytes <= 1_000
    assert [r for r, _ in rec.evicted] == ["a"]
    assert t.get("a") is None and t.get("b") is not None
