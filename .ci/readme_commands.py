"""Print the README's set-up commands: the fenced blocks under "## Set-up: two commands".

Used by `.ci/run` (which runs them exactly as written) and by tests/test_ci.py (which checks
that there are exactly two and that `.ci/run` runs nothing else). Standard library only: it
runs before anything is installed.

Usage: python3 .ci/readme_commands.py [N]   (N = 1 or 2 prints that command alone)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTION = "## Set-up: two commands"
README = Path(__file__).resolve().parent.parent / "README.md"


def setup_commands(text: str) -> list[str]:
    """The contents of every fenced block between SECTION and the next `## ` heading."""
    if SECTION not in text:
        raise SystemExit(f"README.md has no {SECTION!r} section; .ci/run has nothing to run")
    body = text.split(SECTION, 1)[1]
    body = re.split(r"^## ", body, maxsplit=1, flags=re.MULTILINE)[0]
    return [b.strip("\n") for b in re.findall(r"^```[^\n]*\n(.*?)^```", body, re.S | re.M)]


def main(argv: list[str]) -> int:
    commands = setup_commands(README.read_text(encoding="utf-8"))
    if len(commands) != 2:
        print(f"README.md: expected 2 fenced commands under {SECTION!r}, found "
              f"{len(commands)}", file=sys.stderr)
        return 2
    if argv:
        print(commands[int(argv[0]) - 1])
    else:
        print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
