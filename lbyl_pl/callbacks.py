"""``RestoreCallback``: prune and restore a network inside any LightningModule, without data.

The network is a submodule of the LightningModule: ``module="backbone"`` names it (a dotted path),
by default the only child module that holds parameters. It is replaced in place (``setattr`` on its
parent) by the physically smaller restored network; nothing else of the LightningModule is touched,
so its own steps, metrics and names keep working. Example inputs for tracing come from
``example_inputs=``, else from Lightning's ``pl_module.example_input_array`` (the LightningModule is
run on it once and the network's own input is recorded), else from the network's
``example_input_size`` (built-in architectures).

When fitting, surgery happens in ``setup`` (before the optimizer and the DDP wrapper are created, so
both see the final parameters); when only validating or testing, at ``on_validation_start`` /
``on_test_start``; never during the sanity check. A network that already carries a pruning spec is
not restored again. Restoration is deterministic, and its spec is compared across ranks, so every
rank holds the same network. ``refit=True`` (or a dict of options) refits the pruned layers on inputs
distilled from the network (``lbyl_pl.refit``; no data is read, ``seed`` seeds the distillation). A budget may
replace the one ratio: ``flops=0.5`` keeps half of the original FLOPs (``params=`` likewise; ``budget=`` its
options, ``lbyl_pl.budget.BUDGET_DEFAULTS``), each unit's ratio chosen without data (``prune_and_restore``);
``units="all"`` also prunes the coupled groups (methods ``prune`` and ``fusion``). The report (coefficient
statistics, params/FLOPs, ``restore/flops_kept`` with a budget, the refit's output error) goes to the logger.
Checkpoints carry the spec; ``load_restored_checkpoint`` reloads them into the pruned shapes.

Restoration runs on the network's device (a network on a GPU is restored there, never moved to the CPU and
back); example inputs are moved to that device for tracing.
"""
from __future__ import annotations

import copy

import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_only

from .budget import check_target
from .methods import make_method
from .checkpoints import read_checkpoint
from .refit import refit_options
from .restoration import prune_and_restore, restore_from_spec
from .selection import DEFAULT_RATIO, check_criterion
from .spec import RESTORE_KEY, attach_spec, checkpoint_entries, restored_submodule, spec_of, state_dict_and_spec

__all__ = ["RestoreCallback", "INITS", "load_restored_checkpoint"]

CHECKPOINT_KEY = RESTORE_KEY  # {"module": path of the restored submodule, "spec": its pruning spec} (lbyl_pl.spec)

INITS = ("restored", "scratch")


def reinitialize(net: torch.nn.Module, seed: int) -> None:
    """Random re-initialisation of every layer (the from-scratch baseline at the pruned width), in place.

    The values are drawn by the CPU generator whatever the network's device, so that a seed gives the same
    initial weights on every device (and no device generator is advanced): a network elsewhere is
    re-initialised as a CPU copy, whose values are then copied into it."""
    target = net
    if any(t.device.type != "cpu" for t in net.state_dict().values()):
        target = copy.deepcopy(net).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in target.modules():
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    if target is not net:
        net.load_state_dict(target.state_dict())  # copied in place: every tensor stays on its device


