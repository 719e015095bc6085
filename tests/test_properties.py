"""Property-based tests (hypothesis) of the selection and surgery invariants, over arbitrary shapes, ratios,
kept subsets and weights.

- ``kept_count``: the width tables' formula, at least one channel kept or a ValueError, bad ratios refused;
- ``select_kept``: sorted distinct indices, exactly ``n_keep`` of them, the highest scores kept with ties to
  the lower index, norms for l1/l2, the positional random_2/random_3, deterministic;
- ``selection_matrix``: the identity on the kept rows, zero elsewhere;
- surgery: a pruned conv -> bn -> relu -> conv -> bn -> relu -> pool -> linear net has the kept widths and
  computes what the original computes with the pruned channels switched off at their BN (gamma = beta = 0,
  so relu gives 0), and the original is left untouched;
- restoring at ratio 0 changes nothing.

Examples are derandomized (the same ones on every run) and no example database is written.
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from torch import nn

from lbyl_pl import prune_and_restore
from lbyl_pl.selection import CRITERIA, criterion_scores, kept_count, select_kept
from lbyl_pl.surgery import UnitPlan, apply_plans, selection_matrix
from lbyl_pl.prunable import prunable_units
from lbyl_pl.units import unit_tensors

torch.set_num_threads(1)

# Reproducible: the same examples on every run, no example database. The tiny-net fixtures are stateless
# factories, so reusing them across the examples of one test is safe.
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# The hypothesis plugin caches what it reads from the source (``constants/``) while collecting, before any
# fixture runs: keep that out of the working tree (./.hypothesis) unless HYPOTHESIS_STORAGE_DIRECTORY says
# where it goes.
if not os.getenv("HYPOTHESIS_STORAGE_DIRECTORY"):
    _uid = os.getuid() if hasattr(os, "getuid") else 0
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"lbyl-pl-hypothesis-{_uid}")
RATIOS = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)
BUILTIN_CRITERIA = ("l1-norm", "l2-norm", "l2-GM", "random_1", "random_2", "random_3")
# the criteria that rank filters from their weights alone (the others read the unit: BN, consumers)
WEIGHT_CRITERIA = sorted(name for name, score in CRITERIA.items() if not getattr(score, "needs_unit", False))


# -- kept_count --------------------------------------------------------------------------------------

@PROPERTY
@given(n=st.integers(1, 600), ratio=RATIOS, rule=st.sampled_from(["floor", "round"]))
def test_kept_count_formula(n, ratio, rule):
    expected = int((1.0 - ratio) * n) if rule == "floor" else int(round((1.0 - ratio) * n))
    if expected < 1:
        with pytest.raises(ValueError, match="at least one channel must remain"):
            kept_count(n, ratio, rule)
    else:
        m = kept_count(n, ratio, rule)
        assert type(m) is int and m == expected and 1 <= m <= n
    assert kept_count(n, 0.0, rule) == n
    assert kept_count(n, 0, rule) == n


@PROPERTY
@given(n=st.integers(1, 600), rule=st.sampled_from(["floor", "round"]), data=st.data())
def test_kept_count_near_keeping_nothing(n, rule, data):
    # ratios around 1 - 1/n, where the count falls below one channel
    ratio = data.draw(st.floats(min_value=max(0.0, 1.0 - 2.0 / n), max_value=1.0, exclude_max=True))
    m = (1.0 - ratio) * n
    expected = int(m) if rule == "floor" else int(round(m))
    if expected < 1:
        with pytest.raises(ValueError, match="at least one channel must remain"):
            kept_count(n, ratio, rule)
    else:
        assert kept_count(n, ratio, rule) == expected


@PROPERTY
@given(n=st.integers(1, 600), rule=st.sampled_from(["floor", "round"]),
       ratio=st.one_of(st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0),
                       st.sampled_from([float("nan"), float("inf"), -float("inf"), True, 1, "0.5", None])))
def test_kept_count_refuses_ratios_outside_0_1(n, rule, ratio):
    with pytest.raises(ValueError, match="ratio must be a number in"):
        kept_count(n, ratio, rule)


def test_kept_count_unknown_rule():
    with pytest.raises(ValueError, match="unknown count rule"):
        kept_count(10, 0.5, "ceil")


# -- select_kept -------------------------------------------------------------------------------------

# integers give exact norms and many ties; floats the general case
ELEMENTS = st.one_of(st.integers(-3, 3).map(float), st.floats(-10.0, 10.0, allow_nan=False, width=32))


@st.composite
def weights(draw, max_n=12, max_d=6):
    """A ``(n, d)`` float64 or float32 weight and a valid ``n_keep``."""
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    rows = draw(st.lists(st.lists(ELEMENTS, min_size=d, max_size=d), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    return torch.tensor(rows, dtype=dtype), draw(st.integers(1, n))


def test_builtin_criteria_registered():
    assert set(BUILTIN_CRITERIA) <= set(WEIGHT_CRITERIA)


@PROPERTY
@given(case=weights(), criterion=st.sampled_from(WEIGHT_CRITERIA))
def test_select_kept_keeps_the_best_scores(case, criterion):
    weight, n_keep = case
    n = weight.shape[0]
    original = weight.clone()
    kept = select_kept(weight, criterion, n_keep)
    assert isinstance(kept, list) and all(type(i) is int for i in kept)
    assert kept == sorted(set(kept)) and len(kept) == n_keep
    assert all(0 <= i < n for i in kept)
    # the n_keep highest scores, ties broken towards the lower index
    scores = criterion_scores(weight, criterion).tolist()
    assert len(scores) == n
    pruned = sorted(set(range(n)) - set(kept))
    for i in kept:
        for j in pruned:
            assert scores[i] > scores[j] or (scores[i] == scores[j] and i < j), (i, j, scores)
    # deterministic: again, and on a copy
    assert select_kept(weight, criterion, n_keep) == kept
    assert select_kept(weight.clone(), criterion, n_keep) == kept
    assert torch.equal(weight, original)  # the weight is only read


@PROPERTY
@given(case=weights(), criterion=st.sampled_from(["l1-norm", "l2-norm"]), data=st.data())
def test_norm_criteria_keep_the_largest_norms(case, criterion, data):
    weight, n_keep = case
    n = weight.shape[0]
    kept = select_kept(weight, criterion, n_keep)
    w = weight.double()
    norms = (w.abs().sum(dim=1) if criterion == "l1-norm" else w.pow(2).sum(dim=1).sqrt()).tolist()
    # float64 norms here, float32 in the criterion (as the reference): equal up to float32 rounding
    tol = 1e-5 * max(1.0, max(norms))
    scores = criterion_scores(weight, criterion)
    assert scores.dtype == torch.float64 and scores.shape == (n,)
    assert all(abs(s - v) <= tol for s, v in zip(scores.tolist(), norms)), (scores, norms)
    pruned = sorted(set(range(n)) - set(kept))
    if pruned:
        assert min(norms[i] for i in kept) >= max(norms[j] for j in pruned) - tol
    # the kept norms do not depend on the order of the filters (ties may pick other filters)
    perm = data.draw(st.permutations(range(n)))
    kept_permuted = select_kept(weight[perm], criterion, n_keep)
    assert sorted(scores[kept].tolist()) == sorted(scores[perm][kept_permuted].tolist())


@PROPERTY
@given(case=weights())
def test_random_2_and_3_are_positional(case):
    weight, n_keep = case
    n = weight.shape[0]
    assert select_kept(weight, "random_2", n_keep) == list(range(n - n_keep, n))  # the last n_keep
    assert select_kept(weight, "random_3", n_keep) == list(range(n_keep))  # the first n_keep


@PROPERTY
@given(case=weights(max_n=6), criterion=st.sampled_from(WEIGHT_CRITERIA),
       bad=st.one_of(st.integers(-3, 0), st.integers(7, 10)), nan_at=st.integers(0, 35))
def test_select_kept_refuses_bad_counts_and_weights(case, criterion, bad, nan_at):
    weight, n_keep = case
    with pytest.raises(ValueError, match="n_keep must be in"):
        select_kept(weight, criterion, bad)
    broken = weight.clone()
    broken.view(-1)[nan_at % broken.numel()] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        select_kept(broken, criterion, n_keep)


# -- selection_matrix --------------------------------------------------------------------------------

@st.composite
def kept_subsets(draw, n):
    return sorted(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)))


@PROPERTY
@given(data=st.data(), n=st.integers(1, 40))
def test_selection_matrix(data, n):
    kept = data.draw(kept_subsets(n))
    m = len(kept)
    S = selection_matrix(n, kept)
    assert S.shape == (n, m) and S.dtype == torch.float64
    assert torch.equal(S[kept], torch.eye(m, dtype=torch.float64))
    pruned = sorted(set(range(n)) - set(kept))
    assert torch.equal(S[pruned], torch.zeros(len(pruned), m, dtype=torch.float64))
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    assert torch.equal(x @ S, x[:, kept])  # right-multiplying selects the kept channels, in order


# -- surgery -----------------------------------------------------------------------------------------

def sequential_net(c_in, c1, c2, num_classes, pool):
    """The same layers as TinyConvNet as a plain Sequential (units discovered on the traced graph); a
    pool to ``pool x pool`` makes the Linear read each channel through ``pool**2`` features."""
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(c2 * pool * pool, num_classes))


def layers(model):
    """``[(unit name, conv, bn), (unit name, conv, bn)], linear`` of either network."""
    if isinstance(model, nn.Sequential):
        return [("0", model[0], model[1]), ("3", model[3], model[4])], model[8]
    return [("conv1", model.conv1, model.bn1), ("conv2", model.conv2, model.bn2)], model.fc


@st.composite
def nets(draw):
    """Random widths (2..12), either architecture, a seed for the weights and BN statistics."""
    kind = draw(st.sampled_from(["declared", "traced_pool1", "traced_pool2"]))
    # discovery does not take a 2-channel unit read through a flatten (test_discovery_two_channels_flatten)
    c2 = draw(st.integers(3 if kind == "traced_pool2" else 2, 12))
    return {"c_in": draw(st.integers(1, 3)), "c1": draw(st.integers(2, 12)), "c2": c2,
            "num_classes": draw(st.integers(1, 4)), "seed": draw(st.integers(0, 2**16)), "kind": kind}


def build(spec, tiny_net, randomize_bn):
    """The network ``spec`` describes (float64, eval mode, random BN statistics) and an input batch."""
    if spec["kind"] == "declared":
        model = tiny_net(torch.float64, spec["seed"], c_in=spec["c_in"], c1=spec["c1"], c2=spec["c2"],
                         num_classes=spec["num_classes"])
    else:
        torch.manual_seed(spec["seed"])
        model = sequential_net(spec["c_in"], spec["c1"], spec["c2"], spec["num_classes"],
                               1 if spec["kind"] == "traced_pool1" else 2)
        model = randomize_bn(model, spec["seed"]).double().eval()
    x = torch.randn(2, spec["c_in"], 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(spec["seed"]))
    return model, x


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def switched_off(model, kept: dict) -> nn.Module:
    """A copy of ``model`` whose pruned channels output 0 after their BN (and so after the ReLU)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, _, bn in layers(ref)[0]:
            pruned = sorted(set(range(bn.num_features)) - set(kept[name]))
            bn.weight[pruned] = 0.0
            bn.bias[pruned] = 0.0
    return ref


