"""Bad inputs fail early with a clear error that names the bad value."""
from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lbyl_pl.data
from lbyl_pl import build_model, discover_units, find_checkpoint, load_restored, load_weights, prune_and_restore
from lbyl_pl.checkpoints import KNOWN_CHECKPOINTS, read_checkpoint
from lbyl_pl.cli import finetune, restore, train
from lbyl_pl.cli.common import check_trainer_config
from lbyl_pl.config import ConfigError, load_config
from lbyl_pl.data import load_cifar10_npz, load_fashion_mnist
from lbyl_pl.methods.lbyl import lbyl_delivery
from lbyl_pl.restoration import restore_from_spec


@pytest.fixture
def lenet():
    return build_model("lenet300").eval()


@pytest.mark.parametrize("ratio,shown", [(-0.1, "-0.1"), (1.0, "1.0"), (1.5, "1.5"), (float("nan"), "nan"),
                                         ("0.3", "'0.3'"), (True, "True"), (None, "None")])
def test_bad_ratio(lenet, ratio, shown):
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\), got " + re.escape(shown)):
        prune_and_restore(lenet, "lbyl", "l2-norm", ratio)


def test_unknown_architecture_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg19'; allowed: lenet300, vgg16_bn, resnet56"):
        build_model("vgg19")


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        build_model("lenet300", num_classes=0)


def test_unknown_method_lists_allowed(lenet):
    with pytest.raises(ValueError, match=r"unknown method 'ours'; allowed: prune, merge, lbyl"):
        prune_and_restore(lenet, "ours", "l2-norm", 0.5)


def test_unknown_criterion_lists_allowed(lenet):
    with pytest.raises(ValueError, match=r"unknown criterion 'l3-norm'; allowed: l1-norm, l2-norm, l2-GM, "
                                         r"random_1, random_2, random_3"):
        prune_and_restore(lenet, "lbyl", "l3-norm", 0.5)


def test_unknown_variant_lists_allowed(lenet):
    with pytest.raises(ValueError, match=r"unknown variant 'theory'; allowed: paper, exact"):
        prune_and_restore(lenet, "lbyl", "l2-norm", 0.5, variant="theory")


def test_unknown_solver_lists_allowed(lenet):
    with pytest.raises(ValueError, match=r"unknown solver 'lu'; allowed: shared, batched"):
        prune_and_restore(lenet, "lbyl", "l2-norm", 0.5, solver="lu")


@pytest.mark.parametrize("name", ["lambda1", "lambda2"])
def test_negative_lambda(lenet, name):
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got -0.01"):
        prune_and_restore(lenet, "lbyl", "l2-norm", 0.5, **{name: -0.01})


def test_infinite_lambda(unit_tensors_factory):
    t = unit_tensors_factory(6, 8)
    with pytest.raises(ValueError, match="lambda2 must be a finite number >= 0, got inf"):
        lbyl_delivery(t, [0, 1, 2], lambda1=0.0, lambda2=float("inf"))


def test_negative_threshold(lenet):
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0, got -0.2"):
        prune_and_restore(lenet, "merge", "l2-norm", 0.5, threshold=-0.2)


def test_nm_lambda_above_one(tiny_net):
    with pytest.raises(ValueError, match=r"nm_lambda must be in \[0, 1\], got 1.5"):
        prune_and_restore(tiny_net(), "merge", "l2-norm", 0.5, nm_lambda=1.5)


def test_ratio_leaving_no_channel(lenet):
    with pytest.raises(ValueError, match=r"ratio=0.999 keeps 0 of 300 channels; at least one channel must remain"):
        prune_and_restore(lenet, "prune", "l2-norm", 0.999)


def test_nan_weights_in_model(tiny_net):
    model = tiny_net()
    with torch.no_grad():
        model.conv2.weight[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 'conv2' has NaN or Inf weights"):
        prune_and_restore(model, "lbyl", "l2-norm", 0.5)


def test_nan_in_bn_running_var(tiny_net):
    model = tiny_net()
    model.bn1.running_var[0] = float("nan")
    with pytest.raises(ValueError, match=r"BatchNorm after 'conv1' has NaN or Inf in its var"):
        prune_and_restore(model, "merge", "l2-norm", 0.5)


def test_model_without_example_inputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match=r"Sequential needs example inputs to find its prunable units"):
        prune_and_restore(model, "lbyl", "l2-norm", 0.5)


def test_model_without_any_unit_names_the_skipped_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(ValueError, match=r"Sequential has no prunable unit \(groups skipped: 1 reaches the output\)"):
        prune_and_restore(model, "lbyl", "l2-norm", 0.5, example_inputs=torch.zeros(1, 3, 8, 8))


