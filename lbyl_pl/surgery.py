"""Surgery: build the physically smaller network from kept indices and delivery matrices.

For every unit the layer keeps rows ``k`` (and its BN is sliced to ``k``), channel-wise passthrough
modules keep channels ``k``, and the consumer's input channels are replaced by ``U' = U S``
(``method.md`` §5.3), where ``S`` (``n x m``) is the delivery matrix a restoration method computed.
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


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _new_like(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module of ``module``'s type and settings, sized for ``weight``."""
    if isinstance(module, nn.Conv2d):
        groups = module.groups
        if groups != 1:
            # Only depthwise convs (groups == channels) may be sliced; their channel count changes.
            groups = weight.shape[0]
        new = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], module.kernel_size, module.stride,
                        module.padding, module.dilation, groups, bias is not None, module.padding_mode,
                        device=weight.device, dtype=weight.dtype)
    elif isinstance(module, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device,
                        dtype=weight.dtype)
    else:  # pragma: no cover - architectures only declare Conv2d/Linear layers
        raise TypeError(f"cannot resize a {type(module).__name__}")
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(module.training)
    return new


def _sliced_bn(bn: nn.Module, kept: torch.Tensor) -> nn.Module:
    new = type(bn)(len(kept), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats,
                   device=(bn.weight if bn.weight is not None else bn.running_mean).device)
    with torch.no_grad():
        if bn.affine:
            new.weight = nn.Parameter(bn.weight.detach()[kept].clone())
            new.bias = nn.Parameter(bn.bias.detach()[kept].clone())
        if bn.track_running_stats and bn.running_mean is not None:
            new.running_mean = bn.running_mean[kept].clone()
            new.running_var = bn.running_var[kept].clone()
            new.num_batches_tracked = bn.num_batches_tracked.clone()
    new.train(bn.training)
    return new


def _apply_input_delivery(weight: torch.Tensor, delivery: torch.Tensor) -> torch.Tensor:
    """``U'[o, j, ...] = sum_i U[o, i, ...] S[i, j]``, computed in float64."""
    out = torch.einsum("oi...,ij->oj...", weight.detach().to(torch.float64),
                       delivery.to(weight.device))
    return out.to(weight.dtype)


def apply_plans(model: nn.Module, plans: list[UnitPlan]) -> nn.Module:
    """Return a pruned deep copy of ``model`` (which is left untouched)."""
    names = {id(m): n for n, m in model.named_modules()}
    out_kept: dict[str, torch.Tensor] = {}
    in_delivery: dict[str, torch.Tensor] = {}
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
        consumer = names[id(unit.consumer)]
        if consumer in in_delivery:
            raise ValueError(f"module {consumer!r} is the consumer of two units")
        in_delivery[consumer] = plan.delivery

    pruned = copy.deepcopy(model)
    for name in sorted(set(out_kept) | set(in_delivery)):
        module = pruned.get_submodule(name)
        weight = module.weight.detach()
        bias = module.bias.detach() if module.bias is not None else None
        if name in in_delivery:
            weight = _apply_input_delivery(weight, in_delivery[name])
        if name in out_kept:
            kept = out_kept[name].to(weight.device)
            weight = weight[kept]
            bias = bias[kept] if bias is not None else None
        _set_module(pruned, name, _new_like(module, weight.contiguous(), bias))
    for name, kept in bn_kept.items():
        _set_module(pruned, name, _sliced_bn(pruned.get_submodule(name), kept))
    return pruned
