"""The README's examples stay true: every ``vqgen`` line parses, every verb is shown, the
Python example imports exist, and CI runs exactly the README's test command. Nothing heavy
is run here (the commands themselves are exercised on tiny settings in test_cli_*.py)."""

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
TEST_COMMAND_PREFIX = ". .venv/bin/activate && python -m pytest"


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


README_TEXT = README.read_text()
COMMANDS = vqgen_commands(README_TEXT)


def test_readme_has_vqgen_examples():
    assert len(COMMANDS) >= len(cli_verbs())


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command: str):
    try:
        args = build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as e:  # argparse refused it (and printed why)
        raise AssertionError(f"README example does not parse: {command}") from e
    assert args.verb in cli_verbs()


def test_every_verb_has_a_readme_example():
    shown = {shlex.split(c)[1] for c in COMMANDS if len(shlex.split(c)) > 1}
    missing = cli_verbs() - shown
    assert not missing, f"verbs without a README example: {sorted(missing)}"


def test_ci_runs_exactly_the_readme_test_command():
    lines = [ln.strip() for _, body in code_blocks(README_TEXT) for ln in body.splitlines()
             if ln.strip().startswith(TEST_COMMAND_PREFIX)]
    assert len(lines) == 1, f"expected one test command in the README, found {lines}"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert lines[0] in [ln.strip() for ln in ci], f"{lines[0]!r} is not a line of .ci/run"


def test_python_example_imports_exist():
    blocks = [body for lang, body in code_blocks(README_TEXT) if lang == "python"]
    assert blocks, "the README has no Python example"
    names = 0
    for body in blocks:
        for node in ast.walk(ast.parse(body)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name} does not exist"
                    names += 1
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
                    names += 1
    assert names > 0
