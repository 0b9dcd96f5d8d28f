"""Weight ranges by min-max or by MSE search, rounded to nearest (AdaRound/BRECQ lives in adaround.py).

The MSE search is vectorised over output channels: each candidate clipping ratio is one tensor
operation on the whole weight, keeping per channel the ratio with the least squared error.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pcr.quant.layers import QuantLayerMixin
from pcr.quant.quantizer import affine_params, dequantize, quantize

__all__ = ["weight_range", "round_to_nearest", "calibrate_weights"]

MSE_RATIOS = torch.linspace(1.0, 0.2, 81)  # Q-Diffusion's search: shrink the range by 1% at a time


def _flat(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """(C, K) rows per output channel, or (1, K) for one range over the tensor."""
    return weight.detach().float().reshape(weight.shape[0] if per_channel else 1, -1)


def weight_range(layer: QuantLayerMixin, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of the layer's weight: (C,) per channel or () per tensor."""
    wq = layer.weight_quantizer
    per_channel = wq.axis is not None
    flat = _flat(layer.weight, per_channel)
    lo, hi = flat.amin(1), flat.amax(1)
    if method == "mse":
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for ratio in MSE_RATIOS.tolist():
            scale, zero_point = affine_params(lo * ratio, hi * ratio, wq.bits, wq.symmetric)
            codes = quantize(flat, scale, zero_point, wq.bits, wq.symmetric, axis=0)
            err = (dequantize(codes, scale, zero_point, axis=0) - flat).pow(2).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo * ratio, best_lo), torch.where(better, hi * ratio, best_hi)
        lo, hi = best_lo, best_hi
    elif method != "minmax":
        raise ValueError(f"Unknown weight range method {method!r}; use minmax or mse.")
    return (lo, hi) if per_channel else (lo[0], hi[0])


def round_to_nearest(layer: QuantLayerMixin, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Set the layer's weight codes: range -> (scale, zero point), codes rounded to nearest."""
    wq = layer.weight_quantizer
    scale, zero_point = affine_params(lo, hi, wq.bits, wq.symmetric)
    codes = quantize(layer.weight.detach(), scale, zero_point, wq.bits, wq.symmetric, axis=wq.axis)
    layer.set_weight(scale, zero_point, codes)


def calibrate_weights(layers: dict[str, QuantLayerMixin], method: str, progress: bool = True) -> None:
    """Round every layer's weights to nearest within a min-max or MSE-searched range."""
    for layer in tqdm(layers.values(), desc=f"weights ({method})", disable=not progress, leave=False):
        round_to_nearest(layer, *weight_range(layer, method))
