"""Markdown tables from the CSVs ``benchmarks/refit_table.py`` writes (what results/README.md quotes).

    python benchmarks/refit_report.py results/refit/resnet56/table.csv > results/refit/resnet56/refit.md
    python benchmarks/refit_report.py results/refit/defaults/mixnet.csv --by options   # one row per option set

``--by cells`` (default): one row per (criterion, ratio), one column per method and refit mode (``none``: the
method alone; ``distilled``: + refit on distilled inputs, no data; ``real``: + refit on 128 real training images,
uses data), then the best start without and with the distilled refit and the spread of the distilled refit over
start methods. ``--by options``: one row per (method, criterion, refit options), one column per ratio.
Distillation and refit times (median over the rows that report them) close each table.
"""
from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict

MODES = {"none": "", "distilled": " + refit", "real": " + refit (real, uses data)"}


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def acc(row):
    return float(row["acc1"])


def by_cells(rows) -> str:
    original = [r for r in rows if r["method"] == "original"]
    rows = [r for r in rows if r["method"] != "original"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    modes = [m for m in MODES if any(r["refit"] == m for r in rows)]
    columns = [(m, mode) for mode in modes for m in methods if any(r["method"] == m and r["refit"] == mode
                                                                    for r in rows)]
    cells = defaultdict(dict)
    for r in rows:
        cells[r["criterion"], float(r["ratio"])][r["method"], r["refit"]] = r
    lines = []
    if original:
        lines.append(f"original: {acc(original[0]):.2f}\n")
    head = ["criterion", "ratio"] + [f"{m}{MODES[mode]}" for m, mode in columns]
    extra = "none" in modes and "distilled" in modes
    if extra:
        head += ["best start", "best + refit", "refit: worst start to best"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (criterion, ratio), got in cells.items():
        values = [f"{acc(got[c]):.2f}" if c in got else "-" for c in columns]
        if extra:
            plain = [acc(got[m, "none"]) for m in methods if (m, "none") in got]
            refit = [acc(got[m, "distilled"]) for m in methods if (m, "distilled") in got]
            values += [f"{max(plain):.2f}" if plain else "-", f"{max(refit):.2f}" if refit else "-",
                       f"{max(refit) - min(refit):.2f}" if refit else "-"]
        lines.append(f"| {criterion} | {ratio:.0%} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n" + times(rows)


def by_options(rows) -> str:
    original = [r for r in rows if r["method"] == "original"]
    rows = [r for r in rows if r["method"] != "original"]
    ratios = sorted({float(r["ratio"]) for r in rows})
    table = defaultdict(dict)
    for r in rows:
        label = (r["method"], r["criterion"], r["refit"], r["options"] if r["refit"] != "none" else "-")
        table[label][float(r["ratio"])] = acc(r)
    lines = [f"original: {acc(original[0]):.2f}\n"] if original else []
    lines += ["| method | criterion | refit | options | " + " | ".join(f"{x:.0%}" for x in ratios) + " | mean |",
              "|---" * (5 + len(ratios)) + "|"]
    for (method, criterion, mode, options), got in table.items():
        vals = [got.get(x) for x in ratios]
        mean = f"{statistics.mean(vals):.2f}" if None not in vals else "-"  # over every ratio, or not at all
        lines.append(f"| {method} | {criterion} | {mode} | `{options}` | "
                     + " | ".join(f"{v:.2f}" if v is not None else "-" for v in vals) + f" | {mean} |")
    return "\n".join(lines) + "\n" + times(rows)


def times(rows) -> str:
    distill = [float(r["distill_s"]) for r in rows if r.get("distill_s") and float(r["distill_s"]) > 1.0]
    refit = [float(r["refit_s"]) for r in rows if r.get("refit_s")]
    parts = []
    if distill:
        parts.append(f"distillation {statistics.median(distill):.0f} s (median of {len(distill)} runs that distilled)")
    if refit:
        parts.append(f"refit {statistics.median(refit):.1f} s (median of {len(refit)})")
    return ("\nTimes (as run, machine shared with other jobs): " + "; ".join(parts) + "\n") if parts else ""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="+")
    p.add_argument("--by", choices=("cells", "options"), default="cells")
    p.add_argument("--title", default=None, help="first line (what network, which images); default: the CSV path")
    args = p.parse_args()
    for path in args.csv:
        print(f"# {args.title or path}\n")
        rows = read(path)
        print(by_cells(rows) if args.by == "cells" else by_options(rows))


if __name__ == "__main__":
    main()
