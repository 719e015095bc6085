"""How far a restored network is from the original on inputs, with no labels (lower is better)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distill import _EvalMode, _forward, _param

__all__ = ["SCORES", "rank_correlation", "score"]

SCORES = ("kl", "agreement", "mse")


# --------------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with _EvalMode(model):
        x = inputs.to(dtype=_param(model).dtype, device=_param(model).device)
        return torch.cat([_forward(model, x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


def _score_logits(reference: torch.Tensor, logits: torch.Tensor, metric: str) -> float:
    reference, logits = reference.double(), logits.double()
    if metric == "kl":
        p_log = F.log_softmax(reference, dim=1)
        q_log = F.log_softmax(logits, dim=1)
        return float((p_log.exp() * (p_log - q_log)).sum(dim=1).mean())
    if metric == "agreement":
        return float(1.0 - (reference.argmax(1) == logits.argmax(1)).double().mean())
    if metric == "mse":
        return float((reference - logits).pow(2).mean())
    raise ValueError(f"unknown score metric {metric!r}; allowed: {', '.join(SCORES)}")


def score(original: nn.Module, restored: nn.Module, inputs: torch.Tensor, metric: str = "kl") -> float:
    """How far ``restored`` is from ``original`` on ``inputs``, with no labels. **Lower is better**; 0 means
    identical outputs.

    ``metric``: ``"kl"`` (default) is the mean over inputs of KL(softmax(original) || softmax(restored)),
    the original's output distribution as the target; ``"agreement"`` is the top-1 *disagreement* rate
    (1 - fraction of inputs whose argmax class is the same); ``"mse"`` is the mean squared difference of
    the logits. Both networks run in eval mode (their modes are restored afterwards).
    """
    if metric not in SCORES:
        raise ValueError(f"unknown score metric {metric!r}; allowed: {', '.join(SCORES)}")
    return _score_logits(_logits(original, inputs), _logits(restored, inputs), metric)


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (average ranks for ties); ``nan`` when one
    of them is constant. To check that the data-free score can be trusted, correlate ``-score`` with the
    accuracy over the grid: +1 means the score orders the grid exactly as the accuracy does."""
    a = torch.as_tensor(list(a), dtype=torch.float64)
    b = torch.as_tensor(list(b), dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ValueError("rank_correlation needs two sequences of the same length (at least 2)")

    def ranks(v):
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in torch.unique(v):  # average ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float(ra @ rb / denom) if denom > 0 else float("nan")