class RestoreCallback(Callback):
    def __init__(self, method="lbyl", criterion: str = "l2-norm", ratio: float = DEFAULT_RATIO,
                 variant: str = "paper", *, init: str = "restored", seed: int = 0, module: str | None = None,
                 example_inputs=None, units: list[str] | str | None = None, refit=False,
                 flops: float | None = None, params: float | None = None, budget: dict | None = None, **hparams):
        # the method object checks its own hyperparameters (lbyl_pl.METHODS): bad input fails here, not
        # in the middle of a fit
        self.method = make_method(method, variant, **hparams)
        self.refit = refit if refit_options(refit) is not None else False
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
        check_criterion(criterion)
        # a budget (flops=/params=) replaces the default ratio
        ratio, self.flops, self.params, _ = check_target(ratio, flops, params, budget)
        self.budget = dict(budget) if budget is not None else None  # as given; prune_and_restore fills defaults
        if module is not None and (not isinstance(module, str) or not module):
            raise ValueError(f"module must be the dotted name of a submodule, got {module!r}")
        self.criterion, self.ratio, self.units = criterion, ratio, units
        self.module, self.example_inputs = module, example_inputs
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
        path, net = self._target(pl_module)
        # the spec under both keys, as checkpoints have always held it (lbyl_pl.spec.checkpoint_entries)
        checkpoint.update(checkpoint_entries(spec_of(net), module=path))

    def state_dict(self):
        return {"spec": self.spec, "report": self.report.as_dict() if self.report else None,
                "init": self.init}

    def load_state_dict(self, state_dict):
        self.spec = state_dict.get("spec")

    def retarget(self, method="lbyl", criterion: str = "l2-norm", ratio: float = DEFAULT_RATIO,
                 variant: str = "paper", refit=False, flops: float | None = None, params: float | None = None,
                 budget: dict | None = None, **hparams) -> "RestoreCallback":
        """Point this callback at another cell (method, criterion, ratio or budget, and the method's
        hyperparameters, checked as in ``__init__``) and forget the last restoration; ``init``, ``seed``,
        ``module``, ``example_inputs`` and ``units`` stay. For sweeps that reuse one Trainer: put the unpruned
        network back into the LightningModule, ``retarget``, validate again (a network that carries a pruning
        spec is still taken as already restored and left as it is)."""
        restorer = make_method(method, variant, **hparams)
        check_criterion(criterion)
        ratio, flops, params, _ = check_target(ratio, flops, params, budget)
        budget = dict(budget) if budget is not None else None
        self.refit = refit if refit_options(refit) is not None else False
        self.method, self.criterion, self.ratio = restorer, criterion, ratio
        self.flops, self.params, self.budget = flops, params, budget
        self.report = self.spec = None
        return self

    # -- work -----------------------------------------------------------------------------------
    def apply(self, pl_module) -> None:
        """Restore the network now, outside a Trainer. Needed before ``ddp_spawn`` fitting: the
        spawned workers restore in ``setup`` and send weights back, which must fit the main process's
        module."""
        self._restore(None, pl_module)

    def _target(self, pl_module) -> tuple[str, torch.nn.Module]:
        """(dotted path, module) of the network to restore inside ``pl_module``."""
        if self.module is not None:
            try:
                return self.module, pl_module.get_submodule(self.module)
            except AttributeError:
                children = [name for name, _ in pl_module.named_children()]
                raise ValueError(f"{type(pl_module).__name__} has no submodule {self.module!r}; "
                                 f"its children are {children}") from None
        candidates = [name for name, child in pl_module.named_children()
                      if next(child.parameters(), None) is not None]
        if len(candidates) != 1:
            raise ValueError(f"RestoreCallback(module=...) must name the network to restore: "
                             f"{type(pl_module).__name__} has {len(candidates)} child modules with parameters "
                             f"({', '.join(candidates) or 'none'})")
        return candidates[0], getattr(pl_module, candidates[0])

    def _example_inputs(self, pl_module, net):
        if self.example_inputs is not None:
            return self.example_inputs
        example = getattr(pl_module, "example_input_array", None)
        if example is None:
            return None  # the network's own example_input_size, or discovery's clear error
        if net is pl_module:
            return example
        captured = []
        hook = net.register_forward_pre_hook(lambda module, args: captured.append(args))
        device = next(pl_module.parameters()).device
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                moved = example.to(device) if isinstance(example, torch.Tensor) else example
                pl_module(*moved) if isinstance(moved, tuple) else pl_module(moved)
        finally:
            hook.remove()
            pl_module.train(was_training)
        if not captured:
            raise ValueError(f"{type(pl_module).__name__}.example_input_array does not reach the network "
                             f"{self.module!r}; pass RestoreCallback(example_inputs=...)")
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in captured[0])
        return args[0] if len(args) == 1 else args

    def _restore(self, trainer, pl_module):
        path, net = self._target(pl_module)
        if spec_of(net) is not None:
            self.spec = spec_of(net)  # already restored (e.g. validate before fit)
            return
        was_training = net.training
        channels_last = any(p.dim() == 4 and not p.is_contiguous() and
                            p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters())
        # restored where the network is (prune_and_restore keeps every tensor on its weights' device): only
        # the example inputs are moved there, for tracing
        example_inputs = _to_device(self._example_inputs(pl_module, net), next(net.parameters()).device)
        # Validation runs under inference_mode; parameters made there could never be trained later.
        with torch.inference_mode(False):
            # a budget replaces the one ratio (prune_and_restore's default then stands for none)
            target = {"ratio": self.ratio} if self.ratio is not None else \
                {"flops": self.flops, "params": self.params, "budget": self.budget}
            restored, report = prune_and_restore(net, self.method, self.criterion, units=self.units,
                                                 example_inputs=example_inputs, refit=self.refit, seed=self.seed,
                                                 **target)
            if self.init == "scratch":
                reinitialize(restored, self.seed)
                attach_spec(restored, dict(spec_of(restored), init="scratch"))
        restored.train(was_training)
        if channels_last:  # index-selected weights lose the memory format the network had
            restored = restored.to(memory_format=torch.channels_last)
        _replace(pl_module, path, restored)
        self.report, self.spec = report, spec_of(restored)
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
        if report.allocation is not None:  # a budget: the fraction of the original FLOPs the network kept
            metrics["restore/flops_kept"] = report.flops_after / max(report.flops_before, 1)
        if report.refit is not None:
            metrics.update({"restore/refit_kl_before": report.refit.output_kl_before,
                            "restore/refit_kl_after": report.refit.output_kl_after})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("restore/report", "```\n" + report.format() + "\n```", 0)


def _to_device(inputs, device):
    """Example inputs (a tensor, a tuple of the forward's inputs, or ``None``) with their tensors on ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, tuple):
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in inputs)
    return inputs


def _replace(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def load_restored_checkpoint(module, path, **init_kwargs):
    """Load a checkpoint written while fitting with ``RestoreCallback`` into the pruned shapes.

    ``module`` is the LightningModule class (built as ``cls(**checkpoint hyper-parameters,
    **init_kwargs)``, as ``load_from_checkpoint`` does) or an instance holding the *unpruned* network.
    The restored submodule is rebuilt from the stored spec, then the weights are loaded
    (``weights_only=True``). Returns the module.
    """
    checkpoint = read_checkpoint(path)
    submodule = restored_submodule(checkpoint)
    if submodule is None:
        raise ValueError(f"checkpoint {path} was not written with a RestoreCallback (no {CHECKPOINT_KEY!r} entry)")
    state, spec = state_dict_and_spec(checkpoint, network=False)
    if isinstance(module, type):
        module = module(**{**(checkpoint.get("hyper_parameters") or {}), **init_kwargs})
    net = module.get_submodule(submodule)
    if spec_of(net) != spec:
        _replace(module, submodule, restore_from_spec(net, spec))
    module.load_state_dict(state)
    return module
