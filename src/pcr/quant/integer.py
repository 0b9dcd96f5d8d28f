"""Integer execution of quantized Linear and Conv2d layers: int8 activations x int8 weights with int32
accumulation, using the calibrated scale and zero point of the current UNet call.

Why these kernels: ``torch._int_mm`` is PyTorch's own int8 GEMM (CPU and CUDA, maintained, what torchao's
int8 path calls), 3-4x faster than float32 on one CPU thread at SD shapes. Convolutions use oneDNN's
int8 convolution (``torch.ops.onednn.qconv_prepack`` / ``qconv_pointwise``, the ops Inductor's x86
quantizer lowers to), which takes plain uint8/int8 tensors instead of the deprecated quantized-tensor
API. oneDNN handles the activation zero point itself but ignores weight zero points, so asymmetric
weights are centred (code - zero point) when that fits int8 (<= 7 bits), and 8-bit asymmetric weights
get their zero-point term added separately (``_conv_weight_zero_point``).

The codes are those of the fake-quantized path (same rounding), so the integer sum is exact and the
outputs differ only by float rounding. Calls whose activation or weight codes do not fit int8 (relaxed
10-bit calls), or that the kernels do not cover, run the fake-quantized float path; ``kernel_path``
says which path a call takes and each layer records the last one in ``layer.kernel_path``.
"""

from __future__ import annotations

import functools
import math
import types
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pcr.quant.layers import QuantConv2d, QuantLayerMixin, QuantLinear
from pcr.quant.model import quant_layers
from pcr.quant.packing import pack_codes, packable, unpack_centred
from pcr.quant.quantizer import qrange

__all__ = ["INTEGER", "kernel_path", "integer_linear", "integer_conv2d", "integer_forward", "use_integer_kernels",
           "integer_kernels"]

INTEGER = "int8"  # kernel_path of a call run by the integer kernels; anything else names the fallback's reason
_CUDA_MIN_ROWS, _CUDA_ALIGN = 17, 8  # torch._int_mm on CUDA: rows > 16, inner and output sizes multiples of 8


@dataclass
class IntWeight:
    """A layer's weight, prepared once for the integer kernels.

    ``codes``: int8 (O, K) for Linear (``codes.t()`` is the column-major operand _int_mm wants), oneDNN's
    packed weight for Conv2d on the CPU, int8 codes elsewhere; None where ``packed`` holds them.
    ``packed``: 4-bit-or-fewer codes two per byte (pcr.quant.packing), unpacked per call with ``offset``
    (qmin - zero point, int8 (O, 1)) into centred int8. ``zero_point``: per channel, int32, or None
    where the codes are centred. ``code_sum``: Linear: per-channel sum of the int8 codes (the activation
    zero point's term); Conv2d: the all-zero weight zero points oneDNN is given. ``source``: the
    quantizer tensors it was made from; new codes (recalibration, .to()) rebuild it, unless ``frozen``
    (pcr.quant.freeze: the model keeps only this). ``steps``: each call's StepScales, for ``act_versions``.
    """

    codes: torch.Tensor | None
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    code_sum: torch.Tensor
    source: tuple
    shape: tuple[int, ...] = ()
    packed: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    frozen: bool = False
    steps: dict = field(default_factory=dict)
    act_versions: tuple = ()

    def tensors(self) -> list[torch.Tensor]:
        """What it holds in memory."""
        return [t for t in (self.codes, self.packed, self.offset, self.scale, self.zero_point, self.code_sum)
                if t is not None]

    def centred(self) -> torch.Tensor:
        """int8 codes (O, K...) in the weight's shape, unpacked if packed (oneDNN's packing undone)."""
        if self.packed is not None:
            return unpack_centred(self.packed, math.prod(self.shape[1:]), self.offset).reshape(self.shape)
        return self.codes.to_dense() if self.codes.is_mkldnn else self.codes

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The float weight the fake-quantized path multiplies by, bit for bit: (code - zero point) * scale."""
        codes = self.centred()
        if codes.shape != self.shape:  # a Linear padded for CUDA's _int_mm: the padding sliced off
            codes = codes[: self.shape[0], : self.shape[1]]
        values = codes.float()
        per_channel = (-1,) + (1,) * (values.dim() - 1)
        if self.zero_point is not None:
            values -= self.zero_point.reshape(per_channel)
        return values.mul_(self.scale.reshape(per_channel)).to(dtype)


@dataclass
class StepScales:
    """One UNet call's activation parameters in the forms the kernels take, computed once per layer and
    call instead of at every forward (small layers are bound by per-call overhead)."""

    inv_scale: torch.Tensor  # (1,) float32: 1 / scale, as the fake path multiplies by it
    zero_point: int  # shifted into the kernel's code range (see activation_codes)
    clamp: tuple[int, int]  # the code range, shifted likewise
    scale: float  # the float32 scale
    out_scale: torch.Tensor  # Linear: s_a * s_w (O,); Conv2d: s_a * s_w * zw (1, O, 1, 1) for the correction


def _int8_weight(layer: QuantLayerMixin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(int8 codes, scale (O,), zero point (O,) or None): centred codes where (code - zero point) fits
    int8 (symmetric, or asymmetric <= 7 bits), else codes and zero point both shifted by -128."""
    wq = layer.weight_quantizer
    out = wq.codes.shape[0]
    scale = wq.scale.float().expand(out) if wq.axis is None else wq.scale.float()
    zero_point = wq.zero_point.expand(out) if wq.axis is None else wq.zero_point
    shape = (-1,) + (1,) * (wq.codes.dim() - 1)
    centred = wq.codes.to(torch.int32) - zero_point.reshape(shape)
    if centred.min() >= -128 and centred.max() <= 127:
        return centred.to(torch.int8), scale.contiguous(), None
    shifted = (wq.codes.to(torch.int32) - 128).to(torch.int8)
    return shifted, scale.contiguous(), (zero_point - 128).to(torch.int32).contiguous()


