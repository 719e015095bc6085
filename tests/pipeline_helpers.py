"""Plain helpers shared by the test modules: the Lightning pipeline / CLI ones (test_module, test_callback,
test_cli, test_resume, test_ddp, test_restore_sweep), the architecture and surgery ones (test_architectures,
test_surgery) and the discovery ones (test_discovery, test_surgery). Functions and classes, imported by those
modules; fixtures live in conftest.py (among them ``clean_distributed_env``, which restores the
``DISTRIBUTED_ENV`` variables after every test)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lbyl_pl import build_model

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "synthetic_tiny.yaml")
DDP_CPU = str(REPO / "configs" / "trainer" / "ddp_cpu.yaml")

# Quiet, single-threaded runs of the synthetic config.
QUIET = ["trainer.threads=1", "trainer.enable_progress_bar=false"]
# LeNet-300-100 on synthetic 1-channel 28x28 images: no BatchNorm, no dropout, fast on one thread.
LENET = ["model.arch=lenet300", "data.synthetic.channels=1", "data.synthetic.image_size=28"]


def tiny_args(out, *overrides, config=TINY) -> list[str]:
    """Arguments of an entry point on the synthetic config, writing into ``out``."""
    return ["--config", config, "--output-dir", str(out), *QUIET, *overrides]


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or sanity check."""
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   inference_mode=False)
    options.update(kwargs)
    return pl.Trainer(**options)


def tiny_loaders(n=8, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(ds, batch_size=batch), DataLoader(ds, batch_size=batch)


class LogitsNet(nn.Module):
    """The input *is* the logits: lets a test hand-craft predictions for the accuracy metrics."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "LOCAL_RANK", "NODE_RANK",
                   "WORLD_SIZE", "RANK")


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for key in DISTRIBUTED_ENV:
        env.pop(key, None)
    return env


def state_dict_of(ckpt_path) -> dict:
    """The ``state_dict`` of a Lightning checkpoint, read with ``weights_only=True``."""
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]


def read_curve(run_dir, tag="curve/val_acc1") -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            curve.update({e.step: e.value for e in acc.Scalars(tag)})
    return curve


PYTHON = sys.executable


# -- the built-in architectures (test_architectures, test_surgery) -------------------------------------------

INPUT_SIZE = {
    "lenet300": (2, 1, 28, 28),
    "vgg16_bn": (2, 3, 32, 32),
    "resnet56": (2, 3, 32, 32),
    "resnet50": (2, 3, 32, 32),
    "resnet34": (2, 3, 64, 64),     # ImageNet nets pool adaptively: 64x64 keeps them fast
    "resnet101": (2, 3, 64, 64),
    "mobilenet_v2": (2, 3, 64, 64),
}


def make_model(arch, randomize_bn, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch)
    randomize_bn(model, seed)
    return model.to(dtype).eval()


def make_input(arch, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(INPUT_SIZE[arch], generator=g).to(dtype)


# -- a user network with every kind of group discovery meets (test_discovery, test_surgery) -----------------

class FlattenNet(nn.Module):
    """conv -> BN -> ReLU -> (depthwise conv -> BN -> ReLU6) -> two readers; conv -> flatten -> Linear;
    a residual pair; a concatenation; and a BN placed after its activation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 6, 1, bias=False)
        self.left_bn = nn.BatchNorm2d(6)
        self.right = nn.Conv2d(8, 6, 1, bias=False)
        self.right_bn = nn.BatchNorm2d(6)
        self.late = nn.Conv2d(6, 5, 3, padding=1, bias=True)  # ReLU before its BN: not a unit
        self.late_bn = nn.BatchNorm2d(5)
        self.cat_a = nn.Conv2d(5, 3, 1)
        self.cat_b = nn.Conv2d(5, 3, 1)
        self.head_conv = nn.Conv2d(6, 4, 1, bias=True)  # no BN, bias: read through a flatten
        self.fc = nn.Linear(4 * 4 * 4, 7)
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = nn.functional.relu6(self.dw_bn(self.dw(x)))
        y = self.left_bn(self.left(x)) + self.right_bn(self.right(x))  # coupled by the add
        z = self.late_bn(torch.relu(self.late(y)))
        z = torch.cat([self.cat_a(z), self.cat_b(z)], dim=1)
        h = torch.relu(self.head_conv(y))
        h = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        return self.out(torch.relu(self.fc(h))) + z.mean() * 0


def randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()
