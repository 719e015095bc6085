"""LBYL (docs/method.md §5): the §5.6 invariants for both variants, the solvers against an independent
per-filter reference built straight from the §5.2 formulas, singular systems, and the FC ridge."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lbyl_pl import prune_and_restore
from lbyl_pl.methods.lbyl import SingularSystemError, lbyl_delivery, lbyl_system
from lbyl_pl.surgery import selection_matrix
from lbyl_pl.prunable import prunable_units
from lbyl_pl.units import UnitTensors, unit_tensors

VARIANTS = ("paper", "exact")
SOLVERS = ("shared", "batched")


# --------------------------------------------------------------------------- independent reference

def reference_delivery(t: UnitTensors, kept, lambda1, lambda2, variant):
    """Per-filter Cholesky solves of the §5.2 normal equations in float64 numpy/scipy."""
    W = t.weight.numpy()
    n = W.shape[0]
    gamma, beta, mean, var = (x.numpy() for x in (t.gamma, t.beta, t.mean, t.var))
    sigma = var if variant == "paper" else np.sqrt(var + t.eps)
    k = np.asarray(kept)
    P = [i for i in range(n) if i not in set(kept)]
    X = W[k].T                                         # d x m
    a = mean[k] - sigma[k] * beta[k] / gamma[k]
    S = np.zeros((n, len(k)))
    S[k, np.arange(len(k))] = 1.0
    for p in P:
        g = gamma[p] / sigma[p]
        c = gamma[p] * mean[p] / sigma[p] - beta[p]
        K = (gamma[p] / gamma[k]) * (sigma[k] / sigma[p])
        if variant == "paper":
            A = X.T @ X + lambda1 * g ** 2 * (a @ a) * np.eye(len(k)) + lambda2 * np.diag(K ** 2)
        else:
            A = X.T @ X + lambda1 * g ** 2 * np.outer(a, a) + lambda2 * np.diag(K ** 2)
        b = X.T @ W[p] + lambda1 * g * c * a
        s = scipy.linalg.solve(A, b, assume_a="pos")
        S[p] = s if variant == "paper" else K * s
    return torch.from_numpy(S)


def ref_K(t: UnitTensors, kept, variant):
    sigma = t.var if variant == "paper" else torch.sqrt(t.var + t.eps)
    k = torch.as_tensor(kept)
    P = torch.as_tensor([i for i in range(t.weight.shape[0]) if i not in set(kept)])
    return (t.gamma[P, None] / t.gamma[None, k]) * (sigma[None, k] / sigma[P, None])


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def pruned_of(n, kept):
    return [i for i in range(n) if i not in set(kept)]


def make_combination_unit(unit_tensors_factory, n=8, d=20, kept=(0, 2, 3, 5, 7), seed=1, nonneg=False):
    """Pruned filters are exact combinations ``t`` of the kept filters."""
    t = unit_tensors_factory(n, d, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    P = pruned_of(n, kept)
    coef = torch.randn(len(P), len(kept), generator=g, dtype=torch.float64)
    if nonneg:
        coef = coef.abs()
    t.weight[P] = coef @ t.weight[list(kept)]
    return t, list(kept), P, coef


# --------------------------------------------------------------------------- §5.6.1 exact recovery

@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_recovery_of_combination_coefficients(unit_tensors_factory, variant, solver):
    t, kept, P, coef = make_combination_unit(unit_tensors_factory)
    S = lbyl_delivery(t, kept, lambda1=1e-12, lambda2=1e-12, variant=variant, solver=solver)
    s = S[P] if variant == "paper" else S[P] / ref_K(t, kept, variant)
    assert (s - coef).abs().max().item() < 1e-9
    # the exact variant delivers K∘s: check it against the independent K as well
    if variant == "exact":
        assert (S[P] - ref_K(t, kept, variant) * coef).abs().max().item() < 1e-9


@pytest.mark.parametrize("variant", VARIANTS)
def test_lbyl_system_K_matches_definition(unit_tensors_factory, variant):
    t = unit_tensors_factory(9, 12, seed=3)
    kept = [1, 2, 4, 8]
    _, _, _, _, K, P = lbyl_system(t, kept, 1e-3, 1e-2, variant)
    assert P.tolist() == pruned_of(9, kept)
    assert torch.allclose(K, ref_K(t, kept, variant), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- §5.6.2 linear regime

def build_linear_regime_net(one_unit_net, act, equal_k: bool, seed=0):
    """One conv -> BN -> act -> consumer unit whose pruned filters are exact combinations ``t`` of the
    kept ones and whose pruned BN bias makes the leftover shift b_p(t) = 0 (sigma = sqrt(var + eps))."""
    model = one_unit_net(seed=seed, n=8, c_in=3, kernel=3, act=act)  # d = 27 >= m = 5
    kept = [0, 2, 3, 5, 7]
    P = pruned_of(8, kept)
    g = torch.Generator().manual_seed(seed + 7)
    coef = torch.rand(len(P), len(kept), generator=g, dtype=torch.float64) + 0.2  # t >= 0
    with torch.no_grad():
        bn = model.bn
        if equal_k:  # gamma / sigma equal across channels: K == 1 in both sigma modes
            bn.weight.fill_(1.3)
            bn.running_var.fill_(0.8)
        if isinstance(act, nn.ReLU):
            bn.bias[kept] = 10.0  # every kept BN output > 0, so ReLU acts as the identity
        W = model.conv.weight.view(8, -1)
        W[P] = coef @ W[kept]
        gamma, beta, mu = bn.weight, bn.bias, bn.running_mean
        sigma = torch.sqrt(bn.running_var + bn.eps)
        a = mu[kept] - sigma[kept] * beta[kept] / gamma[kept]
        for i, p in enumerate(P):
            # b_p(t) = (gamma_p / sigma_p)(a^T t - mu_p) + beta_p = 0
            beta[p] = -(gamma[p] / sigma[p]) * (a @ coef[i] - mu[p])
    return model, kept, P, coef


@pytest.mark.parametrize("act", [nn.Identity(), nn.ReLU()], ids=["identity", "relu"])
def test_exact_variant_is_exact_in_linear_regime(one_unit_net, act):
    model, kept, P, _ = build_linear_regime_net(one_unit_net, act, equal_k=False)
    x = 0.1 * torch.randn(4, 3, 6, 6, dtype=torch.float64)
    if isinstance(act, nn.ReLU):
        assert model.bn(model.conv(x))[:, kept].min().item() > 0  # precondition of the linear regime
    ref = model(x)
    restored, _ = prune_and_restore(model, "lbyl", ratio=0.5, kept={"conv": kept}, lambda1=1e-12,
                                    lambda2=1e-12, variant="exact")
    pruned, _ = prune_and_restore(model, "prune", ratio=0.5, kept={"conv": kept})
    scale = ref.abs().max().item()
    assert (restored(x) - ref).abs().max().item() < 1e-8 * scale
    assert (pruned(x) - ref).abs().max().item() > 1e-2 * scale  # the test is not trivial


@pytest.mark.parametrize("act", [nn.Identity(), nn.ReLU()], ids=["identity", "relu"])
def test_paper_variant_is_exact_only_when_K_is_one(one_unit_net, act):
    x = 0.1 * torch.randn(4, 3, 6, 6, dtype=torch.float64)
    # K == 1 (equal gamma / sigma): the code-faithful delivery of plain s is exact
    model, kept, P, coef = build_linear_regime_net(one_unit_net, act, equal_k=True)
    ref = model(x)
    restored, _ = prune_and_restore(model, "lbyl", ratio=0.5, kept={"conv": kept}, lambda1=1e-12,
                                    lambda2=1e-12, variant="paper")
    assert (restored(x) - ref).abs().max().item() < 1e-8 * ref.abs().max().item()

    # K != 1: it delivers s == t (weight space), not K∘t, and the output is off
    model, kept, P, coef = build_linear_regime_net(one_unit_net, act, equal_k=False)
    ref = model(x)
    restored, _ = prune_and_restore(model, "lbyl", ratio=0.5, kept={"conv": kept}, lambda1=1e-12,
                                    lambda2=1e-12, variant="paper")
    assert (restored(x) - ref).abs().max().item() > 1e-3 * ref.abs().max().item()
    t = unit_tensors(prunable_units(model)[0])
    S = lbyl_delivery(t, kept, lambda1=1e-12, lambda2=1e-12, variant="paper")
    assert (S[P] - coef).abs().max().item() < 1e-8          # plain s is delivered (§5.3, §12.5)
    assert (ref_K(t, kept, "exact") - 1).abs().max().item() > 0.05


# --------------------------------------------------------------------------- §5.6.3 lambda2 -> inf

@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_huge_lambda2_reduces_to_prune(unit_tensors_factory, variant, solver):
    t = unit_tensors_factory(10, 15, seed=4)
    kept = [0, 1, 4, 6, 9]
    S = lbyl_delivery(t, kept, lambda1=1e-6, lambda2=1e12, variant=variant, solver=solver)
    assert (S - selection_matrix(10, kept)).abs().max().item() < 1e-9
    S_small = lbyl_delivery(t, kept, lambda1=1e-6, lambda2=1e-2, variant=variant, solver=solver)
    assert (S_small - selection_matrix(10, kept)).abs().max().item() > 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_huge_lambda2_network_equals_prune(tiny_net, variant):
    model = tiny_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    lbyl, _ = prune_and_restore(model, "lbyl", "l2-norm", 0.5, lambda1=1e-6, lambda2=1e12, variant=variant)
    prune, _ = prune_and_restore(model, "prune", "l2-norm", 0.5)
    assert lbyl.lbyl_spec["units"] == prune.lbyl_spec["units"]
    assert torch.allclose(lbyl(x), prune(x), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- §5.6.4 kept rows, order

@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_kept_rows_identity_and_permutation_equivariance(unit_tensors_factory, variant, solver):
    n, d = 12, 10
    t = unit_tensors_factory(n, d, seed=5)
    kept = [0, 3, 4, 7, 8, 11]
    S = lbyl_delivery(t, kept, lambda1=1e-4, lambda2=1e-2, variant=variant, solver=solver)
    assert S.shape == (n, len(kept))
    assert torch.equal(S[kept], torch.eye(len(kept), dtype=torch.float64))
    perm = [4, 0, 5, 2, 1, 3]
    kept_perm = [kept[i] for i in perm]
    S_perm = lbyl_delivery(t, kept_perm, lambda1=1e-4, lambda2=1e-2, variant=variant, solver=solver)
    assert torch.equal(S_perm[kept_perm], torch.eye(len(kept), dtype=torch.float64))
    assert rel_err(S_perm, S[:, perm]) < 1e-10
    # the consumer output U S A[kept] is unchanged when the kept channels come in another order
    U = torch.randn(5, n, dtype=torch.float64)
    A = torch.randn(n, 7, dtype=torch.float64)
    assert torch.allclose(U @ S_perm @ A[kept_perm], U @ S @ A[kept], rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- §5.6.5 ratio 0

@pytest.mark.parametrize("variant", VARIANTS)
def test_ratio_zero_is_identity(tiny_net, unit_tensors_factory, variant, sd_equal):
    t = unit_tensors_factory(6, 9)
    S = lbyl_delivery(t, list(range(6)), lambda1=1e-3, lambda2=1e-2, variant=variant)
    assert torch.equal(S, torch.eye(6, dtype=torch.float64))
    for dtype in (torch.float32, torch.float64):
        model = tiny_net(dtype=dtype)
        x = torch.randn(2, 3, 8, 8, dtype=dtype)
        restored, report = prune_and_restore(model, "lbyl", "l2-norm", 0.0, variant=variant)
        assert sd_equal(restored.state_dict(), model.state_dict())
        assert torch.equal(restored(x), model(x))
        assert [u.pruned for u in report.units] == [0, 0]


# --------------------------------------------------------------------------- solvers vs reference

SOLVER_CASES = [
    # (n, d, m, lambda1, lambda2)
    (10, 20, 6, 1e-4, 1e-2),
    (16, 30, 9, 1e-6, 0.5),
    (16, 30, 9, 1e-3, 0.0),     # lambda2 = 0: exact variant's M is rank one (fallback path)
    (16, 30, 9, 0.0, 1e-2),
    (64, 27, 57, 6e-6, 1e-4),   # VGG conv1-like, d < m, published VGG L2 r=0.1 lambdas
    (64, 27, 57, 4e-5, 2e-4),
    (64, 27, 32, 1e-6, 1e-2),   # r = 0.5: still d = 27 < m = 32
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,d,m,lambda1,lambda2", SOLVER_CASES)
def test_shared_and_batched_solvers_match_reference(unit_tensors_factory, n, d, m, lambda1, lambda2, variant):
    t = unit_tensors_factory(n, d, seed=n + d + m)
    g = torch.Generator().manual_seed(m)
    kept = sorted(torch.randperm(n, generator=g)[:m].tolist())
    ref = reference_delivery(t, kept, lambda1, lambda2, variant)
    shared = lbyl_delivery(t, kept, lambda1=lambda1, lambda2=lambda2, variant=variant, solver="shared")
    batched = lbyl_delivery(t, kept, lambda1=lambda1, lambda2=lambda2, variant=variant, solver="batched")
    P = pruned_of(n, kept)
    assert rel_err(batched[P], ref[P]) < 1e-8
    assert rel_err(shared[P], ref[P]) < 1e-8
    assert rel_err(shared[P], batched[P]) < 1e-8
    assert torch.equal(shared[kept], ref[kept])


def float32_reference_delivery(t: UnitTensors, kept, lambda1, lambda2, variant):
    """``reference_delivery`` on float32 copies of the tensors: numpy builds every system in float32 and
    scipy solves it with LAPACK sposv, as the authors' Ridge.py does (docs/method.md §5.2)."""
    t32 = UnitTensors(*(x.to(torch.float32) for x in (t.weight, t.gamma, t.beta, t.mean, t.var)), t.eps)
    return reference_delivery(t32, kept, lambda1, lambda2, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,d,m,lambda1,lambda2", [(10, 20, 6, 1e-4, 1e-2), (16, 30, 9, 1e-6, 0.5),
                                                    (16, 30, 9, 0.0, 1e-2), (64, 80, 40, 4e-5, 2e-4)])
