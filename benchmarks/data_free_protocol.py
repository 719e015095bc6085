"""The data-free hyperparameter protocol (``docs/data_free.md``) for one network and method.

Reads a ``restore.py`` grid run *on the test set* (``grid.csv``: every point's test top-1; the best point is
the oracle no user has) and recomputes the data-free score of every grid point with
``lbyl_pl.auto_hparams_search`` (no data: inputs distilled from the network's BatchNorm statistics). Prints,
per ratio: the auto choice and its test top-1 (looked up in the grid, which contains it), the defaults' test
top-1 (a grid point too), the oracle, optional comparison columns read from other runs' ``table.csv``
(e.g. the held-out choice, the published lambda), and the Spearman correlation of -score with test top-1
over the grid. Writes ``protocol.csv`` and ``protocol.md`` into ``--output-dir``.

    python benchmarks/data_free_protocol.py --config configs/resnet56_cifar10.yaml \\
        --grid runs/df/resnet56_oracle_grid/grid.csv --compare "held-out=results/resnet56_cifar10/lossless_test/table.csv" \\
        --output-dir results/data_free_hparams/resnet56
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from bench_common import THREADS_HELP, repo_on_path, set_thread_env  # beside this script

repo_on_path()


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="the network's restore.py config(s)")
    parser.add_argument("--grid", required=True, help="grid.csv of a restore.py grid run on the test set")
    parser.add_argument("--method", default="lbyl")
    parser.add_argument("--criterion", default="l2-norm")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=TABLE_CSV",
                        help="another run's table.csv whose top-1 for the method is shown as a column")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--threads", type=int, default=2, help=THREADS_HELP)
    parser.add_argument("--bn-free", default="defaults", choices=("defaults", "deepinversion", "gaussian"),
                        help="auto_hparams' bn_free for a network without BatchNorm: 'defaults' (what auto "
                             "does) or a search on synthetic inputs of that kind")
    args = parser.parse_args(argv)
    set_thread_env(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    from lbyl_pl.atomic import write_text
    from lbyl_pl.data_free import auto_hparams_search
    from lbyl_pl.cli.common import load_network, write_csv
    from lbyl_pl.config import load_config
    from lbyl_pl.methods import get_method

    config = load_config(args.config, [])
    net = load_network(config).eval()
    names = get_method(args.method).table_hparams
    defaults = get_method(args.method)(config["restore"]["variant"]).bind(net).hparams
    grid_rows = [r for r in read_csv(args.grid) if r["method"] == args.method and r["criterion"] == args.criterion]
    ratios = sorted({float(r["ratio"]) for r in grid_rows})
    compare = {}
    for item in args.compare:
        label, _, path = item.partition("=")
        compare[label] = {float(r["ratio"]): float(r["acc1"]) for r in read_csv(path)
                          if r["method"] == args.method and r["criterion"] == args.criterion}
    out_rows = []
    for ratio in ratios:
        cell = [r for r in grid_rows if float(r["ratio"]) == ratio]
        grid = {name: sorted({float(r[name]) for r in cell}) for name in names}
        accuracy = {tuple(float(r[name]) for name in names): float(r["acc1"]) for r in cell}
        started = time.perf_counter()
        found = auto_hparams_search(net, args.method, args.criterion, ratio, config["restore"]["variant"],
                                    seed=config["seed"], grid=grid, progress=False, bn_free=args.bn_free,
                                    **config["restore"]["auto"])
        seconds = time.perf_counter() - started
        test = [accuracy[tuple(hp[name] for name in names)] for hp, _ in found.results]
        # no scores when auto returned the defaults without searching (a network without BatchNorm)
        spearman = round(found.rank_correlation(test), 4) if len(test) > 1 else float("nan")
        chosen = tuple(found.best[name] for name in names)
        default_point = tuple(float(defaults[name]) for name in names)
        oracle = max(accuracy.items(), key=lambda kv: kv[1])
        row = {"ratio": ratio, "auto": " / ".join(f"{v:g}" for v in chosen), "auto_acc1": accuracy[chosen],
               "defaults_acc1": accuracy.get(default_point, float("nan")),
               **{f"{label}_acc1": values.get(ratio, float("nan")) for label, values in compare.items()},
               "oracle": " / ".join(f"{v:g}" for v in oracle[0]), "oracle_acc1": oracle[1],
               "spearman": spearman, "grid_points": len(accuracy),
               "select_seconds": round(seconds, 1)}
        out_rows.append(row)
        print(row, flush=True)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "protocol.csv", out_rows)
    labels = list(compare)
    searched = "" if args.bn_free == "defaults" else f", bn_free={args.bn_free}"
    lines = [f"# Data-free {args.method} hyperparameters: {config['model']['arch']}, {args.criterion}, "
             f"test top-1 (grid: {Path(args.grid).parent.name}{searched})", "",
             "| ratio | auto (no data) | auto | defaults | " + "".join(f"{label} | " for label in labels)
             + "oracle (test grid) | oracle | Spearman(-score, test top-1) |",
             "|---" * (7 + len(labels)) + "|"]
    for r in out_rows:
        lines.append(f"| {r['ratio']:.0%} | {r['auto']} | {r['auto_acc1']:.2f} | {r['defaults_acc1']:.2f} | "
                     + "".join(f"{r[f'{label}_acc1']:.2f} | " for label in labels)
                     + f"{r['oracle']} | {r['oracle_acc1']:.2f} | {r['spearman']:.2f} |")
    columns = ["auto_acc1", "defaults_acc1", *(f"{label}_acc1" for label in labels), "oracle_acc1"]
    mean = {c: sum(r[c] for r in out_rows) / len(out_rows) for c in columns}
    lines.append("| mean | | " + " | ".join(f"{mean[c]:.2f}" for c in columns[:-1]) + f" | | {mean['oracle_acc1']:.2f} | |")
    # the goals, as differences the reader would otherwise compute by hand
    lines += ["", "auto minus each column, per ratio (mean; min):", ""]
    for c in columns[1:]:
        diffs = [r["auto_acc1"] - r[c] for r in out_rows]
        lines.append(f"- {c[:-len('_acc1')]}: " + " / ".join(f"{d:+.2f}" for d in diffs)
                     + f" (mean {sum(diffs) / len(diffs):+.2f}; min {min(diffs):+.2f})")
    write_text(out / "protocol.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
