"""Shared plumbing of the entry points: arguments, config, output directory, trainer, network loading."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch

from ..atomic import write_text as write_text_atomic
from ..checkpoints import find_checkpoint, load_weights
from ..config import ConfigError, load_config, save_config
from ..models import build_model

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input detected by an entry point (exit status 2)."""


def make_parser(prog: str, description: str, more_help: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides are dotted config keys with YAML values, e.g. trainer.devices=2\n"
               "restore.ratios=[0.1,0.5] data.root=/data. Several --config files merge in order."
               + (f"\n\n{more_help}" if more_help else ""))
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="config file (repeatable; later files override earlier ones)")
    parser.add_argument("--output-dir", help="run directory (overrides output_dir)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def resolve_config(args) -> dict:
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    check_trainer_config(config)
    return config


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_trainer_config(config: dict) -> None:
    """Reject the ``trainer`` values that Lightning would only report with a traceback (or later, or not
    at all): a ``ConfigError`` naming the bad value and what is allowed. Names of accelerators,
    strategies and precisions are left to Lightning, which reports them as one-line ``ValueError``."""
    t = config["trainer"]

    def bad(key, allowed, when=""):
        raise ConfigError(f"trainer.{key}={t[key]!r} is not allowed{when}; use {allowed}")

    devices = t["devices"]
    if not (devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1))
            or (isinstance(devices, list) and devices and all(_is_int(d) and d >= 0 for d in devices)
                and len(set(devices)) == len(devices))):
        bad("devices", "a positive number of devices, -1 (all), 'auto', or a non-empty list of distinct "
                       "device indices such as [0, 1]")
    if t["accelerator"] == "cpu" and not (devices == "auto" or (_is_int(devices) and devices >= 1)):
        bad("devices", "a positive number of processes or 'auto' (-1 and lists of device indices are for GPUs)",
            " with trainer.accelerator=cpu")
    if not (_is_int(t["num_nodes"]) and t["num_nodes"] >= 1):
        bad("num_nodes", "a positive integer")
    if not (t["max_epochs"] is None or (_is_int(t["max_epochs"]) and t["max_epochs"] >= -1)):
        bad("max_epochs", "a non-negative integer, -1 (no limit) or null (Lightning's default)")
    for key in ("limit_train_batches", "limit_val_batches"):
        value = t[key]
        if not (value is None or (_is_int(value) and value >= 0)
                or (isinstance(value, float) and 0.0 <= value <= 1.0)):
            bad(key, "null (all batches), a number of batches (an integer >= 0) or a fraction in [0.0, 1.0]")
    if not (_is_int(t["log_every_n_steps"]) and t["log_every_n_steps"] >= 1):
        bad("log_every_n_steps", "a positive integer")
    if not (t.get("threads") is None or (_is_int(t["threads"]) and t["threads"] >= 1)):
        bad("threads", "null (torch's default) or a positive integer")
    if not (isinstance(t["deterministic"], bool) or t["deterministic"] == "warn"):
        bad("deterministic", "true, false or 'warn'")
    for key in ("enable_progress_bar", "channels_last"):
        if not isinstance(t[key], bool):
            bad(key, "true or false")
    for key in ("accelerator", "strategy"):
        if not (isinstance(t[key], str) and t[key]):
            bad(key, "a name such as 'auto'")


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the run directory and prove it is writable before any work is done."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"output directory {out} is not writable: {err.strerror or err}") from None
    return out


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    if rows:
        # rows of different methods carry different hyperparameters: the union of the keys, in order
        fields = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def quiet_lightning() -> None:
    """Drop Lightning's per-Trainer banners (GPU/TPU availability, tips); warnings still show."""
    import logging
    import warnings
    # ClassifierModule logs values torchmetrics already reduced across ranks; Lightning cannot know.
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
    # Lightning 2.6 on torch 2.9+: a deprecation inside Lightning itself, nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def start_run(config: dict, write: bool = True) -> Path:
    """Set up a run: Lightning's banners off, ``trainer.threads``, the run directory (created, proved
    writable, ``config.yaml`` written). ``write=False`` (a distributed rank other than zero) only names
    the directory: rank zero alone writes files."""
    quiet_lightning()
    threads = config["trainer"].get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    if not write:
        return Path(config["output_dir"])
    out = prepare_output_dir(config["output_dir"])
    save_config(config, out / "config.yaml")
    return out


