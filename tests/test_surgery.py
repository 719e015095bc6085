"""Surgery: the pruned network computes what the original computes with the pruned channels silenced
(docs/method.md §3), on every built-in architecture (ReLU outputs, BN channels, LeNet neurons, MobileNet-V2's
projection columns) and on a discovered user network (every consumer, through a flatten); the result shares no
tensor with the original. The hypothesis versions over arbitrary shapes are in test_properties.py."""
from __future__ import annotations

import copy

import pytest
import torch

from lbyl_pl import build_model, discover_units, prune_and_restore
from lbyl_pl.prunable import prunable_units
from pipeline_helpers import FlattenNet, make_input, make_model, randomized


# -- built-in architectures ----------------------------------------------------------------------------

def pruned_channels(unit, kept):
    return sorted(set(range(unit.n_channels)) - set(kept))


def test_prune_equals_zeroed_activations_vgg(randomize_bn):
    """VGG: zero the pruned channels after each ReLU (forward hooks) on the original network."""
    model = make_model("vgg16_bn", randomize_bn, dtype=torch.float64)
    x = make_input("vgg16_bn", torch.float64)
    restored, _ = prune_and_restore(model, "prune", "l2-norm", 0.3)
    reference = copy.deepcopy(model)
    hooks = []
    feature = list(reference.feature)
    for unit in prunable_units(reference):
        idx = int(unit.name.split(".")[1])
        relu = feature[idx + 2]
        assert isinstance(feature[idx + 1], torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
        drop = pruned_channels(unit, restored.lbyl_spec["units"][unit.name])

        def hook(module, inputs, output, drop=drop):
            output = output.clone()
            output[:, drop] = 0
            return output

        hooks.append(relu.register_forward_hook(hook))
    with torch.no_grad():
        expected = reference(x)
        got = restored(x)
        unhooked = model(x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)
    assert (got - unhooked).abs().max().item() > 1e-3  # pruning changed the output


def assert_equals_reference_not_original(restored, reference, original, x):
    """``restored`` computes what ``reference`` (the original with pruned channels silenced) computes,
    and that differs from the unpruned ``original`` (so the check is not vacuous)."""
    with torch.no_grad():
        expected, got, unpruned = reference(x), restored(x), original(x)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() < 1e-10 * scale
    assert (got - unpruned).abs().max().item() > 1e-3 * scale


@pytest.mark.parametrize("arch", ["resnet56", "resnet50"])
def test_prune_equals_zeroed_bn_channels_resnet(arch, randomize_bn):
    """ResNets: gamma = beta = 0 on a pruned channel makes its BN output, hence its ReLU output, 0.
    (ResNet-56 reuses one ReLU module per block, so hooks on it would also hit the block input.)"""
    model = make_model(arch, randomize_bn, dtype=torch.float64)
    x = make_input(arch, torch.float64)
    restored, _ = prune_and_restore(model, "prune", "l2-norm", 0.5)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for unit in prunable_units(reference):
            drop = pruned_channels(unit, restored.lbyl_spec["units"][unit.name])
            unit.bn.weight[drop] = 0.0
            unit.bn.bias[drop] = 0.0
    assert_equals_reference_not_original(restored, reference, model, x)


def test_prune_equals_zeroed_neurons_lenet():
    model = build_model("lenet300").double().eval()
    x = make_input("lenet300", torch.float64)
    restored, _ = prune_and_restore(model, "prune", "l2-norm", 0.6)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for unit in prunable_units(reference):
            drop = pruned_channels(unit, restored.lbyl_spec["units"][unit.name])
            unit.layer.weight[drop] = 0.0   # pre-activation 0 -> ReLU output 0
            unit.layer.bias[drop] = 0.0
        assert torch.allclose(restored(x), reference(x), rtol=1e-12, atol=1e-12)


def test_mobilenet_prune_equals_zeroed_projection_columns(randomize_bn):
    model = make_model("mobilenet_v2", randomize_bn, dtype=torch.float64)
    x = make_input("mobilenet_v2", torch.float64)
    restored, _ = prune_and_restore(model, "prune", "l1-norm", 0.5)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for unit in prunable_units(reference):
            drop = pruned_channels(unit, restored.lbyl_spec["units"][unit.name])
            unit.consumer.weight[:, drop] = 0.0
    assert_equals_reference_not_original(restored, reference, model, x)


# -- a discovered user network -------------------------------------------------------------------------

def test_prune_equals_zeroing_pruned_channels_at_every_consumer():
    model = randomized(FlattenNet())
    x = torch.randn(3, 3, 8, 8)
    restored, _ = prune_and_restore(model, "prune", "l2-norm", 0.5, example_inputs=x)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for unit in discover_units(model, x):
            kept = restored.lbyl_spec["units"][unit.name]
            dropped = sorted(set(range(unit.n_channels)) - set(kept))
            for consumer, r in zip(unit.consumers, unit.features_per_channel):
                name = unit.consumer_names[unit.consumers.index(consumer)]
                zeroed.get_submodule(name).weight[:, [c * r + j for c in dropped for j in range(r)]] = 0
        got, want, original = restored(x), zeroed(x), model(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got - original).abs().max() > 1e-3  # and pruning did change the function


def test_restored_network_shares_no_tensor_with_the_original():
    """Surgery starts its copy by sharing the tensors it replaces; none may survive into the result."""
    model = randomized(FlattenNet())
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    restored, _ = prune_and_restore(model, "lbyl", "l2-norm", 0.5, example_inputs=x)
    original_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not original_ptrs & {t.data_ptr() for t in restored.state_dict().values() if t.numel()}
    with torch.no_grad():
        for p in restored.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
