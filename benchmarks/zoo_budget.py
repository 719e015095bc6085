"""The torchvision zoo with every unit and coupled group (``units="all"``) and a FLOP budget.

    python benchmarks/zoo_budget.py [--models resnet18 ...] [--size 224] [--flops 0.5] [--json zoo_budget.json]

For every model (random weights with randomised BN statistics, seeded: no pretrained weights on this machine),
traced on one input of ``--size`` pixels, a Markdown row of

- the share of the output channels of full (groups = 1) convs that the default units cover and that
  ``units="all"`` covers (units and coupled groups), and the groups found by kind;
- what stays skipped, with the reasons;
- ``prune_and_restore(model, "prune", units="all", flops=F)``: the FLOPs kept (counted again on the pruned
  network), the candidate the budget chose, the allocation's time (sensitivity and candidates, without the
  inputs' distillation) and that the pruned network runs forward;
- CPU latency at batch 1 and 64 before and after (median of ``--repeats``).

The budget's inputs are Gaussian noise (``refit_inputs``), not distilled: random-weight networks have no trained
statistics worth distilling; the point here is coverage, the budget's accuracy in FLOPs and the speed-up.
"""
from __future__ import annotations

import sys
import time
from collections import Counter

from bench_common import cpu_name, latency_ms, make_parser, randomize_bn, set_thread_env, write_json

ZOO = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg16_bn", "mobilenet_v2",
       "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "googlenet", "densenet121", "convnext_tiny",
       "shufflenet_v2_x1_0", "squeezenet1_1", "alexnet")


def parse_args(argv=None):
    parser = make_parser(__doc__, device=False, checkpoint_help="unused (random weights)",
                         seed_help="seed of the random weights, BN statistics and noise inputs")
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--inputs", type=int, default=16, help="noise inputs the budget measures on")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def coverage(model, found):
    from torch import nn
    full = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    total = sum(m.out_channels for m in full) or 1
    units = {id(u.layer) for u in found.units}
    groups = {id(m.module) for g in found.groups for m in g.members if m.role == "out"}
    share = lambda ids: sum(m.out_channels for m in full if id(m) in ids) / total  # noqa: E731
    return share(units), share(units | groups)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    import torch
    import torchvision

    from lbyl_pl import discover, prune_and_restore
    from lbyl_pl.restoration import count_flops

    torch.set_num_threads(args.threads)
    print(f"# torchvision zoo, units=\"all\", flops={args.flops}, {args.size} px, random weights + randomised BN, "
          f"noise inputs, {args.threads} thread(s), {cpu_name()}\n")
    print("| model | full-conv channels: default units → all | groups (kind) | skipped | FLOPs kept | chosen "
          "candidate | allocation s | latency b1 ms before → after | b64 ms before → after |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        torch.manual_seed(args.seed)
        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        randomize_bn(model)
        shape = (3, args.size, args.size)
        x = torch.zeros(1, *shape)
        row = {"model": name}
        try:
            found = discover(model, x)
        except ValueError as err:
            row["error"] = str(err)
            print(f"| {name} | - | - | {str(err)[:160]} | - | - | - | - | - |", flush=True)
            rows.append(row)
            continue
        default, everything = coverage(model, found)
        kinds = Counter(g.kind for g in found.groups)
        skipped = "; ".join(f"{g.name}: {g.reason}" + (f" ({g.detail})" if g.detail else "")
                            for g in found.skipped)
        row.update(default_share=default, all_share=everything, groups=dict(kinds),
                   skipped=[str(g) for g in found.skipped])
        noise = torch.randn(args.inputs + max(1, args.inputs // 3), *shape,
                            generator=torch.Generator().manual_seed(args.seed))
        try:
            started = time.perf_counter()
            pruned, report = prune_and_restore(model, "prune", "l2-norm", units="all", example_inputs=x,
                                               flops=args.flops, refit_inputs=noise)
            row["restore_s"] = time.perf_counter() - started
            with torch.inference_mode():
                pruned(torch.randn(2, *shape))  # runs forward
            kept = count_flops(pruned, x) / count_flops(model, x)
            before = (latency_ms(model, shape, 1, args.repeats * 3), latency_ms(model, shape, 64, args.repeats))
            after = (latency_ms(pruned, shape, 1, args.repeats * 3), latency_ms(pruned, shape, 64, args.repeats))
            row.update(flops_kept=kept, chosen=report.allocation.label, allocation_s=report.seconds.get("budget"),
                       candidates=report.allocation.candidates, latency_b1=[*before[:1], *after[:1]],
                       latency_b64=[before[1], after[1]])
            result = (f"{kept:.3f} | {report.allocation.label} | {report.seconds.get('budget', 0):.1f} | "
                      f"{before[0]:.1f} → {after[0]:.1f} | {before[1]:.0f} → {after[1]:.0f}")
        except ValueError as err:
            row["error"] = str(err)
            result = f"{str(err)[:120]} | - | - | - | -"
        groups = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "-"
        print(f"| {name} | {100 * default:.0f} % → {100 * everything:.0f} % | {groups} | {skipped or '-'} | "
              f"{result} |", flush=True)
        rows.append(row)
    if args.json:
        write_json(args.json, {"size": args.size, "flops": args.flops, "threads": args.threads, "cpu": cpu_name(),
                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
