"""Lightning overhead: images/s of Trainer.validate / Trainer.fit on ClassifierModule vs plain PyTorch loops.

Command line (from the repository root)::

    python benchmarks/lightning_overhead.py [--device cpu|cuda] [--threads 2] [--ratio 0.5] \
        [--precision 32-true|bf16-mixed] [--channels-last] [--batch-size 128] [--batches 20] \
        [--train-batches 20] [--repeats 3] [--data synthetic|cifar10_npz] [--phases eval,train] \
        [--checkpoint PATH] [--num-workers 0] [--cudnn-benchmark] [--json out.json]

Setting: ``lbyl_pl.ClassifierModule`` wrapping a VGG16-BN (``lbyl_pl.build_model("vgg16_bn")``),
pruned and restored by ``prune_and_restore(model, "lbyl", "l2-norm", --ratio)`` (``--ratio 0``: the
full network). Weights: ``--checkpoint`` (e.g. ``$LBYL_CHECKPOINTS/vgg16_cifar10.pth``), else seeded
random weights with randomised BatchNorm statistics (speed does not depend on the values). Data:
``--data synthetic`` (default: seeded random 3x32x32 images, 10 classes, in-memory ``TensorDataset``)
or ``--data cifar10_npz`` (``$LBYL_DATA/cifar10_test.npz`` through ``load_cifar10_npz`` and
``ArrayImageDataset``, normalised on access; a seeded shuffle of it, cycled if more images are needed
than it holds).

Timed, in one run, with the *same* ``DataLoader`` objects (shuffle off, same batch size, same
``--num-workers``), the same precision (``--precision bf16-mixed``: Lightning's ``precision=
"bf16-mixed"`` against ``torch.autocast(device, dtype=torch.bfloat16)`` around the step in the plain
loop) and the same memory format (``--channels-last``: ``ClassifierModule(channels_last=True)``
against the network and every input batch converted to ``torch.channels_last``):

(a) eval, ``--batches`` batches:
    Lightning  ``Trainer.validate(module, dataloaders=loader)``: ``ClassifierModule.validation_step``
               (loss and top-1/top-5 torchmetrics) and its epoch-end compute/log;
    plain      ``model.eval()``, ``torch.no_grad()`` (what the project's trainer uses:
               ``inference_mode=False``), forward, cross-entropy and top-1/top-5 counts accumulated
               on the device, read once at the end.
(b) train, one epoch of ``--train-batches`` batches (``limit_train_batches`` = that number):
    Lightning  ``Trainer.fit(module, train_dataloaders=loader, max_epochs=1)`` (no validation);
    plain      ``model.train()``, per batch: forward, cross-entropy, ``backward``, ``optimizer.step``,
               ``optimizer.zero_grad`` with the optimizer ``ClassifierModule.configure_optimizers``
               builds (SGD lr 0.01, momentum 0.9, weight decay 5e-4 on weights, none on BN/biases;
               its per-epoch LR scheduler is not stepped: the first epoch runs at lr 0.01 anyway).
    Every training run starts from a fresh copy of the same network (copy not timed).

Trainer: ``logger=False, enable_checkpointing=False, enable_progress_bar=False,
enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
inference_mode=False`` (as ``lbyl_pl.cli.common.build_trainer``), one device.

Two times per run: *loop* (Lightning: measured by a callback from ``on_validation_epoch_start`` to
``on_validation_end`` and from ``on_train_epoch_start`` to ``on_train_end``, so epoch-end metric
computation is inside; plain: from creating the loader iterator to the metrics read back) and
*end-to-end* (Lightning: ``Trainer`` construction + ``validate``/``fit``, including moving the module
to the device and back to the CPU at teardown; plain: the same moves, optimizer construction and the
loop). On CUDA every clock read is preceded by ``torch.cuda.synchronize()``. Each method is warmed up
once on ``--warmup-batches`` batches, then timed ``--repeats`` times round-robin (the order of the
two methods alternates between rounds, so drifting machine load hits both alike); medians are
reported. The eval metrics of the two loops and the trained weights are compared (they should
agree: same data, same arithmetic). Goal: Lightning/plain images/s >= 0.95x on the loop time, for
each phase.
"""
from __future__ import annotations

import argparse
import os
import sys

from bench_common import (Clock, cpu_name, device_name, load_or_random, make_parser,  # beside this script
                          script_args, write_json)

