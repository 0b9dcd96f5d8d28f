"""Quantized Linear and Conv2d: the float layer's own parameters, a weight quantizer, and an input
(activation) quantizer with one (scale, zero point, bits) per sampling step.

Q-Diffusion's middle level (quantized layer), written as optimum-quanto writes it: a mixin before
the torch class, a registry from float class to quantized class, and each wrapper only a
from-float constructor and ``forward``. The float weight is shared, not copied, so unquantizing
restores the original model exactly; the quantized weight is cached once its codes are set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcr.quant.quantizer import affine_params, code_dtype, dequantize, fake_quantize

__all__ = ["ActQuantizer", "WeightQuantizer", "QuantLayerMixin", "QuantLinear", "QuantConv2d", "quant_class"]

_REGISTRY: dict[type[nn.Module], type[nn.Module]] = {}


class StepCountError(RuntimeError):
    """Per-step parameters used with another number of sampling steps than they were calibrated for."""


class WeightQuantizer(nn.Module):
    """Integer codes of a weight with per-output-channel (axis 0) or per-tensor scale and zero point."""

    def __init__(self, shape: torch.Size, bits: int, symmetric: bool, per_channel: bool):
        super().__init__()
        self.bits, self.symmetric = bits, symmetric
        self.axis = 0 if per_channel else None
        channels = (shape[0],) if per_channel else ()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("codes", torch.zeros(shape, dtype=code_dtype(bits, symmetric)))
        self.ready = False

    def set(self, scale: torch.Tensor, zero_point: torch.Tensor, codes: torch.Tensor) -> None:
        self.scale = scale.to(self.scale.device, torch.float32).reshape(self.scale.shape)
        self.zero_point = zero_point.to(self.zero_point.device, torch.int32).reshape(self.zero_point.shape)
        self.codes = codes.to(self.codes.device, self.codes.dtype).reshape(self.codes.shape)
        self.ready = True

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero_point, self.axis, dtype)


class ActQuantizer(nn.Module):
    """Per-tensor quantizer of a layer's input, with its parameters chosen by the current UNet call of
    the sampling run (one slot per call; see pcr.pipelines.steps for calls vs steps).

    ``steps`` is the UNet's StepTracker. While ``observer`` is set, inputs are passed to it first
    (calibration); while ``enabled`` is False, inputs pass through unquantized. ``num_steps`` is the
    num_inference_steps the slots were calibrated for (None: not known, only the call count is checked).
    """

    def __init__(self, num_calls: int, symmetric: bool, steps, step_dependent: bool = True):
        super().__init__()
        self.symmetric = symmetric
        self.steps = steps
        self.step_dependent = step_dependent  # False: same parameters at every call, any step count
        self.num_steps: int | None = None
        self.register_buffer("scale", torch.ones(num_calls))
        self.register_buffer("zero_point", torch.zeros(num_calls, dtype=torch.int32))
        self.register_buffer("range", torch.zeros(num_calls, 2))  # observed (lo, hi), for analysis
        self.bits = [8] * num_calls
        self.enabled = False
        self.observer = None

    @property
    def num_calls(self) -> int:
        return len(self.bits)

    def current_step(self) -> int:
        """The slot of this UNet call; a run with another call count is an error naming both step counts."""
        step, num_calls = self.steps.step, self.steps.num_calls
        if step is None:
            raise RuntimeError("A quantized UNet was called outside a sampling run; wrap the call in "
                               "`with get_step_tracker(unet).at(step):`.")
        if num_calls is not None and num_calls != self.num_calls:
            if not self.step_dependent:
                return 0
            raise StepCountError(self._mismatch(num_calls, self.steps.num_steps))
        return step

    def _mismatch(self, num_calls: int, num_steps: int | None) -> str:
        calibrated = (f"num_inference_steps={self.num_steps} ({self.num_calls} UNet calls)" if self.num_steps
                      else f"{self.num_calls} UNet calls")
        running = (f"num_inference_steps={num_steps} ({num_calls} UNet calls)" if num_steps
                   else f"{num_calls} UNet calls")
        if num_steps is not None and num_steps == self.num_steps:
            return (f"These activation parameters were calibrated for {calibrated}, but the pipeline runs "
                    f"{running}: the same step count with another scheduler. Use the scheduler they were "
                    "calibrated with, or recalibrate.")
        advice = (f"Call it with num_inference_steps={self.num_steps}, or calibrate for {num_steps} steps."
                  if self.num_steps and num_steps else "Run the step count they were calibrated for, or recalibrate.")
        return (f"These activation parameters were calibrated for {calibrated}, but the pipeline runs {running}. "
                f"{advice}")

    def set_step(self, step: int, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> None:
        """Fix one step's (scale, zero point) from a range, at ``bits`` bits (relaxed steps get more)."""
        lo, hi = lo.detach(), hi.detach()  # written into buffers: no autograd graph kept alive with them
        scale, zero_point = affine_params(lo, hi, bits, self.symmetric)
        self.scale[step] = scale.to(self.scale.device)
        self.zero_point[step] = zero_point.to(self.zero_point.device)
        self.range[step] = torch.stack([lo.float(), hi.float()]).to(self.range.device)
        self.bits[step] = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled and self.observer is None:
            return x  # off: no step needed (weight reconstruction calls blocks outside a sampling run)
        step = self.current_step()
        if self.observer is not None:
            self.observer(x, step)
        if not self.enabled:
            return x
        return fake_quantize(x, self.scale[step:step + 1], self.zero_point[step:step + 1], self.bits[step],
                             self.symmetric)


