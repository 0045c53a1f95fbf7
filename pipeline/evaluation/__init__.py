"""The measurements behind ``vqgen evaluate`` (driver: :mod:`pipeline.evaluation.evaluate`), one module
per concern: ``data``, ``stage1``, ``stage2``, ``classifier``, ``samples``."""
