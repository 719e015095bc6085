"""RestoreCallback inside a LightningModule written here: its own attribute names, steps and metrics."""
from __future__ import annotations

import pytorch_lightning as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lbyl_pl import RestoreCallback, load_restored_checkpoint, prune_and_restore


def small_backbone():
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(12, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10), nn.ReLU(),
        nn.Flatten(), nn.Linear(10 * 8 * 8, 16), nn.ReLU())


class UserModule(pl.LightningModule):
    """Keeps its network in ``self.backbone`` and a head of its own; resizes inputs before the backbone,
    so the backbone's example input differs from ``example_input_array``."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = small_backbone()
        self.head = nn.Linear(16, 3)
        self.example_input_array = torch.zeros(1, 3, 8, 8)
        self.seen_accuracy = []

    def forward(self, x):
        return self.head(self.backbone(F.interpolate(x, size=16)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("my_train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        accuracy = (self(x).argmax(1) == y).float().mean()
        self.log("my_val_accuracy", accuracy)
        self.seen_accuracy.append(float(accuracy))

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return module


def loader():
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g))
    return DataLoader(data, batch_size=8)


def trainer(tmp_path, callback, **kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                      callbacks=[callback], **kwargs)


def test_callback_restores_the_named_submodule_then_fits(tmp_path):
    torch.manual_seed(0)
    module = UserModule()
    randomize(module.backbone)
    original = module.backbone
    expected, _ = prune_and_restore(original, "lbyl", "l2-norm", 0.5, example_inputs=torch.zeros(1, 3, 16, 16))
    callback = RestoreCallback("lbyl", "l2-norm", 0.5, module="backbone")
    t = trainer(tmp_path, callback)
    t.validate(module, dataloaders=loader(), verbose=False)
    assert module.backbone is not original and module.backbone[0].weight.shape[0] == 6
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(module.backbone.eval()(x), expected.eval()(x))
    assert "my_val_accuracy" in t.callback_metrics
    restored = module.backbone
    # fit: not restored twice, and the restored parameters are the ones trained
    t = trainer(tmp_path, callback)
    t.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert module.backbone is restored and module.backbone[4].weight.shape == (5, 6, 3, 3)
    assert not torch.equal(module.backbone[0].weight, expected[0].weight)  # it trained
    path = tmp_path / "fitted.ckpt"
    t.save_checkpoint(path)
    reloaded = load_restored_checkpoint(UserModule, path)  # one call: pruned shapes, then weights
    module.eval()
    with torch.no_grad():
        y = torch.randn(2, 3, 8, 8)
        assert torch.equal(reloaded.eval()(y), module(y))


def test_callback_fit_restores_in_setup_and_test_works(tmp_path):
    torch.manual_seed(0)
    module = UserModule()
    randomize(module.backbone)
    callback = RestoreCallback("merge", "l2-norm", 0.3, module="backbone")
    t = trainer(tmp_path, callback, limit_train_batches=2)
    t.fit(module, train_dataloaders=loader())
    assert module.backbone[0].weight.shape[0] == 8 and callback.report.params_after < callback.report.params_before
    t.test(module, dataloaders=loader(), verbose=False)
    assert module.backbone[0].weight.shape[0] == 8


class TwoNetworks(UserModule):
    def __init__(self):
        super().__init__()
        self.teacher = small_backbone()


def test_default_module_is_the_only_child_with_parameters_else_a_clear_error(tmp_path):
    class OnlyBackbone(UserModule):
        def __init__(self):
            super().__init__()
            self.head = None  # its head holds no parameters

        def forward(self, x):
            return self.backbone(F.interpolate(x, size=16))[:, :3]

    module = OnlyBackbone()
    randomize(module.backbone)
    RestoreCallback("prune", "l2-norm", 0.5).apply(module)
    assert module.backbone[0].weight.shape[0] == 6
    with pytest.raises(ValueError, match=r"RestoreCallback\(module=...\) must name the network to restore: "
                                         r"TwoNetworks has 3 child modules with parameters \(backbone, head, teacher\)"):
        RestoreCallback("prune", "l2-norm", 0.5).apply(TwoNetworks())
    with pytest.raises(ValueError, match=r"UserModule has no submodule 'body'; its children are \['backbone', 'head'\]"):
        RestoreCallback("prune", "l2-norm", 0.5, module="body").apply(UserModule())
