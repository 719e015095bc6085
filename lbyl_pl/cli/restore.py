"""restore.py: data-free restoration tables (original, then every method x criterion x ratio).

restore.refit=both adds each method with the refit of the pruned layers on inputs distilled from the network
(no data is read; restore.refit_options: n, heldout, iterations, stats, alphas, max_rows).

restore.flops=[0.5] adds a row "flops 0.5" (every method and criterion) whose network keeps half of the
original FLOPs, a ratio per unit chosen without data (lbyl_pl.budget; restore.budget: inputs, ratios,
caps, step, restored; its inputs are distilled from the network's BatchNorm statistics, with restore.refit_options
when the refit is on); its row records the FLOPs measured (flops_kept). restore.units=all prunes every unit and
coupled group (residual streams etc.; methods prune and fusion) in every cell; null keeps the default units."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from pytorch_lightning import seed_everything
from tqdm import tqdm

from ..budget import check_budget, check_budget_options
from ..callbacks import RestoreCallback
from ..checkpoints import save_restored
from ..config import AUTO, ConfigError, lookup_ratio, save_config
from ..methods import METHODS, describe_methods, get_method
from ..datamodules import build_datamodule
from ..module import ClassifierModule
from ..prunable import ALL_UNITS
from ..refit import check_refit_options
from ..restoration import prune_and_restore
from ..spec import drop_spec, spec_of
from .common import (build_trainer, load_network, make_parser, quiet_lightning, resolve_config, run, start_run,
                     write_csv, write_json, write_text_atomic)

# which images a cifar10_npz split holds, named in the table title (a holdout is drawn from "train")
CIFAR10_NPZ_COPIES = {"train": "JPEG q75 copy", "test": "JPEG q75 copy", "lossless_train": "lossless images",
                      "lossless_test": "lossless images"}


def title(method: str) -> str:
    return get_method(method).title


REFIT_MODES = {False: [False], True: [True], "both": [False, True]}
REFIT_SUFFIX = " + refit"


def refit_modes(config: dict) -> list[bool]:
    """``restore.refit``: false, true or both (each method without and with the refit), its options checked."""
    value = config["restore"]["refit"]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not (isinstance(value, bool) or value == "both"):
        raise ConfigError(f"restore.refit must be false, true or both, got {value!r}")
    try:
        check_refit_options(config["restore"]["refit_options"])
    except ValueError as err:
        raise ConfigError(f"restore.refit_options: {err}") from None
    return REFIT_MODES[value]


@dataclass(frozen=True)
class FlopsTarget:
    """A ``restore.flops`` entry, in a cell's ratio slot: the network keeps this fraction of the original FLOPs,
    a ratio per unit chosen by the budget (``prune_and_restore(flops=...)``)."""
    flops: float

    def __str__(self) -> str:
        return f"flops {self.flops:g}"


def flops_targets(config: dict) -> list[FlopsTarget]:
    """``restore.flops``: a list of FLOP fractions to keep, each in (0, 1]; ``restore.budget`` (its options) checked."""
    values = config["restore"]["flops"]
    if not isinstance(values, list):
        raise ConfigError(f"restore.flops must be a list of the fractions of the original FLOPs to keep, each in "
                          f"(0, 1] (e.g. restore.flops=[0.5]), got {values!r}")
    targets = []
    for value in values:
        try:
            flops = check_budget(value, "flops")
        except ValueError as err:
            raise ConfigError(f"restore.flops: {err}") from None
        if flops is None:
            raise ConfigError("restore.flops: flops must be the fraction of the original flops to keep, a number in "
                              "(0, 1]; got None")
        if FlopsTarget(flops) in targets:
            raise ConfigError(f"restore.flops lists {value!r} twice")
        targets.append(FlopsTarget(flops))
    try:
        check_budget_options(config["restore"]["budget"])
    except ValueError as err:
        raise ConfigError(f"restore.budget: {err}") from None
    return targets


def check_restore_units(config: dict):
    """``restore.units``: null (the default units), ``all`` (every unit and coupled group, for methods that prune
    groups only) or a list of producer module names."""
    r = config["restore"]
    units = r["units"]
    if units == ALL_UNITS:
        refusing = [name for name in r["methods"] if not get_method(name).supports_groups]
        if refusing:
            allowed = ", ".join(name for name, cls in METHODS.items() if cls.supports_groups)
            raise ConfigError(f"restore.units=all prunes the coupled groups (residual streams, concatenations, "
                              f"grouped convs), which method(s) {', '.join(refusing)} cannot restore; methods that "
                              f"prune groups: {allowed}. Leave them out of restore.methods, or restore.units null")
    elif units is not None and not (isinstance(units, list) and units and
                                    all(isinstance(u, str) and u for u in units)):
        raise ConfigError(f"restore.units must be null (the default units), {ALL_UNITS!r} (every unit and coupled "
                          f"group) or a list of producer module names, got {units!r}")
    return units


def target_kwargs(config: dict, ratio) -> dict:
    """A cell's ``ratio=`` or budget (``flops=`` with ``restore.budget``'s options), for ``RestoreCallback`` and
    ``prune_and_restore``."""
    if isinstance(ratio, FlopsTarget):
        return {"flops": ratio.flops, "budget": dict(config["restore"]["budget"])}
    return {"ratio": float(ratio)}


def table_ratio(ratio):
    """The ratio a cell looks its per-cell hyperparameters up with: ``None`` (the tables' defaults) for a budget."""
    return None if isinstance(ratio, FlopsTarget) else ratio


def label(ratio) -> str:
    """A cell's entry in the ratio column: ``30%``, or ``flops 0.5`` for a budget."""
    return str(ratio) if isinstance(ratio, FlopsTarget) else f"{ratio:.0%}"


def where(ratio) -> str:
    """A cell's ratio as the progress bar and the printed lines show it: ``r=0.3`` or ``flops=0.5``."""
    return f"flops={ratio.flops:g}" if isinstance(ratio, FlopsTarget) else f"r={ratio}"


def cell_of(row: dict):
    """The ratio slot of a row's cell: its ratio, or its ``FlopsTarget``."""
    return FlopsTarget(row["flops_target"]) if "flops_target" in row else row["ratio"]


def column(method: str, refit: bool) -> str:
    """A table column's name: the method's title, with the refit marked."""
    return title(method) + (REFIT_SUFFIX if refit else "")


def hyperparameters(config: dict, method: str, criterion: str, ratio: float | None) -> dict:
    """``method``'s keyword arguments for one cell: its per-(criterion, ratio) pair from ``restore.<table>``
    (``restore.lambdas`` for LBYL, ``restore.nm`` for NM), then the fixed values of ``restore.hparams.<method>``
    (and the legacy ``restore.solver`` for LBYL); whatever is not set takes the method's default. ``ratio=None``
    (a budget's cell): the tables' defaults."""
    r = config["restore"]
    cls = get_method(method)
    hp = {}
    if cls.config_table is not None:
        pair = lookup_ratio(r.get(cls.config_table, {}), criterion, ratio, f"restore.{cls.config_table}")
        if pair is not None and pair != AUTO:  # "auto": chosen without data once the network is loaded
            if not isinstance(pair, (list, tuple)) or len(pair) != len(cls.table_hparams):
                raise ConfigError(f"restore.{cls.config_table} entries are [{', '.join(cls.table_hparams)}] pairs; "
                                  f"got {pair!r} for {criterion} at ratio {ratio}")
            hp.update({name: None if value is None else float(value)
                       for name, value in zip(cls.table_hparams, pair)})
    if "solver" in cls.defaults():
        hp["solver"] = r["solver"]
    fixed = r["hparams"].get(method) or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"restore.hparams.{method} must map hyperparameter names to values, got {fixed!r}")
    hp.update(fixed)
    return hp


