"""Uniform affine quantization: ranges to (scale, zero point), integer codes, and fake quantization.

Arithmetic follows PyTorch's fake-quantize kernels exactly, code = clamp(round(x * (1 / scale)) +
zero_point, qmin, qmax), so ``dequantize(quantize(x))`` and ``fake_quantize(x)`` equal
``torch.fake_quantize_per_*_affine`` bit for bit (tested).
"""

from __future__ import annotations

import torch

__all__ = ["qrange", "affine_params", "quantize", "dequantize", "fake_quantize", "code_dtype"]


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid: [0, 2^b - 1] asymmetric, [-2^(b-1) + 1, 2^(b-1) - 1] symmetric (zero point 0)."""
    if symmetric:
        return -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def code_dtype(bits: int, symmetric: bool) -> torch.dtype:
    """The smallest integer dtype that holds the codes (what a packed checkpoint stores)."""
    if bits <= 8:
        return torch.int8 if symmetric else torch.uint8
    return torch.int16 if symmetric or bits <= 15 else torch.int32


def affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32) that map the range [lo, hi] onto the ``bits`` grid.

    The range is widened to contain 0, so zero stays exactly representable (zero padding, ReLU
    outputs); a degenerate range gets a tiny scale instead of dividing by zero. Shapes broadcast:
    scalars for a tensor, (C,) for per-channel.
    """
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.clamp(scale, min=torch.finfo(torch.float32).eps)
    if not symmetric:
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def _per_axis(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape per-channel (C,) parameters to broadcast along ``axis`` of ``x``."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool,
             axis: int | None = None) -> torch.Tensor:
    """Integer codes of ``x`` (in ``code_dtype``), rounding half to even as PyTorch's kernels do."""
    qmin, qmax = qrange(bits, symmetric)
    inv_scale = 1.0 / _per_axis(scale, x, axis)
    codes = torch.round(x.float() * inv_scale) + _per_axis(zero_point, x, axis)
    return torch.clamp(codes, qmin, qmax).to(code_dtype(bits, symmetric))


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Real values of integer codes: (code - zero_point) * scale."""
    values = (codes.float() - _per_axis(zero_point, codes, axis)) * _per_axis(scale, codes, axis)
    return values.to(dtype)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool,
                  axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize, keeping x's dtype.

    Without gradients it is one new float32 tensor updated in place, 8x faster on the CPU than
    PyTorch's fused kernel (which also builds a gradient mask) and equal to it bit for bit. Where a
    gradient is wanted, the fused kernel gives the straight-through estimator.
    """
    qmin, qmax = qrange(bits, symmetric)
    if torch.is_grad_enabled() and x.requires_grad:
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zero_point.reshape(1), qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)
    scale = _per_axis(scale.float(), x, axis)
    zero_point = _per_axis(zero_point.float(), x, axis)
    y = x.float() * (1.0 / scale)  # float32 even for half inputs: 16-bit codes overflow float16
    y.round_().add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)
    return y.to(x.dtype)
