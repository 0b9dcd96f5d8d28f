"""One small adapter per pipeline family: what differs around the shared denoising loop.

The loop itself (``pcr.pipelines.sampling``) is the same for every family: scale the model input,
one UNet call with classifier-free guidance batched, scheduler step. What differs is how prompts
become UNet inputs, the shape of the initial noise and how final latents become images; each
family's adapter says it as its diffusers pipeline does, so the loop equals ``pipe(...)``.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

__all__ = ["FamilyAdapter", "SDAdapter", "SDXLAdapter", "ToyAdapter", "adapter_for"]


class FamilyAdapter:
    """Prompts -> UNet inputs, noise shape, latents -> images, for one pipeline object."""

    scale_factor = 1  # image pixels per latent pixel

    def __init__(self, pipe):
        self.pipe = pipe

    def default_size(self) -> tuple[int, int]:
        """(height, width) in pixels when the caller gives none, as the pipeline picks it."""
        side = self.pipe.unet.config.sample_size * self.scale_factor
        return side, side

    def resolve_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        if height % self.scale_factor or width % self.scale_factor:
            raise ValueError(f"height and width must be multiples of {self.scale_factor} for "
                             f"{type(self.pipe).__name__}, got {height}x{width}")
        return height, width

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        return batch, self.pipe.unet.config.in_channels, height // self.scale_factor, width // self.scale_factor

    def unet_kwargs(self, prompts: list[str], guided: bool, height: int, width: int) -> dict:
        """UNet keyword inputs for the batch; the unconditional half first when guided."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 images in [0, 1]."""
        raise NotImplementedError


class ToyAdapter(FamilyAdapter):
    """The toy pipeline samples in pixel space: no VAE, images in [-1, 1]."""

    def unet_kwargs(self, prompts, guided, height, width):
        cond = self.pipe.encode_prompt(prompts)
        if guided:
            cond = torch.cat([self.pipe.encode_prompt([""] * len(prompts)), cond])
        return {"encoder_hidden_states": cond}

    def decode(self, latents):
        return (latents.float() / 2 + 0.5).clamp(0, 1)


class SDAdapter(FamilyAdapter):
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, a VAE."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self.scale_factor = pipe.vae_scale_factor

    def unet_kwargs(self, prompts, guided, height, width):
        device = self.pipe.unet.device
        cond, neg = self.pipe.encode_prompt(prompts, device, 1, guided)
        return {"encoder_hidden_states": torch.cat([neg, cond]) if guided else cond}

    def decode(self, latents):
        vae = self.pipe.vae
        config = vae.config
        upcast = vae.dtype == torch.float16 and getattr(config, "force_upcast", False)  # SDXL's VAE overflows fp16
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


class SDXLAdapter(SDAdapter):
    """SDXL: two text encoders, a pooled text embedding and size micro-conditioning.

    Original and target size are the sampled (height, width) and the crop is (0, 0): what
    ``pipe(prompt, height=h, width=w)`` uses when those arguments are not given."""

    def unet_kwargs(self, prompts, guided, height, width):
        pipe, device = self.pipe, self.pipe.unet.device
        cond, neg, pooled, neg_pooled = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                           do_classifier_free_guidance=guided)
        projection_dim = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                          else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=cond.dtype,
                                          text_encoder_projection_dim=projection_dim)
        if guided:
            cond, pooled, time_ids = torch.cat([neg, cond]), torch.cat([neg_pooled, pooled]), torch.cat([time_ids] * 2)
        return {"encoder_hidden_states": cond.to(device),
                "added_cond_kwargs": {"text_embeds": pooled.to(device),
                                      "time_ids": time_ids.to(device).repeat(len(prompts), 1)}}


def adapter_for(pipe) -> FamilyAdapter:
    """The adapter of ``pipe``'s family (SDXL is checked before SD: neither derives from the other,
    but a user's subclass may derive from either)."""
    from pcr.pipelines.toy import ToyPipeline  # toy.py runs the shared loop, which imports this module

    for family, adapter in ((ToyPipeline, ToyAdapter), (StableDiffusionXLPipeline, SDXLAdapter),
                            (StableDiffusionPipeline, SDAdapter)):
        if isinstance(pipe, family):
            return adapter(pipe)
    raise TypeError(f"{type(pipe).__name__} is not supported; pcr samples ToyPipeline, StableDiffusionPipeline "
                    "and StableDiffusionXLPipeline.")
