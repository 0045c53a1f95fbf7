"""Run the hostile and careless inputs of issue 12 through ``vqgen`` and count tracebacks.

Each case is one in-process ``pipeline.cli.main(argv)`` call on tiny models trained first
(a few seconds on a CPU). Prints JSON ``{case: {"exit", "traceback", "message"}}`` plus a
``"_summary"`` with the number of cases that ended in a traceback (target 0) and of
cases whose check on disk failed (unrelated files changed, an input deleted, ...).

    OMP_NUM_THREADS=1 python benchmarks/hostile_inputs.py [--skip-dangerous]
    OMP_NUM_THREADS=1 python benchmarks/hostile_inputs.py --smoke

The whole run takes a few seconds, so ``--smoke`` runs every case too (it only marks the
JSON as a smoke run). ``--skip-dangerous`` skips the cases that exhaust memory on a vqgen
without the checks (to measure an old version: ``VQGEN_ROOT=/old/checkout``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, os.environ.get("VQGEN_ROOT", str(Path(__file__).resolve().parents[1])))

from PIL import Image  # noqa: E402

from vqgen.pipeline.cli import main as cli_main  # noqa: E402

TINY_VQ = ["--hidden", "16", "--res-hidden", "8", "--num-res", "1", "--code-dim", "8",
           "--num-codes", "32", "--limit-train-batches", "3", "--limit-val-batches", "1",
           "--batch-size", "32", "--accelerator", "cpu", "--device", "cpu", "--max-epochs", "1"]
TINY_PRIOR = ["--hidden", "8", "--num-layers", "2", "--head-hidden", "16", "--max-epochs", "1",
              "--limit-train-batches", "2", "--accelerator", "cpu"]


# cases that exhaust memory on a vqgen without the checks (for measuring the old version:
# pass --skip-dangerous)
DANGEROUS = ("meta.json num_codes 1e9", "--image-size 100000", "sample --num 1000000000",
             "checkpoint with num_layers=1000000", "--kernel-size 10001")


def images(root: Path, classes: list[str], n: int = 5, ext: str = ".png") -> Path:
    """n 28x28 grey noise images per class under root/<class>/ (seeded; as tests/test_reliability)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / c / f"{c}{i}{ext}")
    return root


def call(argv: list[str]) -> dict:
    """Run main(argv); exit code, whether a traceback escaped, the last stderr line."""
    err = io.StringIO()
    tb = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli_main([str(a) for a in argv])
        except SystemExit as e:
            rc = int(e.code or 0)
        except BaseException:  # noqa: BLE001 - what we count
            traceback.print_exc(file=err)
            rc, tb = 1, True
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    tb = tb or "Traceback" in err.getvalue()
    return {"exit": rc, "traceback": tb, "message": (lines[-1] if lines else "")[:300]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-dangerous", action="store_true",
                    help="skip the cases that allocate without bound in old versions")
    ap.add_argument("--smoke", action="store_true", help="the same run (it is already small)")
    args = ap.parse_args(argv)
    results = main_bench(skip_dangerous=args.skip_dangerous)
    results["_summary"]["smoke"] = args.smoke
    print(json.dumps(results, indent=2))
    return results


def main_bench(skip_dangerous: bool = False) -> dict:
    ws = Path(tempfile.mkdtemp(prefix="vqgen-hostile-"))
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        return run_cases(ws, skip_dangerous)
    finally:
        os.chdir(cwd)
        shutil.rmtree(ws, ignore_errors=True)


