"""Restoration on the model's device: ``RestoreCallback`` restores a network where it is, never moving it to the
CPU and back, and every stage keeps its tensors on the device of the weights (checked on the CPU here; on a GPU
by ``benchmarks/gpu_restore_device.py``, a step of ``benchmarks/gpu_check.sh``)."""
from __future__ import annotations

import pytorch_lightning as pl
import pytest
import torch
from torch import nn

from lbyl_pl import METHODS, PrunableUnit, RestoreCallback, prune_and_restore


class Unmovable(nn.Module):
    """``conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> pool -> fc`` that refuses to be moved: ``.cpu()``,
    ``.cuda()`` and ``.to()`` raise (as does any module copied from it, the restored network included)."""

    example_input_size = (1, 3, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))

    def cpu(self):
        raise AssertionError("restoration moved the network: .cpu()")

    def cuda(self, device=None):
        raise AssertionError("restoration moved the network: .cuda()")

    def to(self, *args, **kwargs):
        raise AssertionError(f"restoration moved the network: .to{args}")


class Holder(pl.LightningModule):
    def __init__(self, backbone: nn.Module, example_input_array=None):
        super().__init__()
        self.backbone = backbone
        self.example_input_array = example_input_array

    def forward(self, x):
        return self.backbone(x)


def unmovable(seed: int = 0, units: bool = False) -> Unmovable:
    torch.manual_seed(seed)
    net = Unmovable()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            n = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(n, generator=g))
            bn.bias.copy_(0.1 * torch.randn(n, generator=g))
            bn.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=g))
    if units:  # declared units instead of discovery on the traced graph
        net.prunable_units = lambda: [PrunableUnit(net.conv1, net.bn1, net.conv2, name="conv1"),
                                      PrunableUnit(net.conv2, net.bn2, net.fc, name="conv2")]
    return net.eval()


CELLS = [(name, {}) for name in METHODS if name in ("prune", "merge", "lbyl", "fusion")] + \
    [("lbyl", {"solver": "reference"}), ("lbyl", {"solver": "batched", "variant": "exact"}),
     ("fusion", {"producer": "mean", "variant": "exact"})]


@pytest.mark.parametrize("method,kwargs", CELLS, ids=[f"{m}-{'-'.join(map(str, k.values())) or 'default'}"
                                                      for m, k in CELLS])
def test_restore_callback_restores_where_the_network_is(method, kwargs):
    net = unmovable()
    module = Holder(net)
    expected, expected_report = prune_and_restore(net, method, "l2-norm", 0.5, **kwargs)
    callback = RestoreCallback(method, "l2-norm", 0.5, **kwargs)
    callback.apply(module)  # no .cpu() / .to() on the network
    restored = module.backbone
    assert restored is not net and isinstance(restored, Unmovable) and restored.conv1.out_channels == 4
    device = next(net.parameters()).device
    assert {t.device for t in (*restored.parameters(), *restored.buffers())} == {device}
    assert {t.dtype for t in restored.parameters()} == {next(net.parameters()).dtype}
    assert callback.spec == restored.lbyl_spec == expected.lbyl_spec
    assert callback.report.coef_abs_mean == expected_report.coef_abs_mean
    for key, value in expected.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(restored(x), expected(x))


def test_example_inputs_are_taken_where_the_network_is():
    """Example inputs captured from the LightningModule, or given, are moved to the network (not the network to
    them): a tuple of inputs works too, and a network with declared units as well."""
    x = torch.randn(1, 3, 8, 8)
    module = Holder(unmovable(), example_input_array=x)
    RestoreCallback("lbyl", "l2-norm", 0.5).apply(module)
    assert module.backbone.conv1.out_channels == 4
    module = Holder(unmovable(units=True))
    RestoreCallback("merge", "l1-norm", 0.5, example_inputs=(x,)).apply(module)
    assert module.backbone.conv2.out_channels == 3
    assert {p.device for p in module.backbone.parameters()} == {x.device}


@pytest.mark.parametrize("method", ["prune", "merge", "lbyl", "fusion"])
def test_every_delivery_is_on_the_device_of_the_weights(method, tiny_net):
    """Each method's delivery matrix and new producer state are made on the device (and in float64) of the unit
    tensors it is given, whatever its hyperparameters."""
    from lbyl_pl.methods import make_method
    from lbyl_pl.units import unit_tensors

    model = tiny_net()
    restorer = make_method(method).bind(model)
    for unit in model.prunable_units():
        tensors = unit_tensors(unit)
        assert {t.device for t in (tensors.weight, tensors.gamma, tensors.beta)} == {unit.layer.weight.device}
        restoration = restorer.restore_unit(unit, tensors, [0, 2, 3, 5])
        assert restoration.delivery.device == unit.layer.weight.device
        assert restoration.delivery.dtype == torch.float64
        if restoration.producer is not None:
            extra = [restoration.producer.weight, *(restoration.producer.bn or {}).values()]
            assert {t.device for t in extra} == {unit.layer.weight.device}
