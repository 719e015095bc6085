"""The network-level refit on inputs (``lbyl_pl.refit``, ``prune_and_restore(refit=...)``)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lbyl_pl import load_restored, prune_and_restore, save_restored
from lbyl_pl.discovery import discover
from lbyl_pl.distill import clear_cache
from lbyl_pl.refit import REFIT_DEFAULTS, refit

F64 = torch.float64
# small distillation settings for tiny nets: the defaults are measured on real networks
FAST = {"n": 16, "heldout": 8, "iterations": 5}


class LinearChain(nn.Module):
    """conv1 -> conv2 -> conv3 -> flatten -> fc with no non-linearity: the output of every layer is linear in
    its input, so a pruned channel that is a linear combination of kept ones can be recovered exactly."""

    def __init__(self, conv2=None, conv3=None, size=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = conv2 or nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2)
        self.conv3 = conv3 or nn.Conv2d(5, 4, 1)
        with torch.no_grad():
            out = self.conv3(self.conv2(self.conv1(torch.zeros(1, 3, size, size))))
        self.fc = nn.Linear(out.numel(), 3)
        self.example_input_size = (1, 3, size, size)

    def forward(self, x):
        return self.fc(self.conv3(self.conv2(self.conv1(x))).flatten(1))


def make_dependent(conv: nn.Conv2d, pruned: int, combination: dict[int, float]) -> None:
    """Make output channel ``pruned`` of ``conv`` an exact linear combination of other channels."""
    with torch.no_grad():
        conv.weight[pruned] = sum(c * conv.weight[i] for i, c in combination.items())
        if conv.bias is not None:
            conv.bias[pruned] = sum(c * conv.bias[i] for i, c in combination.items())


@pytest.mark.parametrize("conv2", [
    None,  # stride 2, padding 2, dilation 2
    nn.Conv2d(6, 5, (3, 1), padding="same", padding_mode="reflect"),
    nn.Conv2d(6, 5, 5, stride=1, padding=1, bias=False),
])
@pytest.mark.parametrize("method", ["prune", "lbyl", "merge"])
def test_linear_combination_recovered_exactly(conv2, method):
    """Channels 4 and 5 of conv1 (pruned: they have the smallest norms) are linear combinations of kept ones, and
    conv3's pruned output is a combination too: refitted on any inputs, the pruned network equals the original."""
    net = LinearChain(conv2=copy.deepcopy(conv2)).double().eval()
    with torch.no_grad():
        net.conv1.weight[:4] *= 10.0
        net.conv1.bias[:4] *= 10.0
        net.conv3.weight[:3] *= 10.0
    make_dependent(net.conv1, 4, {0: 0.3, 2: -0.2})
    make_dependent(net.conv1, 5, {1: -0.1, 3: 0.25})
    make_dependent(net.conv3, 3, {0: 0.2, 1: -0.3})
    kept = {"conv1": [0, 1, 2, 3], "conv3": [0, 1, 2]}
    restored, _ = prune_and_restore(net, method, "l2-norm", 0.3, kept=kept, units=["conv1", "conv3"])
    x = torch.randn(320, 3, 8, 8, dtype=F64)  # more rows than fc has unknowns (up to 193)
    out, report = refit(net, restored, x, alphas=[0.0], progress=False)
    y = torch.randn(5, 3, 8, 8, dtype=F64) * 3.0  # inputs the refit never saw
    with torch.no_grad():
        assert (out(y) - net(y)).abs().max() < 1e-6
        assert (restored(y) - net(y)).abs().max() > 1e-3  # the restored network alone does not get there
    assert [f.name for f in report.layers] == ["conv2", "fc"]


def test_refit_of_unpruned_network_is_identity():
    net = LinearChain().double().eval()
    copy_ = copy.deepcopy(net)
    out, report = refit(net, copy_, torch.randn(8, 3, 8, 8, dtype=F64), progress=False)
    assert report.layers == []
    for (k, a), b in zip(net.state_dict().items(), out.state_dict().values()):
        assert torch.equal(a, b), k


def test_refit_keeps_restored_weights_when_nothing_to_gain(tiny_net):
    """A layer whose held-out error the refit would not lower keeps the restored weights (flagged)."""
    net = tiny_net().double().eval()
    restored, _ = prune_and_restore(net, "lbyl", "l2-norm", 0.5)
    x = torch.randn(12, 3, 8, 8, dtype=F64)
    out, report = refit(net, restored, x, heldout=x[:4], progress=False)
    for f in report.layers:
        assert f.error_after <= f.error_before
        if f.kept:
            w = dict(out.named_modules())[f.name].weight
            assert torch.equal(w, dict(restored.named_modules())[f.name].weight)


