"""Example inputs: what discovery traces on, what a network takes, and clear errors for inputs it cannot take."""
from __future__ import annotations

import torch
from torch import nn

from .units import all_finite

__all__ = ["check_inputs", "example_inputs_of", "input_rejection", "input_shape_of"]


def example_inputs_of(model: nn.Module, example_inputs=None):
    """``example_inputs`` if given, else zeros of the model's ``example_input_size`` attribute."""
    if example_inputs is not None:
        return example_inputs
    size = getattr(model, "example_input_size", None)
    if size is None:
        raise ValueError(
            f"{type(model).__name__} needs example inputs to find its prunable units: pass "
            "example_inputs=torch.randn(1, 3, 224, 224) (the shape your network takes)")
    param = next(model.parameters(), None)
    return torch.zeros(tuple(size), dtype=param.dtype if param is not None else torch.float32,
                       device=param.device if param is not None else "cpu")


def _input_shape(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return tuple(example_inputs.shape)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(_input_shape(x) for x in example_inputs)
    if isinstance(example_inputs, dict):
        return tuple(sorted((k, _input_shape(v)) for k, v in example_inputs.items()))
    return (type(example_inputs).__name__,)


def input_rejection(model: nn.Module, inputs: tuple) -> tuple | None:
    """Whether ``model`` itself rejects ``inputs``: a plain forward under ``no_grad``, in eval mode so that no
    BN statistic moves. ``None`` when that forward runs, else ``(input shape, what the first Conv2d / Linear
    in module order expects where the input does not match it (or ""), the forward's error)``."""
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
        return None
    except Exception as err:  # whatever the model raises on an input it cannot take
        error = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    finally:
        for module, mode in was_training.items():
            module.training = mode
    shapes = [list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs]
    shape = shapes[0] if len(shapes) == 1 else shapes
    expects = ""
    x = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) else None
    first = next(((name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is not None and x is not None:
        name, layer = first
        if isinstance(layer, nn.Conv2d) and (x.dim() < 3 or x.shape[-3] != layer.in_channels):
            expects = f"its first layer {name} expects {layer.in_channels} input channels"
        elif isinstance(layer, nn.Linear) and x.dim() >= 1 and x.shape[-1] != layer.in_features \
                and (x[0].numel() if x.dim() >= 2 else x.numel()) != layer.in_features:
            expects = f"its first layer {name} expects {layer.in_features} input features"
    return shape, expects, error


def check_inputs(x, label: str, shape: tuple | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{label} must be a floating-point tensor (N, *input_shape), got "
                         f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.dim() < 2 or len(x) < 1:
        raise ValueError(f"{label} must be batched (N, *input_shape) with N >= 1, got shape {list(x.shape)}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{label} have shape {list(x.shape)}; the network takes (N, {', '.join(map(str, shape))})")
    if not all_finite(x):
        raise ValueError(f"{label} contain NaN or Inf values; pass finite inputs")
    return x


def input_shape_of(model: nn.Module, example_inputs, inputs) -> tuple | None:
    """One sample's shape the network takes, when it is known (from example inputs or the model)."""
    try:
        x = example_inputs_of(model, example_inputs)
    except ValueError:
        if inputs is None:
            raise
        return None
    if isinstance(x, (tuple, list)):
        x = x[0] if len(x) == 1 else None
    return tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None
