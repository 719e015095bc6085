"""Every architecture end to end: prune_and_restore, kept counts, forward shapes, save/load, purity,
determinism, and MobileNet-V2's exact case (the §3 prune invariant per architecture: test_surgery.py)."""
from __future__ import annotations

import pytest
import torch

from lbyl_pl import ARCHITECTURES, build_model, load_restored, load_weights, prune_and_restore, save_restored
from lbyl_pl.prunable import prunable_units
from pipeline_helpers import INPUT_SIZE, make_input, make_model

NUM_CLASSES = {"lenet300": 10, "vgg16_bn": 10, "resnet56": 10, "resnet50": 100, "resnet34": 1000,
               "resnet101": 1000, "mobilenet_v2": 1000}
UNIT_COUNT = {"lenet300": 2, "vgg16_bn": 13, "resnet56": 27, "resnet50": 32, "resnet34": 16,
              "resnet101": 66, "mobilenet_v2": 16}
SMALL = ("lenet300", "vgg16_bn", "resnet56", "mobilenet_v2")
SLOW = {"resnet101"}


def arch_params(archs):
    return [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in archs]


def test_registry_is_complete():
    assert set(ARCHITECTURES) == set(INPUT_SIZE)


def expected_kept(unit, ratio):
    n = unit.n_channels
    return int((1 - ratio) * n) if unit.count_rule == "floor" else int(round((1 - ratio) * n))


def clone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_counts_and_shapes(model, restored, report, ratio):
    units = prunable_units(model)
    spec_units = restored.lbyl_spec["units"]
    assert list(spec_units) == [u.name for u in units]
    assert len(units) == UNIT_COUNT[model.lbyl_arch["name"]]
    for unit, unit_report in zip(units, report.units):
        m = expected_kept(unit, ratio)
        kept = spec_units[unit.name]
        assert len(kept) == m and kept == sorted(set(kept))
        assert (unit_report.channels, unit_report.kept, unit_report.pruned) == (unit.n_channels, m,
                                                                                unit.n_channels - m)
        layer = restored.get_submodule(unit.name)
        assert layer.weight.shape[0] == m
        if unit.bn is not None:
            bn_name = [n for n, mod in model.named_modules() if mod is unit.bn][0]
            bn = restored.get_submodule(bn_name)
            assert bn.running_mean.shape == (m,) and bn.weight.shape == (m,)
        consumer_name = [n for n, mod in model.named_modules() if mod is unit.consumer][0]
        consumer = restored.get_submodule(consumer_name)
        assert consumer.weight.shape[1] == m
        for module in unit.passthrough:
            name = [n for n, mod in model.named_modules() if mod is module][0]
            sliced = restored.get_submodule(name)
            assert (sliced.weight.shape[0] if hasattr(sliced, "weight") else sliced.num_features) == m


