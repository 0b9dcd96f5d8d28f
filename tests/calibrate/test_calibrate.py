"""calibrate(pipe, prompts, config): every method, on tiny SD, tiny SDXL and the toy model."""

import pytest
import torch

import pcr
from pcr.calibrate import calibrate
from pcr.pipelines import load_pipeline
from pcr.pipelines.sampling import sample_latents
from pcr.quant import ConfigError, QuantConfig, quant_mode, unquantize_unet
from pcr.quant.config import ACT_METHODS

PROMPTS = ["a red circle on the left", "two blue squares", "a small green triangle", "a cat"]
SEEDS = [10, 11]
EVAL = ["a large blue circle at the top", "a gray square"]


def quantized_error(pipe, params) -> float:
    """Mean squared error of the final latents against the FP model on held-out prompts."""
    fp = sample_latents(pipe, EVAL, SEEDS, params.num_steps, params.config.guidance_scale)
    pcr.quantize(pipe, params)
    try:
        out = sample_latents(pipe, EVAL, SEEDS, params.num_steps, params.config.guidance_scale)
    finally:
        unquantize_unet(pipe.unet)
    return (out - fp).pow(2).mean().item()


@pytest.mark.parametrize("method", list(ACT_METHODS))
def test_every_method_calibrates_and_lower_bits_are_worse(any_pipe, method):
    config = QuantConfig(method=method, num_steps=3, guidance_scale=4.0, batch_size=2, uniform_steps=2,
                         ptq4dm_draws=8)
    errors = {}
    for bits in (8, 4):
        params = calibrate(any_pipe, PROMPTS, config.replace(weight_bits=bits, act_bits=bits), progress=False)
        assert params.num_steps == 3 and params.act_bits == [bits] * 3
        errors[bits] = quantized_error(any_pipe, params)
    assert 0 < errors[8] < errors[4]


def test_same_config_gives_the_same_parameters(any_pipe):
    config = QuantConfig(num_steps=2, guidance_scale=4.0, batch_size=3, weight_bits=4)
    first = calibrate(any_pipe, PROMPTS, config, progress=False)
    second = calibrate(any_pipe, PROMPTS, config, progress=False)
    for name, tensors in first.layers.items():
        for key, tensor in tensors.items():
            assert torch.equal(second.layers[name][key], tensor), (name, key)


def test_config_from_a_dict_names_bad_keys():
    config = QuantConfig.from_dict({"method": "qdiff", "weight_bits": 4, "relax_interval": [0.8, 1.0]})
    assert config.relax_interval == (0.8, 1.0) and config.per_step is False and config.act_observer == "mse"
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert config.digest() == QuantConfig.from_dict(config.to_dict()).digest() != QuantConfig().digest()
    with pytest.raises(ConfigError, match="act_bit"):
        QuantConfig.from_dict({"act_bit": 8})
    with pytest.raises(ConfigError, match="method must be one of"):
        QuantConfig(method="pcr")
    with pytest.raises(ConfigError, match="weight_bits"):
        QuantConfig(weight_bits=1)


def test_empty_prompts_are_refused():
    with pytest.raises(ValueError, match="non-empty list"):
        calibrate(load_pipeline("tiny-sd"), [], QuantConfig(num_steps=2))


def test_quant_mode_off_is_fp_after_quantize(any_pipe):
    params = calibrate(any_pipe, PROMPTS[:2], QuantConfig(num_steps=2, guidance_scale=4.0), progress=False)
    fp = sample_latents(any_pipe, EVAL, SEEDS, 2, 4.0)
    pcr.quantize(any_pipe, params)
    try:
        with quant_mode(any_pipe.unet, weights=False, acts=False):
            torch.testing.assert_close(sample_latents(any_pipe, EVAL, SEEDS, 2, 4.0), fp, rtol=0, atol=0)
    finally:
        unquantize_unet(any_pipe.unet)


def test_weights_of_an_earlier_calibration_are_reused_only_for_the_same_weight_settings():
    pipe = load_pipeline("tiny-sd")
    config = QuantConfig(num_steps=2, guidance_scale=4.0, weight_bits=4, weight_method="mse")
    first = calibrate(pipe, PROMPTS[:2], config, progress=False)
    second = calibrate(pipe, PROMPTS[:2], config.replace(method="naive"), weights=first, progress=False)
    assert second.info["weights_from"] == first.config.digest()
    for name, tensors in first.layers.items():
        assert torch.equal(second.layers[name]["weight_codes"], tensors["weight_codes"])
    with pytest.raises(ValueError, match="weight_bits"):
        calibrate(pipe, PROMPTS[:2], config.replace(weight_bits=8), weights=first, progress=False)


def test_the_shared_weight_step_gives_the_same_parameters_as_a_full_calibration(tmp_path):
    """The workflow calibrates weights once (calibrate_weights_only) and every activation method reuses them."""
    from pcr.calibrate import calibrate_weights_only
    from pcr.quant import load_params, save_params
    from pcr.quant.params import act_range_rows, trajectory_ranges

    pipe = load_pipeline("tiny-sd")
    config = QuantConfig(num_steps=2, guidance_scale=4.0, weight_bits=4, act_bits=6, weight_method="mse")
    save_params(tmp_path / "weights.safetensors", calibrate_weights_only(pipe, [], config, progress=False))
    weights = load_params(tmp_path / "weights.safetensors")
    assert weights.info["weights_only"] and weights.timesteps == []
    with pytest.raises(ValueError, match="calibrated weights only"):
        pcr.quantize(pipe, weights)
    shared = calibrate(pipe, PROMPTS[:2], config, weights=weights, progress=False)
    full = calibrate(pipe, PROMPTS[:2], config, progress=False)
    for name, tensors in full.layers.items():
        for key in ("weight_codes", "weight_scale", "act_scale", "act_zero_point", "act_range"):
            assert torch.equal(shared.layers[name][key], tensors[key]), (name, key)
    rows = act_range_rows(full)
    assert len(rows) == 2 * len(full.layers) and {r["step"] for r in rows} == {0, 1}
    assert all(r["lo"] <= r["hi"] for r in rows)
    both = trajectory_ranges(full, shared)
    assert [r["trajectory"] for r in both] == ["FP"] * len(rows) + ["quantized"] * len(rows)
    assert [{k: r[k] for k in ("layer", "step", "lo", "hi")} for r in both[:len(rows)]] == rows