PRECISIONS = ("32-true", "bf16-mixed")
PHASES = ("eval", "train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, checkpoint_help="VGG16-BN weights (before pruning); default: seeded random weights",
                         seed_help="seed for random weights and synthetic data")
    parser.add_argument("--ratio", type=float, default=0.5,
                        help="LBYL pruning ratio (l2-norm criterion); 0 = the full, unpruned network")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true",
                        help="Lightning precision; the plain loop uses the matching torch.autocast")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last network and inputs in both loops")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed eval run")
    parser.add_argument("--train-batches", type=int, default=None,
                        help="batches per timed training epoch (default: --batches)")
    parser.add_argument("--warmup-batches", type=int, default=2,
                        help="batches of the untimed warm-up run of each method and phase")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method and phase")
    parser.add_argument("--phases", default="eval,train",
                        help="comma-separated subset of: " + ", ".join(PHASES))
    parser.add_argument("--data", choices=("synthetic", "cifar10_npz"), default="synthetic",
                        help="synthetic in-memory tensors, or $LBYL_DATA/cifar10_test.npz")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (both loops)")
    parser.add_argument("--pin-memory", action="store_true", help="DataLoader pin_memory (CUDA only)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark in both loops (Trainer(benchmark=True)); CUDA only")
    parser.add_argument("--goal", type=float, default=0.95,
                        help="required Lightning/plain images/s ratio (loop time)")
    args = parser.parse_args(argv)
    if args.train_batches is None:
        args.train_batches = args.batches
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or any(p not in PHASES for p in phases):
        parser.error(f"--phases must be a comma-separated subset of {', '.join(PHASES)}")
    args.phases = [p for p in PHASES if p in phases]
    for name in ("threads", "batch_size", "batches", "train_batches", "warmup_batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be >= 0")
    if not 0.0 <= args.ratio < 1.0:
        parser.error("--ratio must be in [0, 1)")
    return args


ARGS = script_args(__name__, parse_args)  # parsed, thread variables set, before torch loads; None if imported

import contextlib  # noqa: E402
import copy  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Subset, TensorDataset  # noqa: E402

import lbyl_pl  # noqa: E402
from lbyl_pl.cli.common import quiet_lightning  # noqa: E402
from lbyl_pl.config import DEFAULTS  # noqa: E402
from lbyl_pl.data import NORMALIZATION, ArrayImageDataset, data_dir, load_cifar10_npz  # noqa: E402
from lbyl_pl.module import ClassifierModule  # noqa: E402
from lbyl_pl.restoration import count_flops, count_params  # noqa: E402

ARCH = "vgg16_bn"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
OPTIM = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}


# --------------------------------------------------------------------------------------- setup


def load_network(args) -> tuple[torch.nn.Module, str, dict]:
    """The (pruned) VGG16-BN every run starts from, on the CPU, in eval mode."""
    model, text, info = load_or_random(ARCH, args.checkpoint or None, args.seed)
    flops_full = count_flops(model)
    if args.ratio > 0:
        model, _ = lbyl_pl.prune_and_restore(model, "lbyl", "l2-norm", args.ratio)
    info.update(params=count_params(model), flops_per_image=count_flops(model), flops_full=flops_full)
    return model.eval(), text, info


def make_dataset(args, n: int):
    if args.data == "synthetic":
        g = torch.Generator().manual_seed(args.seed + 1)
        x = torch.randn(n, *IMAGE_SHAPE, generator=g)
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        return TensorDataset(x, y)
    images, labels = load_cifar10_npz(None, "test")  # $LBYL_DATA/cifar10_test.npz
    mean, std = NORMALIZATION["cifar10"]
    base = ArrayImageDataset(images, labels, mean, std)
    # the .npz is sorted by class: a seeded shuffle makes any prefix a mix of all classes
    order = torch.randperm(len(base), generator=torch.Generator().manual_seed(args.seed + 1)).tolist()
    return Subset(base, [order[i % len(base)] for i in range(n)])


def make_loader(args, n_batches: int) -> DataLoader:
    dataset = make_dataset(args, n_batches * args.batch_size)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=False, drop_last=False,
                      num_workers=args.num_workers, pin_memory=args.pin_memory and args.device == "cuda")


def make_module(args, net) -> ClassifierModule:
    """ClassifierModule around a private copy of ``net`` (the module's own fresh VGG is replaced), in
    training mode as a new module is: Lightning 2.x ``fit`` keeps the mode it finds (``net`` is in
    eval mode) instead of calling ``train()``."""
    module = ClassifierModule(ARCH, optim=dict(OPTIM, schedule="cosine"), channels_last=args.channels_last)
    module.set_net(copy.deepcopy(net))
    return module.train()


