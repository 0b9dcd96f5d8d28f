"""The StepTracker tells the UNet its sampling step during real diffusers pipeline runs."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

from pcr.pipelines import StepTracker, get_step_tracker, load_pipeline, tiny_sd

PROMPTS = ["a red circle on the left", "a small blue square"]


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def pipe(request):
    return load_pipeline(request.param)


def record_calls(pipe):
    """Forward hook that records (call, num_calls, batch size) at every UNet call."""
    tracker = get_step_tracker(pipe.unet)
    calls = []

    def hook(module, args, output):
        calls.append((tracker.step, tracker.num_calls, args[0].shape[0]))

    return calls, pipe.unet.register_forward_hook(hook)


def run(pipe, steps, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        PROMPTS, num_inference_steps=steps, guidance_scale=5.0, generator=generator,
        output_type="np", **kwargs,
    )


def unet_inputs(pipe):
    """Inputs for one direct UNet call with batch 1."""
    unet = pipe.unet
    side = unet.config.sample_size
    inputs = dict(
        sample=torch.zeros(1, unet.config.in_channels, side, side),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim),
    )
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = dict(text_embeds=torch.zeros(1, pooled), time_ids=torch.zeros(1, 6))
    return inputs


def test_each_run_counts_its_unet_calls_from_zero(pipe):
    calls, handle = record_calls(pipe)
    try:
        run(pipe, 4)
        first = list(calls)
        calls.clear()
        run(pipe, 3)
    finally:
        handle.remove()
    # Classifier-free guidance is batched: one call per step with 2x the prompts.
    assert first == [(step, 4, 2 * len(PROMPTS)) for step in range(4)]
    assert calls == [(step, 3, 2 * len(PROMPTS)) for step in range(3)]


def test_swapped_scheduler_is_followed():
    pipe = load_pipeline("tiny-sd")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    calls, handle = record_calls(pipe)
    run(pipe, 3)
    # Heun is second order: 2N-1 timesteps, one UNet call each.
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    run(pipe, 3)
    handle.remove()
    steps = [(step, num_steps) for step, num_steps, _ in calls]
    assert steps == [(0, 3), (1, 3), (2, 3)] + [(step, 5) for step in range(5)]


def test_extra_unet_call_per_step_is_a_clear_error(pipe):
    inputs = unet_inputs(pipe)

    def call_unet_again(pipeline, step, timestep, callback_kwargs):
        pipeline.unet(**inputs)  # as a pipeline with unbatched guidance would
        return callback_kwargs

    with pytest.raises(RuntimeError, match="twice per step is not supported"):
        run(pipe, 2, callback_on_step_end=call_unet_again)


def test_direct_unet_calls_need_an_explicit_step(pipe):
    tracker = get_step_tracker(pipe.unet)
    inputs = unet_inputs(pipe)
    run(pipe, 2)
    with pytest.raises(RuntimeError, match=r"tracker\.at\(step\)"):
        pipe.unet(**inputs)
    with tracker.at(3, num_calls=5):
        pipe.unet(**inputs)
        assert (tracker.step, tracker.num_calls) == (3, 5)
        with tracker.at(1):
            pipe.unet(**inputs)
            assert tracker.step == 1
        pipe.unet(**inputs)
        assert (tracker.step, tracker.num_calls) == (3, 5)
    with pytest.raises(ValueError, match="step must be in"):
        with tracker.at(5, num_calls=5):
            pass
    # A pipeline run after direct calls still starts at step 0.
    calls, handle = record_calls(pipe)
    run(pipe, 2)
    handle.remove()
    assert [step for step, _, _ in calls] == [0, 1]


def test_unet_call_before_set_timesteps_is_a_clear_error():
    pipe = tiny_sd()
    StepTracker.attach(pipe)
    with pytest.raises(RuntimeError, match="before scheduler.set_timesteps"):
        pipe.unet(**unet_inputs(pipe))


def test_attach_is_idempotent_and_detach_restores_the_unet():
    pipe = tiny_sd()
    assert get_step_tracker(pipe.unet) is None
    tracker = StepTracker.attach(pipe)
    assert StepTracker.attach(pipe) is tracker
    assert get_step_tracker(pipe.unet) is tracker
    assert len(pipe.unet._forward_pre_hooks) == 1
    tracker.detach()
    assert get_step_tracker(pipe.unet) is None
    assert len(pipe.unet._forward_pre_hooks) == 0
    pipe.unet(**unet_inputs(pipe))  # no tracker, so no step is needed


def test_attach_rejects_a_pipeline_without_unet():
    with pytest.raises(TypeError, match="no `unet` module"):
        StepTracker.attach(object())
