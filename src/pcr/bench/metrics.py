"""QDiffBench metrics of one generated folder against the full-precision folder of the same prompts
and seeds: FID and KID (torch-fidelity), CLIP score (open_clip), paired PSNR and SSIM, optional FID
to real images, and bootstrap intervals where cheap. Results are JSON with their provenance, so
tables can be rebuilt from results/ alone. The per-image values (metrics["per_image"]: PSNR, SSIM,
CLIP score of each image and of its FP reference, in prompt order) are kept so that a report can
compare two methods image by image (pcr.report.delta_table) without torch.

JSON has no infinity: identical image pairs have PSNR = inf, so non-finite numbers are written as
the strings "inf", "-inf" and "nan"; read_metrics turns them back into floats.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pcr.bench.features import TOY_CLIP, cached_network, create_extractor, extract_features, load_clip_scorer
from pcr.bench.folders import SETTINGS, FolderError, check_images, image_files
from pcr.bench.generation import SEED_RULE
from pcr.bench.prompts import PromptSet, prompt_list, prompts_digest
from pcr.io import atomic_file

__all__ = ["MetricsConfig", "bootstrap_interval", "evaluate", "fid_interval", "kid_subset_size", "paired_psnr_ssim",
           "pooled_psnr", "read_metrics", "write_metrics"]

FID_BOOTSTRAP_MAX_DIM = 512  # above this, one FID's eigendecomposition costs seconds: no automatic bootstrap
KID_MIN_IMAGES = 8  # below this, two halves of the images are too few subsets for KID to mean anything
# Settings that must agree between the evaluated and the reference folder for images to pair up.
PAIRED_SETTINGS = ("seed", "seed_rule", "count", "prompts_sha256", "height", "width")


@dataclass(frozen=True)
class MetricsConfig:
    """How the metrics are computed. The defaults are the real world's; `MetricsConfig.toy(folder)`
    gives the toy world's (the toy CLIP as FID feature network and as CLIP-score model)."""

    feature_extractor: str = "inception-v3-compat"  # a torch-fidelity feature extractor, or "toy-clip"
    feature_weights: str | None = None  # local weights for torch-fidelity's networks (offline runs)
    toy_clip: str | None = None  # the toy CLIP folder, for "toy-clip"
    clip_model: str = "ViT-L-14"  # open_clip model name, or "toy-clip"
    clip_pretrained: str = "openai"  # open_clip tag or checkpoint file
    kid_subset_size: int = 1000  # capped at half the image count (see kid_subset_size())
    kid_subsets: int = 100
    bootstrap: int = 100  # resamples for the 95% intervals; 0 turns them off
    bootstrap_fid: bool | None = None  # None: only when the features have <= 512 dimensions (cheap)
    batch_size: int = 32
    seed: int = 0  # KID subsets and bootstrap resamples
    real_images_dir: str | None = None  # optional folder of real images for FID to real data
    device: str = "cpu"

    def __post_init__(self):
        for key in ("kid_subset_size", "kid_subsets", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"MetricsConfig.{key} must be a positive integer, got {getattr(self, key)!r}")
        if not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"MetricsConfig.bootstrap must be an integer >= 0, got {self.bootstrap!r}")
        for key in ("feature_extractor", "clip_model"):
            if getattr(self, key) == TOY_CLIP and self.toy_clip is None:
                raise ValueError(f"MetricsConfig.{key} 'toy-clip' needs toy_clip: the toy CLIP folder")

    @classmethod
    def toy(cls, toy_clip: str | os.PathLike, **changes) -> MetricsConfig:
        return cls(feature_extractor=TOY_CLIP, clip_model=TOY_CLIP, toy_clip=str(toy_clip), **changes)

    @classmethod
    def from_dict(cls, values: dict) -> MetricsConfig:
        """Build from a plain dict (YAML); unknown keys are an error naming them."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown metrics config key(s) {unknown}; known keys: {known}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_psnr_ssim(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR (dB) and SSIM of uint8 images (N, 3, H, W) against their partners.

    PSNR is inf for identical images. SSIM is pytorch-msssim's (11-pixel Gaussian window, sigma
    1.5, the standard constants), averaged over the three channels."""
    from pytorch_msssim import ssim

    if a.shape != b.shape:
        raise ValueError(f"paired images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}; both folders "
                         "must be generated at the same resolution")
    x, y = a.double(), b.double()
    mse = ((x - y) ** 2).flatten(1).mean(1).numpy()  # (N,)
    with np.errstate(divide="ignore"):
        psnr = 10 * np.log10(255.0**2 / mse)  # mse 0 -> inf
    ssim_values = ssim(x, y, data_range=255, size_average=False).numpy()
    return psnr, ssim_values


