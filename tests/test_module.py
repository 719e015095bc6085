"""``ClassifierModule``: exact micro-averaged metrics, schedule validation, and checkpoints of a restored
network (pruning spec stored, pruned shapes rebuilt on load)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lbyl_pl import build_model, prune_and_restore
from lbyl_pl.module import ClassifierModule
from pipeline_helpers import LogitsNet, quiet_trainer, tiny_loaders


def hand_made_logits():
    """8 samples over 10 classes; the true label's rank is 0 (3x), 1..4 (2x), >= 5 (3x)."""
    ranks = [0, 0, 0, 1, 4, 5, 7, 9]
    labels = torch.tensor([3, 1, 0, 2, 6, 9, 5, 8])
    logits = torch.zeros(len(ranks), 10)
    for i, (rank, label) in enumerate(zip(ranks, labels.tolist())):
        others = [c for c in range(10) if c != label]
        order = others[:rank] + [label] + others[rank:]  # descending score order
        for position, c in enumerate(order):
            logits[i, c] = 10.0 - position
    return logits, labels


def test_metrics_exact_on_hand_made_batches():
    logits, labels = hand_made_logits()
    module = ClassifierModule("lenet300", 10)
    module.set_net(LogitsNet())
    # batches of 3, 3, 2: micro averaging over all 8 samples, not a mean of per-batch accuracies
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)
    metrics = quiet_trainer().validate(module, loader, verbose=False)[0]
    assert metrics["val/acc1"] == pytest.approx(100 * 3 / 8, abs=1e-4)
    assert metrics["val/acc5"] == pytest.approx(100 * 5 / 8, abs=1e-4)
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert module.last_eval["acc1"] == pytest.approx(37.5, abs=1e-4)
    # test() goes through the same metrics, under its own prefix, after a reset
    tested = quiet_trainer().test(module, loader, verbose=False)[0]
    assert tested["test/acc1"] == pytest.approx(37.5, abs=1e-4)
    assert tested["test/acc5"] == pytest.approx(62.5, abs=1e-4)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; allowed: cosine, step, constant"):
        ClassifierModule("lenet300", 10, {"schedule": "linear"})

def test_checkpoint_round_trip_of_restored_network(tmp_path):
    restored, _ = prune_and_restore(build_model("lenet300"), "lbyl", "l2-norm", 0.5)
    module = ClassifierModule("lenet300", 10, {"lr": 0.05})
    module.set_net(restored)
    train, val = tiny_loaders()
    trainer = quiet_trainer(max_epochs=1, default_root_dir=str(tmp_path))
    trainer.fit(module, train, val)
    path = tmp_path / "restored.ckpt"
    trainer.save_checkpoint(path)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: safe to load
    assert raw["pruning_spec"] == restored.lbyl_spec
    assert raw["state_dict"]["net.ip1.weight"].shape == (150, 784)

    for weights_only in (True, None):
        loaded = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=weights_only)
        shapes = {k: v.shape for k, v in loaded.net.state_dict().items()}
        assert shapes == {k: v.shape for k, v in module.net.state_dict().items()}
        assert shapes["ip1.weight"] == (150, 784) and shapes["ip2.weight"] == (50, 150)
        assert loaded.net.lbyl_spec == restored.lbyl_spec
        x = torch.randn(5, 1, 28, 28)
        module.eval()
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), module(x))


def test_on_save_checkpoint_records_spec():
    module = ClassifierModule("lenet300", 10)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint == {"pruning_spec": None}
    restored, _ = prune_and_restore(build_model("lenet300"), "prune", "l1-norm", 0.3)
    module.set_net(restored)
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["pruning_spec"]["units"] == restored.lbyl_spec["units"]
