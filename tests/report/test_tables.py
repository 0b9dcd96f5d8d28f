import json
import math

import numpy as np
import pandas as pd
import pytest

from pcr.report import main_table, metrics_table, read_metrics_json, write_table
from pcr.report.tables import BASE_COLUMNS


def test_read_metrics_json_decodes_non_finite_numbers_only(make_doc, write_doc):
    doc = make_doc("fp", "FP", "nan", 0.3, "inf", kid="nan")
    doc["metrics"]["fid"] = "-inf"
    data = read_metrics_json(write_doc("x", doc))
    assert data["metrics"]["psnr"] == math.inf and data["metrics"]["fid"] == -math.inf
    assert math.isnan(data["metrics"]["kid"])
    assert data["run"]["prompt_set"] == "nan"  # text fields are not numbers


def test_metrics_table_columns_and_order(table, run_paths):
    knobs = ["calib_size", "relax_share", "relax_where"]  # first-seen order over the files
    assert list(table.columns) == [*BASE_COLUMNS, *knobs, "source"]
    assert list(table["source"]) == [str(p) for p in run_paths]
    assert len(table) == 10
    reordered = metrics_table(run_paths[::-1])
    assert list(reordered["source"]) == [str(p) for p in run_paths[::-1]]


def test_metrics_table_values(table):
    row = table[(table.variant == "naive") & (table.bits == "W4A6") & (table.prompt_set == "out_domain")].iloc[0]
    assert row["label"] == "naive (one range)" and row["method"] == "naive"
    assert (row["weight_bits"], row["act_bits"], row["n_images"]) == (4, 6, 64)
    assert (row["fid"], row["fid_lo"], row["fid_hi"]) == (5.0, 4.5, 5.5)
    assert row["clip_score"] == 75.0 and row["clip_score_fp"] == 72.5
    assert row["psnr"] == 26.0 and row["ssim"] == 0.9 and row["paired"] == True  # noqa: E712
    assert row["weight_mb"] == 1.0 and row["avg_act_bits"] == 6.0 and row["bitops_ratio"] == 24 / 1024
    assert row["quant_config_hash"] == "hash-naive-W4A6" and row["prompt_spec"] == "toy:out_domain"
    assert table["fid"].dtype == np.float64 and table["psnr"].dtype == np.float64


def test_metrics_table_missing_values_are_nan(table):
    inf_row = table[(table.variant == "progressive") & (table.bits == "W4A6") & (table.prompt_set == "in_domain")]
    inf_row = inf_row.iloc[0]
    assert inf_row["psnr"] == math.inf
    assert math.isnan(inf_row["fid_lo"]) and math.isnan(inf_row["fid_hi"])  # fid_ci95: null
    assert table["clip_lo"].isna().all() and table["clip_hi"].isna().all()  # clip_score_ci95 absent
    assert table[["psnr_lo", "ssim_hi", "clip_score_delta", "clip_delta_lo"]].isna().all().all()
    fp = table[table.method == "fp"]
    assert fp["kid"].isna().all() and not fp["paired"].any() and (fp["weight_bits"] == 32).all()
    # knobs: NaN where a file lacks the key
    assert fp[["calib_size", "relax_share", "relax_where"]].isna().all().all()
    prog = table[table.variant == "progressive"]
    assert (prog["calib_size"] == 32).all()
    assert list(prog["relax_where"].fillna("-")) == ["-", "last", "-", "last"]


def test_metrics_table_intervals_of_paired_metrics(make_doc, write_doc):
    doc = make_doc("naive", "W8A8", "in_domain", 1.0, 30.0)
    doc["metrics"].update(psnr_ci95=[29.5, "inf"], ssim_ci95=[0.85, 0.95], clip_score_delta=-0.5,
                          clip_score_delta_ci95=[-0.9, -0.1])
    row = metrics_table([write_doc("x", doc)]).iloc[0]
    assert (row["psnr_lo"], row["psnr_hi"]) == (29.5, math.inf)
    assert (row["ssim_lo"], row["ssim_hi"]) == (0.85, 0.95)
    assert (row["clip_score_delta"], row["clip_delta_lo"], row["clip_delta_hi"]) == (-0.5, -0.9, -0.1)


def test_metrics_table_list_knob_is_json_text(make_doc, write_doc):
    doc = make_doc("progressive", "W4A6", "in_domain", 1.0, 30.0, knobs={"relax_interval": [0.8, 1.0]})
    df = metrics_table([write_doc("x", doc)])
    assert json.loads(df.loc[0, "relax_interval"]) == [0.8, 1.0]


