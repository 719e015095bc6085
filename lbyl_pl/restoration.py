"""``prune_and_restore``: selection -> per-unit restoration -> surgery -> network-level refinement, plus the report."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .budget import Allocation, allocate, check_target
from .methods import METHODS, make_method
from .energy import channel_energy
from .selection import CRITERIA, DEFAULT_RATIO, check_criterion, check_ratio, select_item_kept
from .surgery import GroupPlan, UnitPlan, apply_plans, selection_matrix
from .discovery import discover
from .distill import _forward
from .score import _score_logits
from .example_inputs import example_inputs_of
from .refit import RefitReport, check_refit_options, input_sets, refit_consumers, refit_options, refit_record
from .prunable import prunable_units
from .spec import SPEC_FORMAT, attach_spec
from .units import CoupledGroup, unit_tensors

__all__ = ["prune_and_restore", "restore_from_spec", "RestorationReport", "SPEC_FORMAT",
           "count_params", "count_flops"]


@dataclass
class UnitReport:
    name: str
    channels: int
    kept: int
    pruned: int
    coef_abs_mean: float
    coef_abs_max: float
    coef_abs_min: float


@dataclass
class RestorationReport:
    method: str
    criterion: str
    ratio: float
    variant: str
    hparams: dict
    units: list[UnitReport] = field(default_factory=list)
    coef_abs_mean: float = 0.0  # over every delivered coefficient of every pruned filter (Table A9)
    coef_abs_max: float = 0.0
    coef_abs_min: float = 0.0
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    # wall time of this call by stage: trace (0 when discovery was cached), budget (a budget's sensitivity and
    # candidates; the pipeline runs it makes count in their own stages), solve (selection and restoration),
    # surgery, refit (distillation and refit, when asked for), count (params and FLOPs)
    seconds: dict = field(default_factory=dict)
    refit: RefitReport | None = None  # the network-level refit (prune_and_restore(refit=...)), else None
    allocation: Allocation | None = None  # a budget's choice (prune_and_restore(flops=...)), else None

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.method} / {self.criterion} / ratio {self.ratio} / variant {self.variant} "
                 f"{self.hparams}",
                 f"{'unit':<28}{'channels':>9}{'kept':>7}{'pruned':>8}{'|c| mean':>12}{'|c| max':>11}"]
        for u in self.units:
            lines.append(f"{u.name:<28}{u.channels:>9}{u.kept:>7}{u.pruned:>8}"
                         f"{u.coef_abs_mean:>12.5f}{u.coef_abs_max:>11.5f}")
        lines.append(f"coefficients |c|: mean {self.coef_abs_mean:.5f}  max {self.coef_abs_max:.5f}  "
                     f"min {self.coef_abs_min:.5f}")
        lines.append(f"params {self.params_before:,} -> {self.params_after:,} "
                     f"({self.params_after / max(self.params_before, 1):.3f}x);  "
                     f"FLOPs {self.flops_before:,} -> {self.flops_after:,} "
                     f"({self.flops_after / max(self.flops_before, 1):.3f}x)")
        if self.allocation is not None:
            lines.append(self.allocation.format())
        if self.refit is not None:
            lines.append(self.refit.format())
        return "\n".join(lines)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs=None) -> int:
    """FLOPs of one forward pass (``torch.utils.flop_counter``) on ``example_inputs``, by default zeros
    of the architecture's ``example_input_size``; 0 when neither is known."""
    if example_inputs is None and getattr(model, "example_input_size", None) is None:
        return 0
    x = example_inputs_of(model, example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*x) if isinstance(x, tuple) else model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _layer_flops(weight_shape, out_numel: int) -> int:
    """FLOPs ``torch.utils.flop_counter`` counts for a conv or linear layer: 2 x outputs x fan-in."""
    fan_in = 1
    for size in weight_shape[1:]:
        fan_in *= int(size)
    return 2 * out_numel * fan_in


