"""Every script in benchmarks/ runs, in its ``--smoke`` mode, inside the suite.

Each script is found by glob (``benchmarks/*.py``; ``_*.py`` are their shared helpers), loaded
by path and run in this process as ``main(["--smoke"])`` with stdout captured. The convention
every script follows: ``main(argv)`` returns the result it printed, and that result is the
last JSON object on stdout (one line, or indented over several, and nothing after it);
earlier lines may be progress or per-row JSON lines. Smoke mode means tiny models, a handful
of images and one small iteration of the real measuring code, in temp folders: nothing is
written into the repository, no data from outside it is needed. A new script needs a smoke
mode and an entry in CHECKS below, or its test fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
# where a benchmark run for real writes inside the checkout: smoke mode must leave them alone
WATCHED = ("benchmarks", "checkpoints", "data")


def last_json(text: str) -> dict:
    """The last JSON object printed: from the last line opening with "{" that parses to the end."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads("\n".join(lines[i:]))
                if isinstance(obj, dict):
                    return obj
    raise AssertionError(f"no JSON object ends the output:\n{text[-2000:]}")


def json_lines(text: str) -> list[dict]:
    """Every line that is a JSON object on its own (per-row output)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def numbers(obj) -> list[float]:
    """Every int / float in a JSON value (bools excluded)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def positive(*values) -> None:
    for v in values:
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, v


def fraction(*values) -> None:
    for v in values:
        assert isinstance(v, (int, float)) and 0 <= v <= 1, v


def snapshot() -> set[tuple[str, float]]:
    """(path, mtime) of every file under the watched folders, and the checkout's top level."""
    seen = {(p.name, 0.0) for p in ROOT.iterdir()}
    for d in WATCHED:
        for p in (ROOT / d).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                seen.add((str(p.relative_to(ROOT)), p.stat().st_mtime))
    return seen


# ----------------------------------------------------------------- what each script reports


def check_cifar(r: dict, text: str) -> None:
    assert set(r["wall_s"]) == {"train_vqvae_and_encode", "train_prior", "evaluate"}
    assert any(ln.startswith("inferred:") for ln in r["inferred"]), r["inferred"]
    assert r["prior_log_tail"] and r["vq_final"]
    positive(r["heldout_psnr_db"], r["bits_per_code"], r["unigram_bits_per_code"])
    fraction(r["codebook_usage"], r["heldout_ssim"], r["samples_conditional"]["class_accuracy"])
    assert r["uniform_bits_per_code"] == pytest.approx(5.0)  # the tiny codebook: K = 32
    assert r["samples_conditional"]["num"] == 20 and r["samples_conditional"]["fd"] >= 0
    assert isinstance(r["psnr_target_met"], bool) and r["references"]["num_eval_images"] > 0


def check_codebase(r: dict, text: str) -> None:
    assert len(r["largest"]) == 10 and all(x["lines"] > 0 for x in r["largest"])
    assert r["modules"] > 20 and r["source_lines"] > 1000
    assert r["num_cycles"] == len(r["cycles"])
    assert all(" -> " in e for e in r["edges_stage2_to_stage1"])


def check_codec(r: dict, text: str) -> None:
    assert r["images"] == 8
    positive(r["bits_per_image"], r["ideal_bits_per_image"], r["overhead"], r["psnr_db"],
             r["compress_images_per_s"], r["decompress_images_per_s"])
    assert set(r["baselines"]) == {"png", "webp_lossless", "jpeg", "webp"}
    for b in r["baselines"].values():
        positive(b["bits_per_image"], b["psnr_db"])
    assert set(r["speed"]) == {"batch_1", "batch_64"}
    assert set(r["bits_per_image_by_stream"]) == {"image", "batch", "all"}
    assert [p["quality"] for p in r["curves"]["jpeg"]][:3] == [1, 2, 3]
    assert not Path(r["plot"]).is_relative_to(ROOT)


def check_encode_folder(r: dict, text: str) -> None:
    assert [s["images"] for s in r["sizes"]] == [100, 200]
    for s in r["sizes"]:
        positive(s["wall_s"], s["peak_rss_mb"], s["images_per_s"])
    assert r["marginal_images_per_s"] is None or r["marginal_images_per_s"] > 0


