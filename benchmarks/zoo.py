"""The torchvision zoo through discovery: units found, groups skipped by reason, and restoration time.

Command line (from the repository root)::

    python benchmarks/zoo.py [--models resnet18 vgg16_bn ...] [--ratio 0.3] [--size 224] [--threads 2] \
        [--json zoo.json]

For every model: ``torchvision.models.get_model(name, weights=None)`` (random weights; no pretrained
weights exist on this machine) with randomised BatchNorm statistics (seeded), traced on one input of
``--size`` pixels. Printed as a Markdown table: the units discovery finds, the skipped groups by
reason (one per Conv2d/Linear producer), the share of all Conv2d output channels that belong to a
unit, params and FLOPs of the whole network before and after pruning every unit at ``--ratio``
(l2-norm; the same shapes for every method), and the wall time of ``prune_and_restore`` for
``prune``, ``merge`` (NM) and ``lbyl`` (discovery is cached after the first call, so these times are
selection + solve + surgery; the trace time is its own column). A model that cannot be restored says
why in the last column. ``--refit`` adds a column: the KL divergence of the LBYL-restored network's outputs
against the original's on held-out distilled inputs, before and after the refit on distilled inputs (and its time,
distillation included).
"""
from __future__ import annotations

import sys
import time

from bench_common import cpu_name, make_parser, randomize_bn, set_thread_env, write_json  # beside this script

ZOO = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg16_bn", "mobilenet_v2",
       "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "googlenet", "densenet121", "convnext_tiny",
       "shufflenet_v2_x1_0", "squeezenet1_1", "alexnet")


def parse_args(argv=None):
    parser = make_parser(__doc__, device=False, checkpoint_help="unused (random weights)",
                         seed_help="seed of the random weights and BN statistics")
    parser.add_argument("--models", nargs="+", default=list(ZOO), help="torchvision classification names")
    parser.add_argument("--ratio", type=float, default=0.3, help="pruning ratio of every unit")
    parser.add_argument("--size", type=int, default=224, help="example input size (pixels)")
    parser.add_argument("--refit", action="store_true",
                        help="also refit the pruned network (LBYL start) on inputs distilled from the model "
                             "(REFIT options below) and report the output KL on held-out distilled inputs "
                             "before -> after")
    parser.add_argument("--refit-options", default='{"n": 16, "heldout": 8, "iterations": 20, "bn_free": "deepinversion"}',
                        help="JSON refit options for --refit (small: the zoo's models are large)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    import torch
    from torch import nn

    from lbyl_pl import build_model, discover, prune_and_restore

    torch.set_num_threads(args.threads)
    rows = []
    print(f"# torchvision zoo, r = {args.ratio}, {args.size} px, random weights + randomised BN, "
          f"{args.threads} thread(s), {cpu_name()}\n")
    refit_head, refit_rule = ("refit: output KL before → after (s) | ", "---|") if args.refit else ("", "")
    if args.refit:
        print(f"refit: LBYL start, options {args.refit_options}, KL of the outputs against the original on the "
              "held-out distilled inputs\n")
    print("| model | units | skipped (by reason) | prunable conv channels | params before → after | "
          f"GFLOPs before → after | trace s | prune s | NM s | LBYL s | {refit_head}note |")
    print("|---|---|---|---|---|---|---|---|---|---|" + refit_rule + "---|")
    for name in args.models:
        torch.manual_seed(args.seed)
        row = {"model": name}
        try:
            model = build_model(f"torchvision/{name}", input_size=args.size).eval()
            randomize_bn(model)
            x = torch.zeros(1, 3, args.size, args.size)
            started = time.perf_counter()
            found = discover(model, x)
            row["trace_s"] = time.perf_counter() - started
            conv_channels = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
            unit_channels = sum(u.n_channels for u in found.units if isinstance(u.layer, nn.Conv2d))
            row.update(units=len(found.units), skipped=found.skipped_by_reason(),
                       prunable_share=unit_channels / max(conv_channels, 1))
            for method in ("prune", "merge", "lbyl"):
                started = time.perf_counter()
                restored, report = prune_and_restore(model, method, "l2-norm", args.ratio, example_inputs=x)
                row[f"{method}_s"] = time.perf_counter() - started
                with torch.no_grad():
                    out = restored(x)
                if not torch.isfinite(out).all():
                    raise ValueError(f"{method}: the restored network's output is not finite")
            if args.refit:
                import json
                started = time.perf_counter()
                _, refitted = prune_and_restore(model, "lbyl", "l2-norm", args.ratio, example_inputs=x,
                                                refit=json.loads(args.refit_options))
                r = refitted.refit
                row.update(refit_kl=(r.output_kl_before, r.output_kl_after),
                           refit_s=time.perf_counter() - started, refit_layers=len(r.layers))
            row.update(params=(report.params_before, report.params_after),
                       flops=(report.flops_before, report.flops_after), note="restores")
        except ValueError as err:  # discovery's clear errors: tracer rejected the model, or no unit
            row["note"] = str(err).split(";")[0][:150]
        rows.append(row)
        skipped = ", ".join(f"{n} {r}" for r, n in row.get("skipped", {}).items()) or "-"
        if "params" in row:
            p, f = row["params"], row["flops"]
            print(f"| {name} | {row['units']} | {skipped} | {100 * row['prunable_share']:.0f} % | "
                  f"{p[0] / 1e6:.2f}M → {p[1] / 1e6:.2f}M | {f[0] / 1e9:.2f} → {f[1] / 1e9:.2f} | "
                  f"{row['trace_s']:.2f} | {row['prune_s']:.2f} | {row['merge_s']:.2f} | {row['lbyl_s']:.2f} | "
                  + (f"{row['refit_kl'][0]:.3g} → {row['refit_kl'][1]:.3g} ({row['refit_s']:.0f}) | "
                     if args.refit else "") + "restores |", flush=True)
        else:
            units = row.get("units", "-")
            print(f"| {name} | {units} | {skipped} | - | - | - | - | - | - | - | " + ("- | " if args.refit else "")
                  + f"{row['note']} |", flush=True)
    if args.json:
        write_json(args.json, {"ratio": args.ratio, "size": args.size, "threads": args.threads, "cpu": cpu_name(),
                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
