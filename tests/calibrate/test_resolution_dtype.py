"""Calibration samples at the profile's resolution (with SDXL's size conditioning as the pipeline sets it),
sampling elsewhere still works and is recorded, and half-precision pipelines calibrate and sample."""

import json

import pytest
import torch

import pcr
from pcr.bench import generate
from pcr.calibrate import calibrate
from pcr.pipelines import load_pipeline
from pcr.pipelines.sampling import decode, prompt_generators, sample_latents
from pcr.quant import QuantConfig, unquantize_unet

PROMPTS = ["a red circle on the left", "two blue squares"]


def record_unet_inputs(pipe):
    seen = []

    def hook(module, args, kwargs):
        added = kwargs.get("added_cond_kwargs") or {}
        seen.append((tuple(args[0].shape[-2:]), added.get("time_ids")))

    return seen, pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("spec", ["tiny-sd", "tiny-sdxl"])
def test_calibration_samples_at_the_configured_resolution(spec):
    pipe = load_pipeline(spec)
    seen, handle = record_unet_inputs(pipe)
    try:
        params = calibrate(pipe, PROMPTS, QuantConfig(num_steps=2, guidance_scale=4.0, height=48, width=40),
                           progress=False)
    finally:
        handle.remove()
    assert params.resolution == [48, 40]
    assert {shape for shape, _ in seen} == {(24, 20)}  # the tiny VAE halves the image side
    if spec == "tiny-sdxl":  # original size, crop, target size: what pipe(height=48, width=40) conditions on
        assert all(t.tolist() == [[48.0, 40.0, 0.0, 0.0, 48.0, 40.0]] * len(t) for _, t in seen)


def test_the_loop_equals_the_pipeline_at_another_resolution():
    pipe = load_pipeline("tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    mine = decode(pipe, sample_latents(pipe, PROMPTS, [1, 2], 2, 5.0, height=48, width=40))
    reference = pipe(PROMPTS, num_inference_steps=2, guidance_scale=5.0, generator=prompt_generators([1, 2]),
                     height=48, width=40, output_type="pt").images
    assert mine.shape == (2, 3, 48, 40)
    torch.testing.assert_close(mine, reference.float(), rtol=0, atol=1e-6)


def test_sampling_at_another_resolution_works_and_is_recorded(tmp_path):
    pipe = load_pipeline("tiny-sd")
    params = calibrate(pipe, PROMPTS, QuantConfig(num_steps=2, guidance_scale=4.0, height=48, width=48),
                       progress=False)
    pcr.quantize(pipe, params)
    try:
        generate(pipe, PROMPTS, tmp_path / "same", num_inference_steps=2, guidance_scale=4.0, height=48, width=48,
                 progress=False)
        generate(pipe, PROMPTS, tmp_path / "other", num_inference_steps=2, guidance_scale=4.0, progress=False)
    finally:
        unquantize_unet(pipe.unet)
    same = json.loads((tmp_path / "same" / "generation.json").read_text())
    other = json.loads((tmp_path / "other" / "generation.json").read_text())
    assert same["resolution_mismatch"] is False and same["quantization"]["resolution"] == [48, 48]
    assert other["resolution_mismatch"] is True and other["resolution"] == [32, 32]
    assert other["quantization"]["quant_config_hash"] == params.config.digest()
    assert other["safety_checker"] == "off"


@pytest.mark.parametrize("spec", ["tiny-sd", "tiny-sdxl", "toy"])
def test_bfloat16_pipelines_calibrate_and_sample(spec, tiny_model_dir):
    pipe = load_pipeline(f"toy:{tiny_model_dir}" if spec == "toy" else spec, dtype="bfloat16")
    pipe.set_progress_bar_config(disable=True)
    config = QuantConfig(weight_bits=4, act_bits=8, num_steps=2, guidance_scale=4.0, relax_steps=(1,))
    params = calibrate(pipe, PROMPTS, config, progress=False)
    assert pipe.unet.dtype == torch.bfloat16 and params.info["dtype"] == "bfloat16"
    for tensors in params.layers.values():  # ranges and scales are kept in float32, and finite
        assert tensors["act_range"].dtype == tensors["act_scale"].dtype == torch.float32
        assert torch.isfinite(tensors["act_scale"]).all() and (tensors["act_scale"] > 0).all()
    fp = decode(pipe, sample_latents(pipe, PROMPTS, [3, 4], 2, 4.0))
    pcr.quantize(pipe, params)
    try:
        images = pipe(PROMPTS, num_inference_steps=2, guidance_scale=4.0, generator=prompt_generators([3, 4]),
                      output_type="pt").images.float()
    finally:
        unquantize_unet(pipe.unet)
    assert torch.isfinite(images).all() and images.shape == fp.shape
    assert 0 < (images - fp).abs().mean() < 0.2  # quantized, and still the same pictures
