"""Restoration methods as objects, registered in one place.

A method is a subclass of ``RestorationMethod`` that owns its name, title, hyperparameters (with their
defaults, checks and help) and its restoration of one unit. ``@register`` adds it to ``METHODS``; the API,
the callback, the entry scripts, ``--help`` and the report read everything from there, so a new method is
one file plus its registry import in ``methods/__init__.py``.

Restoring a unit returns a ``UnitRestoration``: the delivery matrix ``S`` (n x m) that the surgery folds
into every consumer (``U' = U S``), and, for a method that also rewrites the kept producer filters
(Intra-Fusion), their new rows, bias and BatchNorm state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..units import PrunableUnit, UnitTensors
from .common import VARIANTS, check_variant

__all__ = ["Hyperparameter", "ProducerUpdate", "RestorationMethod", "UnitRestoration", "METHODS", "register",
           "get_method", "make_method", "hyperparameter_owners"]


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a method: its default, a check that returns the normalised value (or
    raises ``ValueError`` naming the bad value and what is allowed) and a one-line help text."""
    name: str
    default: Any
    help: str
    check: Callable[[Any], Any] = lambda value: value


@dataclass
class ProducerUpdate:
    """New values for the kept channels of a unit's producer, in kept order.

    ``weight``: ``(m, *producer.weight.shape[1:])``; ``bias``: ``(m,)`` or ``None`` (the producer's bias
    is then only sliced); ``bn``: the kept channels' ``weight``, ``bias``, ``running_mean`` and
    ``running_var`` (each ``(m,)``) or ``None`` (the BatchNorm is only sliced). All float64.
    """
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    bn: dict[str, torch.Tensor] | None = None


@dataclass
class UnitRestoration:
    delivery: torch.Tensor                 # (n, m) float64: U' = U S for every consumer
    producer: ProducerUpdate | None = None  # None: the kept producer rows are only selected


class RestorationMethod:
    """Base class of the restoration methods (see the module docstring).

    Subclasses set ``name``, ``title`` (as tables print it), ``summary`` (one line for ``--help``) and
    ``hyperparameters``, and implement ``restore_unit``. ``config_table`` names the config section that
    holds one value pair per (criterion, ratio) (``restore.lambdas`` for LBYL, ``restore.nm`` for NM) and
    ``table_hparams`` the hyperparameters it holds, in order; they are also what a grid search varies.
    ``auto_grid`` is the default grid of the data-free choice (``lbyl_pl.data_free``). This is the only place a
    method's table is declared: ``lbyl_pl.config`` derives ``restore.<config_table>`` (and whether it may be
    ``auto``: when ``auto_grid`` is set) from the registry.
    """
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = ()
    config_table: ClassVar[str | None] = None
    table_hparams: ClassVar[tuple[str, ...]] = ()
    auto_grid: ClassVar[dict[str, tuple]] = {}  # what lbyl_pl.data_free searches without data
    # whether the method prunes coupled groups (residual streams, concatenations, grouped convs; units="all"): its
    # restoration of a group is then plain slicing, and the refit (refit=True) compensates at every reader
    supports_groups: ClassVar[bool] = False

    def __init__(self, variant: str = "paper", **hparams):
        check_variant(variant)
        allowed = [h.name for h in self.hyperparameters]
        unknown = sorted(set(hparams) - set(allowed))
        if unknown:
            owners = hyperparameter_owners()
            where = "; ".join(f"{u} belongs to {', '.join(owners[u])}" for u in unknown if u in owners)
            raise ValueError(f"method {self.name!r} takes no hyperparameter {', '.join(map(repr, unknown))} "
                             f"(its hyperparameters: {', '.join(allowed) or 'none'})" + (f"; {where}" if where else ""))
        self.variant = variant
        self.hparams = {h.name: h.check(hparams.get(h.name, h.default)) for h in self.hyperparameters}

    @classmethod
    def defaults(cls) -> dict:
        return {h.name: h.default for h in cls.hyperparameters}

    def bind(self, model: nn.Module) -> "RestorationMethod":
        """This method with the defaults that depend on the network resolved (e.g. NM's threshold): ``self``,
        or a bound copy (``self`` is left as it was)."""
        return self

    def restore_unit(self, unit: PrunableUnit, tensors: UnitTensors, kept: list[int]) -> UnitRestoration:
        raise NotImplementedError

    def restore_group(self, group, kept: list[int]):
        """A coupled group's compensation (called only when ``supports_groups``): ``(new kept rows of producers by
        module name, the (n, m) delivery matrix for every reader)``, or ``(None, None)``: the group is only sliced."""
        return None, None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}(variant={self.variant!r}{', ' if args else ''}{args})"


METHODS: dict[str, type[RestorationMethod]] = {}


def register(cls: type[RestorationMethod]) -> type[RestorationMethod]:
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"a method needs a new, non-empty name; got {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[RestorationMethod]:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}") from None


def make_method(method, variant: str = "paper", **hparams) -> RestorationMethod:
    """A method object from its registered name (or the object itself, when no other argument is given)."""
    if isinstance(method, RestorationMethod):
        if hparams:
            raise ValueError(f"hyperparameters {sorted(hparams)} given beside a method object {method!r}: "
                             "set them on the object")
        return method
    return get_method(method)(variant=variant, **hparams)


def hyperparameter_owners() -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for method in METHODS.values():
        for h in method.hyperparameters:
            owners.setdefault(h.name, []).append(method.name)
    return owners


def describe_methods() -> str:
    """The registry as ``--help`` prints it: each method's title, summary and hyperparameters."""
    lines = ["methods (restore.methods):"]
    for method in METHODS.values():
        lines.append(f"  {method.name:<7} {method.title}: {method.summary}")
        for h in method.hyperparameters:
            lines.append(f"            {h.name} (default {h.default!r}): {h.help}")
    lines.append(f"variants: {', '.join(VARIANTS)}")
    return "\n".join(lines)


def check_choice(name: str, allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
        return value
    return check