def _versions(*tensors: torch.Tensor) -> tuple:
    """What identifies the tensors' contents: the objects (held, so ids are not reused) and their
    in-place write counters."""
    return tuple((t, t._version) for t in tensors)


def _unchanged(old: tuple, new: tuple) -> bool:
    return len(old) == len(new) and all(a is b and u == v for (a, u), (b, v) in zip(old, new))


def _prepare(layer: QuantLayerMixin) -> IntWeight:
    """The layer's IntWeight, rebuilt when its weight quantizer's tensors changed (never when frozen)."""
    cached = layer.__dict__.get("_int_weight")
    if cached is not None and (cached.frozen or _unchanged(cached.source, _quantizer_versions(layer))):
        return cached
    prepared = prepare_weight(layer)
    layer.__dict__["_int_weight"] = prepared  # not a buffer: never saved, rebuilt from the codes
    return prepared


def _quantizer_versions(layer: QuantLayerMixin) -> tuple:
    wq = layer.weight_quantizer
    return _versions(wq.codes, wq.scale, wq.zero_point)


def prepare_weight(layer: QuantLayerMixin, pack: bool = False) -> IntWeight:
    """The layer's weight codes in the kernels' forms; ``pack``: keep codes of <= 4 bits two per byte
    (unpacked per call), for a model that holds nothing else (pcr.quant.freeze)."""
    wq = layer.weight_quantizer
    codes, scale, zero_point = _int8_weight(layer)
    conv = isinstance(layer, QuantConv2d)
    rows = codes.reshape(codes.shape[0], -1)
    code_sum = torch.zeros(scale.shape, dtype=torch.int64) if conv else rows.sum(1, dtype=torch.int32)
    weight = IntWeight(None, scale, zero_point, code_sum, _quantizer_versions(layer), tuple(codes.shape))
    if pack and packable(wq.bits):
        qmin = qrange(wq.bits, wq.symmetric)[0]
        zero = wq.zero_point.expand(codes.shape[0]) if wq.axis is None else wq.zero_point
        weight.packed = pack_codes(wq.codes, wq.bits, wq.symmetric)
        weight.offset = (qmin - zero).to(torch.int8).reshape(-1, 1)
    elif conv and codes.device.type == "cpu" and _onednn():
        weight.codes = _prepack(layer, codes.contiguous(), scale)
    elif codes.device.type == "cuda" and not conv:
        weight.codes = pad_for_int_mm(codes)
    else:
        weight.codes = codes.contiguous()
    return weight


