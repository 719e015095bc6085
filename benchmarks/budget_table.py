"""Top-1 at a FLOP budget on the real checkpoints, no data: every unit and coupled group allowed (``units="all"``),
plain pruning, then the refit on distilled inputs; beside it, uniform ratios at the same FLOPs with the same refit.

    python benchmarks/budget_table.py resnet56 --flops 0.5,0.35 --csv results/budget/resnet56.csv

Allocations (``--allocations``):

- ``budget``: ``prune_and_restore(..., units="all", flops=F)``: each unit's and group's ratio chosen by the budget
  (``lbyl_pl.budget``: sensitivity on distilled inputs, no data);
- ``uniform-all``: one ratio for every unit and group (``units="all"``), the ratio whose FLOPs are nearest ``F``
  (the cost model, no data);
- ``uniform-paper``: one ratio for the paper's units only (today's default), matched to ``F`` the same way (where
  the paper's units alone can reach ``F``).

Each row: the FLOPs and params kept (counted on the pruned network), top-1 on the network's evaluation images (as
``refit_table.py``: ResNet-56 on 1,000 lossless test images, VGG16-BN on the 10,000 JPEG test images), the output
KL on held-out distilled inputs before and after the refit, the CPU latency at batch 1 and 64 (median of
``--repeats``), and each unit's ratio (``--allocation-json``). Rows are appended as measured; a row already in
``--csv`` is not measured again (resumable).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import latency_ms, set_thread_env  # noqa: E402
from refit_table import RUNS, appending_rows, cache_on_disk, eval_set, load_net, measured_keys  # noqa: E402

FIELDS = ["net", "target_flops", "allocation", "method", "criterion", "ratio", "flops_kept", "params_kept", "acc1",
          "kl_before", "kl_after", "lat_b1_ms", "lat_b64_ms", "restore_s", "budget_s"]


def uniform_ratio(net, units, target: float) -> float | None:
    """The uniform ratio (over ``units``, in steps of 0.001) whose FLOPs are nearest ``target`` of the original,
    from the cost model (no forward pass); ``None`` when even the largest ratio keeps more than ``target`` + 0.01."""
    from lbyl_pl.budget import CostModel, pruned_count
    from lbyl_pl.discovery import discover

    costs = CostModel(net, discover(net), units)
    best = None
    for k in range(0, 901):
        r = k / 1000
        try:
            kept = costs.cost({u.name: pruned_count(u, r) for u in units})[0] / costs.flops_before
        except ValueError:  # a unit would keep no channel
            break
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (r, kept)
    return best[0] if best is not None and best[1] <= target + 0.01 else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("net", choices=["resnet56", "vgg16_bn"])
    p.add_argument("--flops", default="0.5", help="comma list of FLOP fractions to keep")
    p.add_argument("--allocations", default="budget,uniform-all,uniform-paper")
    p.add_argument("--method", default="prune")
    p.add_argument("--criterion", default="l2-norm")
    p.add_argument("--refit", default="{}", help="JSON refit options")
    p.add_argument("--budget", default="{}", help="JSON budget options (lbyl_pl.budget.BUDGET_DEFAULTS)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", required=True)
    p.add_argument("--allocation-json", default=None, help="write every budget row's per-unit ratios here")
    p.add_argument("--cache-dir", default=str(RUNS / "distilled"))
    args = p.parse_args()
    set_thread_env(args.threads)
    import torch

    from lbyl_pl import evaluate, prune_and_restore
    from lbyl_pl.prunable import prunable_units
    from lbyl_pl.restoration import count_flops, count_params
    torch.set_num_threads(args.threads)

    path = Path(args.csv)
    done = measured_keys(path, ("target_flops", "allocation"))
    net = load_net(args.net)
    cache_on_disk(args.net, Path(args.cache_dir))
    data, _ = eval_set(args.net, "test")
    shape = tuple(net.example_input_size[1:])
    flops0, params0 = count_flops(net), count_params(net)
    allocations = json.loads(Path(args.allocation_json).read_text()) \
        if args.allocation_json and Path(args.allocation_json).is_file() else {}
    cells = [("1.0", "original")] + [(t, a) for t in args.flops.split(",") for a in args.allocations.split(",")]
    with appending_rows(path, FIELDS) as (f, writer):
        for target, allocation in cells:
            if (target, allocation) in done:
                continue
            row = {"net": args.net, "target_flops": target, "allocation": allocation, "method": args.method,
                   "criterion": args.criterion}
            t0 = time.perf_counter()
            report = None
            if allocation == "original":
                model = net
                row.update(method="-", criterion="-", ratio=0.0)
            else:
                kw = dict(refit=json.loads(args.refit), seed=args.seed)
                if allocation == "budget":
                    model, report = prune_and_restore(net, args.method, args.criterion, units="all",
                                                      flops=float(target), budget=json.loads(args.budget), **kw)
                    row["ratio"] = round(report.ratio, 4)
                    row["budget_s"] = round(report.seconds.get("budget", 0.0), 2)
                    allocations[target] = report.allocation.as_dict()
                else:
                    units = "all" if allocation == "uniform-all" else None
                    ratio = uniform_ratio(net, prunable_units(net, None, units), float(target))
                    if ratio is None:
                        print(f"{allocation}: the paper's units alone cannot reach {target} of the FLOPs; skipped")
                        continue
                    model, report = prune_and_restore(net, args.method, args.criterion, ratio, units=units, **kw)
                    row["ratio"] = ratio
            row["restore_s"] = round(time.perf_counter() - t0, 2)
            if report is not None and report.refit is not None:
                row.update(kl_before=f"{report.refit.output_kl_before:.5g}",
                           kl_after=f"{report.refit.output_kl_after:.5g}")
            row["flops_kept"] = round(count_flops(model) / flops0, 4)
            row["params_kept"] = round(count_params(model) / params0, 4)
            row["acc1"] = round(float(evaluate(model, data)["top1"]), 2)
            row["lat_b1_ms"] = round(latency_ms(model, shape, 1, args.repeats * 4), 2)
            row["lat_b64_ms"] = round(latency_ms(model, shape, 64, args.repeats), 1)
            writer.writerow(row)
            f.flush()
            if args.allocation_json and allocation == "budget":
                Path(args.allocation_json).write_text(json.dumps(allocations, indent=1) + "\n")
            print(f"{args.net} flops={target} {allocation}: top-1 {row['acc1']:.2f}, FLOPs {row['flops_kept']}, "
                  f"latency {row['lat_b1_ms']} / {row['lat_b64_ms']} ms", flush=True)


if __name__ == "__main__":
    main()
