"""The denoising loop taken apart gives exactly what the pipeline's own loop gives."""

import pytest
import torch

from pcr.pipelines.sampling import decode, prepare_batch, prompt_generators, sample_latents

PROMPTS = ["a red circle on the left", "two blue squares"]
SEEDS = [3, 11]


@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["guided", "unguided"])
def test_loop_equals_the_pipeline(any_pipe, guidance):
    mine = decode(any_pipe, sample_latents(any_pipe, PROMPTS, SEEDS, 3, guidance))
    reference = any_pipe(PROMPTS, num_inference_steps=3, guidance_scale=guidance, generator=prompt_generators(SEEDS),
                     output_type="pt").images
    torch.testing.assert_close(mine, reference.float(), rtol=0, atol=1e-6)


def test_an_image_depends_on_its_own_seed_only(any_pipe):
    together = sample_latents(any_pipe, PROMPTS, SEEDS, 2, 4.0)
    alone = sample_latents(any_pipe, PROMPTS[1:], SEEDS[1:], 2, 4.0)
    torch.testing.assert_close(together[1:], alone, rtol=0, atol=1e-5)


def test_batches_keep_their_own_scheduler_state(any_pipe):
    """Two batches stepped in turn (as calibration does) give the same latents as one after the other."""
    a = prepare_batch(any_pipe, PROMPTS[:1], SEEDS[:1], 3, 4.0)
    b = prepare_batch(any_pipe, PROMPTS[1:], SEEDS[1:], 3, 4.0)
    for step in range(3):
        for batch in (a, b):
            batch.advance(step, batch.model_output(any_pipe.unet, step))
    torch.testing.assert_close(a.latents, sample_latents(any_pipe, PROMPTS[:1], SEEDS[:1], 3, 4.0), rtol=0, atol=0)
    torch.testing.assert_close(b.latents, sample_latents(any_pipe, PROMPTS[1:], SEEDS[1:], 3, 4.0), rtol=0, atol=0)
