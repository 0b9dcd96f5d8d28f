"""The toy text-to-image pipeline: Stable Diffusion's sampling loop in pixel space, without a VAE.

It samples with pcr's one denoising loop (written as diffusers' own pipelines write theirs: encode
prompt, classifier-free guidance batched into one UNet call per timestep, scheduler step), so
quantization sees the toy model exactly as it sees Stable Diffusion.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTokenizer

__all__ = ["ToyPipeline"]


class ToyPipeline(DiffusionPipeline):
    """Text-to-image in pixel space: CLIP text encoder -> conditional UNet -> image in [-1, 1]."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: KarrasDiffusionSchedulers):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """(B, 77, D) last hidden states of the text encoder, as Stable Diffusion 1.x conditions on."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self._execution_device))[0].to(self.unet.dtype)

    def check_inputs(self, prompt, num_inference_steps: int, guidance_scale: float, generator) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be at least 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}")
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise ValueError(f"got {len(generator)} generators for {len(prompts)} prompts; give one per prompt")
        return prompts

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 20, guidance_scale: float = 4.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, height: int | None = None, width: int | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        """Sample one image per prompt with pcr's one denoising loop (pcr.pipelines.sampling).
        `generator` may be a list (one per prompt) for per-image seeds; output_type is "pil", "np"
        (B, H, W, 3 in [0, 1]) or "pt" (B, 3, H, W in [0, 1])."""
        from pcr.pipelines.sampling import decode, run_loop, start_batch  # sampling imports this module's class

        prompts = self.check_inputs(prompt, num_inference_steps, guidance_scale, generator)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        batch = start_batch(self, prompts, generator, num_inference_steps, guidance_scale, height, width, latents,
                            scheduler=self.scheduler)
        images = decode(self, run_loop(batch, self.unet, progress=self.progress_bar))
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
        elif output_type == "pil":
            images = self.numpy_to_pil(images.permute(0, 2, 3, 1).cpu().numpy())
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
