"""The paper profiles (config/sd15.yaml, sd21.yaml, sdxl.yaml) run `all` end to end, in miniature.

The profile files themselves are used, with only the model, the prompt counts and the sizes
overridden (a second --configfile): tiny pipelines saved as diffusers folders that carry the real
checkpoints' scheduler configs and flags (PNDM for SD 1.x, DDIM v-prediction for SD 2.1, Euler and
two text encoders for SDXL), prompt files in the real formats at the paths the profiles name, 2
generation shards (SD 1.5's; the others run one), torch-fidelity's Inception loaded from a random
weight file where its loader looks (TORCH_HOME), and open_clip's path through a tiny model config.
Nothing is downloaded.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from offline_weights import install_random_inception, write_tiny_open_clip

from pcr.pipelines.checkpoints import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
STEPS = 3  # the fewest at which relaxing 20% of the calls relaxes one
BITS = ["W4A8"]  # one of the profiles' two bit settings: the other adds jobs, not code paths
SHARDED = "sd15"  # the profile run in 2 generation shards (and checked by the preflight); the others in one
# profile -> (tiny checkpoint kind, its model spec, scheduler, UNet calls for STEPS steps)
PROFILES = {
    "sd15": ("sd15", "sd:tiny", "PNDMScheduler", STEPS + 1),
    "sd21": ("sd21", "sd:tiny", "DDIMScheduler", STEPS),
    "sdxl": ("sdxl", "sdxl:tiny", "EulerDiscreteScheduler", STEPS),
}


def write_prompt_files(workdir: Path, profile: dict) -> None:
    """Files in the formats users download, at the paths the profile names (captions differ per set)."""
    def path(spec):
        return workdir / spec.partition(":")[2]

    subjects = {"calibration": "dogs on a beach", "in_domain": "cats in a kitchen"}
    sets = {"calibration": profile["prompts"]["calibration"], **profile["prompts"]["evaluation"]}
    for name, entry in sets.items():
        kind, target = entry["spec"].partition(":")[0], path(entry["spec"])
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "coco":  # captions_{train,val}2017.json
            captions = [f"a photo of {i} {subjects[name]}" for i in range(8)]
            target.write_text(json.dumps({"images": [{"id": i} for i in range(8)], "annotations": [
                {"image_id": i, "id": 100 + i, "caption": c} for i, c in enumerate(captions)]}))
        elif kind == "sdprompts":  # Gustavosta/Stable-Diffusion-Prompts, eval split
            pq.write_table(pa.table({"Prompt": [f"portrait of a knight {i}, digital art, artstation"
                                                for i in range(8)]}), target)
        elif kind == "parti":  # PartiPrompts.tsv
            rows = "".join(f"a tiny robot number {i}\tArts\tBasic\t\n" for i in range(8))
            target.write_text("Prompt\tCategory\tChallenge\tNote\n" + rows)
        else:
            raise AssertionError(f"the test writes no {kind} prompt file; add it")


def miniature(model: str, clip: tuple[Path, Path], shards: int) -> dict:
    """The overrides: the tiny model, 2 prompts per set, STEPS steps at 32x32, ``shards``, tiny CLIP, W4A8."""
    return {
        "model": model,
        "prompts": {"calibration": {"n": 2}, "evaluation": {s: {"n": 2} for s in ("in_domain", "sdprompts", "parti")}},
        "sampling": {"steps": STEPS, "height": 32, "width": 32, "batch_size": 1, "shards": shards},
        "quant": {"common": {"batch_size": 2}, "bits": BITS},
        "ablations": {"calib_size": {"sizes": [1, 2]}},
        "metrics": {"clip_model": str(clip[0]), "clip_pretrained": str(clip[1]), "bootstrap": 5, "batch_size": 2},
    }


def snakemake(workdir: Path, profile: str, env: dict) -> subprocess.CompletedProcess:
    args = [str(SNAKEMAKE), "--cores", "2", "all", "--configfile", f"config/{profile}.yaml", "miniature.yaml",
            "--replace-workflow-config"]
    return subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **env, "PCR_TORCH_THREADS": "1"})


@pytest.fixture(scope="module")
def metric_networks(tmp_path_factory):
    root = tmp_path_factory.mktemp("networks")
    install_random_inception(root / "torch_home")
    return root / "torch_home", write_tiny_open_clip(root / "clip")


@pytest.mark.slow
@pytest.mark.parametrize("profile", list(PROFILES))
def test_paper_profile_runs_end_to_end_in_miniature(profile, metric_networks, tmp_path):
    kind, model, scheduler, calls = PROFILES[profile]
    torch_home, clip = metric_networks
    workdir = tmp_path / profile
    shutil.copytree(ROOT / "workflow", workdir / "workflow")
    shutil.copytree(ROOT / "config", workdir / "config")
    config = yaml.safe_load((workdir / "config" / f"{profile}.yaml").read_text())
    save_tiny_checkpoint(kind, workdir / "tiny")
    sharded = profile == SHARDED
    (workdir / "miniature.yaml").write_text(yaml.safe_dump(miniature(model, clip, 2 if sharded else 1)))
    env = {"HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "empty_torch_home")}

    if sharded:  # preflight: before any job, one error lists every missing input (the profiles' sets are alike)
        missing = snakemake(workdir, profile, env)
        out = missing.stdout + missing.stderr
        assert missing.returncode != 0 and "captions_train2017.json" in out and "PartiPrompts.tsv" in out
        assert "weights-inception-2015-12-05" in out and not (workdir / "results").exists()

    write_prompt_files(workdir, config)
    run = snakemake(workdir, profile, {**env, "TORCH_HOME": str(torch_home)})
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    table = pd.read_csv(workdir / "results/tables/main.csv")
    variants, sets = config["quant"]["variants"], config["prompts"]["evaluation"]
    assert "W4A8" in config["quant"]["bits"] and set(table["bits"]) == {"W4A8", "FP"}
    assert len(table) == (len(variants) * len(BITS) + 1) * len(sets)
    assert set(table["prompt_set"]) == set(sets) and (table["n_images"] == 2).all()
    quantized = table[table["variant"] != "fp-reseeded"]
    assert quantized["fid"].notna().all() and quantized["psnr"].between(5, 100).all()
    relaxed = quantized[quantized["variant"] == "progressive_relax"]
    assert (relaxed["avg_act_bits"] > relaxed["act_bits"]).all()

    metrics = json.loads((workdir / "results/metrics/progressive/W4A8/parti.json").read_text())
    assert metrics["provenance"]["feature_extractor"] == "inception-v3-compat"
    assert metrics["provenance"]["clip_model"].startswith(str(clip[0]))
    generation = metrics["provenance"]["generation"]
    assert generation["quantization"]["scheduler"] == scheduler
    assert generation["quantization"]["num_unet_calls"] == calls
    assert generation["resolution"] == [32, 32] and generation["resolution_mismatch"] is False
    assert generation["safety_checker"] == "off"
    shards = workdir / "results/images/progressive/W4A8/parti/shards"
    assert sorted(p.name for p in shards.iterdir()) == ["0-of-2", "1-of-2"] if sharded else not shards.exists()
    assert len(list((workdir / "results/images/progressive/W4A8/parti").glob("*.png"))) == 2
