import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pcr.report import (
    act_range_figure,
    bar_figure,
    bits_figure,
    fid_psnr_figure,
    main_figure,
    range_drift,
    sample_grid,
    sweep_figure,
)


def assert_written(paths, stem):
    """stem.png (a readable, non-empty image) and stem.pdf, and nothing else, returned as paths."""
    assert [str(p) for p in paths] == [f"{stem}.png", f"{stem}.pdf"]
    with Image.open(paths[0]) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        size = img.size
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert not list(paths[0].parent.glob(".*.tmp"))
    return size


def test_main_figure_draws_deltas_to_the_baseline(deltas, tmp_path):
    stem = tmp_path / "figures" / "main"
    assert_written(main_figure(deltas, stem), stem)
    runs = deltas[deltas.method != "fp"]  # no FP floor, one prompt set, an infinite FID bound
    one = runs[runs.prompt_set == "in_domain"].assign(fid_lo=0.0)
    assert_written(main_figure(one, tmp_path / "one_set"), tmp_path / "one_set")


def test_main_figure_panels_and_baseline_line(deltas, tmp_path, monkeypatch):
    import pcr.report.deltas

    drawn = []
    monkeypatch.setattr(pcr.report.deltas, "save_figure", lambda fig, stem: drawn.append(fig) or [])
    main_figure(deltas, tmp_path / "x")
    axes = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert len(axes) == 2 * 4  # two bit settings x (Δ PSNR, Δ SSIM, Δ CLIP, FID)
    assert "method − naive (one range)" in axes[0].get_ylabel() and axes[3].get_yscale() == "log"
    # the baseline is the zero line, not a point: only the other method is on the delta axes
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["progressive (PCR)"]
    assert any(list(line.get_ydata()) == [0, 0] for line in axes[0].get_lines())
    low, high = axes[0].get_ylim()
    row = deltas[(deltas.variant == "progressive") & (deltas.bits == "W8A8")]
    assert low <= 0 and high >= row["delta_psnr_hi"].max() and high < 2 * row["delta_psnr_hi"].max()


def test_main_figure_rejects_tables_it_cannot_draw(deltas, table, tmp_path):
    with pytest.raises(ValueError, match="delta table"):
        main_figure(table, tmp_path / "metrics_table")
    with pytest.raises(ValueError, match="W8A8"):
        main_figure(pd.concat([deltas, deltas.iloc[[1]]]), tmp_path / "dup")
    with pytest.raises(ValueError, match="no quantized rows"):
        main_figure(deltas[deltas.method == "fp"], tmp_path / "fp_only")
    two = deltas.copy()
    two.loc[two.bits == "W4A6", "baseline_label"] = "other"
    with pytest.raises(ValueError, match="one baseline"):
        main_figure(two, tmp_path / "two")
    assert not list(tmp_path.glob("*.png"))


def test_fid_psnr_figure(table, tmp_path):
    stem = tmp_path / "figures" / "bars"
    assert_written(fid_psnr_figure(table, stem), stem)
    runs = table[table.method != "fp"].drop(columns=["fid_lo", "fid_hi", "psnr_lo", "psnr_hi"])
    assert_written(fid_psnr_figure(runs, tmp_path / "runs"), tmp_path / "runs")
    with pytest.raises(ValueError, match="W8A8"):
        fid_psnr_figure(pd.concat([table, table.iloc[[0]]]), tmp_path / "dup")
    with pytest.raises(ValueError, match="no quantized rows"):
        fid_psnr_figure(table[table.method == "fp"], tmp_path / "fp_only")


def ranges(drifts: dict[str, float], steps=5) -> pd.DataFrame:
    """Range table: layer `name`'s quantized range is (1 + drift) times its FP range at every step."""
    rows = []
    for layer, drift in drifts.items():
        for step in range(steps):
            hi = 1.0 + step
            rows.append({"layer": layer, "step": step, "trajectory": "FP", "lo": -hi, "hi": hi})
            rows.append({"layer": layer, "step": step, "trajectory": "quantized", "lo": -hi, "hi": hi + 2 * hi * drift})
    return pd.DataFrame(rows)


