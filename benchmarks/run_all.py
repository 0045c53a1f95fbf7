"""Every benchmark and the evaluation on the embedded data, into one JSON file and a table.

    python benchmarks/run_all.py [--out benchmarks/results] [--skip-50k] [--reuse-demo]
    python benchmarks/run_all.py --smoke    # every step in smoke mode, into a temp folder

Steps, each in its own process (so each has its own peak RSS, read with wait4):

1. the machine's own limit: float32 matmul GFLOP/s (2048^3, best of several);
2. ``benchmarks/stage1.py``: stage-one training / encode speed and held-out quality;
3. ``benchmarks/stage2.py``: ``vqgen demo`` end to end, prior training speed, NLL, sampling;
4. ``vqgen evaluate`` on the demo's two checkpoints: the report's numbers (FD, class
   accuracy, bits/dim, ...), read back from its ``metrics.json``;
5. the encoder's achieved GFLOP/s while encoding (FLOPs counted by
   ``torch.utils.flop_counter``, a fraction of the matmul figure);
6. ``benchmarks/sampling.py`` at 7x7 (cached vs naive PixelCNN sampling);
7. ``benchmarks/encode_folder.py``: 5,000 and 50,000 PNGs encoded streaming (skip with
   ``--skip-50k``).

Writes OUT/results.json (everything) and OUT/results.md (the short table in docs/benchmarks.md),
prints the table and, last, results.json's object on one line. Takes about 15 minutes on 2
CPU cores. Run nothing else meanwhile: the machine is the measuring instrument.

``--smoke`` runs the same steps with the same command lines plus ``--smoke`` (tiny models;
a small matmul; the evaluation through ``evaluate()`` with a one-epoch classifier), writes
OUT (default: a temp folder) and the table, and checks that every script in benchmarks/ is
either one of its steps or in NOT_RUN. The sampling step runs as a child process like in a
real run; the others run in this process (their peak RSS is this process's): a check that
the dispatch works, its numbers measure nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages

# the steps' scripts, and why every other benchmark is not a step
STEP_SCRIPTS = ("stage1", "stage2", "sampling", "encode_folder")
NOT_RUN = {
    "run_all": "this script",
    "cifar": "needs the CIFAR-10 JPEGs (not shipped) and ~35 minutes",
    "codebase": "measures the source tree, not the machine",
    "codec": "run on its own against the demo's checkpoints (writes a plot)",
    "family": "trains three models for minutes each",
    "guidance": "a settings search on a finished demo",
    "hostile_inputs": "counts tracebacks, measures nothing",
    "gpu_check": "for a machine with a CUDA GPU",
    "prior_ablation": "trains the prior once per recipe, a minute or more each",
    "inpaint": "run on its own against the demo's checkpoints",
    "prior_memory": "memory of train-prior at 500,000 maps (minutes)",
    "workers_throughput": "needs the CIFAR-10 JPEGs (not shipped)",
}


def unknown_scripts() -> list[str]:
    """Benchmark scripts that are neither a step nor in NOT_RUN (a new one must be either)."""
    names = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    return sorted(names - set(STEP_SCRIPTS) - set(NOT_RUN))


def run_in_process(cmd: list[str]) -> dict:
    """Smoke mode: ``python benchmarks/NAME.py ARGS``'s ``main(ARGS)`` in this process; the
    same result as :func:`run_child` (wall time, this process's peak RSS, JSON lines)."""
    path = ROOT / cmd[1]
    spec = importlib.util.spec_from_file_location(f"_run_all_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        module.main(cmd[2:])
    lines = [json.loads(x) for x in buf.getvalue().splitlines() if x.startswith("{")]
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "json": lines}


def run_child(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; its wall time, peak RSS (MB) and the JSON lines it printed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "json": lines}


def matmul_gflops(n: int = 2048, repeats: int = 8) -> float:
    """Best float32 GFLOP/s of an n x n x n matmul with torch's default threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def encoder_gflops(vqvae_ckpt: Path, batch: int = 512, repeats: int = 5, limit: int | None = None) -> dict:
    """The encoder's FLOPs per image (counted) and achieved GFLOP/s while encoding mnist5k."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vqgen.stage1_vqvae.data import build_dataset
    from vqgen.stage1_vqvae.lit import load_vqvae

    model = load_vqvae(vqvae_ckpt).model.eval()
    ds = build_dataset("mnist5k", "train", channels=1, image_size=(28, 28))
    images = torch.stack([ds[i][0] for i in range(min(len(ds), limit or len(ds)))])
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model.encode(images[:batch])
        flops_per_image = counter.get_total_flops() / batch
        model.encode(images[:batch])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, len(images), batch):
                model.encode(images[s : s + batch])
            best = min(best, time.perf_counter() - t0)
    per_s = len(images) / best
    return {"encoder_mflops_per_image": round(flops_per_image / 1e6, 2),
            "encode_images_per_s": round(per_s, 1),
            "encoder_gflops": round(flops_per_image * per_s / 1e9, 2),
            "threads": torch.get_num_threads()}