@PROPERTY
@given(spec=nets(), data=st.data())
def test_pruning_equals_switching_channels_off(spec, data, tiny_net, randomize_bn, sd_equal):
    model, x = build(spec, tiny_net, randomize_bn)
    units, linear = layers(model)
    kept = {name: data.draw(kept_subsets(conv.out_channels), label=name) for name, conv, _ in units}
    before = snapshot(model)
    with torch.no_grad():
        expected = switched_off(model, kept)(x)
        pruned, report = prune_and_restore(model, "prune", "l2-norm", 0.5, kept=kept, example_inputs=x)
        assert sd_equal(model.state_dict(), before)  # the original is not modified

        # shapes: every pruned layer, its BN and its consumer have the kept widths; weights are slices
        (n1, conv1, bn1), (n2, conv2, bn2) = units
        (_, new1, newbn1), (_, new2, newbn2), newlin = *layers(pruned)[0], layers(pruned)[1]
        k1, k2 = kept[n1], kept[n2]
        assert new1.weight.shape == (len(k1), spec["c_in"], 3, 3) and new1.out_channels == len(k1)
        assert new2.weight.shape == (len(k2), len(k1), 3, 3)
        assert (new2.in_channels, new2.out_channels) == (len(k1), len(k2))
        for bn, old, k in ((newbn1, bn1, k1), (newbn2, bn2, k2)):
            assert bn.num_features == len(k)
            for t in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(getattr(bn, t), getattr(old, t)[k])
        features = linear.in_features // spec["c2"]
        assert newlin.weight.shape == (spec["num_classes"], len(k2) * features)
        assert newlin.in_features == len(k2) * features
        assert torch.equal(new1.weight, conv1.weight[k1])
        assert torch.equal(new2.weight, conv2.weight[k2][:, k1])
        old_lin = linear.weight.reshape(spec["num_classes"], spec["c2"], features)
        assert torch.equal(newlin.weight, old_lin[:, k2].reshape(spec["num_classes"], -1))
        assert torch.equal(newlin.bias, linear.bias)
        assert pruned.lbyl_spec["units"] == kept
        assert [(u.name, u.kept, u.pruned) for u in report.units] == \
            [(n, len(kept[n]), c.out_channels - len(kept[n])) for n, c, _ in units]

        # function: the original with the pruned channels switched off
        torch.testing.assert_close(pruned(x), expected, rtol=1e-9, atol=1e-10)

        # surgery alone with selection matrices builds the same network
        plans = [UnitPlan(u, kept[u.name], selection_matrix(u.n_channels, kept[u.name]))
                 for u in prunable_units(model, x)]
        assert sorted(p.unit.name for p in plans) == sorted(kept)
        direct = apply_plans(model, plans)
        assert sd_equal(direct.state_dict(), pruned.state_dict())
        assert sd_equal(model.state_dict(), before)

        # the pruned copies share no tensor with the original: writing into them leaves it as it was
        for t in (*pruned.parameters(), *pruned.buffers(), *direct.parameters(), *direct.buffers()):
            if t.is_floating_point():
                t.add_(1.0)
        assert sd_equal(model.state_dict(), before)


