"""The package structure the design fixes: import direction between the stages, stage two's
narrow view of stage one (code maps + run machinery), and no import cycles between modules.

Imports are read statically from the source (function-level imports included), so a lazy
import cannot hide a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stage1_vqvae", "stage2_prior", "pipeline")
PREFIX = "vqgen."


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The project modules ``path`` imports, as absolute names (relative imports resolved;
    ``from pkg import name`` counts as ``pkg.name`` when that is a module, else ``pkg``)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            candidates = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            continue
        for name in candidates:
            name = name.removeprefix(PREFIX)
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
                break
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(p, root) for p in files}
    graph = {module_name(p, root): project_imports(p, modules, root) for p in files}
    # a package __init__ re-exporting its own submodules is not a dependency between designs
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = [stack.pop()]
            while group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _allowed(importer: str, imported: str) -> bool:
    top = importer.split(".")[0]
    if top == "stage1_vqvae":
        if importer.startswith("stage1_vqvae.runtime"):  # run machinery knows nothing of the VQ-VAE
            return imported.startswith("stage1_vqvae.runtime")
        return imported.startswith("stage1_vqvae")
    if top == "stage2_prior":
        return (imported.startswith("stage2_prior") or imported == "stage1_vqvae.codes"
                or imported.startswith("stage1_vqvae.runtime"))
    return True  # pipeline composes both


def test_import_direction_and_stage_two_sees_only_code_maps_and_runtime():
    graph = import_graph()
    assert "stage2_prior.model" in graph and "stage1_vqvae.runtime.trainer" in graph
    bad = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if not _allowed(a, b))
    assert not bad, "imports against the design's direction:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_the_checkers_can_fail(tmp_path: Path):
    """A planted back-edge and a planted cycle are both reported."""
    for pkg, files in {
        "stage1_vqvae": {"__init__.py": "", "a.py": "from stage1_vqvae.b import x\n",
                         "b.py": "from .a import y\nimport stage2_prior.m\n"},
        "stage2_prior": {"__init__.py": "", "m.py": "from stage1_vqvae import lit\n"},
        "pipeline": {"__init__.py": ""},
    }.items():
        (tmp_path / pkg).mkdir()
        for name, text in files.items():
            (tmp_path / pkg / name).write_text(text)
    (tmp_path / "stage1_vqvae" / "lit.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["stage1_vqvae.b"] == {"stage1_vqvae.a", "stage2_prior.m"}
    assert graph["stage2_prior.m"] == {"stage1_vqvae.lit"}
    assert cycles(graph) == [["stage1_vqvae.a", "stage1_vqvae.b"]]
    assert not _allowed("stage2_prior.m", "stage1_vqvae.lit")
    assert not _allowed("stage1_vqvae.b", "stage2_prior.m")


def stage_one_modules_loaded_by(*modules: str) -> list[list[str]]:
    """For each of ``modules``, imported in turn in one fresh interpreter, the stage-one
    modules (other than the code-map module and the run machinery) loaded so far."""
    import os
    import subprocess
    import sys

    code = ("import sys, importlib\n"
            f"for m in {list(modules)!r}:\n"
            "    importlib.import_module(m)\n"
            "    print(sorted(n for n in sys.modules if n.startswith('vqgen.stage1_vqvae.') and "
            "n != 'vqgen.stage1_vqvae.codes' and not n.startswith('vqgen.stage1_vqvae.runtime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return [ast.literal_eval(line) for line in out.stdout.strip().splitlines()]


def test_stage_two_loads_no_vqvae_module():
    """Importing stage two's training and sampling loads nothing of stage one but the
    code-map module and the run machinery; the same probe on a pipeline module, which
    does load the VQ-VAE, finds it (so the probe's names are the ones modules load as)."""
    train, sampling, generate = stage_one_modules_loaded_by(
        "vqgen.stage2_prior.train", "vqgen.stage2_prior.sampling", "vqgen.pipeline.generate")
    assert train == [] and sampling == []
    assert "vqgen.stage1_vqvae.lit" in generate


def test_library_modules_do_not_import_the_cli():
    """The CLI (pipeline.cli, and ``python -m vqgen.pipeline``) sits on top: argument parsing,
    exit codes, printing. Library modules take plain arguments, so Python users and the app
    never go through it."""
    graph = import_graph()
    bad = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                 if b.startswith("pipeline.cli") and not a.startswith(("pipeline.cli", "pipeline.__main__")))
    assert not bad, "library modules importing the CLI:\n" + "\n".join(bad)


def _bare_imports(path: Path) -> list[str]:
    """Absolute imports of the three packages without the ``vqgen.`` prefix in ``path``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        bad += [n for n in names if n.split(".")[0] in PACKAGES]
    return bad


def test_every_import_uses_the_one_installed_name(tmp_path: Path):
    """Installed, the packages are vqgen.stage1_vqvae / vqgen.stage2_prior / vqgen.pipeline. A
    bare ``import pipeline`` would work from the repository root only (and load a second copy
    of the module), or pick up some other ``pipeline`` elsewhere: none may remain."""
    files = [p for d in (*PACKAGES, "tests", "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))]
    bad = {str(f.relative_to(ROOT)): hits for f in files if (hits := _bare_imports(f))}
    assert not bad, f"imports without the vqgen. prefix: {bad}"
    planted = tmp_path / "m.py"
    planted.write_text("import pipeline.cli\nfrom stage2_prior import model\n"
                       "from vqgen.pipeline import cli\n")
    assert _bare_imports(planted) == ["pipeline.cli", "stage2_prior"]


def test_the_package_is_src_vqgen_linking_the_three_folders():
    """src/vqgen/ is the installed package: its three entries (and checkpoints/, the shipped
    models) are relative links to the top-level folders (so a moved checkout still works),
    and setuptools' finder, which decides what goes in the wheel, sees every package folder
    through them."""
    import os

    from setuptools import find_packages

    src = ROOT / "src" / "vqgen"
    for d in (*PACKAGES, "checkpoints"):
        link = src / d
        assert link.is_symlink(), f"{link} must be a symlink to ../../{d}"
        assert os.readlink(link) == f"../../{d}"
        assert link.resolve() == ROOT / d
    folders = {"vqgen." + ".".join(p.parent.relative_to(ROOT).parts)
               for d in (*PACKAGES, "checkpoints") for p in (ROOT / d).rglob("__init__.py")}
    assert set(find_packages(str(ROOT / "src"))) == {"vqgen"} | folders
    assert (src / "py.typed").is_file()


def test_import_vqgen_gives_the_version_and_the_api_by_name():
    """``import vqgen`` is light (no torch), has the one version (which the checkpoint stamp
    uses), and every name of ``__all__`` resolves lazily to the function it names."""
    import subprocess
    import sys

    code = ("import sys, vqgen; print(vqgen.__version__, 'torch' in sys.modules); "
            "from vqgen.stage1_vqvae.runtime.checkpoint import VQGEN_VERSION; print(VQGEN_VERSION)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    version, loads_torch, stamp = out.stdout.split()
    assert loads_torch == "False" and stamp == version
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)

    import importlib
    import importlib.metadata

    import vqgen

    assert importlib.metadata.version("vqgen") == vqgen.__version__  # pyproject reads it
    assert sorted(vqgen.__all__) == sorted(["__version__", *vqgen._API])
    for name in vqgen._API:
        obj = getattr(vqgen, name)
        assert callable(obj) and obj.__name__ == name
        assert obj is getattr(importlib.import_module("vqgen" + vqgen._API[name]), name)
    with pytest.raises(AttributeError):
        vqgen.no_such_name  # noqa: B018
