"""Data-free choice of LBYL's lambda1/lambda2 and Neuron Merging's threshold/nm_lambda.

LBYL and NM restore a pruned network without data, but their hyperparameters were tuned with data (the
published ones on the test set). This module chooses them with *no data at all*:

1. ``distill_inputs`` (``lbyl_pl.distill``, re-exported here): synthetic inputs made from the trained network
   alone (ZeroQ-style "distilled data": Gaussian noise optimised so that every BatchNorm layer sees the statistics
   it recorded in training);
2. ``score`` (``lbyl_pl.score``, re-exported here): how far a restored network is from the original on those
   inputs, with no labels (KL divergence of the softmax outputs by default; lower is better);
3. ``auto_hparams`` / ``auto_hparams_search`` (this module): restore the network once per point of a small grid and keep
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

import itertools
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .distill import (BN_FREE_MODES, DEFAULT_ITERATIONS, DEFAULT_N, DEFAULT_STATS, STATS, _bn_layers, _check_model,
                      bn_statistics_loss, clear_cache, distill_inputs)
from .methods import METHODS, SingularSystemError, get_method
from .restoration import prune_and_restore
from .score import SCORES, _logits, _score_logits, rank_correlation, score
from .selection import check_criterion, check_ratio

__all__ = ["DEFAULT_GRIDS", "DEFAULT_METRIC", "SCORES", "STATS", "AutoHparamsResult", "auto_hparams",
           "auto_hparams_search", "bn_statistics_loss", "clear_cache", "distill_inputs", "rank_correlation", "score"]

# The score the data-free choice ranks grid points by (lbyl_pl.score.SCORES; restore.auto.metric defaults to it).
DEFAULT_METRIC = "kl"

# Default search grids: each method's ``auto_grid`` (one value pair per network and cell). They are kept
# small so that the selection of one cell costs < 20 s for VGG16-BN on CIFAR-10 on 2 CPU cores
# (benchmarks/auto_hparams_speed.py): every point is one restoration plus one forward pass over the
# distilled inputs.
def default_grids() -> dict:
    """method name -> its default data-free grid (``{}`` for a method without hyperparameters)."""
    return {name: dict(cls.auto_grid) for name, cls in METHODS.items() if cls.auto_grid or not cls.hyperparameters}


DEFAULT_GRIDS = default_grids()  # the built-in methods' grids, for reading; a method's auto_grid is the source


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
    metric: str = DEFAULT_METRIC
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
                        metric: str = DEFAULT_METRIC, n: int = DEFAULT_N, iterations: int = DEFAULT_ITERATIONS,
                        stats: str = DEFAULT_STATS, bn_free: str = "defaults", inputs: torch.Tensor | None = None,
                        **restore_kwargs) -> AutoHparamsResult:
    """``auto_hparams`` with the full record: every grid point's score (see ``AutoHparamsResult``).

    ``inputs`` replaces the distilled inputs (e.g. a set distilled once with other options); otherwise
    ``distill_inputs(model, n, seed, example_inputs, iterations, stats=stats, bn_free=bn_free)`` (cached).
    """
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
