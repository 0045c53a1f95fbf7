"""Run hostile and careless inputs through ``vqgen`` (issues 12 and 21) and count defects.

Each case is one ``pipeline.cli.main(argv)`` call (or one call of the ``serve`` page's
server) on tiny models trained first, run in a forked child so that it gets its own peak
RSS, a memory cap (a blow-up ends as MemoryError instead of taking the machine) and a time
limit (a server that starts, or a write that blocks on a FIFO, is stopped). Prints JSON:
per case ``{"kind", "exit", "traceback", "message", "seconds", "peak_rss_mb",
"rss_growth_mb", "changed_outside", "defect"}`` and a ``"_summary"`` with the defects
counted per class (data loss, silent wrong, traceback, memory blow-up; target 0 each):

- ``traceback``: a traceback escaped (or the page said "internal error");
- ``memory``: the case grew the process by over 1 GiB, hit the cap, or was killed;
- ``data_loss``: the case's own check failed, or a file outside the case's intended
  outputs was changed or deleted (``changed_outside`` lists them);
- ``silent_wrong``: the case's check failed (a wrong result, bad input accepted).

    OMP_NUM_THREADS=1 python benchmarks/hostile_inputs.py [--races 20]
    OMP_NUM_THREADS=1 python benchmarks/hostile_inputs.py --smoke

``--smoke`` skips the slow cases (training on an image folder, the demo) and runs the
race twice instead of ``--races`` times. To measure an older vqgen, run it with
``VQGEN_ROOT=/old/checkout`` (its ``src/`` is put first on the path); the crafted
``.vqz`` headers need ``vqz.pack_header`` (after 6919abf; copy it into an older checkout).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import resource
import select
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

_root = Path(os.environ.get("VQGEN_ROOT", str(Path(__file__).resolve().parents[1])))
sys.path.insert(0, str(_root / "src") if (_root / "src").is_dir() else str(_root))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vqgen.pipeline.cli import main as cli_main  # noqa: E402

TINY_VQ = ["--hidden", "16", "--res-hidden", "8", "--num-res", "1", "--code-dim", "8",
           "--num-codes", "32", "--limit-train-batches", "3", "--limit-val-batches", "1",
           "--batch-size", "32", "--accelerator", "cpu", "--device", "cpu", "--max-epochs", "1"]
TINY_PRIOR = ["--hidden", "8", "--num-layers", "2", "--head-hidden", "16", "--max-epochs", "1",
              "--limit-train-batches", "2", "--accelerator", "cpu"]
KINDS = ("data_loss", "silent_wrong", "traceback", "memory")
MEMORY_CAP = 4 * 2**30       # address space a case may add before it gets MemoryError
BLOW_UP = 2**30              # RSS growth counted as a memory blow-up
CASE_TIMEOUT = 120.0         # seconds; a case still running then is stopped


def images(root: Path, classes: list[str], n: int = 5, ext: str = ".png") -> Path:
    """n 28x28 grey noise images per class under root/<class>/ (seeded; as tests/test_reliability)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{Path(c).name}{i}{ext}")
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


def page_call(fn: Callable[[], object]) -> dict:
    """Run one action of the serve page's server as the page would: a UserError is a
    one-line page error (exit 2), anything else the page's "internal error" (a traceback)."""
    from vqgen.stage1_vqvae.runtime.errors import UserError

    try:
        fn()
        return {"exit": 0, "traceback": False, "message": ""}
    except UserError as e:
        return {"exit": 2, "traceback": False, "message": " ".join(str(e).split())[:300]}
    except Exception as e:  # noqa: BLE001 - what we count
        gr = sys.modules.get("gradio")
        if gr is not None and isinstance(e, gr.Error):  # the page's own one-line error
            return {"exit": 2, "traceback": False, "message": str(e)[:300]}
        return {"exit": 1, "traceback": True,
                "message": f"internal error ({type(e).__name__}: {e})"[:300]}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root -> (kind, size, mtime_ns, inode): what a case may change."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[p] = (stat.S_IFMT(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode)
                      else 0, st.st_mtime_ns if stat.S_ISREG(st.st_mode) else 0, st.st_ino)
    return out


def changed_outside(before: dict, after: dict, intended: list[Path]) -> list[str]:
    """Paths that existed before and were changed or deleted, outside ``intended`` (a
    case's --out / --report and their lock files)."""
    keep = [str(p) for p in intended]

    def inside(p: str) -> bool:
        return any(p == k or p.startswith(k + os.sep) or
                   os.path.basename(p).startswith(f".{os.path.basename(k)}.")
                   for k in keep)

    return sorted(p for p, v in before.items() if not inside(p) and after.get(p) != v
                  and v[0] != stat.S_IFDIR)


def _intended(argv: list) -> list[Path]:
    got = []
    for flag in ("--out", "--report"):
        if flag in argv:
            got.append(Path(str(argv[argv.index(flag) + 1])).absolute())
    return got


