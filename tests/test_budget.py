"""FLOP and parameter budgets: the cost model, the allocation, bad budgets."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from lbyl_pl import prune_and_restore
from lbyl_pl.budget import CostModel, allocate, pruned_count
from lbyl_pl.discovery import discover
from lbyl_pl.prunable import prunable_units
from lbyl_pl.restoration import count_flops, count_params
from pipeline_helpers import randomized
from test_groups import ConcatNet, GroupedNet, ResNetTiny

X = torch.zeros(1, 3, 8, 8)
FAST = {"inputs": 2, "ratios": (0.5,)}


@pytest.mark.parametrize("net", [ResNetTiny, ConcatNet, GroupedNet])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_cost_model_equals_the_counted_pruned_network(net, ratio):
    model = randomized(net())
    items = prunable_units(model, X, "all")
    predicted = CostModel(model, discover(model, X), items).cost({u.name: pruned_count(u, ratio) for u in items})
    restored, report = prune_and_restore(model, "prune", "l1-norm", ratio, units="all", example_inputs=X)
    assert predicted == (count_flops(restored, X), count_params(restored))
    assert predicted == (report.flops_after, report.params_after)


def random_net(widths, residual, seed):
    """Convs of the given widths (each with BN and ReLU), optionally a residual add around the middle ones."""
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [3, *widths]
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(chans, chans[1:]))
            self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in widths)
            self.skip = nn.Conv2d(widths[0], widths[-1], 1, bias=False) if residual else None
            self.skip_bn = nn.BatchNorm2d(widths[-1]) if residual else None
            self.fc = nn.Linear(widths[-1], 4)

        def forward(self, x):
            first = None
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
                x = bn(conv(x))
                if i == len(self.convs) - 1 and self.skip is not None:
                    x = x + self.skip_bn(self.skip(first))
                x = torch.relu(x)
                if i == 0:
                    first = x
            return self.fc(x.mean(dim=(2, 3)))

    return randomized(Net(), seed)


@settings(max_examples=12, deadline=None)
@given(widths=st.lists(st.integers(4, 12), min_size=3, max_size=5), residual=st.booleans(),
       target=st.floats(0.35, 0.95), seed=st.integers(0, 1000))
def test_allocation_meets_the_budget_on_random_networks(widths, residual, target, seed):
    model = random_net(widths, residual, seed)
    inputs = torch.randn(4, 3, 8, 8)
    try:
        restored, report = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=X, flops=target,
                                             refit_inputs=inputs, budget=FAST)
    except ValueError as err:  # tiny networks may not reach the budget: then the error says the smallest reachable
        assert "cannot be met" in str(err) and "smallest reachable" in str(err)
        return
    kept = count_flops(restored, X) / count_flops(model, X)
    assert kept <= target + 1e-9  # met
    assert kept == report.allocation.predicted_flops / report.allocation.flops_before
    assert all(0.0 <= r <= 0.9 + 1e-9 for r in report.allocation.ratios.values())  # the largest cap
    assert report.allocation.label in report.allocation.candidates
    assert report.allocation.heldout_kl == min(report.allocation.candidates.values())
    restored(torch.randn(2, 3, 8, 8))  # runs forward


def test_budget_lands_near_the_target_and_prefers_the_insensitive_unit():
    model = randomized(ResNetTiny(width=16))
    inputs = torch.randn(8, 3, 8, 8)
    restored, report = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=X, flops=0.5,
                                         refit_inputs=inputs, budget={"inputs": 8})
    kept = report.flops_after / report.flops_before
    assert 0.47 <= kept <= 0.5
    assert restored.lbyl_spec["budget"]["flops"] == 0.5 and set(restored.lbyl_spec["budget"]["ratios"]) == \
        set(report.allocation.ratios)
    assert "budget {'flops': 0.5}" in report.format()
    # params= alone, and both together
    _, by_params = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=X, params=0.6,
                                     refit_inputs=inputs, budget=FAST)
    assert by_params.params_after / by_params.params_before <= 0.6
    _, both = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=X, params=0.9, flops=0.6,
                                refit_inputs=inputs, budget=FAST)
    assert both.params_after / both.params_before <= 0.9 and both.flops_after / both.flops_before <= 0.6


def test_allocation_spends_the_budget_where_the_output_changes_least():
    """Two units of equal cost, one read through a weight 100x smaller: the budget prunes that one."""
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.ra, self.rb = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            ya, yb = self.ra(torch.relu(self.a(x))), self.rb(torch.relu(self.b(x)))
            return self.fc(torch.cat([ya, yb], 1).mean(dim=(2, 3)))

    model = TwoBranches().eval()
    with torch.no_grad():
        model.rb.weight.mul_(0.01)
    items = [u for u in prunable_units(model, X, "all") if u.name in ("a", "b")]
    candidates = allocate(model, discover(model, X), items, "l2-norm", torch.randn(8, 3, 8, 8), flops=0.8,
                          options={"ratios": (0.25, 0.5, 0.75)})
    greedy = [c for c in candidates if c.label.startswith("greedy")]
    assert greedy and all(c.ratios["b"] > c.ratios["a"] for c in greedy)
    assert any(c.label.startswith("uniform") and c.ratios["a"] == c.ratios["b"] for c in candidates)


@pytest.mark.parametrize("value", [0, -0.1, 1.5, float("nan"), "half", True])
def test_bad_budgets_name_the_value_and_what_is_allowed(value):
    model = randomized(ResNetTiny())
    with pytest.raises(ValueError, match=r"flops must be the fraction .* in \(0, 1\]; got"):
        prune_and_restore(model, "prune", units="all", example_inputs=X, flops=value)


def test_unreachable_budget_says_the_smallest_reachable():
    model = randomized(ResNetTiny())
    with pytest.raises(ValueError, match=r"flops=0\.01 cannot be met: .*smallest reachable is flops 0\.\d+"):
        prune_and_restore(model, "prune", units="all", example_inputs=X, flops=0.01,
                          refit_inputs=torch.randn(4, 3, 8, 8))


def test_ratio_and_budget_together_and_unknown_options_are_refused():
    model = randomized(ResNetTiny())
    with pytest.raises(ValueError, match="give ratio= or a budget"):
        prune_and_restore(model, "prune", "l2-norm", 0.3, units="all", example_inputs=X, flops=0.5)
    with pytest.raises(ValueError, match=r"unknown budget option\(s\) \['steps'\]"):
        prune_and_restore(model, "prune", units="all", example_inputs=X, flops=0.5, budget={"steps": 3})
    with pytest.raises(ValueError, match="budget= options need flops= or params="):
        prune_and_restore(model, "prune", units="all", example_inputs=X, budget={"step": 0.1})


def test_sensitivity_replaying_the_unchanged_prefix_equals_full_forward_passes(monkeypatch):
    """torchvision's ResNet writes into layer outputs in place (ReLU(inplace=True), ``out += identity``): the replayed
    prefix must still give exactly the full passes' KLs."""
    import torchvision

    import lbyl_pl.budget as budget

    torch.manual_seed(0)
    model = randomized(torchvision.models.resnet18(num_classes=5))
    x = torch.randn(3, 3, 32, 32)
    items = prunable_units(model, x[:1], "all")
    replayed = budget.sensitivity(model, items, x, "l2-norm", (0.25, 0.5))
    monkeypatch.setattr(budget._PrefixCache, "forward", lambda self, m, inputs, changed: budget._forward(m, inputs))
    full = budget.sensitivity(model, items, x, "l2-norm", (0.25, 0.5))
    assert replayed == full and len(full) == 12
    assert all(kl > 0 for curve in full.values() for _, kl in curve)
    assert all("forward" not in vars(m) for m in model.modules())  # every replayed layer got its forward back


def test_with_the_refit_candidates_also_come_from_sensitivities_after_restoration():
    model = randomized(ResNetTiny(width=8))
    inputs = torch.randn(24, 3, 8, 8)
    restored, report = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=X, flops=0.6,
                                         refit=True, refit_inputs=inputs, budget={"inputs": 8, "ratios": (0.5,)})
    allocation = report.allocation
    assert set(allocation.sensitivity_restored) == set(allocation.sensitivity)
    assert any("(restored)" in label for label in allocation.candidates)
    assert allocation.heldout_kl == min(allocation.candidates.values())
    assert report.flops_after / report.flops_before <= 0.6
    _, without = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=X, flops=0.6, refit=True,
                                   refit_inputs=inputs, budget={"inputs": 8, "ratios": (0.5,), "restored": False})
    assert not without.allocation.sensitivity_restored
    assert not any("(restored)" in label for label in without.allocation.candidates)