def is_auto(config: dict, method: str, criterion: str, ratio: float | None) -> bool:
    """Whether ``method``'s per-cell hyperparameters are to be chosen without data (``restore.<table>: auto``)."""
    table = get_method(method).config_table
    return table is not None and lookup_ratio(config["restore"].get(table, {}), criterion, ratio,
                                              f"restore.{table}") == AUTO


def choose_without_data(config: dict, net, method: str, criterion: str, ratio: float, hp: dict,
                        progress: bool) -> dict:
    """``hp`` with the method's per-cell hyperparameters chosen by ``lbyl_pl.data_free`` (no data is read:
    inputs are distilled from the network's BatchNorm statistics, once per network)."""
    from ..data_free import auto_hparams

    chosen = auto_hparams(net, method, criterion, float(ratio), config["restore"]["variant"], seed=config["seed"],
                          progress=progress, **config["restore"]["auto"], **hp)
    return dict(hp, **chosen)


def check_grid(grid: dict) -> None:
    """``restore.grid``: every key a registered method's table hyperparameter (so that a method added to the
    registry is searchable without touching the config schema), every value a list of numbers."""
    allowed = sorted({name for cls in METHODS.values() for name in cls.table_hparams})
    for name, values in grid.items():
        if name not in allowed:
            raise ConfigError(f"unknown restore.grid key {name!r}; allowed: {', '.join(allowed)} "
                              "(the registered methods' table hyperparameters)")
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise ConfigError(f"restore.grid.{name} must be a list of numbers (e.g. "
                              f"restore.grid.{name}=[0.001,0.01]), got {values!r}")


