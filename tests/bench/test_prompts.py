import os
from pathlib import Path

import pytest

from pcr.bench.prompts import PromptOverlapError, PromptSet, check_disjoint, load_prompts

DATA = Path(__file__).parent / "data"
PARTI = Path(__file__).resolve().parents[3] / "shared" / "data" / "PartiPrompts.tsv"


def test_coco_one_prompt_per_caption_stripped_and_deduplicated():
    prompts = load_prompts(f"coco:{DATA / 'captions_tiny2017.json'}")
    assert prompts.name == "coco:captions_tiny2017.json"
    assert prompts.prompts == (
        "A red bicycle leaning against a brick wall.",
        "A bicycle parked next to a wall on a sunny day.",
        "Two dogs playing with a frisbee in a park.",
        "A dog jumps to catch a flying disc.",
        "A plate of pasta with tomato sauce and basil.",
        "Spaghetti on a white plate beside a glass of wine.",
    )


@pytest.mark.skipif(not PARTI.is_file() and not os.environ.get("CI"),  # CI has ../shared: fail there
                    reason="needs ../shared/data/PartiPrompts.tsv")
def test_parti_prompts_read_as_plain_tsv():
    prompts = load_prompts(f"parti:{PARTI}")
    assert len(prompts) == 1632
    assert prompts[0] == "bond"
    # a prompt that starts with a quoted word keeps its quotes (CSV quoting would eat them)
    assert any(p.startswith('"G I G G L E" painted') for p in prompts)


def test_sampling_is_seeded_order_stable_and_bounded():
    full = load_prompts(f"coco:{DATA / 'captions_tiny2017.json'}")
    a, b = load_prompts(f"coco:{DATA / 'captions_tiny2017.json'}", n=4, seed=3), full.sample(4, seed=3)
    assert a == b and len(a) == 4 and a.name == "coco:captions_tiny2017.json[n=4,seed=3]"
    assert [full.prompts.index(p) for p in a] == sorted(full.prompts.index(p) for p in a)
    assert {full.sample(4, seed=s).prompts for s in range(6)} != {a.prompts}  # the seed matters
    with pytest.raises(ValueError, match="only 6"):
        full.sample(7)


def test_txt_and_csv_sdprompts(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \na cat\n")
    assert load_prompts(f"txt:{tmp_path / 'p.txt'}").prompts == ("a cat", "a dog")
    (tmp_path / "sd.csv").write_text('Prompt\n"a castle, matte painting, 8k"\nan astronaut\n')
    assert load_prompts(f"sdprompts:{tmp_path / 'sd.csv'}").prompts == ("a castle, matte painting, 8k", "an astronaut")


def test_parquet_sdprompts(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"Prompt": ["a castle", "a cat", None, "a castle"]}), tmp_path / "train.parquet")
    assert load_prompts(f"sdprompts:{tmp_path / 'train.parquet'}").prompts == ("a castle", "a cat")


def test_toy_splits():
    calib = load_prompts("toy:calib", n=8, seed=0)
    assert len(calib) == 8 and calib.name == "toy:calib[n=8,seed=0]"
    assert calib == load_prompts("toy:calib", n=8, seed=0)
    check_disjoint(calib, load_prompts("toy:eval_in", n=8, seed=0))
    with pytest.raises(ValueError, match="give n"):
        load_prompts("toy:calib")


@pytest.mark.parametrize("spec, error, message", [
    ("coco:{tmp}/missing.json", FileNotFoundError, "missing.json does not exist; expected a COCO captions JSON"),
    ("coco:{tmp}/bad.json", ValueError, "not valid JSON"),
    ("coco:{tmp}/nocaps.json", ValueError, "no 'annotations' list"),
    ("parti:{tmp}/wrong.tsv", ValueError, r"no 'Prompt' column \(columns found: \['Text', 'Category'\]\)"),
    ("sdprompts:{tmp}/x.json", ValueError, "expected a .parquet or .csv"),
    ("parquet:{tmp}/x", ValueError, "unknown prompt spec"),
    ("coco", ValueError, "unknown prompt spec"),
], ids=["missing", "not-json", "no-annotations", "no-prompt-column", "bad-suffix", "unknown-kind", "no-path"])
def test_missing_or_malformed_files_are_clear_errors(tmp_path, spec, error, message):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "nocaps.json").write_text('{"images": []}')
    (tmp_path / "wrong.tsv").write_text("Text\tCategory\na cat\tAnimals\n")
    with pytest.raises(error, match=message):
        load_prompts(spec.format(tmp=tmp_path))


def test_overlap_is_refused_naming_the_shared_prompts():
    calib = PromptSet("calib", ("a red circle", "a blue square", "a green triangle"))
    evaluation = PromptSet("eval", ("A  Blue square", "a yellow circle"))
    message = r"calib and evaluation set eval share 1 prompt\(s\): 'A  Blue square'"
    with pytest.raises(PromptOverlapError, match=message):
        check_disjoint(calib, evaluation)
    check_disjoint(calib, ["a yellow circle"])


def test_saved_prompt_set_reads_back_and_a_prefix_is_the_first_prompts(tmp_path):
    from pcr.bench.prompts import read_prompt_set, write_prompt_set

    drawn = load_prompts(f"coco:{DATA / 'captions_tiny2017.json'}", n=4, seed=3)
    write_prompt_set(tmp_path / "set.json", drawn)
    assert read_prompt_set(tmp_path / "set.json") == drawn
    prefix = read_prompt_set(tmp_path / "set.json", n=2)
    assert prefix.prompts == drawn.prompts[:2] and prefix.name == f"{drawn.name}[:2]"
    with pytest.raises(ValueError, match="holds 4 prompts; cannot take the first 5"):
        read_prompt_set(tmp_path / "set.json", n=5)


def test_bench_names_are_lazy_and_generate_is_the_function():
    import subprocess
    import sys

    code = ("import sys, pcr.bench.prompts; assert 'torch' not in sys.modules; "
            "import pcr.bench.generation; from pcr.bench import generate; assert callable(generate)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
