"""``prunable_units``: the units of a model that ``prune_and_restore`` works on.

A model declares them (its ``prunable_units()`` method) or they are discovered on the traced graph
(``lbyl_pl.discovery``) and a built-in architecture keeps the paper's choice (its ``select_units``).
The unit types themselves live in ``lbyl_pl.units``, a leaf module that discovery imports: this module
sits above both, so no import goes back.
"""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from .discovery import discover
from .units import CoupledGroup, PrunableUnit, module_names

__all__ = ["ALL_UNITS", "prunable_units"]

# units="all": every unit and coupled group discovery finds, whatever a built-in architecture selects
ALL_UNITS = "all"


def _named(unit: PrunableUnit, names: dict[int, str], model: nn.Module) -> PrunableUnit:
    for module in unit.modules:
        if id(module) not in names:
            raise ValueError(f"a prunable unit of {type(model).__name__} refers to a module outside the model")
    return replace(unit, name=names[id(unit.layer)],
                   consumer_names=tuple(names[id(m)] for m in unit.consumers),
                   passthrough_names=tuple(names[id(m)] for m in unit.passthrough))


def prunable_units(model: nn.Module, example_inputs=None, units=None) -> list[PrunableUnit | CoupledGroup]:
    """The units (and coupled groups) ``prune_and_restore`` works on.

    A model with a ``prunable_units()`` method declares them; otherwise they are discovered on the
    traced graph (``example_inputs``, default zeros of ``model.example_input_size``), and a built-in
    architecture's ``select_units`` keeps the paper's choice among them. ``units="all"`` takes every
    unit and coupled group discovery finds (built-ins included); other names (producer module paths, of
    units or groups) restrict the result.
    """
    names = module_names(model)
    declare = getattr(model, "prunable_units", None)
    if declare is not None:
        found = [_named(unit, names, model) for unit in declare()]
    else:
        discovery = discover(model, example_inputs)
        found = discovery.units
        select = getattr(model, "select_units", None)
        if select is not None and units != ALL_UNITS:
            found = select(found)
        found = [_named(unit, names, model) for unit in found]
        if units is not None:  # groups only when asked for: every call without units= works as before
            found = found + list(discovery.groups)
    if units == ALL_UNITS:
        return found
    if not found and declare is None:
        raise ValueError(f"{type(model).__name__} has no single-producer unit; its coupled groups "
                         f"({', '.join(g.name for g in discovery.groups[:3])} ...) are pruned with units='all'")
    if units is not None:
        if isinstance(units, str):
            units = [units]
        by_name = {u.name: u for u in found}
        unknown = [u for u in units if u not in by_name]
        if unknown:
            raise ValueError(f"units= names {unknown[:5]} that are not prunable units of {type(model).__name__}; "
                             f"allowed: {', '.join(list(by_name)[:20])}{' ...' if len(by_name) > 20 else ''}")
        wanted = set(units)
        found = [u for u in found if u.name in wanted]
    return found
