"""The workflow's jobs (pcr.jobs), called as the rules call them, without Snakemake."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pcr import jobs
from pcr.bench.prompts import PromptSet, write_prompt_set

COMPUTE = {"device": "cpu", "dtype": "float32"}
QUANT = {"weight_bits": 4, "act_bits": 6, "num_steps": 2, "guidance_scale": 4.0, "batch_size": 2,
         "method": "progressive"}


def sampling(spec):
    return {"spec": spec, "steps": 2, "guidance": 4.0, "height": None, "width": None, "batch_size": 2,
            "dtype": "float32", "seed": 0}


def images(folder):
    return [np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))]


def test_a_lent_pipeline_comes_back_unquantized(tmp_path, tiny_model_dir, monkeypatch):
    """Jobs share one loaded pipeline per process; quantizing jobs must not leak into the next job."""
    monkeypatch.setenv("PCR_TORCH_THREADS", "1")
    threads = torch.get_num_threads()
    spec = f"toy:{tiny_model_dir}"
    prompts = tmp_path / "prompts.json"
    write_prompt_set(prompts, PromptSet("test", ("a red circle on the left", "a small blue square")))
    log = str(tmp_path / "job.log")
    jobs.generate(log, sampling(spec), None, prompts, None, (0, 1), COMPUTE, tmp_path / "fp/manifest.csv")
    jobs.calibrate_weights(log, spec, None, prompts, 0, {k: QUANT[k] for k in ("weight_bits", "num_steps")},
                           COMPUTE, tmp_path / "weights.safetensors")
    jobs.calibrate(log, spec, None, prompts, tmp_path / "weights.safetensors", 2, QUANT, COMPUTE,
                   tmp_path / "params.safetensors", tmp_path / "cost.json")
    jobs.generate(log, sampling(spec), None, prompts, tmp_path / "params.safetensors", (0, 1), COMPUTE,
                  tmp_path / "quantized/manifest.csv")
    jobs.generate(log, sampling(spec), None, prompts, None, (0, 1), COMPUTE, tmp_path / "fp_again/manifest.csv")
    fp, quantized, again = (images(tmp_path / name) for name in ("fp", "quantized", "fp_again"))
    assert len(fp) == 2 and all(np.array_equal(a, b) for a, b in zip(fp, again))
    assert not all(np.array_equal(a, b) for a, b in zip(fp, quantized))
    assert json.loads((tmp_path / "cost.json").read_text())["avg_act_bits"] == 6
    assert torch.get_num_threads() == threads
    settings = json.loads((tmp_path / "quantized/generation.json").read_text())
    assert settings["quantization"]["num_unet_calls"] == 2 and settings["info"]["quant_config_hash"]


def test_a_job_samples_with_its_regimes_scheduler_and_gives_the_pipelines_own_back(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    """Calibration and generation swap in the named scheduler for the job; parameters calibrated with it
    record it, and a job that samples them with another scheduler is stopped, not given wrong steps."""
    from pcr.quant import ParamsMismatchError, load_params

    monkeypatch.setenv("PCR_TORCH_THREADS", "1")
    spec = f"toy:{tiny_model_dir}"
    prompts = tmp_path / "prompts.json"
    write_prompt_set(prompts, PromptSet("test", ("a red circle on the left", "a small blue square")))
    log = str(tmp_path / "job.log")
    jobs.calibrate_weights(log, spec, None, prompts, 0, {"weight_bits": 4, "num_steps": 2}, COMPUTE,
                           tmp_path / "weights.safetensors", "euler")
    jobs.calibrate(log, spec, None, prompts, tmp_path / "weights.safetensors", 2, QUANT, COMPUTE,
                   tmp_path / "params.safetensors", tmp_path / "cost.json", "euler")
    assert load_params(tmp_path / "params.safetensors").scheduler == "EulerDiscreteScheduler"
    euler = {**sampling(spec), "scheduler": "euler"}
    jobs.generate(log, euler, None, prompts, tmp_path / "params.safetensors", (0, 1), COMPUTE,
                  tmp_path / "euler/manifest.csv")
    settings = json.loads((tmp_path / "euler/generation.json").read_text())
    assert settings["info"]["scheduler"] == "euler"
    assert settings["quantization"]["scheduler"] == "EulerDiscreteScheduler"
    with pytest.raises(ParamsMismatchError, match="calibrated with EulerDiscreteScheduler"):
        jobs.generate(log, sampling(spec), None, prompts, tmp_path / "params.safetensors", (0, 1), COMPUTE,
                      tmp_path / "own/manifest.csv")
    jobs.generate(log, sampling(spec), None, prompts, None, (0, 1), COMPUTE, tmp_path / "fp/manifest.csv")
    assert "scheduler" not in json.loads((tmp_path / "fp/generation.json").read_text())["info"]
    with jobs._pipeline(COMPUTE, spec) as pipe:  # the lent pipeline came back with its own scheduler
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"


def test_a_job_logs_its_traceback_and_gives_the_thread_count_back(tmp_path, monkeypatch):
    monkeypatch.setenv("PCR_TORCH_THREADS", "2")
    before, seen = torch.get_num_threads(), []

    @jobs.job
    def failing():
        seen.append(torch.get_num_threads())
        print("working", file=sys.stderr)
        raise ValueError("the reason")

    with pytest.raises(ValueError, match="the reason"):
        failing(str(tmp_path / "failing.log"))
    assert seen == [2] and torch.get_num_threads() == before
    log = (tmp_path / "failing.log").read_text()
    assert "working" in log and "ValueError: the reason" in log
