"""Budgets: per-unit pruning ratios that keep a given fraction of the original FLOPs (or parameters), without data.

``prune_and_restore(model, ..., flops=0.5)`` asks for half the FLOPs instead of one ratio for every unit. The
allocation is decided by measurement on inputs distilled from the network (no dataset is read):

1. *Sensitivity*: every unit and coupled group is pruned alone at a few ratios (its criterion's kept set) and the
   output KL against the original network is measured on distilled inputs. Pruning is simulated by zeroing the
   weights through which the readers see the pruned channels, which is the same function as the smaller network
   (``lbyl_pl.check_units`` verifies it for every unit and group), so no network is copied per measurement.
2. *Candidates*: starting from nothing pruned, the unit whose next ratio step costs the least KL per FLOP saved
   takes that step (KL interpolated between the measured ratios), until the budget is met, once per cap on any
   unit's ratio (``caps``; the KL of units pruned together is taken as the sum of their KLs alone, which holds for
   small steps and fails for large ones, hence several caps); and the smallest uniform ratio that meets the budget,
   over all units and groups and over the single-producer units alone. With the refit on, every unit is also
   measured pruned alone *and restored* (method and refit), and the greedy search runs on those curves too.
3. *Choice*: ``prune_and_restore`` runs every candidate through the whole pipeline (restoration, and the refit when
   asked for) and keeps the one with the lowest output KL on held-out distilled inputs. On ResNet-56 the greedy
   allocation alone lost to uniform ratios (``results/README.md``, "FLOP budgets"): the measurement decides.

FLOPs and parameters of an allocation follow from the kept counts alone (``CostModel``): a conv's cost scales with
its kept outputs times its kept inputs per group, so the search costs no forward pass. The counts equal what
``torch.utils.flop_counter`` measures on the pruned network (tested).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .checks import read_columns, zero_inputs
from .distill import _forward
from .score import _score_logits
from .options import merged_options
from .selection import DEFAULT_RATIO, check_criterion, check_ratio, item_kept_count, select_item_kept
from .units import BN_TYPES, CoupledGroup, module_names, unit_tensors

__all__ = ["BUDGET_DEFAULTS", "Allocation", "CostModel", "allocate", "check_budget", "check_budget_options",
           "check_target"]

BUDGET_DEFAULTS = {
    "inputs": 16,                    # distilled inputs the sensitivity is measured on (the refit's fit set, first ones)
    "ratios": (0.25, 0.5, 0.75),     # ratios at which every unit is pruned alone and measured
    "caps": (0.5, 0.7, 0.9),         # one greedy candidate per cap: no unit loses more than that fraction
    "step": 0.05,                    # the allocation's ratio step per unit
    # also measure each unit pruned alone *and restored* (method + refit) at ``ratios``, for a second set of greedy
    # candidates: None does so when the refit is on (prune_and_restore(refit=True)), True / False always / never
    "restored": None,
}


def check_budget(value, label: str):
    """A budget is the fraction of the original count to keep: a number in (0, 1], or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not 0.0 < value <= 1.0:
        raise ValueError(f"{label} must be the fraction of the original {label} to keep, a number in (0, 1]; "
                         f"got {value!r}")
    return float(value)


def check_target(ratio, flops, params, budget) -> tuple:
    """A call's target, checked: one ratio, or a budget (``flops=`` and/or ``params=``, fractions of the original to
    keep, ``budget`` its options) that replaces the default ratio; a ratio other than the default beside a budget,
    or options without a budget, is an error. Returns ``(ratio, None, None, None)``, or ``(None, flops, params,
    the checked budget options)``. ``prune_and_restore`` and ``RestoreCallback`` both check with it."""
    flops, params = check_budget(flops, "flops"), check_budget(params, "params")
    budgeted = flops is not None or params is not None
    if budgeted and ratio is not None and ratio != DEFAULT_RATIO:
        raise ValueError(f"give ratio= or a budget (flops=/params=), not both; got ratio={ratio!r} and "
                         f"flops={flops!r}, params={params!r}")
    if budget is not None and not budgeted:
        raise ValueError("budget= options need flops= or params=")
    if budgeted:
        return None, flops, params, check_budget_options(budget)
    check_ratio(ratio)
    return ratio, None, None, None


