"""Data-free choice of LBYL's lambda1/lambda2 and Neuron Merging's threshold/nm_lambda.

LBYL and NM restore a pruned network without data, but their hyperparameters were tuned with data (the
published ones on the test set). This module chooses them with *no data at all*:

1. ``distill_inputs``: synthetic inputs made from the trained network alone (ZeroQ-style "distilled data":
   Gaussian noise optimised so that every BatchNorm layer sees the statistics it recorded in training);
2. ``score``: how far a restored network is from the original on those inputs, with no labels (KL divergence
   of the softmax outputs by default; lower is better);
3. ``auto_hparams`` / ``auto_hparams_search``: restore the network once per point of a small grid and keep
   the point whose restored network scores best (one pair per network and cell, like the published tables).

Nothing here reads a dataset: the only inputs are the model's weights and BatchNorm buffers.

Example::

    from lbyl_pl import prune_and_restore
    from lbyl_pl.data_free import auto_hparams

    hp = auto_hparams(model, "lbyl", "l2-norm", 0.3)     # {"lambda1": ..., "lambda2": ...}
    restored, report = prune_and_restore(model, "lbyl", "l2-norm", 0.3, **hp)

Defaults: per-image statistics (``stats="image"``, ZeroQ), 32 images, 100 Adam iterations (lr 0.25,
cosine), KL divergence. They were first chosen in exploratory runs whose scripts are not committed; what they
give is measured in committed runs against a test-set grid, with the commands beside the tables in
``results/README.md`` section 10 (``results/data_free_hparams/``): on VGG16-BN (l2-norm, 10-50 %) the choice is
at most 0.24 points below the grid's best point and the score's Spearman correlation with test accuracy is
0.88-0.99; on ResNet-56 at most 0.90 below; networks without BatchNorm: see ``auto_hparams``.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .discovery import example_inputs_of
from .methods import METHODS, SingularSystemError, get_method
from .methods.base import check_choice
from .methods.common import check_int
from .selection import check_criterion, check_ratio

__all__ = ["DEFAULT_GRIDS", "SCORES", "AutoHparamsResult", "auto_hparams", "auto_hparams_search",
           "bn_statistics_loss", "clear_cache", "distill_inputs", "rank_correlation", "score"]

# Default search grids: each method's ``auto_grid`` (one value pair per network and cell). They are kept
# small so that the selection of one cell costs < 20 s for VGG16-BN on CIFAR-10 on 2 CPU cores
# (benchmarks/auto_hparams_speed.py): every point is one restoration plus one forward pass over the
# distilled inputs.
def default_grids() -> dict:
    """method name -> its default data-free grid (``{}`` for a method without hyperparameters)."""
    return {name: dict(cls.auto_grid) for name, cls in METHODS.items() if cls.auto_grid or not cls.hyperparameters}


DEFAULT_GRIDS = default_grids()  # the built-in methods' grids, for reading; a method's auto_grid is the source

SCORES = ("kl", "agreement", "mse")

BN_FREE_MODES = ("gaussian", "deepinversion")
# DeepInversion priors for networks without BatchNorm (bn_free="deepinversion"), as tried on LeNet-300-100
DI_TV_WEIGHT, DI_L2_WEIGHT, DI_LR = 1.0, 0.1, 0.05

# Distillation defaults, measured on VGG16-BN / CIFAR-10 (module docstring, "Measurements").
DEFAULT_N = 32
DEFAULT_ITERATIONS = 100
DEFAULT_LR = 0.25
DEFAULT_STATS = "image"

_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_CACHE_SIZE = 8


def clear_cache() -> None:
    """Forget every distilled input set kept in memory."""
    _CACHE.clear()


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------

def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"{type(model).__name__} has no parameters: there is nothing to prune or to distil "
                         "inputs from")
    return model


def _param(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def _input_shape(model: nn.Module, example_inputs) -> tuple[int, ...]:
    """Shape of one input sample (without the batch dimension)."""
    x = example_inputs_of(model, example_inputs)
    if isinstance(x, (tuple, list)):
        if len(x) != 1:
            raise ValueError("distill_inputs needs a network with a single input tensor; got "
                             f"{len(x)} example inputs")
        x = x[0]
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("example_inputs must be a batched tensor (batch first), e.g. "
                         "torch.zeros(1, 3, 32, 32)")
    return tuple(int(s) for s in x.shape[1:])


def _bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None]


def _state_hash(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every state-dict tensor (content, not identity)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def _channel_stats(x: torch.Tensor, stats: str, eps: float):
    """Per-channel mean and std of ``x`` (N, C, *spatial): over batch and positions (``batch``), or over
    positions per image (``image``: shapes (N, C)). Inputs without spatial dims always use the batch."""
    if stats == "image" and x.dim() > 2:
        flat = x.flatten(2)
        return flat.mean(2), (flat.var(2, unbiased=False) + eps).sqrt()
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), (x.var(dims, unbiased=False) + eps).sqrt()


def _stat_distance(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, stats: str, eps: float):
    if stats == "both":  # the population (batch) and every image on its own
        return _stat_distance(x, mean, std, "batch", eps) + _stat_distance(x, mean, std, "image", eps)
    m, s = _channel_stats(x, stats, eps)
    d = (m - mean).pow(2).sum() + (s - std).pow(2).sum()
    return d / x.shape[0] if m.dim() == 2 else d


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring values along the last two dims (images); 0 for vectors."""
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()