def load_network(config: dict, required: bool = True, net: torch.nn.Module | None = None) -> torch.nn.Module:
    """The configured architecture with the configured checkpoint (sha256-checked when known).

    ``model.checkpoint: random`` (or null when not ``required``) keeps random initial weights. ``net``: a
    freshly built network of the configured architecture to load into (e.g. a ``ClassifierModule``'s)
    instead of building another one.
    """
    m = config["model"]
    if net is None:
        net = build_model(m["arch"], m["num_classes"], m["input_size"])
    checkpoint = m["checkpoint"]
    if checkpoint in (None, "random"):
        if checkpoint is None and required:
            raise UsageError("model.checkpoint is not set: give a checkpoint file (found in model.checkpoint_dir "
                             "or $LBYL_CHECKPOINTS) or 'random' for random weights")
        return net
    return load_weights(net, find_checkpoint(str(checkpoint), m["checkpoint_dir"]))


def last_checkpoint(out: Path):
    """A ``ModelCheckpoint`` writing ``<out>/checkpoints/last.ckpt`` at the end of *every* epoch: what
    ``--resume`` continues from after an interruption.

    Not ``ModelCheckpoint(save_last=True, save_top_k=0)``: recent Lightning (2.6) saves "last" only in a
    step where another checkpoint was saved, so with ``save_top_k=0`` only when training ends.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint
    return ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="last", save_top_k=1,
                           enable_version_counter=False)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates it."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def warn_slow_bf16(config: dict) -> None:
    t = config["trainer"]
    if t["accelerator"] == "cpu" and str(t["precision"]).startswith("bf16") and not cpu_has_native_bf16():
        # Measured on a 2-core AMD EPYC without AVX-512: VGG16 r=0.5 bf16-mixed training took ~17 s of CPU
        # per step on one thread, against under 0.37 s on an AVX-512 machine (results/README.md §8).
        print(f"warning: trainer.precision={t['precision']} on a CPU without native bf16 (no AVX512-BF16 or "
              "AMX): bf16 is emulated and training can be tens of times slower; use trainer.precision=32-true",
              file=sys.stderr, flush=True)


def build_trainer(config: dict, out: Path, *, callbacks=(), max_epochs: int | None = None, logger=True,
                  **overrides):
    """The configured Trainer; ``overrides``: other ``pl.Trainer`` arguments, or replacements of the configured
    ones (e.g. ``enable_progress_bar=False``, ``strategy="ddp"``)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    check_trainer_config(config)
    t = config["trainer"]
    if logger is True:
        logger = TensorBoardLogger(str(out), name="tensorboard", version="", default_hp_metric=False)
    arguments = dict(
        accelerator=t["accelerator"], devices=t["devices"], strategy=t["strategy"], num_nodes=t["num_nodes"],
        precision=t["precision"], max_epochs=max_epochs if max_epochs is not None else t["max_epochs"],
        deterministic=t["deterministic"], limit_train_batches=t["limit_train_batches"],
        limit_val_batches=t["limit_val_batches"], log_every_n_steps=t["log_every_n_steps"],
        enable_progress_bar=t["enable_progress_bar"],
        # our DataModules shard themselves: training padded, evaluation exact (no duplicated samples)
        use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=False,
        # no_grad instead of inference_mode: tensors made while validating before fit (restored
        # parameters, metric states) must stay usable by training afterwards
        inference_mode=False,
        default_root_dir=str(out), logger=logger, callbacks=list(callbacks))
    arguments.update(overrides)
    try:
        trainer = pl.Trainer(**arguments)
    except MisconfigurationException as err:  # e.g. trainer.accelerator=gpu on a machine without one
        message = " ".join(str(err).split())
        raise ConfigError(f"the trainer settings are not usable here: {message}") from None
    except TypeError as err:  # devices that the accelerator chosen (e.g. by 'auto') cannot take
        if "devices" not in str(err):
            raise
        message = " ".join(str(err).split())
        raise ConfigError(f"trainer.devices={arguments['devices']!r} does not suit the accelerator here "
                          f"(trainer.accelerator={arguments['accelerator']!r}): {message}") from None
    if trainer.is_global_zero:  # the ranks are known once the Trainer exists
        warn_slow_bf16(config)
    return trainer


def run(main, argv=None) -> int:
    """Call ``main(argv)``; bad input ends with a one-line message and exit status 2."""
    try:
        return main(argv) or 0
    except (UsageError, ConfigError, ValueError, FileNotFoundError, PermissionError) as err:
        if os.environ.get("LBYL_DEBUG"):
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
