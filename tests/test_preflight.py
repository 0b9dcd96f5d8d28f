import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from offline_weights import install_random_inception, write_tiny_open_clip

import pcr.preflight
from pcr.preflight import PreflightError, preflight, problems

ROOT = Path(__file__).resolve().parents[1]
PROMPT_FILES = ["data/coco/annotations/captions_train2017.json", "data/coco/annotations/captions_val2017.json",
                "data/sd-prompts/eval.parquet", "data/PartiPrompts.tsv"]  # config/sd15.yaml's
NO_NETWORK = "its source is unreachable (the test's network is off)"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty Hugging Face cache, an empty TORCH_HOME, and the hub switched off."""
    import huggingface_hub.constants

    monkeypatch.setattr(pcr.preflight, "_url_answers", lambda url, timeout: NO_NETWORK)
    monkeypatch.setattr(pcr.preflight, "_hf_answers", lambda repo, filename, timeout: NO_NETWORK)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    from pcr.pipelines import tiny_sd

    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_sd().save_pretrained(folder)
    return folder


def sd15(**changes) -> dict:
    config = yaml.safe_load((ROOT / "config" / "sd15.yaml").read_text())
    return {**config, **changes}


def keys_of(found: list[str]) -> list[str]:
    return [line.split(":", 1)[0] for line in found]


def model_problems(config: dict, workdir: Path) -> list[str]:
    """The problems of `model` and `model_config` (the metrics' default networks are not installed)."""
    return [line for line in problems(config, workdir) if line.startswith("model")]


def test_a_paper_profile_lists_every_problem_at_once(offline):
    config = sd15(model="sd:CompVis/stable-diffusion-v1-4", compute={"device": "cuda", "dtype": "float16"})
    with pytest.raises(PreflightError) as raised:
        preflight(config, workdir=offline)
    message = str(raised.value)
    lines = message.splitlines()[1:]
    assert [re.match(r"  (\d+)\. ", line).group(1) for line in lines] == [str(i) for i in range(1, len(lines) + 1)]
    found = [line.split(". ", 1)[1] for line in lines]
    cuda = [] if torch.cuda.is_available() else ["compute.device"]
    assert keys_of(found) == ["prompts.calibration.spec", "prompts.evaluation.in_domain.spec",
                              "prompts.evaluation.sdprompts.spec", "prompts.evaluation.parti.spec", "model",
                              "metrics.feature_extractor", "metrics.clip_pretrained", *cuda]
    assert f"the file {offline / PROMPT_FILES[0]} does not exist" in found[0]
    model, inception, clip = found[4:7]
    assert "sd:CompVis/stable-diffusion-v1-4 is not in the Hugging Face cache" in model
    assert "HF_HUB_OFFLINE=1" in model and "`hf download CompVis/stable-diffusion-v1-4`" in model
    assert str(offline / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in inception
    assert NO_NETWORK in inception and "metrics.feature_weights" in inception
    assert "timm/vit_large_patch14_clip_224.openai" in clip and "HF_HUB_OFFLINE=1" in clip
    if cuda:
        assert "set it to auto" in found[-1]


def test_the_profile_passes_once_everything_is_supplied(offline, tiny_sd_folder):
    for name in PROMPT_FILES:
        (offline / name).parent.mkdir(parents=True, exist_ok=True)
        (offline / name).touch()
    install_random_inception(offline / "torch")
    clip_config, clip_checkpoint = write_tiny_open_clip(offline / "clip")
    config = sd15(model=f"sd:{tiny_sd_folder}", compute={"device": "auto", "dtype": "float32"},
                  metrics={"feature_extractor": "inception-v3-compat", "clip_model": str(clip_config),
                           "clip_pretrained": str(clip_checkpoint)})
    assert preflight(config, workdir=offline) is None

    (clip_checkpoint).unlink()
    assert keys_of(problems(config, workdir=offline)) == ["metrics.clip_pretrained"]


def fake_hub_cache(cache: Path, repo: str, saved: Path) -> Path:
    """The Hugging Face cache layout of `repo` at revision main, holding the files of `saved`."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    snapshot = repo_dir / "snapshots" / "0123abcd"
    shutil.copytree(saved, snapshot)
    return snapshot


def test_a_hub_id_in_the_cache_passes_offline(offline, tiny_sd_folder):
    snapshot = fake_hub_cache(offline / "hf", "tiny-org/tiny-sd", tiny_sd_folder)
    assert model_problems({"model": "sd:tiny-org/tiny-sd"}, offline) == []

    # a half-finished download: model_index.json there, the UNet's weights not
    for weights in (snapshot / "unet").glob("*.safetensors"):
        weights.unlink()
    [found] = model_problems({"model": "sd:tiny-org/tiny-sd"}, offline)
    assert found.startswith("model: sd:tiny-org/tiny-sd: its Hugging Face cache snapshot") and "unet weights" in found
    [found] = model_problems({"model": "sdxl:./nowhere"}, offline)
    assert found.startswith(f"model: sdxl:./nowhere: folder {offline / 'nowhere'} does not exist")


def test_a_single_file_checkpoint_offline_needs_model_config(offline, tiny_sd_folder):
    (offline / "sd15.safetensors").touch()
    [found] = model_problems({"model": "sd:sd15.safetensors"}, offline)
    assert found.startswith("model_config: unset") and "HF_HUB_OFFLINE=1" in found
    assert model_problems({"model": "sd:sd15.safetensors", "model_config": str(tiny_sd_folder)}, offline) == []
    [found] = model_problems({"model": "sd:missing.ckpt", "model_config": str(tiny_sd_folder)}, offline)
    assert found.startswith("model: sd:missing.ckpt: the checkpoint file")

    # a hub id as model_config: diffusers reads its configs only, so a cache without weights will do
    snapshot = fake_hub_cache(offline / "hf", "tiny-org/configs", tiny_sd_folder)
    for weights in snapshot.glob("*/*.safetensors"):
        weights.unlink()
    assert model_problems({"model": "sd:sd15.safetensors", "model_config": "tiny-org/configs"}, offline) == []
    [found] = model_problems({"model": "sd:sd15.safetensors", "model_config": "tiny-org/elsewhere"}, offline)
    assert found.startswith("model_config: tiny-org/elsewhere is not in the Hugging Face cache")


def test_downloads_that_answer_are_no_problems(offline, monkeypatch, tiny_sd_folder):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []
    monkeypatch.setattr(pcr.preflight, "_url_answers", lambda url, timeout: asked.append(url))
    monkeypatch.setattr(pcr.preflight, "_hf_answers", lambda repo, filename, timeout: asked.append(repo))
    assert problems(sd15(model="sd:CompVis/stable-diffusion-v1-4", prompts={}), workdir=offline) == []
    assert sorted(asked) == ["CompVis/stable-diffusion-v1-4", pcr.preflight.INCEPTION_URL,
                             "timm/vit_large_patch14_clip_224.openai"]

    monkeypatch.setattr(pcr.preflight, "_hf_answers", lambda repo, filename, timeout: f"{repo} is not on the hub")
    [found] = model_problems({"model": "sd:CompVis/stable-diffusion-v1-5"}, offline)
    assert found.startswith("model: sd:CompVis/stable-diffusion-v1-5 is not in the Hugging Face cache")
    assert "and CompVis/stable-diffusion-v1-5 is not on the hub: run `hf download" in found


def test_network_lookups_share_one_time_budget(offline, monkeypatch, tiny_sd_folder):
    def silent(url, timeout):
        time.sleep(5)

    monkeypatch.setattr(pcr.preflight, "_url_answers", silent)
    config = {"model": f"sd:{tiny_sd_folder}", "metrics": {"clip_model": "toy-clip"}}
    start = time.monotonic()
    found = problems(config, workdir=offline, network_budget_s=0.3)
    assert time.monotonic() - start < 2
    assert keys_of(found) == ["metrics.feature_extractor", "metrics.clip_model"]
    assert "its source gave no answer within 0.3 s" in found[0]


def test_the_toy_world_gets_only_the_checks_that_concern_it(offline):
    toy = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert toy["model"] == "toy" and problems(toy, workdir=offline) == []
    toy["compute"]["device"] = "cuda:0"
    assert keys_of(problems(toy, workdir=offline)) == ([] if torch.cuda.is_available() else ["compute.device"])
    assert problems(toy, workdir=offline, devices=False) == []  # a cluster's submit host: GPUs are on the nodes
    toy["prompts"]["evaluation"]["mine"] = {"spec": "txt:my_prompts.txt", "n": 4}
    assert "prompts.evaluation.mine.spec" in keys_of(problems(toy, workdir=offline))


def test_where_it_looks_is_where_the_libraries_look(monkeypatch, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from pcr.bench.metrics import MetricsConfig

    assert pcr.preflight.INCEPTION_URL == URL_INCEPTION_V3
    defaults = MetricsConfig()
    assert pcr.preflight.METRICS_DEFAULTS == {k: getattr(defaults, k) for k in pcr.preflight.METRICS_DEFAULTS}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = Path(torch.hub.get_dir())
    monkeypatch.delitem(sys.modules, "torch")  # the path computed without torch, as the workflow does
    assert pcr.preflight._torch_hub_dir() == expected == tmp_path / "hub"


def test_preflight_of_a_toy_config_does_not_import_torch():
    code = ("import sys, yaml; from pcr.preflight import problems; "
            "assert problems(yaml.safe_load(open('config/config.yaml'))) == []; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_url_lookups_tell_missing_from_unreachable():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/weights.pth" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        assert pcr.preflight._url_answers(f"{url}/weights.pth", 2) is None
        assert pcr.preflight._url_answers(f"{url}/gone.pth", 2) == "its source answers HTTP 404"
        server.shutdown()
    assert pcr.preflight._url_answers(f"{url}/weights.pth", 2).startswith("its source is unreachable")
