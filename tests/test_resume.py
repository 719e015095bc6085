"""finetune.py --resume continues an interrupted run exactly where an uninterrupted one would be.

How the interruption is made: the brief's first idea, a first run with ``--epochs 1`` resumed with
``--epochs 2``, is not a faithful interruption: the cosine schedule spans ``trainer.max_epochs``, so a
1-epoch run decays its learning rate to zero during its only epoch and its checkpoint holds another
schedule than the 2-epoch run. A constant schedule would hide that, and with it any bug in how the
scheduler state is restored. So the run to be resumed is launched exactly like the uninterrupted one
(``--epochs 2``) and killed at the start of its second epoch, after Lightning saved ``last.ckpt`` of
epoch 1, by a callback raising an exception (as a crash or a preemption would; not
``KeyboardInterrupt``, which makes Lightning ignore SIGINT and call ``sys.exit`` inside pytest). A
second call with ``--resume`` then finishes it in a fresh Trainer, module and DataModule.

The run uses momentum SGD with a cosine schedule and two shuffled batches per epoch, so a resumed run
only matches if the weights, momentum buffers, scheduler state, epoch counter and the epoch-seeded
sample order are all restored.
"""
from __future__ import annotations

import json

import pytest
import torch
from pytorch_lightning import Callback

import lbyl_pl.cli.finetune as finetune
import lbyl_pl.cli.train as train
from pipeline_helpers import LENET, read_curve, tiny_args

torch.set_num_threads(1)

SETTINGS = (*LENET, "data.synthetic.num_train=32", "data.batch_size=16", "model.checkpoint=random",
            "optim.lr=0.05", "optim.momentum=0.9", "optim.schedule=cosine")


class Interrupted(Exception):
    pass


class InterruptAtEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupted(f"killed at the start of epoch {self.epoch}")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run_interrupted(monkeypatch, entry_point, argv, epoch=1):
    """Run ``entry_point.cli(argv)`` and kill it at the start of ``epoch``."""
    build_trainer = entry_point.build_trainer

    def with_interrupt(*args, callbacks=(), **kwargs):
        return build_trainer(*args, callbacks=[*callbacks, InterruptAtEpoch(epoch)], **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(entry_point, "build_trainer", with_interrupt)
        with pytest.raises(Interrupted):
            entry_point.cli(argv)


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert finetune.cli(tiny_args(whole, *SETTINGS, "--epochs", "2")) == 0

    run_interrupted(monkeypatch, finetune, tiny_args(parts, *SETTINGS, "--epochs", "2"))
    assert not (parts / "finetune.json").exists()
    halfway = load(parts / "checkpoints" / "last.ckpt")
    # saved at the end of epoch 0: one epoch of two batches done, the schedule stepped once
    assert halfway["global_step"] == 2
    assert halfway["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1
    assert halfway["lr_schedulers"][0]["last_epoch"] == 1

    assert finetune.cli(tiny_args(parts, *SETTINGS, "--epochs", "2", "--resume")) == 0
    info = json.loads((parts / "finetune.json").read_text())
    assert info["resumed"] is True and info["before_acc1"] is None

    a, b = load(whole / "checkpoints" / "last.ckpt"), load(parts / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 4)
    assert a["loops"]["fit_loop"]["epoch_progress"] == b["loops"]["fit_loop"]["epoch_progress"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # one thread, same operations in the same order: bitwise equal
        assert torch.equal(b["state_dict"][key], a["state_dict"][key]), key
    # the optimizer and the schedule went on from where they stopped
    assert a["lr_schedulers"] == b["lr_schedulers"]
    state_a, state_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert [g["lr"] for g in state_a["param_groups"]] == [g["lr"] for g in state_b["param_groups"]]
    for index, buffers in state_a["state"].items():
        torch.testing.assert_close(state_b["state"][index]["momentum_buffer"], buffers["momentum_buffer"],
                                   rtol=0, atol=1e-6)
    assert a["pruning_spec"] == b["pruning_spec"]
    # the TensorBoard curve of the two parts is the uninterrupted curve
    curve_a, curve_b = read_curve(whole), read_curve(parts)
    assert sorted(curve_a) == sorted(curve_b) == [0, 1, 2]
    assert curve_b == pytest.approx(curve_a, abs=1e-4)
    whole_info = json.loads((whole / "finetune.json").read_text())
    assert info["after"] == pytest.approx(whole_info["after"], abs=1e-5)


def test_resume_without_checkpoint_starts_over(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert finetune.cli(tiny_args(out, *SETTINGS, "--epochs", "1", "--resume")) == 0
    assert "checkpoints/last.ckpt yet: starting from the beginning" in capsys.readouterr().out
    info = json.loads((out / "finetune.json").read_text())
    assert info["resumed"] is False and info["before_acc1"] is not None


def test_train_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    settings = (*SETTINGS, "trainer.max_epochs=3", "train.ratio=0.5")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train.cli(tiny_args(whole, *settings)) == 0
    run_interrupted(monkeypatch, train, tiny_args(parts, *settings), epoch=2)
    assert not (parts / "model.pth").exists()
    assert load(parts / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert train.cli(tiny_args(parts, *settings, "--resume")) == 0
    a, b = load(whole / "model.pth"), load(parts / "model.pth")
    assert a["pruning_spec"] == b["pruning_spec"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(b["state_dict"][key], a["state_dict"][key]), key
    assert load(parts / "checkpoints" / "last.ckpt")["global_step"] == 6