# criteria that read activations on inputs (output-energy) distil inputs first: tested in tests/test_refit.py
STATIC_CRITERIA = sorted(name for name, score in CRITERIA.items() if not getattr(score, "needs_inputs", False))


@PROPERTY
@given(spec=nets(), ratio=RATIOS, criterion=st.sampled_from(STATIC_CRITERIA))
def test_pruning_at_a_ratio_keeps_the_criterion_choice(spec, ratio, criterion, tiny_net, randomize_bn):
    model, x = build(spec, tiny_net, randomize_bn)
    units = {u.name: u for u in prunable_units(model, x)}
    expected = {}
    for name, conv, _ in layers(model)[0]:
        try:
            n_keep = kept_count(conv.out_channels, ratio)
        except ValueError:
            with pytest.raises(ValueError, match="at least one channel"):
                prune_and_restore(model, "prune", criterion, ratio, example_inputs=x)
            return
        expected[name] = select_kept(unit_tensors(units[name]).weight, criterion, n_keep, units[name])
    with torch.no_grad():
        pruned, _ = prune_and_restore(model, "prune", criterion, ratio, example_inputs=x)
        assert pruned.lbyl_spec["units"] == expected
        for (name, conv, bn), (_, new, newbn) in zip(layers(model)[0], layers(pruned)[0]):
            assert new.out_channels == newbn.num_features == len(expected[name])
        torch.testing.assert_close(pruned(x), switched_off(model, expected)(x), rtol=1e-9, atol=1e-10)


@PROPERTY
@given(spec=nets(), method=st.sampled_from(["lbyl", "merge", "prune"]),
       criterion=st.sampled_from(STATIC_CRITERIA))
def test_ratio_zero_changes_nothing(spec, method, criterion, tiny_net, randomize_bn, sd_equal):
    model, x = build(spec, tiny_net, randomize_bn)
    before = snapshot(model)
    with torch.no_grad():
        expected = model(x)
        restored, report = prune_and_restore(model, method, criterion, 0.0, example_inputs=x)
        assert sd_equal(model.state_dict(), before)
        assert {k: v.shape for k, v in restored.state_dict().items()} == {k: v.shape for k, v in before.items()}
        assert all(u.pruned == 0 for u in report.units) and len(report.units) == 2
        torch.testing.assert_close(restored(x), expected, rtol=1e-7, atol=1e-9)


def test_discovery_two_channels_flatten():
    model = sequential_net(1, 3, 2, 2, 2).double().eval()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    assert [u.name for u in prunable_units(model, x)] == ["0", "3"]
