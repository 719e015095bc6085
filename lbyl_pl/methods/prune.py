"""Plain structural pruning (``method.md`` §3): drop the channels, compensate nothing."""
from __future__ import annotations

import torch

from ..surgery import selection_matrix
from ..units import UnitTensors


def prune_delivery(t: UnitTensors, kept: list[int]) -> torch.Tensor:
    return selection_matrix(t.weight.shape[0], kept)