class CallOrder(nn.Module):
    """Defines ``b`` before ``a`` but calls ``a`` first: execution order differs from module order."""

    def __init__(self):
        super().__init__()
        self.b = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(5)
        self.a = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.a_bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(5, 4)
        self.example_input_size = (1, 3, 8, 8)

    def forward(self, x):
        x = torch.relu(self.a_bn(self.a(x)))
        x = torch.relu(self.b_bn(self.b(x)))
        return self.fc(x.mean((2, 3)))


def test_execution_order_is_used(randomize_bn):
    net = randomize_bn(CallOrder()).eval()
    assert [n for n, _ in net.named_modules()][1:3] == ["b", "b_bn"]
    assert discover(net).execution_order == ["a", "a_bn", "b", "b_bn", "fc"]
    restored, report = prune_and_restore(net, "prune", "l2-norm", 0.5, refit=dict(FAST), seed=0)
    # b reads a's pruned channels and fc reads b's: b is refitted first, then fc on the refitted b
    assert [f.name for f in report.refit.layers] == ["b", "fc"]
    # b is both a consumer (of a) and a pruned producer: its kept outputs were fitted
    assert report.refit.layers[0].outputs == restored.b.out_channels < 5


def test_refit_reads_no_dataset(monkeypatch, tiny_net):
    def refuse(*args, **kwargs):
        raise AssertionError("the refit touched a Dataset or DataLoader")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", refuse)
    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", refuse)
    monkeypatch.setattr(torch.utils.data.Dataset, "__getitem__", refuse)
    monkeypatch.setattr(torch.utils.data.TensorDataset, "__init__", refuse)
    clear_cache()
    net = tiny_net(torch.float32).eval()
    restored, report = prune_and_restore(net, "lbyl", "l2-norm", 0.5, refit=dict(FAST),
                                         example_inputs=torch.zeros(1, 3, 8, 8))
    assert report.refit.inputs == "distilled" and report.refit.layers


def test_same_seed_same_weights(tiny_net):
    net = tiny_net(torch.float32).eval()
    x8 = torch.zeros(1, 3, 8, 8)
    runs = []
    for _ in range(2):
        clear_cache()
        restored, _ = prune_and_restore(net, "lbyl", "l2-norm", 0.5, refit=dict(FAST), example_inputs=x8, seed=3)
        runs.append(restored.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    clear_cache()
    other, _ = prune_and_restore(net, "lbyl", "l2-norm", 0.5, refit=dict(FAST), example_inputs=x8, seed=4)
    assert not torch.equal(other.conv2.weight, runs[0]["conv2.weight"])


def test_refit_lowers_error_and_reloads(tmp_path, randomize_bn):
    """On a BN network with random weights, the refit lowers the held-out output error; saved and reloaded
    onto a fresh unpruned network, the refitted weights (and BN means that absorbed intercepts) come back."""
    from lbyl_pl import build_model
    torch.manual_seed(0)
    net = randomize_bn(build_model("resnet56")).eval()
    restored, report = prune_and_restore(net, "lbyl", "l2-norm", 0.5, refit={**FAST, "n": 24})
    r = report.refit
    assert r.output_kl_after < r.output_kl_before
    assert all(f.intercept == "bn" for f in r.layers)  # conv2 of each block feeds bn2 alone
    assert restored.lbyl_spec["refit"]["inputs"] == "distilled"
    assert "refit on 24 inputs distilled" in report.format()
    path = tmp_path / "refit.pth"
    save_restored(restored, path)
    fresh = build_model("resnet56")
    loaded = load_restored(path, model=fresh).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), restored(x))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_refit_on_discovered_networks(arch, randomize_bn):
    """Networks found by discovery (residual groups, depthwise passthrough: the projection conv is refitted)."""
    import torchvision
    torch.manual_seed(0)
    net = randomize_bn(torchvision.models.get_model(arch, weights=None, num_classes=10)).eval()
    x = torch.zeros(1, 3, 32, 32)
    restored, report = prune_and_restore(net, "prune", "l2-norm", 0.5, example_inputs=x,
                                         refit={**FAST, "n": 8, "heldout": 4, "iterations": 3})
    r = report.refit
    assert r.layers and r.output_kl_after < r.output_kl_before
    if arch == "mobilenet_v2":  # the 1x1 projection behind the depthwise conv
        assert any(f.name.endswith("conv.2") for f in r.layers)


# -- bad input ---------------------------------------------------------------------------------------------

def _pair():
    net = LinearChain().double().eval()
    restored, _ = prune_and_restore(net, "prune", "l2-norm", 0.5, units=["conv1"])
    return net, restored