def grid_points(config: dict, method: str, hp: dict) -> list[dict]:
    """The hyperparameter settings to try for ``method``: the configured one, or the search grid over its
    ``table_hparams`` (``restore.grid.<name>`` lists)."""
    g = config["restore"]["grid"]
    names = get_method(method).table_hparams
    if not names or not any(g.get(name) for name in names):
        return [hp]
    points = [dict(hp)]
    for name in names:
        values = g.get(name) or [hp.get(name, get_method(method).defaults()[name])]
        points = [dict(point, **{name: float(value)}) for point in points for value in values]
    return points


def selected_hparams(rows: list[dict]) -> dict:
    """The chosen values as a config fragment (``--config`` it for the test-set run). A budget's rows have no
    ratio to key them by and are left out."""
    tables: dict = {}
    for row in rows:
        if "flops_target" in row:
            continue
        cls = get_method(row["method"])
        if cls.config_table is not None:
            tables.setdefault(cls.config_table, {}).setdefault(row["criterion"], {})[row["ratio"]] = \
                [row[name] for name in cls.table_hparams]
    return {"restore": tables}


class SweepCallback(RestoreCallback):
    """The sweep's one ``RestoreCallback``: idle while the original network is evaluated (``active``
    False), then re-targeted (``retarget``) for every cell."""

    active = False

    def on_validation_start(self, trainer, pl_module):
        if self.active:
            super().on_validation_start(trainer, pl_module)


# Launchers that start new worker processes for every trainer.validate, and the one that starts them once
# for the whole sweep (Lightning's ``ddp``: the other ranks run this same command line).
PER_CALL_LAUNCHERS = ("ddp_spawn", "ddp_fork")


def sweep_strategy(strategy, relaunchable: bool):
    """The strategy the sweep validates with: ``trainer.strategy``, except that ``ddp_spawn`` / ``ddp_fork``
    (and their ``_find_unused_parameters_*`` forms) become ``ddp`` when the command line can be run again
    (``relaunchable``), so that one set of processes runs the whole sweep."""
    if relaunchable and isinstance(strategy, str):
        for prefix in PER_CALL_LAUNCHERS:
            if strategy == prefix or strategy.startswith(prefix + "_"):
                return "ddp" + strategy[len(prefix):]
    return strategy


def validate(trainer, module, datamodule) -> dict:
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return {"acc1": float(metrics["val/acc1"]), "acc5": float(metrics["val/acc5"])}


