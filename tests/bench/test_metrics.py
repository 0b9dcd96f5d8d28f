import json
import urllib.error

import numpy as np
import pytest
import torch

from pcr.bench.features import create_extractor, load_clip_scorer
from pcr.bench.generation import generate
from pcr.bench.metrics import (
    MetricsConfig,
    bootstrap_interval,
    evaluate,
    fid_interval,
    kid_subset_size,
    paired_psnr_ssim,
    read_metrics,
    write_metrics,
)
from pcr.bench.prompts import PromptSet
from pcr.pipelines import load_pipeline, tiny_sd


def noisy(images, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(images + rng.normal(0, sigma, images.shape)), 0, 255).astype(np.uint8)


@pytest.fixture
def config(bench_clip_dir):
    return MetricsConfig.toy(bench_clip_dir, bootstrap=20, batch_size=8)


@pytest.fixture
def reference(toy_set, save_images, tmp_path):
    return save_images(tmp_path / "fp", toy_set[1])


def test_identical_folders(toy_set, reference, config, tmp_path):
    prompts = PromptSet("toy:eval_in", tuple(toy_set[0]))
    result = evaluate(reference, reference, prompts, config, progress=False)
    m = result["metrics"]
    assert abs(m["fid"]) < 1e-3  # KID is not ~0 here: its unbiased estimator is -O(1/n) for identical sets
    assert m["psnr"] == float("inf") and m["psnr_identical"] == len(prompts)
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["clip_score"] == m["clip_score_reference"]
    lo, hi = m["clip_score_ci95"]
    assert lo <= m["clip_score"] <= hi
    assert m["clip_score_delta"] == 0 and m["clip_score_delta_ci95"] == [0, 0]
    assert m["psnr_ci95"] == [float("inf")] * 2 and m["ssim_ci95"] == pytest.approx([1, 1], abs=1e-6)
    assert result["provenance"]["prompt_set"] == "toy:eval_in" and result["provenance"]["n_images"] == 12
    per_image = m["per_image"]
    assert per_image["psnr"] == [float("inf")] * 12 and per_image["ssim"] == pytest.approx([1.0] * 12, abs=1e-6)
    assert per_image["clip_score"] == per_image["clip_score_reference"]
    assert np.mean(per_image["clip_score"]) == pytest.approx(m["clip_score"])

    path = write_metrics(tmp_path / "metrics.json", result)
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert '"psnr": "inf"' in text
    back = read_metrics(path)["metrics"]
    assert back["psnr"] == float("inf")
    assert back["per_image"] == per_image  # inf PSNRs survive as "inf" in the file
    assert back["psnr_ci95"] == m["psnr_ci95"] and back["kid_subset_size"] == 6


def test_psnr_pools_the_squared_error_so_one_identical_image_does_not_make_it_infinite(
        toy_set, reference, save_images, config, tmp_path):
    prompts = PromptSet("toy:eval_in", tuple(toy_set[0]))
    images = toy_set[1].astype(np.int16)
    images[1:] += np.where(images[1:] < 128, 5, -5)  # every image but the first is 5 levels off everywhere
    m = evaluate(save_images(tmp_path / "q", images.astype(np.uint8)), reference, prompts, config,
                 progress=False)["metrics"]
    n = len(prompts)
    assert m["psnr_identical"] == 1 and m["psnr_mean_per_image"] == float("inf")
    assert m["psnr"] == pytest.approx(20 * np.log10(255 / 5) + 10 * np.log10(n / (n - 1)))
    psnr = m["per_image"]["psnr"]
    assert psnr[0] == float("inf") and psnr[1:] == pytest.approx([20 * np.log10(255 / 5)] * (n - 1))
    # finite though one pair is identical: its interval is over the pooled PSNR too
    lo, hi = m["psnr_ci95"]
    assert np.isfinite(hi) and lo <= m["psnr"] <= hi and lo < hi


def test_growing_noise_gives_monotone_metrics(toy_set, reference, save_images, config, tmp_path):
    results = []
    for sigma in (0, 6, 20, 60):
        folder = save_images(tmp_path / f"noise{sigma}", noisy(toy_set[1], sigma))
        results.append(evaluate(folder, reference, toy_set[0], config, progress=False)["metrics"])
    for key, sign in (("fid", 1), ("kid", 1), ("psnr", -1), ("ssim", -1)):
        values = [r[key] for r in results]
        assert all(sign * (b - a) > 0 for a, b in zip(values, values[1:], strict=False)), (key, values)
    assert abs(results[0]["fid"]) < 1e-3 * results[1]["fid"]  # identical: 0 up to rounding
    assert results[1]["psnr"] > 25 > results[-1]["psnr"]
    for m in results[1:]:
        for key in ("fid", "psnr", "ssim", "clip_score_delta"):
            lo, hi = m[f"{key}_ci95"]
            assert lo <= m[key] <= hi, (key, m[key], lo, hi)
        clip, ref = (np.array(m["per_image"][k]) for k in ("clip_score", "clip_score_reference"))
        assert m["clip_score_delta"] == pytest.approx((clip - ref).mean())
        assert m["clip_score_delta"] == pytest.approx(m["clip_score"] - m["clip_score_reference"])
        assert np.mean(m["per_image"]["ssim"]) == pytest.approx(m["ssim"])


def test_fid_and_kid_equal_torch_fidelitys_own(toy_set, reference, save_images, config, tmp_path, bench_clip_dir):
    import torch_fidelity

    folder = save_images(tmp_path / "noise", noisy(toy_set[1], 30))
    ours = evaluate(folder, reference, toy_set[0], config, progress=False)["metrics"]
    theirs = torch_fidelity.calculate_metrics(
        input1=str(folder), input2=str(reference), fid=True, kid=True, kid_subset_size=len(toy_set[0]) // 2,
        feature_extractor="toy-clip", feature_extractor_weights_path=str(bench_clip_dir), cuda=False, cache=False,
        verbose=False, save_cpu_ram=True, batch_size=config.batch_size, rng_seed=config.seed)
    assert ours["fid"] == theirs["frechet_inception_distance"]
    assert ours["kid"] == theirs["kernel_inception_distance_mean"] and ours["kid_subset_size"] == 6


def test_kid_subsets_are_at_most_half_the_images(toy_set, reference, config):
    assert [kid_subset_size(n, 1000) for n in (7, 8, 13, 5000)] == [None, 4, 6, 1000]
    assert kid_subset_size(64, 10) == 10
    m = evaluate(reference, reference, toy_set[0][:7], config, progress=False)["metrics"]
    assert m["kid"] is None and m["kid_std"] is None and m["kid_subset_size"] is None
    assert m["fid"] == pytest.approx(0, abs=1e-3)  # the rest is still measured


def gaussian_features(shift, n=64, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    b = rng.normal(size=(n, dim)) * (1 + shift) + shift
    return torch.from_numpy(a), torch.from_numpy(b)


@pytest.mark.parametrize("shift", [0.0, 0.5, 2.0])
def test_fid_interval_contains_its_estimate(shift):
    from pcr.bench.metrics import _fid

    for seed in range(3):
        a, b = gaussian_features(shift, seed=seed)
        fid = _fid(a, b)
        lo, hi = fid_interval(a, b, 50, seed=seed)
        assert 0 <= lo <= fid <= hi, (seed, fid, lo, hi)
        assert fid_interval(a, b, 50, seed=seed, estimate=fid) == [lo, hi]
        assert hi - lo > 0.05 * fid  # an interval, not the point


def test_plain_bootstrap_of_fid_misses_its_estimate():
    """Why fid_interval corrects its bootstrap: resampling with replacement repeats images and
    inflates FID, so the plain percentile interval lies above FID for samples of one distribution."""
    from pcr.bench.metrics import _fid

    a, b = gaussian_features(0.0)
    fid = _fid(a, b)
    plain = bootstrap_interval(len(a), lambda i: _fid(a[torch.from_numpy(i)], b[torch.from_numpy(i)]), 50)
    assert plain[0] > fid
    assert fid_interval(a, b, 50)[0] <= fid
    assert fid_interval(a, b, 0) is None


def test_generated_folders_carry_provenance(config, tmp_path):
    prompts = PromptSet("txt:few.txt", ("a red bicycle", "two dogs", "a bowl of soup", "a lighthouse"))
    settings = dict(seed=7, num_inference_steps=2, batch_size=4, progress=False)
    generate(load_pipeline("tiny-sd"), prompts, tmp_path / "fp", info={"model": "tiny-sd"}, **settings)
    other = tiny_sd(seed=1)  # stands in for a quantized model
    generate(other, prompts, tmp_path / "q", info={"model": "tiny-sd", "quant_config_hash": "abc123"}, **settings)
    result = evaluate(tmp_path / "q", tmp_path / "fp", prompts, config, progress=False)
    prov = result["provenance"]
    assert prov["model"] == "tiny-sd" and prov["quant_config_hash"] == "abc123"
    assert prov["seeds"] == {"base": 7, "rule": "seed + index"} and prov["n_images"] == 4
    assert prov["feature_extractor"] == "toy-clip" and prov["torch_fidelity"] == "0.4.0"
    assert result["metrics"]["psnr"] < 40 and 0 < result["metrics"]["clip_score"] <= 100

    with pytest.raises(ValueError, match="generated for other prompts"):
        evaluate(tmp_path / "q", tmp_path / "fp", list(prompts)[::-1], config, progress=False)

    # the FP model from other seeds: images do not pair up, refused unless asked for unpaired
    generate(load_pipeline("tiny-sd"), prompts, tmp_path / "fp-reseeded", **{**settings, "seed": 8})
    with pytest.raises(ValueError, match=r"different \['seed'\]"):
        evaluate(tmp_path / "fp-reseeded", tmp_path / "fp", prompts, config, progress=False)
    unpaired = evaluate(tmp_path / "fp-reseeded", tmp_path / "fp", prompts, config, paired=False, progress=False)
    assert unpaired["metrics"]["paired"] is False and unpaired["metrics"]["fid"] > 0
    assert result["metrics"]["paired"] is True


def test_fid_to_real_images(toy_set, reference, save_images, config, tmp_path):
    real = save_images(tmp_path / "real", noisy(toy_set[1], 3, seed=1))
    m = evaluate(reference, reference, toy_set[0], MetricsConfig.toy(config.toy_clip, real_images_dir=str(real),
                                                                      bootstrap=0), progress=False)["metrics"]
    assert m["n_real_images"] == 12 and m["fid_real"] == m["fid_real_reference"] > 0
    assert m["fid_ci95"] is None and m["clip_score_ci95"] is None
    assert m["psnr_ci95"] is m["ssim_ci95"] is m["clip_score_delta_ci95"] is None


def test_paired_psnr_ssim_known_values():
    a = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    b = a.clone()
    b[1] += 5  # a uniform error of 5 levels: PSNR = 20 log10(255 / 5)
    psnr, ssim = paired_psnr_ssim(a, b)
    assert psnr[0] == float("inf") and psnr[1] == pytest.approx(20 * np.log10(255 / 5))
    assert ssim[0] == pytest.approx(1.0) and ssim[1] < 1.0
    with pytest.raises(ValueError, match="same resolution"):
        paired_psnr_ssim(a, b[:, :, :8])


def test_bootstrap_interval_is_seeded():
    values = np.arange(20.0)
    interval = bootstrap_interval(20, lambda i: values[i].mean(), 50, seed=3)
    assert interval == bootstrap_interval(20, lambda i: values[i].mean(), 50, seed=3)
    assert interval[0] < values.mean() < interval[1]
    assert bootstrap_interval(20, lambda i: 0.0, 0) is None


def test_bootstrap_interval_bias_correction_shifts_by_the_mean_bias():
    values = np.arange(20.0)
    plain = bootstrap_interval(20, lambda i: values[i].max(), 50, seed=1)  # max: biased low when resampled
    draws = np.random.default_rng(1).integers(0, 20, size=(50, 20))
    bias = np.mean([values[i].max() for i in draws]) - values.max()
    shifted = bootstrap_interval(20, lambda i: values[i].max(), 50, seed=1, estimate=values.max())
    assert shifted == pytest.approx([plain[0] - bias, plain[1] - bias])
    assert bias < 0 and plain[1] == values.max() < shifted[1]


def test_missing_images_and_bad_config_are_clear_errors(toy_set, reference, config, tmp_path):
    (reference / "00003.png").unlink()
    with pytest.raises(FileNotFoundError, match="lacks 1 of the 12 images"):
        evaluate(reference, reference, toy_set[0], config, progress=False)
    with pytest.raises(ValueError, match=r"unknown metrics config key\(s\) \['kid_size'\]"):
        MetricsConfig.from_dict({"kid_size": 10})
    with pytest.raises(ValueError, match="needs toy_clip"):
        MetricsConfig(feature_extractor="toy-clip")


def test_offline_model_loading_is_a_clear_error(monkeypatch):
    import open_clip
    import torch_fidelity.utils

    with pytest.raises(FileNotFoundError, match="CLIP-score checkpoint /nowhere/clip.bin does not exist"):
        load_clip_scorer("ViT-L-14", "/nowhere/clip.bin")

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(RuntimeError, match="set clip_pretrained to the checkpoint file"):
        load_clip_scorer("ViT-L-14", "openai")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch_fidelity.utils, "create_feature_extractor", no_network)
    with pytest.raises(RuntimeError, match="pass the file as MetricsConfig.feature_weights"):
        create_extractor("inception-v3-compat")