@pytest.mark.parametrize("block", ["run", "metrics"])
def test_metrics_table_names_file_without_block(make_doc, write_doc, run_paths, block):
    doc = make_doc("naive", "W8A8", "in_domain", 1.0, 30.0)
    del doc[block]
    bad = write_doc("broken_file", doc)
    with pytest.raises(ValueError, match=rf"broken_file\.json.*'{block}'"):
        metrics_table([run_paths[0], bad])


def test_metrics_table_rejects_knob_shadowing_a_column(make_doc, write_doc):
    doc = make_doc("naive", "W8A8", "in_domain", 1.0, 30.0, knobs={"fid": 3})
    with pytest.raises(ValueError, match="fid"):
        metrics_table([write_doc("x", doc)])


def test_main_table_shape_order_and_values(table):
    wide = main_table(table)
    sets, metrics = ["in_domain", "out_domain"], ["fid", "psnr", "ssim", "clip_score"]
    assert list(wide.columns) == ["label", "bits", *[f"{m}[{s}]" for s in sets for m in metrics], "avg_act_bits"]
    assert list(zip(wide["label"], wide["bits"])) == [
        ("naive (one range)", "W8A8"), ("progressive (PCR)", "W8A8"), ("naive (one range)", "W4A6"),
        ("progressive (PCR)", "W4A6"), ("FP (other seeds)", "FP")]
    prog = wide.iloc[3]
    assert prog["fid[in_domain]"] == 2.0 and prog["fid[out_domain]"] == 2.5
    assert prog["psnr[in_domain]"] == math.inf and prog["psnr[out_domain]"] == 28.0
    assert prog["avg_act_bits"] == 6.4
    assert wide.iloc[4]["fid[out_domain]"] == 1.25


def test_main_table_adds_measured_costs_where_generation_measured_them(table):
    """Means over the prompt sets' folders of the speed-up and weight memory the generation jobs measured."""
    measured = table.assign(speedup_vs_fp=[1.0 + i for i in range(len(table))], unet_weight_ratio=0.25)
    wide = main_table(measured)
    assert list(wide.columns)[-3:] == ["avg_act_bits", "speedup_vs_fp", "unet_weight_ratio"]
    for (label, bits), row in wide.set_index(["label", "bits"]).iterrows():
        rows = measured[(measured.label == label) & (measured.bits == bits)]
        assert row["speedup_vs_fp"] == rows["speedup_vs_fp"].mean() and row["unet_weight_ratio"] == 0.25


def test_main_table_missing_combination_is_nan_and_duplicates_raise(table):
    partial = table[~((table.variant == "naive") & (table.prompt_set == "out_domain"))]
    wide = main_table(partial)
    assert len(wide) == 5 and wide.iloc[0]["fid[in_domain]"] == 1.0
    assert math.isnan(wide.iloc[0]["fid[out_domain]"])
    with pytest.raises(ValueError):
        main_table(pd.concat([table, table.iloc[[0]]]))


def test_write_table_csv_round_trips_and_markdown_has_numbers(table, tmp_path):
    csv, md = tmp_path / "tables" / "main.csv", tmp_path / "tables" / "main.md"
    assert write_table(table, csv, md) == [csv, md]
    back = pd.read_csv(csv)
    assert list(back.columns) == list(table.columns)
    for column in ["fid", "fid_lo", "psnr", "kid", "avg_act_bits", "relax_share", "weight_bits"]:
        np.testing.assert_array_equal(back[column].to_numpy(float), table[column].to_numpy(float))
    assert list(back["label"]) == list(table["label"]) and list(back["paired"]) == list(table["paired"])
    text = md.read_text().splitlines()
    assert len(text) == 2 + len(table) and text[0].startswith("| variant | label |")
    row = text[5]  # progressive W4A6 in_domain
    assert "| 0.02344 |" in row  # bitops_ratio 24/1024, to 4 significant digits
    assert "| inf |" in row and "| 6.4 |" in row and "| last |" in row and "naive (one range)" in text[2]
    assert not list(tmp_path.glob("tables/.*tmp"))  # atomic writes leave no temporaries


def test_write_table_markdown_optional_and_escapes_pipes(tmp_path):
    df = pd.DataFrame({"name": ["a|b"], "x": [1 / 3]})
    assert write_table(df, tmp_path / "t.csv") == [tmp_path / "t.csv"]
    assert not (tmp_path / "t.md").exists()
    write_table(df, tmp_path / "t.csv", tmp_path / "t.md")
    assert (tmp_path / "t.md").read_text().splitlines()[2] == "| a\\|b | 0.3333 |"