def format_markdown(config, original, rows) -> str:
    modes = refit_modes(config)
    methods = [(x, refit) for x in config["restore"]["methods"] for refit in modes]
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
    auto = sorted({title(r["method"]) for r in rows if r.get("auto")})
    if auto:
        lines += [f"{', '.join(auto)} hyperparameters marked (auto) were chosen without data "
                  "(lbyl_pl.auto_hparams: inputs distilled from the network's BatchNorm statistics); "
                  "no dataset was read to choose them.", ""]
    if any(modes):
        lines += [f"Columns marked{REFIT_SUFFIX} refit the pruned layers on inputs distilled from the network's "
                  "BatchNorm statistics (lbyl_pl.refit); no data was read.", ""]
    by_cell = {}  # (criterion, ratio or FlopsTarget) -> {(method, refit): row}
    for r in rows:
        by_cell.setdefault((r["criterion"], cell_of(r)), {})[r["method"], bool(r.get("refit"))] = r
    # one column per method that has per-cell hyperparameters (LBYL's lambdas, NM's t / lambda)
    tuned = [x for x in config["restore"]["methods"] if get_method(x).table_hparams]
    for criterion in config["restore"]["criteria"]:
        lines += [f"## {criterion}", "",
                  "| ratio | " + "".join(f"{title(x)} {' / '.join(get_method(x).table_hparams)} | " for x in tuned)
                  + " | ".join(column(*x) for x in methods) + " |",
                  "|---" * (1 + len(tuned) + len(methods)) + "|"]
        for ratio in [float(ratio) for ratio in config["restore"]["ratios"]] + flops_targets(config):
            cells = by_cell[criterion, ratio]
            # each method's row holds its resolved hyperparameters (e.g. NM's architecture-default threshold)
            values = "".join(" / ".join(f"{cells[x, modes[0]][name]:g}" for name in get_method(x).table_hparams)
                             + (" (auto)" if cells[x, modes[0]].get("auto") else "") + " | " for x in tuned)
            lines.append(f"| {label(ratio)} | {values}" + " | ".join(f"{cells[x]['acc1']:.2f}" for x in methods)
                         + " |")
        lines.append("")
    compensating = [(x, modes[0]) for x in config["restore"]["methods"] if x != "prune"]  # the refit changes none
    if compensating:  # the paper's Table A9: how large the delivered coefficients are
        lines += ["## |delivered coefficient| of the pruned filters (mean / max / min)", "",
                  "| criterion | ratio | " + " | ".join(column(*x) for x in compensating) + " |",
                  "|---" * (2 + len(compensating)) + "|"]
        for (criterion, ratio), cells in by_cell.items():
            lines.append(f"| {criterion} | {label(ratio)} | " + " | ".join(
                f"{cells[x]['coef_abs_mean']:.5f} / {cells[x]['coef_abs_max']:.5f} / "
                f"{cells[x]['coef_abs_min']:.5f}" for x in compensating) + " |")
        lines.append("")
    return "\n".join(lines)


def evaluate_cell(trainer, module, callback, datamodule, net, config, method, criterion, ratio, hp, refit=False):
    """Restore ``net`` (RestoreCallback, before validation) and evaluate it: one row of the table, and the
    restored network (this process's own; recomputed only where spawned workers did the restoring). ``ratio``: a
    ratio, or a ``FlopsTarget`` (a budget: the row records the FLOPs target and the fraction kept)."""
    refit_options = dict(config["restore"]["refit_options"]) if refit else False
    kwargs = dict(method=method, criterion=criterion, **target_kwargs(config, ratio),
                  variant=config["restore"]["variant"], refit=refit_options, **hp)
    module.set_net(net)  # the unpruned network itself: prune_and_restore never modifies it, so no copy
    callback.retarget(**kwargs)
    result = validate(trainer, module, datamodule)
    report, restored = callback.report, module.net
    if report is None:  # ddp_spawn kept (restore.py called with argv): the spawned workers restored
        restored, report = prune_and_restore(net, seed=config["seed"], units=config["restore"]["units"], **kwargs)
    resolved = dict(report.hparams)  # with the defaults the method filled in (e.g. NM's threshold)
    budget = {}
    if isinstance(ratio, FlopsTarget):  # ratio: the fraction of the channels pruned overall
        budget = {"flops_target": ratio.flops}
    row = {"criterion": criterion, "ratio": float(report.ratio if budget else ratio), **budget, "method": method,
           "variant": kwargs["variant"], **resolved, "acc1": round(result["acc1"], 4),
           "acc5": round(result["acc5"], 4), "coef_abs_mean": report.coef_abs_mean,
           "coef_abs_max": report.coef_abs_max, "coef_abs_min": report.coef_abs_min, "params": report.params_after,
           "flops": report.flops_after}
    if budget:  # the fraction of the original FLOPs the restored network keeps, measured
        row["flops_kept"] = report.flops_after / max(report.flops_before, 1)
    if report.refit is not None:  # marked, with the output error on the held-out distilled inputs before and after
        row.update(refit=True, refit_kl_before=report.refit.output_kl_before,
                   refit_kl_after=report.refit.output_kl_after)
    return row, restored


