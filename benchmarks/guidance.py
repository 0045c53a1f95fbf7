"""Which class-conditional sampling settings work: a grid over classifier-free guidance x
temperature on a finished demo, scored like ``vqgen evaluate`` scores its samples.

    python benchmarks/guidance.py --demo checkpoints/demo [--num 1000]

For each (guidance, temperature): class accuracy (the project's classifier reads the requested
class), Fréchet distance of classifier features to the held-out split, and precision / recall
(Kynkäänniemi et al. 2019, k = 3) against it. Prints one JSON object; ``vqgen sample``'s
class-conditional defaults (pipeline/defaults.py) were chosen from its output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default="checkpoints/demo")
    ap.add_argument("--num", type=int, default=1000, help="samples per setting")
    ap.add_argument("--guidance", default="1,2,3,4")
    ap.add_argument("--temperature", default="0.9,1.0")
    ap.add_argument("--cache", default=None, help="classifier cache (default DATA_ROOT/.vqgen_cache)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from vqgen.pipeline import metrics as M
    from vqgen.pipeline.evaluation.classifier import get_classifier
    from vqgen.pipeline.evaluation.data import eval_datasets, load_images
    from vqgen.pipeline.evaluation.samples import classify, even_labels, score_samples
    from vqgen.pipeline.generate import load_pair, sample

    prior, vqvae = load_pair(Path(args.demo) / "prior" / "last.ckpt")
    train_ds, eval_ds = eval_datasets(vqvae)
    cache = Path(args.cache or Path(vqvae.hparams.data_root) / ".vqgen_cache")
    classifier, _ = get_classifier(train_ds, cache, val_fraction=float(vqvae.hparams.val_fraction),
                                   split_seed=int(vqvae.hparams.seed), log=lambda s: None)
    eval_feats, eval_pred = classify(classifier, load_images(eval_ds))
    k = int(prior.model.num_classes)
    labels = even_labels(args.num, k)
    rows = []
    for g in (float(v) for v in args.guidance.split(",")):
        for t in (float(v) for v in args.temperature.split(",")):
            t0 = time.monotonic()
            res = sample(prior, vqvae, args.num, labels=labels, guidance=g, temperature=t,
                         seed=args.seed)
            s = score_samples(classifier, M.quantize_8bit(res.images), labels, eval_feats, k)
            rows.append({"guidance": g, "temperature": t,
                         "class_accuracy": round(s["class_accuracy"], 4), "fd": round(s["fd"], 3),
                         "precision": round(s["precision"], 4), "recall": round(s["recall"], 4),
                         "seconds": round(time.monotonic() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"demo": args.demo, "num_per_setting": args.num, "num_eval": len(eval_ds),
                      "classifier_heldout_accuracy": float((eval_pred == eval_ds.labels).mean()),
                      "grid": rows}))


if __name__ == "__main__":
    main()
