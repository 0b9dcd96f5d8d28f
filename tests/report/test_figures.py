import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Annotation
from PIL import Image

import pcr.report.figures as figures
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
from pcr.report.figures import DPI


def assert_written(paths, stem):
    """stem.png (a readable, non-empty image) and stem.pdf, and nothing else, returned as paths."""
    assert [str(p) for p in paths] == [f"{stem}.png", f"{stem}.pdf"]
    with Image.open(paths[0]) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        size = img.size
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert not list(paths[0].parent.glob(".*.tmp"))
    return size


@pytest.fixture
def drawn(monkeypatch):
    """The Figures pcr.report.figures hands to save_figure, in call order; the files are still written."""
    figs = []
    save = figures.save_figure

    def record(fig, stem, *args, **kwargs):
        figs.append(fig)
        return save(fig, stem, *args, **kwargs)

    monkeypatch.setattr(figures, "save_figure", record)
    return figs


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def pixels(width_in, height_in):
    """PNG size of a figure of that many inches at the figures' DPI (Agg truncates to whole pixels)."""
    return int(width_in * DPI), int(height_in * DPI)


def finite(v):
    """What an axis holds for a table value: non-finite values (PSNR "inf") are drawn as NaN or a mark."""
    v = float(v)
    return v if np.isfinite(v) else np.nan


def row(df, **where):
    """The one row of `df` matching all column == value pairs."""
    rows = df[np.logical_and.reduce([df[k] == v for k, v in where.items()])]
    assert len(rows) == 1, where
    return rows.iloc[0]


def assert_values(got: dict, expected: dict):
    """Same keys, and values (numbers or tuples of them) equal to float precision, NaN matching NaN."""
    assert sorted(got) == sorted(expected)
    keys = sorted(expected)
    np.testing.assert_allclose(np.array([got[k] for k in keys], float), np.array([expected[k] for k in keys], float),
                               rtol=1e-12, atol=1e-12, equal_nan=True)


def tick_names(ax) -> tuple[np.ndarray, list[str]]:
    """x tick positions and their labels (also on a panel whose shared x axis shows no labels)."""
    ticks = ax.get_xticks()
    return ticks, [ax.xaxis.get_major_formatter()(x, i) for i, x in enumerate(ticks)]


def bars(ax) -> dict:
    """{(x tick label, bar label): (bar centre x, height)}, each bar assigned to its nearest x tick."""
    ticks, names = tick_names(ax)
    out = {}
    for container in ax.containers:
        if isinstance(container, BarContainer):
            for patch in container.patches:
                x = patch.get_x() + patch.get_width() / 2
                i = int(np.argmin(np.abs(ticks - x)))
                assert abs(ticks[i] - x) < 0.4  # inside its group
                key = (names[i], container.get_label())
                assert key not in out
                out[key] = (x, patch.get_height())
    return out


def heights(ax) -> dict:
    return {key: h for key, (_, h) in bars(ax).items()}


def intervals(ax) -> dict:
    """{bar key: (low, high)} of every drawn error bar, matched to the bar at its x."""
    at = {round(x, 9): key for key, (x, _) in bars(ax).items()}
    out = {}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            _, _, (segments,) = container.lines  # yerr only: one LineCollection of vertical segments
            for (x0, y0), (x1, y1) in segments.get_segments():
                assert x0 == x1
                out[at[round(x0, 9)]] = (min(y0, y1), max(y0, y1))
    return out


def bar_colors(ax) -> dict:
    """{bar label: face colour}, the same for every bar of that label."""
    out = {}
    for container in ax.containers:
        if isinstance(container, BarContainer):
            colors = {mcolors.to_hex(p.get_facecolor()) for p in container.patches}
            assert len(colors) == 1
            out[container.get_label()] = colors.pop()
    return out


def is_floor(line):
    return line.get_linestyle() == "--" and mcolors.to_hex(line.get_color()) == mcolors.to_hex("0.35")


