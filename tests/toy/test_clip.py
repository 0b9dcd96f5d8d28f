import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from pcr.tokenizer import clip_tokenizer
from pcr.toy import world
from pcr.toy.clip import (
    CONFIG_FILE,
    TOY_CLIP_NAME,
    WEIGHTS_FILE,
    _contrastive_loss,
    _encode_texts_trimmed,
    _hard_negative,
    attribute_accuracy,
    encode_texts,
    load_toy_clip,
)
from pcr.toy.text_encoder import text_encoder_from_open_clip

PROMPTS = ["a large red circle on the left on a black background",
           "there is a square coloured yellow (small) near the upper edge, plus a square coloured blue (small) "
           "near the lower edge over plain white", ""]


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_toy_clip(tiny_clip_dir)[0]


def test_loads_through_open_clip_with_the_saved_weights(tiny_clip_dir, clip):
    assert TOY_CLIP_NAME in open_clip.list_models()
    saved = load_file(str(tiny_clip_dir / WEIGHTS_FILE))
    for name, tensor in clip.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert json.loads((tiny_clip_dir / CONFIG_FILE).read_text())["vision_cfg"]["image_size"] == 2 * 16  # upsampled 2x
    stats = json.loads((tiny_clip_dir / "train_stats.json").read_text())
    assert stats["steps"] == 3


def test_missing_checkpoint_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_toy_clip(tmp_path)


def test_text_encoder_matches_the_open_clip_text_tower(clip):
    encoder = text_encoder_from_open_clip(clip)
    ids = clip_tokenizer()(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids).last_hidden_state
        x = clip.token_embedding(ids) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        pooled = encoder(ids).pooler_output @ clip.text_projection
    torch.testing.assert_close(hidden, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, clip.encode_text(ids), atol=1e-5, rtol=1e-5)


def test_trimmed_text_encoding_equals_the_full_one(clip):
    ids = clip_tokenizer()(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(_encode_texts_trimmed(clip, ids), clip.encode_text(ids, normalize=True),
                                   atol=1e-5, rtol=1e-5)


def test_contrastive_loss_prefers_aligned_pairs_and_counts_duplicates_as_positives():
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    keys = ["a", "b", "c", "d"]
    scale = torch.tensor(20.0)
    aligned = _contrastive_loss(emb, emb, scale, keys, keys)
    shuffled = _contrastive_loss(emb, emb[[1, 2, 3, 0]], scale, keys, keys)
    assert aligned < shuffled
    # two images of one scene: the loss is the same whichever of its captions each one sits next to
    dup = ["a", "a", "c", "d"]
    swapped = emb[[1, 0, 2, 3]]
    torch.testing.assert_close(_contrastive_loss(emb, emb, scale, dup, dup),
                               _contrastive_loss(emb, swapped, scale, dup, dup))


def test_hard_negative_changes_exactly_one_attribute():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = world.random_scene(rng, p_two=0.5)
        negative = _hard_negative(scene, rng)
        diffs = (scene.background != negative.background) + sum(
            getattr(a, f) != getattr(b, f) for a, b in zip(scene.objects, negative.objects)
            for f in ("shape", "colour", "size", "position"))
        assert diffs == 1


def test_attribute_accuracy_covers_every_attribute(clip):
    prompts = world.toy_prompts("eval_in", 6, seed=0)
    images = torch.from_numpy(world.draw_batch([p.scene for p in prompts], list(range(6)), res=16))
    acc = attribute_accuracy(clip, clip_tokenizer(), images, [p.scene for p in prompts])
    assert set(acc) == {"shape", "colour", "size", "position", "background"}
    assert all(0 <= v <= 1 for v in acc.values() if v == v)


def test_text_embeddings_are_unit_norm(clip):
    emb = encode_texts(clip, clip_tokenizer(), PROMPTS)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_two_toy_clips_of_different_sizes_load_in_one_process(tiny_clip_dir, tmp_path):
    from pcr.toy.clip import train_toy_clip

    other = tmp_path / "wider"
    train_toy_clip(other, steps=1, batch_size=4, res=16, width=64, layers=1, progress=False)
    assert load_toy_clip(other)[0].token_embedding.weight.shape[1] == 64
    assert load_toy_clip(tiny_clip_dir)[0].token_embedding.weight.shape[1] == 32
