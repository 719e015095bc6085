"""Train one of ``benchmarks/small_cnns.py``'s networks on the CIFAR-10 JPEG q75 copy (plain PyTorch loop).

    python benchmarks/train_small_cnn.py mixnet --epochs 6 --out $RUNS/mixnet.pth

SGD (momentum 0.9, nesterov, weight decay 5e-4), one-cycle learning rate, random crop and flip; bf16 autocast
where the CPU has native bf16 (AMX / AVX512-BF16), fp32 otherwise. Prints the test top-1 on the 10,000 JPEG test
images at the end and saves ``{"state_dict", "arch", "acc1"}`` (weights never go into git).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_cnns import SMALL_CNNS  # noqa: E402

from lbyl_pl.data import NORMALIZATION, ArrayImageDataset, evaluate, load_cifar10_npz  # noqa: E402


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


HOLDOUT_SEED = 0


def holdout_split(n: int, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices) of the CIFAR-10 training copy: a fixed permutation's last ``holdout``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return order[:n - holdout].sort().values, order[n - holdout:].sort().values


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", choices=sorted(SMALL_CNNS))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=5000,
                   help="training images left out of training (the last ones of a seed-0 permutation), on which "
                        "the refit's defaults are chosen; HOLDOUT_SEED fixes which")
    p.add_argument("--data", default=os.environ.get("LBYL_DATA", "data"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    images, labels = load_cifar10_npz(args.data, "train")
    mean, std = NORMALIZATION["cifar10"]
    train = ArrayImageDataset(images, labels, mean, std)
    keep = holdout_split(len(train), args.holdout)[0]
    x_all = torch.stack([train[int(i)][0] for i in keep])
    y_all = train.labels[keep]
    model = SMALL_CNNS[args.arch]()
    steps = args.epochs * (len(x_all) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.25)
    bf16 = native_bf16()
    print(f"{args.arch}: {sum(p.numel() for p in model.parameters()):,} params, {args.epochs} epochs, "
          f"{'bf16 autocast' if bf16 else 'fp32'}", flush=True)
    g = torch.Generator().manual_seed(args.seed)
    started = time.time()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_all), generator=g)
        total, correct, seen = 0.0, 0, 0
        for b in range(len(x_all) // args.batch_size):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x, y = x_all[idx], y_all[idx]
            # augmentation: 4-pixel random crop and horizontal flip
            x = F.pad(x, (4, 4, 4, 4))
            i, j = torch.randint(0, 9, (2,), generator=g).tolist()
            x = x[:, :, i:i + 32, j:j + 32]
            if torch.rand(1, generator=g).item() < 0.5:
                x = x.flip(3)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / seen:.3f}  train top-1 {100 * correct / seen:.2f}  "
              f"({time.time() - started:.0f} s)", flush=True)
    model.eval()
    test_images, test_labels = load_cifar10_npz(args.data, "test")
    acc1 = evaluate(model, ArrayImageDataset(test_images, test_labels, mean, std))["top1"]
    print(f"test top-1 (CIFAR-10 JPEG q75 copy, 10,000 images): {acc1:.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "arch": args.arch, "acc1": float(acc1),
                "holdout": args.holdout}, args.out)


if __name__ == "__main__":
    main()