def infinity_marks(ax) -> list[float]:
    """x positions of the "∞" marks drawn for infinite values."""
    return sorted(t.get_position()[0] for t in ax.texts if t.get_text() == "∞")


def legend_sections(ax) -> dict:
    """A line figure's sectioned legend: {section title: {entry text: its legend handle}}."""
    sections, section = {}, None
    for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles):
        name = text.get_text()
        if name.endswith(":"):
            section = sections.setdefault(name[:-1], {})
        else:
            section[name] = handle
    return sections


def line_data(ax, sections: dict, hue_title: str):
    """What a line-figure panel draws, decoded through its legend (colour = hue, line style = prompt set,
    marker = weight bits): lines {(hue, prompt set): (x, y)}, points {(hue, "W<bits>"): [(x, y), ...]
    sorted} and the FP floor heights, sorted."""
    color = {mcolors.to_hex(h.get_color()): name for name, h in sections[hue_title].items()}
    style = {h.get_linestyle(): name for name, h in sections["prompt set"].items()}
    marker = {h.get_marker(): name for name, h in sections.get("weight bits", {}).items()}
    lines, points, floors = {}, {}, []
    for line in ax.get_lines():
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        if is_floor(line):
            floors.append(y[0])
            continue
        hue = color[mcolors.to_hex(line.get_color())]
        if line.get_linestyle() == "None":  # weight-bits markers only
            points.setdefault((hue, marker[line.get_marker()]), []).extend(zip(x, y))
        else:
            key = (hue, style[line.get_linestyle()])
            assert key not in lines
            lines[key] = (x, y)
    points = {k: sorted(v, key=lambda p: (p[0], np.nan_to_num(p[1], nan=np.inf))) for k, v in points.items()}
    return lines, points, sorted(floors)


def assert_lines(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)
    for key, (x, y) in expected.items():
        np.testing.assert_allclose(got[key][0], x, err_msg=str(key))
        np.testing.assert_allclose(got[key][1], y, equal_nan=True, err_msg=str(key))


def expected_lines(runs, x, metric, hue) -> dict:
    """{(hue, prompt set): (x, metric)} of each (hue, prompt set)'s rows, sorted by x."""
    out = {}
    for h in runs[hue].unique():
        for prompt_set in runs["prompt_set"].unique():
            rows = runs[(runs[hue] == h) & (runs["prompt_set"] == prompt_set)].sort_values(x)
            if len(rows):
                out[(str(h), prompt_set)] = (rows[x].to_numpy(float), [finite(v) for v in rows[metric]])
    return out


def main_points(ax, prompt_set_colors: dict) -> dict:
    """{(x tick label, prompt set): (y, low, high)} of a main-figure panel's points (low, high NaN where no
    interval is drawn); the prompt set is read from the point's colour."""
    ticks, names = tick_names(ax)
    out = {}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            data, _, bar_lines = container.lines
            (x,), (y,) = data.get_xdata(), data.get_ydata()
            low = high = np.nan
            if bar_lines:
                ((_, y0), (_, y1)), = bar_lines[0].get_segments()
                low, high = min(y0, y1), max(y0, y1)
            key = (names[int(np.argmin(np.abs(ticks - x)))], prompt_set_colors[mcolors.to_hex(data.get_color())])
            assert key not in out
            out[key] = (y, low, high)
    return out


