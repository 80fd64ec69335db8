"""The package's shape: no import cycle anywhere, the bulk engine behind its protocol, the retry fast path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tenacity

import batch_dealloc_async
from batch_dealloc_async import _retry
from tests.unit.scripted import Script, accepted, error

PACKAGE = Path(batch_dealloc_async.__file__).parent
NAME = "batch_dealloc_async"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every package module ``path`` imports, wherever the import stands (type-only and lazy ones too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(NAME))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(NAME):
                continue
            # `from . import _request` names a module; `from ._x import y` names a module too.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (cycle := visit(name)) is not None:
            return cycle
    return None


def test_the_graph_is_read() -> None:
    """The walker sees the package's modules and their imports (so the checks below check something)."""
    assert f"{NAME}._client" in MODULES
    assert f"{NAME}._transport" in GRAPH[f"{NAME}._client"]
    assert f"{NAME}._request" in GRAPH[f"{NAME}._operations"]


def test_no_import_cycle() -> None:
    """No module imports itself through others, type-only and function-level imports included."""
    assert find_cycle() is None


@pytest.mark.parametrize("forbidden", ["_client", "_operations", "_transport", "_http", "_auth", "_retry"])
def test_bulk_engine_depends_on_its_protocol_only(forbidden: str) -> None:
    """The bulk engine never imports the client, the node operations or the wire."""
    assert f"{NAME}.{forbidden}" not in GRAPH[f"{NAME}._bulk"]


def test_cli_uses_the_public_api_only() -> None:
    """The command line imports the package root and public subpackages, never a private module."""
    for name, targets in GRAPH.items():
        if not name.startswith(f"{NAME}.cli"):
            continue
        private = {t for t in targets if not t.startswith(f"{NAME}.cli") and "._" in t}
        assert private == set(), name


def test_no_module_reaches_into_private_attributes() -> None:
    """No ``noqa: SLF001`` in the package: nothing reads another object's private attributes."""
    offenders = [str(p) for p in MODULES.values() if "SLF001" in p.read_text(encoding="utf-8")]
    assert offenders == []


class CountingRetrying(tenacity.AsyncRetrying):
    built = 0

    def __init__(self, *args, **kwargs) -> None:
        type(self).built += 1
        super().__init__(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    CountingRetrying.built = 0
    monkeypatch.setattr(_retry.tenacity, "AsyncRetrying", CountingRetrying)
    return CountingRetrying


async def test_fast_path_builds_no_retry_object(counted, make_client) -> None:
    """A call whose first attempt succeeds never builds a tenacity loop; one that retries builds exactly one."""
    from aioresponses import aioresponses  # noqa: PLC0415

    with aioresponses() as mock:
        Script([accepted()]).install(mock)
        async with make_client() as client:
            await client.deallocate_node("pool1", "n1")
            assert counted.built == 0
    with aioresponses() as mock:
        Script([error(500, "InternalError"), accepted()]).install(mock)
        async with make_client() as client:
            result = await client.deallocate_node("pool1", "n1")
    assert result.attempts == 2
    assert counted.built == 1