def check_family(r: dict, text: str) -> None:
    assert set(r["models"]) == {"vq", "vqgan", "vae"}
    for name, m in r["models"].items():
        positive(m["psnr_db"], m["train_images_per_s"], m["bits_per_dim"])
        assert m["steps"] == 5, (name, m["steps"])
    for name in ("vq", "vqgan"):  # --prior-budget: a prior on each VQ model's codes, scored
        samples = r["models"][name]["samples"]
        assert samples["prior"]["steps"] > 0 and samples["conditional"]["fd"] >= 0
    assert set(r["vqgan_vs_vqvae"]) >= {"rfd_change", "psnr_difference_db", "train_speed_ratio"}
    assert set(r["vae_vs_vqvae"]) >= {"bits_per_dim", "psnr_db", "sample_fd"}


def check_gpu_check(r: dict, text: str) -> None:
    # smoke runs the checks on the CPU (the GPU machine runs them for real)
    assert r["gpu"] is False and r["device"] == "cpu" and r["cuda_tests"] == {"skipped": "smoke"}
    assert r["sync_free_steps"] == {"vqvae": "ok", "prior": "ok"}
    assert r["bf16"]["train_codes_checked"] > 0 and r["bf16"]["train_codes_not_nearest"] == 0
    fraction(r["bf16"]["eval_bf16_vs_f32_code_disagreement"])
    assert set(r["throughput"]) == {"train_vqvae_images_per_s", "train_prior_images_per_s",
                                    "sample_grids_per_s_batch1", "sample_grids_per_s_batch8"}
    positive(*r["throughput"].values())


def check_guidance(r: dict, text: str) -> None:
    assert [(g["guidance"], g["temperature"]) for g in r["grid"]] == [(1.0, 1.0), (2.0, 1.0)]
    for g in r["grid"]:
        fraction(g["class_accuracy"], g["precision"], g["recall"])
        assert g["fd"] >= 0
    assert json_lines(text)[:-1] == r["grid"]  # one line per setting, then the whole grid
    assert r["num_per_setting"] == 10 and r["num_eval"] > 0
    fraction(r["classifier_heldout_accuracy"])


def check_hostile_inputs(r: dict, text: str) -> None:
    summary = r.pop("_summary")
    kinds = ("data_loss", "silent_wrong", "traceback", "memory")
    assert summary["cases"] == len(r) >= 70
    assert summary["tracebacks"] == sum(bool(c.get("traceback")) for c in r.values())
    assert set(summary["defects"]) == set(kinds)
    for kind in kinds:
        assert summary["defects"][kind] == sum(kind in c["defect"] for c in r.values())
        assert summary["cases_per_kind"][kind] >= 10
    for name, case in r.items():
        assert set(case) >= {"exit", "traceback", "message", "kind", "defect", "seconds",
                             "peak_rss_mb", "rss_growth_mb"}, name
        positive(case["peak_rss_mb"])
    race = next(c for n, c in r.items() if n.startswith("two sample runs on one new --out"))
    assert race["races"] == 2 and all(sorted(e) == ["0", "2"] for e in race["exits"])
    # this checkout has none of the defects the cases probe
    assert summary["defective_cases"] == [], summary["defective_cases"]


def check_inpaint(r: dict, text: str) -> None:
    assert r["num_images"] == 8 and r["candidates"] == 2
    assert set(r["inpaint_class_acc"]) == {"bottom_half", "top_half", "left_half", "centre_14x14"}
    for runs in r["inpaint_class_acc"].values():
        fraction(*runs.values())
        assert {"prefix", "importance", "importance_null_class", "prefix_true_class"} <= set(runs)
    assert "exact_class_posterior" in r["inpaint_class_acc"]["bottom_half"]
    for bits in r["inpaint_bits"].values():
        positive(*bits.values())
    fraction(r["repair"]["recall"], r["repair"]["precision"], r["repair"]["acc_repaired"])
    assert set(r["repair_by_kind"]) == {"noise", "other_digit"}
    positive(r["seconds_1x8"], r["seconds_64x8"], r["completions_per_s_1x8"],
             r["completions_per_s_64x8"])


def check_prior_ablation(r: dict, text: str) -> None:
    assert [row["recipe"] for row in json_lines(text)[:-1]] == ["today", "budget+ema+dropout"]
    assert sorted(row["recipe"] for row in r["rows"]) == ["budget+ema+dropout", "today"]
    assert r["best"] == r["rows"][0]["recipe"] and r["budget_s"] == 2.0
    for row in r["rows"]:
        positive(row["val_bits_per_code"], row["steps"], row["wall_s"])
    timed = next(row for row in r["rows"] if row["recipe"] != "today")
    assert timed["schedule"] == "time"  # the budget set the schedule's end
    assert next(row for row in r["rows"] if row["recipe"] == "today")["schedule"] == "steps"