def fmt(v, nd: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def table(r: dict) -> str:
    s1, s2, ev, mach = r["stage1"], r["stage2"], r["evaluate"], r["machine"]
    st1, pr, bound = ev["stage1"], ev.get("stage2") or {}, ev.get("whole_model") or {}
    smp = ev.get("samples") or {}
    ref = smp.get("references") or {}
    cond, unc = smp.get("conditional") or {}, smp.get("unconditional") or {}
    samp = r.get("sampling") or {}
    rows = [
        ("float32 matmul (machine limit)", f"{fmt(mach['matmul_gflops'])} GFLOP/s", ""),
        ("encoder while encoding", f"{fmt(mach['encoder_gflops'])} GFLOP/s "
         f"({fmt(100 * mach['encoder_fraction_of_matmul'])}% of matmul)", ""),
        ("stage-one training", f"{fmt(s1['train_images_per_s'])} images/s", ""),
        ("encode (in memory)", f"{fmt(s1['encode_images_per_s'])} images/s", ">= 3,500"),
        ("stage-one held-out PSNR / SSIM (benchmark run)",
         f"{fmt(s1['val_psnr_db'], 2)} dB / {fmt(s1.get('val_ssim'), 3)}", ">= 26 dB"),
        ("codebook usage / perplexity", f"{fmt(100 * s1['codebook_usage'])}% / "
         f"{fmt(s1['perplexity'])}", ">= 90%"),
        ("`vqgen demo` end to end", f"{fmt(s2['demo_wall_s'])} s", "<= 300 s"),
        ("prior training", f"{fmt(s2['prior_train_maps_per_s'])} code maps/s", ""),
        ("prior held-out NLL", f"{fmt(pr.get('bits_per_code'), 3)} bits/code "
         f"(unigram {fmt(pr.get('baselines', {}).get('unigram_heldout_cross_entropy_bits_per_code'), 2)}"
         f", uniform {fmt(pr.get('baselines', {}).get('uniform_bits_per_code'), 0)})",
         "<= 0.40 x unigram"),
        ("bits/dim bound (whole model)", f"{fmt(bound.get('bits_per_dim'), 3)}", ""),
        ("demo VQ-VAE held-out PSNR / SSIM", f"{fmt(st1.get('psnr_db'), 2)} dB / "
         f"{fmt(st1.get('ssim'), 3)}", ""),
        ("sampling, prior + decode, batch 64", f"{fmt(s2['sample_images_per_s'])} images/s", ""),
        ("cached vs naive sampling, 7x7 batch 64", f"{fmt(samp.get('naive_over_cached'))}x faster; "
         f"{fmt(samp.get('cached_over_forward'), 2)} forward passes", ">= 15x; <= 3"),
        ("classifier held-out accuracy", f"{fmt(pct(ref.get('classifier_heldout_accuracy')))}%", ""),
        ("FD: real / blurred real / class-conditional / unconditional",
         f"{fmt(ref.get('fd_real_vs_real'), 2)} / {fmt(ref.get('fd_blurred_vs_real'), 2)} / "
         f"{fmt(cond.get('fd'), 2)} / {fmt(unc.get('fd'), 2)}", "cond. < blurred"),
        ("class accuracy of class-conditional samples",
         f"{fmt(pct(cond.get('class_accuracy')))}%",
         ">= 95%"),
        ("predicted-class entropy, unconditional samples",
         f"{fmt(unc.get('class_entropy_fraction_of_log_k'), 3)} of log K", ""),
    ]
    if r.get("encode_folder"):
        big = r["encode_folder"]["sizes"][-1]
        small = r["encode_folder"]["sizes"][0]
        rows.append((f"encode {big['images']:,} PNGs (streaming)",
                     f"{fmt(r['encode_folder']['marginal_images_per_s'])} images/s; peak RSS "
                     f"{fmt(big['peak_rss_mb'], 0)} MB ({small['images']:,}: "
                     f"{fmt(small['peak_rss_mb'], 0)} MB)", "flat memory"))
    rss = ", ".join(f"{k} {fmt(v['peak_rss_mb'], 0)}" for k, v in r["steps"].items())
    rows.append(("peak RSS per step (MB)", rss, ""))
    lines = ["| measure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default benchmarks/results (smoke: a temp folder)")
    ap.add_argument("--skip-50k", action="store_true", help="skip the 50,000-PNG encode")
    ap.add_argument("--reuse-demo", action="store_true",
                    help="measure an existing OUT/demo instead of running the demo again")
    ap.add_argument("--smoke", action="store_true", help="every step in smoke mode: checks the dispatch")
    args = ap.parse_args(argv)
    unknown = unknown_scripts()
    if unknown:
        raise SystemExit(f"benchmarks/ holds {', '.join(unknown)}, neither a step of run_all nor in "
                         "its NOT_RUN; add it to one")
    with tempfile.TemporaryDirectory(prefix="vqgen_run_all_") as tmp:
        out = (ROOT / (args.out or (tmp if args.smoke else "benchmarks/results"))).resolve()
        return run_all(args, out)


def run_all(args: argparse.Namespace, out: Path) -> dict:
    """Every step, results.json, results.md; prints the table, then the results on one line."""
    smoke = args.smoke
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    t_all = time.perf_counter()
    steps: dict[str, dict] = {}
    results: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "python": platform.python_version(), "cpu_count": os.cpu_count(),
                     "smoke": smoke}

    def step(name: str, cmd: list[str]) -> dict:
        if smoke:
            cmd = [*cmd, "--smoke"]
        print(f"[run_all] {name}: {' '.join(cmd[1:])}", flush=True)
        if smoke and name != "sampling":  # one real child (the cheapest step) in smoke mode
            steps[name] = run_in_process(cmd)
        else:
            steps[name] = run_child(cmd, out / f"{name}.log")
        print(f"[run_all] {name}: {steps[name]['wall_s']} s, peak RSS "
              f"{steps[name]['peak_rss_mb']} MB", flush=True)
        return steps[name]

    import torch

    gflops = matmul_gflops(256, repeats=1) if smoke else matmul_gflops()
    results["machine"] = {"matmul_gflops": round(gflops, 1),
                          "torch": torch.__version__, "threads": torch.get_num_threads()}
    results["stage1"] = step("stage1", [py, "benchmarks/stage1.py", "--out", str(out / "stage1")])[
        "json"][-1]
    demo = out / "demo"
    results["stage2"] = step("stage2", [py, "benchmarks/stage2.py", "--out", str(demo),
                                        *(["--reuse"] if args.reuse_demo else [])])["json"][-1]
    evaluate_argv = ["evaluate", "--vqvae", str(demo / "vqvae/last.ckpt"),
                     "--prior", str(demo / "prior/last.ckpt"), "--data", "mnist5k",
                     "--out", str(out / "report"), "--overwrite",
                     "--classifier-cache", str(out / "classifier_cache")]
    if smoke:
        steps["evaluate"] = smoke_evaluate(evaluate_argv)
    else:
        step("evaluate", [py, "-m", "vqgen.pipeline", *evaluate_argv])
    results["evaluate"] = json.loads((out / "report" / "metrics.json").read_text())
    enc = encoder_gflops(demo / "vqvae" / "last.ckpt", **(dict(repeats=1, limit=512) if smoke else {}))
    results["machine"].update(encoder_gflops=enc["encoder_gflops"],
                              encoder_mflops_per_image=enc["encoder_mflops_per_image"],
                              encoder_fraction_of_matmul=round(
                                  enc["encoder_gflops"] / results["machine"]["matmul_gflops"], 4))
    samp = step("sampling", [py, "benchmarks/sampling.py", "--grids", "7x7", "--batches", "1,64"])
    results["sampling_rows"] = samp["json"]
    results["sampling"] = next((x for x in samp["json"] if x.get("batch") == 64), None)
    if not args.skip_50k:
        results["encode_folder"] = step("encode_folder", [py, "benchmarks/encode_folder.py"])[
            "json"][-1]
    results["steps"] = steps
    results["not_run"] = NOT_RUN
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    for s in steps.values():
        s.pop("json", None)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    (out / "results.md").write_text(md)
    print(md)
    print(f"[run_all] wrote {out / 'results.json'} and {out / 'results.md'} "
          f"in {results['wall_s']} s", flush=True)
    print(json.dumps(results), flush=True)
    return results


def smoke_evaluate(argv: list[str]) -> dict:
    """Smoke mode's evaluate step: ``vqgen evaluate ARGV``'s call of ``evaluate()`` in this
    process, with 20 samples, a one-epoch classifier and three noise levels."""
    from benchmarks._smoke import FAST_SIGMAS, tiny_classifier_config
    from vqgen.pipeline.cli import build_parser
    from vqgen.pipeline.evaluation.evaluate import evaluate

    a = build_parser().parse_args(argv)  # the verb's own parser reads the step's command line
    t0 = time.perf_counter()
    evaluate(a.vqvae, a.prior, a.data, a.out, overwrite=a.overwrite, classifier_cache=a.classifier_cache,
             num_samples=20, device="cpu", classifier_config=tiny_classifier_config(),
             sigmas=FAST_SIGMAS, log=lambda s: None)
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


if __name__ == "__main__":
    main()