def _input_prior(x: torch.Tensor, stats: str) -> torch.Tensor:
    """Pulls the inputs' own per-channel statistics to N(0, 1) (the normalised input space)."""
    c = x.shape[1] if x.dim() > 2 else 1
    xc = x if x.dim() > 2 else x.reshape(x.shape[0], 1, -1)
    zeros = torch.zeros(c, dtype=x.dtype, device=x.device)
    return _stat_distance(xc, zeros, zeros + 1.0, stats, 0.0)


class _BNStatLoss:
    """Forward hooks on every BatchNorm layer summing the distance of its input's statistics to the
    running ones: ``sum_l ||mean_l - running_mean_l||^2 + ||std_l - sqrt(running_var_l + eps)||^2``
    (divided by the batch size with per-image statistics)."""

    def __init__(self, model: nn.Module, stats: str):
        self.stats, self.terms, self.handles = stats, [], []
        for bn in _bn_layers(model):
            self.handles.append(bn.register_forward_hook(self._hook))

    def _hook(self, bn, inputs, output):
        x = inputs[0]
        mean = bn.running_mean.to(x.dtype)
        std = (bn.running_var.to(x.dtype) + bn.eps).sqrt()
        self.terms.append(_stat_distance(x, mean, std, self.stats, bn.eps))

    def pop(self, like: torch.Tensor) -> torch.Tensor:
        total = torch.stack(self.terms).sum() if self.terms else like.new_zeros(())
        self.terms = []
        return total

    def close(self):
        for h in self.handles:
            h.remove()


class _EvalMode:
    """Eval mode for the duration of a block, the previous mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _forward(model: nn.Module, x: torch.Tensor):
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


STATS = ("image", "batch", "both")
_check_stats = check_choice("stats", STATS)


# --------------------------------------------------------------------------------------------------------
# distillation
# --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def bn_statistics_loss(model: nn.Module, inputs: torch.Tensor, stats: str = DEFAULT_STATS,
                       input_prior: bool = True) -> float:
    """The loss ``distill_inputs`` minimises, evaluated on ``inputs`` (eval mode, no gradients): the BN
    statistics term summed over every BatchNorm layer, plus the input's N(0, 1) prior if ``input_prior``."""
    _check_stats(stats)
    _check_model(model)
    hooks = _BNStatLoss(model, stats)
    try:
        with _EvalMode(model):
            x = inputs.to(_param(model).dtype)
            _forward(model, x)
            loss = hooks.pop(x)
    finally:
        hooks.close()
    if input_prior:
        loss = loss + _input_prior(x, stats)
    return float(loss)