def test_main_figure_draws_deltas_to_the_baseline(deltas, tmp_path, monkeypatch):
    import pcr.report.deltas

    drawn, save = [], pcr.report.deltas.save_figure
    monkeypatch.setattr(pcr.report.deltas, "save_figure", lambda fig, stem: drawn.append(fig) or save(fig, stem))
    stem = tmp_path / "figures" / "main"
    size = assert_written(main_figure(deltas, stem), stem)
    runs = deltas[deltas.method != "fp"]  # no FP floor, one prompt set, an infinite FID bound
    one = runs[runs.prompt_set == "in_domain"].assign(fid_lo=0.0)
    assert_written(main_figure(one, tmp_path / "one_set"), tmp_path / "one_set")
    full, one_set = drawn

    # 4 panels of 2.6 in + 2.2 in of legend; 2 bit settings of 3.3 in + 0.8 in of title
    assert tuple(full.get_size_inches()) == pytest.approx((12.6, 7.4)) and size == pixels(12.6, 7.4) == (1890, 1110)
    axes = visible_axes(full)
    assert len(axes) == 8
    assert [ax.get_title() for ax in axes] == [f"{b}: {better} is better" for b in ["W8A8", "W4A6"]
                                               for better in ["higher"] * 3 + ["lower"]]
    names = ["Δ PSNR to FP, dB", "Δ SSIM to FP", "Δ CLIP score"]
    assert [ax.get_ylabel() for ax in axes] == 2 * ([f"{n}\nmethod − naive (one range)" for n in names] + ["FID to FP"])
    sections = legend_sections(axes[3])  # the legend is beside the first row's FID panel
    assert list(sections["prompt set"]) == ["in_domain", "out_domain"]
    assert list(sections["marks"])[0] == "baseline: naive (one range)"
    colors = {mcolors.to_hex(h.get_color()): name for name, h in sections["prompt set"].items()}
    quantized = deltas[deltas.method != "fp"]
    for i, bits in enumerate(["W8A8", "W4A6"]):
        rows = quantized[quantized.bits == bits]
        for ax, column in zip(axes[4 * i: 4 * i + 4], ["delta_psnr", "delta_ssim", "delta_clip_score", "fid"]):
            # the baseline is the zero line on the Δ panels, a point on the FID panel; infinite values are marks
            shown = rows if column == "fid" else rows[rows.label != "naive (one range)"]
            expected = {(r.label, r.prompt_set): (r[column], r[f"{column}_lo"], r[f"{column}_hi"])
                        for _, r in shown.iterrows() if np.isfinite(r[column])}
            expected = {k: (v, lo, hi) if np.isfinite(lo) and np.isfinite(hi) else (v, np.nan, np.nan)
                        for k, (v, lo, hi) in expected.items()}
            assert_values(main_points(ax, colors), expected)
            assert ax.get_yscale() == ("log" if column == "fid" else "linear")
            floors = {colors[mcolors.to_hex(line.get_color())]: line.get_ydata()[0]
                      for line in ax.get_lines() if line.get_linestyle() == "--"}
            assert floors == ({"in_domain": 0.25, "out_domain": 1.25} if column == "fid" else {})
    assert main_points(axes[0], colors)[("progressive (PCR)", "out_domain")][0] == pytest.approx(2.068091, abs=1e-6)
    assert ("progressive (PCR)", "in_domain") not in main_points(axes[4], colors)  # Δ PSNR inf: a mark
    assert [t.get_text() for t in axes[4].texts] == ["∞"]

    axes = visible_axes(one_set)
    assert len(axes) == 8 and tuple(one_set.get_size_inches()) == pytest.approx((12.6, 7.4))
    colors = {mcolors.to_hex(h.get_color()): name for name, h in legend_sections(axes[3])["prompt set"].items()}
    assert list(colors.values()) == ["in_domain"]
    assert not [line for ax in axes for line in ax.get_lines() if line.get_linestyle() == "--"]  # no FP rows
    assert axes[3].get_yscale() == "log"  # every FID positive; an interval down to 0 runs off the bottom
    assert_values(main_points(axes[3], colors), {("naive (one range)", "in_domain"): (1.0, 0.0, 1.5),
                                                 ("progressive (PCR)", "in_domain"): (0.5, 0.0, 0.8)})


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


FID, PSNR, SSIM = "FID to FP (lower is better)", "PSNR to FP, dB (higher is better)", "SSIM to FP (higher is better)"
NAIVE, PCR = "naive (one range)", "progressive (PCR)"