def plan_sweep(config: dict) -> list[tuple]:
    """Every ``(criterion, ratio, method, grid points, auto)`` cell of the table, each point checked: a bad name
    or value fails here, before the (long) evaluation of the original network. ``auto``: the method's per-cell
    hyperparameters are chosen without data once the network is loaded; then whether the refit follows
    (``restore.refit``: one cell each for false and true with ``both``). The ratio slot holds a ``FlopsTarget``
    for each ``restore.flops`` entry (after the ratios)."""
    r = config["restore"]
    targets = flops_targets(config)
    for key in ("methods", "criteria", "ratios"):
        if not isinstance(r[key], list) or not (r[key] or (key == "ratios" and targets)):
            raise ConfigError(f"restore.{key} must be a non-empty list (e.g. restore.ratios=[0.3,0.5]), "
                              f"got {r[key]!r}")
    check_grid(r["grid"])
    modes = refit_modes(config)
    check_restore_units(config)
    cells = []
    for criterion in r["criteria"]:
        for ratio in [*r["ratios"], *targets]:
            for method in r["methods"]:
                get_method(method)  # an unknown name fails here, naming the registered methods
                points = grid_points(config, method, hyperparameters(config, method, criterion, table_ratio(ratio)))
                auto = is_auto(config, method, criterion, table_ratio(ratio))
                if auto and isinstance(ratio, FlopsTarget):
                    raise ConfigError(f"restore.{get_method(method).config_table} is 'auto' for {method} "
                                      f"({criterion}) and restore.flops asks for {ratio}: the data-free choice "
                                      "needs one ratio; give the table a fixed default entry for the budget's rows")
                if auto and len(points) > 1:
                    raise ConfigError(f"restore.{get_method(method).config_table} is 'auto' for {method} "
                                      f"({criterion}, {ratio}) and restore.grid searches it too: choose one")
                for point in points:
                    RestoreCallback(method, criterion, variant=r["variant"], **target_kwargs(config, ratio), **point)
                for refit in modes:
                    cells.append((criterion, ratio, method, points, auto, refit))
    return cells


