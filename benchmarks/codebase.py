"""Structure of the source tree as JSON: largest files, module import graph, cycles.

    python benchmarks/codebase.py [--root .]

Prints one JSON object: ``largest`` (the 10 longest source files, lines), ``edges_stage2_to_stage1``
(module -> module imports from stage two into stage one), ``cycles`` (strongly connected groups
of more than one module in the import graph) and ``modules``. Imports are read statically
(top-level and function-level ``import`` / ``from`` statements), so lazy imports count too.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

PACKAGES = ("stage1_vqvae", "stage2_prior", "pipeline")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _strip_prefix(name: str) -> str:
    return name[len("vqgen."):] if name.startswith("vqgen.") else name


def imports_of(root: Path, path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (absolute names without ``vqgen.``)."""
    me = module_name(root, path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [_strip_prefix(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = _strip_prefix(node.module or "")
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me:
                found.add(n)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; groups of more than one node (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    root = Path(ap.parse_args().root)
    files = [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(root, p) for p in files}
    graph = {module_name(root, p): imports_of(root, p, modules) for p in files}
    # a package's __init__ importing its own submodules is not a design cycle
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d.startswith(m + "."))}
    all_py = [p for p in root.rglob("*.py") if ".venv" not in p.parts and ".git" not in p.parts]
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in all_py),
                   reverse=True)
    cross = sorted(f"{a} -> {b}" for a, deps in graph.items() if a.startswith("stage2_prior")
                   for b in deps if b.startswith("stage1_vqvae"))
    cycles = strongly_connected(graph)
    print(json.dumps({
        "largest": [{"file": f, "lines": n} for n, f in sizes[:10]],
        "edges_stage2_to_stage1": cross,
        "cycles": cycles,
        "num_cycles": len(cycles),
        "modules": len(modules),
        "source_lines": sum(len(p.read_text().splitlines()) for p in files),
    }, indent=1))


if __name__ == "__main__":
    main()