def _after_fork(timeout: float = CASE_TIMEOUT) -> None:
    """First thing in a forked child. torch's OpenMP (libgomp) is not fork-safe: a child that
    enters a parallel region after the parent ran one on 2+ threads waits for ever (the suite
    hung so in CI, where OMP_NUM_THREADS is unset). One thread in the child; and an alarm,
    so that a child stuck anyway dies instead of holding its parent."""
    torch.set_num_threads(1)
    signal.alarm(int(timeout) + 60)


def forked(job: Callable[[], dict], timeout: float = CASE_TIMEOUT) -> dict:
    """Run job() in a forked child under MEMORY_CAP and ``timeout``; its dict plus
    seconds, peak_rss_mb and rss_growth_mb (child peak minus what it inherited)."""
    r, w = os.pipe()
    base = _rss()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: run, report, leave without running the parent's atexit
        os.close(r)
        _after_fork(timeout)
        code = 0
        try:
            cap = _vm_size() + MEMORY_CAP
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            try:
                res = job()
            except MemoryError:
                res = {"exit": 1, "traceback": True, "message": "MemoryError", "oom": True}
            os.write(w, json.dumps(res).encode())
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], t0 + timeout
    while True:
        left = deadline - time.perf_counter()
        ready, _, _ = select.select([r], [], [], max(0.0, left))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    try:
        res = json.loads(b"".join(chunks))
    except ValueError:
        why = (f"stopped after {timeout:.0f} s" if seconds >= timeout
               else f"died (status {status})")
        res = {"exit": None, "traceback": False, "message": why, "killed": True,
               "timed_out": seconds >= timeout}
    peak = usage.ru_maxrss * 1024
    res.update(seconds=round(seconds, 2), peak_rss_mb=round(peak / 2**20, 1),
               rss_growth_mb=round(max(0, peak - base) / 2**20, 1))
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--races", type=int, default=20,
                    help="how often two runs race for one new --out (default 20)")
    ap.add_argument("--smoke", action="store_true",
                    help="skip the slow cases; race twice")
    args = ap.parse_args(argv)
    results = main_bench(races=2 if args.smoke else args.races, slow=not args.smoke)
    results["_summary"]["smoke"] = args.smoke
    print(json.dumps(results, indent=2))
    return results


def main_bench(races: int = 20, slow: bool = True) -> dict:
    ws = Path(tempfile.mkdtemp(prefix="vqgen-hostile-"))
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        return run_cases(ws, races, slow)
    finally:
        os.chdir(cwd)
        for p in ws.rglob("*"):  # read-only folders the cases made
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
        shutil.rmtree(ws, ignore_errors=True)


def _craft_vqz(src: Path, dst: Path, **change) -> Path:
    """A copy of the .vqz ``src`` with header fields changed (names, count, ...), written
    with vqgen's own writer: bytes `compress` itself could never produce."""
    from vqgen.pipeline.codec.vqz import read_header, read_records, write_vqz

    data = src.read_bytes()
    header, start = read_header(data)
    records = read_records(data, header, start)
    dst.write_bytes(write_vqz(dataclasses.replace(header, **change), records))
    return dst


