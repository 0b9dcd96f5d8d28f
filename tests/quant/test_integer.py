"""The integer kernels equal the fake-quantized path up to float rounding.

Both paths use the same integer codes, so the integer accumulator is the exact sum the fake path
computes in float. The bound is stated in units of one accumulator integer (s_a * s_w[channel]): a
difference under half a unit means both paths hold the same integer sum. Measured: at most 0.10
units (3x3 convolutions at W8A8, K = 216), 0.04 for Linear, 0.006 at W4A8; at most 4e-7 of the
largest output everywhere.
"""

import dataclasses
import types

import pytest
import torch
from torch import nn

from pcr.calibrate.weights import round_to_nearest, weight_range
from pcr.pipelines.sampling import sample_latents
from pcr.quant import quant_mode
from pcr.quant.integer import (
    INTEGER,
    _prepare,
    activation_codes,
    integer_forward,
    integer_kernels,
    integer_linear,
    kernel_path,
    pad_for_int_mm,
    use_integer_kernels,
)
from pcr.quant.layers import QuantConv2d, QuantLinear

UNITS = 0.5  # max |integer - fake| / (s_a * s_w[channel]): under half an integer, the two sums are equal
RELATIVE = 2e-6  # max |integer - fake| / max |fake|
LAYERS = {
    "linear-2d": (lambda: nn.Linear(64, 48), (37, 64)),
    "linear-3d": (lambda: nn.Linear(64, 48, bias=False), (2, 19, 64)),
    "linear-odd": (lambda: nn.Linear(61, 45), (5, 61)),
    "conv3x3-s1": (lambda: nn.Conv2d(24, 40, 3, 1, 1), (2, 24, 11, 9)),
    "conv3x3-s2": (lambda: nn.Conv2d(24, 40, 3, 2, 1, bias=False), (2, 24, 11, 9)),
    "conv1x1": (lambda: nn.Conv2d(24, 40, 1), (2, 24, 8, 8)),
}


def quant_layer(name: str, bits: int, weight_symmetric: bool, act_symmetric: bool = False, per_channel: bool = True,
                act_bits: int = 8):
    """A quantized layer with round-to-nearest ``bits``-bit weights, call 0 at ``act_bits`` and call 1
    relaxed to 10 bits."""
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    module = make()
    steps = types.SimpleNamespace(step=0, num_calls=None, num_steps=None)
    cls = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
    layer = cls.from_float(module, weight_bits=bits, weight_symmetric=weight_symmetric, per_channel=per_channel,
                           num_calls=2, act_symmetric=act_symmetric, steps=steps)
    round_to_nearest(layer, *weight_range(layer, "minmax"))
    layer.act_quantizer.set_step(0, torch.tensor(-1.7), torch.tensor(2.9), act_bits)
    layer.act_quantizer.set_step(1, torch.tensor(-1.7), torch.tensor(2.9), 10)
    layer.quant_weights, layer.act_quantizer.enabled = True, True
    return layer, torch.randn(shape) * 1.5, steps


def assert_equal_up_to_rounding(layer, out, fake):
    unit = layer.act_quantizer.scale[0] * layer.weight_quantizer.scale.expand(fake.shape[1 if fake.dim() == 4 else -1])
    unit = unit.reshape(-1, 1, 1) if fake.dim() == 4 else unit
    assert out.shape == fake.shape and out.dtype == fake.dtype
    assert ((out - fake).abs() / unit).max() < UNITS
    assert (out - fake).abs().max() < RELATIVE * fake.abs().max()


@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (4, 4)], ids=["W8A8", "W4A8", "W4A4"])
@pytest.mark.parametrize("weight_symmetric", [False, True], ids=["asym-w", "sym-w"])
@pytest.mark.parametrize("name", list(LAYERS))
@torch.no_grad()
def test_integer_layer_equals_the_fake_quantized_layer(name, weight_symmetric, bits):
    layer, x, _ = quant_layer(name, bits[0], weight_symmetric, act_bits=bits[1])
    fake = layer(x)
    out = integer_forward(layer, x)
    assert layer.kernel_path == INTEGER
    # 8-bit asymmetric weight codes do not fit int8 once centred: they take the zero-point correction
    assert (_prepare(layer).zero_point is not None) == (bits[0] == 8 and not weight_symmetric)
    assert_equal_up_to_rounding(layer, out, fake)


@torch.no_grad()
def test_new_weight_codes_are_used():
    """The prepared int8 weight follows recalibration (it is rebuilt from the quantizer's codes)."""
    layer, x, _ = quant_layer("conv1x1", 8, weight_symmetric=True)
    integer_forward(layer, x)
    wq = layer.weight_quantizer
    layer.set_weight(wq.scale * 2, wq.zero_point, wq.codes.flip(0))
    assert_equal_up_to_rounding(layer, integer_forward(layer, x), layer(x))


