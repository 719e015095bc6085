"""restore.py: data-free restoration tables (original, then every method x criterion x ratio)."""
from __future__ import annotations

import copy
import time

from pytorch_lightning import seed_everything

from ..callbacks import RestoreCallback
from ..checkpoints import save_restored
from ..config import ConfigError, lookup_ratio, save_config
from ..datamodules import build_datamodule
from ..module import ClassifierModule
from ..restoration import prune_and_restore
from .common import (build_trainer, load_network, make_parser, resolve_config, run, start_run, write_csv,
                     write_json, write_text_atomic)

METHOD_TITLES = {"lbyl": "LBYL", "merge": "NM", "prune": "prune"}
DEFAULT_LAMBDAS = (1e-6, 1e-2)
DEFAULT_NM_LAMBDA = 0.85
# which images a cifar10_npz split holds, named in the table title (a holdout is drawn from "train")
CIFAR10_NPZ_COPIES = {"train": "JPEG q75 copy", "test": "JPEG q75 copy", "lossless_train": "lossless images",
                      "lossless_test": "lossless images"}


def hyperparameters(config: dict, criterion: str, ratio: float) -> dict:
    r = config["restore"]
    lambdas = lookup_ratio(r["lambdas"], criterion, ratio, "restore.lambdas") or DEFAULT_LAMBDAS
    nm = lookup_ratio(r["nm"], criterion, ratio, "restore.nm") or (None, DEFAULT_NM_LAMBDA)
    if len(lambdas) != 2 or len(nm) != 2:
        raise ConfigError(f"restore.lambdas / restore.nm entries are [a, b] pairs; got {lambdas!r} / {nm!r} "
                          f"for {criterion} at ratio {ratio}")
    return {"lambda1": float(lambdas[0]), "lambda2": float(lambdas[1]),
            "threshold": None if nm[0] is None else float(nm[0]), "nm_lambda": float(nm[1])}


def grid_points(config: dict, method: str, hp: dict) -> list[dict]:
    """The hyperparameter settings to try for ``method``: the configured one, or the search grid."""
    g = config["restore"]["grid"]
    names = {"lbyl": ("lambda1", "lambda2"), "merge": ("threshold", "nm_lambda")}.get(method)
    if names is None or not (g[names[0]] or g[names[1]]):
        return [hp]
    first = g[names[0]] or [hp[names[0]]]
    second = g[names[1]] or [hp[names[1]]]
    return [dict(hp, **{names[0]: float(a), names[1]: float(b)}) for a in first for b in second]


def selected_hparams(rows: list[dict]) -> dict:
    """The chosen values as a config fragment (``--config`` it for the test-set run)."""
    lambdas, nm = {}, {}
    for row in rows:
        if row["method"] == "lbyl":
            lambdas.setdefault(row["criterion"], {})[row["ratio"]] = [row["lambda1"], row["lambda2"]]
        elif row["method"] == "merge":
            nm.setdefault(row["criterion"], {})[row["ratio"]] = [row["threshold"], row["nm_lambda"]]
    return {"restore": {"lambdas": lambdas, "nm": nm}}


def evaluate_with_lightning(config, net, datamodule, out, callback=None) -> dict:
    m = config["model"]
    module = ClassifierModule(m["arch"], m["num_classes"], config["optim"], config["trainer"]["channels_last"],
                              eval_precision=str(config["trainer"]["eval_precision"]), input_size=m["input_size"])
    module.set_net(copy.deepcopy(net))
    trainer = build_trainer(config, out, callbacks=[callback] if callback else [], logger=False)
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return {"acc1": float(metrics["val/acc1"]), "acc5": float(metrics["val/acc5"]),
            "net": module.net if callback is None or callback.report is not None else None}


def format_markdown(config, original, rows) -> str:
    methods = config["restore"]["methods"]
    m, d = config["model"], config["data"]
    solver_note = " (float32 reference-precision solves)" if config["restore"]["solver"] == "reference" else ""
    split = d["eval_split"] if d["eval_on"] == "test" else "holdout"
    copy_note = f", {CIFAR10_NPZ_COPIES[d['eval_split'] if d['eval_on'] == 'test' else 'train']}" \
        if d["name"] == "cifar10_npz" else ""
    lines = [f"# Data-free restoration: {m['arch']} on {d['name']} ({split}{copy_note})",
             "", f"Original network: top-1 {original['acc1']:.2f}, top-5 {original['acc5']:.2f}. "
             f"LBYL variant: {config['restore']['variant']}{solver_note}. Top-1 (%) without fine-tuning.", ""]
    if any(config["restore"]["grid"].values()):
        lines += ["Hyperparameters chosen by grid search on this evaluation set "
                  f"({', '.join(f'{k}={v}' for k, v in config['restore']['grid'].items() if v)}).", ""]
    by_cell = {}  # (criterion, ratio) -> {method: row}
    for r in rows:
        by_cell.setdefault((r["criterion"], r["ratio"]), {})[r["method"]] = r
    for criterion in config["restore"]["criteria"]:
        lines += [f"## {criterion}", "",
                  "| ratio | λ1 | λ2 | NM t / λ | " + " | ".join(METHOD_TITLES[x] for x in methods) + " |",
                  "|---" * (4 + len(methods)) + "|"]
        for ratio in config["restore"]["ratios"]:
            cells = by_cell[criterion, float(ratio)]
            any_row = cells.get("lbyl", next(iter(cells.values())))
            # the merge row holds NM's resolved threshold (the other methods' rows have none)
            nm = f"{cells['merge']['threshold']:g} / {cells['merge']['nm_lambda']:g}" if "merge" in cells else "–"
            lines.append(f"| {ratio:.0%} | {any_row['lambda1']:g} | {any_row['lambda2']:g} | {nm} | "
                         + " | ".join(f"{cells[x]['acc1']:.2f}" for x in methods) + " |")
        lines.append("")
    compensating = [x for x in methods if x != "prune"]
    if compensating:  # the paper's Table A9: how large the delivered coefficients are
        lines += ["## |delivered coefficient| of the pruned filters (mean / max / min)", "",
                  "| criterion | ratio | " + " | ".join(METHOD_TITLES[x] for x in compensating) + " |",
                  "|---" * (2 + len(compensating)) + "|"]
        for (criterion, ratio), cells in by_cell.items():
            lines.append(f"| {criterion} | {ratio:.0%} | " + " | ".join(
                f"{cells[x]['coef_abs_mean']:.5f} / {cells[x]['coef_abs_max']:.5f} / "
                f"{cells[x]['coef_abs_min']:.5f}" for x in compensating) + " |")
        lines.append("")
    return "\n".join(lines)


