"""The denoising loop taken apart, so calibration can move many prompt batches one step at a time.

Progressive calibration needs every prompt's activations at step i before step i's parameters are
fixed and step i is taken, so it cannot call ``pipe(...)`` batch after batch. A DenoisingBatch
holds what the pipeline's loop holds between steps (latents, conditioning, its own copy of the
scheduler and generators), and ``model_output``/``advance`` are the loop body, written as the
diffusers pipelines write it: classifier-free guidance batched into one UNet call per step. Only
encoding the prompts and decoding the latents differ per family (toy, SD, SDXL).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from pcr.pipelines.steps import get_step_tracker

__all__ = ["DenoisingBatch", "prepare_batch", "decode", "sample_latents", "final_images", "prompt_generators"]


@dataclass
class DenoisingBatch:
    """One batch of prompts between two sampling steps."""

    latents: torch.Tensor  # (B, C, h, w), scaled by the scheduler's init_noise_sigma
    unet_kwargs: dict  # encoder_hidden_states etc., unconditional half first when guided
    scheduler: object  # this batch's own copy, with timesteps set
    step_kwargs: dict = field(default_factory=dict)  # generator/eta for schedulers that take them
    guidance_scale: float = 1.0

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def num_steps(self) -> int:
        return len(self.scheduler.timesteps)

    def unet_inputs(self, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(sample, timestep, kwargs) of the UNet call at ``step``; unconditional rows first when guided."""
        t = self.scheduler.timesteps[step]
        model_in = torch.cat([self.latents] * 2) if self.guided else self.latents
        return self.scheduler.scale_model_input(model_in, t), t, self.unet_kwargs

    def model_output(self, unet: torch.nn.Module, step: int) -> torch.Tensor:
        """The guided UNet prediction at ``step`` (one UNet call, tracked as that step)."""
        model_in, t, kwargs = self.unet_inputs(step)
        tracker = get_step_tracker(unet)
        with tracker.at(step, self.num_steps) if tracker is not None else contextlib.nullcontext():
            pred = unet(model_in, t, **kwargs).sample
        if self.guided:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        return pred

    def advance(self, step: int, pred: torch.Tensor) -> None:
        """Take ``step`` with the prediction ``pred``: latents become those of step + 1."""
        t = self.scheduler.timesteps[step]
        self.latents = self.scheduler.step(pred, t, self.latents, **self.step_kwargs).prev_sample


def prompt_generators(seeds: list[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per prompt, so an image depends on its own seed only, not on the batching."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def prepare_batch(pipe, prompts: list[str], seeds: list[int], num_steps: int,
                  guidance_scale: float) -> DenoisingBatch:
    """Encode ``prompts`` and draw their initial noise as ``pipe(prompts, generator=...)`` would."""
    from pcr.pipelines.toy import ToyPipeline  # the toy pipeline class imports diffusers only

    device = pipe.unet.device
    generators = prompt_generators(seeds, "cpu" if device.type == "mps" else device)
    guided = guidance_scale > 1.0
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(num_steps, device=device)
    unet_kwargs: dict = {}
    if isinstance(pipe, ToyPipeline):
        cond = pipe.encode_prompt(prompts)
        if guided:
            cond = torch.cat([pipe.encode_prompt([""] * len(prompts)), cond])
        latents = _noise(pipe, len(prompts), pipe.unet.config.sample_size, cond.dtype, generators, scheduler)
        unet_kwargs["encoder_hidden_states"] = cond
    elif isinstance(pipe, StableDiffusionXLPipeline):
        cond, neg, pooled, neg_pooled = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                           do_classifier_free_guidance=guided)
        side = pipe.default_sample_size * pipe.vae_scale_factor
        projection_dim = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                          else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids((side, side), (0, 0), (side, side), dtype=cond.dtype,
                                          text_encoder_projection_dim=projection_dim)
        if guided:
            cond, pooled, time_ids = torch.cat([neg, cond]), torch.cat([neg_pooled, pooled]), torch.cat([time_ids] * 2)
        latents = _noise(pipe, len(prompts), side // pipe.vae_scale_factor, cond.dtype, generators, scheduler)
        unet_kwargs["encoder_hidden_states"] = cond.to(device)
        unet_kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(device),
                                            "time_ids": time_ids.to(device).repeat(len(prompts), 1)}
    elif isinstance(pipe, StableDiffusionPipeline):
        cond, neg = pipe.encode_prompt(prompts, device, 1, guided)
        if guided:
            cond = torch.cat([neg, cond])
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        latents = _noise(pipe, len(prompts), side // pipe.vae_scale_factor, cond.dtype, generators, scheduler)
        unet_kwargs["encoder_hidden_states"] = cond
    else:
        raise TypeError(f"{type(pipe).__name__} is not supported; pcr samples ToyPipeline, "
                        "StableDiffusionPipeline and StableDiffusionXLPipeline.")
    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
        raise NotImplementedError("UNets with a guidance embedding (LCM) are not supported yet.")
    step_parameters = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generators} if "generator" in step_parameters else {}
    if "eta" in step_parameters:
        step_kwargs["eta"] = 0.0
    return DenoisingBatch(latents, unet_kwargs, scheduler, step_kwargs, guidance_scale)


def _noise(pipe, batch: int, side: int, dtype, generators, scheduler) -> torch.Tensor:
    """x_T as the pipelines draw it (after set_timesteps: Euler's init_noise_sigma depends on it)."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (batch, pipe.unet.config.in_channels, side, side)
    noise = randn_tensor(shape, generator=generators, device=pipe.unet.device, dtype=dtype)
    return noise * scheduler.init_noise_sigma


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] from final latents, float32."""
    from pcr.pipelines.toy import ToyPipeline

    if isinstance(pipe, ToyPipeline):
        return (latents.float() / 2 + 0.5).clamp(0, 1)
    vae = pipe.vae
    config = vae.config
    upcast = vae.dtype == torch.float16 and getattr(config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    latents = latents.to(dtype)
    if mean is not None and std is not None:
        mean = torch.tensor(mean, device=latents.device, dtype=dtype).view(1, -1, 1, 1)
        std = torch.tensor(std, device=latents.device, dtype=dtype).view(1, -1, 1, 1)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    if upcast:
        vae.to(torch.float32)
    try:
        images = vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(torch.float16)
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def sample_latents(pipe, prompts: list[str], seeds: list[int], num_steps: int, guidance_scale: float,
                   unet: torch.nn.Module | None = None) -> torch.Tensor:
    """Run the whole loop for one batch; the final latents (what ``pipe(..., output_type="latent")`` gives)."""
    batch = prepare_batch(pipe, prompts, seeds, num_steps, guidance_scale)
    unet = pipe.unet if unet is None else unet
    for step in range(batch.num_steps):
        batch.advance(step, batch.model_output(unet, step))
    return batch.latents


@torch.no_grad()
def final_images(pipe, prompts: list[str], seeds: list[int], num_steps: int, guidance_scale: float,
                 batch_size: int) -> torch.Tensor:
    """(N, 3, H, W) final images in [0, 1], batch by batch, with the UNet as it is now switched."""
    out = []
    for i in range(0, len(prompts), batch_size):
        latents = sample_latents(pipe, prompts[i:i + batch_size], seeds[i:i + batch_size], num_steps, guidance_scale)
        out.append(decode(pipe, latents))
    return torch.cat(out)
