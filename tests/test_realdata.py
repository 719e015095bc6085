"""Reproduction on the shared checkpoints and datasets (docs/method.md §11); skipped when they are absent.

Run with ``LBYL_CHECKPOINTS=/path/to/checkpoints LBYL_DATA=/path/to/data``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lbyl_pl import build_model, evaluate, find_checkpoint, load_weights, prune_and_restore
from lbyl_pl.checkpoints import checkpoint_dir
from lbyl_pl.data import NORMALIZATION, ArrayImageDataset, data_dir, load_cifar10_npz, load_fashion_mnist

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

LENET_CKPT = "lenet300_fashionmnist_authors.pth.tar"
RESNET56_CKPT = "resnet56_cifar10_nm.pth.tar"
TOL = 0.02  # points of top-1 (docs/method.md §11)

# LBYL README table (l2-norm, lambda1 = 0): ratio -> (lambda2, LBYL, NM, prune). NM at 50 % is the
# measured 88.38; the published 87.86 repeats the prune figure (a known slip, docs/method.md §11).
LBYL_TABLE = {
    0.5: (0.3, 88.83, 88.38, 87.86),
    0.6: (0.6, 87.75, 88.07, 83.03),
    0.7: (0.3, 83.92, 83.27, 71.21),
    0.8: (1e-6, 78.05, 77.11, 63.90),
}
# Neuron Merging README (l1-norm): ratio -> (prune, merge)
NM_TABLE = {0.5: (88.40, 88.69), 0.6: (85.17, 86.92), 0.7: (71.26, 82.75), 0.8: (66.76, 80.02)}


def checkpoint_or_skip(name: str) -> Path:
    if not os.environ.get("LBYL_CHECKPOINTS") or not (checkpoint_dir() / name).is_file():
        pytest.skip(f"{name} not found; set LBYL_CHECKPOINTS")
    return find_checkpoint(name)


@pytest.fixture(scope="module")
def fashion_test():
    try:
        return load_fashion_mnist(None, train=False)
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def lenet():
    return load_weights(build_model("lenet300"), checkpoint_or_skip(LENET_CKPT)).eval()


def top1(model, dataset) -> float:
    result = evaluate(model, dataset, batch_size=2000)
    assert result["n"] == len(dataset)
    return result["top1"]


def test_lenet_original(lenet, fashion_test):
    assert len(fashion_test) == 10_000
    assert top1(lenet, fashion_test) == pytest.approx(89.80, abs=TOL)


@pytest.mark.parametrize("ratio", sorted(LBYL_TABLE))
def test_lenet_lbyl_table(lenet, fashion_test, ratio):
    lambda2, want_lbyl, want_nm, want_prune = LBYL_TABLE[ratio]
    got = {}
    restored, report = prune_and_restore(lenet, "lbyl", "l2-norm", ratio, lambda1=0.0, lambda2=lambda2)
    assert [u.kept for u in report.units] == [round(300 * (1 - ratio)), round(100 * (1 - ratio))]
    got["lbyl"] = top1(restored, fashion_test)
    restored, report = prune_and_restore(lenet, "merge", "l2-norm", ratio, threshold=None)
    assert report.hparams["threshold"] == 0.45
    got["merge"] = top1(restored, fashion_test)
    restored, _ = prune_and_restore(lenet, "prune", "l2-norm", ratio)
    got["prune"] = top1(restored, fashion_test)
    assert got == {"lbyl": pytest.approx(want_lbyl, abs=TOL), "merge": pytest.approx(want_nm, abs=TOL),
                   "prune": pytest.approx(want_prune, abs=TOL)}


@pytest.mark.parametrize("ratio", sorted(NM_TABLE))
def test_lenet_neuron_merging_readme_table(lenet, fashion_test, ratio):
    want_prune, want_merge = NM_TABLE[ratio]
    pruned, _ = prune_and_restore(lenet, "prune", "l1-norm", ratio)
    merged, _ = prune_and_restore(lenet, "merge", "l1-norm", ratio, threshold=None)
    got = {"prune": top1(pruned, fashion_test), "merge": top1(merged, fashion_test)}
    assert got == {"prune": pytest.approx(want_prune, abs=TOL), "merge": pytest.approx(want_merge, abs=TOL)}


def test_resnet56_original_on_lossless_subset():
    path = checkpoint_or_skip(RESNET56_CKPT)
    if not os.environ.get("LBYL_DATA") or not (data_dir() / "cifar10_lossless_subset.npz").is_file():
        pytest.skip("cifar10_lossless_subset.npz not found; set LBYL_DATA")
    images, labels = load_cifar10_npz(None, "lossless_test")
    assert images.shape == (1000, 32, 32, 3)
    dataset = ArrayImageDataset(images, labels, *NORMALIZATION["cifar10"])
    model = load_weights(build_model("resnet56"), path).eval()
    assert top1(model, dataset) == pytest.approx(93.1, abs=TOL)


def committed_rows(path: str, method: str, criterion: str = "l2-norm") -> list[dict]:
    import csv
    with open(Path(__file__).parent.parent / path) as f:
        return [r for r in csv.DictReader(f) if r["method"] == method and r["criterion"] == criterion]


# VGG16 at two ratios only (each evaluation of the 10,000 images takes ~40 s in CI); all 15 VGG cells were
# checked once by re-running restore.py (results/README.md §7, results/logs/discovery_verify.log).
@pytest.mark.parametrize("arch, checkpoint, split, table, channels_last, ratios", [
    ("vgg16_bn", "vgg16_cifar10.pth", "test", "results/vgg16_cifar10/paper_norms/table.csv", True, (0.3, 0.5)),
    ("resnet56", RESNET56_CKPT, "lossless_test", "results/resnet56_cifar10/lossless_test/table.csv", False,
     (0.1, 0.2, 0.3, 0.4, 0.5)),
])
def test_restoring_through_discovery_gives_the_committed_lbyl_table(arch, checkpoint, split, table, channels_last,
                                                                     ratios, all_threads):
    """Units now come from the traced graph: every committed LBYL value, params and FLOPs are unchanged."""
    path = checkpoint_or_skip(checkpoint)
    npz = "cifar10_lossless_subset.npz" if split == "lossless_test" else "cifar10_test.npz"
    if not os.environ.get("LBYL_DATA") or not (data_dir() / npz).is_file():
        pytest.skip(f"{npz} not found; set LBYL_DATA")
    images, labels = load_cifar10_npz(None, split)
    dataset = ArrayImageDataset(images, labels, *NORMALIZATION["cifar10"])
    model = load_weights(build_model(arch), path).eval()
    rows = committed_rows(table, "lbyl")
    assert len(rows) == 5
    for row in [r for r in rows if float(r["ratio"]) in ratios]:
        restored, report = prune_and_restore(model, "lbyl", "l2-norm", float(row["ratio"]),
                                             lambda1=float(row["lambda1"]), lambda2=float(row["lambda2"]))
        assert (report.params_after, report.flops_after) == (int(row["params"]), int(row["flops"]))
        net = ChannelsLast(restored) if channels_last else restored  # as in the table's config
        assert top1(net.eval(), dataset) == pytest.approx(float(row["acc1"]), abs=0.005), \
            row["ratio"]


class ChannelsLast(torch.nn.Module):
    """Evaluate as the tables were (``trainer.channels_last: true``, as ClassifierModule does it)."""

    def __init__(self, net):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.net(x.contiguous(memory_format=torch.channels_last))
