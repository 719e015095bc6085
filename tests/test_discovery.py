"""Unit discovery on the traced graph: built-ins, torchvision models, user networks, skipped groups."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import Bottleneck

from lbyl_pl import build_model, check_units, discover, discover_units, load_restored, prune_and_restore, \
    save_restored
from lbyl_pl.restoration import count_flops
from lbyl_pl.prunable import prunable_units
from pipeline_helpers import FlattenNet, randomized


# -- the hand-written declarations the built-ins used before discovery (the reference) ----------------
def declared_units(model):
    """(producer, bn, consumers, passthrough) per unit, as each architecture declared them by hand."""
    arch = model.lbyl_arch["name"]
    if arch == "lenet300":
        return [(model.ip1, None, (model.ip2,), ()), (model.ip2, None, (model.ip3,), ())]
    if arch == "vgg16_bn":
        convs = [m for m in model.feature if isinstance(m, nn.Conv2d)]
        bns = [m for m in model.feature if isinstance(m, nn.BatchNorm2d)]
        consumers = convs[1:] + [model.classifier[0]]
        return [(c, b, (n,), ()) for c, b, n in zip(convs, bns, consumers)]
    if arch == "resnet56":
        blocks = [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]
        return [(b.conv1, b.bn1, (b.conv2,), ()) for b in blocks]
    if arch in ("resnet50", "resnet34", "resnet101"):
        units = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in layer:
                units.append((block.conv1, block.bn1, (block.conv2,), ()))
                if isinstance(block, Bottleneck):
                    units.append((block.conv2, block.bn2, (block.conv3,), ()))
        return units
    if arch == "mobilenet_v2":
        units = []
        for block in model.features:
            if isinstance(block, InvertedResidual) and len(block.conv) == 4:
                expand, depthwise, project = block.conv[0], block.conv[1], block.conv[2]
                units.append((expand[0], expand[1], (project,), (depthwise[0], depthwise[1])))
        return units
    raise AssertionError(arch)


BUILTINS = ["lenet300", "vgg16_bn", "resnet56", "resnet50", "resnet34", "mobilenet_v2",
            pytest.param("resnet101", marks=pytest.mark.slow)]


@pytest.mark.parametrize("arch", BUILTINS)
def test_discovery_on_builtins_gives_the_declared_units(arch):
    model = build_model(arch)
    units = prunable_units(model)
    expected = declared_units(model)
    assert len(units) == len(expected)
    for unit, (layer, bn, consumers, passthrough) in zip(units, expected):
        assert unit.layer is layer and unit.bn is bn
        assert unit.consumers == consumers and unit.features_per_channel == (1,)
        assert unit.passthrough == passthrough
        assert unit.count_rule == ("round" if arch == "lenet300" else "floor")


def test_builtin_extras_are_units_the_paper_does_not_prune():
    """VGG's classifier.0 and the Bottleneck stem (two consumers) are units; the paper skips them."""
    vgg = build_model("vgg16_bn")
    names = [u.name for u in discover_units(vgg)]
    assert "classifier.0" in names and "classifier.0" not in [u.name for u in prunable_units(vgg)]
    resnet = build_model("resnet50")
    stem = {u.name: u for u in discover_units(resnet)}["conv1"]
    assert stem.consumers == (resnet.layer1[0].conv1, resnet.layer1[0].downsample[0])


def test_discovery_classifies_every_kind_of_group():
    model = randomized(FlattenNet())
    found = discover(model, torch.zeros(1, 3, 8, 8))
    units = {u.name: u for u in found.units}
    assert set(units) == {"stem", "head_conv", "fc"}
    stem = units["stem"]
    assert stem.bn is model.stem_bn and stem.passthrough == (model.dw, model.dw_bn)
    assert stem.consumers == (model.left, model.right) and stem.activations == ("ReLU", "ReLU6/Hardtanh")
    head = units["head_conv"]
    assert head.bn is None and head.consumers == (model.fc,) and head.features_per_channel == (16,)
    groups = {g.name: g for g in found.groups}
    assert set(groups) == {"left", "late"}
    left = groups["left"]  # the residual add couples left and right: one group, both producers with their BNs
    assert left.kind == "residual stream" and left.member_names("out") == ["left", "right"]
    assert left.member_names("bn") == ["left_bn", "right_bn"] and left.member_names("in") == ["late", "head_conv"]
    assert groups["late"].kind == "single producer"  # a BN that does not read the conv directly: not a unit
    reasons = {g.name: g.reason for g in found.skipped}
    # cat_a, cat_b and out are one group whose channels reach the network's output
    assert reasons == {"cat_a": "reaches the output", "cat_b": "coupled", "out": "coupled"}
    assert "dw" not in reasons  # carried by the stem unit
    text = found.format()
    assert "group left (6 ch, residual stream): left, right -> late, head_conv" in text
    assert "skip cat_b: coupled" in text and "unit head_conv (4 ch) -> fc" in text


