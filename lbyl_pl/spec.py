"""The restoration spec's names, in one place, and the one reader of a spec from a checkpoint dict.

A restored network carries its pruning spec (plain data: kept indices per unit, method, criterion, ratio,
hyperparameters, variant; ``lbyl_pl.restoration``) as the attribute ``lbyl_spec`` (``SPEC_ATTR``). Every
checkpoint this package writes holds it under ``pruning_spec`` (``SPEC_KEY``): ``save_restored`` files,
``ClassifierModule`` checkpoints, and those written while fitting with ``RestoreCallback``, which also writes
``lbyl_restore`` (``RESTORE_KEY``: ``{"module": dotted path of the restored submodule, "spec": the same spec}``).
Writers build those entries with ``checkpoint_entries``; every reader goes through ``state_dict_and_spec``
(``checkpoint_spec`` where only the spec is wanted), which also reads the files already written.

This module is a leaf of the package's import graph: it imports nothing from ``lbyl_pl``.
"""
from __future__ import annotations

import torch

__all__ = ["SPEC_FORMAT", "SPEC_ATTR", "SPEC_KEY", "RESTORE_KEY", "spec_of", "attach_spec", "drop_spec",
           "checkpoint_entries", "checkpoint_spec", "restored_submodule", "state_dict_and_spec"]

SPEC_FORMAT = "lbyl-pl/pruning-spec/v1"
SPEC_ATTR = "lbyl_spec"        # the attribute of a restored network (public: README, tests, lbyl_pl.refit)
SPEC_KEY = "pruning_spec"      # the key of every checkpoint (and of ClassifierModule's hyper-parameters)
RESTORE_KEY = "lbyl_restore"   # RestoreCallback checkpoints: {"module": submodule path, "spec": spec}

# prefixes of a network's keys inside a checkpoint's state dict: ClassifierModule's "net.", DataParallel's
# "module.", torch.compile's "_orig_mod."
STATE_PREFIXES = ("net.", "module.", "_orig_mod.")


def spec_of(net) -> dict | None:
    """The pruning spec ``net`` carries, or ``None`` (not restored)."""
    return getattr(net, SPEC_ATTR, None)


def attach_spec(net, spec: dict):
    """Give ``net`` its pruning spec; returns ``net``."""
    setattr(net, SPEC_ATTR, spec)
    return net


def drop_spec(net) -> None:
    """Forget ``net``'s pruning spec (it is then an ordinary network, e.g. to be pruned further)."""
    if hasattr(net, SPEC_ATTR):
        delattr(net, SPEC_ATTR)


def checkpoint_entries(spec: dict | None, module: str | None = None) -> dict:
    """What a checkpoint records of a restored network: ``{SPEC_KEY: spec}``, plus, when ``module`` (the
    dotted path of the restored submodule) is given, ``{RESTORE_KEY: {"module": module, "spec": spec}}``.

    Both keys are kept for ``RestoreCallback`` checkpoints: ``SPEC_KEY`` is what every reader looks up
    (``load_weights``, ``ClassifierModule``), ``RESTORE_KEY`` also names the submodule, which
    ``load_restored_checkpoint`` needs; the files written so far hold both, and other tools may read either.
    """
    entries = {SPEC_KEY: spec}
    if module is not None:
        entries[RESTORE_KEY] = {"module": module, "spec": spec}
    return entries


def restored_submodule(obj: dict) -> str | None:
    """The dotted path of the submodule a ``RestoreCallback`` restored, from its checkpoint entry; ``None`` when
    the checkpoint has no such entry (or one without a spec)."""
    entry = obj.get(RESTORE_KEY)
    if not isinstance(entry, dict) or entry.get("spec") is None:
        return None
    return entry.get("module")


def checkpoint_spec(obj: dict) -> dict | None:
    """The pruning spec a checkpoint dict holds, wherever this package has written it: ``SPEC_KEY`` at the top
    level, else the ``RestoreCallback`` entry (``RESTORE_KEY``), else ``ClassifierModule``'s hyper-parameters
    (its ``pruning_spec`` argument); ``None`` for an unpruned network or a plain state dict."""
    spec = obj.get(SPEC_KEY)
    if spec is None and isinstance(obj.get(RESTORE_KEY), dict):
        spec = obj[RESTORE_KEY].get("spec")
    if spec is None and isinstance(obj.get("hyper_parameters"), dict):
        spec = obj["hyper_parameters"].get(SPEC_KEY)
    return spec


def state_dict_and_spec(obj: dict, *, network: bool = True) -> tuple[dict, dict | None]:
    """``(state_dict, spec)`` of any checkpoint dict: a ``save_restored`` file, a shared ``{"state_dict": ...}``
    file, a Lightning checkpoint (with or without a ``RestoreCallback`` entry) or a plain state dict.

    ``network=True``: the network's own state dict (every value a tensor; the ``STATE_PREFIXES`` a wrapper adds
    stripped). ``network=False``: the checkpoint's ``state_dict`` as it is (a LightningModule's, to load into
    the whole module). ``spec`` is ``checkpoint_spec(obj)``.
    """
    spec = checkpoint_spec(obj)
    if not network:
        state = obj.get("state_dict")
        if not isinstance(state, dict):
            raise ValueError("checkpoint has no state_dict entry")
        return state, spec
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint has no state dict of tensors")
    for prefix in STATE_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, spec
