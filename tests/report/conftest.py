"""Synthetic metrics JSONs in the format pcr.bench.write_metrics writes (non-finite floats as strings)."""

import json
import re
import zlib

import numpy as np
import pytest

LABELS = {"naive": "naive (one range)", "progressive": "progressive (PCR)", "fp": "FP (other seeds)"}


N_IMAGES = 64


def default_per_image(variant, bits, prompt_set, psnr, ssim, clip):
    """Per-image values scattered around the summary ones (seeded by the row), as JSON writes them."""
    rng = np.random.default_rng(zlib.crc32(f"{variant}/{bits}/{prompt_set}".encode()))
    spread = rng.normal(0, 1, N_IMAGES)
    psnr_values = ["inf"] * N_IMAGES if psnr == "inf" else list(psnr + spread)
    return {"psnr": psnr_values, "ssim": list(np.clip(ssim + 0.02 * spread, 0, 1)),
            "clip_score": list(clip + spread), "clip_score_reference": list(72.5 + rng.normal(0, 1, N_IMAGES))}


def metrics_doc(variant, bits, prompt_set, fid, psnr, knobs=None, fid_ci=None, kid=0.001, per_image=None):
    """One metrics JSON document; `psnr` may be "inf" (identical images), `fid_ci` None -> null.

    `variant` "fp" makes the FP noise-floor row (FP images from other seeds; unpaired). `per_image`
    (metrics.per_image) defaults to values scattered around the summary values.
    """
    if variant == "fp":
        weight_bits = act_bits = 32
    else:
        weight_bits, act_bits = map(int, re.fullmatch(r"W(\d+)A(\d+)", bits).groups())
    if per_image is None:
        per_image = default_per_image(variant, bits, prompt_set, psnr, 0.9, 70.0 + fid)
    return {
        "metrics": {"fid": fid, "kid": kid, "kid_std": 1e-7, "fid_ci95": fid_ci, "clip_score": 70.0 + fid,
                    "clip_score_reference": 72.5, "psnr": psnr, "psnr_identical": 0, "ssim": 0.9,
                    "paired": variant != "fp", "per_image": per_image},
        "provenance": {"model": "toy:results/toy/model", "quant_config_hash": f"hash-{variant}-{bits}",
                       "prompt_set": f"toy:{prompt_set}[n=64,seed=0]", "n_images": len(per_image["psnr"]),
                       "prompts_sha256": f"sha-{prompt_set}",
                       "seeds": {"base": 100_000 if variant == "fp" else 0, "rule": "seed + index"}},
        "config": {"feature_extractor": "toy-clip"},
        "cost": {"weight_bits": weight_bits, "avg_act_bits": float(act_bits) + (0.4 if knobs else 0.0),
                 "weight_mb_packed": weight_bits / 4, "bitops_ratio": weight_bits * act_bits / 1024},
        # the workflow's noise-floor row: variant "fp-reseeded", method "fp"
        "run": {"variant": "fp-reseeded" if variant == "fp" else variant, "label": LABELS[variant],
                "method": variant, "bits": bits,
                "weight_bits": weight_bits, "act_bits": act_bits, "prompt_set": prompt_set,
                "prompt_spec": f"toy:{prompt_set}", "knobs": knobs or {}},
    }


@pytest.fixture
def make_doc():
    """metrics_doc, as a fixture: test modules cannot import this conftest by name reliably."""
    return metrics_doc


@pytest.fixture
def write_doc(tmp_path):
    """write_doc(name, doc) -> path of the JSON file written under tmp_path/results."""

    def write(name, doc):
        path = tmp_path / "results" / "metrics" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        return path

    return write


@pytest.fixture
def run_paths(write_doc):
    """A small main comparison: 2 methods x 2 bit settings x 2 prompt sets, plus one FP row per set.

    Order is the caller's: in_domain first, FP row last in each set. progressive W4A6 in_domain has
    PSNR "inf" and no FID interval; progressive rows carry knobs (relax_share only at W4A6).
    """
    paths = []
    for prompt_set, offset in (("in_domain", 0.0), ("out_domain", 1.0)):
        for bits, base in (("W8A8", 1.0), ("W4A6", 4.0)):
            fid = base + offset
            paths.append(write_doc(f"naive_{bits}_{prompt_set}", metrics_doc(
                "naive", bits, prompt_set, fid, 30.0 - base, fid_ci=[fid - 0.5, fid + 0.5])))
            knobs = {"calib_size": 32} | ({"relax_share": 0.2, "relax_where": "last"} if bits == "W4A6" else {})
            inf_row = bits == "W4A6" and prompt_set == "in_domain"
            paths.append(write_doc(f"progressive_{bits}_{prompt_set}", metrics_doc(
                "progressive", bits, prompt_set, fid / 2, "inf" if inf_row else 32.0 - base, knobs=knobs,
                fid_ci=None if inf_row else [fid / 2 - 0.2, fid / 2 + 0.3])))
        paths.append(write_doc(f"fp_{prompt_set}", metrics_doc("fp", "FP", prompt_set, 0.25 + offset, 20.0,
                                                                  fid_ci=[0.2, 0.4], kid="nan")))
    return paths


@pytest.fixture
def table(run_paths):
    from pcr.report import metrics_table

    return metrics_table(run_paths)


@pytest.fixture
def deltas(run_paths):
    """The main comparison's delta table against naive (what results/tables/main_deltas.csv holds)."""
    from pcr.report import delta_table

    return delta_table(run_paths, "naive")
