"""Inference latency of LBYL-pruned VGG16-BN against the unpruned network, beside the FLOP reduction.

Command line (from the repository root)::

    python benchmarks/pruned_latency.py [--device cpu|cuda] [--threads 2] [--ratios 0.1,0.2,0.3,0.4,0.5] \
        [--batch-sizes 1,64] [--precisions fp32[,bf16]] [--memory-formats contiguous[,channels_last]] \
        [--repeats 7] [--warmup 3] [--min-time 0.5 | --iters N] [--checkpoint PATH] [--cudnn-benchmark] \
        [--json out.json]

Setting: VGG16-BN (``lbyl_pl.build_model("vgg16_bn")``, CIFAR layout, 3x32x32 inputs) unpruned, and
pruned and restored by ``prune_and_restore(model, "lbyl", "l2-norm", r)`` for every ``r`` in
``--ratios`` (all 13 conv units physically narrowed). Weights: seeded random ones (latency does not
depend on the values), or ``--checkpoint`` (e.g. ``$LBYL_CHECKPOINTS/vgg16_cifar10.pth``).

For every configuration (batch size x precision x memory format) every network is timed on the same
random input batch: ``model.eval()``, ``torch.inference_mode()``, ``fp32`` or ``bf16`` (``torch.autocast
(device, dtype=torch.bfloat16)`` around the forward), ``contiguous`` (NCHW) or ``channels_last`` (network
and input converted). Each network gets ``--warmup`` untimed forward passes; then ``--repeats``
samples are taken round-robin over the networks (order reversed on every other round, so drifting
machine load hits all alike), one sample being ``iters`` back-to-back forward passes (``--iters``,
else as many as make the unpruned network's sample last ``--min-time`` seconds, the same count for
every network of the configuration); a sample's time / ``iters`` is the latency of one batch, and
the median over samples is reported (ms per batch). On CUDA the device is synchronised before each
clock read.

FLOPs: ``lbyl_pl.restoration.count_flops`` (``torch.utils.flop_counter`` on the architecture's example
input, batch 1: conv and linear multiply-adds x 2); FLOP speedup = FLOPs(unpruned) / FLOPs(pruned).
Measured speedup = median latency(unpruned) / median latency(pruned), same configuration and run.
Goal, per ratio and configuration: measured speedup >= 0.8 x FLOP speedup (``--goal``).
"""
from __future__ import annotations

import argparse
import os
import sys

from bench_common import (Clock, cpu_name, device_name, load_or_random, make_parser,  # beside this script
                          script_args, write_json)

PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("contiguous", "channels_last")


def _list(text: str, kind, name: str, parser):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{name}: cannot parse {text!r}")
    if not values:
        parser.error(f"{name} is empty")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, checkpoint_help="VGG16-BN weights; default: seeded random weights",
                         seed_help="seed for random weights and the input")
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5", help="comma-separated pruning ratios")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--precisions", default="fp32",
                        help="comma-separated subset of: fp32, bf16 (bf16 = torch.autocast bfloat16)")
    parser.add_argument("--memory-formats", default="contiguous",
                        help="comma-separated subset of: contiguous, channels_last")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per network and configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes per network and configuration")
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="seconds one sample of the unpruned network should last (sets iters)")
    parser.add_argument("--iters", type=int, default=None,
                        help="forward passes per sample (overrides --min-time)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark (autotuned during the warm-up); CUDA only")
    parser.add_argument("--goal", type=float, default=0.8,
                        help="required measured speedup / FLOP speedup")
    args = parser.parse_args(argv)
    args.ratios = _list(args.ratios, float, "--ratios", parser)
    args.batch_sizes = _list(args.batch_sizes, int, "--batch-sizes", parser)
    args.precisions = _list(args.precisions, str.strip, "--precisions", parser)
    args.memory_formats = _list(args.memory_formats, str.strip, "--memory-formats", parser)
    if any(not 0.0 < r < 1.0 for r in args.ratios):
        parser.error("--ratios must lie in (0, 1)")
    if any(b < 1 for b in args.batch_sizes):
        parser.error("--batch-sizes must be >= 1")
    if any(p not in PRECISIONS for p in args.precisions):
        parser.error(f"--precisions must be a subset of {', '.join(PRECISIONS)}")
    if any(m not in MEMORY_FORMATS for m in args.memory_formats):
        parser.error(f"--memory-formats must be a subset of {', '.join(MEMORY_FORMATS)}")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 0")
    if args.iters is not None and args.iters < 1:
        parser.error("--iters must be >= 1")
    if args.min_time <= 0:
        parser.error("--min-time must be > 0")
    args.ratios = sorted(set(args.ratios))
    return args


