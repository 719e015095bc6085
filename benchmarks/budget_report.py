"""Markdown tables of ``budget_table.py``'s CSV and allocation JSON (results/README.md, "FLOP budgets").

    python benchmarks/budget_report.py results/budget/resnet56.csv \\
        --allocation results/budget/resnet56_allocation.json --goals 0.5=89.0,0.35=85.0 > results/budget/resnet56.md
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

LABELS = {"original": "original", "budget": "**budget** (`units=\"all\"`, `flops=F`)",
          "uniform-all": "uniform, all units and groups", "uniform-paper": "uniform, the paper's units"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv")
    p.add_argument("--allocation", default=None)
    p.add_argument("--goals", default="", help="target=top-1 goal pairs, comma separated")
    args = p.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    goals = dict(pair.split("=") for pair in args.goals.split(",") if pair)
    allocations = json.loads(Path(args.allocation).read_text()) if args.allocation else {}
    net = rows[0]["net"]
    print(f"**{net}**, plain pruning then the refit on distilled inputs (no data), l2-norm.\n")
    print("| FLOPs target | allocation | ratio (channels pruned) | FLOPs kept | params kept | top-1 | goal | "
          "output KL before → after refit | latency b1 / b64 (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    order = {"original": 0, "budget": 1, "uniform-paper": 2, "uniform-all": 3}
    for r in sorted(rows, key=lambda r: (-float(r["target_flops"]), order.get(r["allocation"], 9))):
        target = r["target_flops"]
        label = LABELS.get(r["allocation"], r["allocation"])
        if r["allocation"] == "budget" and target in allocations:
            label += f": {allocations[target]['label']}"
        goal = ""
        if r["allocation"] == "budget" and target in goals:
            met = float(r["acc1"]) >= float(goals[target])
            goal = f"≥ {goals[target]}: {'met' if met else '**missed**'}"
        kl = f"{float(r['kl_before']):.3g} → {float(r['kl_after']):.3g}" if r.get("kl_before") else "-"
        print(f"| {target} | {label} | {r['ratio']} | {r['flops_kept']} | {r['params_kept']} | {r['acc1']} | {goal} | "
              f"{kl} | {r['lat_b1_ms']} / {r['lat_b64_ms']} |")
    for target, a in allocations.items():
        print(f"\nAllocation at flops={target} (chosen: {a['label']}; every candidate's output KL on held-out "
              "distilled inputs, the lowest is chosen: " +
              ", ".join(f"{k} {v:.4g}" for k, v in a["candidates"].items()) + "):\n")
        print("| unit or group | ratio | output KL pruned alone at " +
              " / ".join(str(r) for r, _ in next(iter(a["sensitivity"].values()))) + " |")
        print("|---|---|---|")
        for name, ratio in a["ratios"].items():
            curve = " / ".join(f"{kl:.3g}" for _, kl in a["sensitivity"][name])
            print(f"| {name} | {ratio:g} | {curve} |")


if __name__ == "__main__":
    main()
