"""Swap a UNet's layers for quantized ones and back, and switch what is quantized.

Q-Diffusion's top level (the quantized model) without vendored model code: any diffusers UNet is
quantized in place by replacing its Linear/Conv2d modules (optimum-quanto's ``quantize``), and
``unquantize_unet`` puts the float modules back with their untouched parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from pcr.pipelines.steps import get_step_tracker
from pcr.quant.config import QuantConfig
from pcr.quant.layers import QuantLayerMixin, quant_class
from pcr.quant.select import quantizable_layers
from pcr.runtime import MODEL_BUILD_LOCK

__all__ = ["quantize_unet", "unquantize_unet", "quant_layers", "quant_mode", "is_quantized"]


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def quantize_unet(unet: nn.Module, config: QuantConfig, num_calls: int | None = None, *,
                  num_steps: int | None = None, cache_weights: bool = True) -> dict[str, QuantLayerMixin]:
    """Replace the UNet's quantizable layers with quantized ones (all quantization off until enabled),
    with one activation-parameter slot per UNet call of a sampling run (``count_unet_calls``;
    ``num_steps`` is this argument's old name, kept as an alias). ``cache_weights``: each layer keeps a
    dequantized copy of its weight once set (fast), or dequantizes it per call (less memory).

    The UNet needs a StepTracker (``pcr.pipelines.load_pipeline`` attaches one, or
    ``StepTracker.attach(pipe)``), because activation parameters are chosen by sampling step.
    """
    num_calls = num_steps if num_calls is None else num_calls
    if num_calls is None:
        raise TypeError("quantize_unet needs num_calls: the UNet calls of one sampling run")
    if is_quantized(unet):
        raise RuntimeError("This UNet is quantized already; call unquantize_unet(unet) first.")
    steps = get_step_tracker(unet)
    if steps is None:
        raise RuntimeError("The UNet has no StepTracker. Load the pipeline with pcr.pipelines.load_pipeline, "
                           "or call pcr.pipelines.StepTracker.attach(pipe) before quantizing.")
    args = dict(weight_bits=config.weight_bits, weight_symmetric=config.weight_symmetric,
                per_channel=config.weight_granularity == "channel", num_calls=num_calls,
                act_symmetric=config.act_symmetric, steps=steps, cache_weight=cache_weights)
    layers = {}
    with MODEL_BUILD_LOCK:  # new modules share the float parameters; see pcr.runtime
        for name, module in quantizable_layers(unet, config.keep_fp).items():
            layers[name] = quant_class(module).from_float(module, **args)
            _set_module(unet, name, layers[name])
    return layers


def unquantize_unet(unet: nn.Module) -> None:
    """Put the float layers back; their weights were never modified."""
    if any(layer.weight is None for layer in quant_layers(unet).values()):
        raise RuntimeError("This UNet runs on the integer backend (pcr.quantize(..., backend='integer')), which "
                           "released its float weights; load the pipeline again to get the float model.")
    with MODEL_BUILD_LOCK:
        for name, module in list(quant_layers(unet).items()):
            _set_module(unet, name, module.to_float())
    unet.__dict__.pop("pcr_calibration", None)  # set by pcr.quantize


def quant_layers(unet: nn.Module) -> dict[str, QuantLayerMixin]:
    return {name: m for name, m in unet.named_modules() if isinstance(m, QuantLayerMixin)}


def is_quantized(unet: nn.Module) -> bool:
    return any(isinstance(m, QuantLayerMixin) for m in unet.modules())


@contextmanager
def quant_mode(unet: nn.Module, weights: bool, acts: bool) -> Iterator[None]:
    """Within the block, quantize the weights and/or activations of every quantized layer."""
    layers = list(quant_layers(unet).values())
    previous = [(layer.quant_weights, layer.act_quantizer.enabled) for layer in layers]
    for layer in layers:
        layer.quant_weights, layer.act_quantizer.enabled = weights, acts
    try:
        yield
    finally:
        for layer, (w, a) in zip(layers, previous):
            layer.quant_weights, layer.act_quantizer.enabled = w, a
