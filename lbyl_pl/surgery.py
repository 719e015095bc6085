"""Surgery: build the physically smaller network from kept indices and delivery matrices.

For every unit the layer keeps rows ``k`` (and its BN is sliced to ``k``), channel-wise passthrough
modules keep channels ``k``, and each consumer's input channels are replaced by ``U' = U S``
(``docs/method.md`` §5.3), where ``S`` (``n x m``) is the delivery matrix a restoration method computed.
Modules are resized in place on a deep copy, so their classes and attributes are kept.
A module may be both a consumer and a pruned layer (ResNet bottleneck conv2): its input-side
compensation and output-side slicing act on different axes and commute (§5.5).

A coupled group (``GroupPlan``: a residual stream, a concatenation, grouped convs; ``lbyl_pl.coupled``) is only
sliced: every member loses the pruned channels at the positions the tracer mapped them to (rows of its producers,
BNs and depthwise convs, input columns of its readers, per group for a grouped conv). Positions are in the
original network's coordinates, so a reader of a concatenation of several groups loses the union.

The input model is never modified: surgery works on a deep copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .units import BN_TYPES, CoupledGroup, PrunableUnit

if TYPE_CHECKING:
    from .methods.base import ProducerUpdate

__all__ = ["GroupPlan", "UnitPlan", "apply_plans", "selection_matrix"]


@dataclass
class UnitPlan:
    unit: PrunableUnit
    kept: list[int]
    delivery: torch.Tensor  # (n, m) float64
    producer: ProducerUpdate | None = None  # new kept producer rows / bias / BN (Intra-Fusion); None: sliced


@dataclass
class GroupPlan:
    group: CoupledGroup
    kept: list[int]  # kept channels of the group (ascending), the same in every member
    # a method that compensates (Intra-Fusion): new kept rows of producers (with their BN's values) by module name,
    # and the (n, m) delivery matrix every reader receives at the group's positions; None: sliced only
    producers: dict | None = None
    delivery: torch.Tensor | None = None


def selection_matrix(n: int, kept: list[int], device=None) -> torch.Tensor:
    """``S`` of plain pruning: identity on the kept rows, zero on the pruned ones (float64, on ``device``,
    default the CPU; the surgery moves a delivery matrix to each consumer's device)."""
    S = torch.zeros(n, len(kept), dtype=torch.float64, device=device)
    S[torch.as_tensor(kept, dtype=torch.long, device=S.device), torch.arange(len(kept), device=S.device)] = 1.0
    return S


def _resize(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give ``module`` (a Conv2d or Linear of the copied network) new weights and matching sizes, in
    place, so that subclasses, hooks and every other attribute survive the surgery."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 and module.groups == module.in_channels == module.out_channels:
            module.groups = weight.shape[0]  # a one-to-one depthwise conv: one group per channel
        # any other grouped conv keeps its groups, with equal counts in each (discovery's cells)
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


def _slice_bn(bn: nn.Module, kept: torch.Tensor, values: dict | None = None) -> None:
    """Keep channels ``kept`` of a BatchNorm, in place; ``values`` (name -> ``(m,)`` tensor) replaces
    the kept channels' affine parameters and running statistics."""
    kept = kept.to((bn.weight if bn.weight is not None else bn.running_mean).device)
    values = values or {}
    if bn.running_mean is None and ("running_mean" in values or "running_var" in values):
        raise ValueError("a BatchNorm without running statistics cannot hold the restored statistics")

    def new(name):
        old = getattr(bn, name)
        if name in values:
            return values[name].to(dtype=old.dtype, device=old.device).clone()
        return old.detach()[kept].clone()

    bn.num_features = len(kept)
    if bn.affine:
        bn.weight = nn.Parameter(new("weight"), requires_grad=bn.weight.requires_grad)
        bn.bias = nn.Parameter(new("bias"), requires_grad=bn.bias.requires_grad)
    elif "weight" in values or "bias" in values:
        raise ValueError("a BatchNorm without affine parameters cannot hold the restored scale and shift")
    if bn.running_mean is not None:
        bn.running_mean = new("running_mean")
        bn.running_var = new("running_var")


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


def _drop_inputs(module: nn.Module, weight: torch.Tensor, pruned: set[int]) -> torch.Tensor:
    """``weight`` without the input channels (or features) ``pruned``; in a grouped conv each group drops its own."""
    groups = getattr(module, "groups", 1)
    total = weight.shape[1] * groups
    keep = [i for i in range(total) if i not in pruned]
    if groups == 1:
        return weight[:, torch.as_tensor(keep, dtype=torch.long, device=weight.device)]
    size = total // groups
    local = [[i - g * size for i in keep if g * size <= i < (g + 1) * size] for g in range(groups)]
    if len({len(cols) for cols in local}) != 1:
        raise ValueError(f"grouped conv keeps {[len(c) for c in local]} input channels per group; "
                         "every group must keep the same number")
    rows = weight.shape[0] // groups
    columns = torch.as_tensor(local, dtype=torch.long, device=weight.device)  # (groups, kept per group)
    index = columns.repeat_interleave(rows, dim=0)  # the columns each output row keeps
    index = index.reshape(*index.shape, *([1] * (weight.dim() - 2))).expand(-1, -1, *weight.shape[2:])
    return weight.gather(1, index)


def _deliver_group(weight: torch.Tensor, entries: list) -> torch.Tensor:
    """A reader's weight with each group's delivery folded in at that group's positions (original coordinates, before
    any position is dropped): the columns of kept channel ``j`` become ``sum_c S[c, j] U[:, positions[c]]``."""
    w = weight.detach().to(torch.float64).clone()
    for positions, delivery, kept in entries:
        index = torch.as_tensor(positions, dtype=torch.long, device=w.device)  # (n, r)
        n, r = index.shape
        read = w[:, index.flatten()].reshape(w.shape[0], n, r, *w.shape[2:])
        delivered = torch.einsum("onr...,nm->omr...", read, delivery.to(device=w.device, dtype=torch.float64))
        target = index[torch.as_tensor(kept, dtype=torch.long, device=w.device)].flatten()
        w[:, target] = delivered.reshape(w.shape[0], len(kept) * r, *w.shape[2:])
    return w.to(weight.dtype)


def _group_cuts(plans: list[GroupPlan]) -> tuple[dict, dict, dict, dict, dict, dict]:
    """For coupled groups: module name -> pruned output rows, pruned input positions, pruned BN channels; and, for
    groups a method compensated, producer name -> new rows, BN name -> new values, reader name -> deliveries."""
    rows, inputs, bns, updates, bn_values, deliveries = {}, {}, {}, {}, {}, {}
    for plan in plans:
        group = plan.group
        kept = set(int(i) for i in plan.kept)
        if not kept or min(kept) < 0 or max(kept) >= group.n_channels or len(kept) != len(plan.kept):
            raise ValueError(f"group {group.name!r}: kept indices must be distinct and in [0, {group.n_channels})")
        if group.cells:
            per_cell = {c: 0 for c in set(group.cells)}
            for i in kept:
                per_cell[group.cells[i]] += 1
            if len(set(per_cell.values())) != 1:
                raise ValueError(f"group {group.name!r} is read or written by a grouped conv: every group must keep "
                                 f"the same number of channels, got {sorted(set(per_cell.values()))}")
        dropped = [c for c in range(group.n_channels) if c not in kept]
        for member in group.members:
            _check_member(group, member)
            target = bns if member.role == "bn" else inputs if member.role == "in" else rows
            cut = target.setdefault(member.name, set())
            cut.update(i for c in dropped for i in member.positions[c])
            if member.role == "in" and plan.delivery is not None:
                if getattr(member.module, "groups", 1) != 1:
                    raise ValueError(f"group {group.name!r}: a delivery into the grouped conv {member.name!r} is not "
                                     "supported")
                deliveries.setdefault(member.name, []).append((member.positions, plan.delivery, sorted(kept)))
        bn_of = dict(group.bn_of)
        for name, update in (plan.producers or {}).items():
            updates[name] = update
            if update.bn is not None:
                if name not in bn_of:
                    raise ValueError(f"group {group.name!r}: new BatchNorm values for {name!r}, which no BN reads")
                bn_values[bn_of[name]] = update.bn
    return rows, inputs, bns, updates, bn_values, deliveries


def _member_size(member) -> int:
    """The size of the axis a coupled group's member is cut along."""
    module = member.module
    if member.role == "bn":
        return module.num_features
    if member.role == "in":
        return module.weight.shape[1] * getattr(module, "groups", 1)
    return module.weight.shape[0]


def _check_member(group: CoupledGroup, member) -> None:
    """Every member of a group carries all of its channels, inside its own axis."""
    size = _member_size(member)
    widest = max((i for p in member.positions for i in p), default=-1)
    if len(member.positions) != group.n_channels or widest >= size:
        raise ValueError(f"group {group.name!r}: member {member.name!r} ({member.role}) has {size} channels on that "
                         f"axis and positions for {len(member.positions)} group channels reaching index {widest}; "
                         f"allowed: positions for all {group.n_channels} channels, each below {size}")


def apply_plans(model: nn.Module, plans: list) -> nn.Module:
    """Return a pruned deep copy of ``model`` (which is left untouched). ``plans``: ``UnitPlan``s and
    ``GroupPlan``s."""
    names = {id(m): n for n, m in model.named_modules()}
    group_rows, group_inputs, group_bns, group_updates, group_bn_values, group_deliveries = \
        _group_cuts([p for p in plans if isinstance(p, GroupPlan)])
    plans = [p for p in plans if not isinstance(p, GroupPlan)]
    out_kept: dict[str, torch.Tensor] = {}
    out_update: dict[str, ProducerUpdate] = {}
    in_delivery: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}
    bn_kept: dict[str, torch.Tensor] = {}
    bn_values: dict[str, dict] = {}
    for plan in plans:
        kept = torch.as_tensor(plan.kept, dtype=torch.long)
        unit = plan.unit
        if plan.delivery.shape != (unit.n_channels, len(plan.kept)):
            raise ValueError(f"unit {unit.name!r}: delivery matrix has shape {tuple(plan.delivery.shape)}, "
                             f"expected {(unit.n_channels, len(plan.kept))}")
        out_kept[names[id(unit.layer)]] = kept
        if unit.bn is not None:
            bn_kept[names[id(unit.bn)]] = kept
        if plan.producer is not None:
            _check_update(unit, plan.producer, len(plan.kept))
            out_update[names[id(unit.layer)]] = plan.producer
            if plan.producer.bn is not None:
                bn_values[names[id(unit.bn)]] = plan.producer.bn
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
    clash = (set(out_kept) & set(group_rows)) | (set(in_delivery) & set(group_inputs)) | (set(bn_kept) & set(group_bns))
    if clash:
        raise ValueError(f"modules {sorted(clash)[:3]} belong to a unit and a coupled group on the same axis")
    resized = {id(model.get_submodule(n)) for n in
               set(out_kept) | set(in_delivery) | set(bn_kept) | set(group_rows) | set(group_inputs) | set(group_bns)}
    holders: dict[int, list] = {}
    for module in model.modules():
        for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            holders.setdefault(id(t), []).append((module, t))
    memo = {key: pairs[0][1] for key, pairs in holders.items()
            if all(id(m) in resized for m, _ in pairs) and pairs[0][1].dim() > 0}
    pruned = copy.deepcopy(model, memo)
    for name in sorted(set(out_kept) | set(in_delivery) | set(group_rows) | set(group_inputs)):
        module = pruned.get_submodule(name)
        weight = module.weight.detach()
        bias = module.bias.detach() if module.bias is not None else None
        # The output side first, then the input side: they act on different axes and commute (a
        # method's new producer rows are computed from the original, undelivered input axis).
        if name in out_kept:
            kept = out_kept[name].to(weight.device)
            update = out_update.get(name)
            if update is not None:
                weight = update.weight.to(device=weight.device, dtype=weight.dtype)
            else:
                weight = weight[kept]
            if update is not None and update.bias is not None:
                bias = update.bias.to(device=weight.device, dtype=weight.dtype)
            else:
                bias = bias[kept] if bias is not None else None
        if name in group_rows:
            keep = torch.as_tensor([i for i in range(weight.shape[0]) if i not in group_rows[name]],
                                   dtype=torch.long, device=weight.device)
            update = group_updates.get(name)
            if update is not None:
                _check_shape(name, update, len(keep), weight)
                weight = update.weight.to(device=weight.device, dtype=weight.dtype)
                bias = update.bias.to(device=weight.device, dtype=weight.dtype) if update.bias is not None else \
                    (bias[keep] if bias is not None else None)
            else:
                weight = weight[keep]
                bias = bias[keep] if bias is not None else None
        if name in in_delivery:
            weight = _apply_input_delivery(weight, *in_delivery[name])
        if name in group_deliveries:
            weight = _deliver_group(weight, group_deliveries[name])
        if name in group_inputs:
            weight = _drop_inputs(module, weight, group_inputs[name])
        _resize(module, weight, bias)
    for name, kept in bn_kept.items():
        _slice_bn(pruned.get_submodule(name), kept, bn_values.get(name))
    for name, cut in group_bns.items():
        bn = pruned.get_submodule(name)
        _slice_bn(bn, torch.as_tensor([i for i in range(bn.num_features) if i not in cut], dtype=torch.long),
                  group_bn_values.get(name))
    return pruned


def _check_shape(name: str, update: ProducerUpdate, m: int, weight: torch.Tensor) -> None:
    expected = (m, *weight.shape[1:])
    if tuple(update.weight.shape) != expected:
        raise ValueError(f"producer {name!r}: new weight has shape {tuple(update.weight.shape)}, expected {expected}")


def _check_update(unit: PrunableUnit, update: ProducerUpdate, m: int) -> None:
    expected = (m, *unit.layer.weight.shape[1:])
    if tuple(update.weight.shape) != expected:
        raise ValueError(f"unit {unit.name!r}: new producer weight has shape {tuple(update.weight.shape)}, "
                         f"expected {expected}")
    if update.bias is not None:
        if unit.layer.bias is None:
            raise ValueError(f"unit {unit.name!r}: a new bias for a producer without one (store it in its BN)")
        if tuple(update.bias.shape) != (m,):
            raise ValueError(f"unit {unit.name!r}: new producer bias has shape {tuple(update.bias.shape)}, "
                             f"expected {(m,)}")
    if update.bn is not None:
        if unit.bn is None:
            raise ValueError(f"unit {unit.name!r}: new BatchNorm values for a unit without BatchNorm")
        bad = {k: tuple(v.shape) for k, v in update.bn.items() if tuple(v.shape) != (m,)}
        unknown = set(update.bn) - {"weight", "bias", "running_mean", "running_var"}
        if bad or unknown:
            raise ValueError(f"unit {unit.name!r}: new BatchNorm values must be (m,) tensors named weight, bias, "
                             f"running_mean, running_var; got shapes {bad} and names {sorted(unknown)}")