ARGS = script_args(__name__, parse_args)  # parsed, thread variables set, before torch loads; None if imported

import contextlib  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

import lbyl_pl  # noqa: E402
from lbyl_pl.restoration import count_flops, count_params  # noqa: E402

ARCH = "vgg16_bn"


def load_model(args) -> tuple[torch.nn.Module, str, dict]:
    return load_or_random(ARCH, args.checkpoint or None, args.seed)


def build_networks(args) -> tuple[list[dict], str, dict]:
    """[{'ratio', 'model', 'flops', 'params'}], unpruned first (CPU, fp32, eval mode)."""
    model, text, info = load_model(args)
    nets = [{"ratio": 0.0, "model": model, "flops": count_flops(model), "params": count_params(model)}]
    for ratio in args.ratios:
        restored, report = lbyl_pl.prune_and_restore(model, "lbyl", "l2-norm", ratio)
        nets.append({"ratio": ratio, "model": restored.eval(), "flops": report.flops_after,
                     "params": report.params_after})
    return nets, text, info


def measure_config(args, nets, batch_size, precision, memory_format, clock):
    """Median seconds per batch of every network in one configuration, and the samples."""
    device = torch.device(args.device)
    channels_last = memory_format == "channels_last"
    models = []
    for net in nets:
        m = copy.deepcopy(net["model"]).to(device).eval()
        models.append(m.to(memory_format=torch.channels_last) if channels_last else m)
    x = torch.randn(batch_size, *nets[0]["model"].example_input_size[1:],
                    generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def autocast():
        if precision == "bf16":
            return torch.autocast(args.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sample(model, iters):
        t0 = clock()
        for _ in range(iters):
            model(x)
        return (clock() - t0) / iters

    with torch.inference_mode(), autocast():
        for model in models:
            for _ in range(args.warmup):
                model(x)
        if args.iters is not None:
            iters = args.iters
        else:  # calibrate on the unpruned (slowest) network
            one = sample(models[0], 1)
            iters = max(1, math.ceil(args.min_time / max(one, 1e-9)))
        samples = [[] for _ in models]
        for r in range(args.repeats):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                samples[i].append(sample(models[i], iters))
    del models
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return iters, samples


def main(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    clock = Clock(args.device)
    nets, weights_text, weights_info = build_networks(args)

    print(f"Pruned-network latency: VGG16-BN (CIFAR, 3x32x32) unpruned vs LBYL l2-norm at ratios "
          f"{', '.join(f'{r:g}' for r in args.ratios)}")
    print(f"weights: {weights_text}")
    print(f"device: {args.device} ({device_name(args.device)}"
          f"{', cudnn.benchmark' if args.device == 'cuda' and args.cudnn_benchmark else ''}); "
          f"threads {args.threads} (OMP/MKL/OPENBLAS_NUM_THREADS={args.threads}, "
          f"torch.get_num_threads()={torch.get_num_threads()}), {os.cpu_count()} logical cores")
    print(f"torch {torch.__version__}; model.eval(), torch.inference_mode(); {args.warmup} warm-up passes, "
          f"median of {args.repeats} round-robin samples of "
          f"{args.iters if args.iters else f'>= {args.min_time:g} s (unpruned)'} passes each")
    print("FLOPs: count_flops, batch 1 (per image); speedup = median ms(unpruned) / median ms(pruned), "
          "same configuration; eff = speedup / FLOP speedup")

    configs = []
    base_flops = nets[0]["flops"]
    for batch_size in args.batch_sizes:
        for precision in args.precisions:
            for memory_format in args.memory_formats:
                iters, samples = measure_config(args, nets, batch_size, precision, memory_format, clock)
                medians = [statistics.median(s) for s in samples]
                rows = []
                for net, s, med in zip(nets, samples, medians):
                    flop_speedup = base_flops / net["flops"]
                    speedup = medians[0] / med
                    row = {"ratio": net["ratio"], "params": net["params"], "flops_per_image": net["flops"],
                           "flop_ratio": net["flops"] / base_flops, "flop_speedup": flop_speedup,
                           "samples_s": s, "median_ms": med * 1e3, "min_ms": min(s) * 1e3,
                           "max_ms": max(s) * 1e3, "images_per_s": batch_size / med,
                           "speedup": speedup, "efficiency": speedup / flop_speedup}
                    if net["ratio"] > 0:
                        row["goal_met"] = row["efficiency"] >= args.goal
                    rows.append(row)
                configs.append({"batch_size": batch_size, "precision": precision,
                                "memory_format": memory_format, "iters": iters, "rows": rows})

                print()
                print(f"batch {batch_size}, {precision}, {memory_format} ({iters} passes per sample)")
                header = (f"{'ratio':<10}{'params':>11}{'MFLOPs':>9}{'FLOPs':>8}{'FLOP x':>8}{'ms/batch':>10}"
                          f"{'min-max ms':>17}{'img/s':>10}{'speedup':>9}{'eff':>7}  goal")
                print(header)
                print("-" * len(header))
                for row in rows:
                    label = "unpruned" if row["ratio"] == 0 else f"{row['ratio']:g}"
                    goal = "(base)" if row["ratio"] == 0 else ("met" if row["goal_met"] else "NOT MET")
                    spread = f"{row['min_ms']:.2f}-{row['max_ms']:.2f}"
                    print(f"{label:<10}{row['params']:>11,}{row['flops_per_image'] / 1e6:>9.1f}"
                          f"{row['flop_ratio']:>8.3f}{row['flop_speedup']:>7.2f}x{row['median_ms']:>10.2f}"
                          f"{spread:>17}{row['images_per_s']:>10.1f}{row['speedup']:>8.2f}x"
                          f"{row['efficiency']:>7.2f}  {goal}")

    verdicts = [(c, row) for c in configs for row in c["rows"] if row["ratio"] > 0]
    failed = [(c, row) for c, row in verdicts if not row["goal_met"]]
    met = not failed
    print()
    if met:
        detail = f"all {len(verdicts)} (configuration, ratio) pairs"
    else:
        detail = f"{len(failed)} of {len(verdicts)} short: " + ", ".join(
            f"b{c['batch_size']}/{c['precision']}/{c['memory_format']} r={row['ratio']:g} "
            f"({row['efficiency']:.2f})" for c, row in failed)
    print(f"goal: measured speedup >= {args.goal:g} x FLOP speedup  ->  {'MET' if met else 'NOT MET'} ({detail}; "
          f"{args.device}, threads {args.threads})")

    if args.json:
        payload = {
            "benchmark": "lbyl_pruned_latency",
            "config": {"arch": ARCH, "method": "lbyl", "criterion": "l2-norm", "ratios": args.ratios,
                       "batch_sizes": args.batch_sizes, "precisions": args.precisions,
                       "memory_formats": args.memory_formats, "device": args.device,
                       "repeats": args.repeats, "warmup": args.warmup, "min_time_s": args.min_time,
                       "iters": args.iters, "cudnn_benchmark": args.cudnn_benchmark, "threads": args.threads,
                       "torch_num_threads": torch.get_num_threads()},
            "weights": weights_info,
            "environment": {"cpu": cpu_name(), "device": device_name(args.device), "logical_cores": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "lbyl_pl": lbyl_pl.__version__},
            "configurations": configs,
            "goal": {"min_efficiency": args.goal, "met": met, "pairs": len(verdicts), "short": len(failed)},
        }
        write_json(args.json, payload)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