@pytest.mark.parametrize("name", ["linear-3d", "conv3x3-s1"])
@torch.no_grad()
def test_symmetric_activations_and_per_tensor_weights(name):
    layer, x, _ = quant_layer(name, 8, weight_symmetric=False, act_symmetric=True, per_channel=False)
    assert_equal_up_to_rounding(layer, integer_forward(layer, x), layer(x))


def test_padding_for_cuda_shapes_changes_nothing():
    """CUDA's _int_mm wants sizes that are multiples of 8: the zero-padded weight, run here on the CPU
    (which pads the activations to match), gives the same output bit for bit."""
    layer, x, _ = quant_layer("linear-odd", 8, weight_symmetric=False)
    aq = layer.act_quantizer
    codes, zero_point = activation_codes(x, aq.scale[0:1], int(aq.zero_point[0]), 8, False, signed=True)
    weight = _prepare(layer)
    padded = dataclasses.replace(weight, codes=pad_for_int_mm(weight.codes))
    assert padded.codes.shape == (48, 64)
    out_scale = aq.scale[0] * weight.scale
    plain = integer_linear(codes, zero_point, out_scale, weight, layer.bias)
    torch.testing.assert_close(integer_linear(codes, zero_point, out_scale, padded, layer.bias), plain,
                               rtol=0, atol=0)
    assert_equal_up_to_rounding(layer, plain, layer(x))
    # a frozen layer's fallback dequantizes the padded codes to the simulated weight, bit for bit
    assert torch.equal(padded.dequantized(torch.float32), layer.effective_weight())


def test_a_relaxed_10_bit_call_runs_the_fake_quantized_path():
    layer, x, steps = quant_layer("conv3x3-s1", 8, weight_symmetric=False)
    steps.step = 1
    assert kernel_path(layer).startswith("float: 10-bit activations")
    torch.testing.assert_close(integer_forward(layer, x), layer(x), rtol=0, atol=0)
    assert layer.kernel_path == kernel_path(layer)


@pytest.mark.parametrize("case", ["weight-only", "gradients"])
def test_other_calls_the_kernels_cannot_run_take_the_float_path(case):
    layer, x, _ = quant_layer("linear-2d", 8, weight_symmetric=True)
    if case == "weight-only":
        layer.act_quantizer.enabled = False
    else:
        x.requires_grad_(True)
    out = integer_forward(layer, x)
    assert layer.kernel_path.startswith("float: ")
    torch.testing.assert_close(out, layer(x), rtol=0, atol=0)


def one_ulp_noise(layers) -> list:
    """Hooks that change every quantized layer's output by ~1 float32 ulp (seeded): what another float
    accumulation order does to the fake-quantized path."""
    generator = torch.Generator().manual_seed(1)

    def hook(module, args, out):
        return out * (1 + 1.2e-7 * torch.randn(out.shape, generator=generator))

    return [layer.register_forward_hook(hook) for layer in layers.values()]


def test_a_tiny_unet_samples_the_same_latents(quantized):
    """W4A8 tiny SD and SDXL, 3 steps, call 2 relaxed to 10 bits. One-ulp differences flip activation
    codes downstream (a code rounds the other way), so the sampled latents differ by as much as the fake
    path differs from itself under one-ulp noise. Measured, max (mean) |difference|: tiny-sd 0.25
    (0.043) vs noise 0.21 (0.041), tiny-sdxl 0.20 (0.039) vs 0.29 (0.040); mean |latent| ~2.6. The
    bound is that noise level, times 3."""
    pipe, layers = quantized
    for layer in layers.values():
        layer.act_quantizer.set_step(2, torch.tensor(-3.0), torch.tensor(3.0), 10)
    args = (["a red circle on the left", "a cat"], [0, 1], 3, 5.0)
    with quant_mode(pipe.unet, weights=True, acts=True):
        fake = sample_latents(pipe, *args)
        hooks = one_ulp_noise(layers)
        noisy = sample_latents(pipe, *args)
        for hook in hooks:
            hook.remove()
        with integer_kernels(pipe.unet) as counts:
            out = sample_latents(pipe, *args)
    relaxed = "float: 10-bit activations do not fit int8 (relaxed call)"
    assert counts == {INTEGER: 2 * len(layers), relaxed: len(layers)}
    assert "forward" not in vars(next(iter(layers.values())))  # switched back
    for stat in (torch.amax, torch.mean):
        difference, noise = stat((out - fake).abs()).item(), stat((noisy - fake).abs()).item()
        print(f"{type(pipe).__name__}: {stat.__name__} |integer - fake| {difference:.3g}, "
              f"|one-ulp noise| {noise:.3g}")
        assert difference < 3 * noise


def test_the_switch_counts_layers_and_is_undone(quantized):
    pipe, layers = quantized
    assert use_integer_kernels(pipe.unet) == len(layers)
    assert all("forward" in vars(layer) for layer in layers.values())
    use_integer_kernels(pipe.unet, enabled=False)
    assert not any("forward" in vars(layer) for layer in layers.values())
