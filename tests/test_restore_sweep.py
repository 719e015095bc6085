"""restore.py's sweep: one Trainer, one ClassifierModule and one RestoreCallback (re-targeted per cell) for
the whole table, the unpruned network put back for every cell without a copy, one progress bar for the
sweep; under DDP every rank evaluates its shard but only rank zero prints and writes.

The multi-process runs go through ``python restore.py`` in a subprocess, as a user runs it (Lightning's
``ddp`` launcher starts the other ranks as copies of that command line); the 1-process baselines run
in-process.
"""
from __future__ import annotations

import importlib
import json
import subprocess

import pytest
import pytorch_lightning as pl
import torch

import lbyl_pl.cli.common
import lbyl_pl.discovery
import lbyl_pl.module
from lbyl_pl import build_model, evaluate, prune_and_restore, save_restored
from lbyl_pl.cli import restore
from lbyl_pl.datamodules import SyntheticDataset
from pipeline_helpers import LENET, PYTHON, REPO, subprocess_env, tiny_args

torch.set_num_threads(1)

# a random LeNet on 25 evaluation samples (an odd count: 3 ranks hold 9, 8 and 8 of them)
SETTINGS = (*LENET, "data.synthetic.num_eval=25", "data.eval_batch_size=4", "restore.ratios=[0.3, 0.5]")
CELLS = [(ratio, method) for ratio in ("0.3", "0.5") for method in ("LBYL", "NM", "prune")]


def cell_line(ratio: str, method: str) -> str:
    return f"  l2-norm r={ratio:<5} {method:>5}: top-1 "


def eval_set(config: dict) -> SyntheticDataset:
    s = config["data"]["synthetic"]
    return SyntheticDataset(s["num_eval"], s["channels"], s["image_size"], s["num_classes"], seed=2)


def test_one_trainer_one_module_and_no_copy_for_the_whole_sweep(tmp_path, monkeypatch, capsys):
    counts = {"trainer": 0, "module": 0, "build_model": 0, "discover": 0, "validate": 0}
    given = []  # every network put into the module

    class CountingTrainer(pl.Trainer):
        def __init__(self, *args, **kwargs):
            counts["trainer"] += 1
            super().__init__(*args, **kwargs)

        def validate(self, *args, **kwargs):
            counts["validate"] += 1
            return super().validate(*args, **kwargs)

    class CountingModule(restore.ClassifierModule):
        def __init__(self, *args, **kwargs):
            counts["module"] += 1
            super().__init__(*args, **kwargs)

        def set_net(self, net):
            given.append(net)
            super().set_net(net)

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(pl, "Trainer", CountingTrainer)
    monkeypatch.setattr(restore, "ClassifierModule", CountingModule)
    monkeypatch.setattr(lbyl_pl.module, "build_model", counted("build_model", lbyl_pl.module.build_model))
    monkeypatch.setattr(lbyl_pl.cli.common, "build_model", counted("build_model", lbyl_pl.cli.common.build_model))
    monkeypatch.setattr(lbyl_pl.discovery, "_discover", counted("discover", lbyl_pl.discovery._discover))

    out = tmp_path / "run"
    assert restore.cli(tiny_args(out, *SETTINGS)) == 0

    evaluations = 1 + len(CELLS)
    assert counts == {"trainer": 1, "module": 1, "build_model": 1, "discover": 1, "validate": evaluations}
    # the loaded network itself goes back into the module before every evaluation: never a copy ...
    assert len(given) == evaluations and all(net is given[0] for net in given)
    net = given[0]
    assert getattr(net, "lbyl_spec", None) is None
    # ... and the sweep left it as it was: the random LeNet the config's seed draws
    torch.manual_seed(0)
    reference = build_model("lenet300", 10)
    for key, value in reference.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key

    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("original: ") for line in printed) == 1
    for ratio, method in CELLS:
        assert sum(line.startswith(cell_line(ratio, method)) for line in printed) == 1, (ratio, method)

    # every cell was really restored (the "already restored" guard skipped none): its row is the
    # accuracy of prune_and_restore's network, evaluated here without Lightning
    results = json.loads((out / "results.json").read_text())
    data = eval_set(results["config"])
    assert results["original"]["acc1"] == pytest.approx(evaluate(reference, data)["top1"], abs=1e-3)
    for row in results["rows"]:
        hparams = restore.hyperparameters(results["config"], row["method"], row["criterion"], row["ratio"])
        restored, report = prune_and_restore(reference, row["method"], row["criterion"], row["ratio"], **hparams)
        assert row["params"] == report.params_after == sum(p.numel() for p in restored.parameters())
        assert row["flops"] == report.flops_after
        assert row["acc1"] == pytest.approx(evaluate(restored, data)["top1"], abs=1e-3), row
        assert row["acc5"] == pytest.approx(evaluate(restored, data)["top5"], abs=1e-3), row
    assert len({row["params"] for row in results["rows"]}) == 2  # two ratios, two widths


