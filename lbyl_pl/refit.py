"""Network-level refinement: refit the consumers of pruned units on inputs, in execution order, without data.

After a method has restored each unit from the weights alone, ``refit`` refits every *consumer* (a Conv2d with
groups 1 or a Linear whose input channels were pruned; the projection conv behind a depthwise passthrough and a
Linear after a flatten included) so that, on a set of inputs, its output in the pruned network matches the
original network's output of the same layer:

    min_W  || A Wᵀ - Y ||²  +  λ || W - W₀ ||²,      λ = α · mean(diag(AᵀA))

``A``: the consumer's input in the *pruned* network (im2col rows for a conv, with the layer's kernel, stride,
padding and dilation), so that every earlier refit is seen; ``Y``: the original network's output of that layer on
the same inputs (its kept outputs only, where the consumer is itself a pruned producer); ``W₀``: the weights the
method restored. An intercept is fitted where the layer has a bias, or where a BatchNorm alone reads the layer's
output (the intercept is then absorbed into that BN's running mean, which is exact in eval mode).

By default the inputs are distilled from the original network's BatchNorm statistics
(``lbyl_pl.data_free.distill_inputs``): no dataset is read. A second, independently distilled set is held out:
each layer's α is chosen on it from ``alphas``, a layer whose refit does not lower its held-out error keeps the
restored weights, and the report gives every layer's held-out error before and after. A tensor of the user's own
unlabelled inputs may replace the distilled ones (its last quarter is then held out unless ``heldout`` is given).

The whole network is refitted in one forward pass: a pre-hook on each consumer accumulates the Gram matrices of
its input (in chunks of rows, never the whole im2col matrix), solves in float64, writes the new weights and lets
the forward continue, so the layers are visited in the order the network *calls* them, whatever their order of
definition. The choices and their measurements: ``results/README.md``, section "Refit on distilled inputs".
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .example_inputs import check_inputs, input_shape_of
from .distill import BN_FREE_MODES, STATS, _bn_layers, _forward, distill_inputs
from .layer_fit import LayerFit, LayerJob, fittable, output_rows, sample_rows
from .score import _score_logits
from .spec import attach_spec, spec_of
from .options import merged_options


__all__ = ["REFIT_DEFAULTS", "LayerFit", "RefitReport", "check_refit_options", "distilled_inputs", "refit",
           "input_sets", "refit_consumers", "refit_options", "refit_record", "split_given"]

# Defaults, each decided by measurement (results/README.md, "Refit on distilled inputs").
REFIT_DEFAULTS = {
    "n": 128,                      # distilled inputs the layers are fitted on
    "heldout": 32,                 # a second distilled set: chooses each layer's alpha, reports the fit error
    "iterations": 200,             # distillation iterations
    "stats": "batch",              # BatchNorm statistics the inputs match (batch: DeepInversion's way)
    "class_weight": 0.0,           # DeepInversion's class-conditional term in the distillation (0: none)
    "alphas": (1e-3, 1e-2, 1e-1),  # ridge strength relative to mean(diag(AᵀA)), chosen per layer on the held-out set
    "max_rows": 65536,             # rows of A (positions x images) sampled per layer for the fit
    # networks without BatchNorm have no statistics to distil from: None refuses (measured on LeNet-300-100, the
    # refit on DeepInversion inputs lowered the best start at 50-60 % and Intra-Fusion everywhere: results/README.md,
    # "Refit on distilled inputs"); "deepinversion" or "gaussian" distils that way anyway (lbyl_pl.distill)
    "bn_free": None,
}
@dataclass
class RefitReport:
    layers: list[LayerFit] = field(default_factory=list)
    inputs: str = "distilled"   # "distilled" (no data) or "given" (the caller's own inputs)
    n_fit: int = 0
    n_heldout: int = 0
    options: dict = field(default_factory=dict)
    output_kl_before: float = float("nan")  # KL(original || restored) of the outputs on the held-out inputs
    output_kl_after: float = float("nan")
    seconds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        source = "distilled from the network (no data)" if self.inputs == "distilled" else "given by the caller"
        lines = [f"refit on {self.n_fit} inputs {source}, {self.n_heldout} held out; held-out output KL "
                 f"{self.output_kl_before:.4g} -> {self.output_kl_after:.4g}",
                 f"{'layer':<28}{'rows':>8}{'in':>7}{'out':>6}{'alpha':>8}{'icpt':>6}"
                 f"{'err before':>12}{'err after':>11}"]
        for f_ in self.layers:
            mark = "  (kept restored)" if f_.kept else ""
            lines.append(f"{f_.name:<28}{f_.rows:>8}{f_.inputs:>7}{f_.outputs:>6}{f_.alpha:>8.0e}"
                         f"{f_.intercept:>6}{f_.error_before:>12.4f}{f_.error_after:>11.4f}{mark}")
        if self.seconds:
            lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------

def refit_options(refit) -> dict | None:
    """``refit=`` as given to ``prune_and_restore`` / ``RestoreCallback``: ``None`` for no refit (False or None),
    else the checked options (True: the defaults; a dict: those options)."""
    if refit is False or refit is None:
        return None
    if refit is not True and not isinstance(refit, dict):
        raise ValueError(f"refit must be True, False or a dict of refit options, got {refit!r}")
    return check_refit_options({} if refit is True else refit)


def check_refit_options(options: dict) -> dict:
    """The refit's options with defaults filled in; a bad name or value raises ``ValueError`` naming it."""
    out = merged_options(options, REFIT_DEFAULTS, "refit")
    for name in ("n", "heldout", "max_rows"):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "heldout" else 1):
            raise ValueError(f"refit option {name} must be an integer >= {0 if name == 'heldout' else 1}, got {v!r}")
    if isinstance(out["iterations"], bool) or not isinstance(out["iterations"], int) or out["iterations"] < 0:
        raise ValueError(f"refit option iterations must be an integer >= 0, got {out['iterations']!r}")
    if out["bn_free"] not in (None, *BN_FREE_MODES):
        raise ValueError(f"refit option bn_free must be None, {' or '.join(BN_FREE_MODES)}, got {out['bn_free']!r}")
    cw = out["class_weight"]
    if isinstance(cw, bool) or not isinstance(cw, (int, float)) or not math.isfinite(cw) or cw < 0:
        raise ValueError(f"refit option class_weight must be a finite number >= 0, got {cw!r}")
    if out["stats"] not in STATS:
        raise ValueError(f"refit option stats must be one of {', '.join(STATS)}, got {out['stats']!r}")
    alphas = out["alphas"]
    alphas = (alphas,) if isinstance(alphas, (int, float)) and not isinstance(alphas, bool) else alphas
    try:
        alphas = tuple(float(a) for a in alphas)
    except (TypeError, ValueError):
        raise ValueError(f"refit option alphas must be a list of non-negative numbers, got {out['alphas']!r}") from None
    if not alphas or any(not math.isfinite(a) or a < 0 for a in alphas):
        raise ValueError(f"refit option alphas must be a non-empty list of finite numbers >= 0, got {out['alphas']!r}")
    out["alphas"] = alphas
    return out


