import pandas as pd
import pytest
from PIL import Image

from pcr.report import draw_figure, metrics_table, write_delta_table, write_table


def check(paths, stem):
    assert paths == [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    with Image.open(paths[0]) as img:
        assert img.width > 0 and img.height > 0
    assert paths[1].read_bytes().startswith(b"%PDF")


def test_main_and_bits_kinds_read_the_table_csv(table, run_paths, tmp_path):
    csv = write_table(table, tmp_path / "tables" / "main.csv")[0]
    for kind in ["bits", "ablation_progressive"]:
        check(draw_figure(kind, csv, tmp_path / "figures" / kind), tmp_path / "figures" / kind)
    with pytest.raises(ValueError, match="delta table"):  # the main figure reads main_deltas.csv
        draw_figure("main", csv, tmp_path / "figures" / "main")
    deltas = write_delta_table(run_paths, "progressive (PCR)", tmp_path / "tables" / "main_deltas.csv")[0]
    check(draw_figure("main", deltas, tmp_path / "figures" / "main"), tmp_path / "figures" / "main")


def test_relax_share_ablation_is_a_sweep_by_where(make_doc, write_doc, tmp_path):
    points = [("none", 0.0, 4.0), ("first", 0.1, 3.5), ("first", 0.2, 3.8), ("last", 0.1, 3.0), ("last", 0.2, 2.0)]
    paths = [write_doc("floor", make_doc("fp", "FP", "in_domain", 0.3, 20.0))]
    paths += [write_doc(f"{where}-{ratio}", make_doc("progressive", "W4A6", "in_domain", fid, 25.0 + ratio,
                                                      knobs={"relax_where": where, "relax_share": ratio}))
              for where, ratio, fid in points]
    csv = write_table(metrics_table(paths), tmp_path / "ablation_relax_share.csv")[0]
    stem = tmp_path / "ablation_relax_share"
    check(draw_figure("ablation_relax_share", csv, stem), stem)
    with pytest.raises(ValueError, match="no column 'calib_size'"):  # a sweep needs its knob column
        draw_figure("ablation_calib_size", csv, tmp_path / "calib")


def test_act_ranges_kind_and_unknown_kinds(table, tmp_path, capsys):
    rows = [{"layer": layer, "step": step, "trajectory": traj, "lo": -1.0, "hi": 1.0 + (traj == "quantized") * k}
            for k, layer in enumerate(["l0", "l1"]) for step in range(3) for traj in ["FP", "quantized"]]
    csv = tmp_path / "act_ranges.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    check(draw_figure("act_ranges", csv, tmp_path / "ranges"), tmp_path / "ranges")
    assert "drew layers l1, l0" in capsys.readouterr().err
    main = write_table(table[table.bits.isin(["W4A6", "FP"])], tmp_path / "abl.csv")[0]
    check(draw_figure("ablation_new_idea", main, tmp_path / "new"), tmp_path / "new")  # falls back to bars
    with pytest.raises(ValueError, match="unknown figure kind 'mian'"):
        draw_figure("mian", main, tmp_path / "typo")
