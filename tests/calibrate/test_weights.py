"""Weight ranges: min-max covers the weight, the MSE search lowers each channel's error."""

import pytest
import torch

from pcr.calibrate.weights import calibrate_weights, weight_range
from pcr.quant import QuantConfig, quantize_unet, unquantize_unet


@pytest.fixture
def layers(pipe):
    layers = quantize_unet(pipe.unet, QuantConfig(weight_bits=4, num_steps=2), num_calls=2)
    yield layers
    unquantize_unet(pipe.unet)


def channel_error(layer):
    return (layer.weight_q - layer.weight).detach().pow(2).flatten(1).sum(1)


def test_minmax_covers_every_channel(layers):
    layer = next(iter(layers.values()))
    lo, hi = weight_range(layer, "minmax")
    flat = layer.weight.detach().flatten(1)
    assert lo.shape == (flat.shape[0],) and torch.equal(lo, flat.amin(1)) and torch.equal(hi, flat.amax(1))


def test_mse_search_never_loses_to_minmax_per_channel(layers):
    calibrate_weights(layers, "minmax", progress=False)
    minmax = {name: channel_error(layer) for name, layer in layers.items()}
    calibrate_weights(layers, "mse", progress=False)
    better = 0
    for name, layer in layers.items():
        err = channel_error(layer)
        assert (err <= minmax[name] + 1e-12).all(), name
        better += int((err < minmax[name]).any())
    assert better > len(layers) // 2


def test_per_tensor_granularity(pipe):
    layers = quantize_unet(pipe.unet, QuantConfig(weight_granularity="tensor", num_steps=2), num_calls=2)
    try:
        calibrate_weights(layers, "minmax", progress=False)
        layer = next(iter(layers.values()))
        assert layer.weight_quantizer.scale.dim() == 0
        assert len(torch.unique(layer.weight_q)) <= 2**8  # one grid for the whole tensor
    finally:
        unquantize_unet(pipe.unet)
