"""The pretrained models installed with vqgen (``vqgen.checkpoints``): ``mnist/`` and
``cifar10/``, each a pair folder (see :mod:`vqgen.pipeline.export`), loaded by name:
``--prior mnist``, ``Pipeline.from_pretrained("cifar10")``. Everything else in this folder of
a source checkout is the default output root of the verbs (git-ignored, never installed)."""