def check_prior_memory(r: dict, text: str) -> None:
    assert r["steps"] == 2 and [x["maps"] for x in r["results"]] == [2000]
    positive(r["results"][0]["peak_rss_mb"], r["results"][0]["codes_file_mb"])


def check_run_all(r: dict, text: str) -> None:
    assert set(r["steps"]) == {"stage1", "stage2", "evaluate", "sampling", "encode_folder"}
    positive(r["machine"]["matmul_gflops"], r["machine"]["encoder_gflops"])
    for name in ("stage1", "stage2", "encode_folder"):
        assert r[name]["benchmark"] == name and r[name]["smoke"] is True
    assert r["sampling"]["batch"] == 64 and len(r["sampling_rows"]) == 2  # the child's JSON lines
    assert r["evaluate"]["stage1"]["num_images"] > 0 and r["evaluate"]["samples"]
    assert "| measure | value | target |" in text  # the README's table
    names = {p.stem for p in BENCHMARKS}
    assert names == {"stage1", "stage2", "sampling", "encode_folder"} | set(r["not_run"])


def check_sampling(r: dict, text: str) -> None:
    rows = json_lines(text)
    assert rows[-1] == r and [(x["grid"], x["batch"]) for x in rows] == [("4x4", 2)]
    assert r["naive_extrapolated"] is True and r["naive_positions_timed"] == 8
    assert r["same_grids"] is True  # naive and cached drew the same codes from one seed
    positive(r["forward_s"], r["naive_s"], r["cached_s"], r["decode_s"], r["images_per_s"])


def check_stage1(r: dict, text: str) -> None:
    assert r["steps"] == 5 and r["epochs"] == 1 and r["encoded_images"] == 256
    positive(r["train_images_per_s"], r["encode_images_per_s"], r["val_psnr_db"], r["perplexity"],
             r["peak_rss_mb"])
    fraction(r["codebook_usage"], r["val_mse"])
    assert r["settings"]["num_codes"] == 32


def check_stage2(r: dict, text: str) -> None:
    positive(r["demo_wall_s"], r["prior_train_maps_per_s"], r["val_bits_per_code"],
             r["unigram_bits_per_code"], r["sample_images_per_s"], r["nll_over_unigram"])
    assert r["uniform_bits_per_code"] == pytest.approx(5.0) and r["code_shape"] == [7, 7]


def check_workers_throughput(r: dict, text: str) -> None:
    assert [x["num_workers"] for x in r["results"]] == ["auto", "0"]
    assert r["results"][1]["resolved"] == 0 and r["results"][0]["resolved"] >= 0
    for x in r["results"]:
        positive(x["median"], *x["images_per_s"])
    assert r["timed_steps"] == 2 and r["images"] == 40


CHECKS: dict[str, Callable[[dict, str], None]] = {
    name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")
}


@pytest.fixture
def restore_process_state():
    """A benchmark may set torch's threads or chdir: put both back."""
    threads, cwd = torch.get_num_threads(), os.getcwd()
    yield
    torch.set_num_threads(threads)
    os.chdir(cwd)


def test_every_benchmark_is_found_and_checked():
    assert len(BENCHMARKS) >= 14
    missing = sorted({p.stem for p in BENCHMARKS} - set(CHECKS))
    assert not missing, f"benchmarks without a check in tests/test_benchmarks.py: {missing}"


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_smoke(script: Path, restore_process_state):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = snapshot()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        spec.loader.exec_module(module)
        returned = module.main(["--smoke"])
    text = out.getvalue()
    printed = last_json(text)
    assert isinstance(returned, dict) and printed == json.loads(json.dumps(returned))
    assert printed.get("smoke", printed.get("_summary", {}).get("smoke")) is True
    assert all(math.isfinite(x) for x in numbers(printed)), "NaN or infinity in the JSON"
    assert snapshot() == before, "smoke mode wrote into the checkout"
    check = CHECKS.get(script.stem)
    assert check is not None, f"add a check_{script.stem} to tests/test_benchmarks.py"
    check(printed, text)
