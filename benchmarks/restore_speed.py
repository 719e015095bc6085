"""Speed of LBYL restoration on VGG16-BN: per-filter solves vs lbyl_pl's shared factorisation.

Command line (from the repository root)::

    LBYL_CHECKPOINTS=../shared/checkpoints python benchmarks/restore_speed.py \
        [--variant paper|exact] [--threads 2] [--repeats 5] [--checkpoint PATH] [--json out.json]

Setting: VGG16-BN (``lbyl_pl.build_model("vgg16_bn")``), all 13 conv units pruned at ratio 0.5 with
the l2-norm criterion, LBYL with lambda1 = 4e-5 and lambda2 = 2e-4 (the published VGG 50 % setting).
Weights: ``--checkpoint``, else ``$LBYL_CHECKPOINTS/vgg16_cifar10.pth`` when it exists, else random
weights with randomised BatchNorm running statistics (seeded); the output says which.

Timed, in one run, on identical inputs (kept indices and float64 unit tensors are prepared once and
not timed):

(a)  baseline, the reference code's approach (``Ridge.py``, docs/method.md §5.2): for every pruned filter
     build its m x m system in float64 and solve it with ``scipy.linalg.solve(A, b, assume_a='pos')``
     in a Python loop. ``G = Xᵀ X`` is computed once per layer (a stronger baseline than the
     reference, which recomputes it per filter; ``--gram-per-filter`` adds that literal variant).
(b)  ``lbyl_pl.methods.lbyl.lbyl_delivery(..., solver="shared")``: one factorisation per layer;
(b') the same with ``solver="batched"`` (every system materialised, one batched Cholesky), for
     information;
(c)  the public ``prune_and_restore(model, "lbyl", "l2-norm", 0.5, ...)`` end to end (selection,
     solve, surgery and FLOP counting), for information.

Every method is warmed up once, then timed ``--repeats`` times round-robin (one call of each per
round, so load from other processes affects all alike); the median wall-clock time is reported,
with the process CPU time beside it. The coefficients of (b) and (b') are compared with (a). Goal:
(b) at least 20x faster than (a) and under 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import sys

from bench_common import cpu_name, load_or_random, make_parser, script_args, write_json  # beside this script


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(__doc__, device=False,
                         checkpoint_help="VGG16-BN weights; default $LBYL_CHECKPOINTS/vgg16_cifar10.pth if present",
                         seed_help="seed for the random-weights fallback")
    parser.add_argument("--variant", choices=("paper", "exact"), default="paper",
                        help="LBYL variant: code-faithful 'paper' or the exact BN algebra")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per method")
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio")
    parser.add_argument("--lambda1", type=float, default=4e-5, help="LBYL lambda1 (BN-shift term)")
    parser.add_argument("--lambda2", type=float, default=2e-4, help="LBYL lambda2 (ridge on K∘s)")
    parser.add_argument("--no-batched", action="store_true", help="skip the solver='batched' row")
    parser.add_argument("--gram-per-filter", action="store_true",
                        help="also time the literal reference loop that recomputes Xᵀ X for every "
                             "pruned filter (slow: tens of seconds; timed once)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    return args


ARGS = script_args(__name__, parse_args)  # parsed, thread variables set, before torch loads; None if imported

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

import lbyl_pl  # noqa: E402
from lbyl_pl.checkpoints import checkpoint_dir  # noqa: E402
from lbyl_pl.methods.common import BN_FLOOR  # noqa: E402
from lbyl_pl.methods.lbyl import lbyl_delivery  # noqa: E402
from lbyl_pl.selection import kept_count, select_kept  # noqa: E402
from lbyl_pl.prunable import prunable_units  # noqa: E402
from lbyl_pl.units import unit_tensors  # noqa: E402

CRITERION = "l2-norm"
CHECKPOINT_NAME = "vgg16_cifar10.pth"
GOAL_SPEEDUP = 20.0
GOAL_SECONDS = 0.5
AGREEMENT_RTOL = 1e-8


# --------------------------------------------------------------------------------------- model


def load_model(args) -> tuple[torch.nn.Module, str, dict]:
    """VGG16-BN with real weights when available, else seeded random weights and BN statistics."""
    path = args.checkpoint
    if path is None:
        default = checkpoint_dir() / CHECKPOINT_NAME
        path = default if default.is_file() else None
    return load_or_random("vgg16_bn", path, args.seed,
                          missing=f"; no checkpoint found at $LBYL_CHECKPOINTS/{CHECKPOINT_NAME}")


def prepare_inputs(model, ratio):
    """(name, float64 unit tensors, kept indices) for every unit: the common input of (a) and (b)."""
    inputs = []
    for unit in prunable_units(model):
        tensors = unit_tensors(unit)
        kept = select_kept(tensors.weight, CRITERION, kept_count(unit.n_channels, ratio, unit.count_rule))
        inputs.append((unit.name, tensors, kept))
    return inputs


# ------------------------------------------------------------------------- (a) per-filter loop


def bn_scales(t, variant):
    """numpy copy of ``lbyl_pl.methods.common.bn_gamma_sigma``: clamped gamma, and sigma (variance in
    the paper variant, sqrt(var + eps) in the exact one)."""
    gamma = t.gamma.numpy()
    gamma = np.where(np.abs(gamma) < BN_FLOOR, np.where(gamma < 0, -BN_FLOOR, BN_FLOOR), gamma)
    var = t.var.numpy()
    sigma = np.maximum(var, BN_FLOOR) if variant == "paper" else np.sqrt(np.maximum(var, 0.0) + t.eps)
    return gamma, sigma


def reference_unit(t, kept, lambda1, lambda2, variant, gram_per_filter=False) -> np.ndarray:
    """Delivery matrix S (n x m) of one unit, one scipy Cholesky solve per pruned filter (§5.2)."""
    W = t.weight.numpy()
    n = W.shape[0]
    kept = np.asarray(kept)
    m = len(kept)
    pruned = np.setdiff1d(np.arange(n), kept)
    gamma, sigma = bn_scales(t, variant)
    mu, beta = t.mean.numpy(), t.beta.numpy()
    X = W[kept].T  # d x m: the kept filters as columns
    a = mu[kept] - sigma[kept] * beta[kept] / gamma[kept]
    h = sigma[kept] / gamma[kept]
    G = None if gram_per_filter else X.T @ X
    S = np.zeros((n, m))
    S[kept, np.arange(m)] = 1.0
    diag = np.arange(m)
    for p in pruned:
        g_p = gamma[p] / sigma[p]
        c_p = gamma[p] * mu[p] / sigma[p] - beta[p]
        K_p = g_p * h
        A = X.T @ X if gram_per_filter else G.copy()
        if variant == "paper":  # code-faithful: lambda1 g_p^2 ||a||^2 on the diagonal
            A[diag, diag] += lambda1 * g_p ** 2 * (a @ a) + lambda2 * K_p ** 2
        else:  # exact: rank-one lambda1 g_p^2 a a^T
            A += lambda1 * g_p ** 2 * np.outer(a, a)
            A[diag, diag] += lambda2 * K_p ** 2
        b = X.T @ W[p] + lambda1 * g_p * c_p * a
        s = scipy.linalg.solve(A, b, assume_a="pos", overwrite_a=True)
        S[p] = s if variant == "paper" else K_p * s
    return S


def run_reference(inputs, args, gram_per_filter=False):
    return [reference_unit(t, kept, args.lambda1, args.lambda2, args.variant, gram_per_filter)
            for _, t, kept in inputs]


# ------------------------------------------------------------------------------ (b), (c)


def run_lbyl(inputs, args, solver):
    return [lbyl_delivery(t, kept, lambda1=args.lambda1, lambda2=args.lambda2, variant=args.variant,
                          solver=solver, name=name).numpy()
            for name, t, kept in inputs]


def run_public(model, args):
    return lbyl_pl.prune_and_restore(model, "lbyl", CRITERION, args.ratio, lambda1=args.lambda1,
                                     lambda2=args.lambda2, variant=args.variant)


# ------------------------------------------------------------------------------- measuring


def time_rounds(methods, repeats, clock=time.perf_counter):
    """Time every method ``repeats`` times, round-robin (one call of each per round, so a change in
    machine load hits all methods alike), after one untimed warm-up call of each.

    ``methods`` maps key -> callable; ``clock`` reads the wall time (``bench_common.Clock("cuda")`` waits
    for queued GPU work first). Returns key -> (wall seconds list, CPU seconds list, last result).
    """
    results = {key: fn() for key, fn in methods.items()}  # warm-up
    wall = {key: [] for key in methods}
    cpu = {key: [] for key in methods}
    for _ in range(repeats):
        for key, fn in methods.items():
            start_wall, start_cpu = clock(), time.process_time()
            results[key] = fn()
            cpu[key].append(time.process_time() - start_cpu)
            wall[key].append(clock() - start_wall)
    return {key: (wall[key], cpu[key], results[key]) for key in methods}


def compare(reference, candidate, inputs):
    """Max |Δ| over all coefficients and max per-unit normwise relative |Δ| / max|S_ref|."""
    worst_abs, worst_rel, worst_unit, per_unit = 0.0, 0.0, None, {}
    for (name, _, _), ref, cand in zip(inputs, reference, candidate):
        diff = float(np.abs(cand - ref).max())
        rel = diff / max(float(np.abs(ref).max()), np.finfo(float).tiny)
        per_unit[name] = {"max_abs": diff, "max_rel": rel}
        worst_abs = max(worst_abs, diff)
        if rel >= worst_rel:
            worst_rel, worst_unit = rel, name
    return {"max_abs": worst_abs, "max_rel": worst_rel, "worst_unit": worst_unit, "per_unit": per_unit}


def main(args) -> int:
    torch.set_num_threads(args.threads)
    model, weights_text, weights_info = load_model(args)
    inputs = prepare_inputs(model, args.ratio)
    n_systems = sum(t.weight.shape[0] - len(kept) for _, t, kept in inputs)
    sizes = sorted({len(kept) for _, _, kept in inputs})

    print("LBYL restoration speed: VGG16-BN, 13 units, "
          f"ratio {args.ratio}, {CRITERION}, lambda1={args.lambda1:g}, lambda2={args.lambda2:g}, "
          f"variant {args.variant}")
    print(f"weights: {weights_text}")
    print(f"threads: {args.threads} (torch.get_num_threads()={torch.get_num_threads()}, "
          f"OMP/OPENBLAS/MKL_NUM_THREADS={args.threads}); cpu: {cpu_name()}, "
          f"{os.cpu_count()} logical cores")
    print(f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}; "
          f"{n_systems} pruned filters (systems), m in {sizes}; median of {args.repeats} "
          "round-robin runs after 1 warm-up")
    print()

    labels = {"baseline": "(a)  per-filter scipy solve (baseline)",
              "shared": "(b)  lbyl_delivery solver='shared'",
              "batched": "(b') lbyl_delivery solver='batched'",
              "end_to_end": "(c)  prune_and_restore end to end"}
    methods = {"baseline": lambda: run_reference(inputs, args),
               "shared": lambda: run_lbyl(inputs, args, "shared"),
               "batched": lambda: run_lbyl(inputs, args, "batched"),
               "end_to_end": lambda: run_public(model, args)}
    if args.no_batched:
        del methods["batched"]
    with torch.no_grad():
        timed = time_rounds(methods, args.repeats)
        if args.gram_per_filter:  # slow: one call, after the others (the baseline warmed scipy up)
            labels["baseline_gram_per_filter"] = "(a') (a), XᵀX per filter as Ridge.py, 1 run"
            timed["baseline_gram_per_filter"] = time_rounds(
                {"x": lambda: run_reference(inputs, args, gram_per_filter=True)}, 1)["x"]
    order = ("baseline", "baseline_gram_per_filter", "shared", "batched", "end_to_end")
    rows = {key: {"label": labels[key], "samples": timed[key][0], "cpu_samples": timed[key][1],
                  "coefs": timed[key][2]} for key in order if key in timed}

    base = statistics.median(rows["baseline"]["samples"])
    header = f"{'method':<46}{'median s':>10}{'min s':>9}{'max s':>9}{'cpu s':>9}{'vs (a)':>9}" \
             f"{'max |Δ|':>11}{'max rel Δ':>11}"
    print(header)
    print("-" * len(header))
    for key, row in rows.items():
        row["median_s"] = statistics.median(row["samples"])
        row["median_cpu_s"] = statistics.median(row["cpu_samples"])
        row["speedup_vs_baseline"] = base / row["median_s"]
        if key in ("shared", "batched"):
            row["agreement"] = compare(rows["baseline"]["coefs"], row["coefs"], inputs)
            diff = f"{row['agreement']['max_abs']:>11.2e}{row['agreement']['max_rel']:>11.2e}"
        else:
            diff = f"{'-':>11}{'-':>11}"
        print(f"{row['label']:<46}{row['median_s']:>10.4f}{min(row['samples']):>9.4f}"
              f"{max(row['samples']):>9.4f}{row['median_cpu_s']:>9.4f}"
              f"{row['speedup_vs_baseline']:>8.1f}x{diff}")
    print("(wall-clock seconds; cpu s: median process CPU time, summed over threads; vs (a): median (a) / "
          "median; max rel Δ: max over units of max|Δ| / max|S_(a)| of the unit's delivery matrix)")

    shared = rows["shared"]
    agree = shared["agreement"]
    agreement_ok = agree["max_rel"] <= AGREEMENT_RTOL
    print(f"coefficients (b) vs (a): max |Δ| {agree['max_abs']:.2e}, max rel {agree['max_rel']:.2e} "
          f"(worst unit {agree['worst_unit']}) -> "
          f"{'agree' if agreement_ok else 'DO NOT agree'} to {AGREEMENT_RTOL:g} relative")
    speedup_ok = shared["speedup_vs_baseline"] >= GOAL_SPEEDUP
    seconds_ok = shared["median_s"] < GOAL_SECONDS
    goal_met = speedup_ok and seconds_ok
    print(f"goal: >= {GOAL_SPEEDUP:g}x and < {GOAL_SECONDS:g} s  ->  "
          f"{'MET' if goal_met else 'NOT MET'} (shared: {shared['speedup_vs_baseline']:.1f}x "
          f"[{'ok' if speedup_ok else 'short'}], {shared['median_s']:.3f} s "
          f"[{'ok' if seconds_ok else 'too slow'}]; {args.threads} thread(s))")
    if "baseline_gram_per_filter" in rows:
        literal = rows["baseline_gram_per_filter"]
        print(f"against the literal reference loop (a'): shared is "
              f"{literal['median_s'] / shared['median_s']:.1f}x faster (wall), "
              f"{literal['median_cpu_s'] / shared['median_cpu_s']:.1f}x (CPU time)")

    if args.json:
        payload = {
            "benchmark": "lbyl_restore_speed",
            "config": {"arch": "vgg16_bn", "ratio": args.ratio, "criterion": CRITERION,
                       "lambda1": args.lambda1, "lambda2": args.lambda2, "variant": args.variant,
                       "repeats": args.repeats, "warmup": 1, "threads": args.threads,
                       "torch_num_threads": torch.get_num_threads()},
            "weights": weights_info,
            "environment": {"cpu": cpu_name(), "logical_cores": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "numpy": np.__version__, "scipy": scipy.__version__,
                            "lbyl_pl": lbyl_pl.__version__},
            "systems": n_systems, "kept_sizes": sizes,
            "methods": {key: {k: v for k, v in row.items() if k != "coefs"} for key, row in rows.items()},
            "goal": {"min_speedup": GOAL_SPEEDUP, "max_seconds": GOAL_SECONDS,
                     "speedup_met": speedup_ok, "seconds_met": seconds_ok, "met": goal_met,
                     "agreement_rtol": AGREEMENT_RTOL, "agreement_met": agreement_ok},
        }
        write_json(args.json, payload)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