def _prepack(layer: QuantConv2d, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.onednn.qconv_prepack(codes, scale, 1.0, 0, list(layer.stride), list(layer.padding),
                                          list(layer.dilation), layer.groups, None)


def _kernel_codes(layer: QuantLayerMixin, weight: IntWeight) -> torch.Tensor:
    """The weight operand of this call's kernel: the prepared codes, or packed ones unpacked (and, for a
    convolution, given to oneDNN) now."""
    if weight.packed is None:
        return weight.codes
    codes = weight.centred()
    if isinstance(layer, QuantConv2d):
        return _prepack(layer, codes, weight.scale)
    return pad_for_int_mm(codes) if codes.device.type == "cuda" else codes


def _shift(symmetric: bool, signed: bool) -> int:
    """Added to codes and zero point alike (code - zero point, all the sum needs, is unchanged): int8
    for _int_mm, uint8 for oneDNN."""
    return (-128 if signed else 0) if not symmetric else (0 if signed else 128)


def activation_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: int, bits: int, symmetric: bool,
                     signed: bool) -> tuple[torch.Tensor, int]:
    """(codes, zero point) of ``x`` as the fake path rounds it, in int8 (``signed``) or uint8."""
    qmin, qmax = qrange(bits, symmetric)
    shift = _shift(symmetric, signed)
    return _codes(x, 1.0 / scale, zero_point + shift, (qmin + shift, qmax + shift), signed), zero_point + shift


def _codes(x: torch.Tensor, inv_scale: torch.Tensor, zero_point: int, clamp: tuple[int, int],
           signed: bool) -> torch.Tensor:
    y = x.float() * inv_scale
    y.round_().add_(zero_point).clamp_(*clamp)
    return y.to(torch.int8 if signed else torch.uint8)


def _step_scales(layer: QuantLayerMixin, weight: IntWeight, step: int) -> StepScales:
    """This call's StepScales, recomputed after set_step (which bumps the quantizer's tensor versions)."""
    aq = layer.act_quantizer
    versions = _versions(aq.scale, aq.zero_point)
    if not _unchanged(weight.act_versions, versions):
        weight.steps.clear()
        weight.act_versions = versions
    if step not in weight.steps:
        conv = isinstance(layer, QuantConv2d)
        qmin, qmax = qrange(aq.bits[step], aq.symmetric)
        shift = _shift(aq.symmetric, signed=not conv)
        scale = aq.scale[step].float()
        out_scale = scale * weight.scale
        if conv:
            zw = weight.zero_point if weight.zero_point is not None else torch.zeros_like(weight.code_sum)
            out_scale = (out_scale * zw).reshape(1, -1, 1, 1)
        weight.steps[step] = StepScales(1.0 / aq.scale[step:step + 1].float(), int(aq.zero_point[step]) + shift,
                                        (qmin + shift, qmax + shift), float(scale), out_scale)
    return weight.steps[step]


def pad_for_int_mm(codes: torch.Tensor) -> torch.Tensor:
    """Weight codes (O, K) padded with zero codes to multiples of 8 in both sizes, as torch._int_mm on
    CUDA requires (zeros add nothing to the sums); done once per layer, keeping ``codes.t()``
    column-major, the layout the CUDA kernel is fast with."""
    out, inner = codes.shape
    return F.pad(codes, (0, -inner % _CUDA_ALIGN, 0, -out % _CUDA_ALIGN))


