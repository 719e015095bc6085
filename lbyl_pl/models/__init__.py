"""Architecture registry: ``build_model(name, num_classes=...)``."""
from __future__ import annotations

from torch import nn

from .imagenet import MobileNetV2Prunable, ResNet34, ResNet101
from .lenet import LeNet300
from .resnet_cifar import ResNet50Cifar, ResNet56
from .vgg import VGG16BN

ARCHITECTURES = {
    "lenet300": (LeNet300, 10),
    "vgg16_bn": (VGG16BN, 10),
    "resnet56": (ResNet56, 10),
    "resnet50": (ResNet50Cifar, 100),
    "resnet34": (ResNet34, 1000),
    "resnet101": (ResNet101, 1000),
    "mobilenet_v2": (MobileNetV2Prunable, 1000),
}

__all__ = ["ARCHITECTURES", "build_model"]


def build_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised network of architecture ``name`` that declares its prunable units."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
    cls, default_classes = ARCHITECTURES[name]
    num_classes = default_classes if num_classes is None else num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = cls(num_classes=num_classes)
    # Recorded so a pruning spec can rebuild the same network (plain data, no pickled modules).
    model.lbyl_arch = {"name": name, "num_classes": num_classes}
    return model
