"""Tiny SD 1.4 / 1.5 / 2.1 / SDXL checkpoints: the real schedulers and flags, loaded from every form.

Each kind is built once (module-scoped cache), saved as a diffusers folder and as a single file
in the original layout (ldm_format), and loaded back from both.
"""

from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from ldm_format import save_ldm_checkpoint

from pcr.pipelines import PipelineLoadError, load_pipeline
from pcr.pipelines.checkpoints import KINDS, SCHEDULER_CONFIGS, save_tiny_checkpoint, tiny_checkpoint
from pcr.pipelines.hub import load_sd, load_sdxl

# What the real checkpoints' hub configs say (unet/, vae/, text_encoder*/, tokenizer*/).
REAL = {
    "sd14": dict(prediction_type="epsilon", use_linear_projection=False, upcast_attention=False,
                 addition_embed_type=None, scaling_factor=0.18215,
                 text_encoders={"text_encoder": ("CLIPTextModel", "quick_gelu", "<|endoftext|>")}),
    "sd21": dict(prediction_type="v_prediction", use_linear_projection=True, upcast_attention=True,
                 addition_embed_type=None, scaling_factor=0.18215,
                 text_encoders={"text_encoder": ("CLIPTextModel", "gelu", "!")}),
    "sdxl": dict(prediction_type="epsilon", use_linear_projection=True, upcast_attention=False,
                 addition_embed_type="text_time", scaling_factor=0.13025,
                 text_encoders={"text_encoder": ("CLIPTextModel", "quick_gelu", "<|endoftext|>"),
                                "text_encoder_2": ("CLIPTextModelWithProjection", "gelu", "!")}),
}
REAL["sd15"] = REAL["sd14"]
PIPELINE = {"sd14": "StableDiffusionPipeline", "sd15": "StableDiffusionPipeline",
            "sd21": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
FAMILY = {"sd14": "sd", "sd15": "sd", "sd21": "sd", "sdxl": "sdxl"}
LOADER = {"sd": load_sd, "sdxl": load_sdxl}


def image(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, generator=generator, output_type="np")
    return out.images[0]


def assert_same_config(scheduler, real):
    assert type(scheduler).__name__ == real["_class_name"]
    for key, value in real.items():
        if key != "_diffusers_version":  # rewritten by every save
            assert scheduler.config[key] == value, key


def nudge_every_weight(pipe, seed=0):
    """Move every weight off its initial value: norms start as ones and zeros, and a weight that
    from_single_file misses keeps its initial value, so without this a lost norm would go unseen."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in pipe.components.values():
            for param in module.parameters() if isinstance(module, torch.nn.Module) else ():
                param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return pipe


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> its tiny pipeline and diffusers folder; a nudged copy and its single file; images."""
    cache = {}

    def get(kind):
        if kind not in cache:
            root = tmp_path_factory.mktemp(kind)
            pipe, nudged = tiny_checkpoint(kind), nudge_every_weight(tiny_checkpoint(kind))
            cache[kind] = SimpleNamespace(
                pipe=pipe,
                folder=save_tiny_checkpoint(kind, root / "diffusers"),
                image=image(pipe),
                nudged=nudged,
                file=save_ldm_checkpoint(nudged, root / f"{kind}.safetensors"),
                nudged_image=image(nudged),
            )
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def loaded(built):
    """(kind, form) -> pipeline loaded back from the diffusers folder or the single file."""
    cache = {}

    def get(kind, form):
        if (kind, form) not in cache:
            saved = built(kind)
            if form == "folder":
                cache[kind, form] = load_pipeline(f"{FAMILY[kind]}:{saved.folder}")
            else:  # the folder has the same architecture: its configs describe the file
                cache[kind, form] = load_pipeline(f"{FAMILY[kind]}:{saved.file}", single_file_config=str(saved.folder))
        return cache[kind, form]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_checkpoint_carries_the_real_scheduler_class_and_config(kind, built):
    pipe = built(kind).pipe
    assert_same_config(pipe.scheduler, SCHEDULER_CONFIGS[kind])
    assert pipe.scheduler.config.prediction_type == REAL[kind]["prediction_type"]


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_checkpoint_has_the_real_structural_flags(kind, built):
    pipe, real = built(kind).pipe, REAL[kind]
    assert type(pipe).__name__ == PIPELINE[kind]
    for flag in ("use_linear_projection", "upcast_attention", "addition_embed_type"):
        assert pipe.unet.config[flag] == real[flag], flag
    assert pipe.vae.config.scaling_factor == real["scaling_factor"]
    assert pipe.vae.config.force_upcast  # diffusers' default; SDXL's config sets it explicitly
    encoders = {name: getattr(pipe, name) for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None)}
    assert set(encoders) == set(real["text_encoders"])
    for name, (cls, act, pad) in real["text_encoders"].items():
        assert type(encoders[name]).__name__ == cls and encoders[name].config.hidden_act == act
        assert getattr(pipe, name.replace("text_encoder", "tokenizer")).pad_token == pad
    if kind == "sdxl":  # the UNet reads both encoders, and the second one's pooled projection
        widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        assert pipe.unet.config.cross_attention_dim == widths
        assert pipe.text_encoder_2.config.hidden_size != pipe.text_encoder.config.hidden_size
        assert max(pipe.unet.config.transformer_layers_per_block) > 1