def test_example_input_with_the_wrong_channel_count():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        prune_and_restore(model, "lbyl", "l2-norm", 0.5, example_inputs=torch.zeros(1, 1, 224, 224))
    message = str(err.value)
    assert message.startswith("example input of shape [1, 1, 224, 224] does not fit ResNet: its first layer conv1 "
                              "expects 3 input channels (RuntimeError: "), message
    assert "tracer" not in message and "\n" not in message
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_example_input_with_the_wrong_feature_count(lenet):
    with pytest.raises(ValueError, match=r"^example input of shape \[1, 1, 20, 20\] does not fit LeNet300: its "
                                         r"first layer ip1 expects 784 input features \(RuntimeError: "):
        discover_units(lenet, torch.zeros(1, 1, 20, 20))


def test_model_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        prune_and_restore({"ip1.weight": torch.zeros(3)}, "lbyl", "l2-norm", 0.5)


def test_kept_indices_out_of_range(lenet):
    with pytest.raises(ValueError, match=r"kept indices for 'ip2' must be distinct and in \[0, 100\)"):
        prune_and_restore(lenet, "prune", "l2-norm", 0.5, kept={"ip2": [0, 5, 100]})


def test_checkpoint_of_wrong_architecture(tmp_path, lenet):
    path = tmp_path / "lenet.pth"
    torch.save({"state_dict": lenet.state_dict()}, path)
    with pytest.raises(ValueError, match=r"does not fit architecture 'vgg16_bn': \d+ missing key\(s\), e\.g\. "
                                         r"\['classifier.*\d+ unexpected key\(s\), e\.g\. \['ip1\.bias'"):
        load_weights(build_model("vgg16_bn"), path)