class QuantLayerMixin:
    """What Linear and Conv2d share once quantized; ``quant_weights``/``act_quantizer.enabled`` switch
    each half on and off, so one model serves as FP, weight-only and fully quantized."""

    weight: nn.Parameter

    def init_quantizers(self, weight_bits: int, weight_symmetric: bool, per_channel: bool, num_calls: int,
                        act_symmetric: bool, steps, step_dependent: bool = True, cache_weight: bool = True) -> None:
        mro = type(self).__mro__
        if not isinstance(self, nn.Module) or mro.index(QuantLayerMixin) > mro.index(nn.Module):
            raise TypeError(f"{type(self).__name__}: QuantLayerMixin must come before the torch layer class.")
        self.weight_quantizer = WeightQuantizer(self.weight.shape, weight_bits, weight_symmetric, per_channel)
        self.act_quantizer = ActQuantizer(num_calls, act_symmetric, steps, step_dependent)
        self.quant_weights = False
        self.weight_override = None
        # Keep a dequantized copy of the weight for fast simulated inference (pcr.quantize). Calibration
        # turns it off: with the float weight and the codes beside it, the copy made calibration peak at
        # 2x the FP model's memory at SD 1.5 scale; without it the weight is dequantized per call.
        self.cache_weight = cache_weight
        # the cached copy: a buffer so .to() moves it, not saved (codes are)
        self.register_buffer("weight_q", None, persistent=False)

    def set_weight(self, scale: torch.Tensor, zero_point: torch.Tensor, codes: torch.Tensor) -> None:
        """Fix the weight's codes (and cache their dequantized weight if ``cache_weight``)."""
        self.weight_quantizer.set(scale, zero_point, codes)
        self.weight_q = (self.weight_quantizer.dequantized(self.weight.dtype).to(self.weight.device)
                         if self.cache_weight else None)

    def effective_weight(self) -> torch.Tensor:
        if self.weight_override is not None:  # AdaRound's soft-rounded weight while it is optimised
            return self.weight_override()
        if not self.quant_weights:
            return self.weight
        if self.weight_q is not None:
            return self.weight_q
        if not self.weight_quantizer.ready:
            raise RuntimeError("Weight quantization is on but the weights are not calibrated yet.")
        return self.weight_quantizer.dequantized(self.weight.dtype)

    @classmethod
    def from_float(cls, module: nn.Module, **quantizer_args) -> nn.Module:
        raise NotImplementedError

    def to_float(self) -> nn.Module:
        raise NotImplementedError


def register(float_class: type[nn.Module]):
    def wrap(quant_class: type[nn.Module]):
        _REGISTRY[float_class] = quant_class
        return quant_class

    return wrap


def quant_class(module: nn.Module) -> type[nn.Module]:
    """The quantized class for a float module's exact class (subclasses are not guessed at)."""
    try:
        return _REGISTRY[type(module)]
    except KeyError:
        raise TypeError(f"No quantized version of {type(module).__name__}; pcr quantizes "
                        f"{[c.__name__ for c in _REGISTRY]}.") from None


@register(nn.Linear)
class QuantLinear(QuantLayerMixin, nn.Linear):
    @classmethod
    def from_float(cls, module: nn.Linear, **quantizer_args) -> QuantLinear:
        layer = cls(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        layer.weight, layer.bias = module.weight, module.bias  # shared, not copied
        layer.init_quantizers(**quantizer_args)
        return layer.to(module.weight.device)

    def to_float(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        layer.weight, layer.bias = self.weight, self.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quantizer(x), self.effective_weight(), self.bias)


@register(nn.Conv2d)
class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    _ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")

    @classmethod
    def from_float(cls, module: nn.Conv2d, **quantizer_args) -> QuantConv2d:
        args = {name: getattr(module, name) for name in cls._ARGS}
        layer = cls(**args, bias=module.bias is not None, device="meta")
        layer.weight, layer.bias = module.weight, module.bias
        layer.init_quantizers(**quantizer_args)
        return layer.to(module.weight.device)

    def to_float(self) -> nn.Conv2d:
        layer = nn.Conv2d(**{name: getattr(self, name) for name in self._ARGS}, bias=self.bias is not None,
                          device="meta")
        layer.weight, layer.bias = self.weight, self.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_quantizer(x), self.effective_weight(), self.bias)
