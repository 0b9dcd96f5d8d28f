"""The integer backend's model: quantized layers that keep only integer weights and run the integer kernels.

optimum-quanto's ``freeze`` step for pcr: once parameters are applied, each quantized Linear and Conv2d
keeps its weight as int8 codes (oneDNN's packed form for a CPU convolution; codes of 4 bits or fewer
packed two per byte and unpacked per call) and releases its float weight, its dequantized copy and
the quantizer's own codes. Calls the kernels cannot run (relaxed 10-bit activations, a convolution on
CUDA) dequantize the weight from the codes for that call. A frozen model cannot go back to full
precision: load the pipeline again.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from pcr.quant.integer import prepare_weight, use_integer_kernels
from pcr.quant.model import quant_layers

__all__ = ["freeze_integer", "is_frozen", "weight_bytes"]


def freeze_integer(unet: nn.Module, pack: bool = True) -> Counter:
    """Switch ``unet``'s quantized layers (parameters applied) to the integer kernels and release their
    float weights; returns the Counter the layers tally each call's kernel path in (``kernel_path``).
    ``pack=False`` keeps codes of 4 bits or fewer as int8 too: twice the memory, but no unpacking
    and, for a convolution, no oneDNN packing per call. SD 1.5 W4A8 ran 1.17-1.5x faster than float32
    packed, W8A8 2.8x (benchmarks/integer_kernels.py)."""
    counts: Counter = Counter()
    use_integer_kernels(unet, True, counts)
    for layer in quant_layers(unet).values():
        wq = layer.weight_quantizer
        if wq.bits > 8 or not wq.ready:
            continue  # no int8 form: the layer keeps its float weight and the simulated path
        weight = prepare_weight(layer, pack=pack)
        weight.frozen, weight.source = True, ()  # the source would keep the quantizer's codes alive
        layer.__dict__["_int_weight"] = weight
        layer.weight = None  # the float parameter, shared with nothing once the float layer was replaced
        layer.weight_q = None
        wq.codes = torch.empty(0, dtype=wq.codes.dtype, device=wq.codes.device)
    return counts


def is_frozen(layer: nn.Module) -> bool:
    weight = layer.__dict__.get("_int_weight")
    return weight is not None and weight.frozen


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by ``module``'s parameters and buffers and its frozen layers' integer weights, each
    storage counted once (shared float weights are not counted twice)."""
    seen, total = set(), 0
    tensors = [*module.parameters(), *module.buffers()]
    tensors += [t for m in module.modules() if is_frozen(m) for t in m.__dict__["_int_weight"].tensors()]
    for t in tensors:
        if t.is_mkldnn:  # oneDNN's packed weight: no storage to share
            total += _nbytes(t)
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total