def bootstrap_interval(n: int, statistic, resamples: int, seed: int = 0,
                       estimate: float | None = None) -> list[float] | None:
    """95% percentile interval of statistic(indices) over `resamples` draws of n indices with replacement.

    With `estimate` (the statistic on all n), the draws are first shifted by the bootstrap's mean bias,
    mean(draws) - estimate: for a statistic that resampling itself biases (FID, see fid_interval)."""
    if resamples < 1 or n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=float)
    if estimate is not None:
        values = values - (values.mean() - estimate)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def pooled_psnr(mse: np.ndarray) -> float:
    """PSNR (dB) of the mean squared error over all pairs: inf only if every pair is identical."""
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(255.0**2 / np.mean(mse)))


def _mse(psnr: np.ndarray) -> np.ndarray:
    return 255.0**2 / 10 ** (np.asarray(psnr, dtype=float) / 10)  # inf dB -> 0


def _fid(f1: torch.Tensor, f2: torch.Tensor) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(f) for f in (f1, f2)]
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def fid_interval(gen_feats: torch.Tensor, ref_feats: torch.Tensor, resamples: int, seed: int = 0,
                 estimate: float | None = None) -> list[float] | None:
    """95% interval of FID by a bias-corrected paired bootstrap (image i and its reference stay together).

    Why corrected: a resample with replacement repeats images, which shrinks the feature covariances'
    effective sample size and inflates FID, so plain percentiles sat above the estimate (FP floor:
    0.0777 in [0.082, 0.196]). Shifting the resampled FIDs by their mean bias, mean(FID*) - FID, keeps
    the spread and centres it on the estimate. Subsampling without replacement was not chosen: its
    bias grows as the subsets shrink and undoing it needs an assumed convergence rate. The lower end
    is clipped at 0 (FID is a squared distance)."""
    estimate = _fid(gen_feats, ref_feats) if estimate is None else estimate

    def resampled(i: np.ndarray) -> float:
        i = torch.from_numpy(i)
        return _fid(gen_feats[i], ref_feats[i])

    interval = bootstrap_interval(len(gen_feats), resampled, resamples, seed, estimate=estimate)
    if interval is None:
        return None
    floor = min(0.0, estimate)
    return [max(interval[0], floor), max(interval[1], floor)]


