"""vqgen: two-stage image generation, a VQ-VAE (stage one) and a gated PixelCNN prior over
its codes (stage two).

The design card's three folders are this package's subpackages, linked into ``src/vqgen/``
so that installs, editors and type checkers see one ordinary package::

    vqgen.stage1_vqvae   images <-> codes
    vqgen.stage2_prior   a prior over code maps
    vqgen.pipeline       both stages: CLI, sampling, editing, codec, app, evaluation
    vqgen.checkpoints    the shipped pretrained models (mnist, cifar10)

The public Python API is importable from here by name (``from vqgen import Pipeline``:
the shipped models and every verb as a method; the free functions ``load_pair``, ``sample``,
... underneath it); each name is loaded on first use, so ``import vqgen`` alone stays light (no
torch).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__

# name -> module that defines it (relative to this package)
_API = {
    "Pipeline": ".pipeline.api",
    "build_dataset": ".stage1_vqvae.data",
    "load_vqvae": ".stage1_vqvae.lit",
    "read_code_maps": ".stage1_vqvae.codes",
    "write_code_maps": ".stage1_vqvae.codes",
    "load_prior": ".stage2_prior.lit",
    "load_pair": ".pipeline.generate",
    "sample": ".pipeline.generate",
    "inpaint": ".pipeline.edit.inpaint",
    "compress": ".pipeline.codec.coder",
    "decompress": ".pipeline.codec.coder",
}

__all__ = [  # written out for static tools; tests/test_structure.py checks it matches _API
    "Pipeline", "__version__", "build_dataset", "compress", "decompress", "inpaint", "load_pair",
    "load_prior", "load_vqvae", "read_code_maps", "sample", "write_code_maps",
]

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ loads lazily
    from .pipeline.api import Pipeline
    from .pipeline.codec.coder import compress, decompress
    from .pipeline.edit.inpaint import inpaint
    from .pipeline.generate import load_pair, sample
    from .stage1_vqvae.codes import read_code_maps, write_code_maps
    from .stage1_vqvae.data import build_dataset
    from .stage1_vqvae.lit import load_vqvae
    from .stage2_prior.lit import load_prior

_here = Path(__file__).resolve().parent
for _sub in ("stage1_vqvae", "stage2_prior", "pipeline", "checkpoints"):
    if not (_here / _sub / "__init__.py").is_file():
        # a checkout made without symlinks (Windows' default) holds small text files here
        raise ImportError(
            f"vqgen is incomplete: {_here / _sub} is not a link to the repository's {_sub}/ folder; "
            "clone with symlinks enabled (git clone -c core.symlinks=true ...) and reinstall"
        )


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name], __name__), name)
        globals()[name] = value  # loaded once
        return value
    raise AttributeError(f"module 'vqgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
