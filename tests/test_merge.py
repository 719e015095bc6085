"""Neuron Merging (docs/method.md §4): exactness, the coded scale/bias formulas, threshold, guards, FC."""
from __future__ import annotations

import pytest
import torch

from lbyl_pl import build_model, prune_and_restore
from lbyl_pl.methods.merge import merge_delivery
from lbyl_pl.surgery import selection_matrix
from lbyl_pl.prunable import prunable_units
from lbyl_pl.units import UnitTensors, unit_tensors

VARIANTS = ("paper", "exact")


def sigma_of(t: UnitTensors, variant):
    return t.var if variant == "paper" else torch.sqrt(t.var + t.eps)


def build_multiple_net(one_unit_net, seed=0):
    """Pruned filters 4 and 5 are positive multiples (2.0x, 0.5x) of kept filters 1 and 3, and their BN
    makes the merge exact: ``N_p = S N_c`` with ``S > 0`` and no leftover bias (exact BN algebra)."""
    model = one_unit_net(seed=seed, n=6, c_in=3, kernel=3)
    kept = [0, 1, 2, 3]
    pairs = {4: (1, 2.0), 5: (3, 0.5)}
    with torch.no_grad():
        W = model.conv.weight.view(6, -1)
        bn = model.bn
        sigma = torch.sqrt(bn.running_var + bn.eps)
        g, b, mu = bn.weight, bn.bias, bn.running_mean
        for p, (c, r) in pairs.items():
            W[p] = r * W[c]
            # leftover bias (gamma_p/sigma_p)(r(mu_c - sigma_c beta_c/gamma_c) - mu_p) + beta_p = 0
            b[p] = -(g[p] / sigma[p]) * (r * (mu[c] - sigma[c] * b[c] / g[c]) - mu[p])
    return model, kept, pairs


def test_exact_variant_merge_restores_output_exactly(one_unit_net):
    model, kept, pairs = build_multiple_net(one_unit_net)
    x = torch.randn(3, 3, 7, 7, dtype=torch.float64)
    ref = model(x)
    restored, _ = prune_and_restore(model, "merge", ratio=0.5, kept={"conv": kept}, variant="exact")
    pruned, _ = prune_and_restore(model, "prune", ratio=0.5, kept={"conv": kept})
    scale = ref.abs().max().item()
    assert (restored(x) - ref).abs().max().item() < 1e-10 * scale
    assert (pruned(x) - ref).abs().max().item() > 1e-2 * scale

    t = unit_tensors(prunable_units(model)[0])
    S = merge_delivery(t, kept, threshold=0.1, nm_lambda=0.85, variant="exact")
    sigma = sigma_of(t, "exact")
    for p, (c, r) in pairs.items():
        j = kept.index(c)
        expected = r * (t.gamma[p] / t.gamma[c]) * (sigma[c] / sigma[p])
        assert S[p, j].item() == pytest.approx(expected.item(), rel=1e-12)
        assert torch.count_nonzero(S[p]).item() == 1


