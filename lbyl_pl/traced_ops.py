"""What discovery reads off Torch-Pruning's traced graph: the autograd ops that act on each channel separately, and
the reasons a channel group is skipped. A leaf shared by ``lbyl_pl.discovery`` (units) and ``lbyl_pl.coupled``
(coupled groups)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# Reasons a group is not a unit (the first word is the category used in the zoo table).
COUPLED = "coupled"
CONCAT = "concatenation"
SPLIT = "split/slice"
OUTPUT = "output layer"
REACHES_OUTPUT = "reaches the output"
GROUPED = "grouped conv"
NOT_CHANNELWISE = "not channel-wise"
OTHER_NORM = "other normalisation"
BN_PLACEMENT = "BN placement"
REUSED = "reused module"
MAPPING = "channel mapping"
UNSUPPORTED = "unsupported module"

# autograd node names (trailing version digits dropped) of ops that act on each channel separately.
ACTIVATIONS = {
    "ReluBackward": "ReLU", "HardtanhBackward": "ReLU6/Hardtanh", "SiluBackward": "SiLU",
    "HardswishBackward": "Hardswish", "GeluBackward": "GELU", "LeakyReluBackward": "LeakyReLU",
    "EluBackward": "ELU", "SigmoidBackward": "Sigmoid", "TanhBackward": "Tanh",
    "HardsigmoidBackward": "Hardsigmoid", "MishBackward": "Mish", "SoftplusBackward": "Softplus",
}
# Pooling and shape-neutral ops: a channel's values stay that channel's (positively homogeneous).
NEUTRAL_OPS = {
    "MaxPool2DWithIndicesBackward", "MaxPool1DWithIndicesBackward", "AvgPool2DBackward",
    "AvgPool1DBackward", "AdaptiveAvgPool2DBackward", "AdaptiveMaxPool2DBackward",
    "AdaptiveAvgPool1DBackward", "MeanBackward", "CloneBackward", "NativeDropoutBackward",
    "DropoutBackward", "ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "AliasBackward",
    "ToCopyBackward", "FlattenBackward", "UpsampleNearest2DBackward", "UpsampleBilinear2DBackward",
    "ConstantPadNdBackward", "ReflectionPad2DBackward", "ReplicationPad2DBackward",
    "TBackward",  # a Linear consumer's own weight transpose (the consumer mapping check still applies)
}
RESHAPES = {"Flatten", "ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "FlattenBackward",
            "AliasBackward", "TBackward"}
OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)


# Element-wise ops that combine the channels of two tensors channel by channel: a residual add, a product (e.g.
# squeeze-excitation's gate). Channel c of the result reads only channel c of each operand.
COMBINE_OPS = {"AddBackward", "SubBackward", "MulBackward", "DivBackward"}


def never_prunable(tp, module):
    """``(reason, detail)`` when a traced op makes a channel group unprunable whatever else it holds (a split, the
    network's output, an expand), else ``None``: one rule for units and coupled groups."""
    if isinstance(module, (tp.ops._SplitOp, tp.ops._UnbindOp, tp.ops._SliceOp)):
        return SPLIT, "its channels are split or sliced"
    if isinstance(module, tp.ops._OutputOp):
        return REACHES_OUTPUT, "its channels are part of the network's output"
    if isinstance(module, tp.ops._ExpandOp):
        return NOT_CHANNELWISE, "expand"
    return None


def op_name(grad_fn) -> str:
    return re.sub(r"\d+$", "", type(grad_fn).__name__) if grad_fn is not None else "?"


def idx_of(i) -> int:
    return int(getattr(i, "idx", i))  # Torch-Pruning may wrap indices in _HybridIndex


@dataclass(frozen=True)
class SkippedGroup:
    """A traced channel group that is not a unit: its root module, the reason's category and detail."""
    name: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}" + (f" ({self.detail})" if self.detail else "")
