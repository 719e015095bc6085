"""Python parts of the prepared GPU check (``benchmarks/gpu_check.sh`` runs them; see that file's header).

Command line (from the repository root)::

    python benchmarks/gpu_check.py env
    python benchmarks/gpu_check.py smoke          [--device auto|cuda|cpu] [--checkpoint auto|random|PATH]
    python benchmarks/gpu_check.py finetune       [--device ...] [--data npz|synthetic] [--precision bf16-mixed]
                                                  [--limit-train-batches N] [--warmup-batches 10] [--dry-run]
    python benchmarks/gpu_check.py restore-speed  [--device ...] [--thread-list 1,2,16] [--repeats 3]

Every subcommand takes ``--threads`` (OMP/MKL/OPENBLAS_NUM_THREADS, set before torch loads), ``--json PATH``
and ``--dry-run`` (tiny settings that finish in seconds on one CPU thread: checks that the code runs, measures
nothing worth reading). Exit status 0: the check passed; 1: it failed; 77: skipped (the reason is printed as
``SKIPPED: ...``).

smoke
    VGG16-BN (``lbyl_pl.build_model('vgg16_bn', 10)``; the shared ``vgg16_cifar10.pth`` when found, else seeded
    random weights with randomised BN statistics), ``prune_and_restore`` on the CPU for lbyl / merge / prune at
    ``--ratio`` (0.5), then the restored network moved to ``--device``: its fp32 output (TF32 off) must be
    allclose to the CPU output (contiguous and channels_last), and the bf16-autocast output is reported.
finetune
    (a) the project's ``finetune.py`` code path, ``lbyl_pl.cli.finetune.cli(argv)`` in this process (what
    ``python finetune.py argv`` runs) with ``configs/vgg16_cifar10.yaml`` + ``configs/trainer/gpu.yaml``,
    ``--epochs 1``, ``trainer.precision=bf16-mixed``: one epoch of LBYL l2-norm r=0.5 fine-tuning. A callback
    added to its Trainer times the epoch from the start of batch ``--warmup-batches`` to the end of the last
    batch (CUDA synchronised at both ends only). (b) a plain PyTorch loop over the same epoch: the same
    restored network (``lbyl_pl.prune_and_restore`` with the config's hyperparameters), the same DataLoader
    (the config's DataModule: batch size, workers, seeded order and augmentation), SGD with the module's
    parameter groups, ``torch.autocast(bfloat16)``, channels_last network and inputs; timed the same way.
    Reports images/s of both and Lightning/plain.
restore-speed
    ``prune_and_restore(vgg16, 'lbyl', 'l2-norm', 0.5)`` (lambda1 4e-5, lambda2 2e-4, paper variant, as
    ``restore_speed.py``) on a CPU-resident network, per thread count (median after one warm-up; unit
    discovery is cached after the warm-up). Restoration runs on the network's device (float64 copies of the unit
    tensors where they are; selection ranks its scores on the CPU). On CUDA two *probes* try
    (1) ``prune_and_restore`` on a CUDA-resident network and (2) ``lbyl_delivery`` on CUDA unit tensors and
    report what happens (time and agreement if they work, the error if not); a failing probe is a finding,
    not a failure of the check.

What the other benchmarks (beside this file) already have is imported from them, not repeated here: the
preamble, the weights and the device name from ``bench_common``; the plain loop's optimizer from
``lightning_overhead.plain_optimizer`` (the one ``ClassifierModule.configure_optimizers`` builds); the
LBYL hyperparameters, unit inputs and round-robin timer of restore-speed from ``restore_speed``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench_common import (Clock, add_common_options, cpu_name, device_name, load_or_random,  # beside this script
                          script_args, write_json)

CHECKPOINT_NAME = "vgg16_cifar10.pth"
EXIT_SKIPPED = 77


def parse_args(argv=None) -> argparse.Namespace:
    common = add_common_options(
        argparse.ArgumentParser(add_help=False), devices=("auto", "cuda", "cpu"), device_default="auto",
        device_help="auto: cuda when torch sees one, else cpu", threads_default=None,
        threads_help="CPU threads (OMP/MKL/OPENBLAS_NUM_THREADS before torch loads); default: all cores, "
                     "1 with --dry-run",
        checkpoint_default="auto",
        checkpoint_help=f"auto: $LBYL_CHECKPOINTS/{CHECKPOINT_NAME} if present, else random; random; or a path")
    common.add_argument("--dry-run", action="store_true",
                        help="tiny settings (seconds on one CPU thread): checks the code path, not the speed")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", parents=[common], help="versions, device, CPU count")

    p = sub.add_parser("smoke", parents=[common], help="restored VGG16-BN: device output == CPU output")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--methods", default="lbyl,merge,prune")
    p.add_argument("--batch", type=int, default=16, help="images in the comparison batch")
    p.add_argument("--rtol", type=float, default=1e-3, help="allclose rtol (fp32, TF32 off)")
    p.add_argument("--atol", type=float, default=1e-3, help="allclose atol, relative to max |CPU logit|")

    p = sub.add_parser("finetune", parents=[common], help="finetune.py (Lightning) vs a plain loop, one epoch")
    p.add_argument("--data", choices=("npz", "synthetic"), default="npz",
                   help="npz: CIFAR-10 .npz in $LBYL_DATA (real run); synthetic: in-memory random images")
    p.add_argument("--precision", default="bf16-mixed", help="trainer.precision (the plain loop matches it)")
    p.add_argument("--trainer-config", default=None,
                   help="trainer config file (default configs/trainer/gpu.yaml on cuda, cpu.yaml on cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="data.batch_size (default: the config's 128)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data.num_workers (default: the trainer config's, 8 in gpu.yaml)")
    p.add_argument("--limit-train-batches", type=int, default=None, help="default: the whole epoch")
    p.add_argument("--limit-val-batches", type=int, default=None, help="default: the whole test set")
    p.add_argument("--warmup-batches", type=int, default=10, help="first batches left out of the timing")
    p.add_argument("--synthetic-train", type=int, default=25600, help="--data synthetic: training images")
    p.add_argument("--synthetic-eval", type=int, default=2000, help="--data synthetic: evaluation images")
    p.add_argument("--train-subset", type=int, default=0, help="--data npz: data.train_subset (0: all)")
    p.add_argument("--output-dir", default=None, help="finetune.py run directory (default: a temporary one)")
    p.add_argument("--goal", type=float, default=0.95, help="reported only: Lightning/plain images/s goal")

    p = sub.add_parser("restore-speed", parents=[common], help="prune_and_restore timing, CPU and CUDA probes")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--thread-list", default=None, help="comma-separated torch thread counts (default 1,2,all)")
    p.add_argument("--repeats", type=int, default=3)

    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.dry_run else (os.cpu_count() or 1)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


ARGS = script_args(__name__, parse_args)  # parsed, thread variables set, before torch loads; None if imported

import torch  # noqa: E402  (after the thread variables)

# The other benchmarks (beside this script) are imported where they are used: they import lbyl_pl (and
# Lightning), which the env step must not need (it reports what is missing, before any install).


# ----------------------------------------------------------------------------------------- helpers


def pick_device(args) -> str:
    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    return args.device


def checkpoint_path(args):
    """The VGG16-BN checkpoint to use, or None for random weights."""
    if args.checkpoint == "random":
        return None
    if args.checkpoint == "auto":
        from lbyl_pl.checkpoints import checkpoint_dir
        path = checkpoint_dir() / CHECKPOINT_NAME
        return path if path.is_file() else None
    return Path(args.checkpoint)


def load_vgg(args):
    """VGG16-BN in eval mode on the CPU, and a sentence saying which weights it has."""
    model, text, _ = load_or_random("vgg16_bn", checkpoint_path(args), args.seed, num_classes=10)
    return model, text


def finish(args, payload: dict, ok: bool) -> int:
    payload["ok"] = bool(ok)
    if args.json:
        write_json(args.json, payload)
        print(f"results written to {args.json}")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------- env


def cmd_env(args) -> int:
    import platform
    info = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cuda_available": torch.cuda.is_available(), "cpu": cpu_name(), "logical_cores": os.cpu_count(),
            "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads()}
    from importlib.metadata import PackageNotFoundError, version
    distributions = {"pytorch_lightning": "pytorch-lightning", "lightning": "lightning", "torchmetrics": "torchmetrics",
                     "torchvision": "torchvision", "torch_pruning": "torch-pruning", "numpy": "numpy",
                     "scipy": "scipy", "lbyl_pl": "lbyl-pl", "pytest": "pytest", "pytest_timeout": "pytest-timeout",
                     "hypothesis": "hypothesis", "xdist": "pytest-xdist"}
    optional = {"lightning", "xdist"}
    for name, dist in distributions.items():
        key = f"{name} (optional)" if name in optional else name
        try:
            module = __import__(name)
        except Exception as err:  # noqa: BLE001 - report anything
            info[key] = f"MISSING ({type(err).__name__}: {err})"
            continue
        try:
            info[key] = version(dist)  # torch_pruning 1.6.1 calls itself 1.6.0 in __version__
        except PackageNotFoundError:
            info[key] = f"{getattr(module, '__version__', 'importable')} (not installed as a distribution: " \
                        f"{Path(getattr(module, '__file__', '') or '?').parent})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    device_count=torch.cuda.device_count(), bf16_supported=torch.cuda.is_bf16_supported())
        try:
            version = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as err:  # noqa: BLE001
            info["nccl"] = f"unknown ({type(err).__name__})"
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    needed = ("pytorch_lightning", "torchmetrics", "torch_pruning", "lbyl_pl")
    missing = [n for n in needed if str(info[n]).startswith("MISSING")]
    if missing:
        print(f"NOTE: missing packages the checks need: {', '.join(missing)}")
    return finish(args, {"check": "env", "info": info, "missing": missing}, True)


# ------------------------------------------------------------------------------------------- smoke


def cmd_smoke(args) -> int:
    import lbyl_pl
    device = pick_device(args)
    # cuDNN/cuBLAS TF32 would make fp32 convolutions differ from the CPU at the 1e-3 level
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model, weights = load_vgg(args)
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(2 if args.dry_run else args.batch, 3, 32, 32, generator=g)
    print(f"GPU smoke: VGG16-BN, {weights}; prune_and_restore on the CPU, then the restored network on {device} "
          f"({device_name(device)}); batch {len(x)}; pass: allclose(rtol={args.rtol:g}, "
          f"atol={args.atol:g} * max|CPU logit|), fp32 with TF32 off")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows, ok = [], True
    for method in methods:
        row = {"method": method}
        try:
            t0 = time.perf_counter()
            restored, report = lbyl_pl.prune_and_restore(model, method, "l2-norm", args.ratio)
            row["restore_s"] = time.perf_counter() - t0
            restored.eval()
            with torch.no_grad():
                ref = restored(x).float()
                row["params"] = sum(p.numel() for p in restored.parameters())
                net = restored.to(device)
                row["params_on"] = sorted({str(p.device) for p in net.parameters()})
                out = net(x.to(device)).float().cpu()
                net_cl = net.to(memory_format=torch.channels_last)
                out_cl = net_cl(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
                with torch.autocast(device, dtype=torch.bfloat16):
                    out_bf16 = net_cl(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
            scale = float(ref.abs().max())
            atol = args.atol * max(scale, 1e-12)
            for key, value in (("fp32", out), ("fp32_channels_last", out_cl)):
                row[f"{key}_max_abs_diff"] = float((value - ref).abs().max())
                row[f"{key}_allclose"] = bool(torch.allclose(value, ref, rtol=args.rtol, atol=atol))
                row[f"{key}_allclose_torch_default"] = bool(torch.allclose(value, ref))
            row["bf16_max_abs_diff"] = float((out_bf16 - ref).abs().max())
            row["bf16_top1_agree"] = float((out_bf16.argmax(1) == ref.argmax(1)).float().mean())
            row["fp32_top1_agree"] = float((out.argmax(1) == ref.argmax(1)).float().mean())
            row["max_abs_logit"] = scale
            row["ok"] = row["fp32_allclose"] and row["fp32_channels_last_allclose"] and \
                device in row["params_on"][0] and len(row["params_on"]) == 1
        except Exception as err:  # noqa: BLE001 - one method's failure must not hide the others
            traceback.print_exc()
            row.update(ok=False, error=f"{type(err).__name__}: {err}")
        ok &= row["ok"]
        rows.append(row)
        if "error" in row:
            print(f"  {method:<6} FAIL: {row['error']}")
        else:
            print(f"  {method:<6} {'ok  ' if row['ok'] else 'FAIL'} restore {row['restore_s']:.2f} s, "
                  f"{row['params']:,} params on {row['params_on']}; max|Δ| vs CPU: fp32 "
                  f"{row['fp32_max_abs_diff']:.2e}, channels_last {row['fp32_channels_last_max_abs_diff']:.2e} "
                  f"(max|logit| {scale:.2f}; torch-default allclose: {row['fp32_allclose_torch_default']}); "
                  f"bf16 autocast {row['bf16_max_abs_diff']:.2e}, top-1 agreement {row['bf16_top1_agree']:.0%}")
    print(f"smoke: {'PASS' if ok else 'FAIL'}")
    return finish(args, {"check": "smoke", "device": device, "device_name": device_name(device), "weights": weights,
                         "ratio": args.ratio, "rtol": args.rtol, "atol_rel": args.atol, "rows": rows}, ok)


# ---------------------------------------------------------------------------------------- finetune


def make_throughput_timer(clock, warmup: int):
    import pytorch_lightning as pl

    class ThroughputTimer(pl.Callback):
        """From the start of batch ``warmup`` to the end of the epoch's last batch (synchronised there only)."""

        def __init__(self):
            self.t0 = self.t1 = None
            self.images = self.batches = 0
            self.last_loss = None
            self.start_net = None

        def on_train_start(self, trainer, pl_module):
            # the restored network the fit starts from, before any step (for the plain loop's check)
            net = getattr(pl_module, "net", None)
            if net is not None:
                self.start_net = copy.deepcopy(net).cpu()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup and trainer.current_epoch == 0:
                self.t0 = clock()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch != 0:
                return
            self.batches = batch_idx + 1
            if batch_idx >= warmup:
                self.images += len(batch[1])
            if batch_idx == trainer.num_training_batches - 1:
                self.t1 = clock()
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                self.last_loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else None

    return ThroughputTimer()