def test_fid_psnr_figure(table, tmp_path, drawn, monkeypatch):
    stem = tmp_path / "figures" / "bars"
    size = assert_written(fid_psnr_figure(table, stem), stem)
    runs = table[table.method != "fp"].drop(columns=["fid_lo", "fid_hi", "psnr_lo", "psnr_hi"])
    assert_written(fid_psnr_figure(runs, tmp_path / "runs"), tmp_path / "runs")
    with pytest.raises(ValueError, match="W8A8"):
        fid_psnr_figure(pd.concat([table, table.iloc[[0]]]), tmp_path / "dup")
    with pytest.raises(ValueError, match="no quantized rows"):
        fid_psnr_figure(table[table.method == "fp"], tmp_path / "fp_only")
    # PSNR intervals where both ends are finite (the identical-images row's upper end is not); drawn, not written
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: drawn.append(fig) or [])
    psnr_ci = table.assign(psnr_lo=np.where(np.isinf(table.psnr), 30.0, table.psnr - 1.0), psnr_hi=table.psnr + 0.5)
    fid_psnr_figure(psnr_ci, tmp_path / "psnr_ci", title="with PSNR intervals")
    full, no_ci, with_psnr_ci = drawn

    # two prompt sets side by side, 4.5 in each (two labels), written at DPI
    assert tuple(full.get_size_inches()) == (9.0, 7.5) and size == pixels(9.0, 7.5) == (1350, 1125)
    assert full.get_suptitle().startswith("Quantized vs FP") and with_psnr_ci.get_suptitle() == "with PSNR intervals"
    axes = visible_axes(full)
    assert len(axes) == 4  # rows (FID, PSNR) x columns (in_domain, out_domain)
    assert [ax.get_title() for ax in axes] == ["prompt set: in_domain", "prompt set: out_domain", "", ""]
    assert [ax.get_ylabel() for ax in axes] == [FID, "", PSNR, ""]
    assert [ax.get_xlabel() for ax in axes] == ["", "", "method", "method"]
    # the rows share x: method names under the PSNR row only
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in axes] == [[], [], [NAIVE, PCR], [NAIVE, PCR]]
    labels, bits = [NAIVE, PCR], ["W8A8", "W4A6"]
    panels = [(axes[0], "in_domain", "fid"), (axes[1], "out_domain", "fid"),
              (axes[2], "in_domain", "psnr"), (axes[3], "out_domain", "psnr")]
    for ax, prompt_set, metric in panels:
        assert tick_names(ax)[1] == labels
        rows = {(lab, b): row(table, label=lab, bits=b, prompt_set=prompt_set) for lab in labels for b in bits}
        assert_values(heights(ax), {key: finite(r[metric]) for key, r in rows.items()})
        assert_values(intervals(ax), {key: (r[f"{metric}_lo"], r[f"{metric}_hi"]) for key, r in rows.items()
                                      if np.isfinite(r[f"{metric}_lo"]) and np.isfinite(r[f"{metric}_hi"])})
        assert bar_colors(ax) == bar_colors(axes[0])  # one colour per bit setting in every panel
        floors = [list(line.get_ydata()) for line in ax.get_lines() if is_floor(line)]
        fp_fid = row(table, method="fp", prompt_set=prompt_set)["fid"]
        assert floors == ([[fp_fid, fp_fid]] if metric == "fid" else [])  # FID only: PSNR is unpaired
    assert len(intervals(axes[0])) == 3 and heights(axes[0])[(PCR, "W4A6")] == 2.0  # not vacuous
    assert intervals(axes[2]) == {}  # the table has no PSNR intervals
    # progressive W4A6 in_domain has PSNR inf: no bar, an "∞" mark where the bar would be
    assert np.isnan(heights(axes[2])[(PCR, "W4A6")])
    assert infinity_marks(axes[2]) == [bars(axes[2])[(PCR, "W4A6")][0]] and infinity_marks(axes[3]) == []
    assert len(set(bar_colors(axes[0]).values())) == 2
    legend = axes[0].get_legend()
    assert legend.get_title().get_text() == "bit setting"
    assert [t.get_text() for t in legend.get_texts()] == [*bits, "95% bootstrap interval",
                                                          "FP noise floor (other seeds)"]
    assert [mcolors.to_hex(h.get_facecolor()) for h in legend.legend_handles[:2]] == \
        [bar_colors(axes[0])[b] for b in bits]

    # no FP row, no interval columns: the same bars, no floor, no error bars
    axes_runs = visible_axes(no_ci)
    assert len(axes_runs) == 4
    for ax, ax_full in zip(axes_runs, axes):
        assert_values(heights(ax), heights(ax_full))
        assert intervals(ax) == {} and not any(is_floor(line) for line in ax.get_lines())
    assert [t.get_text() for t in axes_runs[0].get_legend().get_texts()] == bits

    psnr_in = visible_axes(with_psnr_ci)[2]
    assert_values(intervals(psnr_in), {(NAIVE, "W8A8"): (28.0, 29.5), (PCR, "W8A8"): (30.0, 31.5),
                                       (NAIVE, "W4A6"): (25.0, 26.5)})


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


