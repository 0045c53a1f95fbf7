"""One way to print a number that may be missing, for progress lines, summaries and the report."""

from __future__ import annotations

from typing import Any


def format_number(value: Any, spec: str = ".4g") -> str:
    """``format(value, spec)`` for floats, ``"n/a"`` for None (a metric that was not
    computed, e.g. a resumed stage with nothing left to train), ``str`` for anything else."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)
