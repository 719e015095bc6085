"""Side-by-side top-1 of one method across ``restore.py`` runs, per (criterion, ratio) cell.

Each ``--run LABEL=TABLE_CSV`` is a run's ``table.csv``; a label given twice merges its files (e.g. the
published lambda's two tables, l2/GM/l1 and random). The first label is the one compared: every other label
gets a "first minus it" line (per cell, mean, wins/ties/losses), and the first label's hyperparameters are
shown. Only cells that every label has are compared. Writes ``compare.md`` and ``compare.csv`` into
``--output-dir``.

    python benchmarks/compare_runs.py --method lbyl \\
        --run "auto=results/data_free_hparams/vgg16/auto_all_criteria/table.csv" \\
        --run "published=results/vgg16_cifar10/paper_norms/table.csv" \\
        --run "published=results/vgg16_cifar10/paper_random/table.csv" \\
        --output-dir results/data_free_hparams/vgg16/auto_vs_published
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from bench_common import repo_on_path  # beside this script

repo_on_path()


def read_runs(items: list[str], method: str) -> dict[str, dict[tuple[str, float], dict]]:
    runs: dict[str, dict[tuple[str, float], dict]] = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--run must be LABEL=TABLE_CSV, got {item!r}")
        if not Path(path).is_file():
            raise SystemExit(f"--run {label}: no file {path}")
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["method"] == method]
        if not rows:
            raise SystemExit(f"--run {label}: {path} has no row for method {method!r}")
        cells = runs.setdefault(label, {})
        for r in rows:
            key = (r["criterion"], float(r["ratio"]))
            if key in cells:
                raise SystemExit(f"--run {label}: cell {key} appears twice (in {path} and an earlier file)")
            cells[key] = r
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="lbyl")
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=TABLE_CSV")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)

    from lbyl_pl.atomic import write_text
    from lbyl_pl.cli.common import write_csv
    from lbyl_pl.methods import get_method

    names = get_method(args.method).table_hparams
    runs = read_runs(args.run, args.method)
    labels = list(runs)
    if len(labels) < 2:
        raise SystemExit("give at least two labels to compare")
    first = labels[0]
    order = list(runs[first])  # the first run's cell order (criteria, then ratios, as its table)
    cells = [key for key in order if all(key in runs[label] for label in labels)]
    if not cells:
        raise SystemExit("no (criterion, ratio) cell is in every run")
    rows = []
    for criterion, ratio in cells:
        row = {"criterion": criterion, "ratio": ratio,
               **{f"{first}_{name}": runs[first][(criterion, ratio)].get(name, "") for name in names},
               **{label: float(runs[label][(criterion, ratio)]["acc1"]) for label in labels}}
        rows.append(row)
    hp_header = " / ".join(names)
    lines = [f"# {get_method(args.method).title} top-1 (%): {' vs '.join(labels)}", "",
             f"| criterion | ratio | {first} {hp_header} | " + " | ".join(labels) + " |",
             "|---" * (3 + len(labels)) + "|"]
    for r in rows:
        hp = " / ".join(f"{float(r[f'{first}_{name}']):g}" if r[f"{first}_{name}"] != "" else "-" for name in names)
        lines.append(f"| {r['criterion']} | {r['ratio']:.0%} | {hp} | "
                     + " | ".join(f"{r[label]:.2f}" for label in labels) + " |")
    lines.append("| mean | | | " + " | ".join(f"{sum(r[label] for r in rows) / len(rows):.2f}" for label in labels)
                 + " |")
    lines += ["", f"{first} minus each other run over {len(rows)} cells:", ""]
    for label in labels[1:]:
        diffs = [r[first] - r[label] for r in rows]
        wins, ties = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
        lines.append(f"- {label}: mean {sum(diffs) / len(diffs):+.2f}, min {min(diffs):+.2f}, max {max(diffs):+.2f}; "
                     f"higher in {wins}, equal in {ties}, lower in {len(diffs) - wins - ties}")
        criteria = list(dict.fromkeys(r["criterion"] for r in rows))
        for criterion in criteria:
            d = [r[first] - r[label] for r in rows if r["criterion"] == criterion]
            lines.append(f"  - {criterion}: " + " / ".join(f"{x:+.2f}" for x in d) + f" (mean {sum(d) / len(d):+.2f})")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", rows)
    write_text(out / "compare.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
