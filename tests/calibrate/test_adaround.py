"""AdaRound/BRECQ: block reconstruction lowers each unit's output error below rounding to nearest."""

import pytest
import torch

from pcr.calibrate import calibrate
from pcr.calibrate.adaround import collect_unet_inputs, reconstruction_units
from pcr.quant import QuantConfig, quantize_unet, unquantize_unet
from pcr.quant.quantizer import qrange

PROMPTS = ["a red circle on the left", "two blue squares", "a small green triangle"]
CONFIG = QuantConfig(method="naive", weight_bits=3, act_bits=8, num_steps=3, guidance_scale=5.0, batch_size=2,
                     weight_method="adaround", weight_iters=60, weight_samples=6)


def test_units_are_blocks_and_leftover_layers_in_call_order(pipe):
    layers = quantize_unet(pipe.unet, CONFIG, num_calls=3)
    try:
        calls = collect_unet_inputs(pipe, PROMPTS, [0, 1, 2], CONFIG)
        assert sum(len(c[0]) for c in calls) == 6 * 2  # 6 (prompt, step) points, both guidance halves
        units = reconstruction_units(pipe.unet, layers, calls[0])
        kinds = {type(m).__name__ for _, m in units}
        assert {"ResnetBlock2D", "BasicTransformerBlock"} <= kinds
        covered = {n for n in layers if any(n == u or n.startswith(u + ".") for u, _ in units)}
        assert covered == set(layers)  # every quantized layer is in exactly one unit
        names = [u for u, _ in units]
        assert names.index("time_embedding.linear_1") < names.index("down_blocks.0.resnets.0")
        assert names.index("up_blocks.0.resnets.0") < names.index("up_blocks.0.attentions.0.transformer_blocks.0")
    finally:
        unquantize_unet(pipe.unet)


def test_reconstruction_beats_nearest_rounding(pipe):
    params = calibrate(pipe, PROMPTS, CONFIG, progress=False)
    errors = params.info["adaround_unit_error"]
    improved = [name for name, (nearest, adaround) in errors.items() if adaround < nearest]
    assert len(improved) > 0.7 * len(errors), errors
    total_nearest = sum(e[0] for e in errors.values())
    assert sum(e[1] for e in errors.values()) < total_nearest
    qmin, qmax = qrange(3, False)
    for tensors in params.layers.values():
        assert qmin <= int(tensors["weight_codes"].min()) and int(tensors["weight_codes"].max()) <= qmax


def test_it_is_deterministic(pipe):
    if "XL" in type(pipe).__name__:
        pytest.skip("determinism is a property of the loop, checked on tiny-sd (the other tests run SDXL's blocks)")
    config = CONFIG.replace(weight_iters=5)
    first = calibrate(pipe, PROMPTS[:2], config, progress=False)
    second = calibrate(pipe, PROMPTS[:2], config, progress=False)
    for name in first.layers:
        assert torch.equal(first.layers[name]["weight_codes"], second.layers[name]["weight_codes"])


def test_rows_are_picked_from_positional_and_keyword_inputs_alike():
    from pcr.calibrate.adaround import _rows

    args, kwargs = (torch.arange(5), torch.arange(5) * 10), {"temb": torch.arange(5) * 100, "flag": None}
    pick = torch.tensor([3, 1])
    picked_args, picked_kwargs = _rows(args, pick), _rows(kwargs, pick)
    assert picked_args[0].tolist() == [3, 1] and picked_args[1].tolist() == [30, 10]
    assert picked_kwargs["temb"].tolist() == [300, 100] and picked_kwargs["flag"] is None
