"""The README and the docs pages stay true: every ``vqgen`` line of every page parses, every
verb is shown, the Python examples' imports exist, links between pages resolve, the README
stays short (CI running the README's set-up commands is tests/test_ci.py). Nothing heavy is run here (the
commands themselves run, on tiny settings, in test_readme_runs.py)."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from vqgen.pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

# Every page, in the order test_readme_runs.py runs their commands: a page's commands may
# read what earlier pages' commands wrote. README.md runs first: its demo writes the
# checkpoints/demo the docs pages edit, compress and evaluate with, and its quick list trains
# runs/mnist before sampling from it (a docs page's copy of a command already run is
# skipped). A docs page missing here fails test_every_docs_page_is_listed.
PAGES = [
    "README.md",
    "docs/command-line.md",
    "docs/editing.md",
    "docs/evaluation.md",
    "docs/codec.md",
    "docs/serve.md",
    "docs/pretrained.md",
    "docs/stage-one-family.md",
    "docs/scaling.md",
    "docs/python.md",
    "docs/benchmarks.md",
    "docs/layout.md",
]
PAGE_TEXT = {page: (ROOT / page).read_text() for page in PAGES}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.M | re.S)


def vqgen_commands(text: str) -> list[str]:
    """Every ``vqgen ...`` command in the README's shell blocks: lines starting with it and
    the parts of ``a && b`` chains that do."""
    found = []
    for lang, body in code_blocks(text):
        if lang not in ("", "sh", "bash", "console"):
            continue
        for line in body.splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part == "vqgen" or part.startswith("vqgen "):
                    found.append(part)
    return found


def cli_verbs() -> set[str]:
    (subs,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subs.choices)


def all_commands() -> list[str]:
    """Every page's ``vqgen`` commands in PAGES order, each once: the README's quick list
    repeats commands of the docs pages (so each page reads on its own), and a command
    is run where it first appears."""
    return list(dict.fromkeys(c for page in PAGES for c in vqgen_commands(PAGE_TEXT[page])))


def python_blocks() -> list[tuple[str, str]]:
    """(page, body) of every page's Python blocks, in PAGES order."""
    return [(page, body) for page in PAGES for lang, body in code_blocks(PAGE_TEXT[page])
            if lang == "python"]


README_TEXT = PAGE_TEXT["README.md"]
COMMANDS = all_commands()


def test_pages_have_vqgen_examples():
    assert len(COMMANDS) >= len(cli_verbs())


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command: str):
    try:
        args = build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as e:  # argparse refused it (and printed why)
        raise AssertionError(f"example does not parse: {command}") from e
    assert args.verb in cli_verbs()


def test_every_verb_has_an_example():
    shown = {shlex.split(c)[1] for c in COMMANDS if len(shlex.split(c)) > 1}
    missing = cli_verbs() - shown
    assert not missing, f"verbs without an example in any page: {sorted(missing)}"


def test_python_example_imports_exist():
    blocks = python_blocks()
    assert {page for page, _ in blocks} >= {"README.md", "docs/python.md"}
    names = 0
    for page, body in blocks:
        for node in ast.walk(ast.parse(body, filename=page)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), \
                        f"{page}: {node.module}.{alias.name} does not exist"
                    names += 1
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
                    names += 1
    assert names > 0


def test_readme_is_a_front_door():
    lines = len(README_TEXT.splitlines())
    assert lines <= README_MAX_LINES, \
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_every_docs_page_is_listed():
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md")}
    missing = sorted(pages - set(PAGES))
    assert not missing, f"docs pages not in tests/test_readme.py PAGES (never checked): {missing}"


def test_readme_quick_list_repeats_docs_commands():
    """The README's commands (bar the set-up's demo) are copies of docs pages' commands,
    so each docs page is complete on its own and the README adds no untested variant."""
    in_docs = {c for page in PAGES[1:] for c in vqgen_commands(PAGE_TEXT[page])}
    extra = [c for c in vqgen_commands(README_TEXT) if c != "vqgen demo" and c not in in_docs]
    assert not extra, f"README commands that no docs page shows: {extra}"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (outside code blocks)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    anchors: set[str] = set()
    for title in re.findall(r"^#{1,6} +(.+?) *#* *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def relative_links(text: str) -> list[str]:
    """Targets of the page's Markdown links and images that are not URLs."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


LINKED_PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", LINKED_PAGES)
def test_relative_links_resolve(page: str):
    source = ROOT / page
    broken = []
    for target in relative_links(source.read_text()):
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(ROOT)})")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    assert not broken, f"{page}: broken links: {broken}"
