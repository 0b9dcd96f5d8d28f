"""Tell the UNet which UNet call of a sampling run it is on.

pcr keeps one set of activation-quantization parameters per UNet call of a sampling run, so every
call must know its index. diffusers pipelines do not pass one (they pass the timestep value, which
differs between schedulers and step counts), and we do not want to rewrite their denoising loops.
So a forward pre-hook on the UNet counts the calls instead.

Contract: **one UNet call per scheduler timestep.** The pipeline calls ``scheduler.set_timesteps``
at the start of every run (which makes a new ``scheduler.timesteps`` tensor) and then calls the
UNet once per entry of ``scheduler.timesteps``, with classifier-free guidance batched into that one
call, as the Stable Diffusion and SDXL pipelines of diffusers do. A pipeline that calls the UNet
twice per timestep (unbatched guidance) breaks the contract and is stopped with a clear error once
the count runs past the timesteps. Code that calls the UNet directly, outside a pipeline
(calibration), says which call it is on with ``tracker.at(call)``.

Steps and calls differ: ``num_inference_steps`` N is what the user asks for, the scheduler turns it
into ``len(timesteps)`` calls (PNDM N + 1, Heun 2N - 1, most others N). ``step`` below is the call
index (the name is kept from the paper's "per-step" parameters), and an img2img run with
strength < 1 starts at call 0 although it skips the first timesteps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["StepTracker", "get_step_tracker"]

_ATTRIBUTE = "_pcr_step_tracker"


class StepTracker:
    """Counts the UNet calls of each sampling run of one pipeline.

    Attributes, read by quantized layers during a UNet forward:
      step: index of the current UNet call within the current run (0-based); None before the
        first call.
      num_calls: ``len(pipe.scheduler.timesteps)`` of the current run (or the value given to
        ``at``); None before the first call.
      num_steps: the run's ``num_inference_steps`` (the scheduler's, or the value given to
        ``at``); None when unknown.

    A new run is recognised by ``pipe.scheduler.timesteps`` being another tensor object than at
    the previous call. The scheduler is read from the pipeline at every call, so swapping
    ``pipe.scheduler`` for another one is followed.
    """

    def __init__(self, pipe, unet: torch.nn.Module):
        self.pipe = pipe
        self.unet = unet
        self.step: int | None = None
        self.num_calls: int | None = None
        self.num_steps: int | None = None
        self._next = 0  # index the next counted call gets
        self._timesteps: torch.Tensor | None = None  # held, so its id cannot be reused
        self._explicit: tuple[int, int | None, int | None] | None = None  # set by `at`
        self._handle = unet.register_forward_pre_hook(self._pre_forward)

    @classmethod
    def attach(cls, pipe) -> StepTracker:
        """Attach a tracker to ``pipe.unet``, or return the one already there.

        If the UNet's tracker was attached through another pipeline object (components shared
        between pipelines), it now follows ``pipe``'s scheduler.
        """
        unet = getattr(pipe, "unet", None)
        if not isinstance(unet, torch.nn.Module):
            raise TypeError(
                f"{type(pipe).__name__} has no `unet` module; StepTracker supports UNet-based "
                "diffusers pipelines (Stable Diffusion, SDXL, the toy pipeline)."
            )
        tracker = get_step_tracker(unet)
        if tracker is None:
            tracker = cls(pipe, unet)
            setattr(unet, _ATTRIBUTE, tracker)
        tracker.pipe = pipe
        return tracker

    def detach(self) -> None:
        """Remove the hook and forget the tracker; the UNet runs as before attaching."""
        self._handle.remove()
        if getattr(self.unet, _ATTRIBUTE, None) is self:
            delattr(self.unet, _ATTRIBUTE)

    @contextmanager
    def at(self, step: int, num_calls: int | None = None, num_steps: int | None = None) -> Iterator[StepTracker]:
        """Within the block, every UNet call is call ``step`` of ``num_calls`` (for direct UNet calls),
        in a run of ``num_steps`` inference steps.

        The call counter of pipeline runs is left untouched; blocks may nest.
        """
        if step < 0 or (num_calls is not None and step >= num_calls):
            raise ValueError(f"step must be in [0, num_calls), got step={step}, num_calls={num_calls}")
        previous = self._explicit
        self._explicit = (step, num_calls, num_steps)
        try:
            yield self
        finally:
            self._explicit = previous

    def _pre_forward(self, module, args) -> None:
        if self._explicit is not None:
            self.step, self.num_calls, self.num_steps = self._explicit
            return
        scheduler = self.pipe.scheduler
        timesteps = getattr(scheduler, "timesteps", None)
        # Schedulers hold placeholder timesteps until set_timesteps, with num_inference_steps None
        # (except DDPM given custom timesteps).
        unset = getattr(scheduler, "num_inference_steps", 0) is None
        if timesteps is None or (unset and not getattr(scheduler, "custom_timesteps", False)):
            raise RuntimeError(
                "The UNet was called before scheduler.set_timesteps, so its sampling step is "
                "unknown. Outside a pipeline run, wrap the call in `with tracker.at(step):`."
            )
        if timesteps is not self._timesteps:  # set_timesteps ran: a new sampling run
            self._timesteps = timesteps
            self._next = 0
        num_calls = len(timesteps)
        if self._next >= num_calls:
            raise RuntimeError(
                f"UNet call {self._next + 1} in a sampling run of {num_calls} timesteps. pcr needs "
                "one UNet call per step, with classifier-free guidance batched into that call; a "
                "pipeline that calls the UNet twice per step is not supported. To call the UNet "
                "directly, outside a pipeline run, wrap the call in `with tracker.at(step):`."
            )
        self.step = self._next
        self.num_calls = num_calls
        self.num_steps = getattr(scheduler, "num_inference_steps", None)
        self._next += 1


def get_step_tracker(unet: torch.nn.Module) -> StepTracker | None:
    """The tracker attached to ``unet``, or None."""
    return getattr(unet, _ATTRIBUTE, None)
