"""LBYL: many-to-one compensation by a closed-form ridge solve (``docs/method.md`` §5).

For a BN unit, every pruned filter ``p`` solves (§5.2)

    (G + g_p^2 M) s_p = X^T w_p + lambda1 g_p c_p a,        G = Wk Wk^T,

with ``M = lambda1 ||a||^2 I + lambda2 diag(h^2)`` in the code-faithful ``paper`` variant and
``M = lambda1 a a^T + lambda2 diag(h^2)`` in the ``exact`` variant (``h = sigma_k / gamma_k``).
``G`` and ``M`` are shared by all pruned filters of the layer, so one factorisation serves them all:
with ``M = C C^T`` and ``C^{-1} G C^{-T} = V diag(L) V^T``,

    s_p = C^{-T} V diag(1 / (L + g_p^2)) V^T C^{-1} r_p,

which is a handful of matrix products for the whole layer instead of one Cholesky per filter.

Fully-connected units (LeNet, no BN) use the reference's ``Ridge(alpha=lambda2, fit_intercept=True)``
(§5.5, §12.7): the ``[w, b]`` coordinates are centred across the kept neurons and every pruned row
solves the same system ``(Xc^T Xc + lambda2 I) s = Xc^T yc``; lambda1 is unused.

Solvers: ``shared`` (default, float64, the factorisation above), ``batched`` (float64, one Cholesky per
materialised system) and ``reference``: the reference's precision (§5.2), every system built in float32
from float32 copies of the weights and solved on its own by LAPACK ``sposv`` through
``scipy.linalg.solve(assume_a='pos')``. It agrees with the float64 solvers to float32 accuracy and shows
what the reference's rounding does (notably at VGG conv1, where d < m); it is not bit-identical to the
reference, whose order of operations is not reproduced.
"""
from __future__ import annotations

import dataclasses

import torch

from ..surgery import selection_matrix
from ..units import UnitTensors
from .base import Hyperparameter, RestorationMethod, UnitRestoration, register, check_choice
from .common import bn_gamma_sigma, check_nonnegative, check_variant, kept_indices, pruned_indices

SOLVERS = ("shared", "batched", "reference")

# Below this reciprocal condition number a system is treated as singular.
RCOND_MIN = 1e-14


class SingularSystemError(ValueError):
    pass


check_solver = check_choice("solver", SOLVERS)


