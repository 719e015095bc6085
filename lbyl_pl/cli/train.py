"""train.py: train an architecture from scratch, at full width or at the width of a pruning ratio or
spec (the from-scratch baseline). Writes <output_dir>/model.pth, which restore.py and finetune.py accept."""
from __future__ import annotations

import time

from pytorch_lightning import seed_everything

from ..callbacks import reinitialize
from ..checkpoints import read_checkpoint, save_restored
from ..datamodules import build_datamodule
from ..models import build_model
from ..module import ClassifierModule
from ..restoration import prune_and_restore, restore_from_spec
from ..spec import checkpoint_spec
from .common import build_trainer, last_checkpoint, make_parser, resolve_config, run, start_run, write_json


def main(argv=None) -> int:
    parser = make_parser("train.py", __doc__)
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/last.ckpt")
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE overrides may follow options
    config = resolve_config(args)
    out = start_run(config)
    seed_everything(config["seed"], workers=True)
    m, t = config["model"], config["train"]
    net = build_model(m["arch"], m["num_classes"], m["input_size"])
    if t["spec"]:
        spec = checkpoint_spec(read_checkpoint(t["spec"]))
        if spec is None:
            raise ValueError(f"train.spec={t['spec']!r} holds no pruning spec")
        net = restore_from_spec(net, spec)
    elif t["ratio"]:
        net, _ = prune_and_restore(net, "prune", "random_3", float(t["ratio"]))
    reinitialize(net, config["seed"])
    module = ClassifierModule(m["arch"], m["num_classes"], config["optim"], config["trainer"]["channels_last"],
                              eval_precision=str(config["trainer"]["eval_precision"]), input_size=m["input_size"])
    module.set_net(net)
    datamodule = build_datamodule(config["data"], seed=config["seed"])
    checkpoints = last_checkpoint(out)
    trainer = build_trainer(config, out, callbacks=[checkpoints])
    last = out / "checkpoints" / "last.ckpt"
    started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if args.resume and last.is_file() else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if trainer.is_global_zero:
        save_restored(module.net.float(), out / "model.pth", acc=metrics.get("val/acc1"),
                      epoch=trainer.current_epoch)
        write_json(out / "train.json", {"metrics": metrics, "seconds": round(time.time() - started, 1)})
    print(f"trained {trainer.current_epoch} epochs: {metrics}")
    return 0


def cli(argv=None) -> int:
    return run(main, argv)
