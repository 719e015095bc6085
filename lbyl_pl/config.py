"""YAML configuration: defaults, merging of several ``--config`` files, dotted overrides, validation.

A config is a nested dict. Files are merged in order over the defaults (``defaults()``); then
``key.sub=value`` overrides (values parsed as YAML) are applied. Unknown keys are rejected with the list of
allowed ones, except inside the free-form maps (``free_form()``: the per-cell hyperparameter tables and a few
maps of names).

The per-cell tables are not declared here: every registered method with a ``config_table``
(``lbyl_pl.methods.base.RestorationMethod``) has ``restore.<config_table>`` (``restore.lambdas`` for LBYL,
``restore.nm`` for NM), which may be ``auto`` when the method has an ``auto_grid``. Likewise the defaults of
the data-free choice (``restore.auto``) come from ``lbyl_pl.distill`` and ``lbyl_pl.data_free``, and the default
ratio from ``lbyl_pl.selection``.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from .atomic import write_text
from .data_free import DEFAULT_METRIC
from .distill import DEFAULT_ITERATIONS, DEFAULT_N
from .methods import METHODS
from .selection import DEFAULT_RATIO

__all__ = ["DEFAULTS", "ConfigError", "auto_sections", "defaults", "free_form", "load_config", "apply_override",
           "save_config", "lookup_ratio", "table_sections"]


class ConfigError(ValueError):
    """A bad configuration file, key or value (entry points exit with status 2)."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 needs a dot: ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _yaml_error(err: yaml.YAMLError) -> str:
    """A one-line description of a YAML syntax error (PyYAML's own spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


_BASE: dict = {
    "seed": 0,
    "output_dir": "runs/default",
    # arch: a built-in name or torchvision/<name>; input_size: pixels of the example input torchvision
    # models are traced and counted on (default 224)
    "model": {"arch": "lenet300", "num_classes": None, "input_size": None, "checkpoint": None,
              "checkpoint_dir": None},
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | cifar10_npz | cifar10 | cifar100 | imagenet | synthetic
        "root": None,             # default: $LBYL_DATA
        "eval_split": "test",     # cifar10_npz: test (JPEG copy) | lossless_test; others: test
        "eval_on": "test",        # test | holdout (the held-out part of the training set)
        "holdout": 0,             # size of the held-out split of the training set
        "holdout_seed": 0,
        "train_subset": 0,        # >0: train on the first N (shuffled) training samples only
        "download": False,
        "augment": True,
        "batch_size": 128,
        "eval_batch_size": 500,
        "num_workers": 0,
        "synthetic": {"num_train": 64, "num_eval": 48, "image_size": 32, "channels": 3, "num_classes": 10},
    },
    "restore": {
        "methods": ["lbyl", "merge", "prune"],
        "criteria": ["l2-norm"],
        "ratios": [DEFAULT_RATIO],
        # budgets: each entry F adds a row (every method and criterion) whose network keeps the fraction F of the
        # original FLOPs, a ratio per unit chosen without data (prune_and_restore(flops=F); lbyl_pl.budget)
        "flops": [],
        # the units pruned in every cell: null (the default units), "all" (every unit and coupled group: residual
        # streams etc.; only methods that support groups, i.e. prune), or a list of producer module names
        "units": None,
        "budget": {},  # the budget's options (lbyl_pl.budget.BUDGET_DEFAULTS: inputs, ratios, caps, step)
        "variant": "paper",
        "solver": "shared",   # LBYL: shared | batched (float64) | reference (float32 per filter, as the reference)
        # here defaults() puts one table per registered method with a config_table (restore.lambdas for LBYL,
        # restore.nm for NM): criterion -> {ratio: [its table_hparams]}; "default": [...]; or "auto" (the whole
        # table or an entry, for a method with an auto_grid): chosen without any data by lbyl_pl.data_free
        "hparams": {},        # method -> {hyperparameter: value} for every cell, e.g. {fusion: {producer: mean}}
        # the data-free choice ("auto" tables): distilled images, distillation iterations, score (kl | agreement
        # | mse); defaults measured in lbyl_pl/data_free.py
        "auto": {"n": DEFAULT_N, "iterations": DEFAULT_ITERATIONS, "metric": DEFAULT_METRIC},
        # refit the pruned layers on inputs distilled from the network (lbyl_pl.refit; no data is read): false,
        # true, or both (each method's column without and with the refit); refit_options: lbyl_pl.refit options
        "refit": False,
        "refit_options": {},
        "save_checkpoints": False,
        # Hyperparameter search: every combination is evaluated on the eval set (use a held-out split,
        # data.eval_on=holdout, never the test set) and the best top-1 per criterion and ratio is kept.
        # A key is any registered method's table hyperparameter (lambda1 x lambda2 for LBYL, threshold x
        # nm_lambda for NM; checked by restore.py against the registry), a value the list of values to try.
        "grid": {},
    },
    "train": {"ratio": 0.0, "spec": None},  # train.py: width of a pruning ratio / spec checkpoint
    "finetune": {"method": "lbyl", "criterion": "l2-norm", "ratio": DEFAULT_RATIO, "init": "restored",
                 "epochs": None},
    "optim": {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False, "schedule": "cosine",
              "milestones": [], "gamma": 0.1, "warmup_epochs": 0},
    "trainer": {"max_epochs": 20, "accelerator": "cpu", "devices": 1, "strategy": "auto", "num_nodes": 1,
                "precision": "32-true", "eval_precision": "32", "channels_last": False, "deterministic": False,
                "limit_train_batches": None, "limit_val_batches": None, "log_every_n_steps": 50,
                "enable_progress_bar": True, "threads": None},
}

# maps whose keys are names (of methods, hyperparameters, refit options), not config keys
NAME_MAPS = {("restore", "hparams"), ("restore", "grid"), ("restore", "refit_options"), ("restore", "budget")}
# a per-cell hyperparameter table that may be "auto": chosen without data for every cell
AUTO = "auto"
TABLES_AFTER = "solver"  # where the per-cell tables sit in restore (the order config.yaml is written in)


def table_sections() -> dict[str, type]:
    """``restore.<config_table>`` -> method class, for every registered method that declares a per-cell table,
    sorted by name (``lambdas``, ``nm`` for the built-in methods: the order config.yaml has always had)."""
    tables: dict[str, type] = {}
    for cls in METHODS.values():
        table = cls.config_table
        if table is None:
            continue
        if table in tables:
            raise ConfigError(f"methods {tables[table].name!r} and {cls.name!r} both declare config_table {table!r}")
        if table in _BASE["restore"]:
            raise ConfigError(f"method {cls.name!r}: config_table {table!r} is a fixed restore key; choose another")
        tables[table] = cls
    return dict(sorted(tables.items()))


def free_form() -> set[tuple[str, str]]:
    """The config paths where any key is allowed: every method's per-cell table and ``NAME_MAPS``."""
    return NAME_MAPS | {("restore", table) for table in table_sections()}


