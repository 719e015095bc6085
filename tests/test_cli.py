"""End-to-end tests of the entry points (restore.py, train.py, finetune.py, report.py) on synthetic data,
called in-process through ``lbyl_pl.cli.<name>.cli(argv)``, and their handling of bad input."""
from __future__ import annotations

import csv
import json
import runpy
import sys

import pytest
import torch
import yaml

import lbyl_pl.data
from lbyl_pl import build_model, evaluate, load_restored
from lbyl_pl.cli import finetune, report, restore, train
from lbyl_pl.datamodules import SyntheticDataset
from pipeline_helpers import LENET, REPO, TINY, read_curve, state_dict_of, tiny_args

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENTRY_POINTS = {"restore": restore, "train": train, "finetune": finetune}
RESULT_FILES = ("table.md", "table.csv", "results.json", "finetune.json", "model.pth", "report.json")


def synthetic_eval_set(config: dict) -> SyntheticDataset:
    """The evaluation set the synthetic DataModule builds for this config."""
    s = config["data"]["synthetic"]
    return SyntheticDataset(s["num_eval"], s["channels"], s["image_size"], s["num_classes"], seed=2)


# -- restore.py --------------------------------------------------------------------------------------

def check_restore_outputs(out, methods, criteria, ratios) -> dict:
    for name in ("table.md", "table.csv", "results.json", "config.yaml"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    combos = [(r["method"], r["criterion"], r["ratio"]) for r in rows]
    expected = [(m, c, float(r)) for c in criteria for r in ratios for m in methods]
    assert sorted(combos) == sorted(expected) and len(combos) == len(expected)
    for row in rows + [results["original"]]:
        assert 0.0 <= row["acc1"] <= row["acc5"] <= 100.0
    with open(out / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["method"], t["criterion"], float(t["ratio"])) for t in table] == combos
    assert [float(t["acc1"]) for t in table] == [r["acc1"] for r in rows]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config == results["config"]
    assert config["output_dir"] == str(out)
    markdown = (out / "table.md").read_text()
    for criterion in criteria:
        assert f"## {criterion}" in markdown
    for ratio in ratios:
        assert f"| {ratio:.0%} |" in markdown
    return results


def test_restore_grid_lenet(tmp_path):
    out = tmp_path / "run"
    rc = restore.cli(tiny_args(out, *LENET, "restore.criteria=[l2-norm, l1-norm]", "restore.ratios=[0.3, 0.5]"))
    assert rc == 0
    results = check_restore_outputs(out, ["lbyl", "merge", "prune"], ["l2-norm", "l1-norm"], [0.3, 0.5])
    rows = {(r["method"], r["criterion"], r["ratio"]): r for r in results["rows"]}
    for method in ("lbyl", "merge", "prune"):
        for criterion in ("l2-norm", "l1-norm"):
            # a higher ratio leaves fewer parameters and FLOPs
            assert rows[method, criterion, 0.5]["params"] < rows[method, criterion, 0.3]["params"]
            assert rows[method, criterion, 0.5]["flops"] < rows[method, criterion, 0.3]["flops"]
    assert rows["merge", "l2-norm", 0.5]["threshold"] == pytest.approx(0.45)  # LeNet's NM default
    markdown = (out / "table.md").read_text()
    assert "| LBYL | NM | prune |" in markdown
    assert "0.45 / 0.85" in markdown  # the NM column shows NM's resolved threshold


