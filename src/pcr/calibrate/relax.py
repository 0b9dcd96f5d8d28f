"""Activation relaxing: a few sampling steps get higher-bit activations (10 in the paper).

The paper picks the steps by hand (the last 20% for SD, the first 20% for SDXL). Which steps are
sensitive depends on the model, so ``relax_auto_bits`` measures it instead: for each step, how much
the final images' PSNR to the full-precision images rises when only that step is relaxed, per
prompt (paired: the same seeds in every run), and relaxes the steps that gain most within an
average-bit budget. Gains are in dB per prompt, averaged, with their standard error over prompts:
the first version measured squared error on one batch of prompts, and its gains (below 1e-4) were
noise that picked steps a fixed interval beat.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from pcr.pipelines.sampling import final_images
from pcr.quant.config import QuantConfig
from pcr.quant.layers import QuantLayerMixin
from pcr.quant.model import quant_mode

__all__ = ["set_step_bits", "step_gains", "pick_relaxed_steps"]


def set_step_bits(layers: dict[str, QuantLayerMixin], step: int, bits: int) -> None:
    """Requantize one step's activations at ``bits`` within the same calibrated ranges."""
    for layer in layers.values():
        aq = layer.act_quantizer
        lo, hi = aq.range[step]
        aq.set_step(step, lo, hi, bits)


def step_gains(pipe, layers: dict[str, QuantLayerMixin], prompts: list[str], seeds: list[int], config: QuantConfig,
               progress: bool = True) -> dict:
    """Per UNet call, the mean over prompts of the PSNR gain (dB, to the FP image) when only that call is
    relaxed, and its standard error over prompts (calls + 2 samplings of every prompt)."""
    def images() -> torch.Tensor:
        return final_images(pipe, prompts, seeds, config.num_steps, config.guidance_scale, config.batch_size,
                            config.height, config.width)

    def errors() -> torch.Tensor:  # each prompt's mean squared error to its FP image
        return (images() - reference).pow(2).flatten(1).mean(1).double().clamp_min(1e-12)

    with quant_mode(pipe.unet, weights=False, acts=False):
        reference = images()
    with quant_mode(pipe.unet, weights=True, acts=True):
        base = errors()
        gains, errs = [], []
        num_calls = next(iter(layers.values())).act_quantizer.num_calls
        for step in tqdm(range(num_calls), desc="relax sensitivity", disable=not progress, leave=False):
            bits = next(iter(layers.values())).act_quantizer.bits[step]
            set_step_bits(layers, step, config.relax_bits)
            gain = 10 * torch.log10(base / errors())  # dB, per prompt
            set_step_bits(layers, step, bits)
            gains.append(gain.mean().item())
            errs.append((gain.std() / math.sqrt(len(gain))).item() if len(gain) > 1 else float("nan"))
    return {"base_mse": base.mean().item(), "gains": gains, "gains_se": errs, "unit": "dB", "prompts": len(prompts)}


def pick_relaxed_steps(gains: list[float], config: QuantConfig) -> tuple[int, ...]:
    """The steps with the largest positive gains, as many as the average-bit budget allows (a step whose
    measured gain is not positive is left unrelaxed: its extra bits bought nothing measurable)."""
    budget = config.relax_auto_bits
    extra = config.relax_bits - config.act_bits
    count = math.floor(len(gains) * (budget - config.act_bits) / extra + 1e-9)
    ranked = sorted(range(len(gains)), key=lambda s: -gains[s])
    return tuple(sorted(s for s in ranked[:count] if gains[s] > 0))
