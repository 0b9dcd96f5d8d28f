"""Tiny stand-ins for the real Stable Diffusion checkpoints: **real structure and schedulers, tiny widths.**

pcr loads SD 1.4, SD 1.5, SD 2.1 and SDXL base from a hub id, a diffusers folder or a single
original-layout file. We cannot download them, so the tests load these instead: random pipelines
that carry what tells the families apart, taken from the hub repos' own config files,

- the scheduler: class and every key of ``scheduler/scheduler_config.json`` (SCHEDULER_CONFIGS);
- the UNet flags: ``use_linear_projection`` / ``upcast_attention`` (SD 2.1, SDXL),
  ``addition_embed_type="text_time"`` and several transformer layers per block (SDXL);
- the text encoders: OpenAI CLIP (quick_gelu, pads with the end token) for SD 1.x and SDXL's
  first encoder, OpenCLIP (gelu, pads with "!") for SD 2.1 and SDXL's second, with projection;
- the VAE: ``scaling_factor`` 0.18215 for SD 1.x/2.1, 0.13025 and ``force_upcast`` for SDXL;

but the widths of pcr.pipelines.tiny. SDXL's second encoder is wider than its first, as in the
real model (768 and 1280): diffusers' single-file loader tells the two apart by width only.
Their images are noise; only structure and determinism mean something.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pcr.pipelines.tiny import ADDITION_TIME_EMBED_DIM, TEXT, UNET, VAE
from pcr.tokenizer import clip_tokenizer

__all__ = ["HUB_IDS", "KINDS", "SCHEDULER_CONFIGS", "UNET_CONFIGS", "UNET_PARAMS", "save_tiny_checkpoint",
           "tiny_checkpoint"]

HUB_IDS = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
KINDS = tuple(HUB_IDS)

# scheduler/scheduler_config.json of each hub repo, verbatim (key order included). Read from
# git mirrors of the hub repos on GitHub, at their newest main commit:
# sd14: wswplay/stable-diffusion-v1-4 (hub commit "Make sure the scheduler compatible with DDIM");
# sd15: wswplay/stable-diffusion-v1-5 and HDRJ-One/runwayml-stable-diffusion-v1-5 (identical);
# sd21: jack-op11/stable-diffusion-2-1; sdxl: andrewcchoi/stabilityai-stable-diffusion-xl-base-1.0.
# The same texts appear in many other repositories. Keys a class does not take (clip_sample for
# PNDM, skip_prk_steps for DDIM and Euler) are kept in its config and ignored, as when the
# real repo is loaded.
_SD1_BETAS = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085}
SCHEDULER_CONFIGS = {
    "sd14": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.7.0.dev0",
        **_SD1_BETAS,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    },
    "sd21": {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.8.0",
        **_SD1_BETAS,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "sdxl": {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.19.0.dev0",
        **_SD1_BETAS,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
}

SCHEDULER_CONFIGS["sd15"] = {**SCHEDULER_CONFIGS["sd14"], "_diffusers_version": "0.6.0"}  # the rest is identical

# UNet flags of each repo's unet/config.json, same mirrors (SDXL's upcast_attention is null: off).
_UNET_FLAGS = {
    "sd14": dict(use_linear_projection=False, upcast_attention=False),
    "sd15": dict(use_linear_projection=False, upcast_attention=False),
    "sd21": dict(use_linear_projection=True, upcast_attention=True),
    "sdxl": dict(use_linear_projection=True, upcast_attention=False, addition_embed_type="text_time",
                 transformer_layers_per_block=(1, 2)),  # real: (1, 2, 10)
}
# Text encoders (text_encoder*/config.json, tokenizer*/special_tokens_map.json): activation and
# pad token. SD 2.1's encoder is OpenCLIP-H without its last layer (23 of 24), SDXL's second
# OpenCLIP-bigG with a projection as wide as itself.
_OPENAI_CLIP = dict(TEXT, hidden_act="quick_gelu")
_OPEN_CLIP = dict(TEXT, hidden_act="gelu")
_OPEN_CLIP_BIG = dict(_OPEN_CLIP, hidden_size=64, intermediate_size=128, projection_dim=64)
_OPEN_CLIP_PAD = "!"  # SD 2.x and SDXL's tokenizer_2 pad with "!" (id 0), not with <|endoftext|>
_SDXL_VAE = dict(scaling_factor=0.13025, force_upcast=True)  # SD 1.x/2.1: diffusers' defaults


def _scheduler(kind: str):
    config = SCHEDULER_CONFIGS[kind]
    return getattr(diffusers, config["_class_name"]).from_config(config)


def _tokenizer(pad_token: str | None = None):
    tokenizer = clip_tokenizer()
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    return tokenizer


def _unet(kind: str, sample_size: int, cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    config = dict(UNET, sample_size=sample_size, cross_attention_dim=cross_attention_dim)
    return UNet2DConditionModel(**config, **_UNET_FLAGS[kind], **extra)


def _vae(sample_size: int, **flags) -> AutoencoderKL:
    # VAE's sample_size is the image side: the latent side times 2 (its two blocks halve once).
    return AutoencoderKL(**dict(VAE, sample_size=2 * sample_size), **flags)


def _tiny_sd(kind: str, sample_size: int) -> StableDiffusionPipeline:
    text = _OPEN_CLIP if kind == "sd21" else _OPENAI_CLIP
    unet = _unet(kind, sample_size, cross_attention_dim=text["hidden_size"])
    vae = _vae(sample_size)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=_tokenizer(_OPEN_CLIP_PAD if kind == "sd21" else None),
        unet=unet.eval(),
        scheduler=_scheduler(kind),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_sdxl(sample_size: int) -> StableDiffusionXLPipeline:
    # The UNet cross-attends to both encoders' hidden states, concatenated; its added embedding
    # takes the second encoder's pooled projection and the 6 embedded size/crop numbers.
    unet = _unet(
        "sdxl",
        sample_size,
        cross_attention_dim=_OPENAI_CLIP["hidden_size"] + _OPEN_CLIP_BIG["hidden_size"],
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=_OPEN_CLIP_BIG["projection_dim"] + 6 * ADDITION_TIME_EMBED_DIM,
    )
    vae = _vae(sample_size, **_SDXL_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_OPENAI_CLIP))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_OPEN_CLIP_BIG))
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(_OPEN_CLIP_PAD),
        unet=unet.eval(),
        scheduler=_scheduler("sdxl"),
        add_watermarker=False,
    )


def tiny_checkpoint(kind: str, seed: int = 0, sample_size: int = 16):
    """A tiny random pipeline shaped like checkpoint ``kind`` (a key of HUB_IDS); same weights per seed.

    ``sample_size`` is the latent side, so images default to ``2 * sample_size`` pixels square.
    The caller's global RNG is left as it was.
    """
    if kind not in HUB_IDS:
        raise ValueError(f"Unknown checkpoint kind {kind!r}; expected one of {', '.join(KINDS)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _tiny_sdxl(sample_size) if kind == "sdxl" else _tiny_sd(kind, sample_size)


def save_tiny_checkpoint(kind: str, folder: str | Path, seed: int = 0, sample_size: int = 16) -> Path:
    """Save ``tiny_checkpoint(kind, seed, sample_size)`` as a diffusers-format folder (safetensors).

    Unlike a download of SD 1.x, the folder has no safety_checker / feature_extractor (their
    model_index.json entries are null): the real safety checker is a full CLIP vision model that
    cannot be built offline, and pcr loads SD with the safety checker off anyway.
    """
    folder = Path(folder)
    tiny_checkpoint(kind, seed=seed, sample_size=sample_size).save_pretrained(folder, safe_serialization=True)
    return folder


# -- the full-size UNets (random weights, for benchmarks at SD scale: benchmarks/sd_scale.py) ----------
# runwayml/stable-diffusion-v1-5 unet/config.json, as mirrored in the GitHub repository
# HDRJ-One/runwayml-stable-diffusion-v1-5 (commit 2e7465d9dffe7e53e88aea896882476ea872ca95).
# Keys left out are null or diffusers' defaults there.
_SD15_UNET = dict(
    sample_size=64,  # the default resolution only (no weight depends on it); replaced by --latent
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
    dual_cross_attention=False,
    use_linear_projection=False,
    resnet_time_scale_shift="default",
    time_embedding_type="positional",
)

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, as committed in the GitHub repositories
# DeveloperRadleighPompei/sdxl (commit 51e1b905f0d644efa6685a6912a45c72962be30b) and
# PRITHIVSAKTHIUR/AI-Art-Generator-SDXL (commit a04712fe9b65454f2e625e522f1d0b43e2ff76bc), which agree.
# Keys left out are null or diffusers' defaults there.
_SDXL_UNET = dict(
    sample_size=128,  # the default resolution only; replaced by --latent
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,  # the two text encoders' hidden states, 768 + 1280, concatenated
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    dual_cross_attention=False,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # pooled text (1280) + 6 size/crop numbers x 256
    resnet_time_scale_shift="default",
    time_embedding_type="positional",
)
# What those configs build: the checkpoints' published parameter counts (a wrong key changes them).
UNET_CONFIGS = {"sd15": _SD15_UNET, "sdxl": _SDXL_UNET}
UNET_PARAMS = {"sd15": 859_520_964, "sdxl": 2_567_463_684}