def distill_inputs(model: nn.Module, n: int = DEFAULT_N, seed: int = 0, example_inputs=None,
                   iterations: int = DEFAULT_ITERATIONS, progress: bool = True, *, stats: str = DEFAULT_STATS,
                   lr: float | None = None, batch_size: int | None = None, bn_free: str = "deepinversion",
                   cache: bool = True) -> torch.Tensor:
    """``n`` synthetic inputs distilled from ``model`` alone (no data), shape ``(n, *input_shape)``.

    ZeroQ-style: start from Gaussian noise of the model's input shape (taken from ``example_inputs`` or
    ``model.example_input_size``; the batch dimension is replaced by ``n``) and optimise the *inputs* with
    Adam (``lr``, cosine-annealed to 1 % over ``iterations`` steps) so that every BatchNorm layer sees input
    statistics equal to its running ones: per-channel mean and std of the BN's input against
    ``running_mean`` and ``sqrt(running_var + eps)``, squared L2 distances summed over channels and layers.
    A second term pulls the inputs' own per-channel statistics to N(0, 1) (inputs live in the normalised
    space). ``stats="image"`` (default; ZeroQ) takes them per image over the spatial positions, the
    distances summed over images and divided by their number; ``stats="batch"`` takes them over the batch
    and the positions (as BatchNorm does in training; DeepInversion); ``stats="both"`` sums the two terms.
    Per-image statistics make every
    image match on its own and scored best on VGG16-BN (module docstring). BatchNorm1d on (N, C) inputs
    always uses the batch. The model runs in eval mode; its parameters are not changed (gradients are
    taken w.r.t. the inputs only) and its mode is restored afterwards. Inputs are optimised in chunks of
    ``batch_size`` (default: all ``n`` at once), each chunk on its own.

    **Networks without BatchNorm** (e.g. LeNet-300-100) have no statistics to match; ``bn_free`` decides:

    - ``"deepinversion"`` (default): that noise optimised DeepInversion-style for confident, class-balanced
      outputs (cross-entropy towards class ``i % num_classes`` for image ``i``) plus image priors (total
      variation x 1.0, mean square x 0.1), Adam at lr 0.05 unless ``lr`` is given;
    - ``"gaussian"``: the N(0, 1) starting noise itself, in the normalised input space, not optimised.

    Neither made the data-free score trustworthy on LeNet-300-100, so ``auto_hparams`` does not use them
    unless asked (its ``bn_free`` argument).

    Deterministic for a given ``seed`` (``torch.Generator``; identical tensors on repeated calls with
    the same thread settings). Results are cached in memory, keyed by a sha256 of the model's state-dict
    tensors plus ``n``, ``seed``, ``iterations``, the input shape and the other options, so a sweep over
    ratios and criteria distils once per network (``cache=False`` recomputes; ``clear_cache()`` empties
    it). The cached tensor is returned as a copy. ``progress`` shows a tqdm bar over the iterations.
    """
    _check_model(model)
    check_int("n", n)
    check_int("iterations", iterations, minimum=0)
    _check_stats(stats)
    if bn_free not in BN_FREE_MODES:
        raise ValueError(f"unknown bn_free {bn_free!r}; allowed: {', '.join(BN_FREE_MODES)}")
    if lr is None:
        lr = DEFAULT_LR if _bn_layers(model) else DI_LR
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if batch_size is not None:
        check_int("batch_size", batch_size)
    shape = _input_shape(model, example_inputs)
    param = _param(model)
    key = (_state_hash(model), shape, int(n), int(seed), int(iterations), stats, float(lr),
           batch_size or n, bn_free, str(param.dtype), str(param.device))
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].clone()
    x = _synthesize(model, shape, n, seed, iterations, progress, stats, lr, batch_size or n, bn_free)
    if cache:
        _CACHE[key] = x.clone()
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return x


def _synthesize(model, shape, n, seed, iterations, progress, stats, lr, batch_size, bn_free):
    param = _param(model)
    g = torch.Generator().manual_seed(int(seed))
    start = torch.randn((n, *shape), generator=g, dtype=torch.float32).to(param.dtype).to(param.device)
    has_bn = bool(_bn_layers(model))
    if not has_bn and bn_free == "gaussian" or iterations == 0:
        return start
    chunks = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        n_chunks = -(-n // batch_size)
        bar = tqdm(total=iterations * n_chunks, desc="distilling inputs", unit="it", leave=False)
    hooks = _BNStatLoss(model, stats) if has_bn else None
    try:
        with _EvalMode(model), torch.enable_grad():
            for lo in range(0, n, batch_size):
                x = start[lo:lo + batch_size].clone().requires_grad_(True)
                targets = torch.arange(lo, lo + x.shape[0], device=x.device)
                opt = torch.optim.Adam([x], lr=lr)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iterations, 1),
                                                                   eta_min=lr * 0.01)
                for _ in range(iterations):
                    out = _forward(model, x)
                    if has_bn:
                        loss = hooks.pop(x) + _input_prior(x, stats)
                    else:  # DeepInversion without BN: confident, class-balanced outputs and image priors
                        loss = F.cross_entropy(out.float(), targets % out.shape[1]).to(x.dtype) \
                            + DI_TV_WEIGHT * _total_variation(x) + DI_L2_WEIGHT * x.pow(2).mean()
                    (grad,) = torch.autograd.grad(loss, x)
                    x.grad = grad
                    opt.step()
                    sched.step()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
                chunks.append(x.detach())
    finally:
        if hooks is not None:
            hooks.close()
        if bar is not None:
            bar.close()
    return torch.cat(chunks)


