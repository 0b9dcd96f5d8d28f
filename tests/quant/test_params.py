"""Parameters: saved and loaded exactly, applied to a fresh pipeline, refused on the wrong model."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

import pcr
from pcr.calibrate import calibrate
from pcr.pipelines import load_pipeline, tiny_sd
from pcr.pipelines.sampling import sample_latents
from pcr.quant import ParamsMismatchError, QuantConfig, load_params, quant_mode, save_params, unquantize_unet

PROMPTS = ["a red circle on the left", "two blue squares", "a small green triangle"]
CONFIG = QuantConfig(weight_bits=4, act_bits=6, num_steps=3, guidance_scale=5.0, batch_size=2,
                     relax_interval=(0.0, 0.4))  # calls 0 and 1 (int(3 * 0.4) = 1), the reference's rounding


@pytest.fixture(scope="module")
def params():
    return calibrate(load_pipeline("tiny-sd"), PROMPTS, CONFIG, model="tiny-sd", progress=False)


def test_round_trip_is_exact(params, tmp_path):
    save_params(tmp_path / "p.safetensors", params)
    loaded = load_params(tmp_path / "p.safetensors")
    assert loaded.config == params.config and loaded.act_bits == params.act_bits == [10, 10, 6]
    assert loaded.timesteps == params.timesteps and loaded.scheduler == "DDIMScheduler"
    assert loaded.model == "tiny-sd" and loaded.info["prompts"] == 3
    assert set(loaded.layers) == set(params.layers)
    for name, tensors in params.layers.items():
        for key, tensor in tensors.items():
            assert torch.equal(loaded.layers[name][key], tensor), (name, key)


def test_a_fresh_pipeline_quantized_from_a_file_gives_the_same_images(params, tmp_path):
    save_params(tmp_path / "p.safetensors", params)
    first = pcr.quantize(load_pipeline("tiny-sd"), params)
    second = pcr.quantize(load_pipeline("tiny-sd"), tmp_path / "p.safetensors")
    a = sample_latents(first, PROMPTS, [0, 1, 2], 3, 5.0)
    torch.testing.assert_close(sample_latents(second, PROMPTS, [0, 1, 2], 3, 5.0), a, rtol=0, atol=0)
    with quant_mode(first.unet, weights=False, acts=False):
        fp = sample_latents(first, PROMPTS, [0, 1, 2], 3, 5.0)
    assert (a - fp).abs().max() > 1e-3
    # and the pipeline's own __call__ runs quantized too
    first.set_progress_bar_config(disable=True)
    first(PROMPTS[0], num_inference_steps=3, guidance_scale=5.0)


def test_calibration_leaves_the_pipeline_as_it_was():
    pipe = load_pipeline("tiny-sd")
    before = sample_latents(pipe, PROMPTS[:1], [0], 3, 5.0)
    calibrate(pipe, PROMPTS[:2], CONFIG, progress=False)
    torch.testing.assert_close(sample_latents(pipe, PROMPTS[:1], [0], 3, 5.0), before, rtol=0, atol=0)


def test_another_model_is_refused(params):
    other = tiny_sd(seed=1)
    from pcr.pipelines import StepTracker

    StepTracker.attach(other)
    with pytest.raises(ParamsMismatchError, match="another model"):
        pcr.quantize(other, params)
    with pytest.raises(ParamsMismatchError, match="do not fit"):
        pcr.quantize(load_pipeline("tiny-sdxl"), params)


def test_another_scheduler_or_step_count_is_refused(params):
    pipe = load_pipeline("tiny-sd")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ParamsMismatchError, match="EulerDiscreteScheduler"):
        pcr.quantize(pipe, params)
    # the same class configured otherwise samples other timesteps
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    with pytest.raises(ParamsMismatchError, match=r"calibrated with DDIMScheduler at num_inference_steps=3"):
        pcr.quantize(pipe, params)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    pcr.quantize(pipe, params)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(RuntimeError, match=r"calibrated for num_inference_steps=3 \(3 UNet calls\), but the pipeline "
                                           r"runs num_inference_steps=5 \(5 UNet calls\)"):
        pipe(PROMPTS[0], num_inference_steps=5, guidance_scale=5.0)
    unquantize_unet(pipe.unet)


def test_shared_parameters_without_relaxing_run_at_any_step_count():
    pipe = load_pipeline("tiny-sd")
    params = calibrate(pipe, PROMPTS[:2], CONFIG.replace(method="naive", relax_interval=None), progress=False)
    assert not params.step_dependent
    pcr.quantize(pipe, params)
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPTS[0], num_inference_steps=5, guidance_scale=5.0)


def test_a_file_saved_before_relax_interval_was_named_loads_as_it_relaxed(params, tmp_path):
    """Files written before the rename hold relax_ratio (and no relax_rounding) in their config header,
    and the act bits of pcr's centre rounding then: [0, 0.4] of 3 calls relaxed call 0 only."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    save_params(tmp_path / "new.safetensors", params)
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        header = json.loads(f.metadata()["pcr"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    config = header["config"]
    config["relax_ratio"] = config.pop("relax_interval")
    del config["relax_rounding"]
    header["act_bits"] = [10, 6, 6]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"pcr": json.dumps(header)})
    old = load_params(tmp_path / "old.safetensors")
    assert old.config.relax_interval == old.config.relax_ratio == (0.0, 0.4)
    assert old.config.relaxed_steps(3) == (0,) and old.act_bits == [10, 6, 6]
    pipe = pcr.quantize(load_pipeline("tiny-sd"), tmp_path / "old.safetensors")
    sample_latents(pipe, PROMPTS[:1], [0], 3, 5.0)
    unquantize_unet(pipe.unet)


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate first"):
        load_params(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no pcr quantization parameters"):
        load_params(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_params(tmp_path / "junk.safetensors")


def test_weights_dequantized_per_call_give_the_images_of_cached_ones(params):
    """calibrate() dequantizes per call (memory), pcr.quantize caches by default (speed): same numbers."""
    from pcr.quant import quant_layers

    pipe = load_pipeline("tiny-sd")
    latents = {}
    for cache in (True, False):
        pcr.quantize(pipe, params, cache_weights=cache)
        assert all((layer.weight_q is not None) == cache for layer in quant_layers(pipe.unet).values())
        latents[cache] = sample_latents(pipe, PROMPTS[:2], [1, 2], 3, 5.0)
        unquantize_unet(pipe.unet)
    assert torch.equal(latents[True], latents[False])
