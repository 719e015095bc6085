"""CIFAR ResNets: ResNet-56 (Neuron Merging layout) and ResNet-50 (bottleneck, CIFAR stem)."""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from ..units import select_producers
from .imagenet import resnet_units


class NMBasicBlock(nn.Module):
    """``x = relu(x); out = bn2(conv2(relu(bn1(conv1(x))))) + (x or downsample(x))``; no ReLU after the add."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        x = self.relu(x)
        residual = x if self.downsample is None else self.downsample(x)
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + residual


class ResNet56(nn.Module):
    """ResNet-56 for CIFAR as in ``friendshipkim/neuron-merging`` (loads ``resnet56_cifar10_nm.pth.tar``)."""

    example_input_size = (1, 3, 32, 32)
    default_nm_threshold = 0.1

    def __init__(self, num_classes: int = 10, depth: int = 56):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            layer = []
            for i in range(blocks):
                layer.append(NMBasicBlock(in_planes, planes, stride=2 if (i == 0 and stage > 1) else 1))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.relu = nn.ReLU()
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x))  # no ReLU after the stem: each block starts with one
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(self.relu(x)).flatten(1))

    def select_units(self, units):
        # conv1 of every block (read by conv2); residual channels are coupled and never units.
        blocks = [b for layer in (self.layer1, self.layer2, self.layer3) for b in layer]
        return select_producers(units, [b.conv1 for b in blocks], self)


class ResNet50Cifar(ResNet):
    """torchvision Bottleneck ResNet-50 with the CIFAR stem (conv3x3 stride 1, no max-pool)."""

    example_input_size = (1, 3, 32, 32)
    default_nm_threshold = 0.1

    def __init__(self, num_classes: int = 100):
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()

    def select_units(self, units):
        return resnet_units(self, units)