def test_paper_variant_scale_formula_as_coded(one_unit_net):
    model, kept, pairs = build_multiple_net(one_unit_net)
    t = unit_tensors(prunable_units(model)[0])
    S = merge_delivery(t, kept, threshold=0.1, nm_lambda=0.85, variant="paper")
    var = t.var  # the reference plugs in the running variance as sigma
    for p, (c, r) in pairs.items():
        j = kept.index(c)
        # roles of p and c swapped relative to the exact algebra (docs/method.md §4.1 caveat)
        expected = r * (t.gamma[c] / t.gamma[p]) * (var[p] / var[c])
        assert S[p, j].item() == pytest.approx(expected.item(), rel=1e-12)
        assert torch.count_nonzero(S[p]).item() == 1
    S_exact = merge_delivery(t, kept, threshold=0.1, nm_lambda=0.85, variant="exact")
    assert (S - S_exact).abs().max().item() > 1e-3
    assert torch.equal(S[kept], torch.eye(4, dtype=torch.float64))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bias_term_selects_partner_by_coded_formula(unit_tensors_factory, variant):
    # nm_lambda = 0: the score is the min-max normalised bias mismatch alone
    t = unit_tensors_factory(9, 12, seed=21)
    # kept filters of very different norms: the per-unit-scale division changes the partner
    t.weight[:6] *= torch.tensor([0.2, 0.5, 1.0, 2.0, 5.0, 10.0], dtype=torch.float64)[:, None]
    kept = [0, 1, 2, 3, 4, 5]
    S = merge_delivery(t, kept, threshold=0.0, nm_lambda=0.0, variant=variant)
    gamma, sigma, beta, mu = t.gamma, sigma_of(t, variant), t.beta, t.mean
    W = t.weight
    differs = 0
    for p in (6, 7, 8):
        B, raw = [], []
        for c in kept:
            r = W[p].norm() / W[c].norm()
            if variant == "paper":
                scale = r * (gamma[c] / gamma[p]) * (sigma[p] / sigma[c])
                bias = (gamma[c] / sigma[c]) * (r * (mu[p] - sigma[p] * beta[p] / gamma[p]) - mu[c]) + beta[c]
            else:
                scale = r * (gamma[p] / gamma[c]) * (sigma[c] / sigma[p])
                bias = (gamma[p] / sigma[p]) * (r * (mu[c] - sigma[c] * beta[c] / gamma[c]) - mu[p]) + beta[p]
            B.append((bias.abs() / scale).item())
            raw.append(bias.abs().item())
        j = min(range(len(kept)), key=B.__getitem__)
        assert sorted(B)[1] - B[j] > 1e-9  # unique minimum
        assert torch.nonzero(S[p]).flatten().tolist() == [j]
        differs += j != min(range(len(kept)), key=raw.__getitem__)
    assert differs >= 1  # the example tells "mismatch per unit scale" from the raw mismatch


@pytest.mark.parametrize("variant", VARIANTS)
def test_cosine_term_alone_selects_most_similar_filter(unit_tensors_factory, variant):
    t = unit_tensors_factory(8, 16, seed=22)
    kept = [0, 1, 2, 3, 4]
    t.weight[6] = 0.7 * t.weight[2] + 0.05 * t.weight[6]
    S = merge_delivery(t, kept, threshold=0.0, nm_lambda=1.0, variant=variant)
    assert torch.nonzero(S[6]).flatten().tolist() == [2]
    cos = torch.nn.functional.cosine_similarity(t.weight[5][None], t.weight[kept], dim=1)
    assert torch.nonzero(S[5]).flatten().tolist() == [int(cos.argmax())]


@pytest.mark.parametrize("variant", VARIANTS)
def test_threshold_above_one_gives_prune(unit_tensors_factory, variant):
    t = unit_tensors_factory(8, 10, seed=23)
    kept = [0, 2, 4, 6]
    t.weight[1] = 3.0 * t.weight[0]  # cosine exactly 1: still below a threshold of 1.5
    S = merge_delivery(t, kept, threshold=1.5, nm_lambda=0.85, variant=variant)
    assert torch.equal(S, selection_matrix(8, kept))
    assert torch.count_nonzero(merge_delivery(t, kept, threshold=0.1, nm_lambda=0.85, variant=variant)[1]) == 1


