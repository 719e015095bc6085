"""Architecture registry: ``build_model(name, num_classes=...)``.

Built-in names (the paper's networks, each selecting the paper's units among the discovered ones)
and ``torchvision/<name>`` for any classification model ``torchvision.models.get_model`` knows
(random weights; official ``.pth`` state dicts load unchanged, their keys are torchvision's own).
"""
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
TORCHVISION_PREFIX = "torchvision/"
TORCHVISION_INPUT_SIZE = 224  # the ImageNet crop size of torchvision's classification weights

__all__ = ["ARCHITECTURES", "TORCHVISION_PREFIX", "build_model", "torchvision_classifiers"]


def torchvision_classifiers() -> list[str]:
    """The names ``torchvision/<name>`` accepts: torchvision's classification models."""
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _torchvision_model(name: str, num_classes: int | None, input_size: int | None) -> nn.Module:
    import torchvision
    known = torchvision_classifiers()
    if name not in known:
        raise ValueError(f"unknown torchvision classification model {name!r}; allowed: {', '.join(known)}")
    num_classes = _check_classes(1000 if num_classes is None else num_classes)
    size = TORCHVISION_INPUT_SIZE if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"model.input_size must be a positive integer (pixels), got {input_size!r}")
    kwargs = {"num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False  # one output tensor; the auxiliary heads only matter in training
        kwargs["init_weights"] = False  # scipy-free, fast initialisation
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    model.example_input_size = (1, 3, size, size)
    model.lbyl_arch = {"name": TORCHVISION_PREFIX + name, "num_classes": num_classes, "input_size": size}
    return model


def build_model(name: str, num_classes: int | None = None, input_size: int | None = None) -> nn.Module:
    """A freshly initialised network: a built-in architecture or ``torchvision/<name>``.

    ``input_size`` (pixels) sets the example input torchvision models are traced and counted on
    (default 224); built-in architectures have their dataset's size.
    """
    if isinstance(name, str) and name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(name[len(TORCHVISION_PREFIX):], num_classes, input_size)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}, "
                         f"or {TORCHVISION_PREFIX}<name> for a torchvision classification model")
    cls, default_classes = ARCHITECTURES[name]
    num_classes = _check_classes(default_classes if num_classes is None else num_classes)
    model = cls(num_classes=num_classes)
    # Recorded so a pruning spec can rebuild the same network (plain data, no pickled modules).
    model.lbyl_arch = {"name": name, "num_classes": num_classes}
    return model
