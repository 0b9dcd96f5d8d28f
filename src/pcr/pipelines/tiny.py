"""Tiny Stable Diffusion and SDXL pipelines with random weights, for fast CPU tests.

They have the real pipelines' structure (VAE, CLIP text encoder(s), cross-attention UNet, SDXL's
added text/time conditioning) and the real CLIP tokenizer, so quantization, calibration and
generation code runs on them exactly as on a downloaded checkpoint, in seconds and offline.
Their images are noise; only their shapes and determinism mean something. Sizes follow the dummy
components of diffusers' own pipeline tests. The default image is 32x32 (a 16x16 latent).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pcr.tokenizer import clip_tokenizer

__all__ = ["tiny_sd", "tiny_sdxl"]

# The scheduler settings of the Stable Diffusion 1.x / SDXL checkpoints.
_SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1)
SD_SCHEDULER = dict(**_SD_BETAS, clip_sample=False, set_alpha_to_one=False)
SDXL_SCHEDULER = dict(**_SD_BETAS, timestep_spacing="leading")

UNET = dict(
    sample_size=16,  # latent side; the VAE doubles it, so images are 32x32
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    norm_num_groups=8,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32),  # two blocks: latents are 1/2 of the image side
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)
TEXT = dict(
    vocab_size=49408,  # the real CLIP tokenizer's ids
    max_position_embeddings=77,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,  # SDXL reads the penultimate layer
    num_attention_heads=4,
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
ADDITION_TIME_EMBED_DIM = 8  # SDXL embeds 6 size/crop numbers with this many channels each


def _eval(*modules: torch.nn.Module) -> None:
    for module in modules:
        module.eval()


def tiny_sd(seed: int = 0) -> StableDiffusionPipeline:
    """A random Stable-Diffusion-1.x-shaped pipeline (DDIM scheduler), same weights per seed."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET, cross_attention_dim=TEXT["hidden_size"])
        vae = AutoencoderKL(**VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT))
    _eval(unet, vae, text_encoder)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random SDXL-shaped pipeline (two text encoders, text_time conditioning, Euler)."""
    # The UNet cross-attends to both encoders' hidden states, concatenated; its added embedding
    # takes the second encoder's pooled projection and the 6 embedded size/crop numbers.
    cross_attention_dim = 2 * TEXT["hidden_size"]
    added_input_dim = TEXT["projection_dim"] + 6 * ADDITION_TIME_EMBED_DIM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **UNET,
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=added_input_dim,
        )
        vae = AutoencoderKL(**VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT))
    _eval(unet, vae, text_encoder, text_encoder_2)
    tokenizer = clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        add_watermarker=False,
    )
