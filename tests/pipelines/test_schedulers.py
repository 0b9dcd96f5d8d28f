"""Every scheduler users sample Stable Diffusion with: the shared loop walks exactly the UNet calls of
``pipe(...)``, and calibrated parameters round-trip through a file onto the pipeline at the same step
count (num_inference_steps), whatever number of UNet calls the scheduler makes for it."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

import pcr
from pcr.calibrate import calibrate
from pcr.pipelines import get_step_tracker, load_pipeline
from pcr.pipelines.sampling import count_unet_calls, decode, prompt_generators, sample_latents
from pcr.quant import load_params, save_params
from pcr.quant.layers import StepCountError

STEPS = 3
PROMPTS = ["a red circle on the left", "two blue squares"]
SEEDS = [5, 9]
# scheduler, extra config as the checkpoints or users set it, UNet calls for N steps
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}, lambda n: n),
    "euler": (EulerDiscreteScheduler, {}, lambda n: n),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}, lambda n: n),
    "lms": (LMSDiscreteScheduler, {}, lambda n: n),
    "dpm-solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}, lambda n: n),
    "unipc": (UniPCMultistepScheduler, {}, lambda n: n),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}, lambda n: n + 1),  # SD 1.x's own
    "heun": (HeunDiscreteScheduler, {}, lambda n: 2 * n - 1),
}


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def base(request):
    pipe = load_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=list(SCHEDULERS))
def pipe(request, base):
    cls, extra, _ = SCHEDULERS[request.param]
    base.scheduler = cls.from_config(base.scheduler.config, **extra)
    base.expected_calls = SCHEDULERS[request.param][2]
    return base


def pipeline_images(pipe, steps=STEPS):
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=5.0, generator=prompt_generators(SEEDS),
                output_type="pt").images.float()


def record_calls(pipe):
    tracker, calls = get_step_tracker(pipe.unet), []
    handle = pipe.unet.register_forward_hook(lambda module, args, out: calls.append((tracker.step, tracker.num_calls)))
    return calls, handle


def test_the_scheduler_makes_the_expected_unet_calls(pipe):
    assert count_unet_calls(pipe.scheduler, STEPS) == pipe.expected_calls(STEPS)
    calls, handle = record_calls(pipe)
    try:
        pipeline_images(pipe)
    finally:
        handle.remove()
    n = pipe.expected_calls(STEPS)
    assert calls == [(i, n) for i in range(n)]


def test_the_shared_loop_equals_the_pipeline(pipe):
    mine = decode(pipe, sample_latents(pipe, PROMPTS, SEEDS, STEPS, 5.0))
    torch.testing.assert_close(mine, pipeline_images(pipe), rtol=0, atol=1e-6)


def test_calibrated_parameters_round_trip_at_the_same_step_count(pipe, tmp_path):
    config = dict(weight_bits=4, act_bits=6, method="progressive", num_steps=STEPS, guidance_scale=5.0, batch_size=2,
                  relax_interval=(0.6, 1.0))
    params = calibrate(pipe, PROMPTS, config, progress=False)
    n = pipe.expected_calls(STEPS)
    assert (params.num_steps, params.num_calls, len(params.timesteps)) == (STEPS, n, n)
    assert params.act_bits[-1] == 10 and params.act_bits[0] == 6
    save_params(tmp_path / "params.safetensors", params)
    loaded = load_params(tmp_path / "params.safetensors")
    assert loaded.header()["num_unet_calls"] == n and loaded.header()["num_inference_steps"] == STEPS
    pcr.quantize(pipe, tmp_path / "params.safetensors")
    try:
        quantized = pipeline_images(pipe)
        mine = decode(pipe, sample_latents(pipe, PROMPTS, SEEDS, STEPS, 5.0))
        torch.testing.assert_close(mine, quantized, rtol=0, atol=1e-6)
        assert not torch.equal(quantized, _fp_images(pipe))  # the quantized model did run
        with pytest.raises(StepCountError, match=rf"num_inference_steps={STEPS} \({n} UNet calls\).*"
                                                 rf"num_inference_steps={STEPS + 1}"):
            pipeline_images(pipe, STEPS + 1)
    finally:
        pcr.quant.unquantize_unet(pipe.unet)


def _fp_images(pipe):
    from pcr.quant import quant_mode

    with quant_mode(pipe.unet, weights=False, acts=False):
        return pipeline_images(pipe)
