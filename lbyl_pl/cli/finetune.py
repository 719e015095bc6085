"""finetune.py: restore a checkpoint (any registered method: prune / NM / LBYL / IF) and fine-tune it, or train the same pruned
architecture from scratch (--init scratch), logging validation accuracy per epoch to TensorBoard."""
from __future__ import annotations

import time

from pytorch_lightning import seed_everything

from ..callbacks import RestoreCallback
from ..datamodules import build_datamodule
from ..module import ClassifierModule
from .common import (build_trainer, last_checkpoint, load_network, make_parser, resolve_config, run, start_run,
                     write_json)
from .restore import hyperparameters

DEFAULT_EPOCHS = {"restored": 20, "scratch": 80}


def main(argv=None) -> int:
    parser = make_parser("finetune.py", __doc__)
    parser.add_argument("--init", choices=["restored", "scratch"], help="overrides finetune.init")
    parser.add_argument("--epochs", type=int, help="overrides finetune.epochs (default 20, or 80 from scratch)")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/last.ckpt")
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow options
    if args.init:
        args.overrides.append(f"finetune.init={args.init}")
    if args.epochs is not None:
        args.overrides.append(f"finetune.epochs={args.epochs}")
    config = resolve_config(args)
    f = config["finetune"]
    if f["init"] not in DEFAULT_EPOCHS:
        raise ValueError(f"finetune.init must be one of {', '.join(DEFAULT_EPOCHS)}, got {f['init']!r}")
    epochs = int(f["epochs"] or DEFAULT_EPOCHS[f["init"]])
    out = start_run(config)
    seed_everything(config["seed"], workers=True)
    net = load_network(config, required=f["init"] == "restored")
    m = config["model"]
    module = ClassifierModule(m["arch"], m["num_classes"], config["optim"], config["trainer"]["channels_last"],
                              eval_precision=str(config["trainer"]["eval_precision"]), input_size=m["input_size"])
    module.set_net(net)
    hp = hyperparameters(config, f["method"], f["criterion"], float(f["ratio"]))
    restore = RestoreCallback(f["method"], f["criterion"], float(f["ratio"]), config["restore"]["variant"],
                              init=f["init"], seed=config["seed"], **hp)
    checkpoints = last_checkpoint(out)
    datamodule = build_datamodule(config["data"], seed=config["seed"])
    trainer = build_trainer(config, out, callbacks=[restore, checkpoints], max_epochs=epochs)
    if "spawn" in str(config["trainer"]["strategy"]):
        restore.apply(module)  # spawned workers send pruned weights back: the main module must match
    last = out / "checkpoints" / "last.ckpt"
    resume = args.resume and last.is_file()
    if args.resume and not resume:
        print(f"no {last} yet: starting from the beginning")
    started = time.time()
    before = None
    if not resume:  # epoch 0 of the curve: the restored (or randomly initialised) network, no step taken
        before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/acc1"]
        print(f"before fine-tuning ({f['init']}, {f['method']}): top-1 {before:.2f}", flush=True)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    after = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    print(f"after {epochs} epochs: top-1 {after.get('val/acc1', float('nan')):.2f}", flush=True)
    write_json(out / "finetune.json", {
        "method": f["method"], "criterion": f["criterion"], "ratio": float(f["ratio"]), "init": f["init"],
        "epochs": epochs, "before_acc1": None if before is None else float(before), "after": after,
        "resumed": resume, "seconds": round(time.time() - started, 1)})
    return 0


def cli(argv=None) -> int:
    return run(main, argv)