def kid_subset_size(n: int, configured: int) -> int | None:
    """KID's subset size for n images: at most n // 2, so the subsets differ (with n of n every subset
    was the whole set and KID the same -0.0026 for every row); None below KID_MIN_IMAGES images."""
    return None if n < KID_MIN_IMAGES else min(configured, n // 2)


def _settings(folder: Path) -> dict | None:
    path = folder / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else None


def _checked_files(images_dir: Path, reference_dir: Path, n: int) -> tuple[list[Path], list[Path]]:
    """Both folders' images 0..n-1, checked before any network sees them (pcr.bench.folders.check_images:
    each is the file its manifest pins, or decodes; one size per folder), and of one size across them."""
    gen_files, ref_files = image_files(images_dir, n), image_files(reference_dir, n)
    size, ref_size = check_images(images_dir, gen_files), check_images(reference_dir, ref_files)
    if size != ref_size:
        raise FolderError(f"the images of {images_dir} are {size[0]}x{size[1]}, those of the reference "
                          f"{reference_dir} {ref_size[0]}x{ref_size[1]}: paired metrics compare images of one size; "
                          "generate both folders at the same resolution")
    return gen_files, ref_files


def _check_pairing(images: dict | None, reference: dict | None, prompts: list[str], paired: bool) -> None:
    for which, settings in (("images", images), ("reference", reference)):
        if settings and (settings["count"], settings["prompts_sha256"]) != (len(prompts), prompts_digest(prompts)):
            raise ValueError(f"the {which} folder was generated for other prompts ({settings['count']} prompts, "
                             f"digest {settings['prompts_sha256']}) than the {len(prompts)} given "
                             f"(digest {prompts_digest(prompts)}); pass the prompt set it was generated from")
    if images and reference:
        keys = PAIRED_SETTINGS if paired else tuple(k for k in PAIRED_SETTINGS if k not in ("seed", "seed_rule"))
        differ = [k for k in keys if images.get(k) != reference.get(k)]
        if differ:
            raise ValueError(f"the images and the reference were generated with different {differ}: "
                             "their images do not pair up by prompt and seed; regenerate one of them")


def _load(files: Sequence[Path]) -> tuple[list[Image.Image], torch.Tensor]:
    pils = [Image.open(f).convert("RGB") for f in files]
    arrays = np.stack([np.asarray(p) for p in pils])  # (B, H, W, 3) uint8
    return pils, torch.from_numpy(arrays).permute(0, 3, 1, 2)


def _feature_metrics(gen_files: list[Path], ref_files: list[Path], config: MetricsConfig) -> tuple[dict, int]:
    """FID, KID, the FID interval and FID to real images, from one feature pass per folder."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    from torch_fidelity.utils import glob_samples_paths

    n, cuda = len(gen_files), config.device.startswith("cuda")
    weights = config.toy_clip if config.feature_extractor == TOY_CLIP else config.feature_weights
    # torch-fidelity finds its own weights under TORCH_HOME: part of the cache key
    key = (config.feature_extractor, weights, cuda, os.environ.get("TORCH_HOME"))
    extractor, layer = cached_network(
        "extractor", lambda name, path, on_cuda, _home: create_extractor(name, path, on_cuda), *key)
    gen_feats = extract_features(extractor, layer, gen_files, config.batch_size, cuda)  # (N, D)
    # the FP reference folder is measured against by every method: its features once per process
    stamp = tuple((str(f), st.st_mtime_ns, st.st_size) for f in ref_files for st in [f.stat()])
    ref_feats = cached_network("features", lambda *_: extract_features(extractor, layer, ref_files, config.batch_size,
                                                                       cuda), *key, stamp)
    subset = kid_subset_size(n, config.kid_subset_size)
    metrics = {"fid": _fid(gen_feats, ref_feats), "kid": None, "kid_std": None, "kid_subset_size": subset}
    if subset is not None:
        kid = kid_features_to_metric(gen_feats, ref_feats, kid_subset_size=subset, kid_subsets=config.kid_subsets,
                                     rng_seed=config.seed, verbose=False)
        metrics.update(kid=kid[KEY_METRIC_KID_MEAN], kid_std=kid[KEY_METRIC_KID_STD])
    fid_boot = config.bootstrap_fid
    if fid_boot is None:
        fid_boot = gen_feats.shape[1] <= FID_BOOTSTRAP_MAX_DIM
    metrics["fid_ci95"] = (fid_interval(gen_feats, ref_feats, config.bootstrap, config.seed, metrics["fid"])
                           if fid_boot else None)
    if config.real_images_dir is not None:
        real = Path(config.real_images_dir)
        real_files = glob_samples_paths(str(real), False, "png,jpg,jpeg", verbose=False) if real.is_dir() else []
        if len(real_files) < 2:
            raise FileNotFoundError(f"real_images_dir {real} holds fewer than 2 images (png/jpg); give a folder "
                                    "of real images or leave real_images_dir unset")
        real_feats = extract_features(extractor, layer, real_files, config.batch_size, cuda)
        metrics.update(fid_real=_fid(gen_feats, real_feats), fid_real_reference=_fid(ref_feats, real_feats),
                       n_real_images=len(real_files))
    return metrics, int(gen_feats.shape[1])


def _paired_metrics(gen_files: list[Path], ref_files: list[Path], texts: list[str], config: MetricsConfig,
                    progress: bool) -> tuple[dict, str]:
    """CLIP score (of both folders) and paired PSNR/SSIM, batch by batch."""
    scorer = cached_network("clip", load_clip_scorer, config.clip_model, config.clip_pretrained, config.toy_clip,
                            config.device)
    clip, clip_ref, psnr, ssim = [], [], [], []
    for lo in tqdm(range(0, len(texts), config.batch_size), desc="metrics", unit="batch", disable=not progress):
        batch = slice(lo, lo + config.batch_size)
        gen_pil, gen_px = _load(gen_files[batch])
        ref_pil, ref_px = _load(ref_files[batch])
        clip.append(scorer.scores(gen_pil, texts[batch]))
        clip_ref.append(scorer.scores(ref_pil, texts[batch]))
        p, s = paired_psnr_ssim(gen_px, ref_px)
        psnr.append(p)
        ssim.append(s)
    clip, clip_ref, psnr, ssim = (np.concatenate(v) for v in (clip, clip_ref, psnr, ssim))
    return _paired_summary(clip, clip_ref, psnr, ssim, config), scorer.name


def _paired_summary(clip: np.ndarray, clip_ref: np.ndarray, psnr: np.ndarray, ssim: np.ndarray,
                    config: MetricsConfig) -> dict:
    """Means, 95% intervals over the image pairs, and the per-image values they come from."""
    n, boot, seed = len(psnr), config.bootstrap, config.seed
    mse = _mse(psnr)
    # PSNR's interval is the mean MSE's, mapped through the (decreasing) PSNR: no inf - inf when most
    # pairs are identical
    mse_ci = bootstrap_interval(n, lambda i: mse[i].mean(), boot, seed)
    clip_delta = clip - clip_ref
    return {
        # spread of the prompts' scores, not a difference between methods: see clip_score_delta
        "clip_score": float(clip.mean()),
        "clip_score_ci95": bootstrap_interval(n, lambda i: clip[i].mean(), boot, seed),
        "clip_score_reference": float(clip_ref.mean()),
        # paired by prompt: the quantized image's score minus its FP image's
        "clip_score_delta": float(clip_delta.mean()),
        "clip_score_delta_ci95": bootstrap_interval(n, lambda i: clip_delta[i].mean(), boot, seed),
        # PSNR of the mean squared error over all pairs: finite unless every pair is identical. The
        # mean of per-image PSNRs is inf as soon as one 8-bit image comes out identical (near-lossless
        # settings do that), so it is kept beside it, not as the headline.
        "psnr": pooled_psnr(mse),
        "psnr_ci95": None if mse_ci is None else [pooled_psnr(np.array([m])) for m in mse_ci[::-1]],
        "psnr_mean_per_image": float(psnr.mean()),
        "psnr_identical": int(np.isinf(psnr).sum()),
        "ssim": float(ssim.mean()),
        "ssim_ci95": bootstrap_interval(n, lambda i: ssim[i].mean(), boot, seed),
        "per_image": {"psnr": psnr.tolist(), "ssim": ssim.tolist(), "clip_score": clip.tolist(),
                      "clip_score_reference": clip_ref.tolist()},
    }


@torch.no_grad()
def evaluate(images_dir: str | os.PathLike, reference_dir: str | os.PathLike, prompts,
             config: MetricsConfig | None = None, *, model: str | None = None,
             quant_config_hash: str | None = None, paired: bool = True, progress: bool = True) -> dict:
    """Metrics of the images in `images_dir` against the same-index images in `reference_dir`.

    paired=False allows folders sampled from other seeds (e.g. the FP model reseeded: the noise floor
    of FID from sampling alone); PSNR/SSIM then compare unrelated images and are marked unpaired.

    `prompts` (a PromptSet or a list of strings) are the prompts both folders were generated from.
    The images are checked before anything is measured: one that is not the file its folder's manifest
    pins (damaged, edited, swapped), does not decode, or differs in size is an error naming it.
    model / quant_config_hash default to what generate recorded in images_dir's generation.json.
    Returns {"metrics": ..., "provenance": ..., "config": ...}; write it with write_metrics."""
    import torch_fidelity

    import pcr

    config = config or MetricsConfig()
    texts = [str(p) for p in (prompts if isinstance(prompts, PromptSet) else prompt_list(prompts, "evaluate"))]
    if len(texts) < 2:
        raise ValueError(f"FID and KID need at least 2 images, got {len(texts)} prompts")
    images_dir, reference_dir = Path(images_dir), Path(reference_dir)
    gen_files, ref_files = _checked_files(images_dir, reference_dir, len(texts))
    gen_settings = _settings(images_dir)
    _check_pairing(gen_settings, _settings(reference_dir), texts, paired)

    metrics, feature_dim = _feature_metrics(gen_files, ref_files, config)
    pairs, clip_name = _paired_metrics(gen_files, ref_files, texts, config, progress)
    metrics.update(pairs, paired=paired)

    info = (gen_settings or {}).get("info", {})
    provenance = {
        "images_dir": str(images_dir), "reference_dir": str(reference_dir),
        "model": model if model is not None else info.get("model"),
        "quant_config_hash": quant_config_hash if quant_config_hash is not None else info.get("quant_config_hash"),
        "prompt_set": getattr(prompts, "name", None), "prompts_sha256": prompts_digest(texts), "n_images": len(texts),
        "seeds": None if gen_settings is None else {"base": gen_settings["seed"],
                                                    "rule": gen_settings.get("seed_rule", SEED_RULE)},
        "generation": {k: v for k, v in (gen_settings or {}).items() if k != "info"} or None,
        "feature_extractor": config.feature_extractor, "feature_dim": feature_dim,
        "clip_model": clip_name, "torch_fidelity": torch_fidelity.__version__, "pcr": pcr.__version__,
    }
    return {"metrics": metrics, "provenance": provenance, "config": config.to_dict()}


def _encode(value):
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)  # "inf", "-inf", "nan"
    if isinstance(value, np.integer):
        return int(value)
    return value


def _decode(value):
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return float(value) if value in ("inf", "-inf", "nan") else value


def write_metrics(path: str | os.PathLike, result: dict) -> Path:
    """Write an evaluate() result as JSON, atomically; non-finite numbers become strings."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(_encode(result), indent=2, allow_nan=False) + "\n")
    return path


def read_metrics(path: str | os.PathLike) -> dict:
    """Read a metrics JSON, turning "inf"/"-inf"/"nan" back into floats."""
    return _decode(json.loads(Path(path).read_text()))
