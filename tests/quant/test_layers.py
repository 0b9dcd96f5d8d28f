"""Quantized layers: swapped in and out of a diffusers UNet, switched per half, per-step parameters."""

import pytest
import torch
from torch import nn

from pcr.pipelines.sampling import sample_latents
from pcr.quant import QuantConfig, is_quantized, quant_mode, quantize_unet, unquantize_unet
from pcr.quant.layers import QuantConv2d, QuantLinear, StepCountError
from pcr.quant.quantizer import fake_quantize
from pcr.quant.select import quantizable_layers

PROMPTS = ["a red circle on the left", "two blue squares"]


def test_every_linear_and_conv_but_the_kept_ones_is_quantized(pipe):
    before = {n: type(m) for n, m in pipe.unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    layers = quantize_unet(pipe.unet, QuantConfig(num_steps=2), num_calls=2)
    assert set(layers) == set(before) - {"conv_in", "conv_out"}
    assert any(isinstance(m, QuantLinear) for m in layers.values())
    assert any(isinstance(m, QuantConv2d) for m in layers.values())
    assert type(pipe.unet.conv_in) is nn.Conv2d and type(pipe.unet.conv_out) is nn.Conv2d
    unquantize_unet(pipe.unet)
    assert not is_quantized(pipe.unet)
    assert {n: type(m) for n, m in pipe.unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))} == before


def test_keep_fp_patterns_and_typos(pipe):
    kept = quantizable_layers(pipe.unet, ("conv_in", "conv_out", "*attn2.to_k"))
    assert kept and not any(name.endswith("attn2.to_k") for name in kept)
    with pytest.raises(ValueError, match="conv_ni"):
        quantizable_layers(pipe.unet, ("conv_ni",))


def test_switched_off_it_is_the_float_model_exactly(pipe):
    reference = sample_latents(pipe, PROMPTS[:2], [0, 1], 3, 5.0)
    layers = quantize_unet(pipe.unet, QuantConfig(num_steps=3), num_calls=3)
    assert layers
    torch.testing.assert_close(sample_latents(pipe, PROMPTS[:2], [0, 1], 3, 5.0), reference, rtol=0, atol=0)
    unquantize_unet(pipe.unet)


def test_each_half_changes_the_output_and_both_restore(quantized):
    pipe, layers = quantized
    fp = sample_latents(pipe, PROMPTS[:2], [0, 1], 3, 5.0)
    outputs = {}
    for weights, acts in [(True, False), (False, True), (True, True)]:
        with quant_mode(pipe.unet, weights=weights, acts=acts):
            outputs[weights, acts] = sample_latents(pipe, PROMPTS[:2], [0, 1], 3, 5.0)
        assert (outputs[weights, acts] - fp).abs().max() > 1e-4
    torch.testing.assert_close(sample_latents(pipe, PROMPTS[:2], [0, 1], 3, 5.0), fp, rtol=0, atol=0)


def test_activations_use_the_parameters_of_the_current_step(quantized):
    pipe, layers = quantized
    name, layer = next((n, m) for n, m in layers.items() if isinstance(m, QuantLinear))
    seen = {}
    layer.register_forward_hook(lambda mod, args, out: seen.update(x=args[0].detach(), out=out.detach()))
    batch_prompts, seeds = PROMPTS[:1], [0]
    from pcr.pipelines.sampling import prepare_batch

    batch = prepare_batch(pipe, batch_prompts, seeds, 3, 5.0)
    with quant_mode(pipe.unet, weights=True, acts=True):
        for step in range(3):
            batch.model_output(pipe.unet, step)
            aq = layer.act_quantizer
            x_q = fake_quantize(seen["x"], aq.scale[step], aq.zero_point[step], 8, False)
            expected = torch.nn.functional.linear(x_q, layer.weight_q, layer.bias)
            torch.testing.assert_close(seen["out"], expected, rtol=0, atol=0)
            batch.advance(step, batch.model_output(pipe.unet, step))


def test_another_step_count_is_a_clear_error(quantized):
    pipe, _ = quantized
    with quant_mode(pipe.unet, weights=True, acts=True), pytest.raises(StepCountError, match="calibrated for 3"):
        pipe(PROMPTS[0], num_inference_steps=4, guidance_scale=5.0)


def test_weights_stay_shared_with_the_float_model(pipe):
    weight = pipe.unet.down_blocks[0].resnets[0].conv1.weight
    quantize_unet(pipe.unet, QuantConfig(num_steps=2), num_calls=2)
    assert pipe.unet.down_blocks[0].resnets[0].conv1.weight is weight
    unquantize_unet(pipe.unet)
    assert pipe.unet.down_blocks[0].resnets[0].conv1.weight is weight


def test_quantizing_twice_or_without_a_step_tracker_is_refused(pipe):
    quantize_unet(pipe.unet, QuantConfig(num_steps=2), num_calls=2)
    with pytest.raises(RuntimeError, match="quantized already"):
        quantize_unet(pipe.unet, QuantConfig(num_steps=2), num_calls=2)
    unquantize_unet(pipe.unet)
    from pcr.pipelines import get_step_tracker

    get_step_tracker(pipe.unet).detach()
    with pytest.raises(RuntimeError, match="StepTracker"):
        quantize_unet(pipe.unet, QuantConfig(num_steps=2), num_calls=2)
