"""The package's import graph, read from the source (imports inside functions included):
helpers of tests/test_packaging.py."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "gender_age"
# what each subpackage may import besides itself: layers only import downward, and
# prediction and the tools never import training code
ALLOWED = {
    "core": set(),
    "faces": {"core"},
    "data": {"core"},
    "nets": {"core", "faces", "data"},
    "train": {"core", "faces", "data", "nets"},
    "predict": {"core", "faces", "data", "nets"},
    "tools": {"core", "faces", "data", "nets", "predict"},
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(root: Path, path: Path, known: set[str]) -> set[str]:
    """The package's modules that the file at ``path`` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def package_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every module of the package under ``root``."""
    files = {module_name(root, p): p for p in (root / PACKAGE).rglob("*.py")}
    return {m: imported_modules(root, p, set(files)) - {m} for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs that break ALLOWED: a subpackage importing one it may not."""
    bad = []
    for m, deps in graph.items():
        own = subpackage(m)
        for d in deps:
            theirs = subpackage(d)
            if own is not None and theirs != own and theirs not in ALLOWED[own]:
                bad.append((m, d))
    return sorted(bad)