def run_cases(ws: Path, skip_dangerous: bool = False) -> dict:
    vq, prior = ws / "vq", ws / "prior"
    assert call(["train-vqvae", "--out", vq, *TINY_VQ])["exit"] == 0
    assert call(["train-prior", "--codes", vq / "codes", "--out", prior, *TINY_PRIOR])["exit"] == 0
    vck, pck = vq / "last.ckpt", prior / "last.ckpt"
    results: dict[str, dict] = {}
    disk_failures: list[str] = []

    def case(name: str, argv: list, check: Callable[[], bool] | None = None) -> None:
        if skip_dangerous and name in DANGEROUS:
            results[name] = {"skipped": "allocates without bound in old versions"}
            return
        results[name] = call(argv)
        try:
            ok = check is None or bool(check())
        except Exception:  # noqa: BLE001 - a file the check reads is gone: that is the failure
            ok = False
        if not ok:
            results[name]["disk_check"] = "FAILED"
            disk_failures.append(name)

    # --- silently wrong results
    loop = images(ws / "loop", ["a", "b"], n=6)
    (loop / "a" / "again").symlink_to(".")
    case("symlink loop in a class folder",
         ["encode", "--vqvae", vck, "--data", f"folder:{loop}", "--device", "cpu",
          "--val-fraction", "0.25", "--out", ws / "loopcodes"],
         lambda: len(np.load(ws / "loopcodes" / "train" / "codes.npy"))
         + len(np.load(ws / "loopcodes" / "val" / "codes.npy")) == 12)
    selfl = images(ws / "self", ["a", "b"], n=6)
    (selfl / "a" / "me.png").symlink_to("me.png")
    case("symlink to itself in a data folder",
         ["encode", "--vqvae", vck, "--data", f"folder:{selfl}", "--device", "cpu",
          "--val-fraction", "0.25", "--out", ws / "selfcodes"])
    gifs = images(ws / "gifs", ["a", "b"], n=6, ext=".gif")
    case("gif images", ["encode", "--vqvae", vck, "--data", f"folder:{gifs}", "--device", "cpu",
                        "--val-fraction", "0.25", "--out", ws / "gifcodes"],
         lambda: (ws / "gifcodes" / "train" / "meta.json").exists())
    case("--class 10 (not a class name)", ["sample", "--prior", pck, "--class", "10",
                                              "--num", "2", "--device", "cpu", "--out",
                                              ws / "c10"])
    other = ws / "other.ckpt"
    import torch

    ck = torch.load(vck, weights_only=True)
    ck["state_dict"] = {k: v + 0.5 if k.startswith("model.decoder") and v.is_floating_point()
                        else v for k, v in ck["state_dict"].items()}
    torch.save(ck, other)
    case("another VQ-VAE with the same num_codes",
         ["sample", "--prior", pck, "--vqvae", other, "--num", "2", "--device", "cpu", "--out",
          ws / "othervq"], lambda: not (ws / "othervq").exists())
    for flag in ("--max-steps", "--limit-train-batches"):
        for verb, extra in (("train-prior", ["--codes", vq / "codes"]), ("train-vqvae", [])):
            out = ws / f"zero{flag}{verb}"
            base = TINY_PRIOR if verb == "train-prior" else TINY_VQ
            case(f"{verb} {flag} 0", [verb, *extra, "--out", out, *base, flag, "0"],
                 lambda out=out: not out.exists())
    case("--per-class with --num", ["sample", "--prior", pck, "--per-class", "2", "--num", "5",
                                    "--device", "cpu", "--out", ws / "pc"])
    empty_val = ws / "emptyval"
    shutil.copytree(vq / "codes", empty_val)
    from vqgen.stage1_vqvae.codes import read_code_maps, write_code_maps

    m = read_code_maps(empty_val / "val")
    meta = dict(m.meta)
    shutil.rmtree(empty_val / "val")
    write_code_maps(empty_val / "val", np.zeros((0, 7, 7), np.int64), np.zeros(0, np.int64),
                    num_codes=32, meta={**meta, "count": 0})
    case("train-prior with an empty val split",
         ["train-prior", "--codes", empty_val, "--out", ws / "ev", *TINY_PRIOR])
    case("--beta -1", ["train-vqvae", "--out", ws / "b", *TINY_VQ, "--beta", "-1"])
    case("--decay 2", ["train-vqvae", "--out", ws / "d", *TINY_VQ, "--decay", "2"])
    # --- tracebacks
    case("--device cuda without CUDA" if not torch.cuda.is_available() else "--device cuda:99",
         ["sample", "--prior", pck, "--num", "2", "--device",
          "cuda" if not torch.cuda.is_available() else "cuda:99", "--out", ws / "dc"])
    case("--device nonsense", ["sample", "--prior", pck, "--num", "2", "--device", "nonsense",
                               "--out", ws / "dn"])
    ro = ws / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    case("--out in a read-only folder", ["sample", "--prior", pck, "--num", "2", "--device",
                                         "cpu", "--out", ro / "s"])
    case("--out under /sys", ["sample", "--prior", pck, "--num", "2", "--device", "cpu",
                              "--out", "/sys/vqgen-samples"])
    case("--out under an existing file", ["sample", "--prior", pck, "--num", "2", "--device",
                                          "cpu", "--out", pck / "s"])
    empty_codes = ws / "empty_codes"
    write_code_maps(empty_codes, np.zeros((0, 7, 7), np.int64), None, num_codes=32)
    case("decode of an empty code map", ["decode", "--vqvae", vck, "--codes", empty_codes,
                                         "--device", "cpu", "--out", ws / "de"])
    for name, change in (("num_codes null", {"num_codes": None}),
                         ("format_version list", {"format_version": [1]}),
                         ("num_codes 1e9", {"num_codes": 1000000000}),
                         ("num_classes > class_names", {"num_classes": 12})):
        bad = ws / f"meta-{len(results)}"
        shutil.copytree(vq / "codes", bad)
        for split in ("train", "val"):
            p = bad / split / "meta.json"
            p.write_text(json.dumps({**json.loads(p.read_text()), **change}))
        case(f"meta.json {name}", ["train-prior", "--codes", bad, "--out", ws / f"p{len(results)}",
                                   *TINY_PRIOR])
    case("--image-size 100000", ["train-vqvae", "--out", ws / "big", *TINY_VQ, "--image-size",
                                 "100000", "--downsample", "4"])
    case("sample --num 1000000000", ["sample", "--prior", pck, "--num", "1000000000",
                                     "--device", "cpu", "--out", ws / "many"])
    hostile = torch.load(pck, weights_only=True)
    hostile["hyper_parameters"]["num_layers"] = 1000000
    torch.save(hostile, ws / "hostile.ckpt")
    case("checkpoint with num_layers=1000000", ["sample", "--prior", ws / "hostile.ckpt",
                                                "--num", "2", "--device", "cpu", "--out",
                                                ws / "h"])
    case("--seed 2**70", ["sample", "--prior", pck, "--num", "2", "--seed", str(2**70),
                          "--device", "cpu", "--out", ws / "seed"])
    case("train --seed 2**70", ["train-vqvae", "--out", ws / "seedt", *TINY_VQ, "--seed",
                                str(2**70)])
    # --- similar cases the issue does not name
    case("encode --out holding the VQ-VAE --overwrite",
         ["encode", "--vqvae", vck, "--device", "cpu", "--out", vq, "--overwrite"],
         lambda: vck.exists())
    case("reconstruct --out inside the data folder",
         ["reconstruct", "--vqvae", vck, "--data", f"folder:{gifs}", "--device", "cpu",
          "--out", gifs / "a" / "x.png"], lambda: not (gifs / "a" / "x.png").exists())
    case("--limit-val-batches 0", ["train-vqvae", "--out", ws / "lv", *TINY_VQ,
                                   "--limit-val-batches", "0"])
    case("--class #99", ["sample", "--prior", pck, "--class", "#99", "--num", "2",
                         "--device", "cpu", "--out", ws / "c99"])
    case("--max-steps -5", ["train-prior", "--codes", vq / "codes", "--out", ws / "ms5",
                            *TINY_PRIOR, "--max-steps", "-5"])
    case("--num-workers -1", ["train-prior", "--codes", vq / "codes", "--out", ws / "nw",
                              *TINY_PRIOR, "--num-workers", "-1"])
    case("--kernel-size 10001", ["train-prior", "--codes", vq / "codes", "--out", ws / "ks",
                                 *TINY_PRIOR, "--kernel-size", "10001"])
    ro.chmod(0o755)
    # data loss last: on an old vqgen these cases delete the inputs of the others
    unrelated = ws / "u"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("precious")
    case("sample --overwrite into a folder of other files",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", unrelated,
          "--overwrite"], lambda: (unrelated / "thesis.tex").read_text() == "precious")
    case("decode --overwrite into a folder of other files",
         ["decode", "--vqvae", vck, "--codes", vq / "codes" / "val", "--limit", "2", "--device",
          "cpu", "--out", unrelated, "--overwrite"],
         lambda: (unrelated / "thesis.tex").read_text() == "precious")
    case("sample --out the prior's run --overwrite",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", prior,
          "--overwrite"], lambda: pck.exists() and (prior / "logs").exists())
    case("decode --codes C/val --out C/val --overwrite",
         ["decode", "--vqvae", vck, "--codes", vq / "codes" / "val", "--device", "cpu",
          "--out", vq / "codes" / "val", "--overwrite"],
         lambda: (vq / "codes" / "val" / "meta.json").exists())
    case("train-prior --out the VQ-VAE run --overwrite",
         ["train-prior", "--codes", vq / "codes", "--out", vq, "--overwrite", *TINY_PRIOR],
         lambda: vck.exists() and (vq / "codes" / "train" / "meta.json").exists())
    n_tb = sum(bool(r.get("traceback")) for r in results.values())
    results["_summary"] = {"cases": len(results), "tracebacks": n_tb,
                           "disk_check_failures": disk_failures}
    return results


if __name__ == "__main__":
    main()
