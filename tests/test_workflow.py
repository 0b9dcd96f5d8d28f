"""The Snakemake workflow on a fresh copy of the repository: validated configs, the planned DAG of
every target and profile (the experiment's among them), and a real tiny run (rerun does nothing; a
changed relax interval reruns only its branch; the tiny experiment runs after it; integer-backend rows)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TINY = ROOT / ".test" / "config" / "config.yaml"


def checkout(tmp_path: Path, config: dict | None = None) -> Path:
    """A copy of the workflow and its configs, as a user's clone has them; `config` replaces config.yaml."""
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    if config is not None:
        (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def tiny_config(backends: list[str] | None = None) -> dict:
    config = yaml.safe_load(TINY.read_text())
    if backends is not None:
        config["quant"]["backends"] = backends
    return config


BOTH_BACKENDS = ["simulated", "integer"]


def snakemake(workdir: Path, *args: str, cores: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PCR_TORCH_THREADS": "1"}  # two one-thread jobs at a time on the 2-core machine
    return subprocess.run([str(SNAKEMAKE), "--cores", str(cores), *args], cwd=workdir, capture_output=True,
                          text=True, timeout=900, env=env)


def output(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr  # snakemake prints errors to stdout or stderr depending on the mode


def job_stats(text: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints before a run: rule -> job count."""
    table = text.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def planned(run: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> job count."""
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return job_stats(run.stdout)


def job_blocks(run: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """rule -> the block a dry run printed for each of its jobs."""
    blocks: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", run.stdout):
        if m := re.match(r"(?:local)?rule (\w+):", block):
            blocks.setdefault(m[1], []).append(block.split("\n\n")[0])
    return blocks


def planned_wildcards(run: subprocess.CompletedProcess, rule: str) -> set[str]:
    """The wildcards of every planned job of `rule`, e.g. {"variant=progressive, bits=W4A6"}."""
    return {re.search(r"wildcards: (.*)", b)[1] for b in job_blocks(run).get(rule, [])}


# the rules whose jobs run a model; every other rule in workflow/rules is a localrule (tables, figures)
MODEL_RULES = {"toy_clip", "toy_model", "toy_evaluator", "toy_sample_grid", "calibrate_weights", "calibrate",
               "generate", "generate_shard", "metrics"}


def job_resources(run: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """rule -> the `resources:` line of each of its jobs in a dry run."""
    return {rule: [line for b in blocks for line in b.splitlines() if "resources:" in line]
            for rule, blocks in job_blocks(run).items()}


def test_only_the_model_rules_are_left_to_executors():
    """A rule without `localrule: True` is sent to a cluster executor; it must have job sizes in the profiles."""
    remote = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for m in re.finditer(r"^ *rule (\w+):\n(.*?)(?=^ *rule |\Z)", smk.read_text(), re.M | re.S):
            if "localrule: True" not in m[2]:
                remote.add(m[1])
    assert remote == MODEL_RULES
    for profile, rules in (("default", MODEL_RULES), ("gpu", MODEL_RULES - {"toy_clip", "toy_model", "toy_evaluator",
                                                                            "toy_sample_grid"})):
        config = yaml.safe_load((ROOT / "workflow" / "profiles" / profile / "config.yaml").read_text())
        assert set(config["set-resources"]) == rules, profile


def test_default_config_plans_the_main_comparison(tmp_path):
    run = snakemake(checkout(tmp_path), "--dry-run", "all")
    jobs = planned(run)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    variants, bits = len(config["quant"]["variants"]), len(config["quant"]["bits"])
    sets = len(config["prompts"]["evaluation"])
    assert jobs["calibrate"] == variants * bits
    assert jobs["calibrate_weights"] == bits  # one weight calibration per bit setting, shared by the methods
    assert jobs["generate"] == (variants * bits + 2) * sets  # + FP reference and FP from other seeds
    assert jobs["metrics"] == (variants * bits + 1) * sets
    assert jobs["sample_grid"] == sets
    for rule in ("prompts", "toy_clip", "toy_model", "toy_evaluator", "main_table", "figure", "bits_figure"):
        assert jobs[rule] >= 1, rule
    # the model jobs declare the default profile's sizes, the toy's; the localrules none
    for rule, lines in job_resources(run).items():
        sized = rule in MODEL_RULES
        assert all(("mem_mb=4000" in line and "runtime=60" in line) == sized and "gpu=" not in line
                   for line in lines), rule


def test_ablation_targets_plan_their_variants_and_reuse_the_main_ones(tmp_path):
    workdir = checkout(tmp_path)
    run = snakemake(workdir, "--dry-run", "ablation_relax_share")
    planned(run)
    calibrations = planned_wildcards(run, "calibrate")
    expected = {f"progressive-relax-{where}-{r}" for where in ("first", "last") for r in (0.1, 0.2, 0.3, 0.5)}
    expected = (expected - {"progressive-relax-last-0.2"}) | {"progressive_relax", "progressive"}  # same settings
    assert calibrations == {f"variant={v}, bits=W4A6" for v in expected}

    run = snakemake(workdir, "--dry-run", "ablation_calib_size")
    assert planned_wildcards(run, "calibrate") == {f"variant=progressive-calib-{n}, bits=W4A6" for n in (4, 8, 16)} | {
        "variant=progressive, bits=W4A6"}
    run = snakemake(workdir, "--dry-run", "ablation_relax_auto")
    auto = planned_wildcards(run, "calibrate")  # at each bit setting, fixed intervals at auto's average bits
    assert {"variant=progressive-relax-auto-0.2-A6, bits=W4A6", "variant=progressive-relax-auto-0.2-A8, bits=W4A8",
            "variant=progressive-relax-last-0.2-even, bits=W4A6", "variant=progressive-relax-first-0.2-even, bits=W4A8",
            } <= auto
    jobs = planned(snakemake(workdir, "--dry-run", "ablation_progressive"))
    assert jobs["act_ranges"] == 1 and jobs["act_ranges_figure"] == 1
    for target in ("ablation_relax_bits", "ablations"):
        assert planned(snakemake(workdir, "--dry-run", target))["calibrate"] >= 1


@pytest.mark.parametrize("profile", ["sd14", "sd15", "sd21", "sdxl"])
def test_paper_profiles_plan_sharded_gpu_jobs(tmp_path, profile):
    """Planned without weights or prompt files (a real run's preflight names what is missing:
    tests/test_profiles.py)."""
    workdir = checkout(tmp_path)
    config = yaml.safe_load((ROOT / "config" / f"{profile}.yaml").read_text())
    args = ("--dry-run", "all", "--configfile", f"config/{profile}.yaml")
    merged = snakemake(workdir, *args)  # merged into the toy default, it would keep the toy's prompt sets
    assert merged.returncode != 0 and "add --replace-workflow-config" in output(merged)
    # with the real models' job sizes (workflow/profiles/gpu; the default profile's are the toy's)
    run = snakemake(workdir, *args, "--replace-workflow-config", "--workflow-profile", "workflow/profiles/gpu", cores=8)
    jobs = planned(run)
    assert "toy_model" not in jobs and jobs["calibrate"] == 12
    shards, sets = config["sampling"]["shards"], len(config["prompts"]["evaluation"])
    assert jobs["generate_shard"] == shards * (12 + 2) * sets and jobs["collect_shards"] == (12 + 2) * sets
    for rule, lines in job_resources(run).items():
        sized = rule in MODEL_RULES
        assert all(("gpu=1" in line and "mem_mb=32000" in line and "runtime=240" in line) == sized
                   for line in lines), rule
    assert all("threads: 8" in block for block in job_blocks(run)["calibrate"])


def test_bad_configs_name_the_key(tmp_path):
    config = tiny_config()
    config["toy"]["model"]["stepz"] = config["toy"]["model"].pop("steps")
    run = snakemake(checkout(tmp_path / "a", config), "--dry-run", "all")
    assert run.returncode != 0
    assert "'stepz' was unexpected" in output(run) and "['toy']['properties']['model']" in output(run)

    config = tiny_config()
    config["quant"]["variants"]["progressive"]["relax_intervall"] = [0.5, 1.0]
    run = snakemake(checkout(tmp_path / "b", config), "--dry-run", "all")
    assert run.returncode != 0 and "'relax_intervall' was unexpected" in output(run)

    config = tiny_config()
    config["ablations"]["relax_bits"]["variant"] = "progresive"
    run = snakemake(checkout(tmp_path / "c", config), "--dry-run", "all")
    assert run.returncode != 0
    assert "config key ablations.relax_bits.variant: variant 'progresive' is not one of quant.variants" in output(run)

    config = tiny_config()
    config["resources"] = {"threads": 2, "gpu": 0, "mem_mb": 4000, "runtime": 60}  # where job sizes used to be
    run = snakemake(checkout(tmp_path / "e", config), "--dry-run", "all")
    assert run.returncode != 0 and "config key resources: is no longer read" in output(run)
    assert "workflow/profiles/gpu" in output(run)

    config = tiny_config()
    config["ablations"]["calib_size"]["sizes"] = [2, 8]
    run = snakemake(checkout(tmp_path / "d", config), "--dry-run", "all")
    assert run.returncode != 0 and "8 is more than the 4 calibration prompts (prompts.calibration.n)" in output(run)


def test_the_experiment_plans_each_regime_with_its_own_fp_reference(tmp_path):
    """The tiny experiment: the default regime (shared with the main comparison) and 3 Euler steps, two
    methods with and without relaxing, W4A6; planned, not run (tests/test_plan.py checks the plan)."""
    workdir = checkout(tmp_path, tiny_config())
    run = snakemake(workdir, "--dry-run", "experiment")
    jobs = planned(run)
    runs = {f"variant={v}, bits=W4A6{at}" for v in ("perstep", "perstep+relax", "progressive", "progressive_relax")
            for at in ("", "@s3_g4_euler")}
    assert planned_wildcards(run, "calibrate") == runs
    fp = {f"variant={v}, bits=W32A32{at}, pset=in_domain" for v in ("fp", "fp-reseeded") for at in ("", "@s3_g4_euler")}
    assert planned_wildcards(run, "generate") == {f"{r}, pset=in_domain" for r in runs} | fp
    assert jobs["metrics"] == 8 + 2 and jobs["calibrate_weights"] == 1  # min-max weights: shared by the regimes
    assert jobs["experiment_figure"] == 4 and jobs["experiment_act_ranges"] == 2
    assert jobs["experiment_table"] == jobs["experiment_deltas_table"] == 1
    assert planned(snakemake(workdir, "--dry-run", "experiment_s3_g4_euler"))["calibrate"] == 4

    without = tiny_config()
    del without["experiment"]
    run = snakemake(checkout(tmp_path / "none", without), "--dry-run", "experiment")
    assert run.returncode != 0 and "config key experiment: the config has no experiment section" in output(run)


@pytest.mark.slow
def test_tiny_dag_runs_end_to_end_and_a_changed_relax_interval_reruns_only_its_branch(tmp_path):
    workdir = checkout(tmp_path, tiny_config(BOTH_BACKENDS))
    run = snakemake(workdir, "all", cores=2)
    assert run.returncode == 0, run.stderr[-3000:]

    table = pd.read_csv(workdir / "results/tables/main.csv")
    assert list(table["variant"]) == ["fp-reseeded"] * 2 + [row for v in ("perstep", "progressive", "progressive_relax")
                                                            for row in (v, f"{v}.int8") for _ in range(2)]
    assert set(table["prompt_set"]) == {"in_domain", "generalization"} and (table["n_images"] == 4).all()
    check_the_integer_backend(workdir, table)
    table = table[~table["variant"].str.endswith(".int8")]
    quantized = table[table["variant"] != "fp-reseeded"]
    assert quantized["psnr"].between(5, 80).all() and (quantized["ssim"] <= 1).all()
    assert (table[table["variant"] == "fp-reseeded"]["paired"] == False).all()  # noqa: E712
    relaxed = quantized[quantized["variant"] == "progressive_relax"]
    assert (relaxed["avg_act_bits"] == 6 + 4 * 2 / 3).all() and (relaxed["relax_where"] == "last").all()
    assert (relaxed["relax_share"] == 2 / 3).all()  # [0.6, 1.0] of 3 calls: calls 1 and 2, as the reference
    for stem in ("main", "bits", "samples_in_domain", "samples_generalization"):
        assert Image.open(workdir / f"results/figures/{stem}.png").size[0] > 100
        assert (workdir / f"results/figures/{stem}.pdf").read_bytes().startswith(b"%PDF")
    metrics = json.loads((workdir / "results/metrics/progressive/W4A6/in_domain.json").read_text())
    assert metrics["provenance"]["n_images"] == 4 and metrics["provenance"]["seeds"]["base"] == 0
    assert metrics["run"]["knobs"]["calib_size"] == 4 and metrics["cost"]["avg_act_bits"] == 6
    assert (workdir / "logs/calibrate/progressive/W4A6.log").stat().st_size > 0
    evaluator = json.loads((workdir / "results/toy/evaluator.json").read_text())
    assert evaluator["sampling"]["steps"] == 2  # the tiny config's toy.sample; the default follows `sampling`
    assert 0 <= evaluator["model_prompt_following"]["eval_in"]["object"] <= 1
    timing = pd.read_csv(workdir / "results/tables/run_time.csv").set_index("rule")
    assert timing.loc["calibrate", "jobs"] == 3 and timing.loc["generate", "jobs"] == 16
    assert timing.loc["total", "total_s"] == pytest.approx(timing["total_s"].drop("total").sum(), abs=0.5)

    again = snakemake(workdir, "all")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    report = snakemake(workdir, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-2000:]
    assert (workdir / "report.html").stat().st_size > 10_000

    check_the_tiny_experiment(workdir)

    config = tiny_config(BOTH_BACKENDS)
    config["quant"]["variants"]["progressive_relax"]["relax_interval"] = [0.9, 1.0]
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    untouched = [workdir / f"results/calib/{v}/W4A6.safetensors" for v in ("perstep", "progressive")]
    untouched += [workdir / f"results/images/{v}/in_domain/00000.png" for v in ("fp/W32A32", "perstep/W4A6",
                                                                                 "progressive/W4A6")]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    plan = snakemake(workdir, "--dry-run", "all")
    assert planned_wildcards(plan, "calibrate") == {"variant=progressive_relax, bits=W4A6"}
    assert planned_wildcards(plan, "generate") == {f"variant={v}, bits=W4A6, pset={s}" for s in ("in_domain",
                                                   "generalization") for v in ("progressive_relax",
                                                                               "progressive_relax.int8")}
    rerun = snakemake(workdir, "all", cores=2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in untouched} == before
    relaxed = pd.read_csv(workdir / "results/tables/main.csv").query("variant == 'progressive_relax'")
    assert (relaxed["avg_act_bits"] == 6 + 4 / 3).all()  # now 1 of the 3 calls at 10 bits


def check_the_tiny_experiment(workdir: Path) -> None:
    """The tiny experiment after `all` (about 20 s): the default regime reuses the main comparison's
    results, the Euler regime samples with Euler, and deltas pair relaxed runs with the relaxed baseline."""
    run = snakemake(workdir, "experiment", cores=2)
    assert run.returncode == 0, run.stderr[-3000:]
    table = pd.read_csv(workdir / "results/tables/experiment.csv")
    assert list(table["regime"]) == ["s3_g4_own"] * 5 + ["s3_g4_euler"] * 5
    assert list(table["base_variant"][:5]) == ["fp", "perstep", "perstep", "progressive", "progressive"]
    assert list(table["relax"][:5]) == [False, False, True, False, True] and (table["n_images"] == 4).all()
    assert set(table.loc[table["scheduler"] == "euler", "source"]) >= {
        "results/metrics/perstep+relax/W4A6@s3_g4_euler/in_domain.json"}
    euler = json.loads((workdir / "results/images/fp/W32A32@s3_g4_euler/in_domain/generation.json").read_text())
    assert euler["info"]["scheduler"] == "euler"
    quantized = json.loads((workdir / "results/images/progressive/W4A6@s3_g4_euler/in_domain/generation.json")
                           .read_text())
    assert quantized["quantization"]["scheduler"] == "EulerDiscreteScheduler"
    deltas = pd.read_csv(workdir / "results/tables/experiment_deltas.csv")
    runs = deltas[deltas["method"] != "fp"]
    assert set(runs.loc[runs["relax"], "baseline_variant"]) == {"perstep+relax"}
    assert set(runs.loc[~runs["relax"], "baseline_variant"]) == {"perstep"}
    assert (runs.loc[runs["variant"] == runs["baseline_variant"], "delta_psnr"] == 0).all()
    assert runs.loc[runs["variant"] != runs["baseline_variant"], "delta_psnr"].notna().all()
    for stem in ("s3_g4_euler_relaxed", "s3_g4_own_unrelaxed", "act_ranges_W4A6@s3_g4_euler"):
        assert Image.open(workdir / f"results/figures/experiment/{stem}.png").size[0] > 100


def check_the_integer_backend(workdir: Path, table: pd.DataFrame) -> None:
    """quant.backends [simulated, integer] adds a "<variant>.int8" row per main run, sampled on the int8
    kernels with the variant's calibration (none of its own); its images match the simulated ones', and
    the generation jobs' measured time and UNet weight memory reach the tables."""
    assert not list((workdir / "results/calib").glob("*.int8"))
    rows = table.set_index(["variant", "prompt_set"])
    for variant in ("perstep", "progressive", "progressive_relax"):
        for pset in ("in_domain", "generalization"):
            simulated, integer = rows.loc[(variant, pset)], rows.loc[(f"{variant}.int8", pset)]
            assert integer["backend"] == "integer" and simulated["backend"] == "simulated"
            assert integer["label"].endswith("[int8 kernels]")
            assert abs(integer["psnr"] - simulated["psnr"]) < 0.5, (variant, pset)
            assert integer["unet_weight_ratio"] < simulated["unet_weight_ratio"]
            assert integer["speedup_vs_fp"] > 0
    metrics = json.loads((workdir / "results/metrics/progressive_relax.int8/W4A6/in_domain.json").read_text())
    paths = metrics["cost"]["measured"]["kernel_paths"]
    assert paths["int8"] > 0 and sum(n for path, n in paths.items() if "relaxed call" in path) > 0
    provenance = json.loads((workdir / "results/images/progressive.int8/W4A6/in_domain/generation.json").read_text())
    assert provenance["quantization"]["backend"] == "integer"