def test_act_range_figure_picks_largest_drift_layers(tmp_path, drawn):
    df = ranges({"a.attn": 0.0, "b.ff": 0.5, "c.conv": 0.1, "d.proj": 0.3})
    out = act_range_figure(df, tmp_path / "ranges", layers=2)
    assert out["layers"] == ["b.ff", "d.proj"]
    size = assert_written(out["paths"], tmp_path / "ranges")
    assert act_range_figure(df, tmp_path / "all", layers=9)["layers"] == ["b.ff", "d.proj", "c.conv", "a.attn"]
    assert act_range_figure(df, tmp_path / "none", layers=0)["layers"] == []
    two, every, summary_only = drawn

    def width(layer, trajectory):
        rows = df[(df.layer == layer) & (df.trajectory == trajectory)].sort_values("step")
        return rows["hi"].to_numpy() - rows["lo"].to_numpy()

    steps = np.arange(5)
    # median over the four layers of |width_q - width_FP| / width_FP = median(0, 0.5, 0.1, 0.3), in %
    median_drift = np.full(5, 20.0)
    for fig, layers, shape in [(two, ["b.ff", "d.proj"], (1, 3)),
                               (every, ["b.ff", "d.proj", "c.conv", "a.attn"], (2, 3)),
                               (summary_only, [], (1, 1))]:
        nrows, ncols = shape
        assert tuple(fig.get_size_inches()) == pytest.approx((4.2 * ncols, 3.3 * nrows))
        assert len(fig.axes) == nrows * ncols  # a 2 x 3 grid for five panels hides the sixth
        axes = visible_axes(fig)
        assert len(axes) == len(layers) + 1
        drift = {"b.ff": "50.0%", "d.proj": "30.0%", "c.conv": "10.0%", "a.attn": "0.0%"}
        assert [ax.get_title() for ax in axes] == [f"{name}\nmean drift {drift[name]}" for name in layers] + \
            ["median over all 4 layers"]
        assert {ax.get_xlabel() for ax in axes} == {"sampling step (0 = pure noise)"}
        for ax, layer in zip(axes, layers):
            assert ax.get_ylabel() == "activation range hi − lo"
            drawn_lines = {line.get_label(): line for line in ax.get_lines()}
            assert sorted(drawn_lines) == ["FP trajectory", "quantized trajectory"]
            for label, trajectory in [("FP trajectory", "FP"), ("quantized trajectory", "quantized")]:
                np.testing.assert_allclose(drawn_lines[label].get_xdata(), steps)
                np.testing.assert_allclose(drawn_lines[label].get_ydata(), width(layer, trajectory))
            assert drawn_lines["quantized trajectory"].get_linestyle() == "--"
        summary = axes[-1]
        assert summary.get_ylabel() == "|range_q − range_FP| / range_FP (%)"
        (line,) = summary.get_lines()
        np.testing.assert_allclose(line.get_xdata(), steps)
        np.testing.assert_allclose(line.get_ydata(), median_drift)
        legend = axes[0].get_legend()
        assert (legend is None) == (not layers)
        if layers:
            assert [t.get_text() for t in legend.get_texts()] == ["FP trajectory", "quantized trajectory"]
    # widths, not ends: b.ff's quantized range is 1.5 times its FP range (2, 4, ..., 10)
    np.testing.assert_allclose(visible_axes(two)[0].get_lines()[1].get_ydata(), [3, 6, 9, 12, 15])
    assert size == pixels(4.2 * 3, 3.3) == (1890, 495)