def pruned_flops(found, model: nn.Module, restored: nn.Module) -> int:
    """FLOPs of ``restored`` from the traced count of ``model``: the original total minus what each
    resized conv/linear layer saves (output elements scale with its output channels). Equal to
    counting ``restored`` again (tested), without a second forward pass."""
    total = found.flops
    before, after = dict(model.named_modules()), dict(restored.named_modules())
    for name, out_numel in found.module_out_numel.items():
        old, new = before[name].weight.shape, after[name].weight.shape
        if old != new:
            new_numel = out_numel // int(old[0]) * int(new[0])
            total -= _layer_flops(old, out_numel) - _layer_flops(new, new_numel)
    return total


def select_stage(units, tensors_of, criterion: str, ratio, kept: dict | None,
                 energy: dict | None = None) -> dict[str, list[int]]:
    """Stage 1, selection: the kept output indices of every unit and coupled group (``kept`` fixes some of them by
    name). ``ratio``: one ratio, or one per name (a budget's allocation). ``energy``: each unit's per-channel
    activation energy, for criteria that read inputs."""
    kept_sets = {}
    for unit in units:
        n = unit.n_channels
        unit_ratio = ratio[unit.name] if isinstance(ratio, dict) else ratio
        if kept is not None and unit.name in kept:
            unit_kept = sorted(int(i) for i in kept[unit.name])
            if len(set(unit_kept)) != len(unit_kept) or not unit_kept or \
                    unit_kept[0] < 0 or unit_kept[-1] >= n:
                raise ValueError(f"kept indices for {unit.name!r} must be distinct and in [0, {n})")
        else:
            weight = None if isinstance(unit, CoupledGroup) else tensors_of(unit).weight
            unit_kept = select_item_kept(unit, criterion, unit_ratio, weight,
                                         energy.get(unit.name) if energy is not None else None)
        kept_sets[unit.name] = unit_kept
    return kept_sets


def restore_stage(restorer, units, tensors_of, kept_sets: dict, iterator=None):
    """Stage 2, per-unit restoration: each unit's delivery matrix (and new producer rows, for methods that
    rewrite them) from the *original* weights. Returns the surgery plans, one report per unit and every
    delivered coefficient of the pruned filters."""
    plans, unit_reports, pruned_coefs = [], [], []
    for unit in (iterator if iterator is not None else units):
        unit_kept = kept_sets[unit.name]
        n = unit.n_channels
        if isinstance(unit, CoupledGroup):  # sliced in every member (or fused, Intra-Fusion); the refit compensates
            producers, delivery = restorer.restore_group(unit, unit_kept)
            plans.append(GroupPlan(unit, unit_kept, producers, delivery))
            unit_reports.append(UnitReport(unit.name, n, len(unit_kept), n - len(unit_kept), 0.0, 0.0, 0.0))
            continue
        restoration = restorer.restore_unit(unit, tensors_of(unit), unit_kept)
        S = restoration.delivery
        plans.append(UnitPlan(unit, unit_kept, S, restoration.producer))
        pruned_rows = S[selection_matrix(n, unit_kept, device=S.device).sum(dim=1) == 0].abs()
        pruned_coefs.append(pruned_rows.flatten())
        stats = (pruned_rows.mean().item(), pruned_rows.max().item(), pruned_rows.min().item()) \
            if pruned_rows.numel() else (0.0, 0.0, 0.0)
        unit_reports.append(UnitReport(unit.name, n, len(unit_kept), n - len(unit_kept), *stats))
    return plans, unit_reports, pruned_coefs


def _selection_inputs(model, options, refit_inputs, example_inputs, progress, seed):
    """The inputs an input-aware criterion measures on: the refit's fit inputs (the caller's, or the set the refit
    distils with its options, cached, so that both stages see the same inputs)."""
    return input_sets(model, options or check_refit_options({}), refit_inputs, None, example_inputs, seed,
                      progress, "refit_inputs")[0]


