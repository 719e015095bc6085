"""DataModules on the on-disk formats that are not shipped here: an ImageNet-style ImageFolder (built from
tiny random JPEGs) and the error messages for missing CIFAR folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lbyl_pl.datamodules import ImageDataModule


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
