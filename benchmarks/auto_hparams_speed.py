"""Speed of the data-free hyperparameter choice (``lbyl_pl.data_free``) on VGG16-BN and ResNet-56.

Command line (from the repository root)::

    LBYL_CHECKPOINTS=../shared/checkpoints python benchmarks/auto_hparams_speed.py \
        [--threads 2] [--networks vgg16_bn resnet56] [--methods lbyl merge] [--ratios 0.3] \
        [--n 32] [--iterations 100] [--checkpoint DIR] [--json out.json]

Networks: VGG16-BN (``build_model("vgg16_bn", 10)`` + ``vgg16_cifar10.pth``) and ResNet-56
(``build_model("resnet56", 10)`` + ``resnet56_cifar10_nm.pth.tar``), CIFAR-10 input 32x32. Weights are
read from ``--checkpoint`` (a directory), else ``$LBYL_CHECKPOINTS``, else ``./checkpoints``; a network
whose file is missing runs on seeded random weights with randomised BatchNorm statistics, and the output
says so.

Timed per network:

(a) synthesis: ``distill_inputs(model, n, iterations=...)`` with the cache bypassed (the cost a sweep
    pays once per network);
(b) selection, per cell (method x ratio, criterion l2-norm): ``auto_hparams_search`` with the distilled
    inputs already cached, i.e. one restoration plus one scoring forward pass per point of the default
    grid (``lbyl_pl.data_free.DEFAULT_GRIDS``).

Goals: (a) < 90 s per network and (b) < 20 s per cell, on 2 CPU threads; each line says MET or NOT MET
(judged on wall-clock time; the process CPU time is printed beside it, which with ``--threads 1`` is what
the wall time would be on an idle machine).
"""
from __future__ import annotations

import argparse
import sys

from bench_common import Clock, cpu_name, load_or_random, make_parser, script_args, write_json  # beside this script

NETWORKS = {"vgg16_bn": "vgg16_cifar10.pth", "resnet56": "resnet56_cifar10_nm.pth.tar"}
GOAL_SYNTHESIS_S = 90.0
GOAL_SELECTION_S = 20.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, checkpoint_help="directory holding vgg16_cifar10.pth and "
                                                  "resnet56_cifar10_nm.pth.tar; default $LBYL_CHECKPOINTS",
                         seed_help="distillation seed (and the random-weights fallback's)")
    parser.add_argument("--networks", nargs="+", choices=tuple(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--methods", nargs="+", choices=("lbyl", "merge"), default=["lbyl", "merge"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3])
    parser.add_argument("--n", type=int, default=None, help="distilled images (default: the module's)")
    parser.add_argument("--iterations", type=int, default=None, help="distillation steps (default: the module's)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


ARGS = script_args(__name__, parse_args)  # parsed, thread variables set, before torch loads; None if imported

import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import lbyl_pl.data_free as ah  # noqa: E402
from lbyl_pl.checkpoints import checkpoint_dir  # noqa: E402


def load_network(name: str, args):
    path = Path(args.checkpoint) / NETWORKS[name] if args.checkpoint else checkpoint_dir() / NETWORKS[name]
    model, text, _ = load_or_random(name, path if path.is_file() else None, args.seed, num_classes=10,
                                    missing=f"; no file at {path}")
    return model, text


def verdict(seconds: float, goal: float) -> str:
    return f"{'MET' if seconds < goal else 'NOT MET'} (goal < {goal:g} s)"


def main(args) -> int:
    torch.set_num_threads(args.threads)
    clock = Clock(args.device)
    n = args.n or ah.DEFAULT_N
    iterations = ah.DEFAULT_ITERATIONS if args.iterations is None else args.iterations
    print(f"auto_hparams speed: {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"device {args.device}; {n} distilled images, {iterations} iterations")
    for method in args.methods:
        grid = ah.DEFAULT_GRIDS[method]
        size = 1
        for values in grid.values():
            size *= len(values)
        print(f"  default {method} grid ({size} points): {grid}")
    rows, all_met = [], True
    for name in args.networks:
        model, source = load_network(name, args)
        model = model.to(args.device)
        print(f"\n{name}: {source}")
        ah.clear_cache()
        t, c = clock(), time.process_time()
        inputs = ah.distill_inputs(model, n=n, seed=args.seed, iterations=iterations, progress=False)
        synth, synth_cpu = clock() - t, time.process_time() - c
        loss0 = ah.bn_statistics_loss(model, ah.distill_inputs(model, n=n, seed=args.seed, iterations=0,
                                                               progress=False, cache=False))
        loss1 = ah.bn_statistics_loss(model, inputs)
        met = synth < GOAL_SYNTHESIS_S
        all_met &= met
        print(f"  synthesis: {synth:7.1f} s  {verdict(synth, GOAL_SYNTHESIS_S)}   (process CPU {synth_cpu:.1f} s; "
              f"BN-statistics loss {loss0:.3g} -> {loss1:.3g})")
        rows.append({"network": name, "stage": "synthesis", "seconds": synth, "cpu_seconds": synth_cpu, "met": met,
                     "weights": source, "bn_loss_before": loss0, "bn_loss_after": loss1})
        for method in args.methods:
            for ratio in args.ratios:
                t, c = clock(), time.process_time()
                res = ah.auto_hparams_search(model, method, "l2-norm", ratio, seed=args.seed, n=n,
                                             iterations=iterations, progress=False)
                total, cpu = clock() - t, time.process_time() - c
                met = total < GOAL_SELECTION_S
                all_met &= met
                print(f"  selection {method:5s} l2-norm {ratio:.0%}: {total:6.1f} s  "
                      f"{verdict(total, GOAL_SELECTION_S)}   (process CPU {cpu:.1f} s; {len(res.results)} points, "
                      f"{total / max(len(res.results), 1):.2f} s each; chose {res.best})")
                rows.append({"network": name, "stage": "selection", "method": method, "ratio": ratio,
                             "seconds": total, "cpu_seconds": cpu, "points": len(res.results), "met": met,
                             "best": res.best})
    print(f"\nall goals {'MET' if all_met else 'NOT MET'}")
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "platform": platform.platform(), "torch": torch.__version__,
                               "threads": args.threads, "device": args.device, "n": n, "iterations": iterations,
                               "goals": {"synthesis_s": GOAL_SYNTHESIS_S, "selection_s": GOAL_SELECTION_S},
                               "rows": rows, "all_met": all_met})
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