def group_layer_rows(units, kept_sets: dict) -> dict[str, list[int]]:
    """The kept output rows of every producer of the coupled groups among ``units`` (the refit fits a pruned
    producer's kept outputs), by module name."""
    rows = {}
    for unit in units:
        if isinstance(unit, CoupledGroup):
            for member in unit.producers:
                rows[member.name] = [i for c in kept_sets[unit.name] for i in member.positions[c]]
    return rows


def check_group_support(restorer, units) -> None:
    """A method without a restoration for coupled groups refuses them, naming the first."""
    groups = [u for u in units if isinstance(u, CoupledGroup)]
    if groups and not restorer.supports_groups:
        allowed = ", ".join(name for name, cls in METHODS.items() if cls.supports_groups)
        g = groups[0]
        raise ValueError(f"method {restorer.name!r} restores single-producer units only (its algebra assumes one "
                         f"producer and one BN per channel); coupled group {g.name!r} ({g.kind}, "
                         f"{len(g.producers)} producer(s)) and {len(groups) - 1} more were asked for. Methods that "
                         f"prune groups: {allowed} (with refit=True, which refits every reader of a group); or leave "
                         "units= at its default")


def refine_stage(model: nn.Module, restored: nn.Module, kept_sets: dict, options: dict | None, refit_inputs,
                 example_inputs, progress: bool, seed: int):
    """Stage 4, network-level refinement: sees the original and the pruned network together and visits the
    layers in execution order (``lbyl_pl.refit``). Works in place on ``restored`` (a fresh network). ``options``:
    the checked refit options (``lbyl_pl.refit.refit_options``), ``None`` for no refinement. Returns the
    ``RefitReport``, or ``None``."""
    if options is None:
        return None
    started = time.perf_counter()
    fit, held, source = input_sets(model, options, refit_inputs, None, example_inputs, seed, progress,
                                   "refit_inputs")
    distill_seconds = time.perf_counter() - started
    report = refit_consumers(model, restored, fit, held, kept_sets, options, progress=progress, seed=seed)
    report.inputs = source
    report.seconds = {"distill": distill_seconds, **report.seconds}
    return report


