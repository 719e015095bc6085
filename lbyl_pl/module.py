"""``ClassifierModule``: the LightningModule that wraps any ``lbyl_pl`` network."""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import Accuracy, MeanMetric

from .models import build_model
from .restoration import restore_from_spec
from .spec import checkpoint_entries, checkpoint_spec, spec_of

__all__ = ["ClassifierModule", "SCHEDULES", "EVAL_PRECISIONS"]

SCHEDULES = ("cosine", "step", "constant")
EVAL_PRECISIONS = ("32", "train")


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classifier over ``self.net``.

    Logs ``train/loss``, ``val/loss``, ``val/acc1``, ``val/acc5`` (torchmetrics, ``average="micro"``,
    synchronised across ranks), and ``curve/val_acc1`` against the *epoch* index to TensorBoard:
    0 for an evaluation before any training step, ``e`` after ``e`` epochs. The pruning spec of a
    restored network is stored in every checkpoint and rebuilt on load.

    ``eval_precision="32"`` (the default) validates and tests in float32 whatever the training
    precision: a mixed-precision run's autocast is switched off for evaluation, so the epoch-0 point of a
    fine-tuning curve equals the fp32 restoration tables. ``"train"`` evaluates under the training
    precision. (With ``*-true`` half precisions the weights themselves are half; there is no fp32 copy.)
    """

    def __init__(self, arch: str, num_classes: int | None = None, optim: dict | None = None,
                 channels_last: bool = False, pruning_spec: dict | None = None, eval_precision: str = "32",
                 input_size: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(arch, num_classes, input_size)
        if pruning_spec is not None:
            self.net = restore_from_spec(self.net, pruning_spec)
        self.optim = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False,
                      "schedule": "cosine", "milestones": [], "gamma": 0.1, "warmup_epochs": 0,
                      **(optim or {})}
        if self.optim["schedule"] not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.optim['schedule']!r}; allowed: {', '.join(SCHEDULES)}")
        if eval_precision not in EVAL_PRECISIONS:
            raise ValueError(f"unknown eval_precision {eval_precision!r}; allowed: {', '.join(EVAL_PRECISIONS)}")
        self.eval_precision = eval_precision
        self.channels_last = channels_last
        classes = self.net_num_classes()
        self.val_acc1 = Accuracy(task="multiclass", num_classes=classes, top_k=1, average="micro")
        self.val_acc5 = Accuracy(task="multiclass", num_classes=classes, top_k=min(5, classes), average="micro")
        self.val_loss = MeanMetric()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def net_num_classes(self) -> int:
        return self.net.lbyl_arch["num_classes"] if hasattr(self.net, "lbyl_arch") else self.hparams.num_classes

    def set_net(self, net) -> None:
        """Swap in a restored network (memory format re-applied: index-selected weights lose it)."""
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net

    def forward(self, x):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch):
        x, y = batch
        if self.eval_precision == "32":
            # Nested inside Lightning's autocast context: this switches it off for the evaluation only.
            with torch.autocast(device_type=x.device.type, enabled=False):
                logits = self(x.float() if x.is_floating_point() else x).float()
        else:
            logits = self(x).float()
        self.val_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.val_acc1.update(logits, y)
        self.val_acc5.update(logits, y)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def _eval_epoch_end(self, prefix: str):
        # compute() all-reduces the counts: exact over every sample, the same value on every rank
        acc1, acc5, loss = (m.compute() for m in (self.val_acc1, self.val_acc5, self.val_loss))
        for m in (self.val_acc1, self.val_acc5, self.val_loss):
            m.reset()
        self.log_dict({f"{prefix}/acc1": acc1 * 100, f"{prefix}/acc5": acc5 * 100, f"{prefix}/loss": loss},
                      prog_bar=True, sync_dist=False)
        self.last_eval = {"acc1": float(acc1) * 100, "acc5": float(acc5) * 100, "loss": float(loss)}
        fitting = self.trainer.state.fn == "fit"
        epoch = self.current_epoch + 1 if fitting else 0
        logger = self.logger
        if self.trainer.is_global_zero and logger is not None and hasattr(logger.experiment, "add_scalar"):
            logger.experiment.add_scalar("curve/val_acc1", float(acc1) * 100, epoch)
            logger.experiment.add_scalar("curve/val_acc5", float(acc5) * 100, epoch)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        o = self.optim
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
        optimizer = torch.optim.SGD([{"params": decay, "weight_decay": o["weight_decay"]},
                                     {"params": no_decay, "weight_decay": 0.0}],
                                    lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        warmup = int(o["warmup_epochs"])

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            if o["schedule"] == "cosine":
                progress = (epoch - warmup) / max(epochs - warmup, 1)
                return 0.5 * (1 + math.cos(math.pi * progress))
            if o["schedule"] == "step":
                return o["gamma"] ** sum(epoch >= m for m in o["milestones"])
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint.update(checkpoint_entries(spec_of(self.net)))

    def on_load_checkpoint(self, checkpoint):
        spec = checkpoint_spec(checkpoint)
        if spec is not None and spec_of(self.net) != spec:
            self.set_net(restore_from_spec(build_model(self.hparams.arch, self.hparams.num_classes,
                                                       self.hparams.get("input_size")), spec))