def test_reference_solver_has_float32_precision(unit_tensors_factory, n, d, m, lambda1, lambda2, variant):
    t = unit_tensors_factory(n, d, seed=n + d + m)
    kept = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(m))[:m].tolist())
    P = pruned_of(n, kept)
    float32 = lbyl_delivery(t, kept, lambda1=lambda1, lambda2=lambda2, variant=variant, solver="reference")
    float64 = lbyl_delivery(t, kept, lambda1=lambda1, lambda2=lambda2, variant=variant, solver="shared")
    independent32 = float32_reference_delivery(t, kept, lambda1, lambda2, variant)
    assert float32.dtype == torch.float64 and float32.shape == float64.shape
    assert torch.equal(float32[kept], float64[kept])
    # float32 rounding is visible (the solves really ran in float32) but stays at float32 accuracy ...
    assert 1e-9 < rel_err(float32[P], float64[P]) < 1e-4
    # ... and agrees with an independent float32 build-and-solve to the same accuracy
    assert rel_err(float32[P], independent32[P]) < 1e-4


def test_reference_solver_fully_connected_ridge(unit_tensors_factory):
    t = unit_tensors_factory(30, 41, seed=4, bn=False)
    kept = list(range(0, 30, 2))
    float32 = lbyl_delivery(t, kept, lambda1=0.0, lambda2=0.3, solver="reference")
    float64 = lbyl_delivery(t, kept, lambda1=0.0, lambda2=0.3, solver="shared")
    P = pruned_of(30, kept)
    assert 1e-9 < rel_err(float32[P], float64[P]) < 1e-4