def test_bad_inputs_named():
    net, restored = _pair()
    before = {k: v.clone() for k, v in restored.state_dict().items()}
    with pytest.raises(ValueError, match=r"inputs have shape \[4, 3, 9, 9\]; the network takes \(N, 3, 8, 8\)"):
        refit(net, restored, torch.zeros(4, 3, 9, 9, dtype=F64), progress=False)
    bad = torch.randn(4, 3, 8, 8, dtype=F64)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        refit(net, restored, bad, progress=False)
    with pytest.raises(ValueError, match="floating-point tensor"):
        refit(net, restored, torch.zeros(4, 3, 8, 8, dtype=torch.long), progress=False)
    other = LinearChain(conv3=nn.Conv2d(5, 4, 3, padding=1)).double()
    with pytest.raises(ValueError, match=r"original does not match restored: conv3.weight is \(4, 5, 1, 1\)"):
        refit(other, restored, torch.zeros(4, 3, 8, 8, dtype=F64), progress=False)
    with pytest.raises(ValueError, match="original does not match restored: module names differ"):
        refit(nn.Sequential(nn.Linear(3, 3)), restored, torch.zeros(4, 3, 8, 8, dtype=F64), progress=False)
    with pytest.raises(ValueError, match=r"singular with alpha=0"):  # all-zero inputs: only the bias is seen
        refit(net, restored, torch.zeros(4, 3, 8, 8, dtype=F64), alphas=[0.0], progress=False)
    with pytest.raises(ValueError, match=r"unknown refit option\(s\) \['lambda'\]; allowed: n, heldout"):
        refit(net, restored, torch.randn(4, 3, 8, 8, dtype=F64), **{"lambda": 1})
    with pytest.raises(ValueError, match="alphas must be a non-empty list of finite numbers >= 0"):
        refit(net, restored, torch.randn(4, 3, 8, 8, dtype=F64), alphas=[-1])
    with pytest.raises(ValueError, match="refit must be True, False or a dict"):
        prune_and_restore(net, "prune", "l2-norm", 0.5, refit="yes")
    with pytest.raises(ValueError, match="refit_inputs needs refit=True"):
        prune_and_restore(net, "prune", "l2-norm", 0.5, refit_inputs=torch.zeros(2, 3, 8, 8))
    # nothing was written half-way
    for k, v in restored.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_defaults_are_checked():
    from lbyl_pl.refit import check_refit_options
    assert check_refit_options({})["alphas"] == tuple(REFIT_DEFAULTS["alphas"])
    with pytest.raises(ValueError, match="stats must be one of batch, image, both"):
        check_refit_options({"stats": "pixel"})


def test_restore_callback_refits(tmp_path, randomize_bn):
    """``RestoreCallback(refit=...)`` on a LightningModule: the network is refitted, the spec records it and a
    checkpoint reloads the refitted weights."""
    import pytorch_lightning as pl

    from lbyl_pl import RestoreCallback, load_restored_checkpoint

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(
                nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                nn.Conv2d(12, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10), nn.ReLU(),
                nn.Flatten(), nn.Linear(10 * 8 * 8, 5))
            self.example_input_array = torch.zeros(1, 3, 8, 8)

        def forward(self, x):
            return self.backbone(x)

    module = Module()
    randomize_bn(module)
    module.eval()
    original = copy.deepcopy(module.backbone)
    callback = RestoreCallback("lbyl", "l2-norm", 0.5, refit=dict(FAST))
    callback.apply(module)
    assert module.backbone.lbyl_spec["refit"]["inputs"] == "distilled"
    assert callback.report.refit.output_kl_after < callback.report.refit.output_kl_before
    plain, _ = prune_and_restore(original, "lbyl", "l2-norm", 0.5, example_inputs=torch.zeros(1, 3, 8, 8))
    assert not torch.equal(plain[3].weight, module.backbone[3].weight)  # the refit changed the consumer
    path = tmp_path / "cb.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    loaded = load_restored_checkpoint(Module(), path)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), module.eval()(x))
    with pytest.raises(ValueError, match="refit must be True, False or a dict"):
        RestoreCallback("lbyl", refit="yes")
    with pytest.raises(ValueError, match="unknown refit option"):
        RestoreCallback("lbyl", refit={"alpha": 1})


