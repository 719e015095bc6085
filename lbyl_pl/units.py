"""Prunable units: the channel groups the rest of the package prunes and restores.

A unit is a producer (``layer``: Conv2d with groups 1, or Linear) whose *output* channels are pruned,
the BatchNorm over those channels (``bn``; ``None`` when there is none), optional channel-wise
modules between the producer and its readers that simply lose the pruned channels (``passthrough``:
a depthwise conv and its BN, as in MobileNet-V2), and the ``consumers`` (Conv2d / Linear) that read
the channels and receive the same compensation. A Linear after a flatten reads each channel through
``features_per_channel`` consecutive inputs. Units hold module *references*; ``name`` is the
producer's module path, so a unit never depends on state-dict positions.

Units are found on the traced graph (``lbyl_pl.discovery``); a built-in architecture only selects
the ones the paper prunes (its ``select_units``), and a model that the tracer cannot handle may
declare its own through a ``prunable_units()`` method; ``lbyl_pl.prunable.prunable_units`` does both.
This module is a leaf of the package's import graph: it imports nothing from ``lbyl_pl``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

__all__ = ["BN_FLOOR", "CoupledGroup", "GroupMember", "PrunableUnit", "UnitTensors", "consumer_columns",
           "folded_producer", "module_names", "select_producers", "unit_tensors"]

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)

# The floor of |gamma| and of sigma (BN variances) in the restoration algebra (``methods.common``) and in
# Intra-Fusion's BN fold: a clamped channel behaves as a channel with a tiny scale.
BN_FLOOR = 1e-12


@dataclass(frozen=True, eq=False)
class PrunableUnit:
    layer: nn.Module
    bn: nn.Module | None
    consumers: tuple[nn.Module, ...]
    passthrough: tuple[nn.Module, ...] = ()
    count_rule: str = "floor"  # "floor" for conv nets, "round" for LeNet (docs/method.md §1, §11)
    name: str = field(default="")
    features_per_channel: tuple[int, ...] = ()  # per consumer; empty means 1 each
    activations: tuple[str, ...] = ()           # non-linearities between BN and consumers (traced)
    consumer_names: tuple[str, ...] = ()
    passthrough_names: tuple[str, ...] = ()

    def __post_init__(self):
        consumers = self.consumers
        if isinstance(consumers, nn.Module):  # PrunableUnit(layer, bn, consumer) for one consumer
            consumers = (consumers,)
        object.__setattr__(self, "consumers", tuple(consumers))
        object.__setattr__(self, "passthrough", tuple(self.passthrough))
        if not self.features_per_channel:
            object.__setattr__(self, "features_per_channel", (1,) * len(self.consumers))
        if len(self.features_per_channel) != len(self.consumers):
            raise ValueError("features_per_channel needs one entry per consumer")
        if not self.consumers:
            raise ValueError(f"unit {self.name!r} has no consumer")

    @property
    def consumer(self) -> nn.Module:
        """The consumer of a unit that has exactly one."""
        if len(self.consumers) != 1:
            raise AttributeError(f"unit {self.name!r} has {len(self.consumers)} consumers; use .consumers")
        return self.consumers[0]

    @property
    def n_channels(self) -> int:
        return self.layer.weight.shape[0]

    @property
    def modules(self) -> list[nn.Module]:
        return [self.layer, *self.consumers, *self.passthrough] + ([self.bn] if self.bn is not None else [])


# The roles a module plays in a coupled group: its output rows are the channels ("out": a producer), its input
# columns read them ("in": a consumer), a BatchNorm over them ("bn"), a depthwise conv whose input and output
# channels are both the group's ("depthwise").
MEMBER_ROLES = ("out", "in", "bn", "depthwise")


@dataclass(frozen=True, eq=False)
class GroupMember:
    """One module of a coupled group and where the group's channels sit in it: ``positions[c]`` are the indices
    along the member's axis (rows for "out"/"depthwise"/"bn", input channels or features for "in") that carry
    channel ``c`` (an offset into a concatenation; ``r`` consecutive features of a Linear after a flatten)."""
    module: nn.Module
    name: str
    role: str
    positions: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, eq=False)
class CoupledGroup:
    """Channels that must be pruned together in several modules (``docs/discovery.md``): a residual stream (every
    conv writing into it, each with its BN, and every layer reading it), channels concatenated with others
    (each reader sees them at an offset), channels read or written by a grouped conv, or a single producer whose
    BN or mapping the LBYL/NM algebra does not cover. Pruning keeps the same channels in every member.

    ``cells[c]`` is the block of channel ``c`` under every grouped conv among the members: each block must keep
    the same number of channels (a grouped conv keeps equal counts per group); empty means one block. ``name`` is
    the root producer's module path, like a unit's."""
    name: str
    n_channels: int
    members: tuple[GroupMember, ...]
    kind: str = ""
    cells: tuple[int, ...] = ()
    count_rule: str = "floor"
    bn_of: tuple[tuple[str, str], ...] = ()  # (producer, the BN that reads its output directly), by module name

    @property
    def producers(self) -> list[GroupMember]:
        return [m for m in self.members if m.role == "out"]

    @property
    def modules(self) -> list[nn.Module]:
        return [m.module for m in self.members]

    @property
    def n_cells(self) -> int:
        return len(set(self.cells)) if self.cells else 1

    def member_names(self, role: str) -> list[str]:
        return [m.name for m in self.members if m.role == role]


@dataclass
class UnitTensors:
    """Float64 copies of everything a restoration method reads for one unit (original weights), on the
    device of the unit's weights.

    ``weight`` is ``(n, d)``: conv filters flattened over ``(C_in, kh, kw)``, or, for a producer with a
    bias and no BN (LeNet's Linear layers), the rows with the bias appended (``[w, b]``, §11). A bias
    followed by a BN is folded into the BN's mean instead (``BN(z + b)`` with mean ``mu`` equals ``BN(z)``
    with mean ``mu - b``). BN statistics are ``None`` for units without BN.
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


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in ``tensor``. A float64 sum is NaN or Inf exactly when an element is (it cannot
    overflow for values of float32 range), so the elementwise test runs only to confirm a hit."""
    total = tensor.sum(dtype=torch.float64)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all())


def module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def select_producers(units: list[PrunableUnit], producers, model: nn.Module, **changes) -> list[PrunableUnit]:
    """The discovered units whose producers are ``producers`` (module references, in that order).

    How a built-in architecture states the paper's choice of layers (``docs/method.md`` §2); ``changes``
    (e.g. ``count_rule="round"``) are applied to every selected unit. A producer that discovery did
    not return as a unit is an error, never a silently smaller selection.
    """
    by_layer = {id(u.layer): u for u in units}
    missing = [p for p in producers if id(p) not in by_layer]
    if missing:
        names = module_names(model)
        raise ValueError(f"{type(model).__name__}: discovery did not find the paper's units "
                         f"{[names.get(id(p), '?') for p in missing][:5]}")
    return [replace(by_layer[id(p)], **changes) if changes else by_layer[id(p)] for p in producers]


def unit_tensors(unit: PrunableUnit) -> UnitTensors:
    layer = unit.layer
    weight = layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)
    bias = layer.bias.detach().to(torch.float64) if layer.bias is not None else None
    if bias is not None and unit.bn is None:
        weight = torch.cat([weight, bias[:, None]], dim=1)
    if not all_finite(weight):
        raise ValueError(f"layer {unit.name!r} has NaN or Inf weights; refusing to restore")
    if unit.bn is None:
        return UnitTensors(weight)
    bn = unit.bn
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm {unit.name!r}: restoration needs running statistics "
                         "(track_running_stats=True)")
    n = weight.shape[0]
    gamma = bn.weight.detach().double() if bn.weight is not None else weight.new_ones(n)
    beta = bn.bias.detach().double() if bn.bias is not None else weight.new_zeros(n)
    mean = bn.running_mean.detach().double()
    if bias is not None:
        mean = mean - bias
    tensors = UnitTensors(weight, gamma, beta, mean, bn.running_var.detach().double(), float(bn.eps))
    for label in ("gamma", "beta", "mean", "var"):
        if not all_finite(getattr(tensors, label)):
            raise ValueError(f"BatchNorm after {unit.name!r} has NaN or Inf in its {label}")
    return tensors


def folded_producer(unit: PrunableUnit, variant: str):
    """The producer's ``(n, d)`` weight rows and ``(n,)`` bias (or ``None``) with the BN folded in, float64
    (Intra-Fusion's fold: its restoration and its ``IF-l1`` criterion)."""
    layer = unit.layer
    weight = layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)
    bias = layer.bias.detach().to(torch.float64) if layer.bias is not None else None
    bn = unit.bn
    if bn is None:
        return weight, bias
    n = weight.shape[0]
    gamma = bn.weight.detach().double() if bn.weight is not None else weight.new_ones(n)
    beta = bn.bias.detach().double() if bn.bias is not None else weight.new_zeros(n)
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm of {unit.name!r}: Intra-Fusion needs running statistics "
                         "(track_running_stats=True)")
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    if variant == "paper":
        scale = gamma / torch.sqrt(var.clamp_min(BN_FLOOR))  # the reference: sqrt(var), no eps
    else:
        scale = gamma / torch.sqrt(var.clamp_min(0.0) + bn.eps)
    folded_bias = ((bias if bias is not None else 0.0) - mean) * scale + beta
    return weight * scale[:, None], folded_bias


def consumer_columns(unit: PrunableUnit) -> list[torch.Tensor]:
    """For every consumer, the ``(n, d_c)`` float64 matrix whose row ``i`` is everything it reads of channel
    ``i``: ``U[:, i]`` over its outputs and kernel (a Linear after a flatten reads ``features`` inputs)."""
    columns = []
    n = unit.n_channels
    for module, features in zip(unit.consumers, unit.features_per_channel):
        U = module.weight.detach().to(torch.float64)
        U = U.reshape(U.shape[0], n, features, *U.shape[2:])  # (out, n, features, *kernel)
        columns.append(U.movedim(1, 0).reshape(n, -1))
    return columns

