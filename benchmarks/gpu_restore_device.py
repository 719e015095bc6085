"""Restoration on the model's device: VGG16-BN restored on ``--device`` by ``RestoreCallback`` for every registered
method (refit off), against the same restoration on the CPU.

For each method: a LightningModule holding VGG16-BN is moved to the device and ``RestoreCallback(method,
"l2-norm", --ratio).apply(module)`` restores it there; the network refuses ``.cpu()`` meanwhile (restoration must
not move it). Pass conditions, printed as one ``OK`` / ``FAIL`` line per method: every parameter and buffer of the
restored network is on the device, its kept sets (spec) equal the CPU restoration's, and its fp32 output (TF32 off)
is allclose to the CPU-restored network's output (rtol ``--rtol``, atol ``--atol`` x max |CPU logit|; 1e-3 both).
The last line is ``gpu-restore-device: PASS`` or ``FAIL`` (exit status 0 / 1; 77 with ``SKIPPED:`` when
``--device cuda`` has no CUDA device).

    python benchmarks/gpu_restore_device.py --device cuda      # a step of benchmarks/gpu_check.sh
    python benchmarks/gpu_restore_device.py --device cpu       # the dry run: the same plumbing on the CPU

Weights: ``--checkpoint`` (default ``$LBYL_CHECKPOINTS/vgg16_cifar10.pth`` when present), else seeded random
weights with randomised BatchNorm statistics.
"""
from __future__ import annotations

import sys
import time
import traceback

from bench_common import device_name, load_or_random, make_parser, script_args, write_json  # beside this script

EXIT_SKIPPED = 77
CHECKPOINT_NAME = "vgg16_cifar10.pth"


def parse_args(argv=None):
    parser = make_parser(__doc__, checkpoint_help=f"VGG16-BN weights (default: $LBYL_CHECKPOINTS/{CHECKPOINT_NAME} "
                         "if present, else random); 'random' for random weights",
                         seed_help="seed of the random weights and of the input batch")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: every registered one)")
    parser.add_argument("--batch", type=int, default=8, help="images in the comparison batch")
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--atol", type=float, default=1e-3, help="relative to max |CPU logit|")
    return parser.parse_args(argv)


ARGS = script_args(__name__, parse_args)  # parsed, thread variables set, before torch loads; None if imported

import torch  # noqa: E402  (after the thread variables)


def load_vgg(args):
    """VGG16-BN (eval mode, on the CPU) and a sentence saying which weights it has."""
    from lbyl_pl.checkpoints import checkpoint_dir

    checkpoint = args.checkpoint
    if checkpoint is None:
        found = checkpoint_dir() / CHECKPOINT_NAME
        checkpoint = found if found.is_file() else None
    elif checkpoint == "random":
        checkpoint = None
    net, weights, _ = load_or_random("vgg16_bn", checkpoint, args.seed, num_classes=10)
    return net, weights


def holder(net):
    import pytorch_lightning as pl

    class Holder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = net

        def forward(self, x):
            return self.backbone(x)

    return Holder()


def _refuse_cpu():
    raise RuntimeError("restoration moved the network to the CPU (.cpu() called)")


def restore(net, device: str, method: str, ratio: float):
    """``(restored network, seconds)``: ``net`` (copied) on ``device``, restored there by ``RestoreCallback``."""
    import copy

    from lbyl_pl import RestoreCallback

    module = holder(copy.deepcopy(net)).to(device)
    if device != "cpu":
        module.backbone.cpu = _refuse_cpu  # an instance attribute: RestoreCallback must not call it
    callback = RestoreCallback(method, "l2-norm", ratio, refit=False)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    callback.apply(module)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    restored = module.backbone
    restored.__dict__.pop("cpu", None)
    return restored.eval(), seconds


def main(args) -> int:
    from lbyl_pl import METHODS

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("SKIPPED: --device cuda but torch.cuda.is_available() is False")
        return EXIT_SKIPPED
    torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions and matmuls comparable with the CPU at 1e-3
    torch.backends.cuda.matmul.allow_tf32 = False
    net, weights = load_vgg(args)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed + 1))
    where = device_name(device)
    print(f"restoration on the model's device: VGG16-BN, {weights}; RestoreCallback on {device} ({where}) vs on "
          f"the CPU, l2-norm r={args.ratio}, refit off; pass: every tensor on {device}, same kept sets, "
          f"allclose(rtol={args.rtol:g}, atol={args.atol:g} x max|CPU logit|), fp32, TF32 off")
    rows, ok = [], True
    for method in methods:
        row = {"method": method}
        try:
            on_device, row["device_s"] = restore(net, device, method, args.ratio)
            on_cpu, row["cpu_s"] = restore(net, "cpu", method, args.ratio)
            places = sorted({str(t.device) for t in (*on_device.parameters(), *on_device.buffers())})
            row["tensors_on"] = places
            row["on_device"] = all(p.startswith(device) for p in places)
            row["same_kept"] = on_device.lbyl_spec["units"] == on_cpu.lbyl_spec["units"]
            with torch.no_grad():
                ref = on_cpu(x).float()
                out = on_device(x.to(device)).float().cpu()
            scale = float(ref.abs().max())
            row["max_abs_diff"], row["max_abs_logit"] = float((out - ref).abs().max()), scale
            row["allclose"] = bool(torch.allclose(out, ref, rtol=args.rtol, atol=args.atol * max(scale, 1e-12)))
            row["ok"] = row["on_device"] and row["same_kept"] and row["allclose"]
            print(f"{'OK  ' if row['ok'] else 'FAIL'} {method:<7} restored on {device} in {row['device_s']:.2f} s "
                  f"(CPU {row['cpu_s']:.2f} s); tensors on {places}; kept sets "
                  f"{'equal' if row['same_kept'] else 'DIFFER'}; max|Δ| vs CPU {row['max_abs_diff']:.2e} "
                  f"(max|logit| {scale:.2f}, allclose {row['allclose']})", flush=True)
        except Exception as err:  # noqa: BLE001 - one method's failure must not hide the others
            traceback.print_exc()
            row.update(ok=False, error=f"{type(err).__name__}: {err}")
            print(f"FAIL {method:<7} {row['error']}", flush=True)
        ok &= row["ok"]
        rows.append(row)
    passed = sum(row["ok"] for row in rows)
    print(f"gpu-restore-device: {'PASS' if ok else 'FAIL'} ({passed}/{len(rows)} methods on {device})")
    if args.json:
        write_json(args.json, {"check": "gpu-restore-device", "device": device, "device_name": where,
                               "weights": weights, "ratio": args.ratio, "rows": rows, "ok": bool(ok)})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(ARGS))
