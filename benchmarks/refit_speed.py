"""Speed of the refit on distilled inputs: VGG16-BN and ResNet-56 at r = 0.5 (LBYL start), distillation excluded.

    python benchmarks/refit_speed.py --threads 2

For each network: the distillation (the refit's default 128 + 32 inputs) timed once, then the refit of the restored
network (``lbyl_pl.refit.refit_consumers``, in place on a copy) timed ``--repeats`` times (the median is judged),
with the peak resident memory the refit added (sampled every 2 ms) and the goal: VGG16-BN under 5 s, ResNet-56
under 3 s on 2 cores. The checkpoints come from ``$LBYL_CHECKPOINTS``; random weights with ``--random`` (same
shapes, randomised BN statistics), which times the same work.
"""
from __future__ import annotations

import copy
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_name, make_parser, randomize_bn, set_thread_env, write_json  # noqa: E402

GOALS = {"vgg16_bn": 5.0, "resnet56": 3.0}
FILES = {"vgg16_bn": "vgg16_cifar10.pth", "resnet56": "resnet56_cifar10_nm.pth.tar"}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """Peak resident memory above the level at entry, sampled by a thread."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def added_mib(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def main():
    parser = make_parser(__doc__, device=False, checkpoint_help="unused (the shared checkpoints are found by name)",
                         seed_help="distillation seed")
    parser.add_argument("--nets", default="vgg16_bn,resnet56")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="random weights instead of the shared checkpoints")
    args = parser.parse_args()
    set_thread_env(args.threads)
    import torch

    from lbyl_pl import build_model, find_checkpoint, load_weights, prune_and_restore
    from lbyl_pl.refit import check_refit_options, distilled_inputs, refit_consumers
    torch.set_num_threads(args.threads)
    options = check_refit_options({})
    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}; refit options {options}")
    results = {}
    for name in args.nets.split(","):
        net = build_model(name)
        if args.random:
            torch.manual_seed(args.seed)
            randomize_bn(net)
        else:
            net = load_weights(net, find_checkpoint(FILES[name]))
        net.eval()
        restored, _ = prune_and_restore(net, "lbyl", "l2-norm", args.ratio)
        t0 = time.perf_counter()
        fit, held = distilled_inputs(net, options, args.seed, None, progress=False)
        distill = time.perf_counter() - t0
        times, peaks = [], []
        for _ in range(args.repeats):
            work = copy.deepcopy(restored)
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                r = refit_consumers(net, work, fit, held, restored.lbyl_spec["units"], options)
                times.append(time.perf_counter() - t0)
            peaks.append(mem.added_mib)
        median = statistics.median(times)
        goal = GOALS.get(name)
        verdict = "" if goal is None else f"  goal < {goal:g} s: {'MET' if median < goal else 'NOT MET'}"
        print(f"{name} r={args.ratio}: distillation ({len(fit)} + {len(held)} inputs, {options['iterations']} "
              f"iterations) {distill:.1f} s; refit of {len(r.layers)} layers median {median:.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in times)}), peak memory added {max(peaks):.0f} MiB{verdict}")
        results[name] = {"distill_s": distill, "refit_s": times, "median_s": median, "peak_mib": max(peaks),
                         "layers": len(r.layers), "goal_s": goal}
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "threads": args.threads, "results": results})


if __name__ == "__main__":
    main()
