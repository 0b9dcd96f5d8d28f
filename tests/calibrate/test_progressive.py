"""One-pass progressive calibration equals the reference's re-run form; methods differ where they should."""

import pytest
import torch

from pcr.calibrate.progressive import calibrate_activations, calibrate_progressive_rerun, observed_steps
from pcr.calibrate.weights import calibrate_weights
from pcr.quant import QuantConfig, quantize_unet, unquantize_unet

PROMPTS = ["a red circle on the left", "two blue squares", "a small green triangle", "a cat on a mat", "sunset"]
SEEDS = [0, 1, 2, 3, 4]
STEPS = 4


def config(**changes):
    base = QuantConfig(weight_bits=4, act_bits=4, num_steps=STEPS, guidance_scale=5.0, batch_size=2)
    return base.replace(**changes)


@pytest.fixture
def layers(pipe):
    layers = quantize_unet(pipe.unet, config(), num_calls=STEPS)
    calibrate_weights(layers, "minmax", progress=False)
    yield layers
    unquantize_unet(pipe.unet)


def act_params(layers):
    return {name: (layer.act_quantizer.scale.clone(), layer.act_quantizer.zero_point.clone())
            for name, layer in layers.items()}


@pytest.mark.parametrize("observer", ["ema", "minmax"])
def test_one_pass_equals_the_rerun_form(pipe, layers, observer):
    cfg = config(method="progressive", observer=observer, relax_steps=(1,))
    act_bits = cfg.act_bits_per_step(STEPS)
    info = calibrate_activations(pipe, layers, PROMPTS, SEEDS, cfg, act_bits, progress=False)
    one_pass = act_params(layers)
    assert info["act_unet_calls"] == 2 * STEPS * 3  # 3 batches: observe + advance at every step
    rerun = calibrate_progressive_rerun(pipe, layers, PROMPTS, SEEDS, cfg, act_bits, progress=False)
    assert rerun["act_unet_calls"] == sum(i + 1 for i in range(STEPS)) * 3
    for name, (scale, zero_point) in act_params(layers).items():
        torch.testing.assert_close(one_pass[name][0], scale, rtol=1e-6, atol=0)
        assert torch.equal(one_pass[name][1], zero_point), name


def test_progressive_differs_from_perstep_only_after_the_first_step(pipe, layers):
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(method="perstep"), [4] * STEPS, progress=False)
    perstep = act_params(layers)
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, config(method="progressive"), [4] * STEPS, progress=False)
    progressive = act_params(layers)
    # step 0 sees x_T in both; later steps see the quantized trajectory in progressive only
    assert all(torch.equal(perstep[n][0][0], progressive[n][0][0]) for n in layers)
    assert any(not torch.equal(perstep[n][0][1:], progressive[n][0][1:]) for n in layers)


def test_shared_methods_give_one_range_for_all_steps(pipe, layers):
    cfg = config(method="naive", relax_steps=(3,))
    calibrate_activations(pipe, layers, PROMPTS, SEEDS, cfg, cfg.act_bits_per_step(STEPS), progress=False)
    for layer in layers.values():
        ranges = layer.act_quantizer.range
        assert torch.equal(ranges[0], ranges[1]) and torch.equal(ranges[0], ranges[3])
        assert layer.act_quantizer.bits == [4, 4, 4, 10]
        assert layer.act_quantizer.scale[3] < layer.act_quantizer.scale[0]  # more levels in the same range


def test_observed_steps_per_method():
    timesteps = [999, 749, 499, 249, 0][:STEPS]
    assert observed_steps(config(method="naive"), timesteps, 1000) == {i: 1 for i in range(STEPS)}
    assert observed_steps(config(method="qdiff", uniform_steps=2), timesteps, 1000) == {0: 1, 3: 1}
    many = [int(t) for t in torch.linspace(999, 0, 50)]
    drawn = observed_steps(config(method="ptq4dm", ptq4dm_draws=2000, num_steps=50), many, 1000)
    assert sum(drawn.values()) == 2000
    late = sum(c for s, c in drawn.items() if s >= 25)
    assert late > 0.55 * 2000  # skewed toward x_0 (uniform draws would give 0.5; t < T/2 is the second half)
    assert drawn == observed_steps(config(method="ptq4dm", ptq4dm_draws=2000, num_steps=50), many, 1000)