def _solve_spd(A: torch.Tensor, rhs: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky solve of SPD ``A`` (batched or not) with a clear error when it is singular."""
    L, info = torch.linalg.cholesky_ex(A)
    if (info != 0).any():
        raise SingularSystemError(
            f"{what}: the LBYL system is not positive definite (singular Gram matrix, e.g. fewer "
            "weights per filter than kept filters, or a BN gamma of 0); use lambda2 > 0")
    return torch.cholesky_solve(rhs, L)


def lbyl_system(t: UnitTensors, kept: list[int], lambda1: float, lambda2: float, variant: str):
    """The per-layer pieces ``G``, ``M``, right-hand sides and ``g`` (all float64), plus ``K``."""
    W = t.weight
    k = kept_indices(kept, device=W.device)
    P = pruned_indices(W.shape[0], kept, device=W.device)
    Wk, Wp = W[k], W[P]
    gamma, sigma = bn_gamma_sigma(t, variant)
    g = gamma[P] / sigma[P]
    c = gamma[P] * t.mean[P] / sigma[P] - t.beta[P]
    a = t.mean[k] - sigma[k] * t.beta[k] / gamma[k]
    h = sigma[k] / gamma[k]
    G = Wk @ Wk.T
    rhs = Wp @ Wk.T + lambda1 * (g * c)[:, None] * a[None, :]
    if variant == "paper":
        # The reference forms a @ a.T on a 1-D array: the scalar ||a||^2 on the diagonal (§5.2).
        M = torch.diag(lambda1 * (a @ a) + lambda2 * h * h)
    else:
        M = lambda1 * torch.outer(a, a) + lambda2 * torch.diag(h * h)
    K = g[:, None] * h[None, :]
    return G, M, rhs, g, K, P


def _shared_solve(G, M, rhs, g, what):
    """Solve ``(G + g_p^2 M) s_p = rhs_p`` for every ``p`` with one factorisation of the layer."""
    diagonal = not (M - torch.diag(torch.diagonal(M))).any()  # always so in the paper variant
    if diagonal:
        # C = diag(sqrt(M_jj)): C^{-1} is a scaling, no Cholesky, triangular inverse or products.
        d = torch.diagonal(M)
        if not (d > 0).all():  # M only semi-definite (e.g. lambda2 = 0): materialise the systems
            return _batched_solve(G, M, rhs, g, what)
        c_inv = 1.0 / torch.sqrt(d)
        B = c_inv[:, None] * G * c_inv[None, :]
    else:
        C, info = torch.linalg.cholesky_ex(M)
        if info != 0:  # M only semi-definite (e.g. lambda2 = 0): materialise the systems instead
            return _batched_solve(G, M, rhs, g, what)
        eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        C_inv = torch.linalg.solve_triangular(C, eye, upper=False)
        B = C_inv @ G @ C_inv.T
    L, V = torch.linalg.eigh((B + B.T) / 2)
    L = L.clamp_min(0.0)  # G is PSD; negative eigenvalues are rounding noise
    denom = L[None, :] + (g * g)[:, None]
    rcond = denom.min(dim=1).values / denom.max(dim=1).values
    if diagonal:
        Z = ((rhs * c_inv[None, :]) @ V) / denom
        s = (Z @ V.T) * c_inv[None, :]
    else:
        Z = (rhs @ C_inv.T @ V) / denom
        s = Z @ V.T @ C_inv
    # A badly scaled M (e.g. a kept channel with gamma near 0 makes h = sigma/gamma huge) can make the
    # shared transform ill-conditioned although G + g_p^2 M itself is fine: solve those filters directly.
    # A system that is really singular still fails there, with a clear error.
    poor = rcond < RCOND_MIN
    if poor.any():
        s[poor] = _batched_solve(G, M, rhs[poor], g[poor], what)
    return s


def _batched_solve(G, M, rhs, g, what):
    A = G[None] + (g * g)[:, None, None] * M[None]
    return _solve_spd(A, rhs[..., None], what)[..., 0]


def _float32_copy(t: UnitTensors) -> UnitTensors:
    tensors = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
    return dataclasses.replace(t, **{name: value.to(torch.float32) for name, value in tensors.items()
                                     if isinstance(value, torch.Tensor)})


def _sposv(A, b, what: str):
    """One float32 SPD solve by LAPACK ``sposv`` (as the reference), with this package's error. ``A`` and ``b``:
    numpy arrays or CPU tensors (scipy's LAPACK runs on the CPU only)."""
    import numpy as np
    import scipy.linalg

    try:
        return scipy.linalg.solve(np.asarray(A, dtype=np.float32), np.asarray(b, dtype=np.float32),
                                  assume_a="pos")
    except np.linalg.LinAlgError as err:
        raise SingularSystemError(
            f"{what}: the LBYL system is not positive definite in float32 (solver='reference'): {err}; "
            "use lambda2 > 0 or a float64 solver (shared, batched)") from None


def _reference_solve(G, M, rhs, g, what):
    """float32 systems ``G + g_p^2 M`` solved one by one (``G``, ``M``, ``rhs`` and ``g`` are float32).

    The reference's LAPACK ``sposv`` through scipy runs on the CPU only: the layer's small float32 pieces are
    moved there and the coefficients come back to the device of ``rhs``."""
    import numpy as np

    device = rhs.device
    G, M, rhs, g = (x.cpu().numpy() for x in (G, M, rhs, g))
    s = np.stack([_sposv(G + g[i] * g[i] * M, rhs[i], what) for i in range(rhs.shape[0])])
    return torch.from_numpy(s).to(device=device, dtype=torch.float64)


def lbyl_delivery(t: UnitTensors, kept: list[int], *, lambda1: float, lambda2: float,
                  variant: str = "paper", solver: str = "shared", name: str = "unit") -> torch.Tensor:
    """Delivery matrix ``S`` (n x m, float64) of LBYL for one unit."""
    check_variant(variant)
    lambda1 = check_nonnegative("lambda1", lambda1)
    lambda2 = check_nonnegative("lambda2", lambda2)
    check_solver(solver)
    n = t.weight.shape[0]
    S = selection_matrix(n, kept, device=t.weight.device)  # solved where the unit's weights are
    if len(kept) == n:
        return S
    if solver == "reference":
        t = _float32_copy(t)
    if not t.has_bn:
        return _fc_ridge_delivery(t, kept, lambda2, S, name, solver)
    G, M, rhs, g, K, P = lbyl_system(t, kept, lambda1, lambda2, variant)
    if solver == "reference":
        s = _reference_solve(G, M, rhs, g, name)
        K = K.to(torch.float64)
    elif not M.abs().any():
        # No regulariser: every system is G itself, one solve for the layer.
        s = _solve_spd(G, rhs.T, name).T
    elif solver == "shared":
        s = _shared_solve(G, M, rhs, g, name)
    else:
        s = _batched_solve(G, M, rhs, g, name)
    S[P] = s if variant == "paper" else K * s  # paper: deliver s (§5.3); exact: deliver K∘s
    if not torch.isfinite(S).all():
        raise SingularSystemError(f"{name}: LBYL produced non-finite coefficients")
    return S


def _fc_ridge_delivery(t: UnitTensors, kept: list[int], lambda2: float, S: torch.Tensor,
                       name: str, solver: str) -> torch.Tensor:
    """LeNet: ``sklearn.linear_model.Ridge(alpha=lambda2, fit_intercept=True)`` per pruned row (in the
    tensors' dtype: float32 for the ``reference`` solver, as sklearn keeps float32 inputs)."""
    W = t.weight
    P = pruned_indices(W.shape[0], kept, device=W.device)
    X = W[kept_indices(kept, device=W.device)].T  # (D, m): samples are the D coordinates
    Y = W[P].T  # (D, q)
    Xc = X - X.mean(dim=0, keepdim=True)
    Yc = Y - Y.mean(dim=0, keepdim=True)
    A = Xc.T @ Xc + lambda2 * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    # the fitted intercept is discarded, as in the reference
    if solver == "reference":  # scipy's LAPACK: the (m, m) system on the CPU, the coefficients back on S's device
        S[P] = torch.from_numpy(_sposv(A.cpu(), (Xc.T @ Yc).cpu(), name)).T.to(device=S.device, dtype=torch.float64)
    else:
        S[P] = _solve_spd(A, Xc.T @ Yc, name).T
    return S


@register
class LBYL(RestorationMethod):
    name = "lbyl"
    title = "LBYL"
    summary = "Leave Before You Leave: each pruned filter is rebuilt from all kept filters by a ridge solve"
    hyperparameters = (
        Hyperparameter("lambda1", 1e-6, "weight of the BN-shift term", lambda v: check_nonnegative("lambda1", v)),
        Hyperparameter("lambda2", 1e-2, "ridge weight on the delivered coefficients",
                       lambda v: check_nonnegative("lambda2", v)),
        Hyperparameter("solver", "shared", "shared | batched (float64) | reference (float32 per filter, as the "
                       "reference code)", check_solver),
    )
    config_table = "lambdas"
    table_hparams = ("lambda1", "lambda2")
    # published VGG16 / ResNet-50 / ResNet-101 lambda1 lie in [1e-6, 5e-4] (one outlier at 0.9) and lambda2
    # in [7e-5, 1.0] (LeNet: up to 1.3), docs/method.md §6.1
    auto_grid = {"lambda1": (1e-6, 1e-5, 1e-4), "lambda2": (1e-4, 1e-3, 1e-2, 1e-1, 1.0)}

    def restore_unit(self, unit, tensors, kept):
        return UnitRestoration(lbyl_delivery(tensors, kept, variant=self.variant, name=unit.name, **self.hparams))
