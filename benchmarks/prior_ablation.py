"""Prior ablation at equal wall-clock: held-out bits per code of each training recipe.

Every recipe trains `train-prior` on the same code folder for the same ``--budget`` seconds
(``--max-time`` alone, so the lr schedule ends with the budget), except ``today``: the
defaults before this benchmark existed (PRIOR_DEFAULTS of 48x8, no averaging, no dropout, no
weight decay) with the demo's 9 epochs and its epoch-fixed schedule. One JSON line per
recipe as it finishes, then the summary (recipes by bits per code).

    python benchmarks/prior_ablation.py --codes checkpoints/demo/vqvae/codes --budget 60
    python benchmarks/prior_ablation.py --codes DIR --budget 600 --recipes ema,ema+dropout
    python benchmarks/prior_ablation.py --codes DIR --epochs 14 --recipes today,ema,ema+wd
    python benchmarks/prior_ablation.py --smoke      # tiny codes, 2 s budgets: checks it runs

``--epochs N`` trains every recipe for N epochs instead (what the demo does: its settings
are chosen by epochs, so a demo run is reproducible). Recipes combine with "+": ``budget``
(the defaults alone), ``ema``, ``dropout``, ``wd``,
``wd3`` (0.15), ``lr5`` (5e-3 instead of 3e-3), ``wide`` (64 channels), ``deep`` (12 layers),
or a value: ``wd=0.3``, ``lr=5e-3``, ``dropout=0.1``, ``ema=0.995``, ``hidden=64``,
``layers=12``; e.g. ``ema+wd=0.3+dropout=0.05``. Runs one after
another in this process (one thread each when --threads 1): compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages

TODAY = dict(hidden=48, num_layers=8, kernel_size=3, head_hidden=96, cond_drop=0.1, lr=3e-3)
TODAY_EPOCHS = 9
PARTS = {
    "budget": {},
    "ema": dict(ema_decay=0.998),
    "dropout": dict(dropout=0.1),
    "wd": dict(weight_decay=0.05),
    "wd3": dict(weight_decay=0.15),
    "lr5": dict(lr=5e-3),
    "wide": dict(hidden=64, head_hidden=128),
    "deep": dict(num_layers=12),
}
KEYS = {"wd": "weight_decay", "lr": "lr", "dropout": "dropout", "ema": "ema_decay",
        "hidden": "hidden", "layers": "num_layers"}
DEFAULT_RECIPES = ("today", "budget", "budget+ema", "budget+dropout", "budget+wd",
                   "budget+ema+dropout", "budget+ema+dropout+wd", "budget+ema+dropout+wide",
                   "budget+ema+dropout+deep")


def recipe_args(name: str) -> dict:
    """The model arguments of a recipe name ("budget+ema+wide")."""
    if name == "today":
        return dict(TODAY)
    args = dict(TODAY)
    for part in name.split("+"):
        key, _, value = part.partition("=")
        if value and key in KEYS:  # wd=0.3, lr=5e-3, dropout=0.1, ema=0.995, hidden=64, layers=12
            args[KEYS[key]] = int(value) if KEYS[key] in ("hidden", "num_layers") else float(value)
            continue
        if part not in PARTS:
            raise SystemExit(f"unknown recipe part {part!r}; expected today or "
                             f"{'+'.join(PARTS)} combined with '+'")
        args.update(PARTS[part])
    return args


def run_recipe(name: str, codes: Path, out: Path, budget: float, batch_size: int,
               limit_val: int | None = None, today_epochs: int = TODAY_EPOCHS,
               epochs: int | None = None) -> dict:
    """Train one recipe: under ``budget`` seconds, or for ``epochs`` (an epoch-fixed schedule,
    as the demo trains) when given; ``today`` always runs its own ``today_epochs``."""
    from vqgen.stage2_prior.train import train_prior

    timed = name != "today" and epochs is None
    n_epochs = today_epochs if name == "today" else (epochs or -1)
    trainer = dict(max_epochs=n_epochs, max_time=str(budget) if timed else None,
                   accelerator="cpu", quiet=True, checkpoint_every_minutes=0,
                   limit_val_batches=limit_val)
    t0 = time.perf_counter()
    res = train_prior(codes, out, recipe_args(name), trainer_args=trainer, batch_size=batch_size)
    import torch

    ckpt = torch.load(res.last, weights_only=True)
    return {"recipe": name, "val_bits_per_code": round(res.metrics["val/bits_per_code"], 4),
            "val_nll_uncond": round(res.metrics.get("val/nll_uncond", float("nan")), 4)
            if "val/nll_uncond" in res.metrics else None,
            "steps": int(ckpt["global_step"]), "epochs": int(ckpt["epoch"]) + 1,
            "wall_s": round(time.perf_counter() - t0, 1),
            "schedule": ckpt.get("lr_schedule", {}).get("source")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codes", default="checkpoints/demo/vqvae/codes",
                    help="code folder with train/ and val/ (default: the demo's)")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per recipe (default 60)")
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    ap.add_argument("--epochs", type=int, default=None,
                    help="train every recipe (but today) for this many epochs instead of --budget")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny codes, 2 s budgets")
    args = ap.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    recipes = [r for r in args.recipes.split(",") if r]
    for r in recipes:
        recipe_args(r)  # unknown names fail before anything trains
    with tempfile.TemporaryDirectory(prefix="vqgen_ablation_") as tmp:
        codes = Path(args.codes)
        budget, limit_val = args.budget, None
        if args.smoke:
            from benchmarks._smoke import tiny_demo

            codes = tiny_demo(Path(tmp) / "demo") / "vqvae" / "codes"
            recipes, budget, limit_val = ["today", "budget+ema+dropout"], 2.0, 2
        rows = []
        for r in recipes:
            row = run_recipe(r, codes, Path(tmp) / r.replace("+", "_"), budget, args.batch_size,
                             limit_val, 1 if args.smoke else TODAY_EPOCHS, args.epochs)
            print(json.dumps(row), flush=True)
            rows.append(row)
    rows.sort(key=lambda row: row["val_bits_per_code"])
    summary = {"budget_s": None if args.epochs else budget, "epochs": args.epochs,
               "codes": str(args.codes), "threads": torch.get_num_threads(),
               "best": rows[0]["recipe"], "rows": rows, "smoke": args.smoke}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
