"""Distributed runs on CPU (configs/trainer/ddp_cpu.yaml: 2 spawned gloo processes) give the results of
one process: evaluation counts every sample exactly once, and data-parallel training with 2 x 8 samples
per step is 1 x 16 samples per step.

The distributed runs go through the root scripts in a subprocess (spawned workers re-import their main
module; a pytest process must not be that module). The 1-process baselines run in-process.
"""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from lbyl_pl.cli import finetune, restore, train
from pipeline_helpers import DDP_CPU, LENET, PYTHON, REPO, read_curve, state_dict_of, subprocess_env, tiny_args

torch.set_num_threads(1)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run_script(script: str, args: list[str], timeout: int = 540) -> str:
    result = subprocess.run([PYTHON, script, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def test_distributed_restore_evaluation_is_exact(tmp_path):
    # a trained LeNet, so predictions vary (25 eval samples: a padded sampler would count one twice)
    data = (*LENET, "data.synthetic.num_eval=25", "data.eval_batch_size=4")
    assert train.cli(tiny_args(tmp_path / "train", *data, "data.synthetic.num_train=64",
                               "trainer.max_epochs=3", "optim.lr=0.05")) == 0
    settings = (*data, f"model.checkpoint={tmp_path / 'train' / 'model.pth'}", "restore.methods=[lbyl, merge]",
                "restore.ratios=[0.5]")
    single, double = tmp_path / "single", tmp_path / "ddp"
    assert restore.cli(tiny_args(single, *settings)) == 0
    output = run_script("restore.py", tiny_args(double, *settings)[:2] + ["--config", DDP_CPU]
                        + tiny_args(double, *settings)[2:])
    assert "MEMBER: 2/2" in output  # really two processes

    one = json.loads((single / "results.json").read_text())
    two = json.loads((double / "results.json").read_text())
    assert two["config"]["trainer"]["devices"] == 2 and two["config"]["trainer"]["strategy"] == "ddp_spawn"
    # the comparison can only catch double counting if the accuracies are not 0 or 100 %
    assert 0 < one["original"]["acc1"] < 100 and 0 < one["original"]["acc5"] < 100
    assert two["original"] == one["original"]
    assert len(one["rows"]) == len(two["rows"]) == 2
    for a, b in zip(one["rows"], two["rows"]):
        assert (a["method"], a["criterion"], a["ratio"]) == (b["method"], b["criterion"], b["ratio"])
        assert (a["acc1"], a["acc5"]) == (b["acc1"], b["acc5"])
        assert (a["params"], a["flops"]) == (b["params"], b["flops"])
        assert {k: a.get(k) for k in ("threshold", "nm_lambda", "lambda1", "lambda2")} == \
            {k: b.get(k) for k in ("threshold", "nm_lambda", "lambda1", "lambda2")}  # each method's own
        assert a["coef_abs_mean"] == pytest.approx(b["coef_abs_mean"], rel=1e-6)
    assert (single / "table.md").read_text() == (double / "table.md").read_text()


def test_distributed_finetune_matches_one_process(tmp_path):
    # LeNet has no BatchNorm: 2 processes x 8 samples (gradients averaged) == 1 process x 16 samples
    settings = (*LENET, "data.synthetic.num_train=32", "data.synthetic.num_eval=25", "model.checkpoint=random",
                "optim.lr=0.05", "--epochs", "2")
    single, double = tmp_path / "single", tmp_path / "ddp"
    assert finetune.cli(tiny_args(single, *settings, "data.batch_size=16")) == 0
    args = tiny_args(double, *settings, "data.batch_size=8")
    output = run_script("finetune.py", args[:2] + ["--config", DDP_CPU] + args[2:])
    assert "MEMBER: 2/2" in output

    a, b = state_dict_of(single / "checkpoints" / "last.ckpt"), state_dict_of(double / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and a["net.ip1.weight"].shape == (150, 784)
    start = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)
    assert start["global_step"] == 4
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    one = json.loads((single / "finetune.json").read_text())
    two = json.loads((double / "finetune.json").read_text())
    assert two["before_acc1"] == pytest.approx(one["before_acc1"], abs=1e-4)  # exact evaluation, epoch 0
    assert two["after"]["val/acc1"] == pytest.approx(one["after"]["val/acc1"], abs=1e-4)
    assert two["after"]["val/loss"] == pytest.approx(one["after"]["val/loss"], abs=1e-4)
    assert sorted(read_curve(double)) == [0, 1, 2]
    assert read_curve(double) == pytest.approx(read_curve(single), abs=1e-4)
