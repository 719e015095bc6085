"""Neuron Merging (NM): one-to-one compensation (``docs/method.md`` §4).

Each pruned filter is merged into at most one kept filter. For BN units the partner minimises
``lambda * cosine distance + (1 - lambda) * normalised bias mismatch``; for fully-connected units
(LeNet) it is the kept row of largest cosine similarity on ``[w, b]``. With ``threshold > 0`` a
pruned filter whose chosen partner has cosine similarity below the threshold is left uncompensated.
"""
from __future__ import annotations

import copy

import torch

from ..surgery import selection_matrix
from ..units import UnitTensors
from .base import Hyperparameter, RestorationMethod, UnitRestoration, register
from .common import bn_gamma_sigma, check_nonnegative, check_variant, kept_indices, pruned_indices

# The Neuron Merging scripts' threshold for conv nets; a network may set its own
# (``default_nm_threshold``: 0.45 for LeNet-300-100, docs/method.md §12.2).
DEFAULT_THRESHOLD = 0.1


def _cosine_and_norms(Wp: torch.Tensor, Wk: torch.Tensor):
    norm_p = torch.linalg.vector_norm(Wp, dim=1)
    norm_k = torch.linalg.vector_norm(Wk, dim=1)
    denom = norm_p[:, None] * norm_k[None, :]
    # A zero filter has no direction: its cosine similarity is defined as 0 (never above a threshold).
    cos = torch.where(denom > 0, (Wp @ Wk.T) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return cos, norm_p, norm_k


def check_threshold(value):
    return None if value is None else check_nonnegative("threshold", value)  # above 1, nothing is merged


def check_nm_lambda(value):
    value = check_nonnegative("nm_lambda", value)
    if value > 1.0:
        raise ValueError(f"nm_lambda must be in [0, 1], got {value!r}")
    return value


def merge_delivery(t: UnitTensors, kept: list[int], *, threshold: float, nm_lambda: float,
                   variant: str = "paper") -> torch.Tensor:
    check_variant(variant)
    threshold = check_nonnegative("threshold", threshold)
    nm_lambda = check_nm_lambda(nm_lambda)
    n, device = t.weight.shape[0], t.weight.device  # computed where the unit's weights are
    S = selection_matrix(n, kept, device=device)
    P = pruned_indices(n, kept, device=device)
    if len(P) == 0:
        return S
    k = kept_indices(kept, device=device)
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


@register
class NeuronMerging(RestorationMethod):
    name = "merge"
    title = "NM"
    summary = "Neuron Merging (NeurIPS 2020): each pruned filter is merged into its most similar kept filter"
    hyperparameters = (
        Hyperparameter("threshold", None, "cosine-similarity threshold below which a pruned filter is not merged "
                       f"(None: the network's default_nm_threshold, else {DEFAULT_THRESHOLD})", check_threshold),
        Hyperparameter("nm_lambda", 0.85, "weight of the cosine distance against the BN bias mismatch, in [0, 1]",
                       check_nm_lambda),
    )
    config_table = "nm"
    table_hparams = ("threshold", "nm_lambda")
    # published NM t in [0, 0.5], lambda mostly in [0.5, 1.0]
    auto_grid = {"threshold": (0.0, 0.1, 0.2, 0.3, 0.45), "nm_lambda": (0.65, 0.85, 1.0)}

    def bind(self, model):
        if self.hparams["threshold"] is not None:
            return self
        bound = copy.copy(self)  # the object itself stays unbound, usable on another network
        bound.hparams = dict(self.hparams, threshold=check_threshold(
            getattr(model, "default_nm_threshold", DEFAULT_THRESHOLD)))
        return bound

    def restore_unit(self, unit, tensors, kept):
        if self.hparams["threshold"] is None:
            raise ValueError("NeuronMerging: threshold is None; call bind(model) first or set it")
        return UnitRestoration(merge_delivery(tensors, kept, variant=self.variant, **self.hparams))