def finetune_argv(args, device: str, out: str) -> list[str]:
    trainer_config = args.trainer_config or f"configs/trainer/{'gpu' if device == 'cuda' else 'cpu'}.yaml"
    argv = ["--config", "configs/vgg16_cifar10.yaml", "--config", trainer_config, "--epochs", "1",
            "--output-dir", out, f"trainer.precision={args.precision}", "trainer.enable_progress_bar=false",
            f"seed={args.seed}"]
    if device == "cuda":
        argv += ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.strategy=auto"]
    else:
        argv += ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
                 f"trainer.threads={args.threads}"]
    if checkpoint_path(args) is None:
        argv.append("model.checkpoint=random")
    elif args.checkpoint not in ("auto",):
        argv.append(f"model.checkpoint={checkpoint_path(args)}")
    if args.data == "synthetic":
        argv += ["data.name=synthetic", f"data.synthetic.num_train={args.synthetic_train}",
                 f"data.synthetic.num_eval={args.synthetic_eval}"]
    elif args.train_subset:
        argv.append(f"data.train_subset={args.train_subset}")
    if args.batch_size:
        argv.append(f"data.batch_size={args.batch_size}")
    if args.num_workers is not None:
        argv.append(f"data.num_workers={args.num_workers}")
    if args.limit_train_batches:
        argv.append(f"trainer.limit_train_batches={args.limit_train_batches}")
    if args.limit_val_batches:
        argv.append(f"trainer.limit_val_batches={args.limit_val_batches}")
    return argv


