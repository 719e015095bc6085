"""Reading and writing weights: shared ``.pth.tar`` files, Lightning checkpoints, plain state dicts, and
restored networks with their pruning spec. Everything is loaded with ``weights_only=True``."""
from __future__ import annotations

import copy
import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path
from .models import build_model
from .restoration import restore_from_spec
from .spec import SPEC_FORMAT, checkpoint_entries, spec_of, state_dict_and_spec

__all__ = ["KNOWN_CHECKPOINTS", "checkpoint_dir", "find_checkpoint", "sha256", "read_checkpoint",
           "load_weights", "save_restored", "load_restored", "atomic_torch_save"]

# Shared pretrained weights: file name -> (architecture, num_classes, sha256)
KNOWN_CHECKPOINTS = {
    "lenet300_fashionmnist_authors.pth.tar":
        ("lenet300", 10, "e248b1f9407e4f4bd29b0158c599a6b32a44f2b52e48c20e53737cea5d2c68d6"),
    "resnet56_cifar10_nm.pth.tar":
        ("resnet56", 10, "8cca1ae3647475d814da681e271cfebb35db884899495329d889279331452002"),
    "vgg16_cifar10.pth":
        ("vgg16_bn", 10, "69e0d2acf5f020dd796d66a9d470a28415969caf9fb04c10cbb24a71b590ad90"),
}


def checkpoint_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$LBYL_CHECKPOINTS``, else ``./checkpoints``."""
    return Path(path or os.environ.get("LBYL_CHECKPOINTS") or "checkpoints")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_checkpoint(name: str, directory: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Locate ``name`` (a file name or path) in the checkpoint directory and check its sha256 when known."""
    candidate = Path(name)
    if not candidate.is_file():
        candidate = checkpoint_dir(directory) / name
    if not candidate.is_file():
        raise FileNotFoundError(
            f"checkpoint {name!r} not found (looked at {Path(name)} and {candidate}); set LBYL_CHECKPOINTS "
            "or pass a directory/path")
    if verify and candidate.name in KNOWN_CHECKPOINTS:
        expected = KNOWN_CHECKPOINTS[candidate.name][2]
        actual = sha256(candidate)
        if actual != expected:
            raise ValueError(f"checkpoint {candidate} has sha256 {actual}, expected {expected} "
                             "(corrupt or different file)")
    return candidate


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file safely (``weights_only=True``) with a clear error for unreadable files.

    A file that the weights-only loader refuses (pickled objects or code) is reported as such; torch's own
    text, which suggests loading it unsafely, is never relayed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with code objects, random bytes, ...
        raise ValueError(_unreadable(path, err)) from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict or state dict")
    return obj


WEIGHTS_ONLY = ("lbyl-pl only loads weights-only files (tensors, numbers and strings in dicts and lists) and "
                "never unpickles objects: save a state dict, e.g. torch.save(model.state_dict(), path)")


def _unreadable(path: Path, err: Exception) -> str:
    """The one-line reason why ``torch.load(path, weights_only=True)`` failed with ``err``."""
    text = str(err)
    if "weights only" not in text.lower() and "weights_only" not in text:
        detail = " ".join(text.split())[:200]
        return (f"cannot read checkpoint {path}: {type(err).__name__}{': ' + detail if detail else ''} "
                "(truncated or not a torch file?)")
    # torch's message advises loading the file unsafely: keep only what names the refused content
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"checkpoint {path} is not a weights-only checkpoint: it holds pickled Python objects or code "
                f"(GLOBAL {found.group(1)}); {WEIGHTS_ONLY}")
    found = re.search(r"Unsupported operand (\d+)", text)
    detail = f" (unsupported pickle opcode {found.group(1)})" if found else ""
    return (f"checkpoint {path} is not a weights-only checkpoint: the weights-only loader refuses its pickle"
            f"{detail}: it holds pickled objects or code, or is no torch file at all; {WEIGHTS_ONLY}")


def _check_compatible(model: nn.Module, state: dict, path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
        arch = getattr(model, "lbyl_arch", {}).get("name", type(model).__name__)
        raise ValueError(f"checkpoint {path} does not fit architecture {arch!r}: " + "; ".join(parts))
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"checkpoint {path}: tensor {key!r} contains NaN or Inf")


def load_weights(model: nn.Module, path: str | os.PathLike, example_inputs=None) -> nn.Module:
    """Load weights from ``path`` into ``model`` and return the loaded network.

    Reads the shared ``{"state_dict": ...}`` files, Lightning checkpoints and plain state dicts. If the
    checkpoint carries a pruning spec, the pruned shapes are rebuilt first and the returned module is a
    new, smaller network; otherwise ``model`` itself is loaded and returned. Incompatible keys or
    shapes raise ``ValueError`` naming what differs. ``example_inputs`` is only needed to rebuild the
    pruned shapes of a network whose input shape the spec does not record.
    """
    state, spec = state_dict_and_spec(read_checkpoint(path))
    if spec is not None and spec_of(model) != spec:
        model = restore_from_spec(model, spec, example_inputs)
    _check_compatible(model, state, path)
    model.load_state_dict(state)
    return model


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target directory, then rename: never half-written."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_restored(model: nn.Module, path: str | os.PathLike, **extra) -> None:
    """Save a restored network as ``{"state_dict", "pruning_spec", "arch", **extra}`` (plain data only; the
    spec's key is ``lbyl_pl.spec.SPEC_KEY``)."""
    obj = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           **checkpoint_entries(spec_of(model)), "arch": getattr(model, "lbyl_arch", None), **extra}
    atomic_torch_save(obj, path)


def load_restored(path: str | os.PathLike, model: nn.Module | None = None, example_inputs=None) -> nn.Module:
    """Rebuild a network saved by ``save_restored``: pruned shapes and weights.

    ``model``: the user's own *unpruned* network of the architecture that was pruned (any
    ``nn.Module``); its units are discovered again and cut to the saved kept indices, then the weights
    are loaded (``weights_only=True``). Without ``model`` the architecture recorded in the file is
    built (built-in and ``torchvision/<name>`` architectures). ``model`` itself is not modified.
    """
    obj = read_checkpoint(path)
    state, spec = state_dict_and_spec(obj)
    if spec is not None and spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"checkpoint {path} has an unknown pruning spec format {spec.get('format')!r}")
    if model is None:
        arch = (spec or {}).get("arch") or obj.get("arch")
        if not isinstance(arch, dict) or "name" not in arch:
            raise ValueError(f"checkpoint {path} does not record its architecture; pass the unpruned network: "
                             "load_restored(path, model=your_model)")
        model = build_model(arch["name"], num_classes=arch.get("num_classes"), input_size=arch.get("input_size"))
    elif spec is None:
        model = copy.deepcopy(model)  # a plain state dict: load into a copy, never into the caller's model
    return load_weights(model, path, example_inputs)
