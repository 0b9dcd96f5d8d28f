"""What a quantization costs and saves: average activation bit-width over the sampling steps, the
packed weight size, and BitOPs per UNet call relative to full precision.

Conventions (stated once, used everywhere):
- Full precision is W32A32: BitOPs_FP = sum over Linear/Conv2d layers of MACs x 32 x 32.
- A quantized layer at step s costs MACs x weight_bits x act_bits(s); a layer kept in FP costs
  MACs x 32 x 32 at every step. BitOPs per UNet call are averaged over the sampling steps.
- MACs are those of the Linear and Conv2d layers (the quantizable kinds) in one UNet call at batch
  1, counted with forward hooks; attention matmuls and norms are left out of both sides.
- Packed size: a quantized layer's weight at weight_bits per value, densely packed, plus 32-bit
  scale and 32-bit zero point per output channel (or per tensor; no zero point when symmetric);
  every other parameter (biases, norms, layers kept in FP) at 16 bits. MB = 2**20 bytes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from pcr.pipelines.steps import get_step_tracker
from pcr.quant.config import QuantConfig
from pcr.quant.select import QUANTIZABLE, quantizable_layers

__all__ = ["FP_BITS", "cost_report", "layer_macs", "unet_example_inputs"]

FP_BITS = 32
MB = 2**20
SDXL_TIME_IDS = 6  # original size, crop top-left, target size


def unet_example_inputs(unet, tokens: int = 77) -> dict:
    """Keyword inputs for one call of a diffusers UNet2DConditionModel at batch 1, built from its config."""
    cfg = unet.config
    param = next(unet.parameters())
    zeros = dict(dtype=param.dtype, device=param.device)
    size = cfg.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    context_dim = cfg.encoder_hid_dim or cfg.cross_attention_dim
    if not isinstance(context_dim, int):
        raise ValueError(f"cannot build example inputs for cross_attention_dim {context_dim!r}; pass example_inputs")
    inputs = {
        "sample": torch.zeros(1, cfg.in_channels, height, width, **zeros),
        "timestep": torch.tensor([500], device=param.device),
        "encoder_hidden_states": torch.zeros(1, tokens, context_dim, **zeros),
    }
    kind = cfg.addition_embed_type
    if kind == "text_time":  # SDXL: pooled text embedding + embedded size/crop numbers
        text_dim = cfg.projection_class_embeddings_input_dim - SDXL_TIME_IDS * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, text_dim, **zeros),
                                       "time_ids": torch.zeros(1, SDXL_TIME_IDS, **zeros)}
    elif kind not in (None, "text"):  # "text" (the toy UNet) reads encoder_hidden_states only
        raise ValueError(f"no example inputs for addition_embed_type {kind!r}; pass example_inputs")
    return inputs


@torch.no_grad()
def layer_macs(model: nn.Module, example_inputs: dict) -> dict[str, int]:
    """{name: multiply-accumulates} of each Linear/Conv2d layer in one call model(**example_inputs)."""
    macs: dict[str, int] = {}
    names = {m: name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}

    def hook(module, _inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
        else:
            per_output = module.in_features
        macs[names[module]] = macs.get(names[module], 0) + output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in names]
    tracker = get_step_tracker(model)  # a pipeline's UNet: this call is outside any sampling run
    try:
        with tracker.at(0) if tracker is not None else contextlib.nullcontext():
            model(**example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return macs


def _packed_bits(quantized: dict[str, nn.Module], model: nn.Module, config: QuantConfig) -> int:
    groups_per_layer = {name: m.weight.shape[0] if config.weight_granularity == "channel" else 1
                        for name, m in quantized.items()}
    param_bits = 32 if config.weight_symmetric else 64  # scale (+ zero point) per group
    quantized_weights = {id(m.weight) for m in quantized.values()}
    bits = sum(m.weight.numel() * config.weight_bits + groups_per_layer[name] * param_bits
               for name, m in quantized.items())
    bits += sum(p.numel() * 16 for p in model.parameters() if id(p) not in quantized_weights)
    return bits


def cost_report(unet: nn.Module, config: QuantConfig, act_bits: list[int] | None = None,
                example_inputs: dict | None = None) -> dict:
    """Cost of quantizing `unet` as `config` says. act_bits: per UNet call of a sampling run (a calibrated
    QuantParams.act_bits); by default the config's, for a scheduler that makes one call per step."""
    act_bits = list(config.act_bits_per_step(config.num_steps) if act_bits is None else act_bits)
    if not act_bits or not all(isinstance(b, int) and 1 <= b <= FP_BITS for b in act_bits):
        raise ValueError(f"act_bits must be a non-empty list of bit-widths in [1, {FP_BITS}], got {act_bits!r}")
    quantized = quantizable_layers(unet, config.keep_fp)
    macs = layer_macs(unet, unet_example_inputs(unet) if example_inputs is None else example_inputs)
    macs_q = sum(macs.get(name, 0) for name in quantized)
    macs_all = sum(macs.values())
    avg_act = float(np.mean(act_bits))
    bitops_fp = macs_all * FP_BITS * FP_BITS
    bitops = macs_q * config.weight_bits * avg_act + (macs_all - macs_q) * FP_BITS * FP_BITS  # mean over steps

    params = list(unet.parameters())
    n_params = sum(p.numel() for p in params)
    return {
        "weight_bits": config.weight_bits,
        "avg_act_bits": avg_act,
        "act_bits_per_step": act_bits,
        "n_params": n_params,
        "n_quantized_layers": len(quantized),
        "n_quantized_params": sum(m.weight.numel() for m in quantized.values()),
        "weight_mb_fp32": n_params * 4 / MB,
        "weight_mb_fp16": n_params * 2 / MB,
        "weight_mb_stored": sum(p.numel() * p.element_size() for p in params) / MB,
        "weight_mb_packed": _packed_bits(quantized, unet, config) / 8 / MB,
        "n_layers_not_called": sum(name not in macs for name in quantized),  # 0 MACs counted for them
        "macs": macs_all,
        "macs_quantized": macs_q,
        "bitops_fp": bitops_fp,
        "bitops": bitops,
        "bitops_ratio": bitops / bitops_fp,
        "quant_config_hash": config.digest(),
    }
