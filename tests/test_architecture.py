"""The module map holds: no import circle between the library's modules, and
docs/architecture.md names every module once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "hfauth_mw"
ARCHITECTURE = PACKAGE.parent.parent / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [part for part in relative.parts if part != "__init__"]
    return ".".join(parts) or "hfauth_mw"


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports at module level (type-only imports too;
    imports inside functions are lazy on purpose and left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    # The importing module's package, inside hfauth_mw: [] or ["_cli"].
    package = list(path.parent.relative_to(PACKAGE).parts)
    for node in tree.body:
        nodes = list(ast.walk(node)) if isinstance(node, ast.If | ast.Try) else [node]
        for item in nodes:
            if not isinstance(item, ast.ImportFrom) or item.level < 1:
                continue
            base = package[: len(package) - (item.level - 1)]
            if item.module:
                found.add(".".join([*base, item.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in item.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {target for target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
        if name != "hfauth_mw"  # the package re-exports everything
    }


def test_no_import_circle_between_modules():
    graph = _graph()
    visiting, done, cycles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append([*trail[trail.index(node) :], node])
            return
        visiting.add(node)
        for target in sorted(graph.get(node, ())):
            visit(target, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_the_module_map_names_every_module(path: Path):
    if path.name in ("__init__.py", "__main__.py") and path.parent == PACKAGE:
        return
    text = ARCHITECTURE.read_text()
    shown = str(path.relative_to(PACKAGE.parent))
    name = path.relative_to(PACKAGE).as_posix()
    assert re.search(rf"`{re.escape(name)}`", text), f"docs/architecture.md misses {shown}"
