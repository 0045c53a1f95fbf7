"""Structure of the source tree as JSON: largest files, module import graph, cycles.

    python benchmarks/codebase.py [--root .]
    python benchmarks/codebase.py --smoke    # the same reading of this checkout (under a second)

Prints one JSON object: ``largest`` (the 10 longest .py files, lines), ``edges_stage2_to_stage1``
(module -> module imports from stage two into stage one), ``cycles`` (strongly connected groups
of more than one module in the import graph), ``modules`` and ``source_lines``. The graph is
the one ``tests/test_structure.py`` checks (imports read statically, lazy ones included), so
this script imports it from there: one implementation of the graph. ``--smoke`` changes
nothing (the run is already quick) except marking the JSON as a smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests package: one implementation of the import graph

from tests.test_structure import PACKAGES, cycles, import_graph  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO), help="a checkout (default: this one)")
    ap.add_argument("--smoke", action="store_true", help="the same run (it is already quick)")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    graph = import_graph(root)
    files = [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")]
    all_py = [p for p in root.rglob("*.py") if not {".venv", ".git"} & set(p.parts)]
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in all_py),
                   reverse=True)
    cross = sorted(f"{a} -> {b}" for a, deps in graph.items() if a.startswith("stage2_prior")
                   for b in deps if b.startswith("stage1_vqvae"))
    found = cycles(graph)
    result = {
        "benchmark": "codebase",
        "smoke": args.smoke,
        "largest": [{"file": f, "lines": n} for n, f in sizes[:10]],
        "edges_stage2_to_stage1": cross,
        "cycles": found,
        "num_cycles": len(found),
        "modules": len(graph),
        "source_lines": sum(len(p.read_text().splitlines()) for p in files),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
