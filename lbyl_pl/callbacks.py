"""``RestoreCallback``: prune and restore the wrapped module's network without data, inside Lightning.

When fitting, surgery happens in ``setup`` (before the optimizer and the DDP wrapper are created, so
both see the final parameters); when only validating, at ``on_validation_start``; never during the
sanity check. Restoration is deterministic, and its spec is compared across ranks, so every rank
holds the same network. The report (coefficient statistics, params/FLOPs) goes to the logger.
"""
from __future__ import annotations

import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_only

from .methods import METHODS
from .methods.common import check_nonnegative, check_variant
from .methods.lbyl import check_solver
from .restoration import prune_and_restore
from .selection import check_criterion, check_ratio

__all__ = ["RestoreCallback", "INITS"]

INITS = ("restored", "scratch")


def reinitialize(net: torch.nn.Module, seed: int) -> None:
    """Random re-initialisation of every layer (the from-scratch baseline at the pruned width)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


class RestoreCallback(Callback):
    def __init__(self, method: str = "lbyl", criterion: str = "l2-norm", ratio: float = 0.5,
                 variant: str = "paper", lambda1: float = 1e-6, lambda2: float = 1e-2,
                 threshold: float | None = None, nm_lambda: float = 0.85, init: str = "restored",
                 seed: int = 0, solver: str = "shared"):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
        check_criterion(criterion)
        check_ratio(ratio)
        check_variant(variant)
        check_nonnegative("lambda1", lambda1)
        check_nonnegative("lambda2", lambda2)
        if threshold is not None:
            check_nonnegative("threshold", threshold)
        check_solver(solver)
        self.kwargs = dict(method=method, criterion=criterion, ratio=ratio, variant=variant, lambda1=lambda1,
                           lambda2=lambda2, threshold=threshold, nm_lambda=nm_lambda)
        if method == "lbyl":  # the solver only exists for LBYL
            self.kwargs["solver"] = solver
        self.init, self.seed = init, seed
        self.report = None
        self.spec = None

    # -- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            self._restore(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn == "fit":
            return  # during fit the network was restored in setup; shapes never change mid-fit
        self._restore(trainer, pl_module)

    on_test_start = on_validation_start

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["pruning_spec"] = getattr(pl_module.net, "lbyl_spec", None)

    def state_dict(self):
        return {"spec": self.spec, "report": self.report.as_dict() if self.report else None,
                "init": self.init}

    def load_state_dict(self, state_dict):
        self.spec = state_dict.get("spec")

    # -- work -----------------------------------------------------------------------------------
    def apply(self, pl_module) -> None:
        """Restore ``pl_module.net`` now, outside a Trainer. Needed before ``ddp_spawn`` fitting: the
        spawned workers restore in ``setup`` and send weights back, which must fit the main process's
        module."""
        self._restore(None, pl_module)

    def _restore(self, trainer, pl_module):
        if getattr(pl_module.net, "lbyl_spec", None) is not None:
            self.spec = pl_module.net.lbyl_spec  # already restored (e.g. validate before fit)
            return
        device = next(pl_module.net.parameters()).device
        was_training = pl_module.net.training
        # Validation runs under inference_mode; parameters made there could never be trained later.
        with torch.inference_mode(False):
            restored, report = prune_and_restore(pl_module.net.cpu(), **self.kwargs)
            if self.init == "scratch":
                reinitialize(restored, self.seed)
                restored.lbyl_spec = dict(restored.lbyl_spec, init="scratch")
        restored.train(was_training)
        pl_module.set_net(restored.to(device))
        self.report, self.spec = report, restored.lbyl_spec
        if trainer is not None:
            self._check_same_on_all_ranks(trainer)
            self._log_report(trainer)

    def _check_same_on_all_ranks(self, trainer):
        if trainer.world_size > 1:
            reference = trainer.strategy.broadcast(self.spec, src=0)
            if reference != self.spec:
                raise RuntimeError(f"rank {trainer.global_rank} restored a different network than rank 0")

    @rank_zero_only
    def _log_report(self, trainer):
        report = self.report
        metrics = {"restore/params_before": report.params_before, "restore/params_after": report.params_after,
                   "restore/flops_before": report.flops_before, "restore/flops_after": report.flops_after,
                   "restore/coef_abs_mean": report.coef_abs_mean, "restore/coef_abs_max": report.coef_abs_max,
                   "restore/coef_abs_min": report.coef_abs_min}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("restore/report", "```\n" + report.format() + "\n```", 0)
