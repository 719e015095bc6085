"""Per-channel activation energy of the prunable units on inputs: what input-aware criteria rank by.

``channel_energy`` runs the network once (in chunks) with a pre-hook on each unit's first consumer and returns the
mean square of every channel as that consumer reads it (a Linear after a flatten reads channel ``c`` through
``features_per_channel`` consecutive inputs; their mean is taken).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["channel_energy"]


@torch.no_grad()
def channel_energy(model: nn.Module, units, inputs: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``unit name -> (n,) float64`` mean square of each channel at the unit's first consumer, over ``inputs``."""
    sums = {u.name: torch.zeros(u.n_channels, dtype=torch.float64) for u in units}
    rows = {u.name: 0 for u in units}

    def hook_for(unit):
        n = unit.n_channels

        def hook(module, args):
            x = args[0].detach()
            if x.dim() == 4:
                flat = x.transpose(0, 1).reshape(n, -1)
            else:
                flat = x.reshape(-1, x.shape[-1]).T.reshape(n, -1)  # channel c: features [c*r, (c+1)*r)
            sums[unit.name] += flat.double().pow(2).sum(dim=1).cpu()
            rows[unit.name] += flat.shape[1]
        return hook

    handles = [u.consumers[0].register_forward_pre_hook(hook_for(u)) for u in units]
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        for lo in range(0, len(inputs), batch_size):
            model(inputs[lo:lo + batch_size].to(device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: total / max(rows[name], 1) for name, total in sums.items()}
