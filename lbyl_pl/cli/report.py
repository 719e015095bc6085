"""report.py: read fine-tuning runs' TensorBoard events and write the before -> after table (as the
paper's Table A8) and the convergence curves (PNG).

Usage: report.py RUN_DIR [RUN_DIR ...] --output-dir DIR   (a RUN_DIR is a finetune.py output directory;
a directory holding several of them is searched one level down).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ..methods import METHODS, get_method
from .common import UsageError, prepare_output_dir, run, write_csv, write_json, write_text_atomic

TAG = "curve/val_acc1"
# "best" is the maximum of every evaluation of the curve (epoch 0 included), on the evaluation set, i.e.
# picked on the test set: it is not an estimate of what a chosen epoch would give
BEST_LABEL = "best (max over all epochs, test set)"


def read_curve(run_dir: Path) -> dict[int, float]:
    """``epoch -> top-1`` from every event file of the run (the last write of an epoch wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve: dict[int, tuple[float, float]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if TAG in acc.Tags().get("scalars", []):
            for e in acc.Scalars(TAG):
                if e.step not in curve or e.wall_time >= curve[e.step][0]:
                    curve[e.step] = (e.wall_time, e.value)
    return {step: value for step, (_, value) in sorted(curve.items())}


def find_runs(paths) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        if (p / "finetune.json").is_file():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(q.parent for q in p.glob("*/finetune.json"))
        else:
            raise UsageError(f"{p} is not a finetune.py run directory")
    if not runs:
        raise UsageError(f"no finetune.py runs (directories with finetune.json) under: {', '.join(map(str, paths))}")
    return runs


def run_label(info: dict) -> str:
    if info["init"] == "scratch":
        return "Scratch"
    return get_method(info["method"]).title if info["method"] in METHODS else info["method"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finetune.py run directories (or their parent)")
    parser.add_argument("--output-dir", required=True,
                        help="where table.md/csv, curves.csv/png, report.json and configs/ (each run's "
                             "resolved config.yaml) go")
    parser.add_argument("--title", default="Fine-tuning after data-free restoration")
    args = parser.parse_intermixed_args(argv)  # run directories may follow options
    out = prepare_output_dir(args.output_dir)
    rows, run_curves, run_dirs = [], [], []
    for run_dir in find_runs(args.runs):
        info = json.loads((run_dir / "finetune.json").read_text())
        curve = read_curve(run_dir)
        if not curve:
            raise UsageError(f"{run_dir} has no '{TAG}' events (was it written by finetune.py?)")
        label = run_label(info)
        last_epoch = max(curve)
        rows.append({"run": run_dir.name, "label": label, "method": info["method"], "init": info["init"],
                     "criterion": info["criterion"], "ratio": info["ratio"], "epochs": last_epoch,
                     "before": round(curve.get(0, float("nan")), 2), "after": round(curve[last_epoch], 2),
                     "best": round(max(curve.values()), 2)})
        run_curves.append(curve)
        run_dirs.append(run_dir)
        config = run_dir / "config.yaml"
        if config.is_file():  # the resolved config of every run, beside the table it produced
            (out / "configs").mkdir(exist_ok=True)
            write_text_atomic(out / "configs" / f"{run_dir.parent.name}_{run_dir.name}.yaml", config.read_text())
    keys, columns = run_names(rows, run_dirs)
    curves = dict(zip(keys, run_curves))  # report.json and the legend of curves.png
    lines = [f"# {args.title}", "", f"| run | ratio | criterion | epochs | before → after | {BEST_LABEL} |",
             "|---|---|---|---|---|---|"]
    for r, column in zip(rows, columns):
        lines.append(f"| {column} | {r['ratio']:.0%} | {r['criterion']} | {r['epochs']} | "
                     f"{r['before']:.2f} → {r['after']:.2f} | {r['best']:.2f} |")
    per_epoch = curve_rows(dict(zip(columns, run_curves)))
    lines += ["", "## Top-1 (%) per epoch (epoch 0 = before any training step)", "",
              "| epoch | " + " | ".join(columns) + " |", "|---" * (len(rows) + 1) + "|"]
    for row in per_epoch:
        lines.append(f"| {row['epoch']} | " + " | ".join(
            "–" if row[c] == "" else f"{row[c]:.2f}" for c in columns) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_text_atomic(out / "table.md", table)
    write_csv(out / "table.csv", rows)
    write_csv(out / "curves.csv", per_epoch)
    write_json(out / "report.json", {"rows": rows, "curves": {k: {str(e): v for e, v in c.items()}
                                                              for k, c in curves.items()}})
    plot_curves(curves, out / "curves.png", args.title)
    return 0


def distinct_names(candidates: list[list[str]]) -> list[str]:
    """For each run, the first of its candidate names (least to most specific) that no other run's chosen
    name equals; runs still alike after their last candidate (one directory named twice) are numbered."""
    level = [0] * len(candidates)
    while True:
        names = [c[i] for c, i in zip(candidates, level)]
        counts = Counter(names)
        clashing = [k for k, name in enumerate(names) if counts[name] > 1 and level[k] + 1 < len(candidates[k])]
        if not clashing:
            break
        for k in clashing:
            level[k] += 1
    taken, seen, out = set(names), Counter(), []
    for name in names:
        if counts[name] > 1:
            while True:
                seen[name] += 1
                numbered = f"{name} #{seen[name]}"
                if numbered not in taken:
                    break
            taken.add(numbered)
            name = numbered
        out.append(name)
    return out


def run_names(rows: list[dict], run_dirs: list[Path]) -> tuple[list[str], list[str]]:
    """Each run's curve key (report.json's curves, the legend of curves.png) and its column (the tables,
    curves.csv), distinct across the runs. The key is ``"<label> (r=<ratio>)"``, with the run directory's name
    (then its path) added where two runs share it; the column is the label alone where no other run has that
    label, the key otherwise."""
    keys = distinct_names([[f"{r['label']} (r={r['ratio']})", f"{r['label']} (r={r['ratio']}, {d.name})",
                            f"{r['label']} (r={r['ratio']}, {d})"] for r, d in zip(rows, run_dirs)])
    columns = distinct_names([[r["label"], key] for r, key in zip(rows, keys)])
    return keys, columns


def curve_rows(curves: dict[str, dict[int, float]]) -> list[dict]:
    """One row per epoch, one column per run (``column -> epoch -> top-1``; ``""`` where a run has no value
    for that epoch)."""
    epochs = sorted({e for curve in curves.values() for e in curve})
    return [{"epoch": e, **{column: round(c[e], 2) if e in c else "" for column, c in curves.items()}}
            for e in epochs]


def plot_curves(curves: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch (0 = before any training step)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def cli(argv=None) -> int:
    return run(main, argv)