def auto_sections() -> set[tuple[str, str]]:
    """The per-cell tables that may be ``auto``: those of methods with an ``auto_grid`` (what
    ``lbyl_pl.data_free`` searches without data)."""
    return {("restore", table) for table, cls in table_sections().items() if cls.auto_grid}


def defaults() -> dict:
    """A fresh copy of the default config, with an empty ``restore.<config_table>`` for every registered method
    that has one (a method registered after this module was imported included)."""
    config = copy.deepcopy(_BASE)
    restore = {}
    for key, value in config["restore"].items():
        restore[key] = value
        if key == TABLES_AFTER:
            restore.update({table: {} for table in table_sections()})
    config["restore"] = restore
    return config


DEFAULTS: dict = defaults()  # for reading (the methods registered at import); load_config starts from defaults()


def _merge_free(base: dict, update: dict) -> None:
    """Merge inside a free-form map: any key allowed, nested maps merged, other values replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_free(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _merge(base: dict, update: dict, path: tuple = (), free: set | None = None, auto: set | None = None) -> dict:
    if free is None:  # read from the registry once per merge
        free, auto = free_form(), auto_sections()
    if not isinstance(update, dict):
        raise ConfigError(f"config section {'.'.join(path) or '<root>'} must be a mapping, got {update!r}")
    for key, value in update.items():
        where = path + (key,)
        if where in free:
            if where in auto and value == AUTO:  # chosen without data (lbyl_pl.data_free)
                base[key] = AUTO
                continue
            # merged, not replaced: restore.lambdas.random_1={...} must keep the other criteria's tables
            if not isinstance(value, dict):
                allowed = f" or {AUTO!r}" if where in auto else ""
                raise ConfigError(f"config section {'.'.join(where)} must be a mapping{allowed}, got {value!r}")
            if not isinstance(base.get(key), dict):
                base[key] = {}
            _merge_free(base[key], value)
            continue
        if key not in base:
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {'.'.join(map(str, where))!r}; allowed here: {allowed}")
        if isinstance(base[key], dict):
            _merge(base[key], value, where, free, auto)
        else:
            base[key] = value
    return base


def apply_override(config: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override in place (``value`` parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, _, raw = override.partition("=")
    try:
        value = _parse_yaml(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({_yaml_error(err)})") from None
    update: dict = {}
    node = update
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r} has an empty key part")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    _merge(config, update)


def load_config(files=(), overrides=()) -> dict:
    config = defaults()
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            content = _parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_error(err)}") from None
        _merge(config, content)
    for override in overrides:
        apply_override(config, override)
    return config


def save_config(config: dict, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text(path, yaml.safe_dump(config, sort_keys=False))


def lookup_ratio(table: dict, criterion: str, ratio: float | None, what: str):
    """``table[criterion][ratio]``, falling back to ``table[criterion]["default"]`` then ``table["default"]``;
    ``"auto"`` where the table (or the entry found) says so. ``ratio=None`` (a budget's cell, a ratio per unit):
    the defaults only."""
    if table == AUTO:
        return AUTO
    per_criterion = table.get(criterion, {})
    if not isinstance(per_criterion, dict):
        raise ConfigError(f"{what}.{criterion} must map ratios to values, got {per_criterion!r}")
    for key, value in per_criterion.items():
        if key != "default" and ratio is not None and abs(float(key) - ratio) < 1e-9:
            return value
    if "default" in per_criterion:
        return per_criterion["default"]
    if "default" in table:
        return table["default"]
    return None
