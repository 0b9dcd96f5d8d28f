import pytest

from pcr.calibrate.weights import calibrate_weights
from pcr.pipelines import load_pipeline
from pcr.quant import QuantConfig, quantize_unet, unquantize_unet

PROMPTS = ["a red circle on the left", "two blue squares", "a small green triangle", "a cat"]


@pytest.fixture(params=["tiny-sd", "tiny-sdxl"])
def pipe(request):
    pipe = load_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def quantized(pipe):
    """A UNet quantized W4A8 with round-to-nearest weights and made-up per-step ranges."""
    config = QuantConfig(weight_bits=4, act_bits=8, num_steps=3)
    layers = quantize_unet(pipe.unet, config, num_calls=3)
    calibrate_weights(layers, "minmax", progress=False)
    for layer in layers.values():
        for step in range(3):
            layer.act_quantizer.set_step(step, *_range(step), 8)
    yield pipe, layers
    unquantize_unet(pipe.unet)


def _range(step):
    import torch

    return torch.tensor(-1.0 - step), torch.tensor(1.0 + step)
