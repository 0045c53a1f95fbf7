"""Helpers every CLI verb module shares: argument types, common flag groups, output checks.

No torch at import time: building the parser must stay fast (``vqgen --help``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from vqgen.pipeline.defaults import EXAMPLES
from vqgen.stage1_vqvae.runtime.devices import resolve_device  # noqa: F401 - the verbs' import
from vqgen.stage1_vqvae.runtime.errors import UserError


class UsageError(UserError):
    """A bad flag value found after parsing."""


def image_size_arg(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW, e.g. 28 or 32x48") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW with positive sizes")
    return parts[0], parts[1]


def _number_arg(cast: Callable[[str], float], ok: Callable[[float], bool], expected: str):
    """An argparse type: ``cast(text)``, then ``ok(value)``; either failing gives one line
    naming the text and what was expected."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text!r} must be {expected}")
        return v
    return parse


positive_int = _number_arg(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number_arg(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_arg(float, lambda v: 0 < v < float("inf"), "a finite number > 0")
non_negative_float = _number_arg(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")
unit_float = _number_arg(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")  # a decay, a probability


def workers_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or an integer >= 0") from None


WORKERS_HELP = ("DataLoader worker processes: auto (default) = min(CPUs per device - 1, 8) for "
                "image folders, whose files are decoded per item, and 0 for in-memory or "
                "memory-mapped sets (mnist5k, torchvision sets, code maps); or a number")


def add_workers_arg(g) -> None:
    g.add_argument("--num-workers", type=workers_arg, default="auto", help=WORKERS_HELP)


def seed_arg(text: str) -> int:
    from vqgen.stage1_vqvae.runtime.seeds import check_seed

    try:
        return check_seed(text, "")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None


def devices_arg(text: str) -> int | str:
    return int(text) if text.isdigit() else text




def add_verb(subs, name: str, help_text: str) -> argparse.ArgumentParser:
    return subs.add_parser(
        name, help=help_text, description=help_text,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_data_args(p: argparse.ArgumentParser, default: str | None = "mnist5k") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default,
                   help="mnist5k (embedded), mnist, fashion-mnist, cifar10 or folder:PATH"
                   + (f" (default {default})" if default else " (default: the checkpoint's)"))
    g.add_argument("--data-root", default="data",
                   help="where torchvision data sets live (default ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download (needs internet)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="held-out fraction for mnist5k and folders (default 0.1; with --vqvae: "
                   "the checkpoint's)")
    add_workers_arg(g)


def add_trainer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--max-epochs", type=positive_int, default=None,
                   help="epochs (default: from the preset; with --max-time alone, as many as fit)")
    g.add_argument("--max-steps", type=int, default=-1,
                   help="stop after this many steps (default -1: no limit)")
    g.add_argument("--max-time", default=None,
                   help="stop after DD:HH:MM:SS or N seconds; the lr schedule ends with the budget")
    g.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps (default auto)")
    g.add_argument("--devices", type=devices_arg, default="auto", help="device count or ids")
    g.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    g.add_argument("--num-nodes", type=positive_int, default=1)
    g.add_argument("--precision", default="32-true", help="e.g. 32-true, 16-mixed, bf16-mixed")
    g.add_argument("--seed", type=seed_arg, default=0)
    g.add_argument("--resume", action="store_true", help="continue the run in --out from last.ckpt")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    g.add_argument("--limit-train-batches", type=float, default=None,
                   help="batches per epoch (int) or fraction (for smoke tests)")
    g.add_argument("--limit-val-batches", type=float, default=None)
    g.add_argument("--checkpoint-every-steps", type=non_negative_int, default=0,
                   help="also rewrite last.ckpt every N optimizer steps mid-epoch (0 = off)")
    g.add_argument("--checkpoint-every-minutes", type=non_negative_float, default=10.0,
                   help="also rewrite last.ckpt every M minutes of training (default 10; 0 = off)")


def limit_arg(v: float | None) -> int | float | None:
    if v is None:
        return None
    return int(v) if v >= 1 else v


def check_precision(value: str) -> str:
    """Lightning's own check of a ``--precision`` value, run before any output is made, so
    a bad value is its one-line error (exit 2), not a traceback after the run folder exists."""
    from lightning_fabric.connector import _convert_precision_to_unified_args

    try:
        _convert_precision_to_unified_args(value)
    except ValueError as e:
        raise UsageError(f"--precision: {e}") from None
    return value


def trainer_kwargs(args: argparse.Namespace, max_epochs: int) -> dict:
    """Trainer settings from the flags; refuses settings that would train nothing."""
    if args.max_steps == 0 or args.max_steps < -1:
        what = "would train nothing" if args.max_steps == 0 else "is not a step count"
        raise UsageError(f"--max-steps {args.max_steps} {what}; pass a positive number of "
                         "steps (or -1, the default, for no limit)")
    for flag, v in (("--limit-train-batches", args.limit_train_batches),
                    ("--limit-val-batches", args.limit_val_batches)):
        if v is not None and not 0 < v < float("inf"):
            raise UsageError(f"{flag} {v:g} would {'train' if 'train' in flag else 'validate'} "
                             "on nothing; pass a batch count >= 1 or a fraction in (0, 1]")
        if v is not None and v > 1 and v != int(v):
            raise UsageError(f"{flag} {v:g}: pass a whole batch count >= 1 or a fraction in (0, 1]")
    check_precision(args.precision)
    return dict(
        # --max-time alone: the budget bounds the run (and its lr schedule), not the preset's epochs
        max_epochs=args.max_epochs or (-1 if args.max_time else max_epochs), max_steps=args.max_steps,
        max_time=args.max_time, accelerator=args.accelerator, devices=args.devices,
        strategy=args.strategy, num_nodes=args.num_nodes, precision=args.precision,
        limit_train_batches=limit_arg(args.limit_train_batches),
        limit_val_batches=limit_arg(args.limit_val_batches),
        checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_minutes=args.checkpoint_every_minutes,
    )


def print_metrics(metrics: dict[str, float], keys: Sequence[str]) -> None:
    shown = [f"{k} {metrics[k]:.4g}" for k in keys if k in metrics]
    if shown:
        print("final: " + ", ".join(shown))


def check_new_file(path: Path, overwrite: bool, inputs: Sequence[tuple[str, object]] = ()) -> None:
    """A single output file (``--out x.png``): never an input, writable, and an existing one
    only with ``--overwrite`` (the file is the verb's whole output)."""
    from vqgen.stage1_vqvae.runtime.outputs import check_output_file

    if path.suffix.lower() != ".png" and not path.is_dir():
        raise UsageError(f"--out {path}: expected a .png file name")
    check_output_file(path, overwrite=overwrite, inputs=inputs)


def claim_out_dir(path: Path, *, verb: str, overwrite: bool, manifest: str,
                  writes: Callable[[str], bool],
                  inputs: Sequence[tuple[str, object]] = ()) -> None:
    """The one output-folder policy (see :mod:`stage1_vqvae.runtime.outputs`) for a verb
    whose files are listed in ``path/manifest``."""
    from vqgen.stage1_vqvae.runtime.outputs import claim_output_dir, manifest_files

    owned = manifest_files(path, manifest) if path.is_dir() else set()
    claim_output_dir(path, verb=verb, overwrite=overwrite, owned=owned, writes=writes,
                     inputs=inputs)


def data_inputs(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The input folder behind ``--data folder:PATH`` (an --out may not lie in it)."""
    data = getattr(args, "data", None)
    if isinstance(data, str) and data.startswith("folder:") and data[len("folder:"):].strip():
        return [("--data", data[len("folder:"):])]
    return []


def dataset_for(lit, args: argparse.Namespace, split: str):
    """The split's dataset, transformed the way the checkpoint was trained (``--data``,
    ``--data-root``, ``--download``, ``--val-fraction`` override it)."""
    from vqgen.stage1_vqvae.lit import trained_dataset

    return trained_dataset(lit, split, data=args.data, data_root=args.data_root,
                           download=args.download, val_fraction=args.val_fraction)