def test_restore_vgg_saves_checkpoints_that_reload(tmp_path):
    out = tmp_path / "run"
    rc = restore.cli(tiny_args(out, "data.synthetic.num_train=16", "restore.save_checkpoints=true"))
    assert rc == 0
    results = check_restore_outputs(out, ["lbyl", "merge", "prune"], ["l2-norm"], [0.3])
    eval_set = synthetic_eval_set(results["config"])
    for row in results["rows"]:
        path = out / "restored" / f"{row['method']}_l2-norm_r0.3.pth"
        net = load_restored(path)
        assert net.lbyl_spec["method"] == row["method"] and net.lbyl_spec["ratio"] == 0.3
        assert sum(p.numel() for p in net.parameters()) == row["params"]
        # the table's accuracy (Lightning, torchmetrics) equals a plain evaluation of the saved network
        plain = evaluate(net, eval_set, batch_size=16)
        assert plain["n"] == 24
        assert row["acc1"] == pytest.approx(plain["top1"], abs=1e-3)
        assert row["acc5"] == pytest.approx(plain["top5"], abs=1e-3)
        assert torch.load(path, weights_only=True)["acc1"] == row["acc1"]


# -- train.py ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio,width", [(0.0, 300), (0.5, 150)])
def test_train_writes_model_that_restore_accepts(tmp_path, ratio, width):
    trained = tmp_path / "train"
    rc = train.cli(tiny_args(trained, *LENET, "data.synthetic.num_train=16", "trainer.max_epochs=1",
                             f"train.ratio={ratio}"))
    assert rc == 0
    model_path = (trained / "model.pth").resolve()
    info = json.loads((trained / "train.json").read_text())
    net = load_restored(model_path)
    assert net.ip1.weight.shape == (width, 784)
    assert (getattr(net, "lbyl_spec", None) is not None) == (ratio > 0)
    # model.pth holds the weights the trainer ended with (last.ckpt)
    last = state_dict_of(trained / "checkpoints" / "last.ckpt")
    saved = net.state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k[4:]: v.shape for k, v in last.items()}
    assert all(torch.equal(saved[k[4:]], v) for k, v in last.items())

    out = tmp_path / "restore"
    rc = restore.cli(tiny_args(out, *LENET, f"model.checkpoint={model_path}", "restore.methods=[lbyl, prune]"))
    assert rc == 0
    results = check_restore_outputs(out, ["lbyl", "prune"], ["l2-norm"], [0.3])
    plain = evaluate(net, synthetic_eval_set(results["config"]), batch_size=16)
    assert results["original"]["acc1"] == pytest.approx(plain["top1"], abs=1e-3)
    assert info["metrics"]["val/acc1"] == pytest.approx(plain["top1"], abs=1e-3)


# -- finetune.py and report.py -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def finetune_runs(tmp_path_factory):
    """Two finetune.py runs (restored LBYL, 2 epochs; scratch, 3 epochs) on LeNet + synthetic data."""
    base = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    runs = {"lbyl": base / "lbyl", "scratch": base / "scratch"}
    common = (*LENET, "data.synthetic.num_train=32", "model.checkpoint=random", "optim.lr=0.05")
    assert finetune.cli(tiny_args(runs["lbyl"], *common, "--epochs", "2")) == 0
    assert finetune.cli(tiny_args(runs["scratch"], *common, "--init", "scratch", "--epochs", "3")) == 0
    return runs


@pytest.mark.parametrize("kind,epochs", [("lbyl", 2), ("scratch", 3)])
def test_finetune_outputs(finetune_runs, kind, epochs):
    out = finetune_runs[kind]
    info = json.loads((out / "finetune.json").read_text())
    assert info["init"] == ("scratch" if kind == "scratch" else "restored")
    assert info["epochs"] == epochs and info["resumed"] is False
    assert info["method"] == "lbyl" and info["ratio"] == 0.5
    curve = read_curve(out)
    assert sorted(curve) == list(range(epochs + 1))  # epoch 0 = before any step, then every epoch
    assert all(0.0 <= v <= 100.0 for v in curve.values())
    assert curve[0] == pytest.approx(info["before_acc1"], abs=1e-4)
    assert curve[epochs] == pytest.approx(info["after"]["val/acc1"], abs=1e-4)
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2 * epochs  # 32 samples in batches of 16
    assert checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == epochs
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == epochs
    assert checkpoint["state_dict"]["net.ip1.weight"].shape == (150, 784)  # trained at the pruned width
    assert checkpoint["pruning_spec"].get("init") == ("scratch" if kind == "scratch" else None)


