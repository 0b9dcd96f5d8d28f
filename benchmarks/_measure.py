"""How the benchmark scripts measure: wall time, the resident set's peak, and one fresh process per
memory measurement.

Conventions (stated once, used by calibration_cost.py and sd_scale.py):

- Time is wall-clock seconds of one call (``timed``), in the process that already holds the model.
- Memory is the growth of the resident set over its size just before the measured call
  (``PeakRSS``, sampled every 2 ms), in a fresh process per measurement, so no earlier call's
  freed-but-kept pages count. Those processes run with glibc's mmap threshold fixed
  (``MALLOC_ENV``): freed tensors go back to the OS at once, so the resident set follows live
  memory instead of glibc's growing heap, whose dynamic threshold made runs differ by 40 MB.
- ``run_fresh`` starts such a process and can end it when its resident set passes a cap (or the
  machine runs short of memory): a measurement that does not fit is reported, not swapped.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

import psutil

__all__ = ["MALLOC_ENV", "FreshRun", "PeakRSS", "run_fresh", "timed"]

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


class PeakRSS:
    """Samples the resident set every 2 ms in a thread; .growth_mb is the peak over the start."""

    def __enter__(self):
        self.process, self.stop = psutil.Process(), False
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.growth_mb = (self.peak - self.start) / 2**20


@dataclass
class FreshRun:
    """What a fresh process left: its exit status, the JSON objects it printed one a line on stdout
    (in order; those printed before it was ended too), and why the caller ended it, if it did."""

    returncode: int
    records: list[dict] = field(default_factory=list)
    ended_because: str | None = None
    peak_rss_mb: float = 0.0  # as the caller saw it, every 20 ms


def run_fresh(cmd: list[str], env: dict[str, str] | None = None, cap_bytes: int | None = None,
              reserve_bytes: int = 2**30) -> FreshRun:
    """Run ``cmd`` in a fresh process with ``env`` added to this one's environment.

    Its stderr is this process's (progress bars show); its stdout is read after it ends. The process
    is killed when its resident set passes ``cap_bytes``, or when the machine's available memory
    falls under ``reserve_bytes`` (other processes share it; there is no swap to fall back on).
    """
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, env={**os.environ, **(env or {})})
        watched = psutil.Process(proc.pid)
        peak, reason = 0, None
        while proc.poll() is None:
            try:
                rss = watched.memory_info().rss
            except psutil.NoSuchProcess:
                break
            peak = max(peak, rss)
            if cap_bytes is not None and rss > cap_bytes:
                reason = f"its resident set passed the {cap_bytes / 2**30:.1f} GiB cap"
            elif psutil.virtual_memory().available < reserve_bytes:
                reason = f"the machine had under {reserve_bytes / 2**30:.1f} GiB available"
            if reason is not None:
                proc.kill()
                break
            time.sleep(0.02)
        returncode = proc.wait()
        out.seek(0)
        records = []
        for line in out:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # another library's output
            if isinstance(record, dict):
                records.append(record)
    return FreshRun(returncode, records, reason, peak / 2**20)