def plain_epoch(config: dict, device: str, precision: str, n_batches: int, warmup: int, clock,
                reference=None) -> dict:
    """One epoch of plain PyTorch on the same restored network and the same DataLoader as finetune.py."""
    import contextlib
    import inspect

    import torch.nn.functional as F
    from pytorch_lightning import seed_everything

    import lbyl_pl
    from lightning_overhead import plain_optimizer  # beside this script; imported here: it loads Lightning
    from lbyl_pl.cli.common import load_network
    from lbyl_pl.cli.restore import hyperparameters
    from lbyl_pl.datamodules import build_datamodule

    f, o = config["finetune"], config["optim"]
    t_setup = time.perf_counter()
    ratio = float(f["ratio"])
    if "method" in inspect.signature(hyperparameters).parameters:  # the per-method API
        hp = hyperparameters(config, f["method"], f["criterion"], ratio)
    else:  # the older one: every method's hyperparameters, the solver beside them
        hp = dict(hyperparameters(config, f["criterion"], ratio), solver=config["restore"]["solver"])
    seed_everything(config["seed"], workers=True)  # as finetune.py before load_network (random weights)
    net, _ = lbyl_pl.prune_and_restore(load_network(config), f["method"], f["criterion"], ratio,
                                       variant=config["restore"]["variant"], **hp)
    same_as_lightning = None
    if reference is not None:  # the network finetune.py started its fit from (snapshot before any step)
        mine, theirs = net.state_dict(), reference.state_dict()
        same_as_lightning = mine.keys() == theirs.keys() and all(
            mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k].to(mine[k].device)) for k in mine)
    channels_last = bool(config["trainer"]["channels_last"])
    net = net.to(device).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = plain_optimizer(net, o)  # the one ClassifierModule.configure_optimizers builds
    datamodule = build_datamodule(config["data"], seed=config["seed"])
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)  # Lightning does this at the start of every epoch
    if precision.startswith("bf16"):
        autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)  # noqa: E731
    elif precision.startswith("16"):
        autocast = lambda: torch.autocast(device, dtype=torch.float16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    scaler = torch.amp.GradScaler(device) if precision.startswith("16") else None
    setup_s = time.perf_counter() - t_setup
    t0 = t1 = None
    images = seen = 0
    loss = None
    for i, (x, y) in enumerate(loader):
        if i == n_batches:
            break
        if i == warmup:
            t0 = clock()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        seen = i + 1
        if i >= warmup:
            images += len(y)
    t1 = clock()
    return {"t0": t0, "t1": t1, "images": images, "batches": seen, "setup_s": setup_s,
            "same_start_weights_as_lightning": same_as_lightning,
            "last_loss": float(loss.detach()) if loss is not None else None, "batch_size": loader.batch_size,
            "num_workers": loader.num_workers}


def cmd_finetune(args) -> int:
    import logging
    import warnings

    import pytorch_lightning as pl

    import lbyl_pl.cli.finetune as finetune_cli
    from lbyl_pl.data import data_dir

    device = pick_device(args)
    if args.dry_run:  # seconds on one CPU thread: the code path, not the speed
        if args.precision == "bf16-mixed" and device == "cpu":
            args.precision = "32-true"  # bf16 is emulated on CPUs without AVX512-BF16: tens of times slower
        args.batch_size = args.batch_size or 8
        args.num_workers = 0 if args.num_workers is None else args.num_workers
        args.limit_train_batches = args.limit_train_batches or 3
        args.limit_val_batches = args.limit_val_batches or 1
        args.warmup_batches = min(args.warmup_batches, 1)
        args.synthetic_train, args.synthetic_eval = min(args.synthetic_train, 48), min(args.synthetic_eval, 16)
        if args.data == "npz":
            args.train_subset = args.train_subset or 48
    if args.data == "npz":
        missing = [f for f in ("cifar10_train.npz", "cifar10_test.npz") if not (data_dir() / f).is_file()]
        if missing:
            print(f"SKIPPED: {', '.join(missing)} not in {data_dir()} (set LBYL_DATA)")
            return EXIT_SKIPPED
        if checkpoint_path(args) is None:
            print(f"SKIPPED: {CHECKPOINT_NAME} not found (set LBYL_CHECKPOINTS) and --data npz needs real weights")
            return EXIT_SKIPPED
    if args.warmup_batches < 0:
        raise SystemExit("error: --warmup-batches must be >= 0")

    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    clock = Clock(device)
    own_tmp = tempfile.TemporaryDirectory(prefix="lbyl-gpu-check-finetune-") if args.output_dir is None else None
    out = args.output_dir or own_tmp.name
    argv = finetune_argv(args, device, out)
    command = "python finetune.py " + " ".join(argv)
    print(f"(a) {command}")
    print(f"    run in this process as lbyl_pl.cli.finetune.cli(argv), a timing callback added to its Trainer; "
          f"timed from batch {args.warmup_batches} (0-based) to the end of the epoch")

    # (a) finetune.py's own code path with a timing callback added to the Trainer it builds
    timer = make_throughput_timer(clock, args.warmup_batches)
    original_build_trainer = finetune_cli.build_trainer
    built = {}

    def build_trainer_with_timer(config, out_dir, *, callbacks=(), **kwargs):
        built["config"] = config
        return original_build_trainer(config, out_dir, callbacks=[*callbacks, timer], **kwargs)

    finetune_cli.build_trainer = build_trainer_with_timer
    t_start = time.perf_counter()
    try:
        rc = finetune_cli.cli(argv)
    finally:
        finetune_cli.build_trainer = original_build_trainer
    finetune_wall = time.perf_counter() - t_start
    result = {"check": "finetune", "device": device, "device_name": device_name(device),
              "precision": args.precision, "data": args.data, "warmup_batches": args.warmup_batches,
              "finetune_command": command, "finetune_rc": rc, "finetune_wall_s": finetune_wall,
              "torch": torch.__version__, "pytorch_lightning": pl.__version__}
    summary_path = Path(out) / "finetune.json"
    if summary_path.is_file():
        result["finetune_json"] = json.loads(summary_path.read_text())
    if rc != 0 or timer.t0 is None or timer.t1 is None or "config" not in built:
        why = f"finetune.cli returned {rc}" if rc != 0 else \
            f"the epoch had {timer.batches} batch(es): need more than --warmup-batches {args.warmup_batches}"
        print(f"(a) FAIL: {why}")
        return finish(args, dict(result, error=why), False)
    config = built["config"]
    lit = {"loop_s": timer.t1 - timer.t0, "images": timer.images, "batches": timer.batches,
           "last_loss": timer.last_loss}
    lit["images_per_s"] = lit["images"] / lit["loop_s"]
    print(f"(a) finetune.py: {lit['batches']} batches, {lit['images']} timed images in {lit['loop_s']:.3f} s -> "
          f"{lit['images_per_s']:.1f} img/s (whole command {finetune_wall:.1f} s: restore, 2 validations, fit)")

    # (b) plain PyTorch over the same epoch
    print("(b) plain PyTorch loop: same restored network, DataLoader, SGD groups, autocast and memory format")
    n_batches = timer.batches
    plain = plain_epoch(config, device, args.precision, n_batches, args.warmup_batches, clock, timer.start_net)
    plain["loop_s"] = plain["t1"] - plain["t0"]
    plain["images_per_s"] = plain["images"] / plain["loop_s"]
    print(f"(b) plain loop: {plain['batches']} batches, {plain['images']} timed images in {plain['loop_s']:.3f} s -> "
          f"{plain['images_per_s']:.1f} img/s (setup {plain['setup_s']:.1f} s not timed)")
    ratio = lit["images_per_s"] / plain["images_per_s"]
    same = plain["images"] == lit["images"] and plain["batches"] == lit["batches"]
    finite = all(v is not None and v == v and abs(v) != float("inf") for v in (lit["last_loss"], plain["last_loss"]))
    t = config["trainer"]
    print()
    print(f"{'':<28}{'img/s':>10}{'timed s':>10}{'images':>9}{'last loss':>11}")
    print(f"{'(a) finetune.py (Lightning)':<28}{lit['images_per_s']:>10.1f}{lit['loop_s']:>10.3f}{lit['images']:>9}"
          f"{lit['last_loss'] if lit['last_loss'] is not None else float('nan'):>11.4f}")
    print(f"{'(b) plain PyTorch':<28}{plain['images_per_s']:>10.1f}{plain['loop_s']:>10.3f}{plain['images']:>9}"
          f"{plain['last_loss'] if plain['last_loss'] is not None else float('nan'):>11.4f}")
    print(f"Lightning/plain images/s: {ratio:.3f}x (goal >= {args.goal:g}x: {'MET' if ratio >= args.goal else 'NOT MET'}; "
          f"reported, not a pass condition)")
    print(f"setting: {device} ({device_name(device)}), precision {t['precision']}, channels_last {t['channels_last']}, "
          f"batch {plain['batch_size']}, {plain['num_workers']} DataLoader workers, data {config['data']['name']}, "
          f"cudnn.benchmark {torch.backends.cudnn.benchmark}, "
          f"{'dry run (tiny: not a measurement)' if args.dry_run else 'one epoch'}")
    same_net = plain["same_start_weights_as_lightning"]
    print(f"same restored start weights in (a) and (b): "
          f"{'yes' if same_net else 'NO' if same_net is not None else 'not checked'}")
    ok = same and finite and same_net is not False
    if same_net is False:
        print("FAIL: the plain loop's restored network differs from the one finetune.py trained")
    if not same:
        print(f"FAIL: the two loops timed different work ({lit['batches']}/{lit['images']} vs "
              f"{plain['batches']}/{plain['images']} batches/images)")
    if not finite:
        print("FAIL: a training loss is not finite")
    result.update(lightning=lit, plain={k: v for k, v in plain.items() if k not in ("t0", "t1")},
                  ratio_lightning_over_plain=ratio, goal=args.goal, goal_met=ratio >= args.goal,
                  trainer=t, data_config=config["data"], dry_run=args.dry_run)
    if own_tmp is not None:
        own_tmp.cleanup()
    return finish(args, result, ok)


# ----------------------------------------------------------------------------------- restore-speed


def _median_time(fn, repeats: int, device: str):
    """Median wall time of ``repeats`` calls after one warm-up (which also fills the discovery cache),
    synchronised on CUDA; the samples, and the last call's result."""
    import restore_speed
    samples, _, last = restore_speed.time_rounds({"fn": fn}, repeats, clock=Clock(device))["fn"]
    return statistics.median(samples), samples, last


def _state_rel_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return float("inf")
    worst = 0.0
    for key, va in sa.items():
        if va.is_floating_point():
            va, vb = va.detach().double().cpu(), sb[key].detach().double().cpu()
            worst = max(worst, float((va - vb).abs().max() / va.abs().max().clamp_min(1e-30)))
    return worst


def cmd_restore_speed(args) -> int:
    import restore_speed

    import lbyl_pl
    device = pick_device(args)
    model, weights = load_vgg(args)
    repeats = 1 if args.dry_run else args.repeats
    cores = os.cpu_count() or 1
    if args.thread_list:
        threads = [int(t) for t in args.thread_list.split(",") if t.strip()]
    else:
        threads = [1] if args.dry_run else sorted({1, min(2, cores), min(args.threads, cores)})
    defaults = restore_speed.parse_args([])  # restore_speed.py's VGG 50 % setting
    kwargs = {"lambda1": defaults.lambda1, "lambda2": defaults.lambda2, "variant": defaults.variant}
    print(f"LBYL restoration speed: prune_and_restore(VGG16-BN, 'lbyl', 'l2-norm', {args.ratio}, "
          f"lambda1={kwargs['lambda1']:g}, lambda2={kwargs['lambda2']:g}, variant={kwargs['variant']}); {weights}")
    print(f"cpu: {cpu_name()}, {cores} logical cores; torch {torch.__version__}; median of {repeats} after 1 warm-up "
          f"(discovery cached after the warm-up)")
    print("restoration runs on the network's device (float64 copies of the unit tensors where they are; filters "
          "ranked on the CPU); the CPU rows below time a CPU-resident network, the probes a CUDA-resident one")
    result = {"check": "restore_speed", "weights": weights, "ratio": args.ratio, "hparams": kwargs,
              "cpu": cpu_name(), "logical_cores": cores, "repeats": repeats, "cpu_rows": [], "probes": {}}
    ok = True
    reference = None
    for t in threads:
        torch.set_num_threads(t)
        try:
            median, samples, (restored, report) = _median_time(
                lambda: lbyl_pl.prune_and_restore(model, "lbyl", "l2-norm", args.ratio, **kwargs), repeats, "cpu")
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            print(f"  CPU, {t} thread(s): FAIL {type(err).__name__}: {err}")
            ok = False
            continue
        reference = restored
        stages = {k: round(v, 4) for k, v in getattr(report, "seconds", {}).items()}
        result["cpu_rows"].append({"threads": t, "median_s": median, "samples": samples, "stages_s": stages})
        print(f"  CPU, {t:>2} thread(s): {median:.3f} s (min {min(samples):.3f}, max {max(samples):.3f}); "
              f"last call by stage: {stages}")
    torch.set_num_threads(args.threads)

    # the probes run on CUDA; a dry run sends them to the CPU to exercise their code (no finding there)
    probe_device = device if device == "cuda" else ("cpu" if args.dry_run else None)
    if probe_device is not None and reference is not None:
        if probe_device != "cuda":
            print("  (dry run: the CUDA probes below run on the CPU to check their code, not the package's GPU path)")
        # probe 1: the public entry point on a CUDA-resident network
        probe = {}
        try:
            gpu_model = copy.deepcopy(model).to(probe_device)
            median, samples, (restored_gpu, _) = _median_time(
                lambda: lbyl_pl.prune_and_restore(gpu_model, "lbyl", "l2-norm", args.ratio, **kwargs),
                repeats, probe_device)
            probe.update(works=True, median_s=median, samples=samples,
                         params_on=sorted({str(p.device) for p in restored_gpu.parameters()}),
                         max_rel_diff_vs_cpu=_state_rel_diff(reference, restored_gpu))
            print(f"  probe 1, prune_and_restore on a {probe_device}-resident network: runs, {median:.3f} s; restored "
                  f"parameters on {probe['params_on']}; max rel diff vs the CPU result {probe['max_rel_diff_vs_cpu']:.1e}")
        except Exception as err:  # noqa: BLE001 - the finding is the error itself
            probe.update(works=False, error=f"{type(err).__name__}: {str(err)[:300]}")
            print(f"  probe 1, prune_and_restore on a {probe_device}-resident network: FAILS ({probe['error']}) "
                  f"-> no GPU path through the public entry point")
        result["probes"]["prune_and_restore_cuda_model"] = probe
        # probe 2: the LBYL solve itself on CUDA unit tensors
        probe = {}
        try:
            from lbyl_pl.methods.lbyl import lbyl_delivery
            inputs = []
            for name, tensors, kept in restore_speed.prepare_inputs(model, args.ratio):  # l2-norm kept indices
                on_gpu = dataclasses.replace(tensors, **{f.name: getattr(tensors, f.name).to(probe_device)
                                                         for f in dataclasses.fields(tensors)
                                                         if isinstance(getattr(tensors, f.name), torch.Tensor)})
                inputs.append((name, tensors, on_gpu, kept))
            hp = dict(lambda1=kwargs["lambda1"], lambda2=kwargs["lambda2"], variant=kwargs["variant"])
            cpu_med, _, cpu_s = _median_time(lambda: [lbyl_delivery(t, k, name=n, **hp) for n, t, _, k in inputs],
                                             repeats, "cpu")
            gpu_med, _, gpu_s = _median_time(lambda: [lbyl_delivery(g, k, name=n, **hp) for n, _, g, k in inputs],
                                             repeats, probe_device)
            diff = max(float((a.double().cpu() - b.double().cpu()).abs().max() / b.abs().max().clamp_min(1e-30))
                       for a, b in zip(gpu_s, cpu_s))
            probe.update(works=True, cpu_median_s=cpu_med, cuda_median_s=gpu_med, max_rel_diff=diff,
                         result_device=str(gpu_s[0].device))
            print(f"  probe 2, lbyl_delivery (shared solver) on {probe_device} unit tensors: runs, {gpu_med:.4f} s vs CPU "
                  f"{cpu_med:.4f} s ({cpu_med / gpu_med:.2f}x); result on {probe['result_device']}; max rel diff {diff:.1e}")
        except Exception as err:  # noqa: BLE001
            probe.update(works=False, error=f"{type(err).__name__}: {str(err)[:300]}")
            if isinstance(err, ImportError):
                print(f"  probe 2: not run, the solver moved ({probe['error']})")
            else:
                print(f"  probe 2, lbyl_delivery on {probe_device} unit tensors: FAILS ({probe['error']}) "
                      f"-> the LBYL solve has no GPU path either")
        result["probes"]["lbyl_delivery_cuda_tensors"] = probe
    elif probe_device is None:
        print("  CUDA probes: not run (no CUDA device)")
    cpu_text = ", ".join(f"{r['threads']} thr {r['median_s']:.3f} s" for r in result["cpu_rows"]) or "none"
    probe_text = "; ".join(f"probe {i} {'runs' if p.get('works') else 'fails'}"
                           for i, p in enumerate(result["probes"].values(), 1)) or "no probes"
    print(f"restore-speed: {'PASS' if ok else 'FAIL'}: CPU {cpu_text}; {probe_text} "
          f"(CPU timings pass/fail; the probes are findings)")
    return finish(args, result, ok)


def main(args) -> int:
    sys.stdout.reconfigure(line_buffering=True)
    commands = {"env": cmd_env, "smoke": cmd_smoke, "finetune": cmd_finetune, "restore-speed": cmd_restore_speed}
    torch.set_num_threads(args.threads)
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main(ARGS))