def prune_and_restore(model: nn.Module, method="lbyl", criterion: str = "l2-norm", ratio: float = DEFAULT_RATIO,
                      *, variant: str = "paper", kept: dict | None = None, progress: bool = False,
                      example_inputs=None, units=None, refit=False, refit_inputs=None, seed: int = 0,
                      flops: float | None = None, params: float | None = None, budget: dict | None = None,
                      **hparams):
    """Prune every prunable unit of ``model`` at ``ratio`` and restore it without data.

    Returns ``(restored, report)``. ``restored`` is a new, physically smaller module carrying its
    pruning spec in ``restored.lbyl_spec`` (plain data, see ``lbyl_pl.save_restored``); ``model`` is
    not modified. ``method`` is a registered name (``lbyl_pl.METHODS``: ``prune``, ``merge``, ``lbyl``,
    ``fusion``) with its hyperparameters as keyword arguments (``lambda1``, ``lambda2``, ``solver`` for
    LBYL; ``threshold``, ``nm_lambda`` for NM, ``threshold=None`` taking the architecture's default, 0.1
    for conv nets and 0.45 for LeNet; each method's ``hyperparameters`` list them), or a
    ``RestorationMethod`` object. ``variant="paper"`` reproduces the published tables; ``"exact"`` uses
    the exact BN algebra. ``kept`` optionally fixes the kept indices per unit name instead of running the
    criterion. ``ratio`` defaults to ``lbyl_pl.selection.DEFAULT_RATIO`` (0.5), as everywhere in the package.

    A budget replaces the one ratio: ``flops=0.5`` keeps half of the original FLOPs (``params=`` likewise, both may
    be given), with a ratio per unit chosen without data (``lbyl_pl.budget``: each unit's sensitivity measured on
    distilled inputs, greedy and uniform candidate allocations that meet the budget, each run through this whole
    pipeline and the one with the lowest output KL on held-out distilled inputs kept; ``budget`` holds the options,
    see ``BUDGET_DEFAULTS``). The report's ``allocation`` and the spec's ``budget`` record the choice.

    ``units="all"`` also prunes the coupled groups discovery finds (residual streams, concatenations, grouped
    convs; ``lbyl_pl.discover(...).groups``), on any network, built-ins included; ``prune`` slices them,
    ``fusion`` fuses them along one transport plan, ``refit=True`` compensates at their readers; LBYL and NM
    raise, naming the group.

    Restoration runs where ``model`` is: a network on a GPU is restored there, and ``restored`` lives on the
    devices of ``model``'s parameters (selection, a ranking of a few scores, and Intra-Fusion's transport
    plan are computed on the CPU: see ``lbyl_pl.selection`` and ``lbyl_pl.methods.fusion``).

    The pipeline runs in stages: selection (kept sets), per-unit restoration (the method), surgery (the
    smaller network), then, with ``refit=True`` (or a dict of options, see ``lbyl_pl.refit.REFIT_DEFAULTS``),
    network-level refinement: the consumers of the pruned units are refitted in execution order on inputs
    distilled from ``model`` (no data is read; ``seed`` seeds the distillation), or on ``refit_inputs``, the
    caller's own unlabelled inputs ``(N, *input_shape)``. The report's ``refit`` holds each layer's held-out
    fit error; the spec records the refit.

    Any ``nn.Module`` works: its units are discovered on the graph traced on ``example_inputs`` (a
    tensor, or a tuple of the forward's inputs; default zeros of ``model.example_input_size``); a
    built-in architecture keeps the paper's selection among them. ``units`` (producer module names,
    see ``lbyl_pl.discover``) restricts the pruning to those units. Params and FLOPs in the report
    are counted on the example inputs.
    """
    restorer = make_method(method, variant, **hparams)
    check_criterion(criterion)
    _, flops, params, budget_options = check_target(ratio, flops, params, budget)  # a budget replaces the ratio
    budgeted = budget_options is not None
    check_ratio(ratio)  # the default one, with a budget
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    options = refit_options(refit)  # bad options fail before any work
    if options is None and refit_inputs is not None and not budgeted and \
            not getattr(CRITERIA.get(criterion), "needs_inputs", False):
        raise ValueError("refit_inputs needs refit=True (or a dict of refit options), a budget (flops=/params=, "
                         "measured on them) or a criterion that reads inputs (output-energy)")
    restorer = restorer.bind(model)
    method, variant, hparams = restorer.name, restorer.variant, dict(restorer.hparams)
    clock = [time.perf_counter()]
    seconds = {}

    def lap(stage):
        now = time.perf_counter()
        seconds[stage] = seconds.get(stage, 0.0) + now - clock[0]
        clock[0] = now

    found = None
    if getattr(model, "prunable_units", None) is None:
        example_inputs = example_inputs_of(model, example_inputs)
        found = discover(model, example_inputs)
    units = prunable_units(model, example_inputs, units)
    check_group_support(restorer, units)
    lap("trace")
    iterator = None
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(units, desc=f"{method}/{criterion}/r={ratio}", unit="layer", leave=False)

    cached: dict[int, object] = {}

    def tensors_of(unit):  # float64 copies of the *original* weights (docs/method.md §5.5), made once per unit
        if id(unit) not in cached:
            cached[id(unit)] = unit_tensors(unit)
        return cached[id(unit)]

    energy = None
    if getattr(CRITERIA[criterion], "needs_inputs", False):  # an input-aware criterion: measure on inputs
        energy = channel_energy(model, units, _selection_inputs(model, options, refit_inputs, example_inputs,
                                                                progress, seed))
        lap("energy")

    def build(ratios, iterator=None, only=None):
        """Stages 1-4 for one ratio (or one per unit); ``only``: that unit alone is pruned (a budget's measurement)."""
        chosen = units if only is None else [only]
        with torch.no_grad():
            kept_sets = select_stage(chosen, tensors_of, criterion, ratios, kept, energy)
            plans, unit_reports, pruned_coefs = restore_stage(restorer, chosen, tensors_of, kept_sets, iterator)
            lap("solve")
            restored = apply_plans(model, plans)
            lap("surgery")
        layer_rows = group_layer_rows(chosen, kept_sets)
        refit_report = refine_stage(model, restored, {**kept_sets, **layer_rows}, options, refit_inputs,
                                    example_inputs, progress, seed)
        if refit_report is not None:
            lap("refit")
        return kept_sets, plans, unit_reports, pruned_coefs, restored, layer_rows, refit_report

    allocation = None
    if budgeted:
        if found is None:
            raise ValueError(f"a budget needs the traced graph; {type(model).__name__} declares its own units "
                             "(prunable_units()), which the budget cannot cost")
        fit, held, _ = input_sets(model, options or check_refit_options({}), refit_inputs, None, example_inputs,
                                  seed, progress, "refit_inputs")
        def restored_kl(item, item_ratio):  # one item pruned alone, restored by the method and the refit
            one = build({u.name: (item_ratio if u is item else 0.0) for u in units}, only=item)
            return _heldout_kl(model, one[4], one[6], held if held is not None else fit)

        measure_restored = budget_options["restored"] or (budget_options["restored"] is None and options is not None)
        candidates = allocate(model, found, units, criterion, fit[:budget_options["inputs"]], flops=flops,
                              params=params, options=budget_options, progress=progress,
                              restored_kl=restored_kl if measure_restored else None)
        lap("budget")
        # decided by measurement: every candidate through the whole pipeline, scored on held-out distilled inputs
        best = None
        for candidate in candidates:
            built = build(candidate.ratios)
            candidate.heldout_kl = _heldout_kl(model, built[4], built[6], held if held is not None else fit)
            if best is None or candidate.heldout_kl < best[0].heldout_kl:
                best = (candidate, built)
        allocation, built = best
        allocation.candidates = {c.label: c.heldout_kl for c in candidates}
    else:
        built = build(ratio, iterator)
    kept_sets, plans, unit_reports, pruned_coefs, restored, layer_rows, refit_report = built
    cached.clear()
    ratio_value = _overall_ratio(units, kept_sets) if budgeted else float(ratio)

    spec = {
        "format": SPEC_FORMAT,
        "arch": copy.deepcopy(getattr(model, "lbyl_arch", None)),
        # what discovery traced on: restore_from_spec re-traces a fresh model on inputs of this shape
        "example_input_shape": _plain_shape(found.input_shape) if found is not None else None,
        "method": method, "criterion": criterion, "ratio": ratio_value, "variant": variant,
        "hparams": hparams,
        "units": {(plan.group if isinstance(plan, GroupPlan) else plan.unit).name: list(plan.kept) for plan in plans},
    }
    if allocation is not None:
        spec["budget"] = {**allocation.target, "ratios": dict(allocation.ratios)}
    if layer_rows:  # the refit (lbyl_pl.refit) reads which rows each producer of a coupled group kept
        spec["group_layers"] = layer_rows
    if refit_report is not None:
        spec["refit"] = refit_record(refit_report.options, refit_report.inputs)
    attach_spec(restored, spec)
    # one device for the report's statistics (a method may deliver on another one than the weights')
    all_coefs = torch.cat([c.to(pruned_coefs[0].device) for c in pruned_coefs]) if pruned_coefs else torch.zeros(0)
    report = RestorationReport(
        method, criterion, ratio_value, variant, hparams, unit_reports,
        all_coefs.mean().item() if all_coefs.numel() else 0.0,
        all_coefs.max().item() if all_coefs.numel() else 0.0,
        all_coefs.min().item() if all_coefs.numel() else 0.0,
        count_params(model), count_params(restored),
        found.flops if found is not None else count_flops(model, example_inputs),
        pruned_flops(found, model, restored) if found is not None else count_flops(restored, example_inputs))
    report.refit = refit_report
    report.allocation = allocation
    lap("count")
    report.seconds = seconds
    return restored, report