def test_checkpoint_with_wrong_shapes(tmp_path):
    path = tmp_path / "lenet20.pth"
    torch.save(build_model("lenet300", num_classes=20).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatch.*ip3\.weight: checkpoint \(20, 100\) vs model \(10, 100\)"):
        load_weights(build_model("lenet300"), path)


def test_truncated_checkpoint(tmp_path, lenet):
    path = tmp_path / "lenet.pth"
    torch.save({"state_dict": lenet.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*lenet\.pth"):
        load_weights(build_model("lenet300"), path)


def test_checkpoint_with_nan(tmp_path, lenet):
    state = {k: v.clone() for k, v in lenet.state_dict().items()}
    state["ip2.bias"][3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"tensor 'ip2\.bias' contains NaN or Inf"):
        load_weights(build_model("lenet300"), path)


class Pickled:
    """Not a tensor, number, string, list or dict: only an unsafe (full) unpickling can rebuild it."""


@pytest.mark.parametrize("content,needle", [
    (lambda: {"state_dict": build_model("lenet300").state_dict(), "args": argparse.Namespace(lr=0.1)},
     "(GLOBAL argparse.Namespace)"),
    (lambda: {"state_dict": {}, "net": Pickled()}, f"(GLOBAL {__name__}.Pickled)"),
])
def test_checkpoint_holding_pickled_objects(tmp_path, content, needle):
    path = tmp_path / "full.pth"
    torch.save(content(), path)
    with pytest.raises(ValueError) as err:
        load_weights(build_model("lenet300"), path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} is not a weights-only checkpoint: it holds pickled Python "
                              "objects or code "), message
    assert needle in message and "lbyl-pl only loads weights-only files" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert "\n" not in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_is_not_a_weights_only_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    with pytest.raises(ValueError, match=r"is not a weights-only checkpoint: .*lbyl-pl only loads weights-only "
                                         r"files") as err:
        read_checkpoint(path)
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_not_a_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="holds a Tensor, expected a dict"):
        read_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint 'nothing\.pth' not found"):
        find_checkpoint("nothing.pth", tmp_path)


def test_sha256_mismatch(tmp_path):
    name = "lenet300_fashionmnist_authors.pth.tar"
    assert name in KNOWN_CHECKPOINTS
    (tmp_path / name).write_bytes(b"not the real checkpoint")
    expected = KNOWN_CHECKPOINTS[name][2]
    with pytest.raises(ValueError, match=f"has sha256 [0-9a-f]{{64}}, expected {expected}"):
        find_checkpoint(name, tmp_path)
    assert find_checkpoint(name, tmp_path, verify=False) == tmp_path / name


def test_load_restored_without_architecture(tmp_path, lenet):
    path = tmp_path / "plain.pth"
    torch.save(lenet.state_dict(), path)
    with pytest.raises(ValueError, match="does not record its architecture"):
        load_restored(path)


def test_spec_of_wrong_format(lenet):
    with pytest.raises(ValueError, match="not an lbyl-pl pruning spec"):
        restore_from_spec(lenet, {"format": "something-else", "units": {}})


def test_spec_naming_unknown_units(lenet):
    spec = {"format": "lbyl-pl/pruning-spec/v1", "units": {"feature.0": [0, 1]}}
    with pytest.raises(ValueError, match=r"units this model does not have: \['feature\.0'\]"):
        restore_from_spec(lenet, spec)


def test_missing_fashion_mnist_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(lbyl_pl.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-copy")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root))) as err:
        load_fashion_mnist(root)
    assert "t10k" in str(err.value)
    assert str(tmp_path / "no-debian-copy") in str(err.value)


def test_truncated_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(lbyl_pl.data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-copy")
    header = (2051).to_bytes(4, "big") + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(header + bytes(100))
    labels = (2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(10)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(ValueError, match=r"IDX header says \[10, 28, 28\] but the file holds 100 values"):
        load_fashion_mnist(tmp_path)


def test_unknown_cifar_split(tmp_path):
    with pytest.raises(ValueError, match=r"unknown CIFAR-10 split 'val'; allowed: train, test, lossless_test"):
        load_cifar10_npz(tmp_path, "val")


def test_missing_cifar_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "cifar10_test.npz"))):
        load_cifar10_npz(tmp_path, "test")


# -- trainer settings of the entry points -----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "synthetic_tiny.yaml")


def assert_one_line_error(rc, capsys, *needles):
    assert rc == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("entry_point", [restore, train, finetune], ids=lambda m: m.__name__.rpartition(".")[2])
def test_zero_devices_is_a_one_line_error(tmp_path, capsys, entry_point):
    out = tmp_path / "run"
    rc = entry_point.cli(["--config", TINY_CONFIG, "--output-dir", str(out), "trainer.devices=0"])
    assert_one_line_error(rc, capsys, "trainer.devices=0 is not allowed", "a positive number of devices",
                          "-1", "'auto'", "list")
    assert not out.exists()  # rejected before the run directory is made


@pytest.mark.parametrize("override,needle", [
    ("trainer.devices=[]", "trainer.devices=[] is not allowed"),
    ("trainer.devices=-2", "trainer.devices=-2 is not allowed"),
    ("trainer.devices=1.5", "trainer.devices=1.5 is not allowed"),
    ("trainer.devices=[0,0]", "trainer.devices=[0, 0] is not allowed"),
    ("trainer.devices=two", "trainer.devices='two' is not allowed"),
    ("trainer.devices=-1", "trainer.devices=-1 is not allowed with trainer.accelerator=cpu; use a positive"),
    ("trainer.devices=[0]", "trainer.devices=[0] is not allowed with trainer.accelerator=cpu"),
    ("trainer.num_nodes=0", "trainer.num_nodes=0 is not allowed; use a positive integer"),
    ("trainer.max_epochs=-5", "trainer.max_epochs=-5 is not allowed"),
    ("trainer.limit_val_batches=2.5", "trainer.limit_val_batches=2.5 is not allowed"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 is not allowed"),
    ("trainer.threads=0", "trainer.threads=0 is not allowed"),
    ("trainer.deterministic=maybe", "trainer.deterministic='maybe' is not allowed; use true, false or 'warn'"),
])
def test_bad_trainer_setting_is_a_one_line_error(tmp_path, capsys, override, needle):
    rc = restore.cli(["--config", TINY_CONFIG, "--output-dir", str(tmp_path / "run"), override])
    assert_one_line_error(rc, capsys, needle)


@pytest.mark.parametrize("devices", [1, 2, -1, "auto", [0], [0, 1]])
def test_good_devices_pass_the_check(devices):
    config = load_config([TINY_CONFIG], ["trainer.accelerator=gpu"])
    config["trainer"]["devices"] = devices
    check_trainer_config(config)
    config["trainer"]["devices"] = 0
    with pytest.raises(ConfigError, match="trainer.devices=0 is not allowed"):
        check_trainer_config(config)


def test_devices_the_automatic_accelerator_cannot_take_are_a_one_line_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine accelerator=auto takes device lists")
    rc = restore.cli(["--config", TINY_CONFIG, "--output-dir", str(tmp_path / "run"), "trainer.accelerator=auto",
                      "trainer.devices=[0]"])
    assert_one_line_error(rc, capsys, "trainer.devices=[0] does not suit the accelerator here "
                                      "(trainer.accelerator='auto')")


def test_zero_devices_from_the_command_line(tmp_path):
    """The issue's command: ``python restore.py --config configs/synthetic_tiny.yaml trainer.devices=0``."""
    result = subprocess.run([sys.executable, "restore.py", "--config", TINY_CONFIG, "--output-dir",
                             str(tmp_path / "run"), "trainer.devices=0"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: trainer.devices=0 is not allowed"), result.stderr
