"""GPU check: one prepared script for a machine with a CUDA GPU, under 10 minutes.

1. the tests that need CUDA (skipped elsewhere), in a pytest child;
2. a few training steps of each stage on the GPU under ``torch.cuda.set_sync_debug_mode
   ("error")`` from the second step on (the first may run the quantizer's one-time k-means):
   any host sync in a step raises;
3. bf16 autocast: every code a training step picks is the float32 nearest of its encoder
   output, and a float32 ``encode`` of the trained model agrees with the codes it picks
   in eval under bf16 (the fraction that differ is reported);
4. images/s of a train-vqvae step and a train-prior step on CIFAR-10-sized data (the cifar
   preset, 32x32x3 -> 8x8 codes, K=512), and sampling grids/s at batch 1 and 256.

    python benchmarks/gpu_check.py             # on the GPU machine: prints one JSON object
    python benchmarks/gpu_check.py --smoke     # tiny, on the CPU: checks the script runs

Without CUDA (and without --smoke) it prints {"gpu": false, ...} and checks nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages

# every test that is skipped without CUDA
CUDA_TESTS = ("tests/test_no_sync.py::test_quantizer_and_prior_steps_do_not_sync_on_cuda",)


@contextlib.contextmanager
def sync_debug(device: torch.device):
    """Host syncs raise inside (CUDA only; a no-op elsewhere)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _quiet(lit):
    lit.log = lambda *a, **k: None  # Lightning's logging outside a Trainer
    return lit


def _vqvae(device: torch.device, smoke: bool):
    from vqgen.stage1_vqvae.lit import PRESETS, LitVQVAE

    cfg = {k: v for k, v in PRESETS["cifar"].items() if k not in ("max_epochs",)}
    if smoke:
        cfg.update(hidden=16, res_hidden=8, num_res=1, code_dim=8, num_codes=32)
    return _quiet(LitVQVAE(**cfg, warmup_steps=1)).to(device).train()


def _prior(device: torch.device, smoke: bool, num_codes: int = 512):
    from vqgen.stage2_prior.lit import LitPrior

    size = dict(hidden=8, num_layers=2, head_hidden=16) if smoke else \
        dict(hidden=128, num_layers=12, head_hidden=256)
    return _quiet(LitPrior(num_codes=num_codes, code_shape=(8, 8), num_classes=10,
                           ema_decay=0.999, dropout=0.1, **size)).to(device).train()


def _train_step(lit, opt: torch.optim.Optimizer, batch, i: int, autocast: bool = False) -> None:
    """One optimizer step of ``lit`` as Lightning runs it (the prior's EMA update included);
    ``autocast``: the forward under bf16 autocast, as --precision bf16-mixed does."""
    ctx = (torch.autocast(batch[0].device.type, dtype=torch.bfloat16) if autocast
           else contextlib.nullcontext())
    with ctx:
        loss = lit.training_step(batch, i)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    lit.on_train_batch_end(None, batch, i)


def _steps(lit, batches, device: torch.device, guarded_from: int = 1) -> None:
    opt = torch.optim.Adam(lit.parameters(), lr=1e-4)
    for i, batch in enumerate(batches):
        with sync_debug(device) if i >= guarded_from else contextlib.nullcontext():
            _train_step(lit, opt, batch, i)


def sync_free_steps(device: torch.device, smoke: bool, batch: int) -> dict:
    """Each stage: 4 steps, the last 3 with host syncs made errors. "ok" or the error."""
    out = {}
    vq = _vqvae(device, smoke)
    images = [(torch.rand(batch, 3, 32, 32, device=device), torch.zeros(batch, dtype=torch.long,
                                                                          device=device))
              for _ in range(4)]
    prior = _prior(device, smoke)
    maps = [(torch.randint(512, (batch, 8, 8), device=device),
             torch.randint(10, (batch,), device=device)) for _ in range(4)]
    for name, lit, batches in (("vqvae", vq, images), ("prior", prior, maps)):
        try:
            _steps(lit, batches, device)
            out[name] = "ok"
        except RuntimeError as e:
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return out