@pytest.mark.parametrize("arch", arch_params(ARCHITECTURES))
def test_lbyl_restore_roundtrip(arch, randomize_bn, sd_equal, tmp_path):
    """r = 0.5: counts, forward shape, the input model untouched, save -> load."""
    model = make_model(arch, randomize_bn)
    before = clone_state(model)
    x = make_input(arch)
    restored, report = prune_and_restore(model, "lbyl", "l2-norm", 0.5, lambda1=1e-5, lambda2=1e-2)
    assert sd_equal(model.state_dict(), before)          # the input model is untouched
    check_counts_and_shapes(model, restored, report, 0.5)
    with torch.no_grad():
        out = restored(x)
    assert out.shape == (2, NUM_CLASSES[arch]) and torch.isfinite(out).all()
    assert report.params_after < report.params_before
    assert report.method == "lbyl" and report.hparams["lambda2"] == 1e-2

    path = tmp_path / f"{arch}_restored.pt"
    save_restored(restored, path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["arch"] == {"name": arch, "num_classes": NUM_CLASSES[arch]}
    assert raw["pruning_spec"]["units"] == restored.lbyl_spec["units"]
    loaded = load_restored(path).eval()
    assert sd_equal(loaded.state_dict(), restored.state_dict())
    assert loaded.lbyl_spec == restored.lbyl_spec
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


@pytest.mark.parametrize("arch", arch_params(ARCHITECTURES))
def test_lbyl_ratio_01_deterministic(arch, randomize_bn, sd_equal):
    """r = 0.1: counts and forward shape; restoring twice gives bit-identical weights."""
    model = make_model(arch, randomize_bn, seed=3)
    # l2-GM costs O(n^2 d) per layer (seconds on 512-wide layers): only on the small networks
    criterion = "l2-GM" if arch in ("lenet300", "resnet56", "mobilenet_v2") else "l1-norm"
    restored, report = prune_and_restore(model, "lbyl", criterion, 0.1, lambda1=1e-6, lambda2=4e-3)
    check_counts_and_shapes(model, restored, report, 0.1)
    with torch.no_grad():
        out = restored(make_input(arch))
    assert out.shape == (2, NUM_CLASSES[arch]) and torch.isfinite(out).all()
    again, _ = prune_and_restore(model, "lbyl", criterion, 0.1, lambda1=1e-6, lambda2=4e-3)
    assert sd_equal(again.state_dict(), restored.state_dict())  # deterministic, bit for bit


@pytest.mark.parametrize("method", ["merge", "prune"])
@pytest.mark.parametrize("arch", SMALL)
def test_merge_and_prune_small_archs(arch, method, randomize_bn, sd_equal):
    model = make_model(arch, randomize_bn, seed=4)
    before = clone_state(model)
    restored, report = prune_and_restore(model, method, "l1-norm", 0.5)
    assert sd_equal(model.state_dict(), before)
    check_counts_and_shapes(model, restored, report, 0.5)
    with torch.no_grad():
        out = restored(make_input(arch))
    assert out.shape == (2, NUM_CLASSES[arch]) and torch.isfinite(out).all()
    if method == "prune":
        assert report.coef_abs_max == 0.0


def test_vgg_widths_follow_reference_cfg(randomize_bn):
    model = make_model("vgg16_bn", randomize_bn)
    for ratio, expected in [(0.1, [57, 57, 115, 115, 230, 230, 230, 460, 460, 460, 460, 460, 460]),
                            (0.5, [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256])]:
        restored, _ = prune_and_restore(model, "prune", "l2-norm", ratio)
        convs = [m for m in restored.feature if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == expected
        assert restored.classifier[0].in_features == expected[-1]


def test_resnet50_bottleneck_widths(randomize_bn):
    model = make_model("resnet50", randomize_bn)
    restored, _ = prune_and_restore(model, "prune", "l2-norm", 0.3)
    for stage, planes in zip((restored.layer1, restored.layer2, restored.layer3, restored.layer4),
                             (64, 128, 256, 512)):
        for block in stage:
            width = int(planes * (1 - 0.3))
            assert (block.conv1.out_channels, block.conv2.in_channels, block.conv2.out_channels,
                    block.conv3.in_channels, block.conv3.out_channels) == (width, width, width, width, 4 * planes)


@pytest.mark.parametrize("arch,methods", [("vgg16_bn", ("lbyl",)), ("resnet56", ("lbyl", "merge", "prune"))])
def test_ratio_zero_leaves_network_unchanged(arch, methods, randomize_bn, sd_equal):
    model = make_model(arch, randomize_bn)
    x = make_input(arch)
    for method in methods:
        restored, _ = prune_and_restore(model, method, "l2-norm", 0.0)
        assert sd_equal(restored.state_dict(), model.state_dict())
        with torch.no_grad():
            assert torch.equal(restored(x), model(x))


# ----------------------------------------------------------------------------- MobileNet-V2

def make_mobilenet_duplicate(randomize_bn, c=10, p=50):
    """Pruned expansion channel ``p`` of the first prunable block duplicates kept channel ``c``'s whole
    path: expansion filter row, expansion BN, depthwise kernel and depthwise BN.

    The expansion conv has d = 16 inputs and 95 kept filters (d < m), so a tiny-lambda ridge picks the
    minimum-norm combination rather than ``e_c`` in general. Making ``w_c`` orthogonal to every other
    kept filter (only ``w_c`` uses input channel 0) makes ``e_c`` that solution, with lambda1 = 0.
    """
    model = make_model("mobilenet_v2", randomize_bn, dtype=torch.float64)
    units = prunable_units(model)
    unit = units[0]
    dw, dw_bn = unit.passthrough
    with torch.no_grad():
        W = unit.layer.weight  # (96, 16, 1, 1)
        W[:, 0] = 0.0
        W[c].zero_()
        W[c, 0] = 1.5
        W[p] = W[c]
        for bn in (unit.bn, dw_bn):
            for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                tensor[p] = tensor[c]
        dw.weight[p] = dw.weight[c]
    kept = {u.name: list(range(u.n_channels)) for u in units}
    kept[unit.name] = [i for i in range(unit.n_channels) if i != p]
    return model, kept, unit, c, p


# (method, solver, lambda2, tolerance). With d < m the shared factorisation of G + g^2 M loses about
# eps * cond(G / lambda2) of accuracy, so it runs at a larger lambda2 than the per-filter Cholesky.
EXACT_CASES = [("lbyl", "batched", 1e-10, 1e-9), ("lbyl", "shared", 1e-7, 1e-6), ("merge", None, None, 1e-12)]


@pytest.mark.parametrize("variant", ["paper", "exact"])
@pytest.mark.parametrize("method,solver,lambda2,tol", EXACT_CASES, ids=["lbyl-batched", "lbyl-shared", "merge"])
def test_mobilenet_exact_case(method, solver, lambda2, tol, variant, randomize_bn):
    model, kept, unit, c, p = make_mobilenet_duplicate(randomize_bn)
    x = make_input("mobilenet_v2", torch.float64)
    kwargs = {"lambda1": 0.0, "lambda2": lambda2, "solver": solver} if method == "lbyl" else {}
    restored, report = prune_and_restore(model, method, "l2-norm", 0.1, kept=kept, variant=variant, **kwargs)
    pruned, _ = prune_and_restore(model, "prune", "l2-norm", 0.1, kept=kept)
    assert [u.pruned for u in report.units] == [1] + [0] * 15
    with torch.no_grad():
        # the output of the pruned block (features[2], its projection + BN) and of the whole network
        for depth in (3, None):
            expected = model.features[:depth](x) if depth else model(x)
            got = restored.features[:depth](x) if depth else restored(x)
            scale = expected.abs().max().item()
            assert (got - expected).abs().max().item() < tol * scale
        block_plain = pruned.features[:3](x)
        block_expected = model.features[:3](x)
    assert (block_plain - block_expected).abs().max().item() > 1e-2 * block_expected.abs().max().item()
    # the delivered coefficient is one, on c's column
    consumer = restored.get_submodule(unit.name.replace("conv.0.0", "conv.2"))
    j = kept[unit.name].index(c)
    expected_column = unit.consumer.weight[:, c] + unit.consumer.weight[:, p]
    assert (consumer.weight[:, j] - expected_column).abs().max().item() < tol * expected_column.abs().max().item()


def test_load_weights_rebuilds_pruned_shapes(randomize_bn, sd_equal, tmp_path):
    model = make_model("resnet56", randomize_bn)
    restored, _ = prune_and_restore(model, "merge", "l2-norm", 0.3)
    path = tmp_path / "resnet56_merge.pt"
    save_restored(restored, path, acc=12.5)
    loaded = load_weights(build_model("resnet56"), path).eval()
    assert sd_equal(loaded.state_dict(), restored.state_dict())
    assert loaded.layer1[0].conv1.out_channels == int(16 * 0.7)
    x = make_input("resnet56")
    with torch.no_grad():
        assert torch.equal(loaded(x), restored(x))
    assert torch.load(path, weights_only=True)["acc"] == 12.5


def test_load_weights_strips_lightning_prefix(randomize_bn, sd_equal, tmp_path):
    model = make_model("lenet300", randomize_bn)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_weights(build_model("lenet300"), path)
    assert sd_equal(loaded.state_dict(), model.state_dict())
