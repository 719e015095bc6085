"""Inputs distilled from a trained network alone: no dataset is read.

ZeroQ / DeepInversion-style "distilled data": Gaussian noise optimised so that every BatchNorm layer sees the
statistics it recorded in training. ``lbyl_pl.data_free`` scores hyperparameters on them and ``lbyl_pl.refit``
refits the pruned layers on them; both only need this module (no restoration code is imported here).
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .example_inputs import example_inputs_of
from .methods.base import check_choice
from .methods.common import check_int

__all__ = ["BN_FREE_MODES", "DEFAULT_ITERATIONS", "DEFAULT_LR", "DEFAULT_N", "DEFAULT_STATS", "STATS",
           "bn_statistics_loss", "clear_cache", "distill_inputs"]

BN_FREE_MODES = ("gaussian", "deepinversion")
# DeepInversion priors for networks without BatchNorm (bn_free="deepinversion"), as tried on LeNet-300-100
DI_TV_WEIGHT, DI_L2_WEIGHT, DI_LR = 1.0, 0.1, 0.05

# Distillation defaults of the data-free hyperparameter choice (lbyl_pl.data_free's docstring says what they
# gave); the refit has its own (lbyl_pl.refit.REFIT_DEFAULTS).
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


STATS = ("batch", "image", "both")
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
                   cache: bool = True, class_weight: float = 0.0) -> torch.Tensor:
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

    ``class_weight`` > 0 adds DeepInversion's class-conditional term to the BatchNorm loss of a network with
    BN: that weight times the cross-entropy of image ``i``'s output towards class ``i % num_classes``
    (balanced classes).

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
    if isinstance(class_weight, bool) or not isinstance(class_weight, (int, float)) or \
            not math.isfinite(class_weight) or class_weight < 0:
        raise ValueError(f"class_weight must be a finite number >= 0, got {class_weight!r}")
    shape = _input_shape(model, example_inputs)
    param = _param(model)
    key = (_state_hash(model), shape, int(n), int(seed), int(iterations), stats, float(lr),
           batch_size or n, bn_free, str(param.dtype), str(param.device), float(class_weight))
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].clone()
    x = _synthesize(model, shape, n, seed, iterations, progress, stats, lr, batch_size or n, bn_free,
                    float(class_weight))
    if cache:
        _CACHE[key] = x.clone()
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return x


def _synthesize(model, shape, n, seed, iterations, progress, stats, lr, batch_size, bn_free, class_weight=0.0):
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
                        if class_weight:  # DeepInversion's class-conditional term, balanced classes
                            loss = loss + class_weight * F.cross_entropy(out.float(), targets % out.shape[1]).to(x.dtype)
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
