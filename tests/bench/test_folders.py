"""Trust in a generation folder (issue 12): the manifest pins each image's byte size and sha256, resume
re-samples an image that does not decode at the folder's size, consumers name a damaged or changed image,
sampling refuses non-finite images and prompts given as one string, and planning (pcr.plan.folders)
sees a folder whose images no longer match its manifest."""

import csv
import dataclasses
import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pcr.bench.folders import FolderError
from pcr.bench.generation import GenerationError, collect_shards, generate, read_manifest
from pcr.bench.metrics import MetricsConfig, evaluate
from pcr.pipelines import load_pipeline
from pcr.report import sample_grid

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow star"]
SETTINGS = dict(seed=3, num_inference_steps=2, guidance_scale=4.0, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def toy(tiny_model_dir):
    return load_pipeline(f"toy:{tiny_model_dir}")


@pytest.fixture(scope="module")
def finished(toy, tmp_path_factory):
    """A finished toy folder; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("trust") / "finished"
    generate(toy, PROMPTS, out, **SETTINGS)
    return out


@pytest.fixture
def config(bench_clip_dir):
    return MetricsConfig.toy(bench_clip_dir, bootstrap=0)


@pytest.fixture
def folder(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "copy")


def images(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_the_manifest_pins_each_images_size_and_sha256(finished):
    rows = read_manifest(finished / "manifest.csv")
    for row in rows:
        data = (finished / row["file"]).read_bytes()
        assert row["bytes"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert [r["index"] for r in rows] == [0, 1, 2, 3]


def test_manifests_of_before_stay_readable_and_are_checked_for_existence(folder):
    from pcr.plan.folders import folder_problem

    with open(folder / "manifest.csv", "w", newline="") as f:  # a manifest pcr wrote before issue 12
        writer = csv.writer(f)
        writer.writerow(["index", "prompt", "seed", "file"])
        writer.writerows([i, p, 3 + i, f"{i:05d}.png"] for i, p in enumerate(PROMPTS))
    assert [(r["file"], r["bytes"], r["sha256"]) for r in read_manifest(folder / "manifest.csv")][0] == (
        "00000.png", None, None)
    assert folder_problem(folder / "manifest.csv") is None
    (folder / "00003.png").write_bytes(b"short")  # no size recorded: not seen at planning
    assert folder_problem(folder / "manifest.csv") is None
    (folder / "00003.png").unlink()
    assert "00003.png" in folder_problem(folder / "manifest.csv")


def test_planning_sees_missing_changed_and_unlisted_images(folder, tmp_path):
    from pcr.plan.folders import folder_problem  # torch-free: the DAG is planned with it

    manifest = folder / "manifest.csv"
    assert folder_problem(manifest) is None
    assert folder_problem(tmp_path / "never" / "manifest.csv") is None  # not started: Snakemake plans it anyway
    (folder / "00001.png").unlink()
    (folder / "00002.png").write_bytes((folder / "00002.png").read_bytes()[:100])
    problem = folder_problem(manifest)
    assert "00001.png" in problem and "00002.png" in problem and str(folder) in problem
    manifest.unlink()  # what Snakemake leaves of a generation job that failed
    assert "no manifest.csv" in folder_problem(manifest)
    manifest.write_text("index,prompt\n0")
    assert "unreadable" in folder_problem(manifest)


def test_resume_resamples_images_that_do_not_decode_at_the_folders_size(toy, finished, folder):
    (folder / "manifest.csv").unlink()  # Snakemake removes it before the job reruns: no hashes to compare
    (folder / "00001.png").write_bytes((folder / "00001.png").read_bytes()[:100])  # truncated
    Image.new("RGB", (8, 8)).save(folder / "00002.png")  # whole, but of another size
    generate(toy, PROMPTS, folder, **SETTINGS)
    assert images(folder) == images(finished)
    assert (folder / "manifest.csv").read_bytes() == (finished / "manifest.csv").read_bytes()


def test_resume_resamples_an_image_its_manifest_does_not_pin(toy, finished, folder):
    shutil.copyfile(folder / "00000.png", folder / "00003.png")  # decodes at the right size, wrong image
    generate(toy, PROMPTS, folder, **SETTINGS)
    assert images(folder) == images(finished)


def test_evaluate_names_a_truncated_image(folder, config):
    (folder / "00002.png").write_bytes((folder / "00002.png").read_bytes()[:100])
    with pytest.raises(Exception, match=r"(?s)00002\.png.*(does not decode|sha256|size).*rerun"):
        evaluate(folder, folder, PROMPTS, config, progress=False)
    (folder / "manifest.csv").unlink()  # without a manifest: decoding finds it
    with pytest.raises(Exception, match=r"(?s)00002\.png.*does not decode.*rerun"):
        evaluate(folder, folder, PROMPTS, config, progress=False)


def test_evaluate_names_an_image_of_another_size(folder, config):
    (folder / "manifest.csv").unlink()
    Image.new("RGB", (8, 8)).save(folder / "00001.png")
    with pytest.raises(Exception, match=r"(?s)00001\.png.*8x8.*16x16"):
        evaluate(folder, folder, PROMPTS, config, progress=False)


def test_evaluate_names_swapped_images(folder, config):
    a, b = (folder / "00001.png").read_bytes(), (folder / "00002.png").read_bytes()
    (folder / "00001.png").write_bytes(b)
    (folder / "00002.png").write_bytes(a)
    with pytest.raises(Exception, match=r"(?s)00001\.png.*00002\.png.*manifest.*rerun"):
        evaluate(folder, folder, PROMPTS, config, progress=False)


def test_fid_to_real_images_names_a_damaged_real_image(finished, config, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for i in range(3):
        shutil.copyfile(finished / f"{i:05d}.png", real / f"r{i}.png")
    (real / "r1.png").write_bytes((real / "r1.png").read_bytes()[:100])
    with pytest.raises(FolderError, match=r"r1\.png does not decode.*replace or remove"):
        evaluate(finished, finished, PROMPTS, dataclasses.replace(config, real_images_dir=str(real)), progress=False)


def test_sample_grid_names_a_changed_image(folder, tmp_path):
    (folder / "00001.png").write_bytes((folder / "00000.png").read_bytes())
    with pytest.raises(Exception, match=r"(?s)00001\.png.*manifest"):
        sample_grid({"FP": folder}, tmp_path / "grid", [0, 1])
    assert not (tmp_path / "grid.png").exists()
    with pytest.raises(TypeError, match="prompts"):
        sample_grid({"FP": folder}, tmp_path / "grid", [0], prompts="a red circle")


def test_collect_shards_refuses_a_changed_shard_image(toy, tmp_path):
    shards = [tmp_path / f"{k}-of-2" for k in range(2)]
    for k, shard in enumerate(shards):
        generate(toy, PROMPTS, shard, shard=(k, 2), **SETTINGS)
    (shards[1] / "00003.png").write_bytes((shards[1] / "00002.png").read_bytes())
    with pytest.raises(GenerationError, match=r"(?s)1-of-2.*00003\.png.*rerun"):
        collect_shards(shards, tmp_path / "all")


def test_prompts_given_as_one_string_are_refused(toy, config, tmp_path):
    with pytest.raises(TypeError, match=r"prompts.*\['a cat'\]"):
        generate(toy, "a cat", tmp_path / "cat", **SETTINGS)
    assert not list(tmp_path.glob("cat/*.png"))
    with pytest.raises(TypeError, match="prompts"):
        evaluate(tmp_path, tmp_path, "a cat", config, progress=False)


@pytest.mark.parametrize("guidance", [0, -1.0, float("nan")])
def test_guidance_that_means_nothing_is_refused(toy, tmp_path, guidance):
    with pytest.raises(ValueError, match="guidance_scale"):
        generate(toy, PROMPTS[:1], tmp_path, **{**SETTINGS, "guidance_scale": guidance})
    assert not list(tmp_path.glob("*.png"))


def test_guidance_one_samples_without_guidance(toy, tmp_path):
    """guidance_scale <= 1 skips the unconditional pass in every pcr pipeline: 1 is 'no guidance'."""
    generate(toy, PROMPTS[:2], tmp_path, **{**SETTINGS, "guidance_scale": 1.0})
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_non_finite_images_are_refused_before_anything_is_written(tiny_model_dir, tmp_path):
    broken = load_pipeline(f"toy:{tiny_model_dir}")
    with torch.no_grad():
        next(broken.unet.parameters()).fill_(float("nan"))  # what a bad calibration file can do
    with pytest.raises(GenerationError, match=r"(?s)non-finite.*00000\.png.*a red circle.*NaN"):
        generate(broken, PROMPTS, tmp_path, **SETTINGS)
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize("spec", ["tiny-sd", "toy"])
def test_images_equal_the_pipelines_own_pil_output(spec, tiny_model_dir, tmp_path):
    """Sampling as arrays (to see NaNs) and converting as diffusers does keeps every PNG bit for bit."""
    pipe = load_pipeline(f"toy:{tiny_model_dir}" if spec == "toy" else spec)
    generate(pipe, PROMPTS[:2], tmp_path, **SETTINGS)
    pipe.set_progress_bar_config(disable=True)
    own = pipe(PROMPTS[:2], num_inference_steps=2, guidance_scale=4.0, output_type="pil",
               generator=[torch.Generator().manual_seed(3 + i) for i in range(2)]).images
    for i, image in enumerate(own):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{i:05d}.png")), np.asarray(image))
