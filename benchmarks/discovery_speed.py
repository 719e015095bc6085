"""End-to-end time of restoring a plain torchvision network: discovery (tracing) plus LBYL.

Command line (from the repository root)::

    python benchmarks/discovery_speed.py [--model resnet101] [--ratio 0.3] [--size 224] [--threads 2] \
        [--repeats 3] [--json out.json]

Setting: ``torchvision.models.get_model(--model, weights=None)`` (random weights, randomised BN
statistics, seeded), a plain ``nn.Module`` with no ``prunable_units()``; one call of
``prune_and_restore(model, "lbyl", "l2-norm", ratio, example_inputs=x)`` with the discovery cache
cleared first, so every repeat traces the graph again. Printed: the median wall time of the whole
call and its split into tracing (Torch-Pruning's DependencyGraph plus the FLOP count of the original,
measured during the same forward pass), solving (criteria and LBYL's closed form), surgery and
counting (params, and the pruned FLOPs). The baseline measured in the same run is the built-in
``resnet101`` (hand-selected units over the same discovery) with FLOPs counted by a second forward
pass of both networks (``count_flops``), the way the package counted them before discovery.
Goal: the torchvision model end to end under 1.5 s on 2 cores at r = 0.3, 224 px.
"""
from __future__ import annotations

import statistics
import sys
import time

from bench_common import cpu_name, make_parser, randomize_bn, set_thread_env, write_json  # beside this script


def main(argv=None) -> int:
    parser = make_parser(__doc__, device=False, checkpoint_help="unused (random weights)",
                         seed_help="seed of the random weights and BN statistics")
    parser.add_argument("--model", default="resnet101", help="torchvision classification model")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    set_thread_env(args.threads)
    import torch

    from lbyl_pl import build_model, prune_and_restore
    from lbyl_pl import discovery
    from lbyl_pl.restoration import count_flops

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(f"torchvision/{args.model}", input_size=args.size).eval()
    randomize_bn(model)
    x = torch.zeros(1, 3, args.size, args.size)
    prune_and_restore(model, "lbyl", "l2-norm", args.ratio, example_inputs=x)  # warm-up
    runs = []
    for _ in range(args.repeats):
        discovery._CACHE.clear()
        started = time.perf_counter()
        _, report = prune_and_restore(model, "lbyl", "l2-norm", args.ratio, example_inputs=x)
        runs.append({"total": time.perf_counter() - started, **report.seconds})
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    baseline_model = build_model(args.model).eval() if args.model in ("resnet101", "resnet34") else None
    baseline = None
    if baseline_model is not None:
        baseline_model.load_state_dict(model.state_dict())
        times = []
        for _ in range(args.repeats):
            discovery._CACHE.clear()
            started = time.perf_counter()
            restored, _ = prune_and_restore(baseline_model, "lbyl", "l2-norm", args.ratio)
            count_flops(baseline_model), count_flops(restored)
            times.append(time.perf_counter() - started)
        baseline = statistics.median(times)

    print(f"{args.model}, LBYL l2-norm r = {args.ratio}, {args.size} px, {args.threads} thread(s), {cpu_name()}")
    print(f"end to end: {median['total']:.3f} s (median of {args.repeats}; "
          + ", ".join(f"{k} {median[k]:.3f} s" for k in ("trace", "solve", "surgery", "count")) + ")")
    if baseline is not None:
        print(f"baseline (built-in {args.model}, FLOPs by two extra forward passes): {baseline:.3f} s; "
              f"ratio {baseline / median['total']:.2f}x")
    goal = median["total"] < 1.5
    print(f"goal (< 1.5 s end to end): {'met' if goal else 'NOT MET'}")
    if args.json:
        write_json(args.json, {"model": args.model, "ratio": args.ratio, "size": args.size,
                               "threads": args.threads, "cpu": cpu_name(), "runs": runs, "median": median,
                               "baseline_s": baseline, "goal_met": goal})
    return 0


if __name__ == "__main__":
    sys.exit(main())
