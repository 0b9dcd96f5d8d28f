"""The denoising loop taken apart, so calibration can move many prompt batches one UNet call at a time.

Progressive calibration needs every prompt's activations at call i before call i's parameters are
fixed and call i is taken, so it cannot call ``pipe(...)`` batch after batch. A DenoisingBatch
holds what the pipeline's loop holds between calls (latents, conditioning, its own scheduler and
generators), and ``model_output``/``advance`` are the loop body, written as the diffusers
pipelines write it: classifier-free guidance batched into one UNet call per scheduler timestep.
What differs per family (toy, SD, SDXL) is in ``pcr.pipelines.adapters``. This is the only
denoising loop in pcr: the toy pipeline's ``__call__`` runs it too.

**Steps are what the user asks for; calls are what the scheduler makes.** ``num_steps`` is the
``num_inference_steps`` a user passes to the pipeline; the scheduler turns it into
``len(scheduler.timesteps)`` UNet calls (DDIM, Euler, LMS, DPM-Solver++, UniPC: N; PNDM: N + 1;
Heun: 2N - 1). Per-step quantization parameters are kept per call.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field

import torch

from pcr.pipelines.adapters import adapter_for
from pcr.pipelines.steps import get_step_tracker

__all__ = ["DenoisingBatch", "count_unet_calls", "decode", "final_images", "prepare_batch", "prompt_generators",
           "run_loop", "sample_latents", "scheduler_timesteps", "start_batch"]


def scheduler_timesteps(scheduler, num_steps: int) -> list[int]:
    """The timestep of each UNet call ``scheduler`` makes for ``num_steps`` inference steps (it is
    left untouched)."""
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(num_steps, device="cpu")
    return [int(t) for t in probe.timesteps]


def count_unet_calls(scheduler, num_steps: int) -> int:
    """How many UNet calls ``scheduler`` makes for ``num_steps`` inference steps."""
    return len(scheduler_timesteps(scheduler, num_steps))


@dataclass
class DenoisingBatch:
    """One batch of prompts between two UNet calls."""

    latents: torch.Tensor  # (B, C, h, w), scaled by the scheduler's init_noise_sigma
    unet_kwargs: dict  # encoder_hidden_states etc., unconditional half first when guided
    scheduler: object  # this batch's own copy, with timesteps set
    num_steps: int  # num_inference_steps, as the user asked
    step_kwargs: dict = field(default_factory=dict)  # generator/eta for schedulers that take them
    guidance_scale: float = 1.0
    size: tuple[int, int] = (0, 0)  # (height, width) of the images, in pixels

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def num_calls(self) -> int:
        return len(self.scheduler.timesteps)

    def unet_inputs(self, call: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(sample, timestep, kwargs) of UNet call ``call``; unconditional rows first when guided."""
        t = self.scheduler.timesteps[call]
        model_in = torch.cat([self.latents] * 2) if self.guided else self.latents
        return self.scheduler.scale_model_input(model_in, t), t, self.unet_kwargs

    def model_output(self, unet: torch.nn.Module, call: int) -> torch.Tensor:
        """The guided UNet prediction at ``call`` (one UNet call, tracked as that call)."""
        model_in, t, kwargs = self.unet_inputs(call)
        tracker = get_step_tracker(unet)
        with (tracker.at(call, self.num_calls, self.num_steps) if tracker is not None
              else contextlib.nullcontext()):
            pred = unet(model_in, t, **kwargs).sample
        if self.guided:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        return pred

    def advance(self, call: int, pred: torch.Tensor) -> None:
        """Take call ``call``'s scheduler step with ``pred``: latents become those of call + 1."""
        t = self.scheduler.timesteps[call]
        self.latents = self.scheduler.step(pred, t, self.latents, **self.step_kwargs).prev_sample


def prompt_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per prompt: an image depends on its own seed only (not on the batching), and
    the same seed gives the same initial noise on any device."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def start_batch(pipe, prompts: list[str], generator, num_steps: int, guidance_scale: float,
                height: int | None = None, width: int | None = None, latents: torch.Tensor | None = None,
                scheduler=None) -> DenoisingBatch:
    """Encode ``prompts`` and draw x_T as ``pipe(prompts, generator=generator, ...)`` would.

    ``scheduler``: the scheduler to step (a pipeline's own run passes ``pipe.scheduler``); by
    default a copy, so batches keep their own scheduler state."""
    from diffusers.utils.torch_utils import randn_tensor

    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
        raise NotImplementedError("UNets with a guidance embedding (LCM) are not supported yet.")
    adapter = adapter_for(pipe)
    height, width = adapter.resolve_size(height, width)
    device = pipe.unet.device
    scheduler = copy.deepcopy(pipe.scheduler) if scheduler is None else scheduler
    scheduler.set_timesteps(num_steps, device=device)
    unet_kwargs = adapter.unet_kwargs(prompts, guidance_scale > 1.0, height, width)
    dtype = unet_kwargs["encoder_hidden_states"].dtype
    if latents is None:
        shape = adapter.latent_shape(len(prompts), height, width)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    latents = latents.to(device, dtype) * scheduler.init_noise_sigma  # after set_timesteps: Euler's depends on it
    step_parameters = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if "generator" in step_parameters else {}
    if "eta" in step_parameters:
        step_kwargs["eta"] = 0.0
    return DenoisingBatch(latents, unet_kwargs, scheduler, num_steps, step_kwargs, guidance_scale, (height, width))


def prepare_batch(pipe, prompts: list[str], seeds: list[int], num_steps: int, guidance_scale: float,
                  height: int | None = None, width: int | None = None) -> DenoisingBatch:
    """A batch whose prompt i starts from seed ``seeds[i]``."""
    return start_batch(pipe, prompts, prompt_generators(seeds), num_steps, guidance_scale, height, width)


@torch.no_grad()
def run_loop(batch: DenoisingBatch, unet: torch.nn.Module, progress=None) -> torch.Tensor:
    """Every remaining UNet call of ``batch``; the final latents. ``progress`` wraps the call range
    (a pipeline's own progress bar)."""
    calls = range(batch.num_calls)
    for call in (progress(calls) if progress is not None else calls):
        batch.advance(call, batch.model_output(unet, call))
    return batch.latents


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] from final latents, float32."""
    with torch.no_grad():
        return adapter_for(pipe).decode(latents)


def sample_latents(pipe, prompts: list[str], seeds: list[int], num_steps: int, guidance_scale: float,
                   unet: torch.nn.Module | None = None, height: int | None = None,
                   width: int | None = None) -> torch.Tensor:
    """Run the whole loop for one batch; the final latents (what ``pipe(..., output_type="latent")`` gives)."""
    batch = prepare_batch(pipe, prompts, seeds, num_steps, guidance_scale, height, width)
    return run_loop(batch, pipe.unet if unet is None else unet)


def final_images(pipe, prompts: list[str], seeds: list[int], num_steps: int, guidance_scale: float,
                 batch_size: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """(N, 3, H, W) final images in [0, 1], batch by batch, with the UNet as it is now switched."""
    out = []
    for i in range(0, len(prompts), batch_size):
        latents = sample_latents(pipe, prompts[i:i + batch_size], seeds[i:i + batch_size], num_steps, guidance_scale,
                                 height=height, width=width)
        out.append(decode(pipe, latents))
    return torch.cat(out)
