"""CI runs the README's two set-up commands word for word, and nothing else but the chromium
install: `.ci/run` reads them out of README.md (.ci/readme_commands.py), so a change to either
file that makes them drift apart fails here. No torch: these run in a second or so."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# .ci/ is not a package (it runs before anything is installed): load the script by path
_spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
assert _spec is not None and _spec.loader is not None
readme_commands = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_commands)

README_INSTALL = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
README_TEST = ". .venv/bin/activate && python -m pytest"


def test_the_readme_has_exactly_the_two_setup_commands():
    commands = readme_commands.setup_commands((ROOT / "README.md").read_text())
    assert len(commands) == 2, commands
    install, test = commands
    assert install.startswith(README_INSTALL) and install.endswith("&& vqgen demo"), install
    assert test == README_TEST, test


def test_the_readme_install_brings_everything_the_suite_imports():
    """`.[dev]` is all a user installs, so it must pull the app, browser-test and Inception
    extras the suite uses (Chromium, a system package, is the one thing it cannot)."""
    # (a regex, not tomllib: the suite runs on Python 3.10 too)
    found = re.search(r"^dev = \[(.*?)\]$", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert found, "pyproject.toml has no dev extra"
    dev = found.group(1)
    for extra in ("app", "browser-tests", "inception"):
        assert extra in dev, f"the dev extra does not pull vqgen[{extra}]: {dev}"
    for requirement in ("pytest", "pyright", "jedi", "ruff"):
        assert requirement in dev, f"the dev extra lacks {requirement}: {dev}"


def fake_checkout(tmp_path: Path, first: str, second: str) -> Path:
    """A folder with the real .ci/ and a README whose two set-up commands are harmless."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / ".ci", repo / ".ci")
    (repo / "README.md").write_text(
        "# x\n\n## Set-up: two commands\n\nInstall:\n\n```\n" + first + "\n```\n\n"
        "Test:\n\n```\n" + second + "\n```\n\n## Next\n\n```\necho not-a-setup-command > c\n```\n")
    bin_dir = tmp_path / "bin"  # a chromium on PATH, so the install step is skipped
    bin_dir.mkdir()
    (bin_dir / "chromium").write_text("#!/bin/sh\n")
    (bin_dir / "chromium").chmod(0o755)
    return repo


def run_ci(repo: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(repo / ".ci" / "run")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_ci_runs_the_readme_commands_as_written_and_nothing_else(tmp_path):
    repo = fake_checkout(tmp_path, "echo one > a && echo 'it''s' >> a",
                         'printf "%s\\n" "$(cat a)" > b  # stands in for python -m pytest')
    done = run_ci(repo, tmp_path)
    assert done.returncode == 0, done.stderr
    # both ran, in order, from the checkout's root, with the shell quoting of the README
    assert (repo / "a").read_text() == "one\nits\n"
    assert (repo / "b").read_text() == "one\nits\n"
    made = sorted(p.name for p in repo.iterdir())
    assert made == [".ci", "README.md", "a", "b"], made  # no venv, no extra step


def test_ci_fails_when_a_readme_command_fails(tmp_path):
    repo = fake_checkout(tmp_path, "echo one > a && false && echo no > x", "echo two > b")
    done = run_ci(repo, tmp_path)
    assert done.returncode != 0
    assert not (repo / "x").exists() and not (repo / "b").exists()


def test_ci_script_has_no_step_of_its_own():
    """Every command of .ci/run is the chromium install or the loop over the README's two."""
    allowed = ("set -euo pipefail", 'cd "$(dirname "$0")/.."', "if ", "apt-get update",
               "fi", "for n in 1 2; do", 'command="$(python3 .ci/readme_commands.py "$n")"',
               'echo "', "start=$SECONDS", 'bash -e -c "$command"', "done")
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [ln for ln in lines if ln and not ln.startswith("#")]
    extra = [ln for ln in steps if not ln.startswith(allowed)]
    assert not extra, f".ci/run does more than the README's two commands: {extra}"
    guard = [ln for ln in steps if "does not run python -m pytest" in ln or ln.startswith("if [")]
    assert not [ln for ln in steps if re.search(r"\b(pip|pytest|vqgen|venv)\b", ln)
                and ln not in guard]