def test_reference_solver_through_prune_and_restore(one_unit_net):
    model = one_unit_net(n=16, c_in=8, kernel=3)
    x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    float32, report = prune_and_restore(model, "lbyl", "l2-norm", 0.5, lambda1=1e-4, lambda2=1e-2,
                                        solver="reference")
    float64, _ = prune_and_restore(model, "lbyl", "l2-norm", 0.5, lambda1=1e-4, lambda2=1e-2)
    assert report.hparams["solver"] == "reference" and float32.lbyl_spec["hparams"]["solver"] == "reference"
    with torch.no_grad():
        assert torch.allclose(float32.eval()(x), float64.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_and_exact_variants_differ(unit_tensors_factory, variant):
    t = unit_tensors_factory(10, 20, seed=9)
    kept = [0, 1, 2, 3, 5, 8]
    other = "exact" if variant == "paper" else "paper"
    S = lbyl_delivery(t, kept, lambda1=1e-2, lambda2=1e-2, variant=variant)
    S_other = lbyl_delivery(t, kept, lambda1=1e-2, lambda2=1e-2, variant=other)
    assert rel_err(S, S_other) > 1e-3


# --------------------------------------------------------------------------- singular systems

@pytest.mark.parametrize("solver", SOLVERS + ("reference",))
@pytest.mark.parametrize("variant", VARIANTS)
def test_gamma_zero_with_d_below_m_raises(unit_tensors_factory, variant, solver):
    t = unit_tensors_factory(64, 27, seed=2)
    kept = list(range(57))
    t.gamma[60] = 0.0
    with pytest.raises(ValueError, match="singular|not positive definite") as err:
        lbyl_delivery(t, kept, lambda1=1e-6, lambda2=1e-2, variant=variant, solver=solver, name="feature.0")
    assert isinstance(err.value, SingularSystemError)
    assert "feature.0" in str(err.value)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_lambdas_with_d_below_m_raises(unit_tensors_factory, variant, solver):
    t = unit_tensors_factory(64, 27, seed=3)
    with pytest.raises(ValueError, match="not positive definite|singular"):
        lbyl_delivery(t, list(range(0, 64, 2)) + list(range(1, 50, 2)), lambda1=0.0, lambda2=0.0,
                      variant=variant, solver=solver)


def test_singular_system_through_prune_and_restore_names_the_layer(one_unit_net):
    model = one_unit_net(n=64, c_in=3, kernel=3)  # d = 27 < m = 57 at r = 0.1
    with pytest.raises(ValueError, match=r"conv: the LBYL system .*(singular|not positive definite)"):
        prune_and_restore(model, "lbyl", "l2-norm", 0.1, lambda1=0.0, lambda2=0.0)


def test_gamma_zero_with_d_at_least_m_is_finite(unit_tensors_factory):
    t = unit_tensors_factory(10, 20, seed=6)
    kept = [0, 1, 2, 3, 4]
    t.gamma[7] = 0.0
    for variant in VARIANTS:
        for solver in SOLVERS:
            S = lbyl_delivery(t, kept, lambda1=1e-4, lambda2=1e-2, variant=variant, solver=solver)
            assert torch.isfinite(S).all()


def test_d_below_m_with_lambda_is_well_posed(unit_tensors_factory):
    t = unit_tensors_factory(64, 27, seed=8)
    kept = list(range(57))
    for variant in VARIANTS:
        S = lbyl_delivery(t, kept, lambda1=1e-6, lambda2=1e-2, variant=variant)
        assert torch.isfinite(S).all()
        # the ridge solution reconstructs the pruned filters from the 27-dim span almost exactly
        P = pruned_of(64, kept)
        s = S[P] if variant == "paper" else S[P] / ref_K(t, kept, variant)
        recon = s @ t.weight[kept]
        assert rel_err(recon, t.weight[P]) < 1e-2


# --------------------------------------------------------------------------- FC ridge (LeNet)

def numpy_ridge_with_intercept(X_rows, y_rows, alpha):
    """sklearn Ridge(alpha, fit_intercept=True) written out: samples are the D coordinates."""
    X = X_rows.T          # (D, m)
    Y = y_rows.T          # (D, q)
    Xc = X - X.mean(axis=0, keepdims=True)
    Yc = Y - Y.mean(axis=0, keepdims=True)
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ Yc)
    return coef.T         # (q, m)