@pytest.mark.parametrize("kind", ["sd21", "sdxl"])
def test_sample_size_sets_the_default_resolution(kind):
    pipe = tiny_checkpoint(kind, sample_size=8)
    assert pipe.unet.config.sample_size == 8
    if kind == "sdxl":
        assert pipe.default_sample_size == 8
    assert image(pipe).shape == (16, 16, 3)  # 8 latents * vae_scale_factor 2


def test_same_seed_gives_the_same_weights_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, second, other = tiny_checkpoint("sd15"), tiny_checkpoint("sd15"), tiny_checkpoint("sd15", seed=1)
    assert torch.equal(torch.rand(3), expected)
    weight = "conv_in.weight"
    assert torch.equal(first.unet.state_dict()[weight], second.unet.state_dict()[weight])
    assert not torch.equal(first.unet.state_dict()[weight], other.unet.state_dict()[weight])


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_from_a_diffusers_folder_with_the_same_images(kind, built, loaded):
    pipe = loaded(kind, "folder")
    assert type(pipe).__name__ == PIPELINE[kind]
    assert_same_config(pipe.scheduler, SCHEDULER_CONFIGS[kind])
    np.testing.assert_array_equal(image(pipe), built(kind).image)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_from_a_single_file_with_every_weight_and_image_unchanged(kind, built, loaded):
    original, pipe = built(kind).nudged, loaded(kind, "file")
    assert type(pipe).__name__ == PIPELINE[kind]
    assert_same_config(pipe.scheduler, SCHEDULER_CONFIGS[kind])
    for name in ("unet", "vae", *REAL[kind]["text_encoders"]):
        want, got = getattr(original, name).state_dict(), getattr(pipe, name).state_dict()
        assert want.keys() == got.keys(), name
        unequal = [key for key in want if not torch.equal(want[key], got[key])]
        assert not unequal, f"{name}: {unequal[:5]}"
    np.testing.assert_array_equal(image(pipe), built(kind).nudged_image)


@pytest.mark.parametrize("form", ["folder", "file"])
@pytest.mark.parametrize("kind", ["sd14", "sd15"])
def test_safety_checker_is_off_after_loading_sd1(kind, form, loaded):
    pipe = loaded(kind, form)
    assert pipe.safety_checker is None
    assert pipe.config.requires_safety_checker is False


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_single_file_without_config_offline_says_to_pass_config(kind, built, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    file = built(kind).file
    with pytest.raises(PipelineLoadError, match=f"Cannot load {FAMILY[kind]}:.*{kind}.safetensors") as info:
        LOADER[FAMILY[kind]](str(file))
    assert "Pass config=" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_ckpt_file_loads_like_the_safetensors_file(built, loaded, tmp_path):
    saved = built("sd15")
    file = save_ldm_checkpoint(saved.nudged, tmp_path / "sd15.ckpt")
    pipe = load_sd(str(file), config=str(saved.folder))
    reference = loaded("sd15", "file")
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(reference, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(want[key], got[key]) for key in want), name


def test_unreadable_single_file_is_a_clear_error(built, tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineLoadError, match="Cannot load sd:.*model.safetensors.*OSError"):
        load_sd(str(file), config=str(built("sd15").folder))


def test_missing_single_file_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineLoadError, match=r"sd:.*model\.safetensors.*file .* does not exist"):
        load_sd(str(tmp_path / "model.safetensors"), config=str(tmp_path))


def test_missing_config_folder_is_a_clear_error(built, tmp_path):
    file = built("sd15").file
    with pytest.raises(PipelineLoadError, match="config folder .* does not exist"):
        load_sd(str(file), config=str(tmp_path / "nowhere"))


def test_config_with_a_folder_spec_is_rejected(built):
    folder = built("sd15").folder
    with pytest.raises(ValueError, match="config=.* is for single-file checkpoints"):
        load_sd(str(folder), config=str(folder))
