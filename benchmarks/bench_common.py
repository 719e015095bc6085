"""The preamble every benchmark script shares (no torch import here: thread variables must be set first).

A script parses its command line and sets the thread variables before anything imports torch, numpy or scipy::

    from bench_common import make_parser, script_args, ...  # beside this script

    def parse_args(argv=None):
        parser = make_parser(__doc__, checkpoint_help=..., seed_help=...)  # --device --threads --checkpoint ...
        ...

    ARGS = script_args(__name__, parse_args)  # None when the file is imported (e.g. by gpu_check.py)

    import torch  # noqa: E402

The helpers here import torch and ``lbyl_pl`` inside the functions that need them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root
THREADS_HELP = ("CPU threads for torch and numpy/scipy BLAS (OMP/MKL/OPENBLAS_NUM_THREADS set before they are "
                "imported)")


def repo_on_path() -> None:
    """Make ``lbyl_pl`` importable from the checkout this script belongs to, installed or not."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def add_common_options(parser: argparse.ArgumentParser, *, checkpoint_help: str, seed_help: str | None = None,
                       devices: tuple[str, ...] | None = ("cpu", "cuda"), device_default: str = "cpu",
                       device_help: str = "where to run", threads_default: int | None = 2,
                       threads_help: str = THREADS_HELP, checkpoint_default: str | None = None):
    """The options every benchmark takes: --device (unless ``devices`` is None), --threads, --checkpoint,
    --seed and --json."""
    if devices:
        parser.add_argument("--device", choices=devices, default=device_default, help=device_help)
    parser.add_argument("--threads", type=int, default=threads_default, help=threads_help)
    parser.add_argument("--checkpoint", default=checkpoint_default, help=checkpoint_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    return parser


def make_parser(doc: str, *, device: bool = True, checkpoint_help: str, seed_help: str,
                threads_help: str = THREADS_HELP) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, with the common options; each script adds its
    own."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog="See the module docstring (top of this file) for what is timed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_common_options(parser, checkpoint_help=checkpoint_help, seed_help=seed_help,
                              devices=("cpu", "cuda") if device else None, threads_help=threads_help)


def script_args(name: str, parse_args):
    """``parse_args()`` when the calling script runs as ``__main__``, with the thread variables set from its
    ``--threads``; None when the script is imported (its functions used by another benchmark)."""
    if name != "__main__":
        return None
    args = parse_args()
    set_thread_env(args.threads)
    return args


class Clock:
    """``time.perf_counter`` that first waits for queued CUDA work, so GPU timings are not just launch times."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            import torch  # imported here: the scripts set the thread variables before torch loads

            torch.cuda.synchronize()
        return time.perf_counter()


def set_thread_env(threads: int) -> None:
    """Thread pools (OpenMP/MKL in torch, OpenBLAS in numpy/scipy) read these at import time; Lightning
    also leaves torch's thread count alone when OMP_NUM_THREADS is set."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: str) -> str:
    """The GPU's name on ``cuda``, else the CPU's."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return cpu_name()


def write_json(path, payload) -> None:
    """Write ``payload`` as JSON atomically (temporary file, then rename)."""
    from lbyl_pl.atomic import write_text

    write_text(path, json.dumps(payload, indent=2) + "\n")


def randomize_bn(model) -> None:
    """Give every BatchNorm non-trivial statistics (seeded by the caller), so restoration solves on random
    weights are well posed."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)


def load_or_random(arch: str, checkpoint=None, seed: int = 0, *, num_classes: int | None = None,
                   missing: str = ""):
    """``lbyl_pl.build_model(arch, num_classes)`` in eval mode on the CPU, with the weights of ``checkpoint``
    (a path, or a name in ``$LBYL_CHECKPOINTS``; sha256-checked when it is a known shared file) or, when it is
    None, seeded random weights with randomised BatchNorm statistics.

    Returns the model, a sentence saying which weights it has (``missing`` is appended to the random one's
    parenthesis) and the same as a dict for the JSON output.
    """
    import torch

    import lbyl_pl
    from lbyl_pl.checkpoints import KNOWN_CHECKPOINTS

    if checkpoint is not None:
        found = lbyl_pl.find_checkpoint(str(checkpoint))  # sha256-checked when it is a known file
        model = lbyl_pl.load_weights(lbyl_pl.build_model(arch, num_classes), found)
        verified = found.name in KNOWN_CHECKPOINTS
        return model.eval(), f"real weights: {found}" + (" (sha256 verified)" if verified else ""), \
            {"kind": "checkpoint", "path": str(found), "sha256_verified": verified}
    torch.manual_seed(seed)
    model = lbyl_pl.build_model(arch, num_classes)  # conv/linear weights from the seeded default init
    randomize_bn(model)
    return model.eval(), f"RANDOM weights (seed {seed}, randomised BN running stats{missing})", \
        {"kind": "random", "seed": seed}


def latency_ms(model, input_shape, batch: int, repeats: int = 5) -> float:
    """Median wall time (ms) of one forward pass of ``batch`` inputs of ``input_shape`` (without the batch
    dimension), in eval mode without autograd, after one warm-up pass."""
    import statistics

    import torch

    param = next(model.parameters())
    x = torch.randn(batch, *input_shape, dtype=param.dtype, device=param.device)
    model.eval()
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)