@pytest.mark.parametrize("alpha", [1e-6, 0.3, 5.0])
def test_fc_ridge_matches_numpy_ridge_with_intercept(unit_tensors_factory, alpha):
    t = unit_tensors_factory(14, 31, seed=11, bn=False)
    kept = [0, 2, 3, 6, 7, 9, 10, 13]
    P = pruned_of(14, kept)
    S = lbyl_delivery(t, kept, lambda1=0.0, lambda2=alpha)
    W = t.weight.numpy()
    expected = numpy_ridge_with_intercept(W[kept], W[P], alpha)
    assert np.abs(S[P].numpy() - expected).max() < 1e-10 * max(1.0, np.abs(expected).max())
    assert torch.equal(S[kept], torch.eye(len(kept), dtype=torch.float64))
    # lambda1 is unused for FC units, and the variant does not matter
    assert torch.equal(S, lbyl_delivery(t, kept, lambda1=0.7, lambda2=alpha))
    assert torch.equal(S, lbyl_delivery(t, kept, lambda1=0.0, lambda2=alpha, variant="exact"))


def test_fc_ridge_intercept_matters(unit_tensors_factory):
    t = unit_tensors_factory(12, 40, seed=12, bn=False)
    t.weight += 3.0  # a common offset: the centred fit and an uncentred fit disagree
    kept = list(range(8))
    P = pruned_of(12, kept)
    S = lbyl_delivery(t, kept, lambda1=0.0, lambda2=0.3)
    W = t.weight.numpy()
    X = W[kept].T
    uncentred = np.linalg.solve(X.T @ X + 0.3 * np.eye(8), X.T @ W[P].T).T
    assert np.abs(S[P].numpy() - uncentred).max() > 1e-3


