"""Samplers by short name, and swapping one into a pipeline for the length of one job.

The workflow's sampling regimes name a scheduler ("ddim", "euler", ...; None: the checkpoint's own).
It is built from the pipeline's own scheduler config, ``Cls.from_config(pipe.scheduler.config)``, so
the training schedule (betas, prediction type, timestep spacing) carries over and only the sampler
changes. Mismatches are caught downstream, not here: pcr's StepTracker reads ``pipe.scheduler`` at
every UNet call, saved parameters record the scheduler class and its timesteps, and ``pcr.quantize``
refuses per-step parameters of other timesteps.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SCHEDULERS", "make_scheduler", "use_scheduler"]

# short name -> (diffusers class, config overrides). PNDM skips its Runge-Kutta warm-up, as SD 1.x's
# checkpoints configure it (one UNet call per step, plus one); dpm is DPM-Solver++ (2M).
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(name: str, config):
    """Scheduler ``name`` (a key of SCHEDULERS) with the training schedule of ``config`` (a scheduler's)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)} (or None: the checkpoint's own)")
    class_name, overrides = SCHEDULERS[name]
    cls = getattr(importlib.import_module("diffusers"), class_name)
    return cls.from_config(config, **overrides)


@contextmanager
def use_scheduler(pipe, name: str | None) -> Iterator[object]:
    """Within the block ``pipe`` samples with scheduler ``name`` (None: leaves its own); the pipeline's
    scheduler is given back after, so a pipeline lent to the next job comes back as it was loaded."""
    if name is None:
        yield pipe.scheduler
        return
    own = pipe.scheduler
    pipe.scheduler = make_scheduler(name, own.config)
    try:
        yield pipe.scheduler
    finally:
        pipe.scheduler = own
