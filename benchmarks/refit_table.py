"""Top-1 of every method without and with the refit on distilled inputs (and, as a reference that uses data, on
128 real training images), on the real checkpoints and on our own small CNNs.

    python benchmarks/refit_table.py resnet56 --methods prune,merge,lbyl,fusion --ratios 0.1,0.2,0.3,0.4,0.5 \\
        --refit none,distilled,real --csv results/refit/resnet56/table.csv

    # choosing defaults: one start method, refit options varied, evaluated on held-out *training* images
    python benchmarks/refit_table.py mixnet --split holdout --methods lbyl --ratios 0.3,0.5 --refit distilled \\
        --options '{"stats": "image"}' '{"stats": "batch"}' --csv results/refit/defaults/mixnet.csv

Networks and the images they are evaluated on:

- ``resnet56``: Neuron Merging's checkpoint, 1,000 lossless CIFAR-10 test images (real refit inputs: lossless
  training images);
- ``vgg16_bn``: the shared VGG16-BN, all 10,000 images of the JPEG q75 test copy (real inputs: JPEG training copy);
- ``lenet300``: the authors' LeNet-300-100, the 10,000 Fashion-MNIST test images;
- ``mixnet`` / ``stridenet``: ``benchmarks/small_cnns.py``, trained by ``benchmarks/train_small_cnn.py`` on
  45,000 JPEG training images; ``--split test`` is the 10,000 JPEG test images, ``--split holdout`` the 5,000
  training images left out of their training (where the refit's defaults are chosen, never on the test set).

Rows are appended to ``--csv`` as they are measured and a row already there is not measured again (resumable).
The refit reads no data unless ``--refit real``: its inputs are distilled from the network's BatchNorm statistics.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import set_thread_env  # noqa: E402

RUNS = Path(os.environ.get("LBYL_RUNS", "/root/lbyl_runs"))
FIELDS = ["net", "split", "method", "criterion", "ratio", "refit", "options", "acc1", "params", "flops",
          "kl_before", "kl_after", "distill_s", "refit_s", "restore_s"]


def load_net(name: str):
    import torch
    from lbyl_pl import build_model, find_checkpoint, load_weights
    if name in ("mixnet", "stridenet"):
        from small_cnns import SMALL_CNNS
        net = SMALL_CNNS[name]()
        state = torch.load(RUNS / "small" / f"{name}.pth", map_location="cpu", weights_only=True)
        net.load_state_dict(state["state_dict"])
        return net.eval()
    files = {"resnet56": "resnet56_cifar10_nm.pth.tar", "vgg16_bn": "vgg16_cifar10.pth",
             "lenet300": "lenet300_fashionmnist_authors.pth.tar"}
    return load_weights(build_model(name), find_checkpoint(files[name])).eval()


def sample(dataset, order):
    """The first 128 images of ``dataset`` in ``order``: the real inputs of the data-using reference."""
    import torch
    return torch.stack([dataset[int(i)][0] for i in order[:128]])


def eval_set(name: str, split: str):
    """(evaluation dataset, 128 real training images for the data-using reference)."""
    import torch
    from lbyl_pl.data import NORMALIZATION, ArrayImageDataset, load_cifar10_npz, load_fashion_mnist
    if name == "lenet300":
        test = load_fashion_mnist(train=False)
        train = load_fashion_mnist(train=True)
        g = torch.Generator().manual_seed(0)
        real = sample(train, torch.randperm(len(train), generator=g))
        return test, real
    mean, std = NORMALIZATION["cifar10"]
    g = torch.Generator().manual_seed(0)
    if name == "resnet56":
        test = ArrayImageDataset(*load_cifar10_npz(None, "lossless_test"), mean, std)
        train = ArrayImageDataset(*load_cifar10_npz(None, "lossless_train"), mean, std)
        real = sample(train, torch.randperm(len(train), generator=g))
        return test, real
    images, labels = load_cifar10_npz(None, "train")
    train = ArrayImageDataset(images, labels, mean, std)
    if name in ("mixnet", "stridenet"):
        from train_small_cnn import holdout_split
        kept, held = holdout_split(len(train), 5000)
        real = sample(train, kept[torch.randperm(len(kept), generator=g)])
        if split == "holdout":
            return ArrayImageDataset(images[held.numpy()], labels[held.numpy()], mean, std), real
    else:
        if split == "holdout":
            raise SystemExit(f"--split holdout is only for our own networks (mixnet, stridenet), not {name}")
        real = sample(train, torch.randperm(len(train), generator=g))
    return ArrayImageDataset(*load_cifar10_npz(None, "test"), mean, std), real


def measured_keys(path: Path, key_fields: tuple) -> set:
    """The ``key_fields`` tuples of the rows already in the CSV at ``path`` (a resumable table measures only the
    others); creates the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or not path.stat().st_size:
        return set()
    with path.open() as f:
        return {tuple(r[k] for k in key_fields) for r in csv.DictReader(f)}


