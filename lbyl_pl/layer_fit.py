"""One layer's ridge refit: its input rows (im2col for a conv), Gram matrices accumulated in chunks, the solve.

``lbyl_pl.refit`` runs the network-level pass; a ``LayerJob`` is the forward pre-hook on each consumer that solves it,
with the consumer's input in the pruned network and the original network's output at sampled rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerFit", "LayerJob", "fittable", "output_rows", "sample_rows"]

_CHUNK_ELEMENTS = 1 << 24  # im2col elements held at once while accumulating a Gram matrix (64 MiB in float32)


@dataclass
class LayerFit:
    """One consumer's refit: sizes, the α chosen, how the intercept was placed, and the relative error of its
    output on the held-out inputs (``||A Wᵀ - Y||² / ||Y||²``) with the restored and with the refitted weights."""
    name: str
    rows: int
    inputs: int
    outputs: int
    alpha: float
    intercept: str  # "bias", "bn" (absorbed into the next BatchNorm's mean) or "none"
    error_before: float
    error_after: float
    kept: bool = False  # True: the refit did not lower the held-out error and the restored weights were kept


def fittable(module: nn.Module) -> bool:
    """A layer the refit can refit: a Linear, or a Conv2d that mixes all input channels (groups 1)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _input_rows(module: nn.Module, x: torch.Tensor):
    """The layer's input as rows (im2col rows for a conv), chunk by chunk: at most ``_CHUNK_ELEMENTS`` at once."""
    if isinstance(module, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        per = max(1, _CHUNK_ELEMENTS // max(flat.shape[1], 1))
        for lo in range(0, len(flat), per):
            yield flat[lo:lo + per]
        return
    padding, pad_mode = module.padding, module.padding_mode
    if isinstance(padding, str) or pad_mode != "zeros":  # "same", reflect/replicate/circular: pad first
        x = F.pad(x, module._reversed_padding_repeated_twice, mode="constant" if pad_mode == "zeros" else pad_mode)
        padding = 0
    kh, kw = module.kernel_size
    d = x.shape[1] * kh * kw
    oh = (x.shape[2] + 2 * _pair(padding)[0] - module.dilation[0] * (kh - 1) - 1) // module.stride[0] + 1
    ow = (x.shape[3] + 2 * _pair(padding)[1] - module.dilation[1] * (kw - 1) - 1) // module.stride[1] + 1
    per = max(1, _CHUNK_ELEMENTS // max(d * oh * ow, 1))
    for lo in range(0, len(x), per):
        cols = F.unfold(x[lo:lo + per], module.kernel_size, module.dilation, padding, module.stride)
        yield cols.transpose(1, 2).reshape(-1, d)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def output_rows(y: torch.Tensor) -> torch.Tensor:
    """A layer's output as rows ``(positions x images, channels)`` in im2col order."""
    if y.dim() == 2:
        return y
    if y.dim() == 4:
        return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


class _Gram:
    """``AᵀA``, ``AᵀY`` and ``||Y||²`` of sampled rows, accumulated in float64 over chunks."""

    def __init__(self, d: int, m: int, intercept: bool, dtype):
        self.d, self.intercept, self.dtype = d + intercept, intercept, dtype
        self.AtA = torch.zeros(self.d, self.d, dtype=torch.float64)
        self.AtY = torch.zeros(self.d, m, dtype=torch.float64)
        self.YtY = 0.0
        self.rows = 0

    def add(self, A: torch.Tensor, Y: torch.Tensor) -> None:
        A, Y = A.to(self.dtype), Y.to(self.dtype)
        if self.intercept:
            A = torch.cat([A, A.new_ones(len(A), 1)], dim=1)
        self.AtA += (A.T @ A).to(torch.float64).cpu()
        self.AtY += (A.T @ Y).to(torch.float64).cpu()
        self.YtY += float(Y.double().pow(2).sum())
        self.rows += len(A)

    def error(self, W: torch.Tensor) -> float:
        """``||A W - Y||²`` for ``W`` of shape (d, m), from the accumulated moments."""
        return float((W * (self.AtA @ W)).sum() - 2 * (W * self.AtY).sum() + self.YtY)


class _Rows:
    """``A`` and ``Y`` themselves, for a layer with fewer fit rows than unknowns (a Linear with a wide fan-in after
    a flatten): there the ridge solution is cheaper in its dual form, ``W = W₀ + Aᵀ(AAᵀ + λI)⁻¹(Y − AW₀)``, which
    equals the primal one, and ``AᵀA`` (unknowns²) is never formed."""

    def __init__(self, d: int, m: int, intercept: bool, dtype):
        self.d, self.intercept, self.dtype = d + intercept, intercept, dtype
        self.parts, self.targets, self.rows, self.YtY = [], [], 0, 0.0

    def add(self, A: torch.Tensor, Y: torch.Tensor) -> None:
        A = A.to(torch.float64).cpu()
        if self.intercept:
            A = torch.cat([A, A.new_ones(len(A), 1)], dim=1)
        self.parts.append(A)
        self.targets.append(Y.to(torch.float64).cpu())
        self.YtY += float(self.targets[-1].pow(2).sum())
        self.rows += len(A)

    @property
    def A(self) -> torch.Tensor:
        if len(self.parts) != 1:  # joined once, after the last add (solve, error and scale read it per alpha)
            self.parts = [torch.cat(self.parts) if self.parts else torch.zeros(0, self.d, dtype=torch.float64)]
        return self.parts[0]

    @property
    def Y(self) -> torch.Tensor:
        if len(self.targets) != 1:
            self.targets = [torch.cat(self.targets)]
        return self.targets[0]

    def scale(self) -> float:
        """mean(diag(AᵀA)) without forming it."""
        return float(self.A.pow(2).sum()) / self.d

    def error(self, W: torch.Tensor) -> float:
        return float((self.A @ W - self.Y).pow(2).sum()) if self.rows else 0.0

    def solve(self, W0: torch.Tensor, lam: float):
        A = self.A
        K = A @ A.T + lam * torch.eye(len(A), dtype=torch.float64)
        L, info = torch.linalg.cholesky_ex(K)
        if int(info) != 0:
            return None
        return W0 + A.T @ torch.cholesky_solve(self.Y - A @ W0, L)


class LayerJob:
    """Everything needed to refit one consumer during the pruned network's forward pass."""

    def __init__(self, name, module, target_fit, target_held, rows_fit, rows_held, n_fit, kept, bn, options):
        self.name, self.module = name, module
        self.target_fit, self.target_held = target_fit, target_held
        self.rows_fit, self.rows_held, self.n_fit = rows_fit, rows_held, n_fit
        self.kept, self.bn, self.options = kept, bn, options
        self.done = False
        self.result: LayerFit | None = None

    def __call__(self, module, args):
        self.done = True
        self.result = _solve_layer(self, args[0])


def _gather(module, x, rows):
    """Sampled rows (``rows``: sorted global row indices) of the layer's input, chunk by chunk."""
    start = 0
    for chunk in _input_rows(module, x):
        stop = start + len(chunk)
        lo, hi = torch.searchsorted(rows, torch.tensor([start, stop])).tolist()
        if hi > lo:
            yield chunk[(rows[lo:hi] - start).to(chunk.device)]
        start = stop


def _solve_layer(job: LayerJob, x: torch.Tensor) -> LayerFit:
    module, options = job.module, job.options
    weight = module.weight.detach()
    m = weight.shape[0]
    w0 = weight.reshape(m, -1).to(torch.float64).cpu()
    d = w0.shape[1]
    has_bias = getattr(module, "bias", None) is not None
    intercept = has_bias or job.bn is not None
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    dual = len(job.rows_fit) < d + intercept  # fewer rows than unknowns: the dual form (``_Rows``)
    moments = _Rows if dual else _Gram
    fit, held = moments(d, m, intercept, compute), moments(d, m, intercept, compute)
    for gram, xs, rows, target in ((fit, x[:job.n_fit], job.rows_fit, job.target_fit),
                                   (held, x[job.n_fit:], job.rows_held, job.target_held)):
        if rows is None or len(xs) == 0:
            continue
        offset = 0
        for A in _gather(module, xs, rows):
            gram.add(A, target[offset:offset + len(A)])
            offset += len(A)
    if intercept:
        b0 = module.bias.detach().to(torch.float64).cpu() if has_bias else torch.zeros(m, dtype=torch.float64)
        w0 = torch.cat([w0, b0[:, None]], dim=1)
    W0 = w0.T  # (d, m)
    scale = fit.scale() if dual else float(fit.AtA.diagonal().mean())
    heldout = held.rows > 0
    before = held.error(W0) / max(held.YtY, 1e-30) if heldout else float("nan")
    best = None
    for alpha in options["alphas"]:
        lam = alpha * scale
        if dual:
            W = fit.solve(W0, lam)
        else:
            L, info = torch.linalg.cholesky_ex(fit.AtA + lam * torch.eye(fit.d, dtype=torch.float64))
            W = torch.cholesky_solve(fit.AtY + lam * W0, L) if int(info) == 0 else None
        if W is None:
            raise ValueError(f"refit of layer {job.name!r}: the least-squares system is singular with alpha="
                             f"{alpha:g} ({fit.rows} rows for {fit.d} unknowns); alpha must be > 0 for it")
        err = held.error(W) / max(held.YtY, 1e-30) if heldout else fit.error(W) / max(fit.YtY, 1e-30)
        if not math.isfinite(err):
            continue
        if best is None or err < best[0]:
            best = (err, alpha, W)
    if best is None:
        raise ValueError(f"refit of layer {job.name!r}: no alpha in {list(options['alphas'])} gave a finite fit")
    err, alpha, W = best
    kept_restored = heldout and not err < before
    if kept_restored:  # the held-out set says the refit would not help this layer
        err, W = before, W0
    else:
        _write(module, job.bn, W, intercept, has_bias)
    return LayerFit(job.name, fit.rows, d, m, alpha, ("bias" if has_bias else "bn") if intercept else "none",
                    before, err if heldout else float("nan"), kept_restored)


@torch.no_grad()
def _write(module: nn.Module, bn, W: torch.Tensor, intercept: bool, has_bias: bool) -> None:
    weight = module.weight
    Wt = W.T  # (m, d [+1])
    if intercept:
        Wt, b = Wt[:, :-1], Wt[:, -1]
        if has_bias:
            module.bias.copy_(b.to(module.bias))
        else:  # BN(z + b) with mean mu equals BN(z) with mean mu - b
            bn.running_mean.sub_(b.to(bn.running_mean))
    weight.copy_(Wt.reshape(weight.shape).to(weight))


def sample_rows(total: int, cap: int, generator: torch.Generator) -> torch.Tensor:
    if total <= cap:
        return torch.arange(total)
    return torch.randperm(total, generator=generator)[:cap].sort().values
