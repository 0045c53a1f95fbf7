"""Run ``python -m vqgen.pipeline`` in a child process the way a user would (one thread each:
two torch processes with two threads each on two cores run about 5x slower)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK",
                "GROUP_RANK", "PL_GLOBAL_SEED"):
        env.pop(key, None)  # a fresh process group, a free port picked by Lightning
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def vqgen(*argv: object, cwd: Path | None = None, timeout: float = 240
          ) -> subprocess.CompletedProcess:
    """Run ``vqgen ARGV`` to completion; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "vqgen.pipeline", *map(str, argv)], env=child_env(), cwd=cwd,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def start(*argv: object, log: Path) -> subprocess.Popen:
    """Start ``vqgen ARGV`` in the background, output to ``log``."""
    f = open(log, "w")  # noqa: SIM115 - closed by the caller via the process
    return subprocess.Popen(
        [sys.executable, "-m", "vqgen.pipeline", *map(str, argv)], env=child_env(), stdout=f,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120,
             what: str = "the condition", log: Path | None = None) -> None:
    """Poll ``cond`` every 20 ms while ``proc`` runs; fail if it ends or time runs out first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            text = log.read_text()[-2000:] if log else ""
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}\n{text}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")
