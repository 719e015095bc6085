"""Prunable units: what an architecture declares so the rest of the package can prune it.

A unit is a layer whose *output* channels are pruned (``layer``), the BatchNorm over those channels
(``bn``; ``None`` for LeNet's bias-carrying Linear layers), optional channel-wise modules that sit
between the layer and its reader and simply lose the pruned channels (``passthrough``; MobileNet-V2's
depthwise conv and its BN), and the ``consumer`` that reads the channels and receives the
compensation. Units hold module *references*; names are looked up from the model when needed, so a
unit never depends on state-dict positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["PrunableUnit", "UnitTensors", "prunable_units", "unit_tensors", "module_names"]

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True, eq=False)
class PrunableUnit:
    layer: nn.Module
    bn: nn.Module | None
    consumer: nn.Module
    passthrough: tuple[nn.Module, ...] = ()
    count_rule: str = "floor"  # "floor" for conv nets, "round" for LeNet (method.md §1, §11)
    name: str = field(default="")

    @property
    def n_channels(self) -> int:
        return self.layer.weight.shape[0]


@dataclass
class UnitTensors:
    """Float64 copies of everything a restoration method reads for one unit (original weights).

    ``weight`` is ``(n, d)``: conv filters flattened over ``(C_in, kh, kw)``, or Linear rows with the
    bias appended (``[w, b]``, §11). BN statistics are ``None`` for units without BN.
    """
    weight: torch.Tensor
    gamma: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    var: torch.Tensor | None = None
    eps: float = 1e-5

    @property
    def has_bn(self) -> bool:
        return self.gamma is not None


def module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def prunable_units(model: nn.Module) -> list[PrunableUnit]:
    """The units a model declares through its ``prunable_units()`` method, with their module paths."""
    declare = getattr(model, "prunable_units", None)
    if declare is None:
        raise ValueError(
            f"{type(model).__name__} does not declare prunable units; build it with "
            "lbyl_pl.build_model(...) or give it a prunable_units() method")
    names = module_names(model)
    units = []
    for unit in declare():
        modules = [unit.layer, unit.consumer, *unit.passthrough] + ([unit.bn] if unit.bn is not None else [])
        for module in modules:
            if id(module) not in names:
                raise ValueError(f"a prunable unit of {type(model).__name__} refers to a module outside the model")
        units.append(PrunableUnit(unit.layer, unit.bn, unit.consumer, tuple(unit.passthrough),
                                  unit.count_rule, names[id(unit.layer)]))
    return units


def unit_tensors(unit: PrunableUnit) -> UnitTensors:
    layer = unit.layer
    weight = layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)
    if isinstance(layer, nn.Linear) and layer.bias is not None:
        weight = torch.cat([weight, layer.bias.detach().to(torch.float64)[:, None]], dim=1)
    if not torch.isfinite(weight).all():
        raise ValueError(f"layer {unit.name!r} has NaN or Inf weights; refusing to restore")
    if unit.bn is None:
        return UnitTensors(weight)
    bn = unit.bn
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm {unit.name!r}: restoration needs running statistics "
                         "(track_running_stats=True)")
    n = weight.shape[0]
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(n, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(n, dtype=torch.float64)
    tensors = UnitTensors(weight, gamma, beta, bn.running_mean.detach().double(),
                          bn.running_var.detach().double(), float(bn.eps))
    for label in ("gamma", "beta", "mean", "var"):
        if not torch.isfinite(getattr(tensors, label)).all():
            raise ValueError(f"BatchNorm after {unit.name!r} has NaN or Inf in its {label}")
    return tensors
