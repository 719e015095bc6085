"""Intra-Fusion (``method="fusion"``): what must hold (``docs/intra_fusion.md`` §1.4-§1.6, §4)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lbyl_pl import load_restored, prune_and_restore, save_restored
from lbyl_pl.methods import IntraFusion, get_method
from lbyl_pl.methods.fusion import consumer_columns, folded_producer, transport_map
from lbyl_pl.selection import select_kept
from lbyl_pl.prunable import prunable_units
from lbyl_pl.units import unit_tensors


def _plan(model, kept, variant="paper"):
    unit = prunable_units(model)[0]
    restoration = IntraFusion(variant).restore_unit(unit, unit_tensors(unit), kept)
    return unit, restoration


def _lp_plan(cost: np.ndarray) -> np.ndarray:
    """The exact transport plan by scipy's LP solver (independent of POT): uniform 1/n -> 1/k."""
    from scipy.optimize import linprog

    n, k = cost.shape
    rows = np.kron(np.eye(n), np.ones((1, k)))  # sum_j G_ij = 1/n
    cols = np.kron(np.ones((1, n)), np.eye(k))  # sum_i G_ij = 1/k
    result = linprog(cost.ravel(), A_eq=np.vstack([rows, cols]),
                     b_eq=np.concatenate([np.full(n, 1 / n), np.full(k, 1 / k)]), bounds=(0, None), method="highs")
    assert result.status == 0
    return result.x.reshape(n, k)


def test_plan_shape_sums_and_kept_neurons_map_to_themselves(one_unit_net):
    model = one_unit_net(n=12)
    kept = [0, 2, 3, 7, 9, 11]
    unit, restoration = _plan(model, kept)
    S = restoration.delivery
    T = S.T
    n, k = 12, len(kept)
    assert T.shape == (k, n)
    assert torch.allclose(T.sum(dim=0), torch.ones(n, dtype=torch.float64), atol=1e-12)  # columns sum to 1
    assert torch.allclose(T.sum(dim=1), torch.full((k,), n / k, dtype=torch.float64), atol=1e-9)  # rows n/k
    assert torch.equal(S[kept], torch.eye(k, dtype=torch.float64))  # a kept neuron keeps its whole mass
    assert (S >= 0).all()


def test_plan_equals_an_independent_lp_solution(one_unit_net):
    model = one_unit_net(n=10, c_out=7)
    kept = [1, 4, 5, 8]
    unit, restoration = _plan(model, kept, variant="exact")
    weight, _ = folded_producer(unit, "exact")
    f = torch.cat([weight, *consumer_columns(unit)], dim=1)
    f = f / torch.linalg.vector_norm(f, dim=1, keepdim=True)
    cost = torch.cdist(f, f[kept], p=1).numpy()
    G = _lp_plan(cost)
    expected = torch.from_numpy(G.T / G.T.sum(axis=0, keepdims=True))
    assert torch.allclose(restoration.delivery.T, expected, atol=1e-7)


