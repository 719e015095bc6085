"""Lightning DataModules: Fashion-MNIST, CIFAR-10 (``.npz`` copies or torchvision), CIFAR-100, ImageNet
validation, and a synthetic one for tests.

Sampling is epoch-seeded and sharded without Lightning's automatic ``DistributedSampler``
(``Trainer(use_distributed_sampler=False)``): training shards are padded to equal length as DDP needs,
evaluation shards are *not* padded, so a distributed evaluation counts every test sample exactly once.
Training augmentation draws its randomness from ``(seed, epoch, index)``, which makes a resumed run
see exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import DEFAULTS
from .data import NORMALIZATION, ArrayImageDataset, data_dir, load_cifar10_npz, load_fashion_mnist

__all__ = ["ImageDataModule", "build_datamodule", "DATASETS", "EpochSampler", "EvalShardSampler"]

DATASETS = ("fashion_mnist", "cifar10_npz", "cifar10", "cifar100", "imagenet", "synthetic")


class EpochSampler(Sampler):
    """Shuffled, per-epoch seeded, rank-sharded (padded) training order.

    Yields ``epoch * len(dataset) + index`` so the dataset knows the epoch for its augmentation,
    also inside worker processes.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.per_rank = math.ceil(size / world_size)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __len__(self):
        return self.per_rank

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + 7919 * self.epoch))
        total = self.per_rank * self.world_size
        if total > self.size:
            order = torch.cat([order, order[: total - self.size]])
        shard = order[self.rank:total:self.world_size]
        return iter((shard + self.epoch * self.size).tolist())


