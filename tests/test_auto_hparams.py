"""Data-free hyperparameter choice (lbyl_pl.data_free) on tiny networks: distillation, cache, scoring,
selection, errors, BN-free behaviour, and that no dataset is ever read."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lbyl_pl.data_free as ah
import lbyl_pl.distill as distillation
from lbyl_pl import prune_and_restore
from lbyl_pl.data_free import (auto_hparams, auto_hparams_search, bn_statistics_loss, distill_inputs,
                                  rank_correlation, score)

X8 = torch.zeros(1, 3, 8, 8, dtype=torch.float64)  # TinyConvNet's input shape (it declares none)
FAST = dict(n=16, iterations=30, progress=False)  # small distillation for the selection tests


@pytest.fixture(autouse=True)
def _empty_cache():
    ah.clear_cache()
    yield
    ah.clear_cache()


@pytest.fixture
def calibrated_net(tiny_net):
    """A TinyConvNet whose BN running statistics are those of a fixed, non-Gaussian input distribution
    (as after training), so that inputs matching them exist; gamma/beta come from ``randomize_bn``."""

    def make(seed: int = 0) -> nn.Module:
        net = tiny_net(dtype=torch.float64, seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        data = F.interpolate(torch.randn(256, 3, 4, 4, generator=g, dtype=torch.float64), size=8,
                             mode="bilinear")
        data = data * torch.tensor([0.8, 1.2, 1.0], dtype=torch.float64)[:, None, None] \
            + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)[:, None, None]
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: the exact statistics of ``data``
        net.train()
        with torch.no_grad():
            net(data)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        return net.eval()

    return make


class MLP(nn.Module):
    """BN-free ``784 -> 32 -> 16 -> 4`` network (a small LeNet-300-100)."""

    example_input_size = (1, 1, 28, 28)

    def __init__(self):
        super().__init__()
        self.ip1, self.ip2, self.ip3 = nn.Linear(784, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.ip3(F.relu(self.ip2(F.relu(self.ip1(x.flatten(1))))))


# ------------------------------------------------------------------------------------------------------
# distillation
# ------------------------------------------------------------------------------------------------------

def test_distill_shape_dtype_and_determinism(calibrated_net):
    net = calibrated_net()
    a = distill_inputs(net, n=8, seed=3, example_inputs=X8, iterations=20, progress=False, cache=False)
    b = distill_inputs(net, n=8, seed=3, example_inputs=X8, iterations=20, progress=False, cache=False)
    c = distill_inputs(net, n=8, seed=4, example_inputs=X8, iterations=20, progress=False, cache=False)
    assert a.shape == (8, 3, 8, 8) and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("stats", ["batch", "image"])
def test_distillation_matches_bn_statistics(calibrated_net, stats):
    net = calibrated_net()
    noise = distill_inputs(net, n=16, example_inputs=X8, iterations=0, progress=False, stats=stats)
    x = distill_inputs(net, n=16, example_inputs=X8, iterations=60, progress=False, stats=stats)
    before = bn_statistics_loss(net, noise, stats, input_prior=False)
    after = bn_statistics_loss(net, x, stats, input_prior=False)
    assert after < 0.2 * before, (before, after)
    assert bn_statistics_loss(net, x, stats) < 0.2 * bn_statistics_loss(net, noise, stats)


def test_distill_leaves_the_model_alone(calibrated_net, sd_equal):
    net = calibrated_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    distill_inputs(net, n=4, example_inputs=X8, iterations=5, progress=False)
    assert net.training  # mode restored
    assert sd_equal(before, net.state_dict())  # running stats untouched (eval mode while distilling)
    assert flags == [p.requires_grad for p in net.parameters()]
    assert all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks for m in net.modules())


def test_distill_takes_the_shape_from_example_input_size(calibrated_net):
    net = calibrated_net()
    net.example_input_size = (1, 3, 6, 6)
    assert distill_inputs(net, n=2, iterations=1, progress=False).shape == (2, 3, 6, 6)
    assert distill_inputs(net, n=2, iterations=1, progress=False, example_inputs=X8).shape == (2, 3, 8, 8)


def test_distill_chunks_are_independent_and_deterministic(calibrated_net):
    net = calibrated_net()
    a = distill_inputs(net, n=10, example_inputs=X8, iterations=10, progress=False, batch_size=4)
    b = distill_inputs(net, n=10, example_inputs=X8, iterations=10, progress=False, batch_size=4, cache=False)
    assert a.shape[0] == 10 and torch.equal(a, b)


def test_cache_hit_is_not_recomputed(calibrated_net, monkeypatch):
    calls = []
    real = distillation._synthesize

    def counting(*args, **kwargs):
        calls.append(args[1:4])
        return real(*args, **kwargs)

    monkeypatch.setattr(distillation, "_synthesize", counting)
    net = calibrated_net()
    a = distill_inputs(net, n=8, example_inputs=X8, iterations=10, progress=False)
    b = distill_inputs(net, n=8, example_inputs=X8, iterations=10, progress=False)
    assert len(calls) == 1 and torch.equal(a, b)
    b.add_(1.0)  # a copy is returned: the cached tensor is safe from the caller
    assert torch.equal(distill_inputs(net, n=8, example_inputs=X8, iterations=10, progress=False), a)
    assert len(calls) == 1
    # a content-equal copy of the network hits the cache too (the key is the weights, not the object)
    twin = calibrated_net()
    distill_inputs(twin, n=8, example_inputs=X8, iterations=10, progress=False)
    assert len(calls) == 1
    # other options or other weights: recomputed
    distill_inputs(net, n=8, example_inputs=X8, iterations=11, progress=False)
    distill_inputs(net, n=8, seed=1, example_inputs=X8, iterations=10, progress=False)
    with torch.no_grad():
        twin.conv1.weight[0, 0, 0, 0] += 1e-3
    distill_inputs(twin, n=8, example_inputs=X8, iterations=10, progress=False)
    assert len(calls) == 4
    # a sweep over ratios and criteria distils once per network
    for criterion in ("l2-norm", "l1-norm"):
        for ratio in (0.25, 0.5):
            auto_hparams(net, "lbyl", criterion, ratio, example_inputs=X8, grid={"lambda2": [1e-3, 1e-1]},
                         **FAST)
    assert len(calls) == 5


# ------------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------------

def test_score_conventions(calibrated_net):
    net = calibrated_net()
    x = distill_inputs(net, n=16, example_inputs=X8, iterations=0, progress=False)
    for metric in ah.SCORES:
        assert score(net, net, x, metric) == pytest.approx(0.0, abs=1e-12)
    close, _ = prune_and_restore(net, "lbyl", "l2-norm", 0.25, lambda2=1e-2)
    far, _ = prune_and_restore(net, "prune", "l2-norm", 0.75)
    for metric in ("kl", "mse"):
        assert 0 < score(net, close, x, metric) < score(net, far, x, metric)
    assert 0.0 <= score(net, far, x, "agreement") <= 1.0
    with pytest.raises(ValueError, match="'nope'.*kl, agreement, mse"):
        score(net, net, x, "nope")


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))


# ------------------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------------------

def test_returned_keys_per_method(calibrated_net):
    net = calibrated_net()
    hp = auto_hparams(net, "lbyl", "l2-norm", 0.5, example_inputs=X8, **FAST)
    assert set(hp) == {"lambda1", "lambda2"}
    assert hp["lambda1"] in ah.DEFAULT_GRIDS["lbyl"]["lambda1"]
    assert hp["lambda2"] in ah.DEFAULT_GRIDS["lbyl"]["lambda2"]
    hp_nm = auto_hparams(net, "merge", "l2-norm", 0.5, example_inputs=X8, **FAST)
    assert set(hp_nm) == {"threshold", "nm_lambda"}
    assert auto_hparams(net, "prune", "l2-norm", 0.5, example_inputs=X8, **FAST) == {}
    for method, kwargs in (("lbyl", hp), ("merge", hp_nm)):  # usable as they are
        restored, report = prune_and_restore(net, method, "l2-norm", 0.5, **kwargs)
        assert all(report.hparams[k] == v for k, v in kwargs.items())


def test_search_records_every_point_and_picks_the_lowest(calibrated_net):
    net = calibrated_net()
    grid = {"lambda1": [1e-6, 1e-4], "lambda2": [1e-4, 1e-2, 1.0]}
    res = auto_hparams_search(net, "lbyl", "l2-norm", 0.5, example_inputs=X8, grid=grid, **FAST)
    assert [hp for hp, _ in res.results] == [{"lambda1": a, "lambda2": b} for a in grid["lambda1"]
                                             for b in grid["lambda2"]]
    scores = res.scores()
    assert all(s >= 0 for s in scores)
    assert res.best == res.results[int(np.argmin(scores))][0]
    assert res.n_inputs == 16 and res.metric == "kl"
    assert set(res.seconds) == {"distill", "select"}
    assert np.isfinite(res.rank_correlation([-s for s in scores]))
    assert "lambda2" in res.format()
    # each grid point's score is score() of that restoration on the same distilled inputs
    x = distill_inputs(net, example_inputs=X8, **FAST)
    hp, s = res.results[3]
    restored, _ = prune_and_restore(net, "lbyl", "l2-norm", 0.5, **hp)
    assert score(net, restored, x) == pytest.approx(s, rel=1e-9)
    for metric in ("agreement", "mse"):
        other = auto_hparams_search(net, "lbyl", "l2-norm", 0.5, example_inputs=X8, grid=grid, metric=metric,
                                    **FAST)
        assert other.metric == metric and len(other.results) == 6


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_networks_found_by_discovery(name, randomize_bn):
    """A network the package knows nothing about (torchvision's, units found on its traced graph: residual
    groups, depthwise convolutions): the search restores and scores every point on its own distilled
    inputs, and the chosen point restores a smaller network."""
    from lbyl_pl import build_model

    net = build_model(f"torchvision/{name}", num_classes=10, input_size=32)
    randomize_bn(net, 0)
    net.eval()
    grid = {"lambda1": [1e-6, 1e-4], "lambda2": [1e-3, 1e-1]}
    res = auto_hparams_search(net, "lbyl", "l2-norm", 0.3, grid=grid, n=4, iterations=5, progress=False)
    assert len(res.results) == 4 and all(np.isfinite(s) and s >= 0 for s in res.scores())
    assert res.best == res.results[int(np.argmin(res.scores()))][0]
    restored, report = prune_and_restore(net, "lbyl", "l2-norm", 0.3, **res.best)
    assert report.params_after < report.params_before
    assert all(report.hparams[k] == v for k, v in res.best.items())


def test_same_seed_same_choice(calibrated_net):
    net = calibrated_net()
    first = auto_hparams_search(net, "merge", "l1-norm", 0.5, example_inputs=X8, seed=5, **FAST)
    ah.clear_cache()
    second = auto_hparams_search(net, "merge", "l1-norm", 0.5, example_inputs=X8, seed=5, **FAST)
    assert first.best == second.best and first.results == second.results


def test_selection_reads_no_dataset(calibrated_net, monkeypatch):
    import torch.utils.data as tud

    import lbyl_pl.data as data
    import lbyl_pl.datamodules as datamodules

    def forbidden(*args, **kwargs):
        raise AssertionError("auto_hparams read data")

    monkeypatch.setattr(tud.DataLoader, "__init__", forbidden)
    monkeypatch.setattr(tud.Dataset, "__getitem__", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    for module in (data, datamodules):  # every dataset class and every loader/builder of the project
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, tud.Dataset) and obj.__module__ == module.__name__:
                monkeypatch.setattr(obj, "__init__", forbidden)
                monkeypatch.setattr(obj, "__getitem__", forbidden)
            elif inspect.isfunction(obj) and obj.__module__ == module.__name__ and \
                    name.startswith(("load_", "build_", "_imagenet", "_torchvision", "evaluate")):
                monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(datamodules.ImageDataModule, "__init__", forbidden)
    monkeypatch.setattr(datamodules.ImageDataModule, "setup", forbidden)
    with pytest.raises(AssertionError):  # the patches are live
        data.load_cifar10_npz("x")
    net = calibrated_net()
    hp = auto_hparams(net, "lbyl", "l2-norm", 0.5, example_inputs=X8, **FAST)
    assert set(hp) == {"lambda1", "lambda2"}
    assert set(auto_hparams(net, "merge", "l2-norm", 0.5, example_inputs=X8, **FAST)) == {"threshold", "nm_lambda"}


# ------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------

def test_unknown_method_names_the_allowed_ones(calibrated_net):
    with pytest.raises(ValueError, match=r"'nope'.*prune.*merge.*lbyl"):
        auto_hparams(calibrated_net(), "nope", "l2-norm", 0.5, example_inputs=X8, **FAST)


@pytest.mark.parametrize("ratio", [1.0, -0.1, "x", float("nan"), True])
def test_bad_ratio(calibrated_net, ratio):
    with pytest.raises(ValueError, match=r"ratio.*\[0, 1\).*" + repr(ratio).replace("(", r"\(")):
        auto_hparams(calibrated_net(), "lbyl", "l2-norm", ratio, example_inputs=X8, **FAST)


def test_other_bad_inputs(calibrated_net):
    net = calibrated_net()
    with pytest.raises(ValueError, match="'nope'.*l2-norm"):
        auto_hparams(net, "lbyl", "nope", 0.5, example_inputs=X8, **FAST)
    with pytest.raises(ValueError, match="no parameters"):
        auto_hparams(nn.Sequential(nn.ReLU()), "lbyl", "l2-norm", 0.5, example_inputs=X8, **FAST)
    with pytest.raises(ValueError, match="no parameters"):
        distill_inputs(nn.Sequential(nn.ReLU()), example_inputs=X8, progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        auto_hparams("model", "lbyl", "l2-norm", 0.5, **FAST)
    with pytest.raises(ValueError, match="lambda2 is searched by the grid"):
        auto_hparams(net, "lbyl", "l2-norm", 0.5, example_inputs=X8, lambda2=0.1, **FAST)
    with pytest.raises(ValueError, match="'kl2'"):
        auto_hparams(net, "lbyl", "l2-norm", 0.5, example_inputs=X8, metric="kl2", **FAST)
    with pytest.raises(ValueError, match="grid\\['lambda2'\\].*-1"):
        auto_hparams(net, "lbyl", "l2-norm", 0.5, example_inputs=X8, grid={"lambda2": [-1]}, **FAST)
    for kwargs, pattern in (({"n": 0}, "n must be a positive integer, got 0"),
                            ({"iterations": -1}, "iterations .*got -1"),
                            ({"stats": "pixel"}, "'pixel'.*batch, image"),
                            ({"lr": 0}, "lr must be a positive number, got 0"),
                            ({"bn_free": "x"}, "'x'.*gaussian, deepinversion")):
        with pytest.raises(ValueError, match=pattern):
            distill_inputs(net, **{"example_inputs": X8, "progress": False, **kwargs})
    with pytest.raises(ValueError, match="example_inputs"):
        distill_inputs(net, progress=False)  # TinyConvNet declares no input size


# ------------------------------------------------------------------------------------------------------
# networks without BatchNorm
# ------------------------------------------------------------------------------------------------------

def test_bn_free_network_falls_back_to_the_defaults(monkeypatch):
    torch.manual_seed(0)
    net = MLP().eval()
    calls = []
    monkeypatch.setattr(distillation, "_synthesize", lambda *a, **k: calls.append(a))
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert auto_hparams(net, "lbyl", "l2-norm", 0.5, progress=False) == {"lambda1": 1e-6, "lambda2": 1e-2}
    net.default_nm_threshold = 0.45
    with pytest.warns(UserWarning, match="no BatchNorm"):
        res = auto_hparams_search(net, "merge", "l2-norm", 0.5, progress=False)
    assert res.best == {"threshold": 0.45, "nm_lambda": 0.85} and res.results == []
    assert calls == []  # nothing distilled, nothing searched


def test_bn_free_network_inputs():
    torch.manual_seed(0)
    net = MLP().eval()
    gauss = distill_inputs(net, n=8, seed=2, progress=False, bn_free="gaussian", iterations=50)
    assert torch.equal(gauss, torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(2)))
    di = distill_inputs(net, n=8, seed=2, progress=False, bn_free="deepinversion", iterations=50)
    targets = torch.arange(8) % 4
    with torch.no_grad():  # towards confident, class-balanced outputs (the priors keep it moderate here)
        assert F.cross_entropy(net(di), targets) < F.cross_entropy(net(gauss), targets) - 0.2
        assert (net(di).argmax(1) == targets).float().mean() >= 0.5
    # opting in searches the grid on those inputs; lambda1 is unused on FC units, so its ties go to the
    # default 1e-6 whatever the grid order
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = auto_hparams_search(net, "lbyl", "l2-norm", 0.5, bn_free="deepinversion",
                                  grid={"lambda1": [1e-4, 1e-6, 1e-5], "lambda2": [1e-2, 1.0]}, **FAST)
    assert len(res.results) == 6 and res.best["lambda1"] == 1e-6
    by_l2 = {}
    for hp, s in res.results:
        by_l2.setdefault(hp["lambda2"], set()).add(s)
    assert all(len(v) == 1 for v in by_l2.values())  # exact ties across lambda1