def test_sweep_figure(table, tmp_path, drawn):
    sweep = table.copy()
    sweep.loc[sweep.variant == "progressive", "relax_share"] = [0.1, 0.2, 0.1, 0.2]
    stem = tmp_path / "sweep_relax_share"
    assert_written(sweep_figure(sweep, "relax_share", stem, "FID and PSNR vs share of relaxed steps"), stem)
    stem = tmp_path / "sweep_bits_hue"
    by_bits = sweep.assign(ssim=0.5 + 0.01 * sweep.index)  # a different SSIM per row
    size = assert_written(sweep_figure(by_bits, "relax_share", stem, "by bits", metrics=("ssim",), hue="bits"), stem)
    with pytest.raises(ValueError, match="no column 'relax_bits'"):
        sweep_figure(table, "relax_bits", tmp_path / "missing", "x")
    with pytest.raises(ValueError, match="share"):  # two W8A8 points at one calib_size per prompt set
        sweep_figure(table, "calib_size", tmp_path / "dup", "x", hue="label")
    per_label, per_bits = drawn
    runs = sweep[sweep.relax_share.notna() & (sweep.method != "fp")]  # naive rows have no relax_share: skipped
    assert set(runs.label) == {PCR}

    assert per_label.get_suptitle() == "FID and PSNR vs share of relaxed steps"
    axes = visible_axes(per_label)
    assert len(axes) == 2 and tuple(per_label.get_size_inches()) == (4.8 * 2 + 1.8, 4.2)
    assert [ax.get_ylabel() for ax in axes] == [FID, PSNR]
    assert {ax.get_xlabel() for ax in axes} == {"share of relaxed UNet calls"}
    sections = legend_sections(axes[-1])
    assert {k: list(v) for k, v in sections.items()} == {
        "method": [PCR], "prompt set": ["in_domain", "out_domain"], "FID": ["FP noise floor"]}
    for ax, metric in zip(axes, ["fid", "psnr"]):
        lines, points, floors = line_data(ax, sections, "method")
        assert_lines(lines, expected_lines(runs, "relax_share", metric, "label"))
        assert points == {} and all(line.get_marker() == "o" for line in ax.get_lines() if not is_floor(line))
        assert floors == ([0.25, 1.25] if metric == "fid" else [])
    fid_lines = line_data(axes[0], sections, "method")[0]
    np.testing.assert_allclose(fid_lines[(PCR, "in_domain")], [[0.1, 0.2], [0.5, 2.0]])  # not vacuous
    # the floors are named by prompt set; PSNR inf (W4A6 in_domain, share 0.2) is an "∞" at its x
    assert {t.get_text(): t.xy[1] for t in axes[0].texts if isinstance(t, Annotation)} == \
        {"in_domain": 0.25, "out_domain": 1.25}
    assert infinity_marks(axes[1]) == [0.2] and infinity_marks(axes[0]) == []

    axes = visible_axes(per_bits)
    assert len(axes) == 1 and per_bits.get_suptitle() == "by bits"
    assert axes[0].get_ylabel() == SSIM and axes[0].get_xlabel() == "share of relaxed UNet calls"
    assert size == pixels(4.8 + 1.8, 4.2) == (990, 630)
    sections = legend_sections(axes[0])
    assert {k: list(v) for k, v in sections.items()} == {"bit setting": ["W8A8", "W4A6"],
                                                          "prompt set": ["in_domain", "out_domain"]}
    lines, points, floors = line_data(axes[0], sections, "bit setting")
    by_bits_runs = by_bits[by_bits.relax_share.notna() & (by_bits.method != "fp")]
    assert_lines(lines, expected_lines(by_bits_runs, "relax_share", "ssim", "bits"))
    assert lines[("W4A6", "out_domain")][1] == [0.58] and points == {} and floors == []