class EvalShardSampler(Sampler):
    """Rank ``r`` of ``w`` evaluates indices ``r, r + w, ...``: no padding, no duplicates."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class AugmentedDataset(Dataset):
    """Applies seeded random crop (zero padding) / flip / rotation to a normalised image dataset."""

    def __init__(self, base: Dataset, seed: int, crop_padding: int = 0, flip: bool = False,
                 rotation: float = 0.0):
        self.base, self.seed = base, seed
        self.crop_padding, self.flip, self.rotation = crop_padding, flip, rotation

    def __len__(self):
        return len(self.base)

    def __getitem__(self, encoded):
        epoch, index = divmod(int(encoded), len(self.base))
        x, y = self.base[index]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        if self.crop_padding:
            p = self.crop_padding
            h, w = x.shape[-2:]
            padded = F.pad(x, (p, p, p, p))
            top, left = torch.randint(0, 2 * p + 1, (2,), generator=g).tolist()
            x = padded[..., top:top + h, left:left + w]
        if self.flip and torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        if self.rotation:
            from torchvision.transforms.v2 import functional as TF
            angle = (torch.rand((), generator=g).item() * 2 - 1) * self.rotation
            x = TF.rotate(x, angle)
        return x, y


class SubsetDataset(Dataset):
    def __init__(self, base: Dataset, indices):
        self.base, self.indices = base, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


class SyntheticDataset(Dataset):
    """Seeded random images whose labels come from a fixed random linear teacher (learnable)."""

    def __init__(self, n: int, channels: int, size: int, num_classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, channels, size, size, generator=g)
        teacher = torch.randn(channels * size * size, num_classes, generator=torch.Generator().manual_seed(1234))
        self.y = (self.x.flatten(1) @ teacher).argmax(dim=1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _imagenet_folder(root, train: bool):
    from torchvision import datasets, transforms
    mean, std = NORMALIZATION["imagenet"]
    folder = data_dir(root) / ("train" if train else "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"ImageNet folder {folder} not found; set data.root (or $LBYL_DATA) to a "
                                "directory with train/ and val/ ImageFolder sub-folders")
    if train:
        tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize(mean, std)])
    else:
        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize(mean, std)])
    return datasets.ImageFolder(str(folder), tf)


def _torchvision_cifar(name: str, root, train: bool, download: bool):
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        raw = cls(str(data_dir(root)), train=train, download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"{name} (torchvision format) not found under {data_dir(root)}: {err}. Put the extracted "
            f"'cifar-10-batches-py'/'cifar-100-python' folder there or set data.download=true") from None
    return np.asarray(raw.data), np.asarray(raw.targets, dtype=np.int64)


class ImageDataModule(pl.LightningDataModule):
    """One DataModule for every supported dataset, configured by the ``data`` section of a config."""

    def __init__(self, name: str = "fashion_mnist", root=None, eval_split: str = "test", eval_on: str = "test",
                 holdout: int = 0, holdout_seed: int = 0, train_subset: int = 0, download: bool = False,
                 augment: bool = True, batch_size: int = 128, eval_batch_size: int = 500, num_workers: int = 0,
                 synthetic: dict | None = None, seed: int = 0):
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
        if eval_on not in ("test", "holdout"):
            raise ValueError(f"data.eval_on must be 'test' or 'holdout', got {eval_on!r}")
        if eval_on == "holdout" and not holdout:
            raise ValueError("data.eval_on=holdout needs data.holdout > 0 (size of the held-out split)")
        for label, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{label} must be a positive integer, got {value!r}")
        self.name, self.root, self.eval_split, self.eval_on = name, root, eval_split, eval_on
        self.holdout, self.holdout_seed, self.train_subset = int(holdout), int(holdout_seed), int(train_subset)
        self.download, self.augment = download, augment
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.synthetic = dict(DEFAULTS["data"]["synthetic"], **(synthetic or {}))
        self.seed = seed
        self.train_set = self.eval_set = self.holdout_set = None

    # -- datasets -------------------------------------------------------------------------------
    def _arrays(self, train: bool) -> Dataset:
        n = self.name
        if n == "fashion_mnist":
            return load_fashion_mnist(self.root, train=train)
        if n == "synthetic":
            s = self.synthetic
            return SyntheticDataset(s["num_train"] if train else s["num_eval"], s["channels"], s["image_size"],
                                    s["num_classes"], seed=1 if train else 2)
        if n == "imagenet":
            return _imagenet_folder(self.root, train)
        if n == "cifar10_npz":
            split = "train" if train else self.eval_split
            images, labels = load_cifar10_npz(self.root, split)
            mean, std = NORMALIZATION["cifar10"]
        else:
            images, labels = _torchvision_cifar(n, self.root, train, self.download)
            mean, std = NORMALIZATION[n]
        return ArrayImageDataset(images, labels, mean, std)

    def _augment(self, dataset: Dataset) -> Dataset:
        if not self.augment or self.name in ("fashion_mnist", "synthetic", "imagenet"):
            return AugmentedDataset(dataset, self.seed)  # decodes the epoch-encoded indices only
        rotation = 15.0 if self.name == "cifar100" else 0.0
        return AugmentedDataset(dataset, self.seed, crop_padding=4, flip=True, rotation=rotation)

    def _split_train(self, full: Dataset):
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.holdout_seed)).tolist()
        if self.holdout >= len(full):
            raise ValueError(f"data.holdout={self.holdout} must be smaller than the training set ({len(full)})")
        held, rest = order[:self.holdout], order[self.holdout:]
        if self.train_subset:
            rest = rest[:self.train_subset]
        return SubsetDataset(full, sorted(rest)), SubsetDataset(full, sorted(held))

    def setup(self, stage: str | None = None):
        need_train = stage in (None, "fit") or self.eval_on == "holdout"
        if need_train and self.train_set is None:
            full = self._arrays(train=True)
            if self.holdout or self.train_subset:
                train, held = self._split_train(full)
            else:
                train, held = full, None
            self.train_set = self._augment(train)
            self.holdout_set = held
        if self.eval_set is None:
            self.eval_set = self.holdout_set if self.eval_on == "holdout" else self._arrays(train=False)

    # -- loaders --------------------------------------------------------------------------------
    def _rank_world(self):
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self):
        rank, world = self._rank_world()
        sampler = EpochSampler(len(self.train_set), self.seed, rank, world)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=False,
                          num_workers=self.num_workers, persistent_workers=False)

    def val_dataloader(self):
        rank, world = self._rank_world()
        return DataLoader(self.eval_set, batch_size=self.eval_batch_size,
                          sampler=EvalShardSampler(len(self.eval_set), rank, world),
                          num_workers=self.num_workers)

    test_dataloader = val_dataloader


def build_datamodule(data_cfg: dict, seed: int = 0) -> ImageDataModule:
    return ImageDataModule(**data_cfg, seed=seed)
