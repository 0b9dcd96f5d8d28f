"""How many CPU threads torch uses in workflow steps.

Snakemake exports OMP_NUM_THREADS = the job's threads, which `--cores 1` caps at 1. That flag
bounds how many jobs run at once; the toy DAG's heavy steps run one after another anyway, and on
a 2-core machine one thread makes training ~1.6x slower. So pcr's steps use every CPU the process
may run on (its affinity mask, which cluster schedulers such as SLURM set to the job's
allocation), unless PCR_TORCH_THREADS says otherwise.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["available_cpus", "resolve_device", "start_step", "torch_dtype", "use_available_cpus"]


def available_cpus() -> int:
    requested = os.environ.get("PCR_TORCH_THREADS")
    if requested:
        if not requested.isdigit() or int(requested) < 1:
            raise ValueError(f"PCR_TORCH_THREADS must be a positive whole number, got {requested!r}")
        return int(requested)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def use_available_cpus() -> int:
    """Set torch's intra-op threads to `available_cpus()` and return that number."""
    threads = available_cpus()
    torch.set_num_threads(threads)
    return threads


def start_step(log_path: str) -> int:
    """The first line of a workflow script: its errors and progress bars go to the rule's log, and
    torch gets every available CPU. Returns the thread count."""
    sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the script
    return use_available_cpus()


def resolve_device(device: str = "auto") -> str:
    """"auto" is the first CUDA device when there is one, else the CPU; anything else is kept."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_dtype(name: str) -> torch.dtype:
    """A dtype from its config name (float32, float16, bfloat16), with an error naming the choices."""
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]