def check_budget_options(options) -> dict:
    merged = merged_options(options, BUDGET_DEFAULTS, "budget")
    if isinstance(merged["inputs"], bool) or not isinstance(merged["inputs"], int) or merged["inputs"] < 1:
        raise ValueError(f"budget option inputs must be a positive integer, got {merged['inputs']!r}")
    ratios = merged["ratios"]
    if not isinstance(ratios, (list, tuple)) or not ratios or \
            any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"budget option ratios must be numbers in (0, 1), got {ratios!r}")
    merged["ratios"] = tuple(sorted(float(r) for r in ratios))
    caps = merged["caps"]
    if not isinstance(caps, (list, tuple)) or not caps or \
            any(isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c < 1.0 for c in caps):
        raise ValueError(f"budget option caps must be numbers in (0, 1), got {caps!r}")
    merged["caps"] = tuple(sorted(float(c) for c in caps))
    if merged["restored"] not in (None, True, False):
        raise ValueError(f"budget option restored must be None, True or False, got {merged['restored']!r}")
    v = merged["step"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
        raise ValueError(f"budget option step must be a number in (0, 1), got {v!r}")
    return merged


@dataclass
class Allocation:
    """What a budget chose: the ratio of every unit and group, the predicted counts, the measured sensitivities."""
    target: dict                       # {"flops": 0.5} and/or {"params": ...}: fractions of the original to keep
    ratios: dict = field(default_factory=dict)
    predicted_flops: int = 0
    predicted_params: int = 0
    flops_before: int = 0
    params_before: int = 0
    sensitivity: dict = field(default_factory=dict)  # name -> [[ratio, output KL], ...] (pruned alone)
    sensitivity_restored: dict = field(default_factory=dict)  # the same, pruned alone and restored (if measured)
    seconds: float = 0.0
    label: str = ""                    # which candidate: "greedy, cap 0.7", "uniform 0.35", ...
    heldout_kl: float = float("nan")   # the whole pipeline's output KL on held-out distilled inputs
    candidates: dict = field(default_factory=dict)  # every candidate's label -> its held-out KL (the chosen one's)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"budget {self.target}: {self.label}, FLOPs {self.predicted_flops / max(self.flops_before, 1):.3f}x, "
                 f"params {self.predicted_params / max(self.params_before, 1):.3f}x predicted ({self.seconds:.1f} s)"]
        if self.candidates:
            lines.append("  candidates (held-out output KL): " +
                         ", ".join(f"{k} {v:.4g}" for k, v in self.candidates.items()))
        for name, ratio in self.ratios.items():
            curve = " ".join(f"{r:.2f}:{kl:.3g}" for r, kl in self.sensitivity.get(name, []))
            lines.append(f"  {name:<40} ratio {ratio:.3f}   KL alone {curve}")
        return "\n".join(lines)


def _kernel(weight_shape) -> int:
    size = 1
    for s in weight_shape[2:]:
        size *= int(s)
    return size