def test_check_units_passes_on_discovered_units_and_names_a_wrong_one():
    model = randomized(FlattenNet())
    x = torch.randn(2, 3, 8, 8)
    checks = check_units(model, x)
    assert [c.name for c in checks] == ["stem", "head_conv", "fc"] and all(c.ok for c in checks)
    # A hand-declared unit that ignores the residual add's second reader cannot be cut out.
    from lbyl_pl.units import PrunableUnit
    wrong = randomized(FlattenNet())
    wrong.prunable_units = lambda: [PrunableUnit(wrong.left, wrong.left_bn, wrong.late)]
    results = check_units(wrong, x)
    assert not results[0].ok and results[0].name == "left"
    with pytest.raises(ValueError, match=r"1 unit\(s\) of FlattenNet cannot be pruned as discovered: left"):
        check_units(wrong, x, strict=True)


def duplicate_channel(model, unit, source: int, target: int, scale: float = 2.0):
    """Make channel ``target`` of ``unit`` a positive multiple of ``source`` along its whole path, with
    matching BN (so its activation is exactly ``scale`` times ``source``'s)."""
    with torch.no_grad():
        unit.layer.weight[target] = scale * unit.layer.weight[source]
        if unit.layer.bias is not None:
            unit.layer.bias[target] = scale * unit.layer.bias[source]
        for bn in [unit.bn] + [m for m in unit.passthrough if isinstance(m, nn.BatchNorm2d)]:
            if bn is None:
                continue
            first = bn is unit.bn
            bn.running_mean[target] = (scale if first else 1.0) * bn.running_mean[source]
            bn.running_var[target] = (scale ** 2 if first else 1.0) * bn.running_var[source]
            bn.weight[target] = bn.weight[source]
            bn.bias[target] = bn.bias[source]
        for module in unit.passthrough:
            if isinstance(module, nn.Conv2d):
                module.weight[target] = module.weight[source]


def test_nm_restores_a_duplicated_channel_exactly_through_a_passthrough_and_two_consumers():
    model = randomized(FlattenNet()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    unit = {u.name: u for u in discover_units(model, x)}["stem"]
    duplicate_channel(model, unit, source=2, target=5, scale=1.0)  # ReLU6 saturates: keep the same scale
    keep = [i for i in range(8) if i != 5]
    restored, _ = prune_and_restore(model, "merge", "l2-norm", 0.1, threshold=0.0, nm_lambda=1.0,
                                    kept={"stem": keep, "head_conv": list(range(4)), "fc": list(range(7))},
                                    example_inputs=x, units=["stem"])
    with torch.no_grad():
        assert torch.allclose(restored(x), model(x), rtol=1e-9, atol=1e-10)
    plain, _ = prune_and_restore(model, "prune", "l2-norm", 0.1, kept={"stem": keep}, example_inputs=x,
                                 units=["stem"])
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max() > 1e-4


def test_nm_restores_a_duplicated_channel_read_through_a_flatten():
    model = randomized(FlattenNet()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    unit = {u.name: u for u in discover_units(model, x)}["head_conv"]
    duplicate_channel(model, unit, source=0, target=3, scale=3.0)  # no BN: ReLU(3z) = 3 ReLU(z)
    restored, _ = prune_and_restore(model, "merge", "l2-norm", 0.25, threshold=0.0, example_inputs=x,
                                    units=["head_conv"], kept={"head_conv": [0, 1, 2]})
    with torch.no_grad():
        assert torch.allclose(restored(x), model(x), rtol=1e-9, atol=1e-10)
    assert restored.fc.weight.shape == (7, 48)


def test_units_argument_restricts_and_rejects_unknown_names():
    model = randomized(FlattenNet())
    x = torch.zeros(1, 3, 8, 8)
    restored, report = prune_and_restore(model, "lbyl", "l2-norm", 0.5, example_inputs=x, units=["fc"])
    assert list(restored.lbyl_spec["units"]) == ["fc"] and [u.name for u in report.units] == ["fc"]
    assert restored.stem.weight.shape[0] == 8 and restored.fc.weight.shape[0] == 3
    with pytest.raises(ValueError, match=r"units= names \['cat_b'\] that are not prunable units of FlattenNet; "
                                         r"allowed: stem, head_conv, fc, left, late"):
        prune_and_restore(model, "lbyl", "l2-norm", 0.5, example_inputs=x, units=["cat_b"])
    # a coupled group is named like a unit: "left" is the residual stream of left and right
    with pytest.raises(ValueError, match=r"method 'lbyl' restores single-producer units only.*'left'"):
        prune_and_restore(model, "lbyl", "l2-norm", 0.5, example_inputs=x, units=["left"])
    restored, _ = prune_and_restore(model, "prune", "l2-norm", 0.5, example_inputs=x, units=["left"])
    assert restored.left.weight.shape[0] == restored.right.weight.shape[0] == 3


def test_reported_flops_equal_counting_both_networks():
    model = randomized(FlattenNet())
    x = torch.zeros(1, 3, 8, 8)
    restored, report = prune_and_restore(model, "lbyl", "l2-norm", 0.3, example_inputs=x)
    assert report.flops_before == count_flops(model, x) > 0
    assert report.flops_after == count_flops(restored, x) < report.flops_before
    vgg = build_model("vgg16_bn")
    restored, report = prune_and_restore(vgg, "prune", "l2-norm", 0.5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        restored.eval()(torch.zeros(1, 3, 32, 32))
    assert report.flops_after == counter.get_total_flops()


def test_save_then_reload_onto_the_users_own_unpruned_model(tmp_path):
    model = randomized(FlattenNet())
    x = torch.randn(2, 3, 8, 8)
    restored, _ = prune_and_restore(model, "lbyl", "l2-norm", 0.5, example_inputs=x)
    path = tmp_path / "restored.pth"
    save_restored(restored, path)
    fresh = FlattenNet()  # the user's own class, other random weights
    loaded = load_restored(path, model=fresh)
    assert fresh.stem.weight.shape[0] == 8  # the user's model itself is left unpruned
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), restored.eval()(x))


def test_torchvision_model_by_name_and_official_state_dict(tmp_path):
    model = build_model("torchvision/resnet18", num_classes=10, input_size=64)
    assert model.example_input_size == (1, 3, 64, 64)
    randomized(model)
    official = tmp_path / "resnet18-official.pth"
    torch.save(model.state_dict(), official)  # torchvision's own key names, as its .pth files
    from lbyl_pl import load_weights
    loaded = load_weights(build_model("torchvision/resnet18", num_classes=10, input_size=64), official)
    restored, report = prune_and_restore(loaded.eval(), "lbyl", "l2-norm", 0.3)
    assert len(report.units) == 8 and report.params_after < report.params_before
    path = tmp_path / "r18.pth"
    save_restored(restored, path)
    again = load_restored(path)  # the architecture recorded in the file is built
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), restored.eval()(x))
    with pytest.raises(ValueError, match=r"unknown torchvision classification model 'resnet19'; allowed: .*resnet18"):
        build_model("torchvision/resnet19")


