"""How long a FLOP budget's allocation takes: ResNet-50 at 224 px (goal: under 60 s on 2 cores, distillation
excluded), against one forward pass of the same inputs measured in the same run.

    python benchmarks/budget_speed.py [--arch resnet50] [--size 224] [--flops 0.5] [--inputs 16] [--threads 2]

Random weights with randomised BN statistics (no pretrained weights here), ``units="all"``, Gaussian inputs in
place of distilled ones (distillation is once per network and cached; it is excluded, as the goal says). Printed:
the trace, the allocation (``lbyl_pl.budget.allocate``: every unit's sensitivity, the greedy and uniform
candidates; first call, then again inside ``prune_and_restore``), the choice among candidates (each through prune
and surgery, scored on held-out inputs; without the refit) and the whole ``prune_and_restore`` call.
"""
from __future__ import annotations

import sys
import time

from bench_common import cpu_name, make_parser, randomize_bn, set_thread_env, write_json


def main(argv=None) -> int:
    parser = make_parser(__doc__, device=False, checkpoint_help="unused (random weights)",
                         seed_help="seed of the weights and inputs")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--inputs", type=int, default=16)
    args = parser.parse_args(argv)
    set_thread_env(args.threads)
    import torch
    import torchvision

    from lbyl_pl import discover, prune_and_restore
    from lbyl_pl.budget import allocate
    from lbyl_pl.prunable import prunable_units

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = torchvision.models.get_model(args.arch, weights=None).eval()
    randomize_bn(model)
    x = torch.zeros(1, 3, args.size, args.size)
    inputs = torch.randn(args.inputs + args.inputs // 3, 3, args.size, args.size,
                         generator=torch.Generator().manual_seed(args.seed))
    with torch.inference_mode():
        model(inputs[:args.inputs])
        started = time.perf_counter()
        model(inputs[:args.inputs])
        forward = time.perf_counter() - started
    started = time.perf_counter()
    found = discover(model, x)
    units = prunable_units(model, x, "all")
    trace = time.perf_counter() - started
    started = time.perf_counter()
    candidates = allocate(model, found, units, "l2-norm", inputs[:args.inputs], flops=args.flops)
    allocation = time.perf_counter() - started
    started = time.perf_counter()
    _, report = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=x, flops=args.flops,
                                  refit_inputs=inputs)
    whole = time.perf_counter() - started
    choice = whole - report.seconds.get("budget", 0.0) - report.seconds.get("trace", 0.0)
    print(f"{args.arch} at {args.size} px, flops={args.flops}, {len(units)} units and groups, {args.inputs} inputs, "
          f"{args.threads} thread(s), {cpu_name()}")
    print(f"  one forward pass of {args.inputs} inputs (baseline): {forward:.2f} s")
    print(f"  trace (discovery):                   {trace:6.1f} s")
    print(f"  allocation (sensitivity, candidates): {allocation:6.1f} s = {allocation / forward:.0f} forward passes "
          f"(goal < 60 s: {'met' if allocation < 60 else 'NOT met'}); {len(candidates)} candidates")
    inner = report.seconds.get("budget", 0.0)
    print(f"  allocation again, inside the call:    {inner:6.1f} s (goal < 60 s: {'met' if inner < 60 else 'NOT met'}; "
          "the first call above also pays for first-touch memory)")
    print(f"  choice among candidates (no refit):   {choice:6.1f} s")
    print(f"  prune_and_restore(flops=...) whole:   {whole:6.1f} s; chose {report.allocation.label}, FLOPs kept "
          f"{report.flops_after / report.flops_before:.3f}")
    if args.json:
        write_json(args.json, {"arch": args.arch, "size": args.size, "flops": args.flops, "inputs": args.inputs,
                               "threads": args.threads, "cpu": cpu_name(), "forward_s": forward, "trace_s": trace,
                               "allocation_s": allocation, "allocation_again_s": inner, "choice_s": choice,
                               "whole_s": whole,
                               "chosen": report.allocation.label,
                               "flops_kept": report.flops_after / report.flops_before})
    return 0


if __name__ == "__main__":
    sys.exit(main())
