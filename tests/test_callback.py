"""``RestoreCallback``: argument checks, restoring during validate and fit (before the optimizer is built, not
twice), the scratch initialisation, its state; and inside a LightningModule written here, with its own
attribute names, steps and metrics."""
from __future__ import annotations

from types import SimpleNamespace

import pytorch_lightning as pl
import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lbyl_pl import RestoreCallback, load_restored_checkpoint, prune_and_restore
from lbyl_pl.module import ClassifierModule
from lbyl_pl.selection import DEFAULT_RATIO
from pipeline_helpers import quiet_trainer, tiny_loaders


# -- RestoreCallback on ClassifierModule -------------------------------------------------------------

@pytest.mark.parametrize("kwargs,shown", [
    ({"method": "ours"}, "'ours'"), ({"init": "pretrained"}, "'pretrained'"),
    ({"criterion": "l3-norm"}, "'l3-norm'"), ({"ratio": 1.5}, "1.5"), ({"variant": "theory"}, "'theory'"),
    ({"lambda1": -1.0}, "-1.0"), ({"lambda2": float("inf")}, "inf"),
    ({"method": "merge", "threshold": -0.5}, "-0.5"), ({"method": "merge", "nm_lambda": 1.5}, "1.5"),
    ({"method": "fusion", "producer": "median"}, "'median'"), ({"method": "fusion", "cost_p": 0.5}, "0.5"),
    # a hyperparameter of another method is an error naming its owner, not silently ignored
    ({"method": "prune", "lambda1": 1e-6}, "lambda1 belongs to lbyl"),
    ({"method": "lbyl", "threshold": 0.1}, "threshold belongs to merge"),
    # a budget: fractions of the original in (0, 1], never together with a ratio; options only with a budget
    ({"flops": 1.5}, "got 1.5"), ({"flops": 0}, "got 0"), ({"flops": float("nan")}, "got nan"),
    ({"flops": True}, "got True"), ({"params": -0.25}, "got -0.25"),
    ({"ratio": 0.3, "flops": 0.5}, "ratio=0.3"), ({"ratio": 0.4, "params": 0.5}, "not both"),
    ({"budget": {"inputs": 4}}, "budget= options need flops= or params="),
    ({"flops": 0.5, "budget": {"steps": 0.1}}, "'steps'"), ({"flops": 0.5, "budget": {"inputs": 0}}, "got 0"),
])
def test_restore_callback_bad_arguments(kwargs, shown):
    with pytest.raises(ValueError) as err:
        RestoreCallback(**kwargs)
    assert shown in str(err.value)


def test_ratio_defaults_to_the_default_ratio_unless_a_budget_replaces_it():
    assert RestoreCallback().ratio == DEFAULT_RATIO and RestoreCallback().flops is None
    callback = RestoreCallback(flops=1, budget={"inputs": 4})
    assert (callback.ratio, callback.flops, callback.params, callback.budget) == (None, 1.0, None, {"inputs": 4})
    # retarget: the same checks; a ratio again puts the budget away
    assert callback.retarget("prune", ratio=0.3).ratio == 0.3 and callback.flops is None and callback.budget is None
    assert callback.retarget("prune", params=0.5).ratio is None and callback.params == 0.5
    with pytest.raises(ValueError, match="got 2"):
        callback.retarget("prune", flops=2)
    with pytest.raises(ValueError, match="not both"):
        callback.retarget("prune", ratio=0.3, flops=0.5)


def lenet_module():
    module = ClassifierModule("lenet300", 10, {"lr": 0.05})
    return module