def test_one_progress_bar_for_the_sweep(tmp_path, capsys):
    out = tmp_path / "run"
    assert restore.cli(tiny_args(out, *SETTINGS, "trainer.enable_progress_bar=true")) == 0
    err = capsys.readouterr().err
    assert "restore sweep" in err and f"{1 + len(CELLS)}/{1 + len(CELLS)}" in err
    assert "Validation" not in err  # none of Lightning's per-evaluation bars


def test_a_pruned_checkpoint_is_pruned_further(tmp_path):
    """A network that carries a pruning spec (train.py with train.ratio > 0) is the starting point: every
    cell restores it (RestoreCallback would otherwise take it for already restored)."""
    torch.manual_seed(0)
    pruned, _ = prune_and_restore(build_model("lenet300", 10), "prune", "l2-norm", 0.5)
    path = tmp_path / "pruned.pth"
    save_restored(pruned, path)
    out = tmp_path / "run"
    assert restore.cli(tiny_args(out, *LENET, f"model.checkpoint={path}", "restore.methods=[lbyl, prune]")) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    expected = prune_and_restore(pruned, "prune", "l2-norm", 0.3)[1].params_after
    assert [row["params"] for row in rows] == [expected, expected]
    assert expected < sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("strategy,expected", [
    ("ddp_spawn", "ddp"), ("ddp_fork", "ddp"),
    ("ddp_spawn_find_unused_parameters_true", "ddp_find_unused_parameters_true"), ("ddp", "ddp"), ("auto", "auto"), ("ddp_notebook", "ddp_notebook"), ("ddp_spawnx", "ddp_spawnx")])
def test_sweep_strategy(strategy, expected):
    assert restore.sweep_strategy(strategy, relaunchable=True) == expected
    assert restore.sweep_strategy(strategy, relaunchable=False) == strategy  # restore.cli(argv) from Python