def _int_mm(a: torch.Tensor, codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm(a, codes.t())`` into ``out`` (int32, (M, O)); where the weight was padded
    (``pad_for_int_mm``) or the rows are too few for CUDA (M <= 16), ``a`` is padded with zero codes
    and the product sliced back."""
    rows, inner = a.shape
    if codes.shape == (out.shape[1], inner) and (a.device.type != "cuda" or rows >= _CUDA_MIN_ROWS):
        return torch._int_mm(a, codes.t(), out=out)
    pad_rows = max(_CUDA_MIN_ROWS, rows) - rows if a.device.type == "cuda" else 0
    a = F.pad(a, (0, codes.shape[1] - inner, 0, pad_rows))
    return out.copy_(torch._int_mm(a, codes.t())[:rows, :out.shape[1]])


def integer_linear(codes: torch.Tensor, act_zero_point: int, out_scale: torch.Tensor, weight: IntWeight,
                   bias: torch.Tensor | None, operand: torch.Tensor | None = None) -> torch.Tensor:
    """Activation codes (..., K) int8 @ weight codes (O, K)^T in int32, zero-point terms subtracted in int32:
    acc = sum_k (a - za)(w - zw) = A W^T - za * sum_k w - zw * (sum_k a - K za); then scaled per channel.
    Exact while |acc| < 2^31 (K * 255 * 255, so K < 33000; ``kernel_path`` checks the fan-in).

    The float output is allocated once and the int32 accumulator lives in its memory (same size), so
    the integer path allocates no more than F.linear does. ``operand``: the weight codes if not
    ``weight.codes`` (unpacked this call).
    """
    lead, inner = codes.shape[:-1], codes.shape[-1]
    a = codes.reshape(-1, inner)
    out = torch.empty(a.shape[0], weight.scale.shape[0], device=a.device)
    acc = _int_mm(a, weight.codes if operand is None else operand, out.view(torch.int32))
    if act_zero_point:
        acc.sub_(weight.code_sum * act_zero_point)
    if weight.zero_point is not None:
        row = a.sum(1, dtype=torch.int32).sub_(inner * act_zero_point)
        acc.addr_(row, weight.zero_point, alpha=-1)
    out.copy_(acc)  # int32 -> float32 in place (same element size and position)
    out.mul_(out_scale)  # s_a * s_w per channel
    if bias is not None:
        out.add_(bias.float())
    return out.reshape(*lead, -1)


def _conv_weight_zero_point(layer: QuantConv2d, codes: torch.Tensor, act_zero_point: int) -> torch.Tensor:
    """sum over each output's window of (a - za), (N, 1, H', W') float32: what the weight zero point
    multiplies. Summed over channels in int32, then over the window by a ones-kernel convolution, in
    float32 while every partial sum stays below 2^24 (so exact: 255 * C * window < 2^24, up to 7000
    channels at 3x3), else float64; zero padding adds (za - za) = 0 as in the fake path."""
    channels, window = codes.shape[1], layer.kernel_size[0] * layer.kernel_size[1]
    dtype = torch.float32 if 255 * channels * window < 2**24 else torch.float64
    centred = codes.to(torch.int32).sum(1, keepdim=True, dtype=torch.int32).sub_(channels * act_zero_point)
    ones = torch.ones(1, 1, *layer.kernel_size, dtype=dtype, device=codes.device)
    return F.conv2d(centred.to(dtype), ones, None, layer.stride, layer.padding, layer.dilation).float()


def integer_conv2d(layer: QuantConv2d, codes: torch.Tensor, act_zero_point: int, act_scale: float,
                   weight: IntWeight, correction: torch.Tensor | None = None,
                   operand: torch.Tensor | None = None) -> torch.Tensor:
    """oneDNN's uint8 x int8 convolution with int32 accumulation, output scaled per channel and biased
    in float32; an 8-bit asymmetric weight's zero-point term, s_a s_w zw * window sum, is subtracted
    after, in place (oneDNN gives no int32 output to subtract it from exactly); ``correction`` is
    s_a s_w zw as (1, O, 1, 1), computed here if not given; ``operand`` as for integer_linear."""
    operand = weight.codes if operand is None else operand
    out = torch.ops.onednn.qconv_pointwise(codes, act_scale, act_zero_point, operand, weight.scale,
                                           weight.code_sum, layer.bias, layer.stride, layer.padding, layer.dilation,
                                           layer.groups, 1.0, 0, torch.float32, "none", [], "")
    if weight.zero_point is not None:
        window = _conv_weight_zero_point(layer, codes, act_zero_point)
        if correction is None:
            correction = (act_scale * weight.scale * weight.zero_point).reshape(1, -1, 1, 1)
        out.addcmul_(window, correction, value=-1)
    return out.contiguous()  # oneDNN answers channels-last; NCHW kept the tiny test models fast


def kernel_path(layer: QuantLayerMixin, x: torch.Tensor | None = None) -> str:
    """INTEGER if this call runs on the integer kernels, else why it runs the fake-quantized float path."""
    aq, wq = layer.act_quantizer, layer.weight_quantizer
    if not (aq.enabled and layer.quant_weights) or aq.observer is not None or layer.weight_override is not None:
        return "float: not fully quantized (calibration, weight-only or FP mode)"
    if not wq.ready:
        return "float: weights not calibrated"
    if wq.bits > 8:
        return f"float: {wq.bits}-bit weights do not fit int8"
    bits = aq.bits[aq.current_step()]
    if bits > 8:
        return f"float: {bits}-bit activations do not fit int8 (relaxed call)"
    conv = isinstance(layer, QuantConv2d)
    if x is not None and x.dtype != torch.float32 and conv:
        return f"float: {x.dtype} input (the integer convolution takes float32)"
    if x is not None and x.requires_grad and torch.is_grad_enabled():
        return "float: gradients wanted (the integer kernels have none)"
    if conv:
        if wq.scale.device.type != "cpu" or not _onednn():
            return "float: no int8 convolution here (oneDNN's runs on x86 CPUs; none on CUDA yet)"
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros" or layer.groups != 1:
            return "float: string padding, non-zero padding mode or grouped convolution"
    fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size) if conv else layer.in_features
    if fan_in * 255 * 255 >= 2**31:  # fan-in over ~33000: int32 could overflow
        return "float: fan-in too large for an exact int32 sum"
    return INTEGER


@functools.cache
def _onednn() -> bool:
    """Whether this torch has oneDNN's int8 convolution (x86 builds with mkldnn do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv_pointwise")


def integer_forward(layer: QuantLayerMixin, x: torch.Tensor) -> torch.Tensor:
    """The layer's forward on the integer kernels where ``kernel_path`` allows, else its own forward."""
    path = kernel_path(layer, x)
    layer.__dict__["kernel_path"] = path  # plain attribute: no nn.Module bookkeeping per call
    counts = layer.__dict__.get("_kernel_counts")
    if counts is not None:
        counts[path] += 1
    frozen = layer.__dict__.get("_int_weight")
    if path != INTEGER:
        if frozen is not None and frozen.frozen:
            return _dequantized_forward(layer, x, frozen)
        return type(layer).forward(layer, x)
    weight = _prepare(layer)
    step = _step_scales(layer, weight, layer.act_quantizer.current_step())
    conv = isinstance(layer, QuantConv2d)
    codes = _codes(x, step.inv_scale, step.zero_point, step.clamp, signed=not conv)
    operand = _kernel_codes(layer, weight)
    if conv:
        return integer_conv2d(layer, codes, step.zero_point, step.scale, weight, step.out_scale, operand)
    return integer_linear(codes, step.zero_point, step.out_scale, weight, layer.bias, operand).to(x.dtype)


def _dequantized_forward(layer: QuantLayerMixin, x: torch.Tensor, weight: IntWeight) -> torch.Tensor:
    """A frozen layer's call the kernels cannot run (a relaxed call): its weight dequantized from the
    codes for this call only, the activations fake-quantized at the call's bits, as the simulation does."""
    if not layer.quant_weights or layer.weight_override is not None:
        raise RuntimeError("This layer runs on the integer backend and released its float weight "
                           "(pcr.quantize(..., backend='integer')); it cannot run with float weights. "
                           "Load the pipeline again for another mode.")
    w = weight.dequantized(x.dtype)
    if isinstance(layer, QuantConv2d):
        return layer._conv_forward(layer.act_quantizer(x), w, layer.bias)
    return F.linear(layer.act_quantizer(x), w, layer.bias)


def use_integer_kernels(unet: nn.Module, enabled: bool = True, counts: Counter | None = None) -> int:
    """Make every QuantLinear/QuantConv2d of ``unet`` run the integer kernels (or stop); the number of
    layers switched. Done by an instance ``forward`` (layers.py is untouched); ``counts``, if given,
    tallies each call's kernel path."""
    layers = [m for m in quant_layers(unet).values() if isinstance(m, (QuantLinear, QuantConv2d))]
    if any(getattr(layer.__dict__.get("_int_weight"), "frozen", False) for layer in layers):
        raise RuntimeError("This UNet runs on the integer backend and holds only integer weights "
                           "(pcr.quantize(..., backend='integer')); its kernels cannot be switched.")
    for layer in layers:
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("_kernel_counts", None)
        layer.__dict__.pop("_int_weight", None)
        if enabled:
            layer.forward = types.MethodType(integer_forward, layer)
            layer.__dict__["_kernel_counts"] = counts
    return len(layers)


@contextmanager
def integer_kernels(unet: nn.Module) -> Iterator[Counter]:
    """Within the block the UNet's quantized layers run the integer kernels; yields a Counter of the
    kernel path of every layer call (e.g. to state in a cost report how many calls fell back)."""
    counts: Counter = Counter()
    use_integer_kernels(unet, True, counts)
    try:
        yield counts
    finally:
        use_integer_kernels(unet, False)