def test_threshold_compares_cosine_of_chosen_partner():
    # orthonormal kept filters; pruned filter 3 has cosine 0.6 with kept filter 0
    e = torch.eye(4, dtype=torch.float64)
    W = torch.stack([e[0], e[1], e[2], 0.6 * e[0] + 0.8 * e[3]])
    ones = torch.ones(4, dtype=torch.float64)
    t = UnitTensors(W, ones.clone(), torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                    ones.clone())
    kept = [0, 1, 2]
    merged = merge_delivery(t, kept, threshold=0.55, nm_lambda=1.0)
    assert merged[3].tolist() == pytest.approx([1.0, 0.0, 0.0])  # norm ratio 1, equal BN -> scale 1
    assert torch.equal(merge_delivery(t, kept, threshold=0.65, nm_lambda=1.0), selection_matrix(4, kept))
    assert torch.equal(merge_delivery(t, kept, threshold=0.0, nm_lambda=1.0), merged)


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_candidate_min_max_guard(unit_tensors_factory, variant):
    t = unit_tensors_factory(4, 6, seed=24)
    kept = [2]
    S = merge_delivery(t, kept, threshold=0.0, nm_lambda=0.5, variant=variant)
    assert torch.isfinite(S).all()
    assert S[2, 0].item() == 1.0
    sigma = sigma_of(t, variant)
    for p in (0, 1, 3):
        r = t.weight[p].norm() / t.weight[2].norm()
        if variant == "paper":
            expected = r * (t.gamma[2] / t.gamma[p]) * (sigma[p] / sigma[2])
        else:
            expected = r * (t.gamma[p] / t.gamma[2]) * (sigma[2] / sigma[p])
        assert S[p, 0].item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_equal_bias_mismatch_guard(variant):
    # two identical kept channels: every candidate has the same mismatch (span 0 in the min-max)
    W = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.1]], dtype=torch.float64)
    ones = torch.ones(3, dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    t = UnitTensors(W, ones.clone(), zeros.clone() + 0.1, zeros.clone(), ones.clone())
    S = merge_delivery(t, [0, 1], threshold=0.1, nm_lambda=0.5, variant=variant)
    assert torch.isfinite(S).all()
    assert torch.count_nonzero(S[2]).item() == 1
    assert S[2].sum().item() == pytest.approx((W[2].norm() / W[0].norm()).item(), rel=1e-6)


def test_fc_merge_picks_max_cosine_and_norm_ratio():
    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    kept_rows = Q[:4] * torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)[:, None]
    p1 = 2.5 * kept_rows[1] + 0.01 * Q[6]     # cos ~ 1 with kept row 1
    p2 = -kept_rows[2] + 0.01 * Q[7]          # anti-parallel: best cosine ~ 0 < 0.45
    W = torch.cat([kept_rows, p1[None], p2[None]])  # rows are [w, b] for FC units
    t = UnitTensors(W)
    kept = [0, 1, 2, 3]
    S = merge_delivery(t, kept, threshold=0.45, nm_lambda=0.85)
    assert torch.nonzero(S[4]).flatten().tolist() == [1]
    assert S[4, 1].item() == pytest.approx((p1.norm() / kept_rows[1].norm()).item(), rel=1e-12)
    assert torch.count_nonzero(S[5]).item() == 0
    assert torch.equal(S[kept], torch.eye(4, dtype=torch.float64))


def test_fc_merge_uses_bias_in_rows():
    # LeNet: the criterion and NM see [w, b]; the bias can decide the partner
    model = build_model("lenet300").double()
    unit = prunable_units(model)[1]
    t = unit_tensors(unit)
    assert t.weight.shape == (100, 301) and not t.has_bn
    with torch.no_grad():
        w = unit.layer.weight
        w[99] = w[5]
        unit.layer.bias[99] = 1e6  # dominates [w, b]: cosine with row 5 is now ~0
    t2 = unit_tensors(unit)
    kept = list(range(90))
    S = merge_delivery(t2, kept, threshold=0.0, nm_lambda=0.85)
    cos = torch.nn.functional.cosine_similarity(t2.weight[99][None], t2.weight[kept], dim=1)
    assert torch.nonzero(S[99]).flatten().tolist() == [int(cos.argmax())]
    assert S[99, int(cos.argmax())].item() == pytest.approx(
        (t2.weight[99].norm() / t2.weight[int(cos.argmax())].norm()).item(), rel=1e-12)


def test_default_thresholds_per_architecture():
    _, report = prune_and_restore(build_model("lenet300"), "merge", "l1-norm", 0.5)
    assert report.hparams == {"threshold": 0.45, "nm_lambda": 0.85}
    _, report = prune_and_restore(build_model("resnet56"), "merge", "l2-norm", 0.5)
    assert report.hparams == {"threshold": 0.1, "nm_lambda": 0.85}
    _, report = prune_and_restore(build_model("resnet56"), "merge", "l2-norm", 0.5, threshold=0.3, nm_lambda=0.7)
    assert report.hparams == {"threshold": 0.3, "nm_lambda": 0.7}
