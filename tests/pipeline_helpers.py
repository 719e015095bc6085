"""Shared helpers of the Lightning pipeline / CLI tests (test_pipeline_units, test_cli, test_resume,
test_ddp). Plain functions and classes, imported by those modules; fixtures live in conftest.py (among them
``clean_distributed_env``, which restores the ``DISTRIBUTED_ENV`` variables after every test)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

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