def test_fc_ridge_exact_recovery(unit_tensors_factory):
    t = unit_tensors_factory(10, 25, seed=13, bn=False)
    kept = [1, 2, 4, 5, 8, 9]
    P = pruned_of(10, kept)
    coef = torch.randn(len(P), len(kept), dtype=torch.float64)
    t.weight[P] = coef @ t.weight[kept]
    S = lbyl_delivery(t, kept, lambda1=0.0, lambda2=1e-12)
    assert (S[P] - coef).abs().max().item() < 1e-9


# --------------------------------------------------------------------------- §5.5 unit chains

@pytest.mark.parametrize("variant", VARIANTS)
def test_chained_units_use_original_weights(tiny_net, variant):
    """conv2 is both the consumer of unit 1 and the pruned layer of unit 2: its coefficients come from
    its original full-input weights, and the two edits act on different axes (docs/method.md §5.5)."""
    model = tiny_net(c1=8, c2=6)
    units = prunable_units(model)
    t1, t2 = unit_tensors(units[0]), unit_tensors(units[1])
    restored, _ = prune_and_restore(model, "lbyl", "l2-norm", 0.5, lambda1=1e-4, lambda2=1e-2, variant=variant)
    k1, k2 = restored.lbyl_spec["units"]["conv1"], restored.lbyl_spec["units"]["conv2"]
    assert (len(k1), len(k2)) == (4, 3)
    S1 = lbyl_delivery(t1, k1, lambda1=1e-4, lambda2=1e-2, variant=variant)
    S2 = lbyl_delivery(t2, k2, lambda1=1e-4, lambda2=1e-2, variant=variant)
    W1, W2, U = model.conv1.weight.detach(), model.conv2.weight.detach(), model.fc.weight.detach()
    assert torch.equal(restored.conv1.weight, W1[k1])
    expected_conv2 = torch.einsum("oihw,ij->ojhw", W2, S1)[k2]
    assert torch.allclose(restored.conv2.weight, expected_conv2, rtol=1e-12, atol=1e-12)
    assert torch.allclose(restored.fc.weight, U @ S2, rtol=1e-12, atol=1e-12)
    assert torch.equal(restored.fc.bias, model.fc.bias)           # no bias correction anywhere
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(restored.bn1, name), getattr(model.bn1, name)[k1])
        assert torch.equal(getattr(restored.bn2, name), getattr(model.bn2, name)[k2])


@pytest.mark.parametrize("variant", ["paper", "exact"])
def test_dead_bn_channels_fall_back_to_direct_solves_instead_of_failing(unit_tensors_factory, variant):
    # ResNet-56's layer2.7.conv1 has BN channels with gamma ~ 2e-10 and var ~ 5e-18 (dead channels). A kept one
    # makes h = sigma/gamma huge and the shared transform ill-conditioned; a pruned one makes g_p ~ 0. The
    # systems G + g_p^2 M are still positive definite (d >= m): they must be solved, not rejected.
    t = unit_tensors_factory(16, 40, seed=3)
    t.gamma[[2, 11]] = 2e-10
    t.var[[2, 11]] = 5e-18
    kept = [0, 1, 2, 4, 5, 7, 8, 9, 12, 13, 15]  # channel 2 kept, channel 11 pruned
    shared = lbyl_delivery(t, kept, lambda1=1e-6, lambda2=1e-3, variant=variant, solver="shared")
    batched = lbyl_delivery(t, kept, lambda1=1e-6, lambda2=1e-3, variant=variant, solver="batched")
    assert torch.isfinite(shared).all()
    scale = batched.abs().max()
    assert (shared - batched).abs().max() <= 1e-6 * scale
