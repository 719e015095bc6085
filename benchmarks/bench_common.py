"""Helpers shared by the benchmark scripts (no torch import here: thread variables must be set first)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def make_parser(doc: str, *, device: bool = True, checkpoint_help: str, seed_help: str,
                threads_help: str = "CPU threads for torch and numpy/scipy BLAS (OMP/MKL/OPENBLAS_NUM_THREADS "
                                    "set before they are imported)") -> argparse.ArgumentParser:
    """The options every benchmark takes (--device, --threads, --checkpoint, --seed, --json); each script
    adds its own."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog="See the module docstring (top of this file) for what is timed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if device:
        parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    parser.add_argument("--threads", type=int, default=2, help=threads_help)
    parser.add_argument("--checkpoint", default=None, help=checkpoint_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    return parser


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
