"""Paired differences against a baseline method (pcr.report.delta_table) on hand-made metrics files
whose answers are known."""

import math

import numpy as np
import pytest

from pcr.report import delta_table, paired_deltas, write_delta_table
from pcr.report.tables import DELTA_COLUMNS


def per_image(psnr, ssim, clip):
    """metrics.per_image as JSON holds it: floats, and "inf" for an image identical to FP."""
    psnr = [v if isinstance(v, str) else float(v) for v in psnr]
    return {"psnr": psnr, "ssim": [float(v) for v in ssim], "clip_score": [float(v) for v in clip],
            "clip_score_reference": [70.0] * len(psnr)}


@pytest.fixture
def pair(make_doc, write_doc):
    """write(name, variant, per_image lists, bits="W4A6") -> path: 4-image rows of one prompt set."""

    def write(name, variant, values, bits="W4A6", prompt_set="in_domain"):
        return write_doc(name, make_doc(variant, bits, prompt_set, 1.0, 30.0, per_image=values))

    return write


BASE = per_image([20, 26, 30, 17], [0.8, 0.8, 0.8, 0.8], [60, 75, 68, 71])


def test_constant_per_image_changes_give_exact_deltas_and_zero_width_paired_intervals(pair):
    # every image's MSE a tenth of the baseline's: +10 dB whatever the resample; CLIP +2 on every prompt
    run = per_image(np.array([20, 26, 30, 17]) + 10, [0.9, 0.8, 0.7, 0.6], np.array([60, 75, 68, 71]) + 2)
    table = delta_table([pair("base", "naive", BASE), pair("run", "progressive", run)], "naive")
    assert list(table.columns) == DELTA_COLUMNS
    row = table.iloc[1]
    assert (row["variant"], row["baseline_variant"], row["baseline_label"]) == ("progressive", "naive",
                                                                               "naive (one range)")
    assert row["delta_psnr"] == pytest.approx(10) and row["delta_clip_score"] == pytest.approx(2)
    # paired: the same images in both, so the per-prompt spread (60..75) cancels
    assert [row["delta_psnr_lo"], row["delta_psnr_hi"]] == pytest.approx([10, 10])
    assert [row["delta_clip_score_lo"], row["delta_clip_score_hi"]] == pytest.approx([2, 2])
    assert row["delta_ssim"] == pytest.approx(-0.05)
    assert row["delta_ssim_lo"] < -0.05 < row["delta_ssim_hi"]
    base = table.iloc[0]  # the baseline against itself
    assert base[[c for c in DELTA_COLUMNS if c.startswith("delta_")]].tolist() == [0.0] * 9


def test_psnr_delta_is_pooled_and_finite_with_identical_images(pair):
    base = per_image([20] * 4, [0.8] * 4, [70] * 4)
    run = per_image(["inf", 30, 30, 30], [1.0, 0.9, 0.9, 0.9], [70] * 4)  # image 0 identical to FP
    row = delta_table([pair("base", "naive", base), pair("run", "progressive", run)], "naive").iloc[1]
    # pooled MSE: 255²/100 against (0 + 3 * 255²/1000) / 4, so 10 log10(4/3 * 10)
    assert row["delta_psnr"] == pytest.approx(10 + 10 * math.log10(4 / 3))
    assert row["delta_psnr_lo"] <= row["delta_psnr"] <= row["delta_psnr_hi"]
    # both methods identical to FP everywhere: equal, not inf - inf
    same = per_image(["inf"] * 4, [1.0] * 4, [70] * 4)
    deltas = paired_deltas(*[{k: np.asarray(v, float) for k, v in same.items()}] * 2, resamples=20)
    assert deltas["delta_psnr"] == 0 and deltas["delta_psnr_lo"] == deltas["delta_psnr_hi"] == 0


def test_baseline_by_label_rows_kept_and_seeded(pair):
    paths = [pair("base", "naive", BASE), pair("run", "progressive", per_image([25] * 4, [0.9] * 4, [65, 80, 1, 7])),
             pair("base8", "naive", BASE, bits="W8A8"),
             pair("alone", "progressive", BASE, bits="W4A8"),  # no baseline at W4A8: left out
             pair("floor", "fp", BASE, bits="FP")]  # the FP floor: kept for its FID, no deltas
    by_variant = delta_table(paths, "naive", seed=3)
    by_label = delta_table(paths, "naive (one range)", seed=3)
    assert by_variant.equals(by_label)
    assert list(by_variant["bits"]) == ["W4A6", "W4A6", "W8A8", "FP"]
    floor = by_variant.iloc[3]
    assert floor["method"] == "fp" and math.isnan(floor["delta_psnr"]) and floor["fid"] == 1.0
    other_seed = delta_table(paths, "naive", seed=4)
    assert other_seed["delta_clip_score"].equals(by_variant["delta_clip_score"])
    assert not other_seed["delta_clip_score_lo"].equals(by_variant["delta_clip_score_lo"])


def test_rows_measured_on_other_images_are_refused(pair, make_doc, write_doc):
    base = pair("base", "naive", BASE)
    doc = make_doc("progressive", "W4A6", "in_domain", 1.0, 30.0, per_image=BASE)
    doc["provenance"]["prompts_sha256"] = "other prompts"
    with pytest.raises(ValueError, match=r"different images \(\['prompts_sha256'\]"):
        delta_table([base, write_doc("other", doc)], "naive")
    five = per_image([20] * 5, [0.8] * 5, [70] * 5)
    with pytest.raises(ValueError, match=r"different images \(\['n_images'\]"):
        delta_table([base, pair("five", "progressive", five)], "naive")
    doc = make_doc("progressive", "W4A6", "in_domain", 1.0, 30.0, per_image=BASE)
    doc["provenance"]["seeds"]["base"] = 7
    with pytest.raises(ValueError, match="seeds"):
        delta_table([base, write_doc("seeds", doc)], "naive")
    del doc["provenance"]["prompts_sha256"]
    with pytest.raises(ValueError, match="no provenance.prompts_sha256"):
        delta_table([base, write_doc("unknown", doc)], "naive")


def test_missing_per_image_values_and_unknown_baselines_are_clear_errors(pair, make_doc, write_doc):
    base = pair("base", "naive", BASE)
    doc = make_doc("progressive", "W4A6", "in_domain", 1.0, 30.0, per_image=BASE)
    del doc["metrics"]["per_image"]
    old = write_doc("old", doc)
    with pytest.raises(ValueError, match=r"old\.json: no metrics\.per_image.*rerun its metrics job"):
        delta_table([base, old], "naive")
    with pytest.raises(ValueError, match=r"'perstep' is neither.*'naive', 'progressive'"):
        delta_table([base, pair("run", "progressive", BASE)], "perstep")
    with pytest.raises(ValueError, match=r"several rows for \(bits, prompt set\) \[\('W4A6', 'in_domain'\)\]"):
        delta_table([base, pair("again", "naive", BASE)], "naive")


def test_write_delta_table_round_trips(run_paths, tmp_path):
    csv, md = tmp_path / "main_deltas.csv", tmp_path / "main_deltas.md"
    assert write_delta_table(run_paths, "naive", csv, md) == [csv, md]
    import pandas as pd

    back = pd.read_csv(csv)
    assert list(back.columns) == DELTA_COLUMNS and len(back) == 10
    prog = back[(back.variant == "progressive") & (back.bits == "W8A8") & (back.prompt_set == "in_domain")].iloc[0]
    assert prog["delta_psnr_lo"] < prog["delta_psnr"] < prog["delta_psnr_hi"]
    assert "| naive (one range) |" in md.read_text()