def test_restore_callback_during_validate():
    module = lenet_module()
    original = {k: v.clone() for k, v in module.net.state_dict().items()}
    callback = RestoreCallback("lbyl", "l2-norm", 0.5)
    expected, expected_report = prune_and_restore(module.net, "lbyl", "l2-norm", 0.5)
    _, val = tiny_loaders()
    metrics = quiet_trainer(callbacks=[callback]).validate(module, val, verbose=False)[0]
    assert module.net.ip1.weight.shape == (150, 784)  # the network shrank
    assert callback.report is not None and callback.report.params_after == expected_report.params_after
    assert callback.spec == module.net.lbyl_spec == expected.lbyl_spec
    for key, value in expected.state_dict().items():
        assert torch.equal(module.net.state_dict()[key], value)
    # the evaluation ran on the restored network
    x, y = next(iter(DataLoader(val.dataset, batch_size=len(val.dataset))))
    with torch.no_grad():
        acc = (expected.eval()(x).argmax(1) == y).float().mean().item() * 100
    assert metrics["val/acc1"] == pytest.approx(acc, abs=1e-4)
    assert original["ip1.weight"].shape == (300, 784)
    # restored parameters are ordinary (not inference-mode) tensors that can be trained afterwards
    assert all(not p.is_inference() and p.requires_grad for p in module.net.parameters())


def test_restore_callback_ignores_sanity_check():
    module = lenet_module()
    callback = RestoreCallback("prune", "l1-norm", 0.5)
    trainer = SimpleNamespace(sanity_checking=True, state=SimpleNamespace(fn="fit"))
    callback.on_validation_start(trainer, module)
    trainer = SimpleNamespace(sanity_checking=True, state=SimpleNamespace(fn="validate"))
    callback.on_validation_start(trainer, module)
    assert module.net.ip1.weight.shape == (300, 784)
    assert callback.report is None and callback.spec is None


class OptimizerShapes(Callback):
    def on_train_start(self, trainer, pl_module):
        params = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        self.optimizer_ids = {id(p) for p in params}
        self.net_ids = {id(p) for p in pl_module.net.parameters()}
        self.optimizer_shapes = sorted(tuple(p.shape) for p in params)
        self.net_shapes = sorted(tuple(p.shape) for p in pl_module.net.parameters())


def test_restore_callback_during_fit_restores_before_optimizer():
    module = lenet_module()
    callback = RestoreCallback("merge", "l2-norm", 0.5)
    probe = OptimizerShapes()
    train, val = tiny_loaders()
    quiet_trainer(max_epochs=1, callbacks=[callback, probe], num_sanity_val_steps=2).fit(module, train, val)
    assert module.net.ip1.weight.shape == (150, 784)
    assert callback.report is not None and callback.spec == module.net.lbyl_spec
    assert probe.optimizer_ids == probe.net_ids  # the optimizer trains the pruned parameters
    assert probe.optimizer_shapes == probe.net_shapes
    assert (150, 784) in probe.optimizer_shapes and (300, 784) not in probe.optimizer_shapes


def test_validate_then_fit_keeps_the_restored_network():
    """finetune.py validates (epoch 0 of the curve) and then fits with the same callback."""
    module = lenet_module()
    callback = RestoreCallback("lbyl", "l2-norm", 0.5)
    train, val = tiny_loaders()
    quiet_trainer(callbacks=[callback]).validate(module, val, verbose=False)
    spec = module.net.lbyl_spec
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    probe = OptimizerShapes()
    quiet_trainer(max_epochs=1, callbacks=[callback, probe]).fit(module, train, val)
    assert module.net.lbyl_spec == spec  # not pruned a second time
    assert probe.optimizer_ids == probe.net_ids
    assert any(not torch.equal(before[k], v) for k, v in module.net.state_dict().items())  # it trained


def test_scratch_init_reinitialises_deterministically():
    _, val = tiny_loaders()
    nets = []
    for init in ("restored", "scratch", "scratch"):
        module = lenet_module()
        callback = RestoreCallback("lbyl", "l2-norm", 0.5, init=init, seed=3)
        quiet_trainer(callbacks=[callback]).validate(module, val, verbose=False)
        nets.append(module.net.state_dict())
        assert module.net.lbyl_spec.get("init") == (None if init == "restored" else "scratch")
    restored, scratch, scratch_again = nets
    assert restored.keys() == scratch.keys()
    assert all(restored[k].shape == scratch[k].shape for k in restored)
    assert all(not torch.equal(restored[k], scratch[k]) for k in restored)
    assert all(torch.equal(scratch[k], scratch_again[k]) for k in scratch)
    # another seed, another initialisation
    module = lenet_module()
    RestoreCallback("lbyl", "l2-norm", 0.5, init="scratch", seed=4).apply(module)
    assert not torch.equal(module.net.state_dict()["ip1.weight"], scratch["ip1.weight"])