def main(argv=None) -> int:
    parser = make_parser("restore.py", __doc__, describe_methods())
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow options
    config = resolve_config(args)
    quiet_lightning()  # before the Trainer: its banners
    cells = plan_sweep(config)
    r, m, t = config["restore"], config["model"], config["trainer"]
    # One Trainer for the whole sweep. Every rank runs this function and takes part in every evaluation
    # (the DataModule shards the evaluation set: exact counts); rank zero alone prints, draws the sweep's
    # progress bar and writes files. Lightning's own bar would draw one bar per evaluation: off.
    strategy = sweep_strategy(t["strategy"], relaunchable=argv is None)
    callback = SweepCallback(cells[0][2], cells[0][0], variant=r["variant"], seed=config["seed"],
                             units=r["units"], **target_kwargs(config, cells[0][1]), **cells[0][3][0])
    trainer = build_trainer(config, config["output_dir"], callbacks=[callback], logger=False, strategy=strategy,
                            enable_progress_bar=False, enable_checkpointing=False)
    main_rank = trainer.is_global_zero
    out = start_run(config, write=main_rank)
    if main_rank and strategy != t["strategy"]:
        print(f"note: restore.py evaluates with strategy {strategy} instead of {t['strategy']}: one set of "
              "processes for the whole sweep rather than new ones for every evaluation", file=sys.stderr,
              flush=True)
    seed_everything(config["seed"], verbose=main_rank)  # model.checkpoint=random: the same weights everywhere
    module = ClassifierModule(m["arch"], m["num_classes"], config["optim"], t["channels_last"],
                              eval_precision=str(t["eval_precision"]), input_size=m["input_size"])
    net = load_network(config, net=module.net)  # the module's own network: none is built to be thrown away
    if spec_of(net) is not None:
        # a pruned checkpoint (e.g. train.py with train.ratio > 0) is the network to prune further here, not
        # one RestoreCallback already restored (it would leave it as it is)
        drop_spec(net)
    datamodule = build_datamodule(config["data"], seed=config["seed"])

    bar = tqdm(total=1 + sum(len(cell[3]) for cell in cells), desc="restore sweep", unit="eval",
               disable=not (main_rank and t["enable_progress_bar"]), dynamic_ncols=True)

    def say(line: str) -> None:
        if main_rank:
            bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    started = time.time()
    try:
        bar.set_postfix_str("original")
        module.set_net(net)
        original = validate(trainer, module, datamodule)
        bar.update()
        say(f"original: top-1 {original['acc1']:.2f}  top-5 {original['acc5']:.2f}")
        callback.active = True
        rows, tried = [], []
        for criterion, ratio, method, points, auto, refit in cells:
            best = None
            if auto:  # every rank chooses (deterministic for the seed; distilled inputs cached per network)
                bar.set_postfix_str(f"{criterion} {where(ratio)} {title(method)}: choosing without data")
                points = [choose_without_data(config, net, method, criterion, ratio, points[0],
                                              progress=main_rank and t["enable_progress_bar"])]
            for point in points:
                bar.set_postfix_str(f"{criterion} {where(ratio)} {column(method, refit)}")  # the cell being evaluated
                row, restored = evaluate_cell(trainer, module, callback, datamodule, net, config, method, criterion,
                                              ratio, point, refit)
                bar.update()
                if auto:
                    row["auto"] = True
                tried.append(row)
                if best is None or row["acc1"] > best[0]["acc1"]:  # ties keep the earlier point
                    best = (row, restored)
            row, restored = best
            rows.append(row)
            if isinstance(ratio, FlopsTarget):
                say(f"{criterion:>9} {where(ratio):<7} {column(method, refit):>5}: top-1 {row['acc1']:.2f}  "
                    f"top-5 {row['acc5']:.2f}  (FLOPs kept {row['flops_kept']:.3f})")
            else:
                say(f"{criterion:>9} r={ratio:<5} {column(method, refit):>5}: top-1 {row['acc1']:.2f}  "
                    f"top-5 {row['acc5']:.2f}")
            if r["save_checkpoints"] and main_rank:
                suffix = "_refit" if refit else ""
                cell = f"flops{ratio.flops:g}" if isinstance(ratio, FlopsTarget) else f"r{ratio}"
                save_restored(restored, out / "restored" / f"{method}_{criterion}_{cell}{suffix}.pth",
                              acc1=row["acc1"])
    finally:
        bar.close()
    if not main_rank:
        return 0
    table = format_markdown(config, original, rows)
    print("\n" + table)
    write_text_atomic(out / "table.md", table + "\n")
    write_csv(out / "table.csv", rows)
    if len(tried) > len(rows):
        write_csv(out / "grid.csv", tried)
    if len(tried) > len(rows) or any(row.get("auto") for row in rows):
        # the chosen values as a config fragment: --config it to repeat the run with them fixed
        save_config(selected_hparams(rows), out / "selected_hparams.yaml")
    write_json(out / "results.json", {"original": {k: original[k] for k in ("acc1", "acc5")}, "rows": rows,
                                      "seconds": round(time.time() - started, 1), "config": config})
    return 0


def cli(argv=None) -> int:
    return run(main, argv)
