"""torchvision ImageNet models with their prunable units declared.

The classes subclass torchvision's own ``ResNet`` and ``MobileNetV2``, so official ImageNet state
dicts (``resnet34-333f7ec4.pth``, ``resnet101-5d3b4d8f.pth``, ``mobilenet_v2-b0353104.pth``) load
unchanged.
"""
from __future__ import annotations

from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..units import select_producers


def resnet_units(model: ResNet, units) -> list:
    """BasicBlock: conv1 -> conv2. Bottleneck: conv1 -> conv2 and conv2 -> conv3 (docs/method.md §2).

    Residual channels (conv2 of BasicBlock, conv3 of Bottleneck) are coupled across the adds and
    never units; the stem (a unit with two consumers in Bottleneck ResNets) and fc are not pruned.
    """
    producers = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            producers.append(block.conv1)
            if isinstance(block, Bottleneck):
                producers.append(block.conv2)
            elif not isinstance(block, BasicBlock):
                raise ValueError(f"unsupported ResNet block {type(block).__name__}")
    return select_producers(units, producers, model)


class ResNet34(ResNet):
    example_input_size = (1, 3, 224, 224)
    default_nm_threshold = 0.1

    def __init__(self, num_classes: int = 1000):
        super().__init__(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)

    def select_units(self, units):
        return resnet_units(self, units)


class ResNet101(ResNet):
    example_input_size = (1, 3, 224, 224)
    default_nm_threshold = 0.1

    def __init__(self, num_classes: int = 1000):
        super().__init__(Bottleneck, [3, 4, 23, 3], num_classes=num_classes)

    def select_units(self, units):
        return resnet_units(self, units)


class MobileNetV2Prunable(MobileNetV2):
    """MobileNet-V2 with "the first layer of each block" pruned (docs/method.md §2, §10.5).

    This project's reading, since no reference code exists: in every inverted-residual block with an
    expansion layer (expand_ratio != 1, i.e. all blocks but the first), the output channels of the
    expansion 1x1 conv (and its BN) are pruned; the matching depthwise-conv channels and their BN are
    dropped with them (``passthrough``), and the compensation is delivered to the projection 1x1 conv,
    the next layer that mixes channels. The first block (expand_ratio 1, whose first layer is the
    depthwise conv) is not pruned. Delivering across the depthwise conv, BN and ReLU6 is a naive
    adaptation: it is exact when a pruned channel's whole path (expansion filter and BN, depthwise
    kernel and BN) duplicates a kept channel's, and approximate otherwise. NM then finds the duplicate
    directly; LBYL finds it when the ridge solve identifies it: expansion convs have fewer weights per
    filter than kept filters (d < m), so with tiny λ the solve returns the minimum-norm combination,
    which is the duplicate only when it is orthogonal to the other kept filters (as in the test).
    """

    example_input_size = (1, 3, 224, 224)
    default_nm_threshold = 0.1

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__(num_classes=num_classes, width_mult=width_mult)

    def select_units(self, units):
        # The expansion conv of every block that has one (discovery finds its depthwise conv and BN
        # as passthrough and the projection conv as consumer); not the stem, the expand_ratio=1
        # block or the last 1x1 conv.
        expansions = [block.conv[0][0] for block in self.features
                      if isinstance(block, InvertedResidual) and len(block.conv) == 4]
        return select_producers(units, expansions, self)
