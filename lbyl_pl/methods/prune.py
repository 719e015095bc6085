"""Plain structural pruning (``docs/method.md`` §3): drop the channels, compensate nothing."""
from __future__ import annotations

import torch

from ..surgery import selection_matrix
from ..units import UnitTensors
from .base import RestorationMethod, UnitRestoration, register


def prune_delivery(t: UnitTensors, kept: list[int]) -> torch.Tensor:
    return selection_matrix(t.weight.shape[0], kept, device=t.weight.device)


@register
class Prune(RestorationMethod):
    name = "prune"
    title = "prune"
    summary = "drops the pruned channels; nothing is compensated"
    supports_groups = True

    def restore_unit(self, unit, tensors, kept):
        return UnitRestoration(prune_delivery(tensors, kept))