def test_tracer_failure_and_unit_free_models_raise_value_errors():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(ValueError, match=r"the tracer \(Torch-Pruning .*\) cannot handle Broken: RuntimeError: boom"):
        discover(Broken(), torch.zeros(1, 3, 8, 8))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match=r"Sequential has no prunable unit \(groups skipped: .*other normalisation"):
        discover(model, torch.zeros(1, 3, 8, 8))


def test_discovery_is_cached_and_leaves_the_model_as_it_was():
    model = randomized(FlattenNet()).train()
    x = torch.zeros(1, 3, 8, 8)
    first = discover(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert discover(model, x) is first
    assert discover(model, torch.zeros(1, 3, 16, 16)) is not first  # another input shape: traced again
    state = {k: v.clone() for k, v in model.state_dict().items()}
    discover(model, x, cache=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# -- the torchvision zoo (random weights, randomised BN, small inputs) ----------------------------------
ZOO = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
       "regnet_y_400mf", "googlenet", "densenet121", "squeezenet1_1",
       # its 25088 -> 4096 classifier layer makes the NM/LBYL solves take tens of seconds; vgg16_bn has the
       # same structure (benchmarks/zoo.py restores it)
       pytest.param("vgg11_bn", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_restore_smaller_and_prune_equals_zeroing(name, all_threads):
    torch.manual_seed(0)
    model = randomized(build_model(f"torchvision/{name}", num_classes=10, input_size=64))
    x = torch.randn(2, 3, 64, 64)
    checks = check_units(model, x)
    assert checks and all(c.ok for c in checks), [str(c) for c in checks if not c.ok]
    with torch.no_grad():
        original = model(x)
    for method in ("prune", "merge", "lbyl"):
        restored, report = prune_and_restore(model, method, "l2-norm", 0.3, example_inputs=x)
        assert report.params_after < report.params_before and report.flops_after < report.flops_before
        with torch.no_grad():
            out = restored.eval()(x)
        assert out.shape == original.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["convnext_tiny", "shufflenet_v2_x1_0"])
def test_zoo_models_that_cannot_be_restored_say_why(name):
    model = build_model(f"torchvision/{name}", input_size=64)
    with pytest.raises(ValueError, match=r"has no prunable unit|cannot handle"):
        prune_and_restore(model, "lbyl", "l2-norm", 0.3)