class CostModel:
    """FLOPs and parameters of the network when each unit or group loses some of its channels, from the kept
    counts alone. ``found``: the discovery of ``model`` (its traced FLOPs and conv/linear output sizes)."""

    def __init__(self, model: nn.Module, found, items):
        self.flops_before = int(found.flops)
        self.params_before = sum(p.numel() for p in model.parameters())
        modules = dict(model.named_modules())
        names = module_names(model)
        self.touch: dict[str, list[tuple[str, str, int]]] = {}  # item -> (module name, axis, positions per channel)
        for item in items:
            touches = []
            if isinstance(item, CoupledGroup):
                for m in item.members:
                    axis = {"out": "out", "depthwise": "out", "bn": "bn", "in": "in"}[m.role]
                    touches.append((m.name, axis, len(m.positions[0])))
            else:
                touches.append((item.name, "out", 1))
                if item.bn is not None:
                    touches.append((names[id(item.bn)], "bn", 1))
                for module, mname in zip(item.passthrough, item.passthrough_names):
                    touches.append((mname, "bn" if isinstance(module, BN_TYPES) else "out", 1))
                for mname, r in zip(item.consumer_names, item.features_per_channel):
                    touches.append((mname, "in", r))
            self.touch[item.name] = touches
        self.modules = {name: modules[name] for t in self.touch.values() for name, _, _ in t}
        self.out_numel = dict(found.module_out_numel)

    def _module_cost(self, name: str, out_cut: int, in_cut: int) -> tuple[int, int]:
        module = self.modules[name]
        if isinstance(module, BN_TYPES):
            n = module.num_features - out_cut
            return 0, (2 * n if module.affine else 0)
        weight = module.weight
        groups = getattr(module, "groups", 1)
        depthwise = groups > 1 and groups == weight.shape[0] and weight.shape[1] == 1
        out = weight.shape[0] - out_cut
        per_group_in = weight.shape[1] - (0 if depthwise else in_cut // groups)
        fan_in = per_group_in * _kernel(weight.shape)
        params = out * fan_in + (out if module.bias is not None else 0)
        numel = self.out_numel.get(name, 0)
        flops = 2 * (numel // weight.shape[0]) * out * fan_in if numel else 0
        return flops, params

    def delta(self, cuts: dict, item_name: str, count: int) -> tuple[int, int]:
        """Change of ``(FLOPs, params)`` when item ``item_name`` loses ``count`` more channels, from the state
        ``cuts`` (module name -> [output cut, input cut]; see ``cut``)."""
        dflops = dparams = 0
        for name, (d_out, d_in) in self.cut({}, item_name, count).items():
            out_cut, in_cut = cuts.get(name, (0, 0))
            f0, p0 = self._module_cost(name, out_cut, in_cut)
            f1, p1 = self._module_cost(name, out_cut + d_out, in_cut + d_in)
            dflops += f1 - f0
            dparams += p1 - p0
        return dflops, dparams

    def cut(self, cuts: dict, item_name: str, count: int) -> dict:
        """Record in ``cuts`` (module name -> [output cut, input cut]) that item ``item_name`` loses ``count`` more
        channels; returns ``cuts``."""
        for name, axis, r in self.touch[item_name]:
            cut = cuts.setdefault(name, [0, 0])
            cut[1 if axis == "in" else 0] += count * r
        return cuts

    def cost(self, pruned: dict[str, int]) -> tuple[int, int]:
        """``(FLOPs, params)`` of the network with ``pruned[name]`` channels removed from each unit or group."""
        cuts: dict = {}
        for item_name, count in pruned.items():
            self.cut(cuts, item_name, count)
        flops, params = self.flops_before, self.params_before
        for name, (out_cut, in_cut) in cuts.items():
            f0, p0 = self._module_cost(name, 0, 0)
            f1, p1 = self._module_cost(name, out_cut, in_cut)
            flops += f1 - f0
            params += p1 - p0
        return flops, params


def pruned_count(item, ratio: float) -> int:
    """Channels an item loses at ``ratio`` (the counting rule of its selection)."""
    return 0 if ratio <= 0.0 else item.n_channels - item_kept_count(item, ratio)


def kept_at(item, criterion: str, ratio: float) -> list[int]:
    """The kept set selection gives ``item`` at ``ratio`` (as ``prune_and_restore`` would)."""
    weight = None if isinstance(item, CoupledGroup) else unit_tensors(item).weight
    return select_item_kept(item, criterion, ratio, weight)


SENSITIVITY_CHUNK = 8  # inputs per forward pass of the sensitivity measurement


class _PrefixCache:
    """Outputs of the network's Conv2d/Linear/BatchNorm layers on the reference pass, replayed for every layer that
    runs before the first changed one: zeroing a unit's readers changes nothing the network computes before them, so
    a measurement pays only for the rest of the network (about half of it, on average). Layers called more than once
    are never replayed. An output that an in-place op downstream wrote into on the reference pass
    (``ReLU(inplace=True)``, ``out += identity``; seen in its version counter) is kept as it was and handed out as a
    copy; any other is handed out as it is. Costs the memory of those layers' outputs on the inputs."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor):
        self.outputs: dict[nn.Module, torch.Tensor] = {}
        self.written: set[nn.Module] = set()  # outputs an in-place op wrote into: replayed as copies
        self.order: dict[nn.Module, int] = {}
        calls: dict[nn.Module, int] = {}
        seen: dict[nn.Module, tuple] = {}

        def record(module, args, output):
            calls[module] = calls.get(module, 0) + 1
            if isinstance(output, torch.Tensor):
                self.order.setdefault(module, len(self.order))
                seen[module] = (output, output._version)
                self.outputs[module] = output.clone()

        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, *BN_TYPES))]
        hooks = [m.register_forward_hook(record) for m in layers]
        try:
            self.reference = _forward(model, inputs)
        finally:
            for h in hooks:
                h.remove()
        for module, (output, version) in seen.items():
            if output._version != version:
                self.written.add(module)
            else:
                self.outputs[module] = output  # nothing writes into it: the pass's own tensor, no second copy
        for module, count in calls.items():
            if count > 1:
                self.outputs.pop(module, None)

    def forward(self, model: nn.Module, inputs: torch.Tensor, changed: list[nn.Module]) -> torch.Tensor:
        """The network's output with every cached layer called before the first of ``changed`` replayed."""
        first = min((self.order.get(m, 0) for m in changed), default=0)
        replayed = [m for m, i in self.order.items() if i < first and m in self.outputs]
        for module in replayed:
            cached = self.outputs[module]
            module.forward = (lambda t: (lambda *args, **kwargs: t.clone()))(cached) if module in self.written \
                else (lambda t: (lambda *args, **kwargs: t))(cached)
        try:
            return _forward(model, inputs)
        finally:
            for module in replayed:
                del module.forward


@torch.no_grad()
def sensitivity(model: nn.Module, items, inputs: torch.Tensor, criterion: str, ratios, progress: bool = False):
    """``name -> [(ratio, output KL)]``: each unit or group pruned alone (zeroed at its readers), measured against
    the original network's outputs on ``inputs``. ``model`` is not modified (its reader weights are restored)."""
    was = model.training
    model.eval()
    modules = dict(model.named_modules())
    curves = {}
    try:
        # in chunks: measured on 2 cores, a ResNet-50 pass at 224 px costs 25 % more per image at batch 16 than at 8
        caches = [(_PrefixCache(model, chunk), chunk) for chunk in inputs.split(SENSITIVITY_CHUNK)]
        reference = torch.cat([cache.reference for cache, _ in caches])
        jobs = [(item, r) for item in items for r in ratios]
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(jobs), desc="sensitivity", unit="pass", leave=False)
        for item in items:
            curve = []
            for ratio in ratios:
                if pruned_count(item, ratio) == 0:
                    curve.append((ratio, 0.0))
                    continue
                kept = set(kept_at(item, criterion, ratio))
                dropped = [c for c in range(item.n_channels) if c not in kept]
                saved = []
                for reader, columns in read_columns(item, dropped):
                    weight = modules[reader].weight
                    saved.append((modules[reader], weight, weight.detach().clone()))
                    zero_inputs(modules[reader], columns)
                try:
                    changed = [m for m, _, _ in saved]
                    logits = torch.cat([cache.forward(model, chunk, changed) for cache, chunk in caches])
                    curve.append((ratio, _score_logits(reference, logits, "kl")))
                finally:
                    for _, weight, value in saved:
                        weight.copy_(value)
                if bar is not None:
                    bar.update(1)
            curves[item.name] = curve
        if bar is not None:
            bar.close()
    finally:
        model.train(was)
    return curves


def _interpolate(curve, ratio: float) -> float:
    """KL at ``ratio`` from the measured points (0 at ratio 0; beyond the last point, its last slope, never
    decreasing)."""
    points = [(0.0, 0.0)] + [(r, max(kl, 0.0)) for r, kl in curve]
    for (r0, k0), (r1, k1) in zip(points, points[1:]):
        if ratio <= r1:
            return k0 + (k1 - k0) * (ratio - r0) / (r1 - r0)
    (r0, k0), (r1, k1) = points[-2], points[-1]
    slope = max((k1 - k0) / (r1 - r0), 0.0) if r1 > r0 else 0.0
    return k1 + slope * (ratio - r1)


def allocate(model: nn.Module, found, items, criterion: str, inputs: torch.Tensor, *, flops: float | None = None,
             params: float | None = None, options: dict | None = None, progress: bool = False,
             restored_kl=None) -> list[Allocation]:
    """Candidate allocations meeting ``flops`` and/or ``params`` (fractions of the original to keep): the greedy
    one (least summed output KL, see the module docstring) under every cap of ``options['caps']``, and the
    smallest uniform ratio over all items, and over the single-producer units alone, that meets the budget.
    ``prune_and_restore`` measures each through the whole pipeline and keeps the best. ``restored_kl(item,
    ratio)``, when given, measures an item pruned alone *and restored* (the method and the refit): its curves give
    a second set of greedy candidates (what the pipeline cannot recover, rather than what pruning removes). Raises
    ``ValueError`` when no allocation reaches the budget."""
    started = time.perf_counter()
    flops, params = check_budget(flops, "flops"), check_budget(params, "params")
    if flops is None and params is None:
        raise ValueError("a budget needs flops= or params= (fractions of the original to keep, in (0, 1])")
    options = check_budget_options(options)
    check_criterion(criterion)
    costs = CostModel(model, found, items)
    targets = {"flops": (flops, costs.flops_before), "params": (params, costs.params_before)}
    targets = {k: v for k, v in targets.items() if v[0] is not None}
    if "flops" in targets and costs.flops_before <= 0:
        raise ValueError("flops= needs the network's FLOPs, but none were counted on the example inputs")

    def deficit(cost) -> float:
        """How far ``cost`` is above the budget, as fractions of the originals (0 when met)."""
        values = {"flops": cost[0], "params": cost[1]}
        return sum(max(0.0, values[k] / total - goal) for k, (goal, total) in targets.items())

    step, caps = options["step"], options["caps"]
    levels = {}
    for item in items:
        # the ratios an item may take: multiples of step up to the largest cap, one per distinct pruned count (the
        # smallest ratio giving it), stopping where a block would keep no channel
        grid, counts = [0.0], [0]
        k = 1
        while k * step <= caps[-1] + 1e-9:
            r = round(k * step, 10)
            try:
                count = pruned_count(item, r)
            except ValueError:  # keeps no channel (a tiny layer)
                break
            if count > counts[-1]:
                grid.append(r)
                counts.append(count)
            k += 1
        levels[item.name] = grid
    floor_cost = costs.cost({it.name: pruned_count(it, levels[it.name][-1]) for it in items})
    if deficit(floor_cost) > 1e-12:
        reachable = {"flops": floor_cost[0] / max(costs.flops_before, 1),
                     "params": floor_cost[1] / max(costs.params_before, 1)}
        asked = ", ".join(f"{k}={goal}" for k, (goal, _) in targets.items())
        smallest = ", ".join(f"{k} {reachable[k]:.4f}" for k in targets)
        raise ValueError(f"budget {asked} cannot be met: with every unit at the largest cap {caps[-1]} the smallest "
                         f"reachable is {smallest} of the original; allowed: a budget at or above that, a larger cap "
                         f"(budget={{'caps': ...}}) or units='all' (more units and groups)")

    curve_sets = {"": sensitivity(model, items, inputs, criterion, options["ratios"], progress)}
    if restored_kl is not None:
        jobs = [(item, r) for item in items for r in options["ratios"]]
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(jobs), desc="sensitivity after restoration", unit="pass", leave=False)
        restored_curves: dict = {}
        for item, r in jobs:
            kl = restored_kl(item, r) if pruned_count(item, r) else 0.0
            restored_curves.setdefault(item.name, []).append((r, kl))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        curve_sets[" (restored)"] = restored_curves
    by_name = {it.name: it for it in items}
    target = {k: goal for k, (goal, _) in targets.items()}
    found_ratios = []

    def greedy(cap, curves):
        position = {name: 0 for name in by_name}
        pruned = {name: 0 for name in by_name}
        cuts: dict = {}
        current = (costs.flops_before, costs.params_before)
        while deficit(current) > 1e-12:
            best, best_value, best_cost, best_count = None, math.inf, None, 0
            for name, item in by_name.items():
                grid = levels[name]
                if position[name] + 1 >= len(grid) or grid[position[name] + 1] > cap + 1e-9:
                    continue
                r0, r1 = grid[position[name]], grid[position[name] + 1]
                count = pruned_count(item, r1) - pruned[name]
                dflops, dparams = costs.delta(cuts, name, count)
                cost = (current[0] + dflops, current[1] + dparams)
                gain = deficit(current) - deficit(cost)
                if gain <= 0:
                    continue
                harm = max(_interpolate(curves[name], r1) - _interpolate(curves[name], r0), 1e-12)
                if harm / gain < best_value:
                    best, best_value, best_cost, best_count = name, harm / gain, cost, count
            if best is None:  # this cap cannot reach the budget
                return None
            position[best] += 1
            pruned[best] += best_count
            costs.cut(cuts, best, best_count)
            current = best_cost
        return {name: levels[name][position[name]] for name in by_name}, current

    def uniform(members):
        """The smallest ratio (to 0.001, found by bisection: the cost falls as the ratio grows) that, given to every
        item of ``members`` (each at most its largest level), meets the budget; ``None`` if none does."""
        def ratios_at(r):
            return {name: (min(r, levels[name][-1]) if name in members else 0.0) for name in by_name}

        def cost_at(r):
            ratios = ratios_at(r)
            return costs.cost({name: pruned_count(by_name[name], ratios[name]) for name in by_name})

        if deficit(cost_at(caps[-1])) > 1e-12:
            return None
        lo, hi = 0, int(round(caps[-1] * 1000))  # in thousandths
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if deficit(cost_at(mid / 1000)) > 1e-12 else (lo, mid)
        return ratios_at(hi / 1000), cost_at(hi / 1000), hi / 1000

    for suffix, curves in curve_sets.items():
        for cap in caps:
            result = greedy(cap, curves)
            if result is not None:
                found_ratios.append((f"greedy{suffix}, cap {cap}", *result))
    for label, members in (("uniform", set(by_name)),
                           ("uniform units", {n for n, it in by_name.items() if not isinstance(it, CoupledGroup)})):
        result = uniform(members) if members else None
        if result is not None:
            ratios, cost, r = result
            found_ratios.append((f"{label} {r:g}", ratios, cost))
    seconds = time.perf_counter() - started
    sens = {name: [[r, float(kl)] for r, kl in curve] for name, curve in curve_sets[""].items()}
    sens_restored = {name: [[r, float(kl)] for r, kl in curve]
                     for name, curve in curve_sets.get(" (restored)", {}).items()}
    unique = {}
    for label, ratios, cost in found_ratios:  # the same allocation twice is measured once
        unique.setdefault(tuple(sorted(ratios.items())), (label, ratios, cost))
    return [Allocation(target, ratios, int(cost[0]), int(cost[1]), costs.flops_before, costs.params_before, sens,
                       sens_restored, seconds, label) for label, ratios, cost in unique.values()]