def evaluate_cell(config, net, datamodule, out, method, criterion, ratio, hp):
    """Restore ``net`` (through RestoreCallback) and evaluate it: one row of the table."""
    kwargs = dict(method=method, criterion=criterion, ratio=float(ratio),
                  variant=config["restore"]["variant"], solver=config["restore"]["solver"], **hp)
    callback = RestoreCallback(**kwargs, seed=config["seed"])
    result = evaluate_with_lightning(config, net, datamodule, out, callback)
    report, restored = callback.report, result["net"]
    if report is None:  # spawned processes did the work; recompute the report here (cheap)
        restored, report = prune_and_restore(net, **kwargs)
    resolved = dict(hp, threshold=report.hparams.get("threshold", hp["threshold"]))
    row = {"criterion": criterion, "ratio": float(ratio), "method": method, "variant": kwargs["variant"],
           **resolved, "acc1": round(result["acc1"], 4), "acc5": round(result["acc5"], 4),
           "coef_abs_mean": report.coef_abs_mean, "coef_abs_max": report.coef_abs_max,
           "coef_abs_min": report.coef_abs_min, "params": report.params_after, "flops": report.flops_after}
    return row, restored


def main(argv=None) -> int:
    parser = make_parser("restore.py", __doc__)
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow options
    config = resolve_config(args)
    out = start_run(config)
    r = config["restore"]
    for key in ("methods", "criteria", "ratios"):
        if not isinstance(r[key], list) or not r[key]:
            raise ConfigError(f"restore.{key} must be a non-empty list (e.g. restore.ratios=[0.3,0.5]), "
                              f"got {r[key]!r}")
    for criterion in r["criteria"]:  # check every combination before the original network's evaluation
        for ratio in r["ratios"]:
            hp = hyperparameters(config, criterion, ratio)
            for method in r["methods"]:
                RestoreCallback(method, criterion, float(ratio), r["variant"], solver=r["solver"], **hp)
    seed_everything(config["seed"])  # model.checkpoint=random must give the same weights in every process
    net = load_network(config)
    datamodule = build_datamodule(config["data"], seed=config["seed"])
    started = time.time()
    original = evaluate_with_lightning(config, net, datamodule, out)
    print(f"original: top-1 {original['acc1']:.2f}  top-5 {original['acc5']:.2f}", flush=True)
    rows, tried = [], []
    for criterion in r["criteria"]:
        for ratio in r["ratios"]:
            hp = hyperparameters(config, criterion, ratio)
            for method in r["methods"]:
                best = None
                for point in grid_points(config, method, hp):
                    row, restored = evaluate_cell(config, net, datamodule, out, method, criterion, ratio, point)
                    tried.append(row)
                    if best is None or row["acc1"] > best[0]["acc1"]:  # ties keep the earlier point
                        best = (row, restored)
                row, restored = best
                rows.append(row)
                print(f"{criterion:>9} r={ratio:<5} {METHOD_TITLES[method]:>5}: top-1 {row['acc1']:.2f}  "
                      f"top-5 {row['acc5']:.2f}", flush=True)
                if r["save_checkpoints"]:
                    save_restored(restored, out / "restored" / f"{method}_{criterion}_r{ratio}.pth",
                                  acc1=row["acc1"])
    table = format_markdown(config, original, rows)
    print("\n" + table)
    write_text_atomic(out / "table.md", table + "\n")
    write_csv(out / "table.csv", rows)
    if len(tried) > len(rows):
        write_csv(out / "grid.csv", tried)
        save_config(selected_hparams(rows), out / "selected_hparams.yaml")
    write_json(out / "results.json", {"original": {k: original[k] for k in ("acc1", "acc5")}, "rows": rows,
                                      "seconds": round(time.time() - started, 1), "config": config})
    return 0


def cli(argv=None) -> int:
    return run(main, argv)