@torch.no_grad()
def _heldout_kl(model: nn.Module, restored: nn.Module, refit_report, held: torch.Tensor) -> float:
    """Output KL of ``restored`` against ``model`` on held-out inputs (the refit's own figure when it ran)."""
    if refit_report is not None and math.isfinite(refit_report.output_kl_after):
        return float(refit_report.output_kl_after)
    was = (model.training, restored.training)
    model.eval()
    restored.eval()
    try:
        param = next(restored.parameters())
        x = held.to(device=param.device, dtype=param.dtype)
        return float(_score_logits(_forward(model, x), _forward(restored, x), "kl"))
    finally:
        model.train(was[0])
        restored.train(was[1])


def _overall_ratio(units, kept_sets: dict) -> float:
    """With a budget (a ratio per unit), the fraction of all their channels pruned: the report's and spec's ratio."""
    total = sum(u.n_channels for u in units)
    kept = sum(len(kept_sets[u.name]) for u in units)
    return 1.0 - kept / total if total else 0.0


def _plain_shape(shape):
    """Discovery's input shape as plain lists for the spec: ``[1, 3, 224, 224]`` for one tensor, a list of
    those for several positional inputs; ``None`` for inputs zeros cannot rebuild (e.g. a dict)."""
    if all(isinstance(s, int) for s in shape):
        return list(shape)
    if all(isinstance(s, tuple) and all(isinstance(d, int) for d in s) for s in shape):
        return [list(s) for s in shape]
    return None