def test_finetune_scratch_differs_from_restored(finetune_runs):
    """Same pruned shapes, different starting weights: the epoch-0 evaluations are of different networks."""
    restored = state_dict_of(finetune_runs["lbyl"] / "checkpoints" / "last.ckpt")
    scratch = state_dict_of(finetune_runs["scratch"] / "checkpoints" / "last.ckpt")
    assert {k: v.shape for k, v in restored.items()} == {k: v.shape for k, v in scratch.items()}
    assert not torch.equal(restored["net.ip1.weight"], scratch["net.ip1.weight"])


def test_report_over_two_runs(finetune_runs, tmp_path, capsys):
    out = tmp_path / "report"
    rc = report.cli([str(finetune_runs["lbyl"]), str(finetune_runs["scratch"]), "--output-dir", str(out),
                     "--title", "tiny"])
    assert rc == 0
    for name in ("table.md", "table.csv", "report.json", "curves.png", "curves.csv"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC
    for run in ("lbyl", "scratch"):  # each run's resolved config is committed beside the table
        copied = out / "configs" / f"{finetune_runs[run].parent.name}_{finetune_runs[run].name}.yaml"
        assert copied.read_text() == (finetune_runs[run] / "config.yaml").read_text()
    data = json.loads((out / "report.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    assert set(rows) == {"LBYL", "Scratch"}
    assert rows["LBYL"]["epochs"] == 2 and rows["Scratch"]["epochs"] == 3
    for label, run in (("LBYL", "lbyl"), ("Scratch", "scratch")):
        curve = read_curve(finetune_runs[run])
        assert rows[label]["before"] == round(curve[0], 2)
        assert rows[label]["after"] == round(curve[max(curve)], 2)
        assert rows[label]["best"] == round(max(curve.values()), 2)
        assert data["curves"][f"{label} (r=0.5)"] == pytest.approx({str(k): v for k, v in curve.items()})
    with open(out / "table.csv", newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == [r["label"] for r in data["rows"]]
    markdown = (out / "table.md").read_text()
    assert markdown.startswith("# tiny") and "| LBYL | 50% | l2-norm | 2 |" in markdown
    assert "| Scratch | 50% | l2-norm | 3 |" in markdown
    # the curves as text: one row per epoch, a blank (CSV) or a dash (Markdown) where a run has stopped
    with open(out / "curves.csv", newline="") as f:
        per_epoch = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in per_epoch] == [0, 1, 2, 3]
    for label, run in (("LBYL", "lbyl"), ("Scratch", "scratch")):
        curve = read_curve(finetune_runs[run])
        for r in per_epoch:
            e = int(r["epoch"])
            assert r[label] == ("" if e not in curve else str(round(curve[e], 2)))
    assert per_epoch[3]["LBYL"] == ""
    last = round(read_curve(finetune_runs["scratch"])[3], 2)
    assert f"| 3 | – | {last:.2f} |" in markdown
    # a parent directory of runs is searched one level down
    again = tmp_path / "again"
    assert report.cli([str(finetune_runs["lbyl"].parent), "--output-dir", str(again)]) == 0
    assert json.loads((again / "report.json").read_text())["rows"] == data["rows"]


def test_overrides_and_options_intermixed(tmp_path):
    """KEY=VALUE overrides may come before, between and after options, as the --help epilog shows."""
    out = tmp_path / "run"
    argv = ["model.arch=lenet300", "--config", TINY, "data.synthetic.channels=1", "--output-dir", str(out),
            "data.synthetic.image_size=28", "--epochs", "1", "data.synthetic.num_train=16", "trainer.threads=1",
            "--init", "scratch", "trainer.enable_progress_bar=false"]
    assert finetune.cli(argv) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["arch"] == "lenet300" and config["data"]["synthetic"]["num_train"] == 16
    assert config["finetune"]["epochs"] == 1 and config["finetune"]["init"] == "scratch"
    assert config["data"]["synthetic"]["image_size"] == 28
    report_dir = tmp_path / "report"
    assert report.cli(["--output-dir", str(report_dir), str(out)]) == 0
    assert (report_dir / "table.md").is_file()


# -- --help ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["restore", "train", "finetune", "report"])
def test_help(name, capsys):
    module = {**ENTRY_POINTS, "report": report}[name]
    with pytest.raises(SystemExit) as exit_info:
        module.cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}.py")
    assert "--output-dir" in out


@pytest.mark.parametrize("name", ["restore", "train", "finetune", "report"])
def test_root_scripts_are_wrappers(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / f"{name}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name}.py")


# -- bad input: exit status 2, one clear line, nothing half-written ----------------------------------

def assert_usage_error(rc, capsys, out, *needles):
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # exactly one message, on one line
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    if out.exists():
        assert out.is_dir()
        for name in RESULT_FILES:
            assert not (out / name).exists(), name
        assert not (out / "restored").exists()
    return captured


def test_missing_dataset(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setattr(lbyl_pl.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-debian-dir")
    monkeypatch.delenv("LBYL_DATA", raising=False)
    out = tmp_path / "run"
    rc = restore.cli(tiny_args(out, "model.arch=lenet300", "data.name=fashion_mnist", f"data.root={empty}"))
    captured = assert_usage_error(rc, capsys, out, "Fashion-MNIST", "not found", str(empty))
    assert "original:" not in captured.out


def test_missing_dataset_finetune(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setattr(lbyl_pl.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-such-debian-dir")
    out = tmp_path / "run"
    rc = finetune.cli(tiny_args(out, "model.arch=lenet300", "data.name=fashion_mnist", f"data.root={empty}"))
    assert_usage_error(rc, capsys, out, "Fashion-MNIST", "not found")
    assert not (out / "checkpoints").exists()


def test_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "nope.pth"
    rc = restore.cli(tiny_args(out, *LENET, f"model.checkpoint={missing}"))
    assert_usage_error(rc, capsys, out, "checkpoint", "nope.pth", "not found")


def test_checkpoint_of_wrong_architecture(tmp_path, capsys):
    path = tmp_path / "lenet.pth"
    torch.save(build_model("lenet300").state_dict(), path)
    out = tmp_path / "run"
    rc = restore.cli(tiny_args(out, f"model.checkpoint={path}"))  # the tiny config's arch: vgg16_bn
    assert_usage_error(rc, capsys, out, "does not fit architecture 'vgg16_bn'", "lenet.pth")


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_unknown_config_key(tmp_path, capsys, name):
    out = tmp_path / "run"
    rc = ENTRY_POINTS[name].cli(tiny_args(out, *LENET, "trainer.bogus=1"))
    assert_usage_error(rc, capsys, out, "unknown config key 'trainer.bogus'", "allowed here:", "max_epochs")
    assert not out.exists()  # rejected before the run directory is made


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("override,needle", [("trainer.devices", "must look like key.sub=value"),
                                             ("trainer.devices=[1,", "value is not valid YAML"),
                                             ("trainer..devices=2", "empty key part")])
def test_bad_override_syntax(tmp_path, capsys, name, override, needle):
    out = tmp_path / "run"
    rc = ENTRY_POINTS[name].cli(tiny_args(out, override))
    assert_usage_error(rc, capsys, out, repr(override), needle)
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_invalid_yaml_file(tmp_path, capsys, name):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {devices: [1,\n")
    out = tmp_path / "run"
    rc = ENTRY_POINTS[name].cli(["--config", TINY, "--config", str(bad), "--output-dir", str(out)])
    assert_usage_error(rc, capsys, out, str(bad), "not valid YAML", "line 2, column 1")
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    out = tmp_path / "run"
    rc = restore.cli(["--config", str(tmp_path / "none.yaml"), "--output-dir", str(out)])
    assert_usage_error(rc, capsys, out, "none.yaml", "not found")


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_unwritable_output_dir(tmp_path, capsys, name):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file\n")
    out = blocker / "out"
    rc = ENTRY_POINTS[name].cli(tiny_args(out, *LENET))
    assert_usage_error(rc, capsys, out, "output directory", str(out), "not writable")
    assert blocker.read_text() == "a regular file\n"


def test_report_unwritable_output_dir(finetune_runs, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc = report.cli([str(finetune_runs["lbyl"]), "--output-dir", str(blocker / "out")])
    assert_usage_error(rc, capsys, blocker / "out", "not writable")


def test_report_without_runs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "report"
    rc = report.cli([str(empty), "--output-dir", str(out)])
    assert_usage_error(rc, capsys, out, "no finetune.py runs", str(empty))
    assert not (out / "table.md").exists() and not (out / "curves.png").exists()
    rc = report.cli([str(tmp_path / "missing"), "--output-dir", str(out)])
    assert_usage_error(rc, capsys, out, "missing", "is not a finetune.py run directory")


@pytest.mark.parametrize("override,needles", [
    ("restore.methods=[lbyl, ours]", ("unknown method 'ours'", "allowed: prune, merge, lbyl")),
    ("restore.ratios=[0.3, 1.5]", ("ratio must be a number in [0, 1), got 1.5",)),
    ("restore.criteria=[l3-norm]", ("unknown criterion 'l3-norm'",)),
    ("restore.lambdas.default=[1.0]", ("[lambda1, lambda2] pairs",)),
    ("restore.methods=[]", ("restore.methods must be a non-empty list", "got []")),
    ("restore.ratios=0.5", ("restore.ratios must be a non-empty list", "got 0.5")),
    ("restore.methods=lbyl", ("restore.methods must be a non-empty list", "got 'lbyl'")),
    ("restore.solver=lu", ("unknown solver 'lu'", "allowed: shared, batched, reference")),
])
def test_bad_restore_grid_fails_before_any_evaluation(tmp_path, capsys, override, needles):
    out = tmp_path / "run"
    rc = restore.cli(tiny_args(out, *LENET, override))
    captured = assert_usage_error(rc, capsys, out, *needles)
    assert "original:" not in captured.out  # checked before the (long) evaluation of the original network


@pytest.mark.parametrize("override,needles", [
    ("finetune.ratio=1.5", ("ratio must be a number in [0, 1), got 1.5",)),
    ("finetune.method=ours", ("unknown method 'ours'",)),
    ("finetune.init=pretrained", ("finetune.init must be one of restored, scratch", "'pretrained'")),
    ("optim.schedule=linear", ("unknown schedule 'linear'",)),
    ("restore.solver=float16", ("unknown solver 'float16'", "allowed: shared, batched, reference")),
])
def test_bad_finetune_settings(tmp_path, capsys, override, needles):
    out = tmp_path / "run"
    rc = finetune.cli(tiny_args(out, *LENET, override))
    assert_usage_error(rc, capsys, out, *needles)
    assert not (out / "checkpoints").exists()


def test_finetune_bad_init_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune.cli(tiny_args(tmp_path / "run", "--init", "pretrained"))
    assert exit_info.value.code == 2
    assert "invalid choice: 'pretrained'" in capsys.readouterr().err


def test_restore_hyperparameter_grid_selects_best_and_writes_reusable_config(tmp_path):
    out = tmp_path / "grid"
    rc = restore.cli(tiny_args(out, *LENET, "restore.ratios=[0.5]", "restore.methods=[lbyl, merge]",
                               "restore.grid.lambda2=[0.001, 1.0, 1000.0]", "restore.grid.threshold=[0.0, 2.0]"))
    assert rc == 0
    with open(out / "grid.csv", newline="") as f:
        tried = list(csv.DictReader(f))
    assert len(tried) == 3 + 2  # every lambda2 for LBYL, every threshold for NM
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for method, key in (("lbyl", "lambda2"), ("merge", "threshold")):
        candidates = [t for t in tried if t["method"] == method]
        best = max(float(t["acc1"]) for t in candidates)
        assert rows[method]["acc1"] == pytest.approx(best)
        first_best = next(t for t in candidates if float(t["acc1"]) == best)  # ties keep the first point
        assert rows[method][key] == pytest.approx(float(first_best[key]))
    selected = yaml.safe_load((out / "selected_hparams.yaml").read_text())
    assert selected["restore"]["lambdas"]["l2-norm"][0.5][1] == pytest.approx(rows["lbyl"]["lambda2"])
    # the selection is a config fragment: a second run with it reproduces the chosen rows without a grid
    again = tmp_path / "again"
    assert restore.cli(tiny_args(again, *LENET, "restore.ratios=[0.5]", "restore.methods=[lbyl, merge]")
                       + ["--config", str(out / "selected_hparams.yaml")]) == 0
    rows_again = {r["method"]: r for r in json.loads((again / "results.json").read_text())["rows"]}
    assert rows_again["lbyl"]["acc1"] == rows["lbyl"]["acc1"]
    assert rows_again["merge"]["acc1"] == rows["merge"]["acc1"]
    assert not (again / "grid.csv").exists()


def test_restore_torchvision_model_by_name_from_an_official_state_dict(tmp_path):
    """model.arch: torchvision/<name>; model.checkpoint a plain torchvision state dict."""
    net = build_model("torchvision/resnet18", num_classes=10, input_size=32)
    state = tmp_path / "resnet18-official.pth"
    torch.save(net.state_dict(), state)  # torchvision's own key names
    out = tmp_path / "run"
    rc = restore.cli(tiny_args(out, "model.arch=torchvision/resnet18", "model.input_size=32",
                               f"model.checkpoint={state}", "restore.save_checkpoints=true"))
    assert rc == 0
    results = check_restore_outputs(out, ["lbyl", "merge", "prune"], ["l2-norm"], [0.3])
    saved = load_restored(out / "restored" / "lbyl_l2-norm_r0.3.pth")
    assert saved.lbyl_arch == {"name": "torchvision/resnet18", "num_classes": 10, "input_size": 32}
    assert sum(p.numel() for p in saved.parameters()) == results["rows"][0]["params"]


def test_finetune_epoch0_is_evaluated_in_fp32_under_bf16_training(tmp_path):
    """trainer.eval_precision=32 (the default): epoch 0 of a bf16-mixed run equals the fp32 table."""
    table, tuned = tmp_path / "table", tmp_path / "tuned"
    assert restore.cli(tiny_args(table, "restore.methods=[lbyl]", "restore.ratios=[0.5]")) == 0
    assert finetune.cli(tiny_args(tuned, "trainer.precision=bf16-mixed", "--epochs", "1")) == 0
    fp32 = json.loads((table / "results.json").read_text())["rows"][0]["acc1"]
    before = json.loads((tuned / "finetune.json").read_text())["before_acc1"]
    assert before == pytest.approx(fp32, abs=1e-4)  # results.json rounds to 4 decimals


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, capsys):
    from lbyl_pl.cli import common
    config = {"trainer": {"accelerator": "cpu", "precision": "bf16-mixed"}}
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    common.warn_slow_bf16(config)
    err = capsys.readouterr().err
    assert "bf16 is emulated" in err and "use trainer.precision=32-true" in err
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
    common.warn_slow_bf16(config)
    common.warn_slow_bf16({"trainer": {"accelerator": "cpu", "precision": "32-true"}})
    assert capsys.readouterr().err == ""
