"""The toy text-to-image model: a small diffusers UNet trained in pixel space on the toy world.

Recipe, as Stable Diffusion does it: the text encoder is a CLIP text tower trained first (the toy
CLIP's) and frozen; only the UNet learns. Earlier prototypes that trained the text encoder jointly
learnt shapes and sizes but ignored colour and position words (../shared/docs/DESIGN.md).
v-prediction on a zero-terminal-SNR schedule lets the model set the background from the prompt
rather than from the initial noise.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from pcr.io import atomic_dir
from pcr.toy import world

__all__ = ["toy_unet_config", "toy_noise_scheduler", "train_toy_model"]


def toy_unet_config(res: int = 32, cross_attention_dim: int = 128, channels=(32, 64, 64),
                    attention_16: bool = True) -> dict:
    """A ~1.5M-parameter conditional UNet; cross-attention at 8x8 (and 16x16 unless turned off)."""
    down = ["DownBlock2D", "CrossAttnDownBlock2D" if attention_16 else "DownBlock2D", "CrossAttnDownBlock2D"]
    up = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D" if attention_16 else "UpBlock2D", "UpBlock2D"]
    return {
        "sample_size": res,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": list(channels),
        "layers_per_block": 1,
        "down_block_types": down,
        "up_block_types": up,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 4,  # diffusers reads this as the number of heads
        "norm_num_groups": 16,
        # a global text pathway beside cross-attention: the pooled prompt shifts every ResNet (FiLM)
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": 4,
        "resnet_time_scale_shift": "scale_shift",
    }


def toy_noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                         prediction_type="v_prediction", rescale_betas_zero_snr=True)


def train_toy_model(clip_dir: str | os.PathLike, out_dir: str | os.PathLike, steps: int = 1200,
                    batch_size: int = 32, lr: float = 1e-3, seed: int = 0, res: int = 32, p_two: float = 0.25,
                    cond_dropout: float = 0.1, high_noise_bias: float = 1.0, attention_16: bool = True,
                    progress: bool = True) -> dict:
    """Train the toy UNet on the frozen toy-CLIP text encoder; save a `ToyPipeline` in `out_dir`.

    `high_noise_bias` > 1 draws training timesteps toward high noise (t = T * u**(1/bias)), where
    the prompt decides the layout.
    """
    from pcr.pipelines.toy import ToyPipeline
    from pcr.tokenizer import CachedTokenIds, clip_tokenizer
    from pcr.toy.clip import load_toy_clip
    from pcr.toy.text_encoder import text_encoder_from_open_clip

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = clip_tokenizer()
    token_ids = CachedTokenIds(tokenizer)
    text_encoder = text_encoder_from_open_clip(load_toy_clip(clip_dir)[0]).requires_grad_(False)
    unet = UNet2DConditionModel(**toy_unet_config(res, text_encoder.config.hidden_size, attention_16=attention_16))
    # plain (matmul, softmax) attention for training: at these sizes (64 and 256 tokens, heads of 16)
    # a training step on a CPU takes about 0.6x the time it takes with scaled_dot_product_attention,
    # whose backward dominated the step; sampling keeps the default
    unet.set_attn_processor(AttnProcessor())
    noise_scheduler = toy_noise_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    lr_schedule = get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(100, steps // 10), num_training_steps=steps)
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, power=3 / 4)
    T = noise_scheduler.config.num_train_timesteps
    start = time.time()
    unet.train()
    bar = tqdm(range(steps), desc="toy UNet", disable=not progress)
    for _ in bar:
        images, captions, _ = world.random_batch(rng, batch_size, res, p_two)
        captions = ["" if rng.random() < cond_dropout else c for c in captions]
        x0 = torch.from_numpy(images)  # (B, 3, res, res) in [-1, 1]
        with torch.no_grad():
            cond = text_encoder(token_ids(captions))[0]  # (B, 77, D)
        u = torch.from_numpy(rng.random(batch_size))
        t = (T * u ** (1 / high_noise_bias)).long().clamp(0, T - 1)
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        x_t = noise_scheduler.add_noise(x0, noise, t)
        target = noise_scheduler.get_velocity(x0, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = unet(x_t, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.time() - start
    ema.copy_to(unet.parameters())
    unet.set_attn_processor(AttnProcessor2_0())
    unet.eval()

    sampler = DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing")
    pipe = ToyPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sampler)
    stats = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "res": res,
             "high_noise_bias": high_noise_bias, "attention_16": attention_16, "train_seconds": seconds,
             "final_loss": float(loss.item()), "unet_parameters": sum(p.numel() for p in unet.parameters())}
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats
