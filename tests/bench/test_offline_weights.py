"""The real world's metric networks (torch-fidelity's Inception, an open_clip model) run offline, on
stand-in random weights put where their loaders look."""

import math
import socket
from pathlib import Path

import pytest
import torch
from offline_weights import install_random_inception, write_tiny_open_clip

from pcr.bench import MetricsConfig, evaluate, generate
from pcr.bench.features import create_extractor, load_clip_scorer
from pcr.bench.prompts import PromptSet
from pcr.pipelines import load_pipeline, tiny_sd

PROMPTS = PromptSet("txt:offline.txt", ("a red bicycle", "two dogs in a park", "a bowl of soup", "a lighthouse"))


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test, and the hub libraries are told they are offline."""

    def refuse(self, address):
        pytest.fail(f"tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch_home")
    install_random_inception(home)
    return home


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_open_clip(tmp_path_factory.mktemp("clip"))


def test_random_inception_is_where_torch_fidelitys_loader_reads_it(torch_home, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    [weights] = (Path(torch.hub.get_dir()) / "checkpoints").iterdir()
    assert weights.name == "weights-inception-2015-12-05-6726825d.pth"

    extractor, layer = create_extractor("inception-v3-compat")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = extractor(images)[0]  # (3, 2048)
    assert layer == "2048" and features.shape == (3, 2048) and torch.isfinite(features).all()
    varying = features.std(0) > 0  # (2048,): images differ in the first 64 features (but ReLU's dead ones) only
    assert varying[:64].sum() > 32 and not varying[64:].any()


def test_a_clip_model_given_as_a_config_file_loads_from_its_checkpoint(tiny_clip, no_network):
    config, checkpoint = tiny_clip
    scorer = load_clip_scorer(str(config), str(checkpoint))
    assert scorer.name == f"{config}:{checkpoint}"
    assert sum(p.numel() for p in scorer.model.parameters()) < 3_000_000  # the tiny one, not a ViT-L/14
    with pytest.raises(FileNotFoundError, match="CLIP-score model config /nowhere/clip.json does not exist"):
        load_clip_scorer("/nowhere/clip.json", str(checkpoint))
    not_clip = config.parent / "not-clip.json"
    not_clip.write_text('{"embed_dim": 32}')
    with pytest.raises(ValueError, match="needs the keys embed_dim, vision_cfg and text_cfg"):
        load_clip_scorer(str(not_clip), str(checkpoint))


def test_the_real_metric_path_runs_offline(torch_home, tiny_clip, monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    settings = dict(seed=3, num_inference_steps=2, batch_size=4, progress=False)
    generate(load_pipeline("tiny-sd"), PROMPTS, tmp_path / "fp", info={"model": "tiny-sd"}, **settings)
    generate(tiny_sd(seed=1), PROMPTS, tmp_path / "q", info={"model": "tiny-sd"}, **settings)  # a "quantized" one

    config, checkpoint = tiny_clip
    metrics = MetricsConfig(feature_extractor="inception-v3-compat", clip_model=str(config),
                            clip_pretrained=str(checkpoint), bootstrap=5, batch_size=4)
    result = evaluate(tmp_path / "q", tmp_path / "fp", PROMPTS, metrics, progress=False)
    m, prov = result["metrics"], result["provenance"]
    assert math.isfinite(m["fid"]) and m["fid"] >= 0
    assert m["kid"] is None and m["kid_subset_size"] is None  # fewer images than KID's halves need
    assert 0 <= m["clip_score"] <= 100 and 0 <= m["clip_score_reference"] <= 100
    assert m["fid_ci95"] is None  # 2048-dimensional features: no automatic FID bootstrap
    assert prov["feature_extractor"] == "inception-v3-compat" and prov["feature_dim"] == 2048
    assert prov["clip_model"] == f"{config}:{checkpoint}"