def plain_net(args, net):
    net = copy.deepcopy(net)
    return net.to(memory_format=torch.channels_last) if args.channels_last else net


def plain_optimizer(net, optim: dict = OPTIM):
    """The optimizer ``ClassifierModule.configure_optimizers`` builds for ``net`` with the settings ``optim``
    (missing keys: the config defaults): SGD, weight decay on the weights, none on BN and biases. Taken from
    the module itself rather than copied: its ``configure_optimizers`` runs on a stand-in holding ``net``,
    ``optim`` and a one-epoch trainer, and its epoch scheduler is dropped (without warm-up epochs it leaves
    the learning rate of epoch 0 as it is)."""
    stand_in = SimpleNamespace(net=net, optim={**DEFAULTS["optim"], **optim}, trainer=SimpleNamespace(max_epochs=1))
    return ClassifierModule.configure_optimizers(stand_in)["optimizer"]


# ------------------------------------------------------------------------------------ clocks


class LoopTimer(pl.Callback):
    """Loop-only time of one ``validate`` or ``fit`` call, and the images its steps saw."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.start = self.end = None
        self.images = 0

    def on_validation_epoch_start(self, trainer, pl_module):
        self.start = self.clock()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.images += len(batch[1])

    def on_validation_end(self, trainer, pl_module):
        self.end = self.clock()

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += len(batch[1])

    def on_train_end(self, trainer, pl_module):
        self.end = self.clock()


# ----------------------------------------------------------------------------------- methods


def make_trainer(args, root: str, callbacks, limit_train_batches=None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision=args.precision,
        max_epochs=1, limit_train_batches=limit_train_batches, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False, inference_mode=False, default_root_dir=root,
        benchmark=args.cudnn_benchmark,
        callbacks=list(callbacks))


def autocast(args):
    if args.precision == "bf16-mixed":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lightning_eval(args, module, loader, root, clock):
    timer = LoopTimer(clock)
    t0 = clock()
    trainer = make_trainer(args, root, [timer])
    trainer.validate(module, dataloaders=loader, verbose=False)
    t1 = clock()
    metrics = {"acc1": module.last_eval["acc1"], "loss": module.last_eval["loss"]}
    return {"loop_s": timer.end - timer.start, "total_s": t1 - t0, "images": timer.images, "metrics": metrics}


def plain_eval(args, net, loader, clock):
    device = torch.device(args.device)
    t0 = clock()
    net.to(device).eval()
    t_loop = clock()
    with torch.no_grad():
        loss_sum = torch.zeros((), device=device)
        correct1 = torch.zeros((), dtype=torch.long, device=device)
        correct5 = torch.zeros((), dtype=torch.long, device=device)
        n = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(args):
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = net(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
                correct1 += hits[:, 0].sum()
                correct5 += hits.any(dim=1).sum()
            n += len(y)
        metrics = {"acc1": 100.0 * correct1.item() / n, "loss": loss_sum.item() / n}
    t_end = clock()
    net.cpu()  # as Lightning's teardown does with the module
    t1 = clock()
    return {"loop_s": t_end - t_loop, "total_s": t1 - t0, "images": n, "metrics": metrics}


def lightning_train(args, module, loader, root, clock):
    timer = LoopTimer(clock)
    t0 = clock()
    trainer = make_trainer(args, root, [timer], limit_train_batches=len(loader))
    trainer.fit(module, train_dataloaders=loader)
    t1 = clock()
    return {"loop_s": timer.end - timer.start, "total_s": t1 - t0, "images": timer.images,
            "net": module.net}


def plain_train(args, net, loader, clock):
    device = torch.device(args.device)
    t0 = clock()
    net.to(device).train()
    optimizer = plain_optimizer(net)
    t_loop = clock()
    n, loss = 0, None
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(args):
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        n += len(y)
    last_loss = loss.item()
    t_end = clock()
    net.cpu()
    t1 = clock()
    return {"loop_s": t_end - t_loop, "total_s": t1 - t0, "images": n, "net": net, "last_loss": last_loss}


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> tuple[float, float]:
    """max |Δ| over all parameters and buffers, and that divided by the largest |value|."""
    worst, scale = 0.0, 0.0
    sa, sb = a.state_dict(), b.state_dict()
    for key, va in sa.items():
        if not va.is_floating_point():
            continue
        va, vb = va.detach().float().cpu(), sb[key].detach().float().cpu()
        worst = max(worst, float((va - vb).abs().max()))
        scale = max(scale, float(va.abs().max()))
    return worst, worst / max(scale, 1e-30)


# ------------------------------------------------------------------------------- measuring


def run_phase(phase, args, net, root, clock):
    """Warm-up, then ``repeats`` ABBA round-robin runs of Lightning and plain for one phase."""
    n_batches = args.batches if phase == "eval" else args.train_batches
    loader = make_loader(args, n_batches)
    warm_loader = make_loader(args, args.warmup_batches)
    if phase == "eval":
        module, pnet = make_module(args, net), plain_net(args, net)
        methods = {"lightning": lambda dl: lightning_eval(args, module, dl, root, clock),
                   "plain": lambda dl: plain_eval(args, pnet, dl, clock)}
    else:
        # fresh weights for every run: the copies are made before the clock starts
        methods = {"lightning": lambda dl, m=None: lightning_train(args, m, dl, root, clock),
                   "plain": lambda dl, m=None: plain_train(args, m, dl, clock)}
        fresh = {"lightning": lambda: make_module(args, net), "plain": lambda: plain_net(args, net)}

    def call(key, dl):
        if phase == "eval":
            return methods[key](dl)
        return methods[key](dl, fresh[key]())

    for key in methods:  # warm-up
        call(key, warm_loader)
    runs = {key: [] for key in methods}
    for r in range(args.repeats):
        order = list(methods) if r % 2 == 0 else list(methods)[::-1]
        for key in order:
            runs[key].append(call(key, loader))
    return runs, n_batches


def summarise(runs, expected_images):
    out = {}
    for key, rs in runs.items():
        images = {r["images"] for r in rs}
        if images != {expected_images}:
            raise RuntimeError(f"{key}: runs saw {sorted(images)} images, expected {expected_images}")
        loop = [r["loop_s"] for r in rs]
        total = [r["total_s"] for r in rs]
        out[key] = {"loop_s": loop, "total_s": total, "median_loop_s": statistics.median(loop),
                    "median_total_s": statistics.median(total), "images": expected_images}
        out[key]["images_per_s_loop"] = expected_images / out[key]["median_loop_s"]
        out[key]["images_per_s_total"] = expected_images / out[key]["median_total_s"]
    return out


def main(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.data == "cifar10_npz":
        try:
            load_cifar10_npz(None, "test")
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark  # Trainer(benchmark=...) sets the same flag
    quiet_lightning()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*val_dataloader.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")  # Lightning vs torch 2.14 pytree
    clock = Clock(args.device)

    net, weights_text, weights_info = load_network(args)
    data_text = "synthetic in-memory tensors (TensorDataset)" if args.data == "synthetic" else \
        f"{data_dir() / 'cifar10_test.npz'} (ArrayImageDataset, normalised on access)"
    what = f"LBYL l2-norm r={args.ratio:g}" if args.ratio > 0 else "unpruned"
    print(f"Lightning overhead: ClassifierModule(VGG16-BN, {what}; "
          f"{weights_info['params']:,} params, {weights_info['flops_per_image'] / 1e6:.1f} MFLOPs/image, "
          f"{weights_info['flops_per_image'] / max(weights_info['flops_full'], 1):.3f}x of the full network)")
    print(f"weights: {weights_text}")
    print(f"data: {data_text}; batch {args.batch_size}, eval {args.batches} batches, "
          f"train {args.train_batches} batches, {args.num_workers} DataLoader workers")
    print(f"device: {args.device} ({device_name(args.device)}"
          f"{', cudnn.benchmark' if args.device == 'cuda' and args.cudnn_benchmark else ''}); "
          f"precision {args.precision}; "
          f"{'channels_last' if args.channels_last else 'contiguous (NCHW)'}; threads {args.threads} "
          f"(OMP/MKL/OPENBLAS_NUM_THREADS={args.threads}), {os.cpu_count()} logical cores")
    print(f"torch {torch.__version__}, pytorch_lightning {pl.__version__}; median of {args.repeats} "
          f"round-robin runs (ABBA order) after 1 warm-up run of {args.warmup_batches} batch(es)")
    print()

    labels = {"eval": ("(a) eval", "Trainer.validate", "no_grad eval loop"),
              "train": ("(b) train", "Trainer.fit, 1 epoch", "SGD step loop")}
    results, checks = {}, {}
    with tempfile.TemporaryDirectory(prefix="lbyl-lightning-overhead-") as root:
        for phase in args.phases:
            runs, n_batches = run_phase(phase, args, net, root, clock)
            images = n_batches * args.batch_size
            summary = summarise(runs, images)
            if phase == "eval":
                ml, mp = runs["lightning"][-1]["metrics"], runs["plain"][-1]["metrics"]
                checks[phase] = {"lightning": ml, "plain": mp, "acc1_abs_diff": abs(ml["acc1"] - mp["acc1"]),
                                 "loss_rel_diff": abs(ml["loss"] - mp["loss"]) / max(abs(mp["loss"]), 1e-30)}
            else:
                # the last runs of both started from the same weights and saw the same batches
                diff, rel = max_param_diff(runs["lightning"][-1]["net"], runs["plain"][-1]["net"])
                checks[phase] = {"max_abs_diff": diff, "max_rel_diff": rel, "steps": n_batches}
            results[phase] = {"batches": n_batches, "images": images, "methods": summary,
                              "ratio_loop": summary["lightning"]["images_per_s_loop"]
                              / summary["plain"]["images_per_s_loop"],
                              "ratio_total": summary["lightning"]["images_per_s_total"]
                              / summary["plain"]["images_per_s_total"]}
            del runs

    header = f"{'phase / method':<40}{'loop s':>9}{'img/s':>10}{'min-max s':>15}{'e2e s':>9}{'e2e img/s':>11}" \
             f"{'L/plain':>9}{'e2e L/p':>9}"
    print(header)
    print("-" * len(header))
    for phase, res in results.items():
        title, lname, pname = labels[phase]
        for key, name in (("plain", f"{title}: plain PyTorch ({pname})"), ("lightning", f"{title}: {lname}")):
            m = res["methods"][key]
            spread = f"{min(m['loop_s']):.3f}-{max(m['loop_s']):.3f}"
            ratio = f"{res['ratio_loop']:>8.3f}x{res['ratio_total']:>8.3f}x" if key == "lightning" \
                else f"{'(base)':>9}{'(base)':>9}"
            print(f"{name:<40}{m['median_loop_s']:>9.3f}{m['images_per_s_loop']:>10.1f}{spread:>15}"
                  f"{m['median_total_s']:>9.3f}{m['images_per_s_total']:>11.1f}{ratio}")
    print("(loop s: median loop-only wall time; img/s: images / loop s; e2e: Trainer construction or setup "
          "+ device moves + loop; L/plain: Lightning images/s / plain images/s, same run)")
    if "eval" in checks:
        c = checks["eval"]
        print(f"eval outputs: acc1 Lightning {c['lightning']['acc1']:.3f}% vs plain {c['plain']['acc1']:.3f}%, "
              f"loss {c['lightning']['loss']:.6f} vs {c['plain']['loss']:.6f} (rel diff {c['loss_rel_diff']:.1e})")
    if "train" in checks:
        c = checks["train"]
        print(f"train: weights after {c['steps']} steps, Lightning vs plain: max |Δ| {c['max_abs_diff']:.2e} "
              f"(relative to max |w|: {c['max_rel_diff']:.1e})")

    verdicts = {phase: res["ratio_loop"] >= args.goal for phase, res in results.items()}
    met = all(verdicts.values())
    detail = ", ".join(f"{phase} {results[phase]['ratio_loop']:.3f}x [{'ok' if ok else 'short'}]"
                       for phase, ok in verdicts.items())
    print(f"goal: Lightning/plain images/s >= {args.goal:g}x (loop time)  ->  {'MET' if met else 'NOT MET'} "
          f"({detail}; {args.device}, {args.precision}, threads {args.threads}, "
          f"torch.get_num_threads()={torch.get_num_threads()})")

    if args.json:
        payload = {
            "benchmark": "lbyl_lightning_overhead",
            "config": {"arch": ARCH, "ratio": args.ratio, "method": "lbyl", "criterion": "l2-norm",
                       "device": args.device, "precision": args.precision, "channels_last": args.channels_last,
                       "batch_size": args.batch_size, "eval_batches": args.batches,
                       "train_batches": args.train_batches, "warmup_batches": args.warmup_batches,
                       "repeats": args.repeats, "data": args.data, "num_workers": args.num_workers,
                       "pin_memory": args.pin_memory, "cudnn_benchmark": args.cudnn_benchmark,
                       "threads": args.threads,
                       "torch_num_threads": torch.get_num_threads(), "optim": OPTIM},
            "weights": weights_info,
            "environment": {"cpu": cpu_name(), "device": device_name(args.device), "logical_cores": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "pytorch_lightning": pl.__version__, "lbyl_pl": lbyl_pl.__version__},
            "phases": results,
            "checks": checks,
            "goal": {"min_ratio": args.goal, "per_phase_met": verdicts, "met": met},
        }
        write_json(args.json, payload)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