def _check_pair(original: nn.Module, restored: nn.Module) -> None:
    """``restored`` must be ``original`` pruned: the same module tree, every weight at most as large."""
    for label, m in (("original", original), ("restored", restored)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{label} must be a torch.nn.Module, got {type(m).__name__}")
    before, after = dict(original.named_modules()), dict(restored.named_modules())
    if set(before) != set(after):
        extra = sorted(set(after) ^ set(before))
        raise ValueError(f"original does not match restored: module names differ ({extra[:5]}); refit needs the "
                         "unpruned network the restored one was pruned from")
    for name, m in after.items():
        o = before[name]
        if type(o) is not type(m):
            raise ValueError(f"original does not match restored: {name or '<root>'} is {type(o).__name__} in "
                             f"original and {type(m).__name__} in restored")
        for pname, p in m.named_parameters(recurse=False):
            q = getattr(o, pname, None)
            # pruning shrinks the output and input channels (the first two dims), never a kernel
            if not isinstance(q, torch.Tensor) or q.dim() != p.dim() or \
                    any(a > b for a, b in zip(p.shape[:2], q.shape[:2])) or p.shape[2:] != q.shape[2:]:
                raise ValueError(f"original does not match restored: {name}.{pname} is "
                                 f"{tuple(p.shape)} in restored and "
                                 f"{tuple(q.shape) if isinstance(q, torch.Tensor) else None} in original "
                                 "(pruning only removes output or input channels)")


# --------------------------------------------------------------------------------------------------------
# the layers
# --------------------------------------------------------------------------------------------------------

def _consumers(original: nn.Module, restored: nn.Module) -> dict[str, nn.Module]:
    """Layers of ``restored`` whose inputs were pruned (fewer input channels than in ``original``)."""
    before = dict(original.named_modules())
    return {name: m for name, m in restored.named_modules()
            if fittable(m) and m.weight.shape[1] != before[name].weight.shape[1]}


def _bn_readers(model: nn.Module, example: torch.Tensor, layers: dict[str, nn.Module]) -> dict[str, _BatchNorm]:
    """``layer name -> BatchNorm`` for each layer whose output is read by one BatchNorm and nothing else, found
    on the autograd graph of one forward pass (an intercept added to such a layer's output equals a shift of the
    BN's running mean)."""
    produced, bn_input = {}, {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: produced.__setitem__(name, out.grad_fn))
             for name, m in layers.items()]
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]
    hooks += [bn.register_forward_hook(lambda mod, args, out: bn_input.__setitem__(mod, args[0].grad_fn))
              for bn in bns]
    try:
        with torch.enable_grad():
            out = _forward(model, example.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    readers: dict = {}
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                readers[child] = readers.get(child, 0) + 1
                stack.append(child)
    result = {}
    for name, node in produced.items():
        if node is None or readers.get(node, 0) != 1:
            continue
        for bn, source in bn_input.items():
            if source is node:
                result[name] = bn
    return result


# --------------------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _targets(original: nn.Module, inputs: torch.Tensor, names: list[str], n_fit: int, max_rows: int,
             kept: dict[str, list[int]], seed: int):
    """The original network's output of each layer on ``inputs`` at sampled rows, as ``name -> (rows, values)``
    for the fit part and for the held-out part (row indices relative to each part), and the network's outputs.
    Rows are sampled as each layer runs, so the pass never holds more than one layer's full output."""
    modules = dict(original.named_modules())
    fit, held = {}, {}
    g = torch.Generator().manual_seed(int(seed))

    def capture(module, args, out, name):
        rows = output_rows(out.detach())
        if name in kept:
            rows = rows[:, torch.as_tensor(kept[name], device=rows.device)]
        per_image = len(rows) // len(inputs)
        fit_rows = sample_rows(n_fit * per_image, max_rows, g)
        fit[name] = (fit_rows, rows[fit_rows.to(rows.device)].clone())
        held_total = (len(inputs) - n_fit) * per_image
        if held_total:
            held_rows = sample_rows(held_total, max(1, max_rows // 4), g)
            held[name] = (held_rows, rows[(n_fit * per_image + held_rows).to(rows.device)].clone())
        else:
            held[name] = (None, None)

    hooks = [modules[name].register_forward_hook(lambda mod, args, out, name=name: capture(mod, args, out, name))
             for name in names]
    try:
        logits = _forward(original, inputs).detach()
    finally:
        for h in hooks:
            h.remove()
    return fit, held, logits


def refit_consumers(original: nn.Module, restored: nn.Module, fit_inputs: torch.Tensor,
                    heldout_inputs: torch.Tensor | None, kept: dict[str, list[int]], options: dict,
                    progress: bool = False, seed: int = 0) -> RefitReport:
    """Refit ``restored`` **in place** on the given inputs (the network-level stage of ``prune_and_restore``;
    ``refit`` is the public entry). ``kept``: producer name -> kept output indices, for consumers that are
    pruned producers themselves. Returns the report; raises before writing anything when the inputs or the
    pair of networks are wrong (a singular system raises mid-pass: callers work on a copy)."""
    started = time.perf_counter()
    layers = _consumers(original, restored)
    n_fit = len(fit_inputs)
    inputs = fit_inputs if heldout_inputs is None else torch.cat([fit_inputs, heldout_inputs])
    param = next(restored.parameters())
    inputs = inputs.to(device=param.device, dtype=param.dtype)
    before = dict(original.named_modules())
    for name, module in layers.items():
        if module.weight.shape[0] != before[name].weight.shape[0] and name not in kept:
            raise ValueError(f"layer {name!r} lost output channels but the pruning spec does not say which were "
                             "kept (the restored network's pruning spec, 'units')")
    report = RefitReport(inputs="given", n_fit=n_fit, n_heldout=len(inputs) - n_fit, options=dict(options))
    if not layers:
        report.seconds = {"refit": time.perf_counter() - started}
        return report
    was = (original.training, restored.training)
    original.eval()
    restored.eval()
    try:
        bn_of = _bn_readers(restored, inputs[:1], layers)
        fit, held, reference = _targets(original, inputs, list(layers), n_fit, options["max_rows"],
                                        {k: v for k, v in kept.items() if k in layers}, seed)
        with torch.no_grad():
            before_logits = _forward(restored, inputs[n_fit:]) if len(inputs) > n_fit else None
        jobs = [LayerJob(name, module, fit[name][1], held[name][1], fit[name][0], held[name][0], n_fit,
                         kept.get(name), bn_of.get(name), options) for name, module in layers.items()]
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(jobs), desc="refit", unit="layer", leave=False)
        order = []

        def make_hook(job):
            def hook(module, args):
                if job.done:  # a module called again in the same pass keeps its first refit
                    return
                job(module, args)
                order.append(job)
                if bar is not None:
                    bar.update(1)
            return hook

        handles = [job.module.register_forward_pre_hook(make_hook(job)) for job in jobs]
        try:
            with torch.no_grad():
                after_logits = _forward(restored, inputs)[n_fit:]
        finally:
            for h in handles:
                h.remove()
            if bar is not None:
                bar.close()
    finally:
        original.train(was[0])
        restored.train(was[1])
    missing = [job.name for job in jobs if not job.done]
    if missing:
        raise ValueError(f"layers {missing[:5]} were not called by the forward pass; refit cannot see their inputs")
    report.layers = [job.result for job in order if job.result is not None]
    if before_logits is not None and len(after_logits):
        ref = reference[n_fit:]
        report.output_kl_before = _score_logits(ref, before_logits, "kl")
        report.output_kl_after = _score_logits(ref, after_logits, "kl")
    report.seconds = {"refit": time.perf_counter() - started}
    return report


def split_given(inputs: torch.Tensor):
    """The caller's own inputs as (fit, held out): the last quarter (at least one) is held out, if there are two."""
    cut = len(inputs) - max(1, len(inputs) // 4) if len(inputs) > 1 else len(inputs)
    return inputs[:cut], (inputs[cut:] if cut < len(inputs) else None)


def distilled_inputs(original: nn.Module, options: dict, seed: int, example_inputs, progress: bool):
    """(fit, held out) inputs distilled from ``original`` with the refit's options (cached per network); a network
    without BatchNorm is refused unless ``options['bn_free']`` says how to distil anyway."""
    if options["bn_free"] is None and not _bn_layers(original):
        raise ValueError(
            f"{type(original).__name__} has no BatchNorm layer: there are no statistics to distil refit inputs from, "
            "and on LeNet-300-100 the refit on DeepInversion inputs lowered the best restored network at 50-60 % "
            "(results/README.md, 'Refit on distilled inputs'). Pass your own unlabelled inputs (refit_inputs=..., "
            "or refit(original, restored, inputs)), or refit={'bn_free': 'deepinversion'} (or 'gaussian') to "
            "refit on synthetic inputs anyway")
    kw = dict(example_inputs=example_inputs, iterations=options["iterations"], progress=progress,
              stats=options["stats"], class_weight=options["class_weight"],
              bn_free=options["bn_free"] or "deepinversion")
    fit = distill_inputs(original, n=options["n"], seed=seed, **kw)
    held = distill_inputs(original, n=options["heldout"], seed=seed + 1, **kw) if options["heldout"] else None
    return fit, held


def input_sets(original: nn.Module, options: dict, inputs, heldout, example_inputs, seed: int, progress: bool,
               label: str = "inputs"):
    """``(fit, held out, source)``: inputs distilled from ``original`` (``inputs=None``; source "distilled"), or the
    caller's own, checked, with ``heldout`` (else their last quarter) held out (source "given")."""
    if inputs is None:
        if heldout is not None:
            raise ValueError("heldout inputs need inputs: pass both, or neither to distil them")
        return (*distilled_inputs(original, options, seed, example_inputs, progress), "distilled")
    fit = check_inputs(inputs, label, input_shape_of(original, example_inputs, inputs))
    if heldout is None:
        return (*split_given(fit), "given")
    return fit, check_inputs(heldout, f"heldout {label}", tuple(fit.shape[1:])), "given"


def refit(original: nn.Module, restored: nn.Module, inputs: torch.Tensor | None = None, *,
          heldout: torch.Tensor | None = None, seed: int = 0, progress: bool = True, example_inputs=None,
          **options):
    """Refit the consumers of ``restored``'s pruned units so that each reproduces ``original``'s layer output.

    Returns ``(refitted, report)``: a refitted copy of ``restored`` (``restored`` itself is not modified) and a
    ``RefitReport``. ``inputs=None`` distils ``options['n']`` inputs from ``original``'s BatchNorm statistics plus
    ``options['heldout']`` more with another seed (no data is read; cached per network); a tensor
    ``(N, *input_shape)`` is the caller's own unlabelled inputs (``heldout`` inputs, else its last quarter, are
    held out). ``options``: see ``REFIT_DEFAULTS`` (``alphas``, ``max_rows``, and for distillation ``n``,
    ``heldout``, ``iterations``, ``stats``, ``class_weight``, ``bn_free``). Raises ``ValueError`` for inputs of the wrong shape, NaN/Inf inputs,
    an ``original`` whose architecture does not match ``restored`` and a singular system.
    """
    options = check_refit_options(options)
    _check_pair(original, restored)
    if inputs is None:
        input_shape_of(original, example_inputs, inputs)  # a network whose input shape is unknown fails here
    started = time.perf_counter()
    fit, held, source = input_sets(original, options, inputs, heldout, example_inputs, seed, progress)
    distill_seconds = time.perf_counter() - started
    spec = spec_of(restored)
    kept = {**spec.get("units", {}), **spec.get("group_layers", {})} if isinstance(spec, dict) else {}
    out = copy.deepcopy(restored)
    report = refit_consumers(original, out, fit, held, kept, options, progress=progress, seed=seed)
    report.inputs = source
    report.seconds = {"distill": distill_seconds, **report.seconds}
    if isinstance(spec, dict):
        attach_spec(out, dict(copy.deepcopy(spec), refit=refit_record(options, source)))
    return out, report


def refit_record(options: dict, source: str) -> dict:
    """What the spec records of a refit (plain data): where the inputs came from and the options."""
    return {"inputs": source, **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
