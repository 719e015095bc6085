"""One source per concept: the default ratio, the data-free choice's defaults, the spec's key names and the one
reader of a spec from a checkpoint dict (which still reads the checkpoints written before it)."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytorch_lightning as pl
import pytest
import torch
from torch import nn

from lbyl_pl import RestoreCallback, load_restored, load_restored_checkpoint, load_weights, prune_and_restore
from lbyl_pl.checkpoints import save_restored
from lbyl_pl.config import load_config
from lbyl_pl.selection import DEFAULT_RATIO
from lbyl_pl.spec import (RESTORE_KEY, SPEC_ATTR, SPEC_KEY, checkpoint_entries, checkpoint_spec, restored_submodule,
                          state_dict_and_spec)

ROOT = Path(__file__).resolve().parent.parent


# -- defaults ------------------------------------------------------------------------------------------

def _default(function, name):
    return inspect.signature(function).parameters[name].default


def test_the_default_ratio_has_one_source():
    assert DEFAULT_RATIO == 0.5
    assert _default(prune_and_restore, "ratio") == DEFAULT_RATIO
    assert _default(RestoreCallback.__init__, "ratio") == DEFAULT_RATIO
    assert _default(RestoreCallback.retarget, "ratio") == DEFAULT_RATIO
    config = load_config([], [])
    assert config["restore"]["ratios"] == [DEFAULT_RATIO] and config["finetune"]["ratio"] == DEFAULT_RATIO
    # no other literal default: every `ratio: float = ...` in the package names the constant
    for path in sorted((ROOT / "lbyl_pl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults)) + \
                    [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                for arg, default in pairs:
                    if arg.arg == "ratio":
                        assert not isinstance(default, ast.Constant), \
                            f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(ratio={default.value})"


def test_the_data_free_defaults_of_the_config_come_from_distill_and_data_free():
    from lbyl_pl import data_free, distill

    auto = load_config([], [])["restore"]["auto"]
    assert auto == {"n": distill.DEFAULT_N, "iterations": distill.DEFAULT_ITERATIONS,
                    "metric": data_free.DEFAULT_METRIC}
    search = data_free.auto_hparams_search
    assert (_default(search, "n"), _default(search, "iterations"), _default(search, "metric")) == \
        (auto["n"], auto["iterations"], auto["metric"])
    assert data_free.DEFAULT_METRIC in data_free.SCORES


# -- the spec's names ------------------------------------------------------------------------------------

def test_the_spec_key_names_are_written_in_one_module():
    """The checkpoint keys and the attribute name are spelled in ``lbyl_pl/spec.py`` only."""
    names = {SPEC_KEY: {"lbyl_pl/spec.py"}, RESTORE_KEY: {"lbyl_pl/spec.py"}, SPEC_ATTR: {"lbyl_pl/spec.py"}}
    found = {name: set() for name in names}
    for path in sorted((ROOT / "lbyl_pl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found[node.value].add(str(path.relative_to(ROOT)))
            elif isinstance(node, ast.Attribute) and node.attr == SPEC_ATTR:  # net.lbyl_spec
                found[SPEC_ATTR].add(str(path.relative_to(ROOT)))
    for name, allowed in names.items():
        assert found[name] <= allowed, f"{name!r} spelled outside lbyl_pl/spec.py: {sorted(found[name] - allowed)}"
    # the files keep their keys: what was written before this module existed reads the same
    assert (SPEC_ATTR, SPEC_KEY, RESTORE_KEY) == ("lbyl_spec", "pruning_spec", "lbyl_restore")


def test_the_spec_names_are_a_leaf_module():
    from test_import_graph import import_graph

    assert import_graph()["lbyl_pl.spec"] == set()


# -- one reader ------------------------------------------------------------------------------------------

SPEC = {"format": "lbyl-pl/pruning-spec/v1", "units": {"conv": [0, 1]}}
WEIGHTS = {"net.conv.weight": torch.ones(2, 3), "net.conv.bias": torch.zeros(2)}


@pytest.mark.parametrize("checkpoint,state_keys,spec", [
    ({"state_dict": {"w": torch.ones(1)}, "pruning_spec": SPEC, "arch": None}, ["w"], SPEC),  # save_restored
    ({"state_dict": WEIGHTS, "pruning_spec": SPEC, "lbyl_restore": {"module": "net", "spec": SPEC}},  # callback
     ["conv.weight", "conv.bias"], SPEC),
    ({"state_dict": WEIGHTS, "lbyl_restore": {"module": "net", "spec": SPEC}}, ["conv.weight", "conv.bias"], SPEC),
    ({"state_dict": WEIGHTS, "pruning_spec": None, "hyper_parameters": {"pruning_spec": SPEC}},  # ClassifierModule
     ["conv.weight", "conv.bias"], SPEC),
    ({"state_dict": {"module.w": torch.ones(1)}}, ["w"], None),  # DataParallel, no spec
    ({"w": torch.ones(1)}, ["w"], None),  # a plain state dict
])
def test_one_reader_for_every_checkpoint_dict(checkpoint, state_keys, spec):
    state, found = state_dict_and_spec(checkpoint)
    assert list(state) == state_keys and found == spec == checkpoint_spec(checkpoint)
    if "state_dict" in checkpoint:
        whole, _ = state_dict_and_spec(checkpoint, network=False)
        assert whole is checkpoint["state_dict"]  # a LightningModule's, prefixes kept
    with pytest.raises(ValueError, match="no state dict of tensors"):
        state_dict_and_spec({"state_dict": {"w": "x"}, "pruning_spec": SPEC})


def test_the_writers_keep_the_keys_files_always_had(tmp_path, tiny_net):
    assert checkpoint_entries(SPEC) == {"pruning_spec": SPEC}
    assert checkpoint_entries(SPEC, module="backbone") == {"pruning_spec": SPEC,
                                                          "lbyl_restore": {"module": "backbone", "spec": SPEC}}
    assert restored_submodule(checkpoint_entries(SPEC, module="backbone")) == "backbone"
    assert restored_submodule(checkpoint_entries(SPEC)) is None
    restored, _ = prune_and_restore(tiny_net(), "lbyl", "l2-norm", 0.5)
    save_restored(restored, tmp_path / "r.pth", acc1=1.0)
    raw = torch.load(tmp_path / "r.pth", map_location="cpu", weights_only=True)
    assert list(raw) == ["state_dict", "pruning_spec", "arch", "acc1"] and raw["pruning_spec"] == restored.lbyl_spec


class Wrapper(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 4, 3, padding=1))
        self.backbone.example_input_size = (1, 3, 6, 6)
        with torch.no_grad():
            self.backbone[1].running_var.uniform_(0.5, 1.5)
            self.backbone[1].weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.backbone(x)


def test_checkpoints_written_before_still_load(tmp_path):
    """Files as RestoreCallback and save_restored have written them (keys spelled out here, not taken from
    lbyl_pl.spec) load through the one reader: load_restored_checkpoint, load_weights and load_restored."""
    module = Wrapper()
    callback = RestoreCallback("lbyl", "l2-norm", 0.5)
    callback.apply(module)
    spec = module.backbone.lbyl_spec
    written = {}
    callback.on_save_checkpoint(None, module, written)
    assert written == {"pruning_spec": spec, "lbyl_restore": {"module": "backbone", "spec": spec}}
    old = {"state_dict": module.state_dict(), "pruning_spec": spec,
           "lbyl_restore": {"module": "backbone", "spec": spec}, "hyper_parameters": {}}
    torch.save(old, tmp_path / "old.ckpt")
    loaded = load_restored_checkpoint(Wrapper(), tmp_path / "old.ckpt")
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert loaded.backbone.lbyl_spec == spec
    with pytest.raises(ValueError, match=r"not written with a RestoreCallback \(no 'lbyl_restore' entry\)"):
        torch.save({"state_dict": module.state_dict(), "pruning_spec": spec}, tmp_path / "plain.ckpt")
        load_restored_checkpoint(Wrapper(), tmp_path / "plain.ckpt")

    torch.save({"state_dict": module.backbone.state_dict(), "pruning_spec": spec, "arch": None}, tmp_path / "old.pth")
    for net in (load_weights(Wrapper().backbone, tmp_path / "old.pth"),
                load_restored(tmp_path / "old.pth", model=Wrapper().backbone)):
        assert net.lbyl_spec == spec and net[0].out_channels == 4
        for key, value in module.backbone.state_dict().items():
            assert torch.equal(net.state_dict()[key], value)
