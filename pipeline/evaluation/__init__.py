"""The measurements behind ``vqgen evaluate`` (driver: :mod:`pipeline.evaluate`), one module
per concern: ``data``, ``stage1``, ``stage2``, ``classifier``, ``samples``."""
