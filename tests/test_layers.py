"""The rooms and their arrows (README, Architecture): each package imports only the packages it may, module-level
imports form no cycle, and no module outgrows 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recipes", "chat", "pipelines", "eval", "registry", "serving", "accounts", "jobs", "bench")
ALLOWED = {  # package -> the packages of ours it may import (anywhere in a module, lazily or not)
    "recipes": set(),
    "chat": {"recipes"},
    "accounts": {"recipes"},
    "registry": {"recipes"},
    "eval": {"recipes", "chat"},
    "serving": {"recipes", "chat", "accounts", "registry"},
    "jobs": {"recipes", "accounts", "serving", "registry"},
    "pipelines": {"recipes", "chat", "eval", "registry", "serving", "accounts", "jobs"},
    "bench": set(PACKAGES) - {"bench"},
}


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def _imports(tree: ast.AST, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_each_package_imports_only_what_its_arrows_allow():
    wrong = []
    for package, path in _modules():
        ours = {name.split(".")[0] for name in _imports(ast.parse(path.read_text()), False)} & set(PACKAGES)
        for other in sorted(ours - ALLOWED[package] - {package}):
            wrong.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not wrong, "\n".join(wrong)


def test_module_level_imports_have_no_cycle():
    names = {}
    for _, path in _modules():
        relative = path.relative_to(ROOT).with_suffix("")
        names[".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)] = path
    graph = {name: {imp for imp in _imports(ast.parse(path.read_text()), True) if imp in names and imp != name}
             for name, path in names.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [node])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [])
            assert cycle is None, " -> ".join(cycle)


def test_no_module_is_over_400_lines():
    long = [f"{path.relative_to(ROOT)}: {n}" for _, path in _modules()
            if (n := len(path.read_text().splitlines())) > 400]
    assert not long, long


def test_every_room_is_installed():
    """An installed Lathe (not only this checkout on sys.path) has every package: pyproject's find list names them."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p for p in PACKAGES if p != "bench" and f"{p}*" not in include) == []
