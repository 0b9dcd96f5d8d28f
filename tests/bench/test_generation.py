import json

import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from pcr.bench.generation import GenerationError, collect_shards, generate, merge_manifests, read_manifest
from pcr.pipelines import load_pipeline

PROMPTS = ["a red bicycle", "two dogs in a park", "a bowl of soup", "a lighthouse at dusk", "a green apple"]
SETTINGS = dict(seed=10, num_inference_steps=2, guidance_scale=7.5, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-sd")


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory):
    """An uninterrupted, unsharded run: the folder every other run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("gen") / "reference"
    generate(pipe, PROMPTS, out, batch_size=2, info={"model": "tiny-sd"}, **SETTINGS)
    return out


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith("manifest.shard")}


def test_one_png_per_prompt_with_manifest_and_settings(reference):
    assert sorted(p.name for p in reference.iterdir()) == [
        "00000.png", "00001.png", "00002.png", "00003.png", "00004.png", "generation.json", "manifest.csv"]
    rows = read_manifest(reference / "manifest.csv")
    assert [(r["index"], r["prompt"], r["seed"], r["file"]) for r in rows] == [
        (i, p, 10 + i, f"{i:05d}.png") for i, p in enumerate(PROMPTS)]
    settings = json.loads((reference / "generation.json").read_text())
    assert settings["pipeline"] == "StableDiffusionPipeline" and settings["count"] == 5
    assert settings["seed_rule"] == "seed + index" and settings["info"] == {"model": "tiny-sd"}
    assert Image.open(reference / "00000.png").size == (32, 32)


def test_sharded_generation_equals_unsharded(pipe, reference, tmp_path):
    out = tmp_path / "sharded"
    for k in (1, 0):  # in any order; shard 0 runs batches [0, 1] and [4], shard 1 runs [2, 3]
        manifest = generate(pipe, PROMPTS, out, batch_size=2, shard=(k, 2), info={"model": "tiny-sd"}, **SETTINGS)
        assert manifest.name == f"manifest.shard-{k}-of-2.csv"
        assert [r["index"] for r in read_manifest(manifest)] == [[0, 1, 4], [2, 3]][k]
    merge_manifests(out)
    assert folder_bytes(out) == folder_bytes(reference)


def test_shards_in_their_own_folders_collect_to_the_unsharded_folder(pipe, reference, tmp_path):
    """The workflow's layout: one folder per shard job (each resumable alone), joined by collect_shards."""
    shards = [tmp_path / "shards" / f"{k}-of-2" for k in range(2)]
    for k, folder in enumerate(shards):
        generate(pipe, PROMPTS, folder, batch_size=2, shard=(k, 2), info={"model": "tiny-sd"}, **SETTINGS)
    with pytest.raises(GenerationError, match="do not cover"):
        collect_shards(shards[:1], tmp_path / "partial")
    collect_shards(shards, tmp_path)
    assert folder_bytes(tmp_path) == folder_bytes(reference)
    assert sorted(p.name for p in shards[1].glob("*.png")) == ["00002.png", "00003.png"]


def test_replace_stale_starts_over_but_same_settings_resume(pipe, reference, tmp_path):
    out = tmp_path / "stale"
    generate(pipe, PROMPTS, out, batch_size=2, info={"model": "tiny-sd", "params_sha256": "old"}, **SETTINGS)
    marker = (out / "00000.png").stat().st_mtime_ns
    generate(pipe, PROMPTS, out, batch_size=2, info={"model": "tiny-sd", "params_sha256": "old"}, replace_stale=True,
             **SETTINGS)
    assert (out / "00000.png").stat().st_mtime_ns == marker  # same settings: nothing redone
    generate(pipe, PROMPTS[:3], out, batch_size=2, info={"model": "tiny-sd", "params_sha256": "new"},
             replace_stale=True, **SETTINGS)
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert json.loads((out / "generation.json").read_text())["info"]["params_sha256"] == "new"


def test_merge_refuses_an_unfinished_sharded_run(pipe, tmp_path):
    generate(pipe, PROMPTS, tmp_path, batch_size=4, shard=(1, 2), **SETTINGS)
    with pytest.raises(GenerationError, match=r"shard\(s\) \[0\] of 2 have not finished"):
        merge_manifests(tmp_path)


def test_killed_and_rerun_gives_the_same_folder(pipe, reference, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real_call = StableDiffusionPipeline.__call__
    calls = []

    def dies_on_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(pipe, PROMPTS, out, batch_size=2, info={"model": "tiny-sd"}, **SETTINGS)
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", real_call)
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]
    (out / ".00003.png.x1y2.tmp").write_bytes(b"half an image")  # what a SIGKILL mid-write leaves
    (out / "00001.png").unlink()  # its batch [0, 1] runs again, whole, and writes 00001.png only

    generate(pipe, PROMPTS, out, batch_size=2, info={"model": "tiny-sd"}, **SETTINGS)
    assert folder_bytes(out) == folder_bytes(reference)
    assert not list(out.glob(".*"))


def test_rerun_with_other_settings_is_refused(pipe, reference):
    with pytest.raises(GenerationError, match="num_inference_steps differ"):
        generate(pipe, PROMPTS, reference, **{**SETTINGS, "num_inference_steps": 3})
    with pytest.raises(GenerationError, match="batch_size differ"):  # bit-for-bit needs the same batches
        generate(pipe, PROMPTS, reference, batch_size=1, info={"model": "tiny-sd"}, **SETTINGS)
    with pytest.raises(GenerationError, match="count, prompts_sha256 differ"):
        generate(pipe, PROMPTS[:3], reference, info={"model": "tiny-sd"}, **SETTINGS)


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)], ids=["k-too-big", "k-negative", "n-zero"])
def test_bad_shard_is_refused(pipe, tmp_path, shard):
    with pytest.raises(ValueError, match="0 <= k < n"):
        generate(pipe, PROMPTS, tmp_path, shard=shard, **SETTINGS)


def test_toy_pipeline_generates_at_its_own_size(tiny_model_dir, tmp_path):
    toy = load_pipeline(f"toy:{tiny_model_dir}")
    generate(toy, PROMPTS[:3], tmp_path, batch_size=2, **SETTINGS)
    assert [Image.open(tmp_path / f"{i:05d}.png").size for i in range(3)] == [(16, 16)] * 3
    assert json.loads((tmp_path / "generation.json").read_text())["pipeline"] == "ToyPipeline"
