"""The package's layering, read from its own imports: the architecture cannot rot quietly.

Every ``import`` in every module counts, at the top or inside a function, under
``TYPE_CHECKING`` or not. The rules:

- no cycle between modules anywhere in the package;
- each part imports only parts below it (:data:`LAYERS`);
- the detector, and everything it reaches, reaches neither Kafka nor HTTP;
- the engine reaches neither Kafka nor HTTP either (it is shared by all three doors);
- the HTTP side server does not reach the Kafka loop.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import sentinel_stream

PACKAGE = Path(sentinel_stream.__file__).parent
ROOT = "sentinel_stream"

LAYERS: dict[str, int] = {
    # bottom: pure building blocks
    "sentinel_stream.clock": 0,
    "sentinel_stream.detect": 0,
    "sentinel_stream.logs": 0,
    "sentinel_stream.records": 1,
    "sentinel_stream.explain": 2,
    "sentinel_stream.config": 2,
    "sentinel_stream.status": 2,
    # events -> verdicts
    "sentinel_stream.engine": 3,
    "sentinel_stream.metrics": 4,
    # the doors
    "sentinel_stream.stream": 5,
    "sentinel_stream.http": 5,
    "sentinel_stream.tools": 5,
    # wiring and the command line
    "sentinel_stream.process": 6,
    "sentinel_stream.http_process": 7,
    "sentinel_stream.app": 8,
    "sentinel_stream.cli": 9,
    "sentinel_stream.__main__": 10,
    "sentinel_stream": 0,
}
"""Each part's floor. A module may import its own part and any part on a lower floor;
two parts on one floor do not import each other."""

KAFKA_OR_HTTP = ("confluent_kafka", "aiohttp")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports(name: str) -> frozenset[str]:
    """Everything ``name`` imports: modules of the package, and top-level external names."""
    path = modules()[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node)
            if base == "__future__":
                continue
            found.add(base)
            # ``from pkg import mod`` imports the module pkg.mod when there is one.
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules())
    out: set[str] = set()
    for imp in found:
        if imp == ROOT or imp.startswith(ROOT + "."):
            target = imp
            while target not in modules():
                target = target.rsplit(".", 1)[0]
            out.add(target)
        else:
            out.add(imp.split(".")[0])
    out.discard(name)
    return frozenset(out)


def internal(name: str) -> set[str]:
    return {m for m in imports(name) if m in modules()}


def packages_of(name: str) -> set[str]:
    """The packages whose ``__init__`` runs before ``name`` is imported."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def reach(name: str) -> set[str]:
    """Every module and external package importing ``name`` loads, transitively
    (a submodule's packages included: their ``__init__`` runs first)."""
    seen: set[str] = set()
    todo = [name, *packages_of(name)]
    while todo:
        current = todo.pop()
        for m in {*imports(current), *packages_of(current)}:
            if m not in seen:
                seen.add(m)
                if m in modules():
                    todo.append(m)
    return seen


def part(name: str) -> str:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in LAYERS:
            return candidate
    raise AssertionError(f"{name} belongs to no part of LAYERS: add it there")


def test_every_module_belongs_to_a_part() -> None:
    for name in modules():
        part(name)


def test_no_import_cycles() -> None:
    graph = {m: internal(m) for m in modules()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_down(name: str) -> None:
    mine = part(name)
    for target in internal(name):
        theirs = part(target)
        if theirs == mine or target == ROOT:
            continue
        assert LAYERS[theirs] < LAYERS[mine], (
            f"{name} (floor {LAYERS[mine]}) imports {target} (floor {LAYERS[theirs]})"
        )


@pytest.mark.parametrize("name", [m for m in sorted(modules()) if part(m) == f"{ROOT}.detect"])
def test_the_detector_is_pure(name: str) -> None:
    reached = reach(name)
    assert not reached & set(KAFKA_OR_HTTP), f"{name} reaches {reached & set(KAFKA_OR_HTTP)}"
    outside = {m for m in reached if m in modules() and part(m) != f"{ROOT}.detect"}
    assert outside <= {ROOT}, f"{name} reaches {outside} outside the detector"


def test_the_engine_reaches_neither_kafka_nor_http() -> None:
    reached = reach(f"{ROOT}.engine.engine")
    assert not reached & set(KAFKA_OR_HTTP)


def test_the_http_server_does_not_reach_the_kafka_loop() -> None:
    for name in [m for m in modules() if part(m) == f"{ROOT}.http"]:
        reached = reach(name)
        assert "confluent_kafka" not in reached, name
        assert not {m for m in reached if m.startswith(f"{ROOT}.stream")}, name


def test_the_walk_sees_imports_inside_functions() -> None:
    # The CLI imports the service lazily; the walk must still see it, or a lazy import
    # could hide a cycle or a layering break.
    assert f"{ROOT}.app" in imports(f"{ROOT}.cli")
