"""Which torch device "auto" and a user's device string mean (CLI, Pipeline, app)."""

from __future__ import annotations

from .errors import UserError


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else mps, else cpu. Any other value must name a
    device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``), else UserError."""
    import torch

    if device != "auto":
        try:
            d = torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {device!r} is not a device; expected auto, cpu, cuda, "
                             "cuda:N or mps") from None
        mps = getattr(torch.backends, "mps", None)
        if d.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no CUDA device torch can use; "
                             "pass --device cpu (or auto)")
        if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                             f"device(s) here (cuda:0..cuda:{torch.cuda.device_count() - 1})")
        if d.type == "mps" and not (mps and mps.is_available()):
            raise UserError(f"--device {device}: MPS is not available here; pass --device cpu")
        if d.type not in ("cpu", "cuda", "mps"):
            raise UserError(f"--device {device!r}: vqgen runs on cpu, cuda or mps")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
