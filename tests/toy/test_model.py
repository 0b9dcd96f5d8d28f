import json

import pytest
import torch

from pcr.pipelines import get_step_tracker, load_pipeline
from pcr.pipelines.toy import ToyPipeline
from pcr.toy.clip import load_toy_clip
from pcr.toy.evaluate import sample_grid, sample_images
from pcr.toy.text_encoder import text_encoder_from_open_clip
from pcr.toy.world import toy_prompts

TINY_RES = 16  # as trained in conftest.py

PROMPTS = ["a large red circle on the left on a black background",
           "gray background with a small blue square at the top"]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(f"toy:{tiny_model_dir}")


def sample(pipe, prompts, seeds, steps=3):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=4.0, generator=gens, output_type="pt").images


def test_saved_pipeline_loads_as_a_toy_pipeline(pipe, tiny_model_dir):
    assert isinstance(pipe, ToyPipeline)
    assert pipe.tokenizer.model_max_length == 77
    stats = json.loads((tiny_model_dir / "train_stats.json").read_text())
    assert stats["steps"] == 2 and stats["res"] == TINY_RES


def test_text_encoder_is_the_frozen_clip_text_tower(pipe, tiny_clip_dir):
    reference = text_encoder_from_open_clip(load_toy_clip(tiny_clip_dir)[0])
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, pipe.text_encoder.state_dict()[name]), name


def test_sampling_is_seeded_per_image_whatever_the_batch(pipe):
    both = sample(pipe, PROMPTS, [0, 1])
    assert both.shape == (2, 3, TINY_RES, TINY_RES) and 0 <= both.min() and both.max() <= 1
    torch.testing.assert_close(sample(pipe, PROMPTS, [0, 1]), both, atol=0, rtol=0)
    alone = sample(pipe, PROMPTS[1:], [1])
    torch.testing.assert_close(alone[0], both[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sample(pipe, PROMPTS[1:], [2])[0], both[1])


def test_the_unet_knows_its_step(pipe):
    tracker = get_step_tracker(pipe.unet)
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append((tracker.step, args[0].shape[0])))
    try:
        sample(pipe, PROMPTS, [0, 1], steps=4)
    finally:
        handle.remove()
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]  # one call per step, guidance batched (2 x 2 prompts)


def test_bad_arguments_are_clear_errors(pipe):
    with pytest.raises(ValueError, match="one per prompt"):
        sample(pipe, PROMPTS, [0])
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(PROMPTS, num_inference_steps=0)
    with pytest.raises(ValueError, match="output_type"):
        pipe(PROMPTS, num_inference_steps=1, output_type="jpeg")


def test_sample_grid_has_a_truth_column_and_one_column_per_seed(pipe):
    prompts = toy_prompts("eval_in", 2, seed=0)
    grid = sample_grid(pipe, prompts, seeds=3, steps=2)
    cell = (TINY_RES + 2) * 4
    assert grid.size == (4 * cell + 8, 2 * cell + 8)
    imgs = sample_images(pipe, [p.text for p in prompts], steps=2, progress=False)
    assert imgs.shape == (2, 3, TINY_RES, TINY_RES)


@pytest.mark.parametrize("scheduler",
                         ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DEISMultistepScheduler"])
def test_any_diffusers_scheduler_samples_deterministically(tiny_model_dir, scheduler):
    import diffusers

    pipe = load_pipeline(f"toy:{tiny_model_dir}")
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    first = sample(pipe, PROMPTS, [0, 1])
    assert torch.isfinite(first).all()
    torch.testing.assert_close(sample(pipe, PROMPTS, [0, 1]), first, atol=0, rtol=0)