def test_output_energy_criterion_reads_activations(tiny_net):
    """A channel with a small filter but a large BN scale carries much of the consumer's input: l2-norm prunes
    it, output-energy (measured on distilled inputs, no data) keeps it."""
    from lbyl_pl.selection import select_kept
    net = tiny_net(torch.float32).eval()
    with torch.no_grad():
        net.conv1.weight[2] *= 0.05
        net.bn1.weight[2] = 50.0
        net.bn1.running_var[2] = 0.05 ** 2 * net.bn1.running_var[2]  # the BN sees the same standardised values
        net.bn1.bias[2] = 3.0
    x8 = torch.zeros(1, 3, 8, 8)
    plain, _ = prune_and_restore(net, "prune", "l2-norm", 0.5, example_inputs=x8)
    assert 2 not in plain.lbyl_spec["units"]["conv1"]
    energy, _ = prune_and_restore(net, "prune", "output-energy", 0.5, example_inputs=x8, refit=dict(FAST))
    assert 2 in energy.lbyl_spec["units"]["conv1"]
    given, _ = prune_and_restore(net, "prune", "output-energy", 0.5, example_inputs=x8,
                                 refit_inputs=torch.randn(8, 3, 8, 8))
    assert 2 in given.lbyl_spec["units"]["conv1"]
    with pytest.raises(ValueError, match="criterion 'output-energy' reads activations on inputs"):
        select_kept(torch.randn(6, 4), "output-energy", 3)


def test_network_without_batchnorm_refuses_distilled_refit():
    """No BN: no statistics to distil from; refused with the reason unless bn_free or own inputs are given."""
    net = LinearChain().eval()
    with pytest.raises(ValueError, match=r"LinearChain has no BatchNorm layer.*bn_free"):
        prune_and_restore(net, "prune", "l2-norm", 0.5, units=["conv1"], refit=dict(FAST))
    _, report = prune_and_restore(net, "prune", "l2-norm", 0.5, units=["conv1"],
                                  refit={**FAST, "bn_free": "gaussian"})
    assert report.refit.layers
    _, report = prune_and_restore(net, "prune", "l2-norm", 0.5, units=["conv1"], refit=True,
                                  refit_inputs=torch.randn(16, 3, 8, 8))
    assert report.refit.inputs == "given"
    with pytest.raises(ValueError, match="bn_free must be None, gaussian or deepinversion"):
        prune_and_restore(net, "prune", "l2-norm", 0.5, refit={"bn_free": "noise"})


@pytest.mark.parametrize("intercept", [False, True])
def test_dual_form_equals_primal(intercept):
    """A layer with fewer rows than unknowns is solved in the dual form: the same ridge solution."""
    from lbyl_pl.layer_fit import _Gram, _Rows
    g = torch.Generator().manual_seed(0)
    d, m, rows = 40, 5, 12
    A, Y = torch.randn(rows, d, generator=g, dtype=F64), torch.randn(rows, m, generator=g, dtype=F64)
    W0 = torch.randn(d + intercept, m, generator=g, dtype=F64)
    gram, direct = _Gram(d, m, intercept, F64), _Rows(d, m, intercept, F64)
    gram.add(A[:7], Y[:7]), gram.add(A[7:], Y[7:])
    direct.add(A[:7], Y[:7]), direct.add(A[7:], Y[7:])
    lam = 0.3 * float(gram.AtA.diagonal().mean())
    assert direct.scale() == pytest.approx(float(gram.AtA.diagonal().mean()), rel=1e-12)
    primal = torch.linalg.solve(gram.AtA + lam * torch.eye(d + intercept, dtype=F64), gram.AtY + lam * W0)
    torch.testing.assert_close(direct.solve(W0, lam), primal, rtol=1e-9, atol=1e-9)
    assert direct.error(primal) == pytest.approx(gram.error(primal), rel=1e-9)


def test_wide_linear_consumer_uses_the_dual_form():
    """A Linear after a flatten with more inputs than fit rows: refitted without forming its unknowns x unknowns
    Gram matrix; with alpha = 0 it interpolates the fit inputs exactly (the solution nearest the restored weights)."""
    net = LinearChain(conv2=nn.Conv2d(6, 5, 3, padding=1), size=12).double().eval()  # fc reads 4 x 12 x 12 = 576
    make_dependent(net.conv3, 3, {0: 0.2, 1: -0.3})
    with torch.no_grad():
        net.conv3.weight[:3] *= 10.0
    restored, _ = prune_and_restore(net, "prune", "l2-norm", 0.3, kept={"conv3": [0, 1, 2]}, units=["conv3"])
    x = torch.randn(40, 3, 12, 12, dtype=F64)
    out, report = refit(net, restored, x, alphas=[0.0], progress=False)
    (fc,) = report.layers
    assert fc.name == "fc" and fc.rows == 30 < fc.inputs == 432
    with torch.no_grad():
        assert (out(x[:30]) - net(x[:30])).abs().max() < 1e-6  # the 30 fit inputs
        assert (restored(x[:30]) - net(x[:30])).abs().max() > 1e-3