def bf16_codes(device: torch.device, smoke: bool, batch: int) -> dict:
    """Codes picked in bf16-autocast training steps vs the float32 nearest, and an eval-time
    bf16 forward vs a float32 ``encode`` after those steps."""
    from vqgen.stage1_vqvae.quantizer import VectorQuantizer

    lit = _vqvae(device, smoke)
    seen = []
    forward = VectorQuantizer.forward

    def recording(self, z_e):
        pending, before = bool(self.kmeans_pending), self.codebook.detach().clone()
        res = forward(self, z_e)
        if self.training and not pending:
            seen.append((z_e.detach().float(), before, res[1]))
        return res

    VectorQuantizer.forward = recording
    try:
        opt = torch.optim.Adam(lit.parameters(), lr=1e-4)
        for i in range(4):
            x = torch.rand(batch, 3, 32, 32, device=device)
            _train_step(lit, opt, (x, torch.zeros(batch, dtype=torch.long, device=device)), i,
                        autocast=True)
    finally:
        VectorQuantizer.forward = forward
    wrong = total = 0
    for z_e, codebook, codes in seen:
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        exact = torch.cdist(flat, codebook, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
        wrong += int((exact != codes.reshape(-1)).sum())
        total += exact.numel()
    lit.eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.no_grad():
        f32 = lit.model.encode(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf = lit.model.encode(x)
    return {"train_codes_checked": total, "train_codes_not_nearest": wrong,
            "eval_bf16_vs_f32_code_disagreement": round(float((f32 != bf).float().mean()), 4)}


def _timed(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up (cudnn autotune, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def throughput(device: torch.device, smoke: bool, batch: int) -> dict:
    from vqgen.stage2_prior.sampling import sample

    reps = 2 if smoke else 20
    vq, prior = _vqvae(device, smoke), _prior(device, smoke)
    x = (torch.rand(batch, 3, 32, 32, device=device), torch.zeros(batch, dtype=torch.long, device=device))
    c = (torch.randint(512, (batch, 8, 8), device=device), torch.randint(10, (batch,), device=device))
    res = {}
    for name, lit, b in (("train_vqvae_images_per_s", vq, x), ("train_prior_images_per_s", prior, c)):
        opt = torch.optim.Adam(lit.parameters(), lr=1e-4)
        res[name] = round(batch / _timed(lambda lit=lit, b=b, opt=opt: _train_step(lit, opt, b, 1),
                                         reps, device), 1)
    model = prior.model.eval()
    for n in (1, 8 if smoke else 256):
        labels = torch.arange(n, device=device) % 10

        def draw(n=n, labels=labels):
            with torch.no_grad():
                sample(model, n, labels=labels, guidance=2.0, temperature=0.9)

        res[f"sample_grids_per_s_batch{n}"] = round(n / _timed(draw, 1 if smoke else 3, device), 2)
    return res


def cuda_tests() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", *CUDA_TESTS], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"rc": proc.returncode, "summary": tail[0], "seconds": round(time.perf_counter() - t0, 1),
            "tests": list(CUDA_TESTS)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks it runs")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        result = {"gpu": False, "reason": "no CUDA device on this machine: nothing was checked",
                  "smoke": False}
        print(json.dumps(result))
        return result
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    batch = 4 if args.smoke else 128
    t0 = time.perf_counter()
    result = {"gpu": device.type == "cuda",
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__}
    result["cuda_tests"] = {"skipped": "smoke"} if args.smoke else cuda_tests()
    result["sync_free_steps"] = sync_free_steps(device, args.smoke, batch)
    result["bf16"] = bf16_codes(device, args.smoke, batch)
    result["throughput"] = throughput(device, args.smoke, batch)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["smoke"] = args.smoke
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
