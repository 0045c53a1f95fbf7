"""``vqgen demo``: the README's main job (the work itself is in :mod:`pipeline.demo`)."""

from __future__ import annotations

import argparse

from vqgen.pipeline.cli.common import (
    add_verb,
    positive_int,
    seed_arg,
)


def add_demo(subs) -> None:
    p = add_verb(subs, "demo", "Train both stages on embedded MNIST-5k and sample a per-class grid "
             "(CPU-sized; re-running reuses finished stages and resumes unfinished ones).")
    p.add_argument("--out", default="checkpoints/demo")
    p.add_argument("--vqvae-epochs", type=positive_int, default=None)
    p.add_argument("--prior-epochs", type=positive_int, default=None)
    p.add_argument("--per-class", type=positive_int, default=10)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from vqgen.pipeline.demo import run_demo

    run_demo(args)
    return 0
