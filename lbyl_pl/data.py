"""Dataset readers (Fashion-MNIST, the ``.npz`` CIFAR-10 copies) and exact top-1/top-5 evaluation."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["data_dir", "NORMALIZATION", "ArrayImageDataset", "load_fashion_mnist", "load_cifar10_npz",
           "CIFAR10_NPZ_SPLITS", "evaluate"]

NORMALIZATION = {  # (mean, std) per dataset, docs/method.md §7
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "fashion_mnist": ((0.5,), (0.5,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Debian's dataset-fashion-mnist installs here; it is where the package puts it, not a workplace path.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$LBYL_DATA``, else ``./data``."""
    return Path(path or os.environ.get("LBYL_DATA") or "data")


class ArrayImageDataset(Dataset):
    """uint8 images (N, H, W, C) and labels, scaled to [0, 1] and normalised on access.

    ``transform`` (optional) is applied to the normalised ``(C, H, W)`` float tensor (augmentation).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, transform=None):
        if images.ndim == 3:
            images = images[..., None]
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        images = np.ascontiguousarray(images) if images.flags.writeable else np.array(images)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 NCHW view
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        x = (self.images[index].float() / 255.0 - self.mean) / self.std
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[index]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {dims} but the file holds {data.size} values (truncated?)")
    return data.reshape(dims)


def load_fashion_mnist(root: str | os.PathLike | None = None, train: bool = False) -> ArrayImageDataset:
    """Fashion-MNIST from the IDX files (``.gz`` or not).

    Looks in ``root`` (default ``$LBYL_DATA``), its ``fashion-mnist/`` and torchvision's
    ``FashionMNIST/raw/`` sub-folders, then in Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    prefix = "train" if train else "t10k"
    base = data_dir(root)
    candidates = [base, base / "fashion-mnist", base / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]
    for folder in candidates:
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                mean, std = NORMALIZATION["fashion_mnist"]
                return ArrayImageDataset(_read_idx(images), _read_idx(labels).astype(np.int64), mean, std)
    raise FileNotFoundError(
        f"Fashion-MNIST {prefix} files not found; looked in: {', '.join(map(str, candidates))}. "
        "Install the Debian package (apt-get install dataset-fashion-mnist) or put the IDX files under "
        "$LBYL_DATA/FashionMNIST/raw")


# split name -> (file, images key, labels key)
CIFAR10_NPZ_SPLITS = {
    "train": ("cifar10_train.npz", "images", "labels"),
    "test": ("cifar10_test.npz", "images", "labels"),
    "lossless_test": ("cifar10_lossless_subset.npz", "test_images", "test_labels"),
    "lossless_train": ("cifar10_lossless_subset.npz", "train_images", "train_labels"),
}


def load_cifar10_npz(root: str | os.PathLike | None = None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int64 labels of a CIFAR-10 ``.npz`` split (``train``/``test`` are the JPEG
    q75 copy; ``lossless_test``/``lossless_train`` are the 1,000/4,000 original images)."""
    if split not in CIFAR10_NPZ_SPLITS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; allowed: {', '.join(CIFAR10_NPZ_SPLITS)}")
    file, image_key, label_key = CIFAR10_NPZ_SPLITS[split]
    path = data_dir(root) / file
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file {path} not found; set LBYL_DATA (or data.root) to the "
                                f"folder holding {file}")
    with np.load(path, allow_pickle=False) as archive:
        return archive[image_key], archive[label_key].astype(np.int64)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 500, device: str | torch.device = "cpu",
             num_workers: int = 0) -> dict:
    """Exact top-1 / top-5 accuracy (%) of ``model`` over every sample of ``dataset`` (eval mode)."""
    loader = dataset if isinstance(dataset, DataLoader) else \
        DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval().to(device)
    correct1 = correct5 = total = 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = topk == y[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation dataset is empty")
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "n": total}
