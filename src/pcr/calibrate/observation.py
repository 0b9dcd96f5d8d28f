"""Observing one UNet call's activations under a chosen observation (``observe_weights``/``observe_acts``).

What a layer's observed input contains depends on what the rest of the model quantizes while it is
observed: the weights (fp | quantized) and the activations upstream of the layer in the same call:
- fp: upstream activations unquantized;
- first_pass: upstream activations fake-quantized with the call's current parameters (the reference
  code's progressive pass, whose current parameters come from a first pass on the FP model);
- sequential: layers fixed in call order within the call, each observed with every upstream layer
  already quantized with its final parameters of that call.

Sequential observation fixes each layer the moment it has seen its input, so every calibration
prompt must reach the layer in the same forward: the call's batches are concatenated into one UNet
call (its memory grows with the prompts), and each observer is still fed batch by batch, so EMA
and histogram observers see what they would see one batch at a time.
``observe_layer_by_layer`` is that definition written out (one merged UNet call per layer, the
same batch shapes, so the same float sums: upstream codes flip on differences of 1e-7 otherwise): it
checks the one-call form and costs L times more.
"""

from __future__ import annotations

import torch

from pcr.calibrate.observers import make_observer
from pcr.pipelines.sampling import DenoisingBatch
from pcr.pipelines.steps import get_step_tracker
from pcr.quant.config import QuantConfig
from pcr.quant.integrity import check_act_ranges
from pcr.quant.layers import QuantLayerMixin
from pcr.quant.model import quant_mode

__all__ = ["call_order", "check_observed", "fix_step", "new_observers", "observe_call", "observe_layer_by_layer"]


def new_observers(layers: dict[str, QuantLayerMixin], config: QuantConfig) -> dict:
    return {name: make_observer(config.act_observer, config.ema_momentum, config.percentile) for name in layers}


def fix_step(layers: dict[str, QuantLayerMixin], observers: dict, step: int, bits: int, symmetric: bool) -> None:
    for name, layer in layers.items():
        layer.act_quantizer.set_step(step, *observers[name].range(bits, symmetric), bits)


def observe_call(unet, layers: dict[str, QuantLayerMixin], batches: list[DenoisingBatch], step: int,
                 observers: dict, config: QuantConfig, bits: int, weight: float = 1.0) -> None:
    """Every batch's UNet call at ``step`` feeds ``observers`` under ``config``'s observation.
    With sequential observation the call's parameters are fixed here; otherwise the caller fixes them."""
    weights_on = config.weight_observation == "quantized"
    acts = config.act_observation
    if acts == "sequential":
        hooks = {name: _fix_on_sight(layer, observers[name], step, bits, _unet_rows(batches), weight)
                 for name, layer in layers.items()}
    else:
        hooks = {name: (lambda x, _step, o=observers[name]: o.update(x, weight)) for name in layers}
    for name, layer in layers.items():
        layer.act_quantizer.observer = hooks[name]
    try:
        with quant_mode(unet, weights=weights_on, acts=acts != "fp"):
            if acts == "sequential":
                _merged_call(unet, batches, step)
            else:
                for batch in batches:
                    batch.model_output(unet, step)
    finally:
        for layer in layers.values():
            layer.act_quantizer.observer = None
    check_observed(observers, batches, step)


def check_observed(observers: dict, batches: list[DenoisingBatch], step: int) -> None:
    """Stop at the UNet call whose activations were NaN or inf, naming the layers (NonFiniteError)."""
    check_act_ranges({name: o.extremes() for name, o in observers.items()}, step, batches[0].num_calls,
                     batches[0].scheduler.timesteps[step])


def _fix_on_sight(layer: QuantLayerMixin, observer, step: int, bits: int, rows: list[int], weight: float):
    """The observer hook of sequential observation: feed the observer one batch's rows at a time, then
    fix the layer's parameters before its input is quantized with them."""
    quantizer = layer.act_quantizer

    def hook(x: torch.Tensor, _step: int) -> None:
        for part in x.split(rows):
            observer.update(part, weight)
        quantizer.set_step(step, *observer.range(bits, quantizer.symmetric), bits)

    return hook


def _unet_rows(batches: list[DenoisingBatch]) -> list[int]:
    """Each batch's rows of the merged UNet input (guided batches: unconditional and conditional)."""
    return [len(batch.latents) * (2 if batch.guided else 1) for batch in batches]


def _merged_call(unet, batches: list[DenoisingBatch], step: int) -> None:
    """One UNet call over every batch's inputs at ``step`` (rows in batch order)."""
    inputs = [batch.unet_inputs(step) for batch in batches]
    sample = torch.cat([s for s, _, _ in inputs])
    kwargs = _cat_kwargs([k for _, _, k in inputs])
    with get_step_tracker(unet).at(step, batches[0].num_calls, batches[0].num_steps):
        unet(sample, inputs[0][1], **kwargs)


def _cat_kwargs(per_batch: list):
    first = per_batch[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(per_batch)
    if isinstance(first, dict):
        return {key: _cat_kwargs([k[key] for k in per_batch]) for key in first}
    return first


def call_order(unet, layers: dict[str, QuantLayerMixin], batch: DenoisingBatch, step: int) -> list[str]:
    """The quantized layers in the order one UNet call reaches them."""
    order: list[str] = []
    for name, layer in layers.items():
        layer.act_quantizer.observer = lambda x, _step, n=name: order.append(n) if n not in order else None
    try:
        with quant_mode(unet, weights=False, acts=False):
            batch.model_output(unet, step)
    finally:
        for layer in layers.values():
            layer.act_quantizer.observer = None
    return order


def observe_layer_by_layer(unet, layers: dict[str, QuantLayerMixin], batches: list[DenoisingBatch], step: int,
                           config: QuantConfig, bits: int) -> None:
    """Sequential observation by its definition: for each layer in call order, the step's UNet call with
    the layers before it fixed and quantized, then fix the layer."""
    weights_on = config.weight_observation == "quantized"
    rows = _unet_rows(batches)
    for name in call_order(unet, layers, batches[0], step):
        observer = new_observers({name: layers[name]}, config)[name]
        quantizer = layers[name].act_quantizer
        quantizer.observer = lambda x, _step, o=observer: [o.update(part) for part in x.split(rows)]
        try:
            with quant_mode(unet, weights=weights_on, acts=True):
                _merged_call(unet, batches, step)
        finally:
            quantizer.observer = None
        check_observed({name: observer}, batches, step)
        quantizer.set_step(step, *observer.range(bits, quantizer.symmetric), bits)
