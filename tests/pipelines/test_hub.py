"""load_pipeline: real-pipeline loading from folders, clear errors when weights are missing."""

import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from pcr.pipelines import PipelineLoadError, get_step_tracker, load_pipeline, tiny_sd, tiny_sdxl

HOW_TO = "diffusers-format save"  # part of every PipelineLoadError's advice


def image(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, generator=generator, output_type="np")
    return out.images[0]


@pytest.mark.parametrize("family, build", [("sd", tiny_sd), ("sdxl", tiny_sdxl)], ids=["sd", "sdxl"])
def test_saved_pipeline_loads_back_with_same_images(family, build, tmp_path):
    original = build()
    original.save_pretrained(tmp_path / "model")
    loaded = load_pipeline(f"{family}:{tmp_path / 'model'}")
    assert type(loaded) is type(original)
    assert get_step_tracker(loaded.unet) is not None
    np.testing.assert_array_equal(image(loaded), image(original))


def test_dtype_is_applied(tmp_path):
    tiny_sd().save_pretrained(tmp_path / "model")
    pipe = load_pipeline(f"sd:{tmp_path / 'model'}", dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert load_pipeline("tiny-sd").unet.dtype == torch.float32  # the default


def test_missing_folder_is_a_clear_error():
    with pytest.raises(PipelineLoadError, match="sd:/nonexistent/folder.*does not exist") as info:
        load_pipeline("sd:/nonexistent/folder")
    assert HOW_TO in str(info.value)


def test_folder_without_model_index_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineLoadError, match="no model_index.json") as info:
        load_pipeline(f"sdxl:{tmp_path}")
    assert HOW_TO in str(info.value)


def test_incomplete_folder_is_a_clear_error(tmp_path):
    tiny_sd().save_pretrained(tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "unet")
    with pytest.raises(PipelineLoadError, match="Cannot load sd:") as info:
        load_pipeline(f"sd:{tmp_path / 'model'}")
    assert HOW_TO in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    spec = "sd:some-org/some-model-that-does-not-exist"
    with pytest.raises(PipelineLoadError, match=spec) as info:
        load_pipeline(spec)
    assert "hub id with network access" in str(info.value)


@pytest.mark.parametrize("spec", ["sd15", "sd:", "toy", "tiny-sd:x", "SD:org/model"])
def test_unknown_spec_lists_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="toy:<folder>, sd:<hub id, folder or file>, sdxl:"):
        load_pipeline(spec)
