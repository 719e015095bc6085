"""Neuron Merging (NM): one-to-one compensation (``method.md`` §4).

Each pruned filter is merged into at most one kept filter. For BN units the partner minimises
``lambda * cosine distance + (1 - lambda) * normalised bias mismatch``; for fully-connected units
(LeNet) it is the kept row of largest cosine similarity on ``[w, b]``. With ``threshold > 0`` a
pruned filter whose chosen partner has cosine similarity below the threshold is left uncompensated.
"""
from __future__ import annotations

import torch

from ..surgery import selection_matrix
from ..units import UnitTensors
from .common import bn_gamma_sigma, check_nonnegative, check_variant, pruned_indices


def _cosine_and_norms(Wp: torch.Tensor, Wk: torch.Tensor):
    norm_p = torch.linalg.vector_norm(Wp, dim=1)
    norm_k = torch.linalg.vector_norm(Wk, dim=1)
    denom = norm_p[:, None] * norm_k[None, :]
    # A zero filter has no direction: its cosine similarity is defined as 0 (never above a threshold).
    cos = torch.where(denom > 0, (Wp @ Wk.T) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return cos, norm_p, norm_k


def merge_delivery(t: UnitTensors, kept: list[int], *, threshold: float, nm_lambda: float,
                   variant: str = "paper") -> torch.Tensor:
    check_variant(variant)
    threshold = check_nonnegative("threshold", threshold)  # above 1, nothing is merged
    nm_lambda = check_nonnegative("nm_lambda", nm_lambda)
    if nm_lambda > 1.0:
        raise ValueError(f"nm_lambda must be in [0, 1], got {nm_lambda!r}")
    n = t.weight.shape[0]
    S = selection_matrix(n, kept)
    P = pruned_indices(n, kept)
    if len(P) == 0:
        return S
    k = torch.as_tensor(kept, dtype=torch.long)
    Wk, Wp = t.weight[k], t.weight[P]
    cos, norm_p, norm_k = _cosine_and_norms(Wp, Wk)
    usable = norm_k[None, :].expand_as(cos) > 0
    ratio = norm_p[:, None] / norm_k.clamp_min(1e-300)[None, :]

    if not t.has_bn:  # fully-connected (§4.2): max cosine similarity, scale = norm ratio
        best = torch.where(usable, cos, torch.full_like(cos, -torch.inf)).argmax(dim=1)
        scale = ratio.gather(1, best[:, None])[:, 0]
    else:
        gamma, sigma = bn_gamma_sigma(t, variant)
        gp, sp, bp, mp = gamma[P, None], sigma[P, None], t.beta[P, None], t.mean[P, None]
        gc, sc, bc, mc = gamma[None, k], sigma[None, k], t.beta[None, k], t.mean[None, k]
        if variant == "paper":
            # Reference form: the exact formula with the roles of p and c swapped (§4.1 caveat).
            scale_all = ratio * (gc / gp) * (sp / sc)
            bias_all = ((gc / sc) * (ratio * (mp - sp * bp / gp) - mc) + bc).abs()
        else:
            scale_all = ratio * (gp / gc) * (sc / sp)
            bias_all = ((gp / sp) * (ratio * (mc - sc * bc / gc) - mp) + bp).abs()
        bias_all = bias_all / scale_all
        bias_all = torch.where(usable, bias_all, torch.full_like(bias_all, torch.nan))
        lo = torch.nan_to_num(bias_all, nan=torch.inf).min(dim=1, keepdim=True).values
        hi = torch.nan_to_num(bias_all, nan=-torch.inf).max(dim=1, keepdim=True).values
        span = hi - lo
        # One candidate (or equal mismatches) makes the min-max normalisation 0/0 (§5.6.6): use 0.
        bias_norm = torch.where(span > 0, (bias_all - lo) / torch.where(span > 0, span, 1.0),
                                torch.zeros_like(bias_all))
        score = nm_lambda * (1.0 - cos) + (1.0 - nm_lambda) * bias_norm
        score = torch.where(usable & torch.isfinite(score), score, torch.full_like(score, torch.inf))
        best = score.argmin(dim=1)
        scale = scale_all.gather(1, best[:, None])[:, 0]
    best_cos = cos.gather(1, best[:, None])[:, 0]
    has_partner = usable.gather(1, best[:, None])[:, 0]
    merged = has_partner & ~((threshold > 0) & (best_cos < threshold))
    S[P[merged], best[merged]] = scale[merged]
    return S
