"""No module of textgym or agents imports another that imports it back (lazy imports included).

Package ``__init__`` modules are left out: importing ``textgym.x`` runs
``textgym/__init__`` by Python's rules, which is not a dependency of ``x``.
Imports under ``if TYPE_CHECKING:`` never run and are left out too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("textgym", "agents"):
        for file in (ROOT / package).rglob("*.py"):
            if file.name != "__init__.py":
                out[".".join(file.relative_to(ROOT).with_suffix("").parts)] = file
    return out


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(file.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, file, modules) for name, file in modules.items()}
    assert graph["agents.common.on_policy"], "the import graph is empty: the test would prove nothing"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_textgym_never_imports_agents() -> None:
    modules = _modules()
    for name, file in modules.items():
        if name.startswith("textgym."):
            assert not any(m.startswith("agents") for m in _imports(name, file, {**modules, "agents": file})), name