def _inputs_from_shape(model: nn.Module, shape):
    if shape is None:
        return None
    param = next(model.parameters(), None)
    kwargs = {"dtype": param.dtype if param is not None else torch.float32,
              "device": param.device if param is not None else "cpu"}
    if shape and isinstance(shape[0], list):
        return tuple(torch.zeros(s, **kwargs) for s in shape)
    return torch.zeros(shape, **kwargs)


def restore_from_spec(model: nn.Module, spec: dict, example_inputs=None) -> nn.Module:
    """Rebuild the pruned *shapes* described by ``spec`` on an unpruned ``model`` (weights are placeholders
    until a state dict is loaded).

    ``model`` may be any network of the same structure as the one that was pruned (the user's own
    unpruned model): its units are discovered again on ``example_inputs`` (default: zeros of the shape
    recorded in the spec) and matched by producer name.
    """
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"not an lbyl-pl pruning spec (expected format {SPEC_FORMAT!r})")
    if example_inputs is None and getattr(model, "example_input_size", None) is None:
        example_inputs = _inputs_from_shape(model, spec.get("example_input_shape"))
    if getattr(model, "prunable_units", None) is None:
        # all discovered units and groups, not only a built-in's selection: the spec says which were pruned
        found = discover(model, example_inputs)
        units = {u.name: u for u in [*found.units, *found.groups]}
    else:
        units = {u.name: u for u in prunable_units(model)}
    unknown = sorted(set(spec["units"]) - set(units))
    if unknown:
        raise ValueError(f"pruning spec names units this model does not have: {unknown[:5]} "
                         f"(units found: {sorted(units)[:5]}{' ...' if len(units) > 5 else ''})")
    plans = []
    for name, kept in spec["units"].items():
        unit = units[name]
        kept = [int(i) for i in kept]
        if not kept or max(kept) >= unit.n_channels:
            raise ValueError(f"pruning spec keeps indices outside [0, {unit.n_channels}) in {name!r}")
        if isinstance(unit, CoupledGroup):
            plans.append(GroupPlan(unit, kept))
            continue
        device = unit.layer.weight.device
        plans.append(UnitPlan(unit, kept, selection_matrix(unit.n_channels, kept, device=device)))
    return attach_spec(apply_plans(model, plans), copy.deepcopy(spec))