def test_bits_figure(table, tmp_path, drawn):
    stem = tmp_path / "bits"
    size = assert_written(bits_figure(table, stem), stem)
    (fig,) = drawn
    assert fig.get_suptitle() == "Quality vs activation bits: distance to the FP images per method"
    assert tuple(fig.get_size_inches()) == (4.8 * 2 + 1.8, 4.2) and size == pixels(4.8 * 2 + 1.8, 4.2)
    axes = visible_axes(fig)
    assert len(axes) == 2
    assert [ax.get_ylabel() for ax in axes] == [FID, PSNR]
    assert {ax.get_xlabel() for ax in axes} == {"average activation bits over sampling steps"}
    sections = legend_sections(axes[-1])
    assert {k: list(v) for k, v in sections.items()} == {
        "method": [NAIVE, PCR], "prompt set": ["in_domain", "out_domain"], "weight bits": ["W8", "W4"],
        "FID": ["FP noise floor"]}
    runs = table[table.method != "fp"]
    for ax, metric in zip(axes, ["fid", "psnr"]):
        lines, points, floors = line_data(ax, sections, "method")
        # one line per (method, prompt set) through its bit settings, sorted by average activation bits
        assert_lines(lines, expected_lines(runs, "avg_act_bits", metric, "label"))
        # each point's marker is its weight bits
        expected = {}
        for _, r in runs.iterrows():
            expected.setdefault((r.label, f"W{r.weight_bits}"), []).append((r.avg_act_bits, finite(r[metric])))
        assert sorted(points) == sorted(expected)
        for key, pts in expected.items():
            np.testing.assert_allclose(points[key], sorted(pts, key=lambda p: (p[0], np.nan_to_num(p[1], nan=np.inf))),
                                       equal_nan=True, err_msg=str(key))
        assert floors == ([0.25, 1.25] if metric == "fid" else [])
    fid_lines, fid_points, _ = line_data(axes[0], sections, "method")
    np.testing.assert_allclose(fid_lines[(NAIVE, "in_domain")], [[6.0, 8.0], [4.0, 1.0]])  # not vacuous
    np.testing.assert_allclose(fid_points[(PCR, "W4")], [[6.4, 2.0], [6.4, 2.5]])
    assert infinity_marks(axes[1]) == [6.4] and infinity_marks(axes[0]) == []  # progressive W4A6 in_domain


def group_floors(ax) -> dict:
    """{x tick label: height} of the FP floor segments a bar figure draws across each bar group."""
    error_bars = {id(c.lines[2][0]) for c in ax.containers if isinstance(c, ErrorbarContainer)}
    ticks, names = tick_names(ax)
    out = {}
    for collection in ax.collections:
        if id(collection) in error_bars:
            continue
        assert collection.get_linestyle() != [(0, None)]  # dashed
        for (x0, y0), (x1, y1) in collection.get_segments():
            i = int(np.argmin(np.abs(ticks - (x0 + x1) / 2)))
            assert y0 == y1 and (x0, x1) == pytest.approx((ticks[i] - 0.45, ticks[i] + 0.45))
            out[names[i]] = y0
    return out


