"""Surgery: build the physically smaller network from kept indices and delivery matrices.

For every unit the layer keeps rows ``k`` (and its BN is sliced to ``k``), channel-wise passthrough
modules keep channels ``k``, and each consumer's input channels are replaced by ``U' = U S``
(``method.md`` §5.3), where ``S`` (``n x m``) is the delivery matrix a restoration method computed.
Modules are resized in place on a deep copy, so their classes and attributes are kept.
A module may be both a consumer and a pruned layer (ResNet bottleneck conv2): its input-side
compensation and output-side slicing act on different axes and commute (§5.5).

The input model is never modified: surgery works on a deep copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .units import BN_TYPES, PrunableUnit

__all__ = ["UnitPlan", "apply_plans", "selection_matrix"]


@dataclass
class UnitPlan:
    unit: PrunableUnit
    kept: list[int]
    delivery: torch.Tensor  # (n, m) float64


def selection_matrix(n: int, kept: list[int]) -> torch.Tensor:
    """``S`` of plain pruning: identity on the kept rows, zero on the pruned ones."""
    S = torch.zeros(n, len(kept), dtype=torch.float64)
    S[torch.as_tensor(kept, dtype=torch.long), torch.arange(len(kept))] = 1.0
    return S


def _resize(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give ``module`` (a Conv2d or Linear of the copied network) new weights and matching sizes, in
    place, so that subclasses, hooks and every other attribute survive the surgery."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            # Only one-to-one depthwise convs are sliced (discovery checks it): one group per channel.
            module.groups = weight.shape[0]
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    else:  # pragma: no cover - units only hold Conv2d/Linear layers
        raise TypeError(f"cannot resize a {type(module).__name__}")
    # The copy shares the original's tensors until here (apply_plans): never keep one of them.
    if weight.data_ptr() == module.weight.data_ptr():
        weight = weight.clone()
    module.weight = nn.Parameter(weight.contiguous(), requires_grad=module.weight.requires_grad)
    if bias is not None:
        module.bias = nn.Parameter(bias.clone().contiguous(), requires_grad=module.bias.requires_grad)


def _slice_bn(bn: nn.Module, kept: torch.Tensor) -> None:
    """Keep channels ``kept`` of a BatchNorm, in place."""
    kept = kept.to((bn.weight if bn.weight is not None else bn.running_mean).device)
    bn.num_features = len(kept)
    if bn.affine:
        bn.weight = nn.Parameter(bn.weight.detach()[kept].clone(), requires_grad=bn.weight.requires_grad)
        bn.bias = nn.Parameter(bn.bias.detach()[kept].clone(), requires_grad=bn.bias.requires_grad)
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[kept].clone()
        bn.running_var = bn.running_var[kept].clone()


def _deliver(w: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``einsum("oi...,ij->oj...", w, S)`` as one matrix product (input channels last, then back)."""
    moved = w.movedim(1, -1)
    out = (moved.reshape(-1, moved.shape[-1]) @ S).reshape(*moved.shape[:-1], S.shape[1])
    return out.movedim(-1, 1)


def _apply_input_delivery(weight: torch.Tensor, delivery: torch.Tensor, features: int,
                          kept: torch.Tensor) -> torch.Tensor:
    """``U'[o, j, ...] = sum_i U[o, i, ...] S[i, j]``, computed in float64.

    A Linear after a flatten reads channel ``i`` through inputs ``[i*r, (i+1)*r)`` (``features = r``):
    the same ``S`` acts on each of those ``r`` positions. Rows of ``S`` that are a kept channel's unit
    vector only select a column, so only the pruned rows that deliver something are multiplied
    (plain pruning is a pure selection; NM delivers to one column per pruned row).
    """
    w = weight.detach()
    if features > 1:
        w = w.reshape(w.shape[0], -1, features)
    delivery = delivery.to(weight.device)
    columns = kept.to(weight.device)
    if torch.equal(delivery[columns], torch.eye(len(columns), dtype=delivery.dtype, device=delivery.device)):
        rest = delivery.clone()
        rest[columns] = 0.0
        rows = torch.nonzero(rest.abs().sum(dim=1)).flatten()
        if not len(rows):  # a pure selection (plain pruning): no arithmetic, no float64 round trip
            out = w.index_select(1, columns)
            return out.reshape(out.shape[0], -1) if features > 1 else out
        out = w.index_select(1, columns).to(torch.float64)
        out += _deliver(w.index_select(1, rows).to(torch.float64), rest[rows])
    else:
        out = _deliver(w.to(torch.float64), delivery)
    if features > 1:
        out = out.reshape(out.shape[0], -1)
    return out.to(weight.dtype)


def apply_plans(model: nn.Module, plans: list[UnitPlan]) -> nn.Module:
    """Return a pruned deep copy of ``model`` (which is left untouched)."""
    names = {id(m): n for n, m in model.named_modules()}
    out_kept: dict[str, torch.Tensor] = {}
    in_delivery: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}
    bn_kept: dict[str, torch.Tensor] = {}
    for plan in plans:
        kept = torch.as_tensor(plan.kept, dtype=torch.long)
        unit = plan.unit
        if plan.delivery.shape != (unit.n_channels, len(plan.kept)):
            raise ValueError(f"unit {unit.name!r}: delivery matrix has shape {tuple(plan.delivery.shape)}, "
                             f"expected {(unit.n_channels, len(plan.kept))}")
        out_kept[names[id(unit.layer)]] = kept
        if unit.bn is not None:
            bn_kept[names[id(unit.bn)]] = kept
        for module in unit.passthrough:
            (bn_kept if isinstance(module, BN_TYPES) else out_kept)[names[id(module)]] = kept
        for module, features in zip(unit.consumers, unit.features_per_channel):
            consumer = names[id(module)]
            if consumer in in_delivery:
                raise ValueError(f"module {consumer!r} is the consumer of two units")
            # every consumer of the unit receives the same delivery matrix
            in_delivery[consumer] = (plan.delivery, features, kept)

    # The weights and statistics of every resized module are replaced below, never written into:
    # the copy may start by sharing them with the original instead of copying them first.
    # A tensor also held by a module that is not resized (tied weights) is copied as usual.
    resized = {id(model.get_submodule(n)) for n in set(out_kept) | set(in_delivery) | set(bn_kept)}
    holders: dict[int, list] = {}
    for module in model.modules():
        for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            holders.setdefault(id(t), []).append((module, t))
    memo = {key: pairs[0][1] for key, pairs in holders.items()
            if all(id(m) in resized for m, _ in pairs) and pairs[0][1].dim() > 0}
    pruned = copy.deepcopy(model, memo)
    for name in sorted(set(out_kept) | set(in_delivery)):
        module = pruned.get_submodule(name)
        weight = module.weight.detach()
        bias = module.bias.detach() if module.bias is not None else None
        if name in in_delivery:
            weight = _apply_input_delivery(weight, *in_delivery[name])
        if name in out_kept:
            kept = out_kept[name].to(weight.device)
            weight = weight[kept]
            bias = bias[kept] if bias is not None else None
        _resize(module, weight, bias)
    for name, kept in bn_kept.items():
        _slice_bn(pruned.get_submodule(name), kept)
    return pruned
