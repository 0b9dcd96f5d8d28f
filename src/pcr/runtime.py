"""How workflow jobs run: CPU threads, devices and dtypes by config name, and one log per job.

Snakemake exports OMP_NUM_THREADS = the job's threads, which `--cores 1` caps at 1. That flag
bounds how many jobs run at once; the toy DAG's heavy steps run one after another anyway, and on
a 2-core machine one thread makes training ~1.6x slower. So pcr's jobs use every CPU the process
may run on (its affinity mask, which cluster schedulers such as SLURM set to the job's
allocation), unless PCR_TORCH_THREADS says otherwise.

pcr's jobs run in threads of the Snakemake process (pcr.jobs), so "send this job's stderr to its
log" cannot swap ``sys.stderr`` for everyone: ``job_log`` installs a stderr that writes to the
calling thread's log, and to the real stderr for every other thread. torch is imported lazily, so
the workflow can plan its DAG without it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading

__all__ = ["MODEL_BUILD_LOCK", "available_cpus", "job_log", "resolve_device", "torch_dtype", "use_available_cpus"]

# accelerate's init_empty_weights (diffusers' loader uses it when accelerate is installed) patches
# torch.nn.Module for every thread while a model loads: a module built in another thread meanwhile
# got its parameters on the meta device ("Cannot copy out of meta tensor"). Workflow jobs run in
# threads (pcr.jobs), so pcr loads and builds models under this lock.
MODEL_BUILD_LOCK = threading.RLock()


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
    import torch

    threads = available_cpus()
    torch.set_num_threads(threads)
    return threads


class _ThreadStderr(io.TextIOBase):
    """sys.stderr that writes to the current thread's job log, or to the original stream."""

    def __init__(self, default):
        super().__init__()
        self.default = default
        self.local = threading.local()

    def _target(self):
        return getattr(self.local, "stream", None) or self.default

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self.default.fileno()

    @property
    def encoding(self):
        return getattr(self.default, "encoding", "utf-8")


_install_lock = threading.Lock()


@contextlib.contextmanager
def job_log(path: str | os.PathLike):
    """Within the block, this thread's stderr (progress bars, warnings, tracebacks) goes to ``path``."""
    with _install_lock:
        if not isinstance(sys.stderr, _ThreadStderr):
            sys.stderr = _ThreadStderr(sys.stderr)
    proxy = sys.stderr
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    previous = getattr(proxy.local, "stream", None)
    with open(path, "w", buffering=1, encoding="utf-8") as log:
        proxy.local.stream = log
        try:
            yield log
        finally:
            proxy.local.stream = previous


def resolve_device(device: str = "auto") -> str:
    """"auto" is the first CUDA device when there is one, else the CPU; anything else is kept."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_dtype(name: str):
    """A dtype from its config name (float32, float16, bfloat16), with an error naming the choices."""
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]