def test_bar_figure(table, tmp_path, drawn):
    ablation = table[(table.bits == "W4A6") | (table.method == "fp")]
    ssim = 0.5 + 0.01 * ablation.index  # a different SSIM per row; an interval for all but naive in_domain
    ablation = ablation.assign(ssim=ssim, ssim_lo=np.where(ablation.index == 2, np.nan, ssim - 0.02),
                               ssim_hi=ssim + 0.01)
    stem = tmp_path / "relax_auto"
    size = assert_written(bar_figure(ablation, stem, "auto vs fixed relaxed steps", metrics=("fid", "psnr", "ssim")),
                          stem)
    stem = tmp_path / "per_bits"  # several bit settings: one group per (bits, prompt set)
    assert_written(bar_figure(table, stem, "two bit settings per label"), stem)
    with pytest.raises(ValueError, match="share"):
        bar_figure(pd.concat([ablation, ablation]), tmp_path / "dup", "the same run twice")
    one_bits, per_bits = drawn

    sets, labels = ["in_domain", "out_domain"], [NAIVE, PCR]
    assert one_bits.get_suptitle() == "auto vs fixed relaxed steps"
    assert tuple(one_bits.get_size_inches()) == (12.0, 4.2) and size == pixels(12.0, 4.2) == (1800, 630)
    axes = visible_axes(one_bits)
    assert len(axes) == 3
    assert [ax.get_ylabel() for ax in axes] == [FID, PSNR, SSIM]
    assert {ax.get_xlabel() for ax in axes} == {"prompt set"}
    for ax, metric in zip(axes, ["fid", "psnr", "ssim"]):
        assert [t.get_text() for t in ax.get_xticklabels()] == sets
        rows = {(s, lab): row(ablation, label=lab, bits="W4A6", prompt_set=s) for s in sets for lab in labels}
        assert_values(heights(ax), {key: finite(r[metric]) for key, r in rows.items()})
        assert_values(intervals(ax), {key: (r[f"{metric}_lo"], r[f"{metric}_hi"]) for key, r in rows.items()
                                      if np.isfinite(r[f"{metric}_lo"]) and np.isfinite(r[f"{metric}_hi"])})
        assert bar_colors(ax) == bar_colors(axes[0])  # one colour per label in every panel
        assert group_floors(ax) == ({"in_domain": 0.25, "out_domain": 1.25} if metric == "fid" else {})
    assert len(set(bar_colors(axes[0]).values())) == 2
    assert len(intervals(axes[0])) == 3 and len(intervals(axes[2])) == 3 and intervals(axes[1]) == {}
    assert heights(axes[2])[("out_domain", PCR)] == pytest.approx(0.58)  # not vacuous
    assert infinity_marks(axes[1]) == [bars(axes[1])[("in_domain", PCR)][0]]  # PSNR inf, no bar
    legend = axes[-1].get_legend()  # on the last panel: the labels, then every panel's interval and floor
    assert [t.get_text() for t in legend.get_texts()] == [NAIVE, PCR, "95% bootstrap interval", "FP noise floor"]
    assert {t.get_text(): mcolors.to_hex(h.get_facecolor()) for t, h in zip(legend.get_texts(), legend.legend_handles)
            if t.get_text() in labels} == bar_colors(axes[-1])

    groups = ["W8A8, in_domain", "W4A6, in_domain", "W8A8, out_domain", "W4A6, out_domain"]
    axes = visible_axes(per_bits)
    assert len(axes) == 2 and [ax.get_ylabel() for ax in axes] == [FID, PSNR]
    assert {ax.get_xlabel() for ax in axes} == {"bit setting, prompt set"}
    assert tuple(per_bits.get_size_inches()) == (12.0, 4.2)  # 0.5 in per bar + 2, per panel
    for ax, metric in zip(axes, ["fid", "psnr"]):
        assert [t.get_text() for t in ax.get_xticklabels()] == groups
        expected = {}
        for group in groups:
            bits, prompt_set = group.split(", ")
            for lab in labels:
                expected[(group, lab)] = finite(row(table, label=lab, bits=bits, prompt_set=prompt_set)[metric])
        assert_values(heights(ax), expected)
    assert group_floors(axes[0]) == dict(zip(groups, [0.25, 0.25, 1.25, 1.25]))  # each group's own prompt set


def test_bar_figure_legend_names_the_fp_floor(table, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: drawn.append(fig) or [])
    bar_figure(table[(table.bits == "W4A6") | (table.method == "fp")], tmp_path / "bars", "floor")
    legend = [t.get_text() for fig in drawn for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "FP noise floor" in legend


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
