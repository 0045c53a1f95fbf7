"""Which class-conditional sampling settings work: a grid over classifier-free guidance x
temperature on a finished demo, scored like ``vqgen evaluate`` scores its samples.

    python benchmarks/guidance.py --demo checkpoints/demo [--num 1000]
    python benchmarks/guidance.py --smoke    # tiny demo, 10 samples x 2 settings: seconds

For each (guidance, temperature): class accuracy (the project's classifier reads the requested
class), Fréchet distance of classifier features to the held-out split, and precision / recall
(Kynkäänniemi et al. 2019, k = 3) against it. Prints one JSON line per setting, then one JSON
object for the whole grid; ``vqgen sample``'s class-conditional defaults (pipeline/defaults.py)
were chosen from its output.

``--smoke`` trains a tiny demo-shaped pair and a one-epoch classifier in a temp folder and
scores 10 samples at guidance 1 and 2: a check that the benchmark runs, its numbers measure
nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default=None, help="a finished `vqgen demo` folder "
                    "(default checkpoints/demo; smoke: a tiny one trained first)")
    ap.add_argument("--num", type=int, default=None, help="samples per setting (default 1000; smoke 10)")
    ap.add_argument("--guidance", default=None, help="default 1,2,3,4 (smoke 1,2)")
    ap.add_argument("--temperature", default=None, help="default 0.9,1.0 (smoke 1.0)")
    ap.add_argument("--cache", default=None,
                    help="classifier cache (default DATA_ROOT/.vqgen_cache; smoke: a temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny models, 10 samples: checks it runs")
    args = ap.parse_args(argv)
    smoke = args.smoke
    num = args.num or (10 if smoke else 1000)
    guidances = args.guidance or ("1,2" if smoke else "1,2,3,4")
    temperatures = args.temperature or ("1.0" if smoke else "0.9,1.0")

    from vqgen.pipeline import metrics as M
    from vqgen.pipeline.evaluation.classifier import CLASSIFIER_CONFIG, get_classifier
    from vqgen.pipeline.evaluation.data import eval_datasets, load_images
    from vqgen.pipeline.evaluation.samples import classify, even_labels, score_samples
    from vqgen.pipeline.generate import load_pair, sample

    with tempfile.TemporaryDirectory(prefix="vqgen_guidance_") as tmp:
        config = CLASSIFIER_CONFIG
        demo = Path(args.demo or "checkpoints/demo")
        cache = Path(args.cache) if args.cache else None
        if smoke:
            from benchmarks._smoke import tiny_classifier_config, tiny_demo

            demo = Path(args.demo) if args.demo else tiny_demo(Path(tmp) / "demo")
            cache = cache or Path(tmp) / "classifier"
            config = tiny_classifier_config()
        prior, vqvae = load_pair(demo / "prior" / "last.ckpt")
        train_ds, eval_ds = eval_datasets(vqvae)
        cache = cache or Path(vqvae.hparams.data_root) / ".vqgen_cache"
        classifier, _ = get_classifier(train_ds, cache, val_fraction=float(vqvae.hparams.val_fraction),
                                       split_seed=int(vqvae.hparams.seed), config=config,
                                       log=lambda s: None)
    eval_feats, eval_pred = classify(classifier, load_images(eval_ds))
    k = int(prior.model.num_classes)
    labels = even_labels(num, k)
    rows = []
    for g in (float(v) for v in guidances.split(",")):
        for t in (float(v) for v in temperatures.split(",")):
            t0 = time.monotonic()
            res = sample(prior, vqvae, num, labels=labels, guidance=g, temperature=t, seed=args.seed)
            s = score_samples(classifier, M.quantize_8bit(res.images), labels, eval_feats, k)
            rows.append({"guidance": g, "temperature": t,
                         "class_accuracy": round(s["class_accuracy"], 4), "fd": round(s["fd"], 3),
                         "precision": round(s["precision"], 4), "recall": round(s["recall"], 4),
                         "seconds": round(time.monotonic() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "guidance", "smoke": smoke, "demo": str(demo), "num_per_setting": num,
              "num_eval": len(eval_ds),
              "classifier_heldout_accuracy": float((eval_pred == eval_ds.labels).mean()),
              "grid": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