@contextlib.contextmanager
def appending_rows(path: Path, fields: list):
    """A ``csv.DictWriter`` appending to ``path``, the header written first when the file is new or empty."""
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fields)
        if new:
            writer.writeheader()
        yield f, writer


def cache_on_disk(name: str, folder: Path) -> None:
    """Keep the refit's distilled inputs on disk, so that separate runs on one network distil each set once
    (``lbyl_pl.distill`` caches in memory only, per process)."""
    import hashlib

    import torch

    import lbyl_pl.refit  # noqa: F401  (the module; lbyl_pl.refit the attribute is the function)
    refit_module = sys.modules["lbyl_pl.refit"]
    distill = refit_module.distill_inputs

    def cached(model, **kwargs):
        key = {k: v for k, v in kwargs.items() if k not in ("progress", "example_inputs")}
        digest = hashlib.sha256(json.dumps([name, key], sort_keys=True).encode()).hexdigest()[:16]
        path = folder / f"{name}_{digest}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        x = distill(model, **kwargs)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(x, path)
        return x

    refit_module.distill_inputs = cached


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("net", choices=["resnet56", "vgg16_bn", "lenet300", "mixnet", "stridenet"])
    p.add_argument("--split", choices=["test", "holdout"], default="test")
    p.add_argument("--methods", default="prune,merge,lbyl,fusion")
    p.add_argument("--criteria", default="l2-norm")
    p.add_argument("--ratios", default="0.3,0.5")
    p.add_argument("--refit", default="none,distilled", help="comma list of none, distilled, real")
    p.add_argument("--options", nargs="*", default=["{}"], help="JSON dicts of refit options, one run each")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", required=True)
    p.add_argument("--cache-dir", default=str(RUNS / "distilled"),
                   help="distilled inputs are kept here between runs (keyed by network and distillation options)")
    args = p.parse_args()
    set_thread_env(args.threads)
    import torch
    from tqdm import tqdm

    from lbyl_pl import evaluate, prune_and_restore
    torch.set_num_threads(args.threads)

    path = Path(args.csv)
    done = measured_keys(path, ("net", "split", "method", "criterion", "ratio", "refit", "options"))
    net = load_net(args.net)
    cache_on_disk(args.net, Path(args.cache_dir))
    data, real = eval_set(args.net, args.split)
    cells = [(m, c, float(r), mode, o) for c in args.criteria.split(",") for r in args.ratios.split(",")
             for m in args.methods.split(",") for mode in args.refit.split(",")
             for o in (args.options if mode != "none" else ["{}"])]
    cells = list(dict.fromkeys(cells))
    original_key = (args.net, args.split, "original", "-", "0.0", "none", "{}")
    if original_key not in done:
        cells.insert(0, ("original", "-", 0.0, "none", "{}"))
    with appending_rows(path, FIELDS) as (f, writer):
        for method, criterion, ratio, mode, options in tqdm(cells, desc=args.net, unit="cell"):
            key = (args.net, args.split, method, criterion, str(ratio), mode, options)
            if key in done:
                continue
            row = {"net": args.net, "split": args.split, "method": method, "criterion": criterion, "ratio": ratio,
                   "refit": mode, "options": options}
            t0 = time.perf_counter()
            if method == "original":
                model, report = net, None
            else:
                kw = {}
                if mode != "none":
                    kw["refit"] = json.loads(options)
                    kw["seed"] = args.seed
                if mode == "real":
                    kw["refit_inputs"] = real
                model, report = prune_and_restore(net, method, criterion, ratio, progress=False, **kw)
            row["restore_s"] = round(time.perf_counter() - t0, 2)
            if report is not None:
                row.update(params=report.params_after, flops=report.flops_after)
                if report.refit is not None:
                    r = report.refit
                    row.update(kl_before=f"{r.output_kl_before:.5g}", kl_after=f"{r.output_kl_after:.5g}",
                               distill_s=round(r.seconds.get("distill", 0.0), 2),
                               refit_s=round(r.seconds.get("refit", 0.0), 2))
            row["acc1"] = round(float(evaluate(model, data)["top1"]), 2)
            writer.writerow(row)
            f.flush()
            tqdm.write(f"{method:>8} {criterion} r={ratio} refit={mode} {options}: {row['acc1']:.2f}")


if __name__ == "__main__":
    main()
