"""The Snakemake workflow on a fresh copy of the repository: validated config, and a real tiny run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def checkout(tmp_path: Path, config: dict | None = None) -> Path:
    """A copy of the workflow and a config, as a user's clone would have them."""
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    (tmp_path / "config").mkdir()
    config = config or yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SNAKEMAKE), "--cores", "1", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=600)


def test_default_config_is_valid_and_plans_the_toy_dag(tmp_path):
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    run = snakemake(tmp_path, "--dry-run", "all")
    assert run.returncode == 0, run.stderr
    for rule in ("toy_clip", "toy_model", "toy_evaluator", "toy_sample_grid"):
        assert rule in run.stdout


def test_bad_config_names_the_key(tmp_path):
    config = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    config["toy"]["model"]["stepz"] = config["toy"]["model"].pop("steps")
    run = snakemake(checkout(tmp_path, config), "--dry-run", "all")
    assert run.returncode != 0
    message = run.stdout + run.stderr
    assert "'stepz' was unexpected" in message and "['toy']['properties']['model']" in message


@pytest.mark.slow
def test_tiny_dag_runs_end_to_end_and_a_rerun_does_nothing(tmp_path):
    workdir = checkout(tmp_path)
    run = snakemake(workdir, "all")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((workdir / "results/toy/evaluator.json").read_text())
    for figures in ("clip_zero_shot", "model_prompt_following"):
        assert set(result[figures]) == {"eval_in", "eval_out"}
        assert set(result[figures]["eval_out"]) == {"shape", "colour", "size", "position", "background"}
    assert result["prompts"]["n"] == 4
    grid = Image.open(workdir / "results/toy/sample_grid.png")
    assert grid.size == ((2 + 1) * (16 + 2) * 4 + 8, 2 * (16 + 2) * 4 + 8)  # truth + 2 seeds, 2 prompts
    assert (workdir / "logs/toy_model.log").stat().st_size > 0
    again = snakemake(workdir, "all")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
