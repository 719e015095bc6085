"""BatchNorm algebra shared by Neuron Merging and LBYL (``docs/method.md`` §0, §8)."""
from __future__ import annotations

import torch

from ..units import BN_FLOOR as _BN_FLOOR, UnitTensors

VARIANTS = ("paper", "exact")

# |gamma| and sigma are clamped to this floor: the reference has no guard and would divide by zero
# (docs/method.md §5.2 "Edge cases", §12.4). A clamped channel behaves as a channel with a tiny scale.
BN_FLOOR = _BN_FLOOR  # 1e-12, defined with the unit types (Intra-Fusion's BN fold uses it too)


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)} "
                         "('paper' reproduces the published tables, 'exact' uses the exact BN algebra)")


def check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum`` (1: positive, 0: non-negative)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else ("a non-negative integer" if minimum == 0
                                                          else f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def bn_gamma_sigma(t: UnitTensors, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamped ``gamma`` and the BN scale denominator ``sigma``.

    ``paper``: sigma is the running *variance* (no sqrt, no eps), as both reference codes use it.
    ``exact``: sigma = sqrt(running_var + eps), the true inference-time denominator.
    """
    gamma = torch.where(t.gamma.abs() < BN_FLOOR, torch.where(t.gamma < 0, -BN_FLOOR, BN_FLOOR), t.gamma)
    if variant == "paper":
        sigma = t.var.clamp_min(BN_FLOOR)
    else:
        sigma = torch.sqrt(t.var.clamp_min(0.0) + t.eps)
    return gamma, sigma


def pruned_indices(n: int, kept: list[int], device=None) -> torch.Tensor:
    """The pruned channels (ascending), a long tensor on ``device`` (default the CPU)."""
    mask = torch.ones(n, dtype=torch.bool, device=device)
    mask[torch.as_tensor(kept, dtype=torch.long, device=mask.device)] = False
    return torch.nonzero(mask).flatten()


def kept_indices(kept: list[int], device=None) -> torch.Tensor:
    """``kept`` as a long tensor on ``device`` (default the CPU)."""
    return torch.as_tensor(kept, dtype=torch.long, device=device)