def test_range_drift_is_relative_width_change():
    drift = range_drift(ranges({"a": 0.25}, steps=3))
    assert list(drift.columns) == ["layer", "step", "fp", "quantized", "rel_drift"]
    np.testing.assert_allclose(drift["fp"], [2, 4, 6])
    np.testing.assert_allclose(drift["quantized"], [2.5, 5, 7.5])
    np.testing.assert_allclose(drift["rel_drift"], 0.25)
    with pytest.raises(ValueError, match="quantized"):
        range_drift(ranges({"a": 0.1}).query("trajectory == 'FP'"))


def test_act_range_figure_picks_largest_drift_layers(tmp_path):
    df = ranges({"a.attn": 0.0, "b.ff": 0.5, "c.conv": 0.1, "d.proj": 0.3})
    out = act_range_figure(df, tmp_path / "ranges", layers=2)
    assert out["layers"] == ["b.ff", "d.proj"]
    assert_written(out["paths"], tmp_path / "ranges")
    assert act_range_figure(df, tmp_path / "all", layers=9)["layers"] == ["b.ff", "d.proj", "c.conv", "a.attn"]
    assert act_range_figure(df, tmp_path / "none", layers=0)["layers"] == []


def test_sweep_figure(table, tmp_path):
    sweep = table.copy()
    sweep.loc[sweep.variant == "progressive", "relax_share"] = [0.1, 0.2, 0.1, 0.2]
    stem = tmp_path / "sweep_relax_share"
    assert_written(sweep_figure(sweep, "relax_share", stem, "FID and PSNR vs share of relaxed steps"), stem)
    stem = tmp_path / "sweep_bits_hue"
    assert_written(sweep_figure(sweep, "relax_share", stem, "by bits", metrics=("ssim",), hue="bits"), stem)
    with pytest.raises(ValueError, match="no column 'relax_bits'"):
        sweep_figure(table, "relax_bits", tmp_path / "missing", "x")
    with pytest.raises(ValueError, match="share"):  # two W8A8 points at one calib_size per prompt set
        sweep_figure(table, "calib_size", tmp_path / "dup", "x", hue="label")


def test_bits_figure(table, tmp_path):
    stem = tmp_path / "bits"
    assert_written(bits_figure(table, stem), stem)


def test_bar_figure(table, tmp_path):
    ablation = table[(table.bits == "W4A6") | (table.method == "fp")]
    stem = tmp_path / "relax_auto"
    assert_written(bar_figure(ablation, stem, "auto vs fixed relaxed steps", metrics=("fid", "psnr", "ssim")), stem)
    stem = tmp_path / "per_bits"  # several bit settings: one group per (bits, prompt set)
    assert_written(bar_figure(table, stem, "two bit settings per label"), stem)
    with pytest.raises(ValueError, match="share"):
        bar_figure(pd.concat([ablation, ablation]), tmp_path / "dup", "the same run twice")


@pytest.fixture
def image_folders(tmp_path):
    rng = np.random.default_rng(0)
    folders = {}
    for label in ["FP", "naive", "progressive (PCR)"]:
        folder = tmp_path / "images" / label.split()[0]
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        folders[label] = folder
    return folders


def test_sample_grid_grows_with_rows_and_columns(image_folders, tmp_path):
    one = assert_written(sample_grid({"FP": image_folders["FP"]}, tmp_path / "one", [0]), tmp_path / "one")
    prompts = ["a red circle above a blue square", "two green triangles " * 8, "a yellow star"]
    full = assert_written(sample_grid(image_folders, tmp_path / "full", [0, 2], prompts=prompts, size=48),
                          tmp_path / "full")
    assert full[0] > one[0] and full[1] > one[1]
    wide = assert_written(sample_grid(image_folders, tmp_path / "wide", [0]), tmp_path / "wide")
    tall = assert_written(sample_grid({"FP": image_folders["FP"]}, tmp_path / "tall", [0, 1, 2]), tmp_path / "tall")
    assert wide[0] > one[0] and tall[1] > one[1]


def test_sample_grid_names_missing_image(image_folders, tmp_path):
    (image_folders["naive"] / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"naive/00002\.png"):
        sample_grid(image_folders, tmp_path / "grid", [0, 2])
    assert not (tmp_path / "grid.png").exists()
    with pytest.raises(ValueError, match="prompts"):
        sample_grid(image_folders, tmp_path / "grid", [0, 1], prompts=["only one"])