# --------------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with _EvalMode(model):
        x = inputs.to(dtype=_param(model).dtype, device=_param(model).device)
        return torch.cat([_forward(model, x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


def _score_logits(reference: torch.Tensor, logits: torch.Tensor, metric: str) -> float:
    reference, logits = reference.double(), logits.double()
    if metric == "kl":
        p_log = F.log_softmax(reference, dim=1)
        q_log = F.log_softmax(logits, dim=1)
        return float((p_log.exp() * (p_log - q_log)).sum(dim=1).mean())
    if metric == "agreement":
        return float(1.0 - (reference.argmax(1) == logits.argmax(1)).double().mean())
    if metric == "mse":
        return float((reference - logits).pow(2).mean())
    raise ValueError(f"unknown score metric {metric!r}; allowed: {', '.join(SCORES)}")


def score(original: nn.Module, restored: nn.Module, inputs: torch.Tensor, metric: str = "kl") -> float:
    """How far ``restored`` is from ``original`` on ``inputs``, with no labels. **Lower is better**; 0 means
    identical outputs.

    ``metric``: ``"kl"`` (default) is the mean over inputs of KL(softmax(original) || softmax(restored)),
    the original's output distribution as the target; ``"agreement"`` is the top-1 *disagreement* rate
    (1 - fraction of inputs whose argmax class is the same); ``"mse"`` is the mean squared difference of
    the logits. Both networks run in eval mode (their modes are restored afterwards).
    """
    if metric not in SCORES:
        raise ValueError(f"unknown score metric {metric!r}; allowed: {', '.join(SCORES)}")
    return _score_logits(_logits(original, inputs), _logits(restored, inputs), metric)


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (average ranks for ties); ``nan`` when one
    of them is constant. To check that the data-free score can be trusted, correlate ``-score`` with the
    accuracy over the grid: +1 means the score orders the grid exactly as the accuracy does."""
    a = torch.as_tensor(list(a), dtype=torch.float64)
    b = torch.as_tensor(list(b), dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ValueError("rank_correlation needs two sequences of the same length (at least 2)")

    def ranks(v):
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in torch.unique(v):  # average ranks of ties
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float(ra @ rb / denom) if denom > 0 else float("nan")


# --------------------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------------------

@dataclass
class AutoHparamsResult:
    """Outcome of ``auto_hparams_search``.

    ``best``: the keyword arguments for ``prune_and_restore``; ``results``: ``(hparams, score)`` for every
    grid point, in grid order; ``metric``: the score used (lower is better); ``seconds``: wall time of the
    distillation (≈0 on a cache hit) and of the selection.
    """
    method: str
    criterion: str
    ratio: float
    variant: str
    best: dict
    results: list = field(default_factory=list)
    metric: str = "kl"
    n_inputs: int = 0
    seconds: dict = field(default_factory=dict)

    def scores(self) -> list[float]:
        return [s for _, s in self.results]

    def rank_correlation(self, accuracies) -> float:
        """Spearman correlation of ``-score`` with ``accuracies`` (one per grid point, in grid order)."""
        return rank_correlation([-s for s in self.scores()], accuracies)

    def format(self) -> str:
        lines = [f"auto hparams: {self.method} / {self.criterion} / ratio {self.ratio} / {self.variant}: "
                 f"{self.best} ({self.metric} on {self.n_inputs} distilled inputs)"]
        for hp, s in self.results:
            mark = " *" if hp == self.best else ""
            lines.append("  " + ", ".join(f"{k}={v:g}" for k, v in hp.items()) + f": {s:.6g}{mark}")
        return "\n".join(lines)


def _grid_for(method: str, grid):
    if grid is None:
        grids = default_grids()
        if method not in grids:
            if METHODS[method].hyperparameters:
                warnings.warn(f"no default grid for method {method!r}: its defaults are kept ({{}} returned); "
                              "pass grid={name: [values, ...]} to search", UserWarning, stacklevel=4)
            return {}
        grid = grids[method]
    if not isinstance(grid, dict):
        raise TypeError(f"grid must be a dict of hyperparameter name -> list of values, got {type(grid).__name__}")
    clean = {}
    for name, values in grid.items():
        values = [values] if isinstance(values, (int, float)) else list(values)
        if not values:
            raise ValueError(f"grid[{name!r}] is empty")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"grid[{name!r}] must hold finite non-negative numbers, got {v!r}")
        clean[name] = [float(v) for v in values]
    return clean


def _tie_distance(hp: dict, defaults: dict, grid: dict) -> float:
    """Distance of a grid point to the defaults: log10 space for strictly positive grids, linear otherwise."""
    d = 0.0
    for name, value in hp.items():
        if name not in defaults or defaults[name] is None:
            continue
        ref = float(defaults[name])
        if min(grid[name]) > 0 and ref > 0:
            d += abs(math.log10(value) - math.log10(ref))
        else:
            d += abs(value - ref)
    return d


def _pick(results, defaults, grid, rtol=1e-9):
    best = min(s for _, s in results if math.isfinite(s)) if any(math.isfinite(s) for _, s in results) else None
    if best is None:
        raise RuntimeError("every grid point failed to restore or scored NaN/inf")
    tol = rtol * max(abs(best), 1e-300)
    tied = [(i, hp) for i, (hp, s) in enumerate(results) if math.isfinite(s) and s <= best + tol]
    # nearest to the defaults, then first in grid order
    return min(tied, key=lambda item: (_tie_distance(item[1], defaults, grid), item[0]))[1]


def auto_hparams_search(model: nn.Module, method: str, criterion: str, ratio: float, variant: str = "paper",
                        example_inputs=None, seed: int = 0, grid: dict | None = None, progress: bool = True, *,
                        metric: str = "kl", n: int = DEFAULT_N, iterations: int = DEFAULT_ITERATIONS,
                        stats: str = DEFAULT_STATS, bn_free: str = "defaults", inputs: torch.Tensor | None = None,
                        **restore_kwargs) -> AutoHparamsResult:
    """``auto_hparams`` with the full record: every grid point's score (see ``AutoHparamsResult``).

    ``inputs`` replaces the distilled inputs (e.g. a set distilled once with other options); otherwise
    ``distill_inputs(model, n, seed, example_inputs, iterations, stats=stats, bn_free=bn_free)`` (cached).
    """
    from .restoration import prune_and_restore  # late: restoration imports the methods package

    get_method(method)  # an unknown name fails here, naming the registered methods
    check_ratio(ratio)
    check_criterion(criterion)
    _check_model(model)
    if metric not in SCORES:
        raise ValueError(f"unknown score metric {metric!r}; allowed: {', '.join(SCORES)}")
    grid = _grid_for(method, grid)
    clash = sorted(set(grid) & set(restore_kwargs))
    if clash:
        raise ValueError(f"{', '.join(clash)} is searched by the grid; do not also pass it as a fixed argument")
    if "progress" in restore_kwargs:
        raise ValueError("progress is auto_hparams' own argument")
    if bn_free not in ("defaults",) + BN_FREE_MODES:
        raise ValueError(f"unknown bn_free {bn_free!r}; allowed: defaults, {', '.join(BN_FREE_MODES)}")
    seconds = {}
    t0 = time.perf_counter()
    # the method's own defaults (network-dependent ones resolved, e.g. NM's threshold), for ties
    bound = METHODS[method](variant).bind(model).hparams
    defaults = {name: bound.get(name) for name in grid}
    if not grid:  # nothing to choose (plain pruning)
        return AutoHparamsResult(method, criterion, float(ratio), variant, {}, [], metric, 0,
                                 {"distill": 0.0, "select": 0.0})
    if inputs is None and bn_free == "defaults" and not _bn_layers(model):
        if any(v is None for v in defaults.values()):
            raise ValueError(f"{type(model).__name__} has no BatchNorm and grid names hyperparameters without a "
                             f"known default ({', '.join(k for k, v in defaults.items() if v is None)}): pass "
                             "bn_free='deepinversion' or 'gaussian' to search on synthetic inputs anyway")
        warnings.warn(
            f"{type(model).__name__} has no BatchNorm layer: no statistics to distil inputs from, and the "
            "data-free score was not trustworthy on synthetic inputs for such a network (LeNet-300-100), so "
            f"the defaults {defaults} are returned. Pass bn_free='deepinversion' (or 'gaussian') to search "
            "anyway.", UserWarning, stacklevel=3)
        return AutoHparamsResult(method, criterion, float(ratio), variant, dict(defaults), [], metric, 0,
                                 {"distill": 0.0, "select": 0.0})
    if inputs is None:
        inputs = distill_inputs(model, n=n, seed=seed, example_inputs=example_inputs, iterations=iterations,
                                progress=progress, stats=stats,
                                bn_free="deepinversion" if bn_free == "defaults" else bn_free)
    seconds["distill"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = _logits(model, inputs)
    names = list(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*(grid[k] for k in names))]
    iterator = points
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(points, desc=f"auto {method}/{criterion}/r={ratio}", unit="point", leave=False)
    results = []
    for hp in iterator:
        try:
            restored, _ = prune_and_restore(model, method, criterion, ratio, variant=variant,
                                            example_inputs=example_inputs, progress=False, **hp, **restore_kwargs)
        except (SingularSystemError, torch.linalg.LinAlgError):  # singular at this point of the grid
            results.append((hp, float("inf")))
            continue
        s = _score_logits(reference, _logits(restored, inputs), metric)
        results.append((hp, s if math.isfinite(s) else float("inf")))
        del restored
    best = _pick(results, defaults, grid)
    seconds["select"] = time.perf_counter() - t0
    return AutoHparamsResult(method, criterion, float(ratio), variant, dict(best), results, metric, len(inputs),
                             seconds)


def auto_hparams(model: nn.Module, method: str, criterion: str, ratio: float, variant: str = "paper",
                 example_inputs=None, seed: int = 0, grid: dict | None = None, progress: bool = True,
                 **restore_kwargs) -> dict:
    """Keyword arguments for ``prune_and_restore`` chosen without data, for one network and cell.

    Returns ``{"lambda1", "lambda2"}`` for ``lbyl``, ``{"threshold", "nm_lambda"}`` for ``merge`` and ``{}``
    for ``prune``. Every point of ``grid`` (default ``DEFAULT_GRIDS[method]``: lambda1 in {1e-6, 1e-5,
    1e-4} x lambda2 in {1e-4, ..., 1}; t in {0, 0.1, 0.2, 0.3, 0.45} x lambda in {0.65, 0.85, 1}) is
    restored with ``prune_and_restore`` and scored against the original network on inputs distilled
    from the network itself (``distill_inputs``; no dataset is read); the lowest score wins (``score``,
    KL divergence by default). Ties (equal scores, e.g. lambda1 on fully-connected units, where it is
    unused) go to the point nearest to ``prune_and_restore``'s defaults, then to the first in grid order.

    **Networks without BatchNorm** (``bn_free="defaults"``, the default): there are no statistics to distil
    inputs from, so ``auto`` returns ``prune_and_restore``'s defaults there (NM: the network's
    ``default_nm_threshold``) with a ``UserWarning``; ``bn_free="deepinversion"`` or ``"gaussian"`` searches
    anyway on those inputs. Measured on LeNet-300-100 / Fashion-MNIST, l2-norm, 50-80 %, against a test-set
    grid (``results/data_free_hparams/lenet300/``): the defaults average 84.47 against 84.62 for the grid's
    best LBYL point (NM: 84.21 against 84.65), while a search on DeepInversion or Gaussian inputs averages
    81.99 / 82.03 (NM 81.49 / 83.92): it picks lambda2 = 3 at 70-80 %, the grid's worst points there.

    Extra keyword arguments go to ``distill_inputs``/``score`` (``metric``, ``n``, ``iterations``,
    ``stats``, ``bn_free``, ``inputs``) or to ``prune_and_restore`` (e.g. ``solver``, ``units``). A
    registered method without a default grid (e.g. ``fusion``) keeps its defaults (``{}``, with a warning
    when it has hyperparameters) unless ``grid`` is given.
    ``auto_hparams_search`` returns the whole grid with its scores. Raises ``ValueError`` for an unknown
    method or criterion, a ratio outside [0, 1) and a model without parameters.
    """
    return auto_hparams_search(model, method, criterion, ratio, variant, example_inputs, seed, grid, progress,
                               **restore_kwargs).best