def test_fused_producer_and_consumer_follow_the_plan(one_unit_net):
    model = one_unit_net(n=8)
    kept = [0, 3, 4, 6]
    unit, restoration = _plan(model, kept, variant="exact")
    T = restoration.delivery.T
    weight, bias = folded_producer(unit, "exact")
    assert torch.allclose(restoration.producer.weight.reshape(4, -1), T @ weight, atol=1e-12)  # a sum
    # the fused bias lives in the identity BN: mean = -b', gamma 1, beta 0, var = 1 - eps (exact)
    bn = restoration.producer.bn
    assert torch.allclose(bn["running_mean"], -(T @ bias), atol=1e-12)
    assert torch.equal(bn["weight"], torch.ones(4, dtype=torch.float64))
    assert torch.equal(bn["bias"], torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(bn["running_var"], torch.full((4,), 1 - unit.bn.eps, dtype=torch.float64))
    restored, _ = prune_and_restore(model, "fusion", ratio=0.5, kept={"conv": kept}, variant="exact")
    U = model.consumer.weight.detach()
    assert torch.allclose(restored.consumer.weight, torch.einsum("oi...,ei->oe...", U, T), atol=1e-12)
    assert torch.allclose(restored.conv.weight.reshape(4, -1), T @ weight, atol=1e-12)


@pytest.mark.parametrize("variant,tolerance", [("exact", 1e-10), ("paper", 1e-4)])
def test_ratio_zero_is_the_identity_up_to_the_bn_eps_factor(tiny_net, variant, tolerance):
    model = tiny_net()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    restored, report = prune_and_restore(model, "fusion", "l2-norm", 0.0, variant=variant)
    assert report.params_after == report.params_before  # nothing removed, no bias added (the BN holds it)
    difference = (restored(x) - model(x)).abs().max().item()
    assert difference < tolerance
    if variant == "paper":
        # the reference folds without eps and leaves a BN that divides by sqrt(1 + eps): not exact
        assert difference > 1e-10


def _duplicate_net(one_unit_net):
    """Channels 2 and 3 duplicate kept channels 0 and 1: same filter, same BN, same consumer column."""
    model = one_unit_net(n=4, act=torch.nn.Identity())
    with torch.no_grad():
        for pruned, kept in ((2, 0), (3, 1)):
            model.conv.weight[pruned] = model.conv.weight[kept]
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(model.bn, name)[pruned] = getattr(model.bn, name)[kept]
            model.consumer.weight[:, pruned] = model.consumer.weight[:, kept]
    return model


def test_duplicate_neurons_sum_doubles_the_pair_and_mean_is_exact(one_unit_net):
    model = _duplicate_net(one_unit_net)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    bias = model.consumer.bias.detach()[None, :, None, None]
    original = model(x) - bias
    kept = {"conv": [0, 1]}
    summed, _ = prune_and_restore(model, "fusion", ratio=0.5, kept=kept, variant="exact")
    averaged, _ = prune_and_restore(model, "fusion", ratio=0.5, kept=kept, variant="exact", producer="mean")
    # reference semantics: the fused producer is the sum (2x the channel) and so is the consumer (2x):
    # the pair's contribution is twice the original
    assert torch.allclose(summed(x) - bias, 2 * original, atol=1e-9)
    # the mean-producer ablation is exact for duplicates
    assert torch.allclose(averaged(x) - bias, original, atol=1e-9)


def test_fc_units_without_bn_fuse_weights_and_biases():
    from lbyl_pl import build_model

    torch.manual_seed(0)
    lenet = build_model("lenet300").double().eval()
    restored, report = prune_and_restore(lenet, "fusion", "l2-norm", 0.5)
    unit = prunable_units(lenet)[0]
    T = None
    kept = restored.lbyl_spec["units"][unit.name]
    tensors = unit_tensors(unit)
    S = IntraFusion().restore_unit(unit, tensors, kept).delivery
    T = S.T
    assert torch.allclose(restored.get_submodule(unit.name).weight, T @ unit.layer.weight.detach(), atol=1e-12)
    assert torch.allclose(restored.get_submodule(unit.name).bias, T @ unit.layer.bias.detach(), atol=1e-12)
    assert report.params_after < report.params_before


def test_fusion_through_discovery_saves_and_reloads(tmp_path, tiny_net):
    model = tiny_net(dtype=torch.float32)
    x = torch.randn(2, 3, 8, 8)
    restored, report = prune_and_restore(model, "fusion", "l2-norm", 0.5)
    assert restored.conv1.out_channels == 4 and restored.bn1.num_features == 4
    assert restored.conv2.in_channels == 4
    assert report.hparams == {"producer": "sum", "cost_p": 1.0, "max_iter": 100_000}
    path = tmp_path / "fused.pth"
    save_restored(restored, path)
    reloaded = load_restored(path, model=copy.deepcopy(model))
    assert torch.equal(reloaded(x), restored(x))


def test_intra_fusion_importance_is_the_mean_member_l1(one_unit_net):
    model = one_unit_net(n=8)
    unit = prunable_units(model)[0]
    weight = model.conv.weight.detach().double().reshape(8, -1)
    bn = model.bn
    folded = weight * (bn.weight / bn.running_var.sqrt()).detach().double()[:, None]  # no eps, as coded
    column = model.consumer.weight.detach().double().abs().sum(dim=(0, 2, 3))
    importance = (folded.abs().sum(dim=1) + column) / 2
    kept = select_kept(unit_tensors(unit).weight, "IF-l1", 5, unit)
    assert kept == sorted(torch.argsort(importance, descending=True)[:5].tolist())
    restored, _ = prune_and_restore(model, "fusion", "IF-l1", 0.5)
    assert restored.lbyl_spec["units"]["conv"] == sorted(torch.argsort(importance, descending=True)[:4].tolist())
    with pytest.raises(ValueError, match="IF-l1.*PrunableUnit"):
        select_kept(weight, "IF-l1", 4)


def test_transport_map_needs_no_lambda_and_is_deterministic(one_unit_net):
    model = one_unit_net(n=9)
    unit = prunable_units(model)[0]
    f = torch.cat([folded_producer(unit, "paper")[0], *consumer_columns(unit)], dim=1)
    assert torch.equal(transport_map(f, [0, 4, 8]), transport_map(f.clone(), [0, 4, 8]))
    assert get_method("fusion").table_hparams == ()


@pytest.mark.parametrize("kwargs,message", [
    ({"producer": "median"}, "unknown producer 'median'; allowed: sum, mean"),
    ({"cost_p": 0.5}, "cost_p must be >= 1"),
    ({"max_iter": 0}, "max_iter must be a positive integer, got 0"),
    ({"lambda1": 1e-6}, "takes no hyperparameter 'lambda1'.*lambda1 belongs to lbyl"),
])
def test_bad_hyperparameters(tiny_net, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_and_restore(tiny_net(), "fusion", "l2-norm", 0.5, **kwargs)
