"""The one range check for seeds, shared by the CLI's ``--seed`` and the library calls the
page and Python users make (a seed of -1 reached torch and came back as "internal error")."""

from __future__ import annotations

from vqgen.stage1_vqvae.runtime.errors import UserError

MAX_SEED = 2**32 - 1  # what every seeded library here accepts (Lightning's seed_everything)


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` as an int in [0, 2**32 - 1], else UserError naming ``what``."""
    try:
        v = int(seed)  # type: ignore[call-overload]
        if v != seed and not isinstance(seed, str):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} {seed!r} is not an integer seed") from None
    if not 0 <= v <= MAX_SEED:
        raise UserError(f"{what} {seed} must be in [0, {MAX_SEED}] (2**32 - 1)")
    return v
