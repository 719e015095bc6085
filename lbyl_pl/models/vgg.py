"""VGG16-BN for CIFAR (network-slimming layout of the NM/LBYL reference, docs/method.md §2)."""
from __future__ import annotations

from torch import nn

from ..units import select_producers

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG16BN(nn.Module):
    """13 x [conv3x3 (no bias), BN, ReLU] with max-pools, AvgPool2d(2), then
    ``Linear(512, 512) -> BatchNorm1d -> ReLU -> Linear(512, num_classes)``.

    Keys match ``vgg16_cifar10.pth``: ``feature.{0,1,3,4,...}``, ``classifier.{0,1,3}``.
    """

    example_input_size = (1, 3, 32, 32)
    default_nm_threshold = 0.1

    def __init__(self, num_classes: int = 10, cfg=VGG16_CFG):
        super().__init__()
        layers, in_channels = [], 3
        for value in cfg:
            if value == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_channels, value, 3, padding=1, bias=False),
                           nn.BatchNorm2d(value), nn.ReLU(inplace=True)]
                in_channels = value
        self.feature = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(in_channels, 512), nn.BatchNorm1d(512),
                                        nn.ReLU(inplace=True), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.feature(x)).flatten(1))

    def select_units(self, units):
        # The 13 convs (conv t read by conv t+1, the last by classifier.0); not classifier.0 itself.
        return select_producers(units, [m for m in self.feature if isinstance(m, nn.Conv2d)], self)
