"""The one place vqgen's version is written: pyproject.toml reads it (``dynamic``), the
checkpoint stamp and ``vqgen.__version__`` import it."""

__version__ = "0.1.0"
