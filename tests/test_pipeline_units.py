"""Fast unit tests of the Lightning pipeline: config merging, samplers, seeded augmentation, the
ClassifierModule (metrics, checkpoints) and the RestoreCallback."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch.utils.data import DataLoader, TensorDataset

from lbyl_pl import build_model, prune_and_restore
from lbyl_pl.callbacks import RestoreCallback
from lbyl_pl.config import DEFAULTS, ConfigError, apply_override, load_config, lookup_ratio
from lbyl_pl.datamodules import AugmentedDataset, EpochSampler, EvalShardSampler, SyntheticDataset
from lbyl_pl.module import ClassifierModule
from pipeline_helpers import LogitsNet, quiet_trainer

torch.set_num_threads(1)


# -- config ------------------------------------------------------------------------------------------

def test_files_merge_in_order_then_overrides(tmp_path):
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text("seed: 3\ndata: {name: synthetic, batch_size: 32}\n"
                     "optim: {lr: 0.5, weight_decay: 1e-4, milestones: [1, 2]}\n")
    second.write_text("data: {batch_size: 8}\noptim: {milestones: [5]}\n")
    config = load_config([first, second], ["optim.lr=1e-3", "restore.ratios=[0.1, 0.5]",
                                           "trainer.devices=2", "model.checkpoint=null", "data.root=/x/y"])
    assert config["seed"] == 3                       # from the first file, untouched by the second
    assert config["data"]["name"] == "synthetic"
    assert config["data"]["batch_size"] == 8         # the later file wins
    assert config["data"]["eval_batch_size"] == DEFAULTS["data"]["eval_batch_size"]  # defaults kept
    assert config["optim"]["milestones"] == [5]      # lists are replaced, not merged
    # exponents without a dot are floats (plain YAML 1.1 would read them as strings)
    assert config["optim"]["lr"] == pytest.approx(1e-3) and isinstance(config["optim"]["lr"], float)
    assert config["optim"]["weight_decay"] == pytest.approx(1e-4)
    assert isinstance(config["optim"]["weight_decay"], float)
    assert config["restore"]["ratios"] == [0.1, 0.5]  # values parsed as YAML
    assert config["trainer"]["devices"] == 2 and isinstance(config["trainer"]["devices"], int)
    assert config["model"]["checkpoint"] is None
    assert config["data"]["root"] == "/x/y"
    assert DEFAULTS["data"]["batch_size"] == 128     # DEFAULTS never mutated


def test_override_order_last_wins():
    config = load_config([], ["seed=1", "seed=2"])
    assert config["seed"] == 2
    apply_override(config, "data.synthetic.num_eval=5")  # in place, nested
    apply_override(config, "data.root=")  # an empty value is null
    assert config["data"]["synthetic"]["num_eval"] == 5 and config["data"]["synthetic"]["num_train"] == 64
    assert config["data"]["root"] is None


@pytest.mark.parametrize("override,key,allowed", [
    ("trainer.bogus=1", "trainer.bogus", "accelerator, channels_last"),
    ("bogus=1", "bogus", "data, finetune, model, optim"),
    ("data.synthetic.pixels=4", "data.synthetic.pixels", "channels, image_size, num_classes"),
])
def test_unknown_key_names_key_and_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    message = str(err.value)
    assert repr(key) in message
    assert f"allowed here: {allowed}" in message


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.1, momentun: 0.9}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.momentun'; allowed here: .*momentum"):
        load_config([path])


def test_section_must_be_mapping():
    with pytest.raises(ConfigError, match="config section trainer must be a mapping"):
        load_config([], ["trainer=3"])


@pytest.mark.parametrize("override", ["trainer.devices", "=3", "trainer..devices=2", "trainer.devices=[1,"])
def test_bad_override_syntax(override):
    with pytest.raises(ConfigError, match="override"):
        load_config([], [override])


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {devices: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config([bad])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])


def test_free_form_lambda_maps(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text("restore:\n  lambdas:\n    l2-norm: {0.5: [1.0e-5, 0.02], default: [0.0, 0.1]}\n"
                    "    default: [1.0e-6, 1.0e-2]\n  nm: {l1-norm: {0.3: [0.2, 0.7]}}\n")
    later = tmp_path / "m.yaml"
    later.write_text("restore: {nm: {default: [0.1, 0.85]}}\n")
    config = load_config([path, later], ["restore.lambdas.random_1={0.7: [1, 2]}",
                                         "restore.lambdas.l2-norm={0.5: [2.0e-5, 0.03]}"])
    lambdas = config["restore"]["lambdas"]
    # any key is accepted inside these maps, and they merge entry by entry (an override naming one
    # criterion must not silently drop the other criteria's tables)
    assert lambdas == {"l2-norm": {0.5: [2e-5, 0.03], "default": [0.0, 0.1]},
                       "default": [1e-6, 1e-2], "random_1": {0.7: [1, 2]}}
    assert config["restore"]["nm"] == {"l1-norm": {0.3: [0.2, 0.7]}, "default": [0.1, 0.85]}
    assert DEFAULTS["restore"]["lambdas"] == {} and DEFAULTS["restore"]["nm"] == {}
    with pytest.raises(ConfigError, match="restore.lambdas must be a mapping or 'auto', got 3"):
        load_config([], ["restore.lambdas=3"])


def test_lookup_ratio_fallbacks():
    table = {"l2-norm": {0.5: [1, 2], "0.3": [3, 4], "default": [5, 6]},
             "l1-norm": {0.5: [7, 8]},
             "default": [9, 10]}
    assert lookup_ratio(table, "l2-norm", 0.5, "restore.lambdas") == [1, 2]
    assert lookup_ratio(table, "l2-norm", 0.3, "restore.lambdas") == [3, 4]  # string keys too
    assert lookup_ratio(table, "l2-norm", 0.5 + 1e-12, "restore.lambdas") == [1, 2]  # float tolerance
    assert lookup_ratio(table, "l2-norm", 0.7, "restore.lambdas") == [5, 6]  # criterion default
    assert lookup_ratio(table, "l1-norm", 0.7, "restore.lambdas") == [9, 10]  # global default
    assert lookup_ratio(table, "l2-GM", 0.5, "restore.lambdas") == [9, 10]
    assert lookup_ratio({"l1-norm": {0.5: [7, 8]}}, "l1-norm", 0.1, "restore.lambdas") is None
    assert lookup_ratio({}, "l1-norm", 0.1, "restore.lambdas") is None
    with pytest.raises(ConfigError, match=r"restore.nm.l2-norm must map ratios to values, got \[1, 2\]"):
        lookup_ratio({"l2-norm": [1, 2]}, "l2-norm", 0.5, "restore.nm")


# -- samplers ----------------------------------------------------------------------------------------

def decode(indices, size):
    return [i % size for i in indices], {i // size for i in indices}


def test_epoch_sampler_seeded_per_epoch():
    size = 37
    sampler = EpochSampler(size, seed=5)
    sampler.set_epoch(3)
    first, second = list(sampler), list(sampler)
    assert first == second  # same epoch -> same order
    again = EpochSampler(size, seed=5)
    again.set_epoch(3)
    assert list(again) == first  # a fresh sampler (a resumed run) agrees
    indices, epochs = decode(first, size)
    assert epochs == {3}  # the epoch is encoded for the dataset
    assert sorted(indices) == list(range(size))  # a permutation of the dataset
    sampler.set_epoch(4)
    other, _ = decode(list(sampler), size)
    assert other != indices  # a new epoch reshuffles
    other_seed = EpochSampler(size, seed=6)
    other_seed.set_epoch(3)
    assert decode(list(other_seed), size)[0] != indices


@pytest.mark.parametrize("size", [10, 11, 37])
def test_epoch_sampler_two_rank_shards(size):
    shards = []
    for rank in range(2):
        s = EpochSampler(size, seed=0, rank=rank, world_size=2)
        s.set_epoch(2)
        shards.append(decode(list(s), size)[0])
        assert len(s) == len(shards[-1]) == (size + 1) // 2
    assert len(shards[0]) == len(shards[1])  # padded to equal length (DDP needs equal step counts)
    assert set(shards[0]) | set(shards[1]) == set(range(size))  # every sample is seen
    overlap = set(shards[0]) & set(shards[1])
    assert len(overlap) == (size % 2)  # only the padding sample is duplicated
    # the union of the shards, interleaved, is the 1-process order (padded)
    single = EpochSampler(size, seed=0)
    single.set_epoch(2)
    order = decode(list(single), size)[0]
    interleaved = [x for pair in zip(*shards) for x in pair]
    assert interleaved[:size] == order


@pytest.mark.parametrize("size", [1, 24, 25])
def test_eval_shard_sampler_exact(size):
    shards = [list(EvalShardSampler(size, rank, 2)) for rank in range(2)]
    assert len(EvalShardSampler(size, 0, 2)) == len(shards[0])
    combined = shards[0] + shards[1]
    assert len(combined) == len(set(combined)) == size  # no duplicates, nothing padded
    assert sorted(combined) == list(range(size))
    assert list(EvalShardSampler(size)) == list(range(size))


def test_augmented_dataset_deterministic():
    base = SyntheticDataset(6, 3, 8, 10, seed=0)
    aug = AugmentedDataset(base, seed=1, crop_padding=2, flip=True)
    encoded = 2 * len(base) + 4  # epoch 2, index 4
    x1, y1 = aug[encoded]
    x2, y2 = AugmentedDataset(base, seed=1, crop_padding=2, flip=True)[encoded]
    assert torch.equal(x1, x2) and int(y1) == int(y2) == int(base.y[4])
    assert x1.shape == base.x[4].shape
    # another epoch, index or seed gives another draw (over several samples, at least one differs)
    views = lambda ds, epoch: torch.stack([ds[epoch * len(base) + i][0] for i in range(len(base))])  # noqa: E731
    assert not torch.equal(views(aug, 2), views(aug, 3))
    assert not torch.equal(views(aug, 2), views(AugmentedDataset(base, seed=2, crop_padding=2, flip=True), 2))
    # without augmentation, the encoded index just decodes to the sample
    plain = AugmentedDataset(base, seed=1)
    assert torch.equal(plain[encoded][0], base.x[4])


# -- ClassifierModule --------------------------------------------------------------------------------

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


def tiny_loaders(n=8, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(ds, batch_size=batch), DataLoader(ds, batch_size=batch)


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


# -- RestoreCallback ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,shown", [
    ({"method": "ours"}, "'ours'"), ({"init": "pretrained"}, "'pretrained'"),
    ({"criterion": "l3-norm"}, "'l3-norm'"), ({"ratio": 1.5}, "1.5"), ({"variant": "theory"}, "'theory'"),
    ({"lambda1": -1.0}, "-1.0"), ({"lambda2": float("inf")}, "inf"),
    ({"method": "merge", "threshold": -0.5}, "-0.5"), ({"method": "merge", "nm_lambda": 1.5}, "1.5"),
    ({"method": "fusion", "producer": "median"}, "'median'"), ({"method": "fusion", "cost_p": 0.5}, "0.5"),
    # a hyperparameter of another method is an error naming its owner, not silently ignored
    ({"method": "prune", "lambda1": 1e-6}, "lambda1 belongs to lbyl"),
    ({"method": "lbyl", "threshold": 0.1}, "threshold belongs to merge"),
])
def test_restore_callback_bad_arguments(kwargs, shown):
    with pytest.raises(ValueError) as err:
        RestoreCallback(**kwargs)
    assert shown in str(err.value)


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
