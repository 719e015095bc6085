"""``check_units``: verify, unit by unit, that discovery's units can really be cut out of a network.

For every unit (and coupled group, with ``units="all"``) a random half of its channels (seeded; in a group read by
grouped convs, half of every block) is removed with plain pruning, on that unit alone, and the physically
smaller network is compared with the original network whose consumers
read zeros from those channels (their input columns set to 0, through the traced index mapping).
The two must be the same function: anything else means the unit's channels are read somewhere
discovery did not see, and restoring it would give a silently wrong network. The check needs no
knowledge of the restoration method and holds for any activation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .example_inputs import example_inputs_of
from .prunable import prunable_units
from .surgery import GroupPlan, UnitPlan, apply_plans, selection_matrix
from .units import CoupledGroup

__all__ = ["UnitCheck", "check_units"]


@dataclass(frozen=True)
class UnitCheck:
    name: str
    ok: bool
    rel_error: float  # max |pruned - zeroed| / max |zeroed| over the outputs
    detail: str = ""

    def __str__(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        return f"{status} {self.name}: relative error {self.rel_error:.2e}" + (f" ({self.detail})" if self.detail else "")


def _outputs(model: nn.Module, x) -> list[torch.Tensor]:
    out = model(*x) if isinstance(x, tuple) else model(x)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for t in out if isinstance(t, torch.Tensor)]


def _half_per_block(group: CoupledGroup, generator) -> list[int]:
    cells = group.cells or (0,) * group.n_channels
    kept = []
    for cell in sorted(set(cells)):
        members = [i for i, c in enumerate(cells) if c == cell]
        order = torch.randperm(len(members), generator=generator)[: len(members) - len(members) // 2]
        kept += [members[i] for i in order.tolist()]
    return sorted(kept)


def read_columns(unit, dropped: list[int]):
    """``(reader name, its input positions that carry the dropped channels)`` for every reader of the channels."""
    if isinstance(unit, CoupledGroup):
        return [(m.name, [i for c in dropped for i in m.positions[c]]) for m in unit.members if m.role == "in"]
    return [(consumer, [c * r + j for c in dropped for j in range(r)])
            for consumer, r in zip(unit.consumer_names, unit.features_per_channel)]


def zero_inputs(module: nn.Module, columns: list[int]) -> None:
    """Zero the weights through which ``module`` reads input channels (or features) ``columns``; a grouped conv
    reads input ``i`` in group ``i // per_group`` at local column ``i % per_group``."""
    weight = module.weight
    groups = getattr(module, "groups", 1)
    if groups == 1:
        weight[:, columns] = 0.0
        return
    per_group, rows = weight.shape[1], weight.shape[0] // groups
    for i in columns:
        g = i // per_group
        weight[g * rows:(g + 1) * rows, i % per_group] = 0.0


def check_units(model: nn.Module, example_inputs=None, *, units=None, rtol: float = 1e-4, seed: int = 0,
                strict: bool = False) -> list[UnitCheck]:
    """Check every unit of ``model`` (or those named in ``units``) on ``example_inputs``.

    Returns one ``UnitCheck`` per unit; with ``strict=True`` a failing unit raises ``ValueError``
    naming it. The tolerance is relative to the largest output (float32 arithmetic differs in the
    order of the sums, nothing else).
    """
    x = example_inputs_of(model, example_inputs)
    checks = []
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for unit in prunable_units(model, x, units):
            n = unit.n_channels
            if n < 2:
                checks.append(UnitCheck(unit.name, True, 0.0, "one channel: nothing to remove"))
                continue
            if isinstance(unit, CoupledGroup):
                kept = _half_per_block(unit, generator)
                plan = GroupPlan(unit, kept)
            else:
                kept = sorted(torch.randperm(n, generator=generator)[: n - n // 2].tolist())
                plan = UnitPlan(unit, kept, selection_matrix(n, kept))
            dropped = sorted(set(range(n)) - set(kept))
            zeroed = copy.deepcopy(model)
            with torch.no_grad():
                for consumer, columns in read_columns(unit, dropped):
                    zero_inputs(zeroed.get_submodule(consumer), columns)
                try:
                    pruned = apply_plans(model, [plan])
                    got, expected = _outputs(pruned, x), _outputs(zeroed, x)
                except RuntimeError as err:  # e.g. a shape mismatch where the channels were also read
                    checks.append(UnitCheck(unit.name, False, float("inf"), f"{type(err).__name__}: {str(err)[:120]}"))
                    continue
            if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected)):
                checks.append(UnitCheck(unit.name, False, float("inf"), "the pruned network's outputs have other shapes"))
                continue
            scale = max(max(float(b.abs().max()) for b in expected), 1e-30)
            error = max(float((a - b).abs().max()) for a, b in zip(got, expected)) / scale
            checks.append(UnitCheck(unit.name, error <= rtol, error))
    finally:
        model.train(was_training)
    failed = [c.name for c in checks if not c.ok]
    if strict and failed:
        raise ValueError(f"{len(failed)} unit(s) of {type(model).__name__} cannot be pruned as discovered: "
                         f"{', '.join(failed[:10])}")
    return checks