def test_restore_callback_apply_and_state_dict():
    module = lenet_module()
    callback = RestoreCallback("prune", "l2-norm", 0.3)
    callback.apply(module)
    assert module.net.ip1.weight.shape == (210, 784)
    state = callback.state_dict()
    assert state["spec"] == module.net.lbyl_spec and state["init"] == "restored"
    assert state["report"]["params_after"] == sum(p.numel() for p in module.net.parameters())
    fresh = RestoreCallback("prune", "l2-norm", 0.3)
    fresh.load_state_dict(state)
    assert fresh.spec == state["spec"]


# -- inside a LightningModule written here: its own attribute names, steps and metrics -----------------

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


# -- a budget: flops= instead of one ratio, units="all" ------------------------------------------------

class WideModule(UserModule):
    """Three 32-channel convs on 8x8 inputs: a budget's ratio steps (5 % of a unit) move one channel or more."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 16), nn.ReLU())

    def forward(self, x):
        return self.head(self.backbone(x))


class MetricsLogger(pl.loggers.Logger):
    """Keeps what is logged."""

    def __init__(self):
        super().__init__()
        self.metrics = {}

    name, version = "memory", 0

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


BUDGET = {"inputs": 4, "ratios": [0.5]}  # few inputs and one ratio per unit: a quick sensitivity measurement


def test_callback_with_a_flops_budget_keeps_that_fraction_of_the_flops(tmp_path):
    """The budget's inputs are distilled from the network's BatchNorm statistics inside validate (no data)."""
    torch.manual_seed(0)
    module = WideModule()
    randomize(module.backbone)
    original = module.backbone
    callback = RestoreCallback("lbyl", flops=0.5, budget=BUDGET, module="backbone")
    logger = MetricsLogger()
    pl.Trainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=str(tmp_path), callbacks=[callback]).validate(module, loader(), verbose=False)
    report = callback.report
    kept = report.flops_after / report.flops_before
    assert 0.45 < kept <= 0.5 and report.allocation.target == {"flops": 0.5}
    assert logger.metrics["restore/flops_kept"] == pytest.approx(kept)
    assert module.backbone.lbyl_spec["budget"]["flops"] == 0.5
    # the same network as prune_and_restore(flops=...) builds (the distilled inputs are cached per network)
    expected, expected_report = prune_and_restore(original, "lbyl", flops=0.5, budget=BUDGET,
                                                  example_inputs=torch.zeros(1, 3, 8, 8))
    assert module.backbone.lbyl_spec == expected.lbyl_spec and report.ratio == expected_report.ratio
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(module.backbone.eval()(x), expected.eval()(x))


def test_without_a_budget_nothing_more_is_logged(tmp_path):
    module = WideModule()
    randomize(module.backbone)
    logger = MetricsLogger()
    pl.Trainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=str(tmp_path), callbacks=[RestoreCallback("prune", "l2-norm", 0.5, module="backbone")]
               ).validate(module, loader(), verbose=False)
    assert "restore/flops_after" in logger.metrics and "restore/flops_kept" not in logger.metrics


class ResidualBackbone(nn.Module):
    """A stem whose channels a residual block adds to: a coupled group (the stream), pruned with units="all"."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def test_units_all_reaches_prune_and_restore():
    module = UserModule()
    module.backbone = ResidualBackbone()
    RestoreCallback("prune", "l2-norm", 0.5, module="backbone", units="all").apply(module)
    assert module.backbone.stem.weight.shape[0] == 4 and module.backbone.conv2.weight.shape[0] == 4  # the stream
    module = UserModule()
    module.backbone = ResidualBackbone()
    with pytest.raises(ValueError, match="coupled group 'stem'"):
        RestoreCallback("lbyl", "l2-norm", 0.5, module="backbone", units="all").apply(module)