# -- several CPU processes ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("strategy,devices", [("ddp", 3), ("ddp_spawn", 2)])
def test_ranks_print_once_and_write_what_one_process_writes(tmp_path, strategy, devices):
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert restore.cli(tiny_args(single, *SETTINGS)) == 0
    args = tiny_args(multi, *SETTINGS, "trainer.enable_progress_bar=true", f"trainer.devices={devices}",
                     f"trainer.strategy={strategy}", "trainer.accelerator=cpu")
    result = subprocess.run([PYTHON, "restore.py", *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=840)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    out, err = result.stdout, result.stderr
    assert f"MEMBER: {devices}/{devices}" in err  # really that many processes

    lines = out.splitlines()
    assert sum(line.startswith("original: ") for line in lines) == 1, out
    for ratio, method in CELLS:
        assert sum(line.startswith(cell_line(ratio, method)) for line in lines) == 1, (ratio, method, out)
    assert out.count("# Data-free restoration") == 1
    # one bar for the sweep, drawn by rank zero; none of Lightning's
    assert "restore sweep" in err and f"{1 + len(CELLS)}/{1 + len(CELLS)}" in err
    assert "Validation" not in err
    evaluations = 1 + len(CELLS)  # the bar's first frame, drawn once per bar: one process draws one
    assert err.count(f"restore sweep:   0%|          | 0/{evaluations} [00:00<?, ?eval/s]") == 1, err
    if strategy == "ddp_spawn":
        assert err.count("note: restore.py evaluates with strategy ddp instead of ddp_spawn") == 1

    for name in ("table.md", "table.csv"):
        assert (multi / name).read_bytes() == (single / name).read_bytes(), name
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    one = json.loads((single / "results.json").read_text())
    many = json.loads((multi / "results.json").read_text())
    assert many["original"] == one["original"] and many["rows"] == one["rows"]
    assert 0 < one["original"]["acc1"] < 100  # exactness is only tested if not every sample counts the same
    assert many["config"]["trainer"]["strategy"] == strategy  # the config as given


def gaussian_inputs(original, options, seed, example_inputs, progress):
    """Stands in for the distillation from BatchNorm statistics (LeNet has none): seeded Gaussian inputs."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(options["n"], 1, 28, 28, generator=g),
            torch.randn(options["heldout"], 1, 28, 28, generator=g))


def test_flops_rows_follow_the_ratio_rows_and_change_nothing_else(tmp_path, monkeypatch, capsys):
    """restore.flops=[0.5]: one more row per criterion, "flops 0.5", every method's network pruned by the budget
    (prune_and_restore(flops=0.5)); the row records the FLOPs it kept. The ratio rows stay as they were."""
    # lbyl_pl.refit is also the name of a function in lbyl_pl: the module itself
    monkeypatch.setattr(importlib.import_module("lbyl_pl.refit"), "distilled_inputs", gaussian_inputs)
    budget = {"inputs": 4, "ratios": [0.5]}
    plain, flops = tmp_path / "plain", tmp_path / "flops"
    assert restore.cli(tiny_args(plain, *LENET)) == 0
    assert restore.cli(tiny_args(flops, *LENET, "restore.flops=[0.5]", "restore.budget.inputs=4",
                                 "restore.budget.ratios=[0.5]")) == 0
    printed = capsys.readouterr().out
    before, after = (json.loads((out / "results.json").read_text()) for out in (plain, flops))
    assert after["rows"][:3] == before["rows"] and after["original"] == before["original"]
    # the table: the ratio rows unchanged, then the budget's
    table, plain_table = (flops / "table.md").read_text(), (plain / "table.md").read_text()
    budget_lines = [line for line in table.splitlines() if "flops 0.5" in line]
    assert [line for line in table.splitlines() if line not in budget_lines] == plain_table.splitlines()
    assert budget_lines[0].startswith("| flops 0.5 | ") and budget_lines[1].startswith("| l2-norm | flops 0.5 | ")
    for method in ("LBYL", "NM", "prune"):
        assert f"  l2-norm flops=0.5 {method:>5}: top-1 " in printed

    torch.manual_seed(0)
    reference = build_model("lenet300", 10)
    data = eval_set(after["config"])
    assert [row["method"] for row in after["rows"][3:]] == ["lbyl", "merge", "prune"]
    for row in after["rows"][3:]:
        hparams = restore.hyperparameters(after["config"], row["method"], row["criterion"], None)
        restored, report = prune_and_restore(reference, row["method"], row["criterion"], flops=0.5, budget=budget,
                                             **hparams)
        assert row["flops_target"] == 0.5 and row["ratio"] == pytest.approx(report.ratio)
        assert row["params"] == report.params_after and row["flops"] == report.flops_after
        assert row["flops_kept"] == pytest.approx(report.flops_after / report.flops_before)
        assert 0.4 < row["flops_kept"] <= 0.5
        assert row["acc1"] == pytest.approx(evaluate(restored, data)["top1"], abs=1e-3), row
    assert "flops_kept" in (flops / "table.csv").read_text().splitlines()[0]


def test_a_bad_flops_entry_stops_restore_before_any_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    assert restore.cli(tiny_args(out, *LENET, "restore.flops=[0.5, 2]")) == 2
    err = capsys.readouterr().err
    assert "error: restore.flops: flops must be the fraction of the original flops to keep" in err and "got 2" in err
    assert not (out / "results.json").exists()


def test_retarget_checks_its_cell_and_forgets_the_last_restoration():
    callback = restore.RestoreCallback("prune", "l2-norm", 0.3)
    callback.report, callback.spec = object(), {}
    assert callback.retarget("merge", "l1-norm", 0.5, threshold=0.2) is callback
    assert (callback.method.name, callback.criterion, callback.ratio) == ("merge", "l1-norm", 0.5)
    assert callback.method.hparams["threshold"] == 0.2 and callback.report is None and callback.spec is None
    with pytest.raises(ValueError, match="unknown method 'ours'"):
        callback.retarget("ours")
    with pytest.raises(ValueError, match="ratio must be a number in"):
        callback.retarget("prune", "l2-norm", 1.5)
