"""DataModules and what they are built from: the seeded per-epoch samplers (training shards, exact evaluation
shards), the seeded augmentation, and the on-disk formats that are not shipped here: an ImageNet-style
ImageFolder (built from tiny random JPEGs) and the error messages for missing CIFAR folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lbyl_pl.datamodules import AugmentedDataset, EpochSampler, EvalShardSampler, ImageDataModule, SyntheticDataset


# -- samplers and seeded augmentation ----------------------------------------------------------------

def decode(indices, size):
    return [i % size for i in indices], {i // size for i in indices}


def test_epoch_sampler_seeded_per_epoch():
    size = 37
    sampler = EpochSampler(size, seed=5)
    sampler.set_epoch(3)
    first, second = list(sampler), list(sampler)
    assert first == second  # same epoch -> same order
    again = EpochSampler(size, seed=5)
    again.set_epoch(3)
    assert list(again) == first  # a fresh sampler (a resumed run) agrees
    indices, epochs = decode(first, size)
    assert epochs == {3}  # the epoch is encoded for the dataset
    assert sorted(indices) == list(range(size))  # a permutation of the dataset
    sampler.set_epoch(4)
    other, _ = decode(list(sampler), size)
    assert other != indices  # a new epoch reshuffles
    other_seed = EpochSampler(size, seed=6)
    other_seed.set_epoch(3)
    assert decode(list(other_seed), size)[0] != indices


@pytest.mark.parametrize("size", [10, 11, 37])
def test_epoch_sampler_two_rank_shards(size):
    shards = []
    for rank in range(2):
        s = EpochSampler(size, seed=0, rank=rank, world_size=2)
        s.set_epoch(2)
        shards.append(decode(list(s), size)[0])
        assert len(s) == len(shards[-1]) == (size + 1) // 2
    assert len(shards[0]) == len(shards[1])  # padded to equal length (DDP needs equal step counts)
    assert set(shards[0]) | set(shards[1]) == set(range(size))  # every sample is seen
    overlap = set(shards[0]) & set(shards[1])
    assert len(overlap) == (size % 2)  # only the padding sample is duplicated
    # the union of the shards, interleaved, is the 1-process order (padded)
    single = EpochSampler(size, seed=0)
    single.set_epoch(2)
    order = decode(list(single), size)[0]
    interleaved = [x for pair in zip(*shards) for x in pair]
    assert interleaved[:size] == order


@pytest.mark.parametrize("size", [1, 24, 25])
def test_eval_shard_sampler_exact(size):
    shards = [list(EvalShardSampler(size, rank, 2)) for rank in range(2)]
    assert len(EvalShardSampler(size, 0, 2)) == len(shards[0])
    combined = shards[0] + shards[1]
    assert len(combined) == len(set(combined)) == size  # no duplicates, nothing padded
    assert sorted(combined) == list(range(size))
    assert list(EvalShardSampler(size)) == list(range(size))


def test_augmented_dataset_deterministic():
    base = SyntheticDataset(6, 3, 8, 10, seed=0)
    aug = AugmentedDataset(base, seed=1, crop_padding=2, flip=True)
    encoded = 2 * len(base) + 4  # epoch 2, index 4
    x1, y1 = aug[encoded]
    x2, y2 = AugmentedDataset(base, seed=1, crop_padding=2, flip=True)[encoded]
    assert torch.equal(x1, x2) and int(y1) == int(y2) == int(base.y[4])
    assert x1.shape == base.x[4].shape
    # another epoch, index or seed gives another draw (over several samples, at least one differs)
    views = lambda ds, epoch: torch.stack([ds[epoch * len(base) + i][0] for i in range(len(base))])  # noqa: E731
    assert not torch.equal(views(aug, 2), views(aug, 3))
    assert not torch.equal(views(aug, 2), views(AugmentedDataset(base, seed=2, crop_padding=2, flip=True), 2))
    # without augmentation, the encoded index just decodes to the sample
    plain = AugmentedDataset(base, seed=1)
    assert torch.equal(plain[encoded][0], base.x[4])


# -- on-disk formats ---------------------------------------------------------------------------------

def make_image_folder(root, classes=3, per_class=2, size=(300, 260)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.JPEG")


def test_imagenet_folder_resize_256_center_crop_224(tmp_path):
    make_image_folder(tmp_path)
    dm = ImageDataModule("imagenet", root=str(tmp_path), eval_batch_size=4)
    dm.setup("validate")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 224, 224)
    assert y.tolist() == [0, 0, 1, 1]
    assert len(dm.eval_set) == 6
    # normalised with the ImageNet mean/std: roughly zero-centred for uniform random pixels
    assert abs(x.mean().item()) < 0.6


def test_imagenet_missing_val_folder_says_where_it_looked(tmp_path):
    dm = ImageDataModule("imagenet", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ImageNet folder .*val.* not found"):
        dm.setup("validate")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_cifar_missing_says_how_to_provide_it(tmp_path, name):
    dm = ImageDataModule(name, root=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError, match=rf"{name} \(torchvision format\) not found under .*download=true"):
        dm.setup("validate")


def test_cifar100_training_augmentation_includes_rotation(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8) % 100
    import lbyl_pl.datamodules as dmod
    monkeypatch.setattr(dmod, "_torchvision_cifar", lambda name, root, train, download: (images, labels))
    dm = ImageDataModule("cifar100", batch_size=8, seed=3)
    dm.setup("fit")
    aug = dm.train_set
    assert (aug.crop_padding, aug.flip, aug.rotation) == (4, True, 15.0)
    first = torch.stack([aug[i][0] for i in range(8)])
    again = torch.stack([aug[i][0] for i in range(8)])
    assert torch.equal(first, again)  # seeded by (seed, epoch, index)
    next_epoch = torch.stack([aug[8 + i][0] for i in range(8)])  # epoch 1 encodes index + len(dataset)
    assert not torch.equal(first, next_epoch)