def run_cases(ws: Path, races: int = 20, slow: bool = True) -> dict:
    import torch

    vq, prior = ws / "vq", ws / "prior"
    assert call(["train-vqvae", "--out", vq, *TINY_VQ])["exit"] == 0
    assert call(["train-prior", "--codes", vq / "codes", "--out", prior, *TINY_PRIOR])["exit"] == 0
    vck, pck = vq / "last.ckpt", prior / "last.ckpt"
    results: dict[str, dict] = {}

    def record(name: str, kind: str, res: dict, ok: bool, changed: list[str]) -> None:
        assert kind in KINDS, kind
        res["kind"] = kind
        if not ok:
            res["check"] = "FAILED"
        if changed:
            res["changed_outside"] = changed[:10]
        defect = []
        if res.get("traceback"):
            defect.append("traceback")
        if (res.get("oom") or res.get("rss_growth_mb", 0) * 2**20 > BLOW_UP
                or (res.get("killed") and not res.get("timed_out"))):
            defect.append("memory")
        if changed:
            defect.append("data_loss")
        if not ok:
            defect.append("data_loss" if kind == "data_loss" else "silent_wrong")
        if res.get("timed_out") and not defect:
            defect.append("silent_wrong" if kind != "memory" else "memory")
        res["defect"] = sorted(set(defect))
        results[name] = res

    def case(name: str, kind: str, job: list | Callable[[], dict],
             check: Callable[[], bool] | None = None, timeout: float = CASE_TIMEOUT) -> dict:
        """One case: argv for the CLI (or a function returning call()'s dict), the class
        of defect it probes, and a check on disk / of the result (True = right)."""
        before = snapshot(ws)
        res = forked((lambda: call(job)) if isinstance(job, list) else job, timeout)
        try:
            ok = check is None or bool(check())
        except Exception:  # noqa: BLE001 - a file the check reads is gone: that is the failure
            ok = False
        changed = changed_outside(before, snapshot(ws),
                                  _intended(job) if isinstance(job, list) else [])
        record(name, kind, res, ok, changed)
        return res

    # ================================================================ issue 12's cases
    loop = images(ws / "loop", ["a", "b"], n=6)
    (loop / "a" / "again").symlink_to(".")
    case("symlink loop in a class folder", "silent_wrong",
         ["encode", "--vqvae", vck, "--data", f"folder:{loop}", "--device", "cpu",
          "--val-fraction", "0.25", "--out", ws / "loopcodes"],
         lambda: len(np.load(ws / "loopcodes" / "train" / "codes.npy"))
         + len(np.load(ws / "loopcodes" / "val" / "codes.npy")) == 12)
    selfl = images(ws / "self", ["a", "b"], n=6)
    (selfl / "a" / "me.png").symlink_to("me.png")
    case("symlink to itself in a data folder", "traceback",
         ["encode", "--vqvae", vck, "--data", f"folder:{selfl}", "--device", "cpu",
          "--val-fraction", "0.25", "--out", ws / "selfcodes"])
    gifs = images(ws / "gifs", ["a", "b"], n=6, ext=".gif")
    case("gif images", "silent_wrong",
         ["encode", "--vqvae", vck, "--data", f"folder:{gifs}", "--device", "cpu",
          "--val-fraction", "0.25", "--out", ws / "gifcodes"],
         lambda: (ws / "gifcodes" / "train" / "meta.json").exists())
    case("--class 10 (not a class name)", "traceback",
         ["sample", "--prior", pck, "--class", "10", "--num", "2", "--device", "cpu",
          "--out", ws / "c10"])
    other = ws / "other.ckpt"
    ck = torch.load(vck, weights_only=True)
    ck["state_dict"] = {k: v + 0.5 if k.startswith("model.decoder") and v.is_floating_point()
                        else v for k, v in ck["state_dict"].items()}
    torch.save(ck, other)
    case("another VQ-VAE with the same num_codes", "silent_wrong",
         ["sample", "--prior", pck, "--vqvae", other, "--num", "2", "--device", "cpu", "--out",
          ws / "othervq"], lambda: not (ws / "othervq").exists())
    for flag in ("--max-steps", "--limit-train-batches"):
        for verb, extra in (("train-prior", ["--codes", vq / "codes"]), ("train-vqvae", [])):
            out = ws / f"zero{flag}{verb}"
            base = TINY_PRIOR if verb == "train-prior" else TINY_VQ
            case(f"{verb} {flag} 0", "silent_wrong", [verb, *extra, "--out", out, *base, flag, "0"],
                 lambda out=out: not out.exists())
    case("--per-class with --num", "traceback",
         ["sample", "--prior", pck, "--per-class", "2", "--num", "5", "--device", "cpu",
          "--out", ws / "pc"])
    empty_val = ws / "emptyval"
    shutil.copytree(vq / "codes", empty_val)
    from vqgen.stage1_vqvae.codes import read_code_maps, write_code_maps

    m = read_code_maps(empty_val / "val")
    meta = dict(m.meta)
    shutil.rmtree(empty_val / "val")
    write_code_maps(empty_val / "val", np.zeros((0, 7, 7), np.int64), np.zeros(0, np.int64),
                    num_codes=32, meta={**meta, "count": 0})
    case("train-prior with an empty val split", "traceback",
         ["train-prior", "--codes", empty_val, "--out", ws / "ev", *TINY_PRIOR])
    case("--beta -1", "silent_wrong", ["train-vqvae", "--out", ws / "b", *TINY_VQ, "--beta", "-1"],
         lambda: not (ws / "b").exists())
    case("--decay 2", "silent_wrong", ["train-vqvae", "--out", ws / "d", *TINY_VQ, "--decay", "2"],
         lambda: not (ws / "d").exists())
    case("--device cuda without CUDA" if not torch.cuda.is_available() else "--device cuda:99",
         "traceback", ["sample", "--prior", pck, "--num", "2", "--device",
                       "cuda" if not torch.cuda.is_available() else "cuda:99", "--out", ws / "dc"])
    case("--device nonsense", "traceback",
         ["sample", "--prior", pck, "--num", "2", "--device", "nonsense", "--out", ws / "dn"])
    ro = ws / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    case("--out in a read-only folder", "traceback",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", ro / "s"])
    case("--out under /sys", "traceback",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", "/sys/vqgen-samples"])
    case("--out under an existing file", "traceback",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", pck / "s"])
    empty_codes = ws / "empty_codes"
    write_code_maps(empty_codes, np.zeros((0, 7, 7), np.int64), None, num_codes=32)
    case("decode of an empty code map", "traceback",
         ["decode", "--vqvae", vck, "--codes", empty_codes, "--device", "cpu", "--out", ws / "de"])
    for name, change, kind in (("num_codes null", {"num_codes": None}, "traceback"),
                               ("format_version list", {"format_version": [1]}, "traceback"),
                               ("num_codes 1e9", {"num_codes": 1000000000}, "memory"),
                               ("num_classes > class_names", {"num_classes": 12}, "traceback")):
        bad = ws / f"meta-{len(results)}"
        shutil.copytree(vq / "codes", bad)
        for split in ("train", "val"):
            p = bad / split / "meta.json"
            p.write_text(json.dumps({**json.loads(p.read_text()), **change}))
        case(f"meta.json {name}", kind,
             ["train-prior", "--codes", bad, "--out", ws / f"p{len(results)}", *TINY_PRIOR])
    case("--image-size 100000", "memory",
         ["train-vqvae", "--out", ws / "big", *TINY_VQ, "--image-size", "100000", "--downsample", "4"])
    case("sample --num 1000000000", "memory",
         ["sample", "--prior", pck, "--num", "1000000000", "--device", "cpu", "--out", ws / "many"])
    hostile = torch.load(pck, weights_only=True)
    hostile["hyper_parameters"]["num_layers"] = 1000000
    torch.save(hostile, ws / "hostile.ckpt")
    case("checkpoint with num_layers=1000000", "memory",
         ["sample", "--prior", ws / "hostile.ckpt", "--num", "2", "--device", "cpu", "--out", ws / "h"])
    case("--seed 2**70", "traceback",
         ["sample", "--prior", pck, "--num", "2", "--seed", str(2**70), "--device", "cpu",
          "--out", ws / "seed"])
    case("train --seed 2**70", "traceback",
         ["train-vqvae", "--out", ws / "seedt", *TINY_VQ, "--seed", str(2**70)])
    case("encode --out holding the VQ-VAE --overwrite", "data_loss",
         ["encode", "--vqvae", vck, "--device", "cpu", "--out", vq, "--overwrite"],
         lambda: vck.exists())
    case("reconstruct --out inside the data folder", "data_loss",
         ["reconstruct", "--vqvae", vck, "--data", f"folder:{gifs}", "--device", "cpu",
          "--out", gifs / "a" / "x.png"], lambda: not (gifs / "a" / "x.png").exists())
    case("--limit-val-batches 0", "traceback",
         ["train-vqvae", "--out", ws / "lv", *TINY_VQ, "--limit-val-batches", "0"])
    case("--class #99", "traceback",
         ["sample", "--prior", pck, "--class", "#99", "--num", "2", "--device", "cpu",
          "--out", ws / "c99"])
    case("--max-steps -5", "traceback",
         ["train-prior", "--codes", vq / "codes", "--out", ws / "ms5", *TINY_PRIOR, "--max-steps", "-5"])
    case("--num-workers -1", "traceback",
         ["train-prior", "--codes", vq / "codes", "--out", ws / "nw", *TINY_PRIOR,
          "--num-workers", "-1"])
    case("--kernel-size 10001", "memory",
         ["train-prior", "--codes", vq / "codes", "--out", ws / "ks", *TINY_PRIOR,
          "--kernel-size", "10001"])
    ro.chmod(0o755)
    unrelated = ws / "u"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("precious")
    case("sample --overwrite into a folder of other files", "data_loss",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", unrelated,
          "--overwrite"], lambda: (unrelated / "thesis.tex").read_text() == "precious")
    case("decode --overwrite into a folder of other files", "data_loss",
         ["decode", "--vqvae", vck, "--codes", vq / "codes" / "val", "--limit", "2", "--device",
          "cpu", "--out", unrelated, "--overwrite"],
         lambda: (unrelated / "thesis.tex").read_text() == "precious")
    case("sample --out the prior's run --overwrite", "data_loss",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", prior,
          "--overwrite"], lambda: pck.exists() and (prior / "logs").exists())
    case("decode --codes C/val --out C/val --overwrite", "data_loss",
         ["decode", "--vqvae", vck, "--codes", vq / "codes" / "val", "--device", "cpu",
          "--out", vq / "codes" / "val", "--overwrite"],
         lambda: (vq / "codes" / "val" / "meta.json").exists())
    case("train-prior --out the VQ-VAE run --overwrite", "data_loss",
         ["train-prior", "--codes", vq / "codes", "--out", vq, "--overwrite", *TINY_PRIOR],
         lambda: vck.exists() and (vq / "codes" / "train" / "meta.json").exists())

    run_issue21_cases(ws, vq, prior, case, races, slow, results)
    counts = {k: sum(k in r.get("defect", []) for r in results.values()) for k in KINDS}
    by_kind = {k: sum(r.get("kind") == k for r in results.values()) for k in KINDS}
    results["_summary"] = {
        "cases": len(results),
        "tracebacks": counts["traceback"],
        "defects": counts,
        "cases_per_kind": by_kind,
        "defective_cases": sorted(n for n, r in results.items() if r.get("defect")),
        "peak_rss_growth_mb": max(r.get("rss_growth_mb", 0) for r in results.values()),
    }
    return results


def race(ws: Path, pck: Path, n: int) -> dict:
    """Two `sample` runs started at once on one new --out, ``n`` times: a defect when both
    exit 0 (one silently replaced the other) or the folder holds neither run's output."""
    both, lost = 0, 0
    exits: list[list] = []
    for i in range(n):
        out = ws / f"race{i}"
        pids = []
        for seed in (1, 2):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _after_fork()
                res = call(["sample", "--prior", pck, "--num", "3", "--seed", str(seed),
                            "--device", "cpu", "--out", out])
                os.write(w, json.dumps(res).encode())
                os._exit(0)
            os.close(w)
            pids.append((pid, r))
        got = []
        for pid, r in pids:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            got.append(json.loads(data) if data else {"exit": None})
        codes = [g["exit"] for g in got]
        exits.append(codes)
        if codes.count(0) > 1:
            both += 1
        if 0 in codes:
            written = json.loads((out / "samples.json").read_text())
            winner = (1, 2)[codes.index(0)]
            if written.get("seed") != winner:
                lost += 1
    return {"exit": 0, "traceback": False, "races": n, "both_exit_0": both,
            "winner_output_lost": lost, "exits": [sorted(map(str, c)) for c in exits[:5]],
            "message": f"{both} of {n} races let both runs finish"}


def run_issue21_cases(ws: Path, vq: Path, prior: Path, case: Callable, races: int, slow: bool,
                      results: dict) -> None:
    """Issue 21's cases, and others of the same kinds."""
    pck = prior / "last.ckpt"
    # ---------------------------------------------------------------- data loss
    res = race(ws, pck, races)
    results_name = f"two sample runs on one new --out ({races} races)"
    case(results_name, "data_loss", lambda: res,
         lambda: res["both_exit_0"] == 0 and res["winner_output_lost"] == 0)
    for verb, src, argv in (
            ("train-vqvae", vq, ["train-vqvae", *TINY_VQ]),
            ("train-prior", prior, ["train-prior", "--codes", vq / "codes", *TINY_PRIOR])):
        run = ws / f"{verb}-user"
        shutil.copytree(src, run, symlinks=True)
        mine = [run / d / "mine.txt" for d in ("logs", "codes", "previews")]
        for p in mine:
            p.parent.mkdir(exist_ok=True)
            p.write_text("the user's")
        case(f"{verb} --overwrite with user files in logs/ codes/ previews/", "data_loss",
             [*argv, "--out", run, "--overwrite"],
             lambda mine=mine: all(p.read_text() == "the user's" for p in mine))
    demo = ws / "demo-user"
    for rel in ("samples/grid.png", "samples/000003.png", "vqvae/logs/mine.txt", "codes/mine.txt",
                "previews/mine.txt"):
        (demo / rel).parent.mkdir(parents=True, exist_ok=True)
        (demo / rel).write_text("the user's")
    if slow:
        case("demo --out a folder of user files", "data_loss",
             ["demo", "--out", demo, "--vqvae-epochs", "1", "--prior-epochs", "1",
              "--per-class", "1", "--device", "cpu", "--accelerator", "cpu"],
             lambda: all((demo / r).read_text() == "the user's" for r in
                         ("samples/grid.png", "samples/000003.png", "vqvae/logs/mine.txt")),
             timeout=300)
    nested = ws / "nested"
    for d in ("dd/7", "dd/8"):
        images(nested, [d], n=1)
    case("compress names in subfolders", "silent_wrong",
         ["compress", nested, "--prior", pck, "--device", "cpu", "--out", ws / "nested.vqz"],
         lambda: (ws / "nested.vqz").is_file())
    dd = ws / "dd-out"
    case("decompress into a new folder", "silent_wrong",
         ["decompress", ws / "nested.vqz", "--device", "cpu", "--out", dd],
         lambda: len(list(dd.rglob("*.png"))) == 2)
    (dd / "dd" / "7").mkdir(parents=True, exist_ok=True)
    (dd / "dd" / "7" / "mine.txt").write_text("the user's")
    case("decompress --overwrite with a user file in its subfolder", "data_loss",
         ["decompress", ws / "nested.vqz", "--device", "cpu", "--out", dd, "--overwrite"],
         lambda: (dd / "dd" / "7" / "mine.txt").read_text() == "the user's")
    sweep = ws / "sweep"
    sweep.mkdir()
    (sweep / ".samples.20240101.tmp.txt").write_text("the user's")
    (sweep / ".samples.7777777.backup.tmp").mkdir()
    (sweep / ".samples.7777777.backup.tmp" / "a.txt").write_text("the user's")
    case("stale-temp sweep beside --out with look-alike user files", "data_loss",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", sweep / "samples"],
         lambda: (sweep / ".samples.20240101.tmp.txt").is_file()
         and (sweep / ".samples.7777777.backup.tmp" / "a.txt").is_file())
    fifo = ws / "fifo.vqz"
    os.mkfifo(fifo)
    case("compress --out a FIFO --overwrite", "data_loss",
         ["compress", nested, "--prior", pck, "--device", "cpu", "--out", fifo, "--overwrite"],
         lambda: stat.S_ISFIFO(os.lstat(fifo).st_mode), timeout=60)
    rfifo = ws / "fifo.json"
    os.mkfifo(rfifo)
    case("compress --report a FIFO --overwrite", "data_loss",
         ["compress", nested, "--prior", pck, "--device", "cpu", "--out", ws / "r.vqz",
          "--report", rfifo, "--overwrite"],
         lambda: stat.S_ISFIFO(os.lstat(rfifo).st_mode), timeout=60)
    target = ws / "file-target.vqz"
    target.write_bytes(b"the user's")
    (ws / "linked.vqz").symlink_to(target)
    case("compress --out a symlink to a user file --overwrite", "data_loss",
         ["compress", nested, "--prior", pck, "--device", "cpu", "--out", ws / "linked.vqz",
          "--overwrite"], lambda: target.read_bytes() == b"the user's")

    # ---------------------------------------------------------------- silent wrong
    from vqgen.pipeline.codec.vqz import read_header

    good = ws / "nested.vqz"
    if good.is_file():
        names = read_header(good.read_bytes())[0].names
        rep = _craft_vqz(good, ws / "repeated.vqz", names=[names[0]] * len(names))
        case("decompress a .vqz whose names repeat", "silent_wrong",
             ["decompress", rep, "--device", "cpu", "--out", ws / "rep-out"],
             lambda: not (ws / "rep-out").exists())
        nul = _craft_vqz(good, ws / "nul.vqz", names=["a\0b.png"] + names[1:])
        case("decompress a .vqz with a NUL in a name", "traceback",
             ["decompress", nul, "--device", "cpu", "--out", ws / "nul-out"])
        hdr = read_header(good.read_bytes())[0]
        cls = _craft_vqz(good, ws / "classes.vqz", num_classes=hdr.num_classes + 3)
        case("decompress a .vqz with another class count", "traceback",
             ["decompress", cls, "--device", "cpu", "--out", ws / "cls-out"])
    digits = ws / "digits"
    for c in range(10):
        images(digits, [str(c)], n=2)
        for i, p in enumerate(sorted((digits / str(c)).iterdir())):
            p.rename(p.with_name(f"d{i}.png"))
    assert call(["compress", digits, "--prior", pck, "--device", "cpu", "--out",
                 ws / "digits.vqz"])["exit"] == 0

    def server():
        from vqgen.pipeline.serve.serving import Server

        work = Path(tempfile.mkdtemp(dir=ws, prefix="serve-"))
        return Server(pck, None, work), work

    def serve_decompress() -> dict:
        srv, work = server()
        shutil.copy(ws / "digits.vqz", work / "digits.vqz")
        got: dict = {}

        def act():
            r = srv.decompress(work / "digits.vqz")
            got["distinct_files"] = len({str(p) for p in r.images if Path(p).is_file()})
            got["shown"] = len(r.images)
        res = page_call(act)
        (ws / "serve-decompress.json").write_text(json.dumps(got))
        return res
    case("serve Decompress of 0/d0.png ... 9/d1.png", "silent_wrong", serve_decompress,
         lambda: json.loads((ws / "serve-decompress.json").read_text()) == {
             "distinct_files": 20, "shown": 20})

    # ---------------------------------------------------------------- tracebacks
    if slow:
        nl = images(ws / "newline", ["a\nb", "c"], n=20)
        case("train-vqvae on a class folder named with a newline", "traceback",
             ["train-vqvae", "--data", f"folder:{nl}", "--out", ws / "nlvq", *TINY_VQ,
              "--image-size", "28", "--channels", "1"])
        case("train-prior on it", "traceback",
             ["train-prior", "--codes", ws / "nlvq" / "codes", "--out", ws / "nlp", *TINY_PRIOR])
        case("sample --per-class with a newline class name", "traceback",
             ["sample", "--prior", ws / "nlp" / "last.ckpt", "--per-class", "2", "--device",
              "cpu", "--out", ws / "nls"])
    clash = ws / "clash"
    images(clash, ["7"], n=1, ext=".jpg")
    (clash / "7" / "70.jpg").rename(clash / "7" / "b.jpg")
    (clash / "7" / "b.png").mkdir()
    images(clash / "7" / "b.png", ["x"], n=1)

    def compress_then_decompress(src: Path, tag: str) -> Callable[[], dict]:
        def job() -> dict:
            a = call(["compress", src, "--prior", pck, "--device", "cpu", "--out",
                      ws / f"{tag}.vqz"])
            if a["exit"] != 0:
                return a
            b = call(["decompress", ws / f"{tag}.vqz", "--device", "cpu", "--out",
                      ws / f"{tag}-out"])
            return {**b, "compress_exit": 0}
        return job
    case("compress 7/b.jpg beside a folder 7/b.png/", "traceback",
         compress_then_decompress(clash, "clash"))
    long = ws / "long"
    images(long, ["c"], n=2)
    stem = "x" * 248
    (long / "c" / "c0.png").rename(long / "c" / f"{stem}.jpg")
    (long / "c" / "c1.png").rename(long / "c" / f"{stem}.png")
    case("compress 252-character names whose .png forms are too long", "traceback",
         compress_then_decompress(long, "long"))
    case("sample --per-class 100000000000", "memory",
         ["sample", "--prior", pck, "--per-class", "100000000000", "--device", "cpu",
          "--out", ws / "pcbig"])
    for verb in ("inpaint", "repair"):
        extra = ["--box", "0,0,14,14"] if verb == "inpaint" else ["--fraction", "0.2"]
        case(f"{verb} --seed 2**63", "traceback",
             [verb, "--prior", pck, "--data", "mnist5k", "--index", "0", *extra, "--seed",
              str(2**63), "--device", "cpu", "--out", ws / f"{verb}-s63"])
        case(f"{verb} --seed -1", "silent_wrong",
             [verb, "--prior", pck, "--data", "mnist5k", "--index", "0", *extra, "--seed", "-1",
              "--device", "cpu", "--out", ws / f"{verb}-sm1"],
             lambda verb=verb: not (ws / f"{verb}-sm1").exists())
    try:
        import gradio  # noqa: F401
        have_gradio = True
    except ImportError:
        have_gradio = False
    if have_gradio:
        case("serve --max-upload-mb inf", "silent_wrong",
             ["serve", "--prior", pck, "--max-upload-mb", "inf", "--port", "0", "--device", "cpu"],
             timeout=30)

    def serve_sample_seed() -> dict:
        srv, _ = server()
        return page_call(lambda: srv.sample(None, 2, seed=-1))
    case("serve Sample with seed -1", "traceback", serve_sample_seed)

    # ---------------------------------------------------------------- memory
    from vqgen.pipeline.codec.vqz import read_header as _rh

    val_vqz = ws / "val.vqz"
    assert call(["compress", "--prior", pck, "--data", "mnist5k", "--split", "val", "--device",
                 "cpu", "--out", val_vqz, "--stream", "image"])["exit"] == 0
    h0 = _rh(val_vqz.read_bytes())[0]
    huge_count = ws / "count.vqz"  # ~170 bytes: a header alone, names by index
    huge_count.write_bytes(_raw_header(h0, 10**9, None))
    case("decompress a .vqz whose header says 10**9 images", "memory",
         ["decompress", huge_count, "--device", "cpu", "--out", ws / "count-out"])

    def serve_count() -> dict:
        srv, work = server()
        shutil.copy(huge_count, work / "count.vqz")
        return page_call(lambda: srv.decompress(work / "count.vqz"))
    case("serve Decompress of the 10**9-image header", "memory", serve_count)
    bomb = _zlib_bomb_vqz(val_vqz, ws / "bomb.vqz")
    case("decompress a .vqz whose names are a zlib bomb", "memory",
         ["decompress", bomb, "--device", "cpu", "--out", ws / "bomb-out"])
    huge_png = ws / "huge.png"
    Image.new("1", (13000, 13000)).save(huge_png)
    case("inpaint --image a 13000x13000 PNG", "memory",
         ["inpaint", "--prior", pck, "--image", huge_png, "--box", "0,0,14,14", "--device", "cpu",
          "--out", ws / "huge-out"])
    big_folder = ws / "bigfolder"
    images(big_folder, ["a"], n=2)
    shutil.copy(huge_png, big_folder / "a" / "huge.png")
    case("compress a folder holding a 13000x13000 PNG", "memory",
         ["compress", big_folder, "--prior", pck, "--device", "cpu", "--out", ws / "bigf.vqz"])
    case("inpaint --mask a 13000x13000 PNG", "memory",
         ["inpaint", "--prior", pck, "--data", "mnist5k", "--index", "0", "--mask", huge_png,
          "--device", "cpu", "--out", ws / "hugemask-out"])
    if have_gradio:
        def serve_complete_huge() -> dict:
            import gradio as gr
            from gradio.components.image_editor import EditorData
            from gradio.data_classes import FileData

            import vqgen.pipeline.serve.app as app

            srv, work = server()
            editor = gr.ImageEditor(type="pil", image_mode="RGBA", format="png")
            if hasattr(app, "limit_pixels"):  # what the page does (older vqgens: nothing)
                editor = app.limit_pixels(editor)
            shutil.copy(huge_png, work / "huge.png")

            def act():
                value = editor.preprocess(EditorData(background=FileData(path=str(work / "huge.png")),
                                                     layers=[], composite=None))
                value["background"].save(work / "input.png", format="PNG")
                srv.complete(work / "input.png", None, num=2, repair_fraction=0.2)
            return page_call(act)
        case("serve Complete with a 13000x13000 PNG", "memory", serve_complete_huge)
    # the candidate count at the size of the real models (K=512, 12 layers of 128): random
    # weights draw as much memory as trained ones
    big_vq, big_prior = ws / "vq512", ws / "prior512"
    assert call(["train-vqvae", "--out", big_vq, *TINY_VQ, "--num-codes", "512"])["exit"] == 0
    assert call(["train-prior", "--codes", big_vq / "codes", "--out", big_prior, "--max-epochs",
                 "1", "--limit-train-batches", "1", "--accelerator", "cpu"])["exit"] == 0
    case("inpaint --candidates 100000", "memory",
         ["inpaint", "--prior", big_prior / "last.ckpt", "--data", "mnist5k", "--index", "0",
          "--box", "0,14,28,28", "--candidates", "100000", "--num", "2", "--device", "cpu",
          "--out", ws / "cand-out"], timeout=300)

    # ---------------------------------------------------------------- smaller things
    dangling = ws / "dangling"
    dangling.symlink_to(ws / "nowhere")
    case("sample --out a dangling symlink", "traceback",
         ["sample", "--prior", pck, "--num", "2", "--device", "cpu", "--out", dangling],
         lambda: not (ws / "nowhere").exists())
    case("demo --guidance -5", "silent_wrong",
         ["demo", "--out", ws / "demo-g", "--guidance", "-5", "--vqvae-epochs", "1",
          "--prior-epochs", "1", "--device", "cpu", "--accelerator", "cpu"],
         lambda: not (ws / "demo-g" / "vqvae" / "last.ckpt").exists(), timeout=300)
    if slow:
        src = ws / "demo-src"
        moved = ws / "demo-moved"
        call(["demo", "--out", src, "--vqvae-epochs", "1", "--prior-epochs", "1",
              "--per-class", "1", "--device", "cpu", "--accelerator", "cpu"])
        if src.is_dir():
            src.rename(moved)
            case("demo in a moved demo folder", "traceback",
                 ["demo", "--out", moved, "--per-class", "1", "--device", "cpu",
                  "--accelerator", "cpu"], lambda: (moved / "samples" / "grid.png").is_file(),
                 timeout=300)

    def grid_shape() -> dict:
        res = call(["sample", "--prior", pck, "--num", "1000", "--device", "cpu", "--out",
                    ws / "grid1000"])
        return res
    case("sample --num 1000 grid layout", "silent_wrong", grid_shape,
         lambda: 0.5 < (lambda s: s[0] / s[1])(Image.open(ws / "grid1000" / "grid.png").size) < 2)

    def page_paths() -> dict:
        srv, work = server()
        shutil.copy(huge_count, work / "count.vqz")
        _craft_vqz(val_vqz, work / "other.vqz", prior_sha256="0" * 64)
        res = page_call(lambda: srv.decompress(work / "other.vqz"))
        try:
            from vqgen.pipeline.serve.serving import page_message
            res["message"] = page_message(res["message"])
        except ImportError:  # an older vqgen shows its messages as they are
            pass
        (ws / "page-paths.txt").write_text(res["message"])
        return res
    case("serve page error for a .vqz of another prior", "silent_wrong", page_paths,
         lambda: str(ws) not in (ws / "page-paths.txt").read_text())


def _zlib_bomb_vqz(src: Path, dst: Path) -> Path:
    """The header of ``src`` with its names replaced by 256 MB of "a" deflated (~250 KB),
    as the names of 10 images."""
    import zlib

    from vqgen.pipeline.codec.vqz import read_header

    header, _ = read_header(src.read_bytes())
    bomb, chunk = zlib.compressobj(1), b"a" * 2**20
    blob = b"".join(bomb.compress(chunk) for _ in range(256)) + bomb.flush()
    dst.write_bytes(_raw_header(header, 10, blob))
    return dst


def _raw_header(header, count: int, names_blob: bytes | None) -> bytes:
    """A header like ``header`` saying ``count`` images, names by index (None) or the given
    deflated blob, with a valid CRC and no records: what a hostile upload holds."""
    from vqgen.pipeline.codec.vqz import pack_header

    return pack_header(dataclasses.replace(header, count=count, images_per_stream=count),
                       names_blob)


if __name__ == "__main__":
    main()
