"""Two small CIFAR-10 CNNs of our own, to choose the refit's defaults on networks beyond the shared checkpoints.

- ``mixnet``: plain convs, a basic residual block and an inverted residual (1x1 expand, depthwise 3x3, 1x1
  project, ReLU6), global average pooling, one Linear;
- ``stridenet``: strided convs without pooling, then a flatten into two Linear layers (a Linear that reads a
  flattened feature map, a Linear without BatchNorm).

Trained by ``benchmarks/train_small_cnn.py`` on the CIFAR-10 JPEG q75 copy; weights stay out of git.
"""
from __future__ import annotations

from torch import nn


def _cbr(cin, cout, k=3, stride=1, act=nn.ReLU):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), act(inplace=True)]


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand=2):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(*_cbr(c, h, 1, act=nn.ReLU6),
                                  nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h),
                                  nn.ReLU6(inplace=True), nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class MixNet(nn.Module):
    example_input_size = (1, 3, 32, 32)

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(*_cbr(3, 32), *_cbr(32, 64), nn.MaxPool2d(2), BasicBlock(64),
                                      InvertedResidual(64), nn.MaxPool2d(2), *_cbr(64, 128), *_cbr(128, 128),
                                      nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class StrideNet(nn.Module):
    example_input_size = (1, 3, 32, 32)

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(*_cbr(3, 48), *_cbr(48, 96, stride=2), *_cbr(96, 96),
                                      *_cbr(96, 192, stride=2), *_cbr(192, 192, stride=2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(192 * 4 * 4, 256), nn.ReLU(inplace=True),
                                        nn.Linear(256, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


SMALL_CNNS = {"mixnet": MixNet, "stridenet": StrideNet}
