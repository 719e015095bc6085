"""Shared set-up for the lbyl_pl tests: one CPU thread, fixed seeds, tiny models and helpers.

Helpers are exposed as fixtures (``tiny_net``, ``randomize_bn``, ``unit_tensors_factory``) so the test
modules never import from this file; every fixture lives here (``pipeline_helpers`` holds plain functions).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch/numpy load their thread pools

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lbyl_pl import PrunableUnit  # noqa: E402
from lbyl_pl.units import BN_TYPES, UnitTensors  # noqa: E402
from pipeline_helpers import DISTRIBUTED_ENV  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def clean_distributed_env():
    """Drops the variables that seed_everything() and DDP leave in ``os.environ`` after each test, so no
    test sees another's."""
    before = {key: os.environ.get(key) for key in DISTRIBUTED_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def all_threads():
    """For the few heavy tests (real-data evaluations, 100M-parameter zoo models): as many torch threads as
    OMP_NUM_THREADS allows (CI sets 2), one again afterwards. The tiny-net tests stay on one thread."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    yield
    torch.set_num_threads(1)


def randomize_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial gamma, beta, running mean and running var (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BN_TYPES):
                n = module.num_features
                dtype = module.running_mean.dtype
                module.weight.copy_((0.5 + torch.rand(n, generator=g)).to(dtype))
                module.bias.copy_((0.1 * torch.randn(n, generator=g)).to(dtype))
                module.running_mean.copy_((0.1 * torch.randn(n, generator=g)).to(dtype))
                module.running_var.copy_((0.5 + torch.rand(n, generator=g)).to(dtype))
    return model


class TinyConvNet(nn.Module):
    """``conv1 -> bn1 -> act -> conv2 -> bn2 -> act -> avgpool -> fc``; two prunable units.

    ``act`` is ReLU by default; ``nn.Identity()`` gives the linear regime of docs/method.md §5.6.2.
    """

    def __init__(self, c_in: int = 3, c1: int = 8, c2: int = 6, num_classes: int = 4,
                 act: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.act = act if act is not None else nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))

    def prunable_units(self):
        return [PrunableUnit(self.conv1, self.bn1, self.conv2), PrunableUnit(self.conv2, self.bn2, self.fc)]


class OneUnitNet(nn.Module):
    """``conv -> bn -> act -> consumer conv``: the output *is* the consumer output of one unit."""

    def __init__(self, c_in: int = 3, n: int = 8, c_out: int = 5, kernel: int = 3,
                 act: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c_in, n, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(n)
        self.act = act if act is not None else nn.ReLU()
        self.consumer = nn.Conv2d(n, c_out, 3, padding=1, bias=True)

    def forward(self, x):
        return self.consumer(self.act(self.bn(self.conv(x))))

    def prunable_units(self):
        return [PrunableUnit(self.conv, self.bn, self.consumer)]


@pytest.fixture
def tiny_net():
    """Factory: a TinyConvNet in eval mode with random BN statistics (float32 or float64)."""

    def make(dtype=torch.float64, seed: int = 0, **kwargs) -> TinyConvNet:
        torch.manual_seed(seed)
        model = TinyConvNet(**kwargs)
        randomize_bn_stats(model, seed)
        return model.to(dtype).eval()

    return make


@pytest.fixture
def one_unit_net():
    """Factory: a OneUnitNet in eval mode with random BN statistics."""

    def make(dtype=torch.float64, seed: int = 0, **kwargs) -> OneUnitNet:
        torch.manual_seed(seed)
        model = OneUnitNet(**kwargs)
        randomize_bn_stats(model, seed)
        return model.to(dtype).eval()

    return make


@pytest.fixture
def randomize_bn():
    return randomize_bn_stats


@pytest.fixture
def unit_tensors_factory():
    """Factory: random float64 ``UnitTensors`` (n filters of dimension d) with non-trivial BN."""

    def make(n: int, d: int, seed: int = 0, bn: bool = True) -> UnitTensors:
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(n, d, generator=g, dtype=torch.float64)
        if not bn:
            return UnitTensors(weight)
        gamma = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
        beta = 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
        mean = 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
        var = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
        return UnitTensors(weight, gamma, beta, mean, var, 1e-5)

    return make


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def sd_equal():
    return state_dicts_equal
