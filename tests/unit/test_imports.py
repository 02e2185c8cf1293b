"""The package's import graph: no circles, no module past ~600 lines (read with ast only)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kernelprovider"
MAX_LINES = 600
#: Modules not yet split, with their size at the time; shrink this list, never grow it.
TOO_LONG_FOR_NOW: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (functions included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, name, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_known_edges() -> None:
    graph = import_graph()
    assert "kernelprovider.container" in graph["kernelprovider.slurm.provisioner"]
    assert "kernelprovider.slurm.queue" in graph["kernelprovider.slurm.allocation"]
    assert "kernelprovider.doctor" in graph["kernelprovider.cli.list"]


def test_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' -> '.join(cycle or [])}"


def test_a_circle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_library_never_imports_the_cli() -> None:
    graph = import_graph()
    offenders = {
        name
        for name, deps in graph.items()
        if not name.startswith("kernelprovider.cli") and name != "kernelprovider.app"
        for dep in deps
        if dep.startswith("kernelprovider.cli") or dep == "kernelprovider.app"
    }
    assert offenders == set()


def test_modules_are_short() -> None:
    long = {
        module_name(p): len(p.read_text().splitlines())
        for p in PACKAGE.rglob("*.py")
        if len(p.read_text().splitlines()) > MAX_LINES
    }
    assert set(long) - set(TOO_LONG_FOR_NOW) == set(), long
