"""Intra-Fusion (IF; Theus et al., "Towards Meta-Pruning via Optimal Transport", ICLR 2024), data-free.

Specification: ``docs/intra_fusion.md`` (written from the reference code). For one unit
(producer -> BN -> channel-wise ops -> consumers), with the kept set chosen by the run's criterion:

1. Fold the BN into the producer: ``w_i <- w_i g_i / s_i``, ``b_i <- (b_i - mu_i) g_i / s_i + beta_i`` with
   ``s_i = sqrt(var_i)`` (``paper``: the reference's fold, no eps) or ``sqrt(var_i + eps)`` (``exact``).
2. Neuron features ``f_i = [w_i (folded), U_c[:, i] for every consumer c]``, each row divided by its L2 norm;
   ground cost ``C = cdist(f, f[kept], p)`` (p = 1 by default).
3. The exact optimal-transport plan ``G = emd(1/n, 1/k, C)`` (POT's network simplex, as the reference),
   transposed and column-normalised: ``T = G^T / G^T.sum(0)`` (k x n, every source neuron sums to 1).
4. Fusion, a *sum* (the reference's): kept producer rows ``w'_e = sum_a T[e, a] w_a`` and ``b'_e = sum_a T[e, a] b_a``;
   every consumer ``U'[:, e] = sum_a T[e, a] U[:, a]``, i.e. the delivery matrix ``S = T^T``.
   ``producer="mean"`` divides the producer rows by the row sums of ``T`` (an ablation, not in the reference:
   exact when a pruned neuron duplicates a kept one).
5. The BN is left as an identity that holds the fused bias: ``gamma = 1, beta = 0, mean = -b'`` and
   ``var = 1`` (``paper``: the output keeps the reference's ``1/sqrt(1 + eps)`` factor) or ``var = 1 - eps``
   (``exact``: no factor at all). A producer with its own bias takes ``b'`` there and the BN mean is 0.

No data, no lambda and no randomness. Units are restored independently from the original weights
(the reference's ``independent_original`` order; see the spec §2): the output-side fusion of a middle conv
and the input-side fusion of the unit before it act on different axes and commute. Channel-wise
passthrough modules (MobileNet-V2's depthwise conv) are sliced, not fused.

IF's own importance (spec §1.3) is the criterion ``IF-l1`` (``lbyl_pl.selection``, registered there so that
the criteria are complete whatever was imported): the mean over the unit's members (folded producer, each
consumer) of the L1 norm of a channel's weights. The BN fold and the consumer columns both use are
``lbyl_pl.units.folded_producer`` and ``consumer_columns``.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from ..surgery import selection_matrix
from ..units import consumer_columns, folded_producer
from .base import Hyperparameter, ProducerUpdate, RestorationMethod, UnitRestoration, check_choice, register
from .common import check_int, check_nonnegative

PRODUCER_RULES = ("sum", "mean")
DEFAULT_MAX_ITER = 100_000  # POT's default, which the reference does not raise


def _check_cost_p(value):
    value = check_nonnegative("cost_p", value)
    if value < 1:
        raise ValueError(f"cost_p must be >= 1 (the cost must be a metric), got {value!r}")
    return value


def _l2_rows(x: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norm.clamp_min(1e-300)  # a zero row stays zero (cost = L1 norm of the other row)


def transport_map(features: torch.Tensor, kept: list[int], p: float = 1.0, max_iter: int = DEFAULT_MAX_ITER,
                  float32_cost: bool = True, name: str = "unit") -> torch.Tensor:
    """``T`` (k x n, float64): the exact EMD plan between all neurons (uniform mass 1/n) and the kept ones
    (1/k) under the L_p cost of L2-normalised features, transposed and column-normalised; on the device of
    ``features``.

    The features and the cost are computed on that device; POT's network simplex (``ot.emd``, the reference's
    solver) takes numpy arrays, so only the (n, k) cost matrix goes to the CPU and the plan comes back."""
    import ot  # POT: Python Optimal Transport

    f = _l2_rows(features)
    if float32_cost:  # the reference builds the cost in float32
        f = f.float()
    cost = torch.cdist(f, f[torch.as_tensor(kept, dtype=torch.long, device=f.device)], p=p).double().cpu().numpy()
    n, k = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    b = torch.full((k,), 1.0 / k, dtype=torch.float64).numpy()
    plan, log = ot.emd(a, b, cost, numItermax=max_iter, log=True)
    if log.get("warning"):
        warnings.warn(f"Intra-Fusion {name}: the EMD solver stopped early ({log['warning']}); the plan may not "
                      f"be optimal: raise max_iter (now {max_iter})", RuntimeWarning, stacklevel=2)
    G = torch.from_numpy(plan).to(features.device).T  # k x n
    column = G.sum(dim=0, keepdim=True)
    if not bool((column > 0).all()):
        raise ValueError(f"Intra-Fusion {name}: the transport plan leaves a neuron without mass")
    return G / column


@register
class IntraFusion(RestorationMethod):
    name = "fusion"
    title = "IF"
    summary = ("Intra-Fusion (ICLR 2024): pruned neurons are fused into the kept ones (producer and consumers) "
               "along an exact optimal-transport plan; no lambda")
    hyperparameters = (
        Hyperparameter("producer", "sum", "sum: fused producer rows are sums, as the reference; mean: divided by "
                       "the plan's row sums (ablation)", check_choice("producer", PRODUCER_RULES)),
        Hyperparameter("cost_p", 1.0, "p of the L_p ground cost between L2-normalised neuron features",
                       _check_cost_p),
        Hyperparameter("max_iter", DEFAULT_MAX_ITER, "iteration cap of the network simplex (POT numItermax)",
                       lambda value: check_int("max_iter", value)),
    )

    supports_groups = True

    def _plan(self, features: torch.Tensor, kept: list[int], name: str) -> torch.Tensor:
        n = features.shape[0]
        if len(kept) == n:  # nothing pruned: every neuron is its own target
            return selection_matrix(n, kept, device=features.device).T
        return transport_map(features, kept, p=self.hparams["cost_p"], max_iter=self.hparams["max_iter"],
                             float32_cost=self.variant == "paper", name=name)

    def _fuse(self, layer, bn, weight, bias, T) -> ProducerUpdate:
        """The kept producer rows fused along ``T`` (k x n), and the BN left as an identity holding the fused bias
        (module docstring, steps 4-5)."""
        producer_rows = T
        if self.hparams["producer"] == "mean":
            producer_rows = T / T.sum(dim=1, keepdim=True)
        m = T.shape[0]
        fused_weight = (producer_rows @ weight).reshape(m, *layer.weight.shape[1:])
        fused_bias = producer_rows @ bias if bias is not None else None
        update = ProducerUpdate(fused_weight)
        if bn is not None:
            eps = float(bn.eps)
            held_in_bn = layer.bias is None  # the fused bias lives in the BN mean
            update.bn = {"weight": weight.new_ones(m), "bias": weight.new_zeros(m),
                         "running_mean": -fused_bias if held_in_bn else weight.new_zeros(m),
                         "running_var": weight.new_full((m,), 1.0 if self.variant == "paper" else 1.0 - eps)}
            if not held_in_bn:
                update.bias = fused_bias
        elif fused_bias is not None:
            update.bias = fused_bias
        return update

    def restore_unit(self, unit, tensors, kept):
        weight, bias = folded_producer(unit, self.variant)  # float64, where the unit's weights are
        T = self._plan(torch.cat([weight, *consumer_columns(unit)], dim=1), kept, unit.name)
        return UnitRestoration(T.T.contiguous(), self._fuse(unit.layer, unit.bn, weight, bias, T))

    def restore_group(self, group, kept):
        """A coupled group (``docs/groups_and_budgets.md`` §3): one plan from the features of every producer (BN
        folded where a BN reads it directly) and every reader; each producer's kept rows fused along it, every reader
        receiving ``S = T^T`` at the group's positions. BNs that read the channels elsewhere (a concatenation's
        readers) and depthwise convs are sliced. Returns ``(new rows by producer name, S)``."""
        if group.cells:
            raise ValueError(f"Intra-Fusion on group {group.name!r} ({group.kind}): a transport plan would mix the "
                             "channels of different groups of a grouped conv; use method='prune' (with refit=True)")
        bn_of = dict(group.bn_of)
        modules = {m.name: m.module for m in group.members}
        folded, features = [], []
        for member in group.producers:
            rows = torch.as_tensor([p[0] for p in member.positions], dtype=torch.long,
                                   device=member.module.weight.device)
            source = SimpleNamespace(layer=member.module, bn=modules.get(bn_of.get(member.name)), name=member.name)
            weight, bias = folded_producer(source, self.variant)
            weight, bias = weight[rows], (bias[rows] if bias is not None else None)
            folded.append((member, source.bn, weight, bias))
            features.append(weight.to(rows.device))
        for member in group.members:
            if member.role == "in":
                U = member.module.weight.detach().to(torch.float64)
                index = torch.as_tensor(member.positions, dtype=torch.long, device=U.device)  # (n, r)
                read = U[:, index.flatten()].reshape(U.shape[0], *index.shape, *U.shape[2:])
                features.append(read.movedim(1, 0).reshape(group.n_channels, -1).to(features[0].device))
        T = self._plan(torch.cat(features, dim=1), kept, group.name)
        updates = {member.name: self._fuse(member.module, bn, weight, bias, T) for member, bn, weight, bias in folded}
        return updates, T.T.contiguous()
