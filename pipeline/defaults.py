"""Defaults and examples shared by the CLI, the demo and the evaluation library.

Plain constants (no torch), so both the parser and library modules can import them
without importing each other.
"""

from __future__ import annotations

# CPU-sized demo: within 150 s on a quiet 2-core machine (45 s of stage one, ~85 s of prior)
DEMO_VQVAE_EPOCHS = 16
DEMO_PRIOR_EPOCHS = 14
DEMO_GUIDANCE = 3.0  # classifier-free guidance: clearly class-like digits (README, the demo grid)
DEMO_TEMPERATURE = 0.9

# `vqgen sample` with --class / --per-class (benchmarks/guidance.py on the demo, 1,000 samples
# per setting): guidance 1 -> 71% right class, classifier FD 41.5, precision 0.81, recall 0.61;
# guidance 2, temperature 0.9 -> 94%, FD 17.2, precision 0.88 (the best), recall 0.60 (kept);
# guidance 3 -> 98%, FD 16.2, but recall falls to 0.47 (less variety within a class); 4 is
# worse on every count. 0.9 beat 1.0 on FD at every guidance. Without a class: guidance 1
# (guidance needs a class) and temperature 1.
SAMPLE_GUIDANCE = 2.0
SAMPLE_TEMPERATURE = 0.9
SAMPLE_NUM = 64          # `vqgen sample` without --num, Pipeline.sample() without num
SAMPLE_BATCH_SIZE = 64


def sampling_defaults(conditional: bool) -> tuple[float, float]:
    """(guidance, temperature) `vqgen sample`, `Pipeline.sample` and the app use when not
    given: the measured pair above with a class, (1, 1) without (guidance needs a class)."""
    return (SAMPLE_GUIDANCE, SAMPLE_TEMPERATURE) if conditional else (1.0, 1.0)


# `vqgen inpaint` / `repair` and Pipeline.inpaint / repair
INPAINT_NUM = 8          # completions kept per input (inpaint)
REPAIR_NUM = 1           # completions kept per input (repair)
INPAINT_GROW = 0         # code cells added around the mask
INPAINT_FEATHER = 2      # pixels of blend at the mask's edge when pasting
REPAIR_THRESHOLD = 6.0   # bits: benchmarks/inpaint.py (noise blocks: 6 repairs more than 8)

# samples of each kind that `vqgen evaluate` draws for its sample metrics
DEFAULT_NUM_SAMPLES = 2000

# the runnable example at the end of each verb's --help (and in `vqgen --help`)
EXAMPLES = {
    "train-vqvae": "vqgen train-vqvae --data mnist5k --out runs/mnist/vqvae",
    "encode": "vqgen encode --vqvae runs/mnist/vqvae/last.ckpt --data mnist5k "
    "--out runs/mnist/codes",
    "reconstruct": "vqgen reconstruct --vqvae runs/mnist/vqvae/last.ckpt --data mnist5k "
    "--split val --out recon.png",
    "decode": "vqgen decode --vqvae runs/mnist/vqvae/last.ckpt "
    "--codes runs/mnist/codes/val --out decoded/",
    "train-prior": "vqgen train-prior --codes runs/mnist/codes --out runs/mnist/prior",
    "sample": "vqgen sample --prior runs/mnist/prior/last.ckpt --num 64 --out samples/",
    "demo": "vqgen demo --out checkpoints/demo",
    "evaluate": "vqgen evaluate --vqvae runs/mnist/vqvae/last.ckpt "
    "--prior runs/mnist/prior/last.ckpt --data mnist5k --out report/",
    "compress": "vqgen compress --prior checkpoints/demo/prior/last.ckpt --data mnist5k "
    "--split val --out val.vqz --report codec.json",
    "decompress": "vqgen decompress val.vqz --out decoded/",
    "inpaint": "vqgen inpaint --prior checkpoints/demo/prior/last.ckpt --data mnist5k --split val "
    "--index 0:16 --box 0,14,28,28 --num 4 --out fixes/",
    "repair": "vqgen repair --prior checkpoints/demo/prior/last.ckpt --data mnist5k --split val "
    "--index 0:64 --out repaired/",
    "serve": "vqgen serve --prior checkpoints/demo/prior/last.ckpt",
    "export": "vqgen export checkpoints/demo --out my-mnist --evaluate",
}
