"""The tiny random pipelines run end to end offline, deterministically, with the real tokenizer."""

import numpy as np
import pytest
import torch

from pcr.pipelines import tiny_sd, tiny_sdxl

BUILDERS = {"tiny-sd": tiny_sd, "tiny-sdxl": tiny_sdxl}


@pytest.fixture(scope="module", params=list(BUILDERS))
def pipe(request):
    return BUILDERS[request.param]()


def image(pipe, prompt="a red circle on the left", seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = pipe(prompt, num_inference_steps=2, guidance_scale=5.0, generator=generator, output_type="np")
    return out.images[0]


def test_image_is_deterministic_given_the_seed(pipe):
    first = image(pipe)
    assert first.shape == (32, 32, 3)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, image(pipe))
    assert np.abs(first - image(pipe, seed=1)).max() > 1e-3


def test_prompt_reaches_the_unet_through_the_real_tokenizer(pipe):
    assert pipe.tokenizer.vocab_size == pipe.text_encoder.config.vocab_size == 49408
    assert np.abs(image(pipe) - image(pipe, prompt="a large green triangle at the top")).max() > 1e-3


def test_sdxl_unet_gets_added_conditioning():
    pipe = tiny_sdxl()
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs["added_cond_kwargs"])

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    image(pipe)
    handle.remove()
    # Batch 2 (guidance); pooled projection of text_encoder_2; 6 size/crop numbers.
    assert seen["text_embeds"].shape == (2, pipe.text_encoder_2.config.projection_dim)
    assert seen["time_ids"].shape == (2, 6)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_weights_depend_on_the_seed_only(name):
    state = torch.get_rng_state()
    same = [BUILDERS[name](seed=0).unet.conv_in.weight for _ in range(2)]
    other = BUILDERS[name](seed=1).unet.conv_in.weight
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], other)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
