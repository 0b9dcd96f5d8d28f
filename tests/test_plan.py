"""The experiment's plan (pcr.plan) without Snakemake: variants, ablations, weight sharing, sampling
regimes and the experiment, read from the repository's configs; and the config problems it names."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcr.plan import FLOOR, FP, ConfigProblem, Plan, Regime
from pcr.plan.experiment import expand_regimes
from pcr.quant.config import WEIGHT_KEYS, QuantConfig

ROOT = Path(__file__).resolve().parents[1]


def read(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def merged(*paths: str) -> dict:
    """Config files merged as Snakemake merges --configfile: mappings key by key, the rest replaced."""
    def merge(into: dict, new: dict) -> dict:
        for key, value in new.items():
            into[key] = merge(into.get(key, {}), value) if isinstance(value, dict) else value
        return into

    out = {}
    for path in paths:
        merge(out, read(path))
    return out


@pytest.fixture(scope="module")
def default():
    return Plan.from_config(read("config/config.yaml"))


@pytest.fixture
def tiny():
    return read(".test/config/config.yaml")


def test_planning_imports_no_torch():
    code = "import sys, pcr.plan, pcr.jobs, pcr.preflight; assert 'torch' not in sys.modules"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_variants_with_the_same_settings_are_planned_once(default):
    runs = default.ablations["relax_share"].runs
    names = [v for v, _ in runs]
    # the last 20% at 10 bits is progressive_relax of the main comparison: computed once, under its name
    assert "progressive_relax" in names and "progressive-relax-last-0.2" not in default.variants
    # and the unrelaxed reference point is progressive itself
    assert names[0] == "progressive" and "progressive-norelax" not in default.variants
    assert {b for _, b in runs} == {"W4A6"} and len(runs) == 1 + 2 * 4
    assert "progressive" in [v for v, _ in default.ablations["calib_size"].runs]  # 32 prompts: the main one


def test_relax_share_ablation_sweeps_intervals_and_tabulates_the_share_relaxed(default):
    first = default.variants["progressive-relax-first-0.1"]
    assert first.quant["relax_interval"] == [0.0, 0.1] and first.label == "relax first 10%"
    assert default.variants["progressive-relax-last-0.3"].quant["relax_interval"] == [0.7, 1.0]
    # 10 calls: the reference's rounding relaxes calls 0 and 1 of [0, 0.1], call 9 of [0.9, 1.0]
    assert default.knobs("progressive-relax-first-0.1", "W4A6") == {
        "calib_size": 32, "observer": None, "relax_where": "first", "relax_share": 0.2, "relax_bits": 10}
    assert default.knobs("progressive-relax-last-0.1", "W4A6")["relax_share"] == 0.1
    assert default.knobs("progressive", "W4A6")["relax_where"] == "none"


def test_relax_auto_gets_the_average_bits_of_the_fixed_intervals(default, tiny):
    auto = default.variants["progressive-relax-auto-0.2-A6"]
    assert auto.quant["relax_auto_bits"] == 6.8  # 2 of 10 calls at 10 bits over A6
    assert default.knobs("progressive-relax-auto-0.2-A6", "W4A6")["relax_share"] == pytest.approx(0.2)
    for where in ("first", "last"):  # each fixed interval relaxes as many calls as auto's budget buys
        assert default.knobs(f"progressive-relax-{where}-0.2-even", "W4A6")["relax_share"] == pytest.approx(0.2)
    tiny["ablations"]["relax_auto"]["bits"] = ["W8A8", "W4A6"]  # one budget per bit setting
    runs = Plan.from_config(tiny).ablations["relax_auto"].runs
    assert [b for _, b in runs] == ["W8A8"] * 4 + ["W4A6"] * 4
    assert {v for v, _ in runs if "auto" in v} == {"progressive-relax-auto-0.4-A8", "progressive-relax-auto-0.4-A6"}
    assert default.ablations["progressive"].act_ranges == [("perstep", "progressive", "W4A6")]


def test_methods_at_one_weight_setting_share_one_weight_calibration(default):
    keys = {default.weight_key(v, b) for v, b in default.runs() if b.startswith("W4")}
    assert len(keys) == 1 and len(default.weights) == 2  # W4 and W8
    job = default.weight_job(keys.pop())
    assert set(job["quant"]) - {"num_steps", "guidance_scale", "seed"} <= set(WEIGHT_KEYS)
    assert job["calib_size"] == 0 and job["scheduler"] is None


def test_adaround_weights_depend_on_the_regime_they_sample(tiny):
    tiny["quant"]["common"]["weight_method"] = "adaround"
    plan = Plan.from_config(tiny)
    own, euler = plan.weight_key("perstep", "W4A6"), plan.weight_key("perstep", "W4A6@s3_g4_euler")
    assert own != euler and plan.weight_job(euler)["scheduler"] == "euler"
    assert plan.weight_job(euler)["calib_size"] == 4


def test_a_setting_names_its_regime_outside_the_default_one(tiny):
    plan = Plan.from_config(tiny)
    euler = Regime(3, 4.0, "euler")
    assert euler.name == "s3_g4_euler" and Regime(50, 7.5, None).name == "s50_g7p5_own"
    assert plan.setting("W4A6") == "W4A6" and plan.setting("W4A6", euler) == "W4A6@s3_g4_euler"
    assert plan.split("W4A6@s3_g4_euler") == ("W4A6", euler)
    assert plan.quant_config("perstep", "W4A6@s3_g4_euler")["num_steps"] == 3
    assert plan.generation_params("perstep", "W4A6@s3_g4_euler")["scheduler"] == "euler"
    assert "scheduler" not in plan.generation_params("perstep", "W4A6")  # the checkpoint's own: as before
    inputs = plan.metrics_inputs("perstep", "W4A6@s3_g4_euler", "in_domain")
    assert inputs["reference"] == "results/images/fp/W32A32@s3_g4_euler/in_domain/manifest.csv"
    assert plan.generation_params(FLOOR, "W32A32@s3_g4_euler")["seed"] == 100_000
    assert plan.run_info(FLOOR, "W32A32@s3_g4_euler", "in_domain")["regime"]["scheduler"] == "euler"
    assert "regime" not in plan.run_info("perstep", "W4A6", "in_domain")
    with pytest.raises(ValueError, match="names no planned regime"):
        plan.split("W4A6@s9_g1_ddim")


def test_regime_entries_are_crossed_and_deduplicated():
    regimes = expand_regimes([{"steps": [20, 50], "guidance": [4.0, 7.5], "scheduler": ["ddim", "euler"]},
                              {"steps": 20, "guidance": 4, "scheduler": "ddim"}])
    assert len(regimes) == 8 and regimes[0] == Regime(20, 4.0, "ddim")
    assert [r.name for r in expand_regimes([{"steps": 10, "guidance": 1}])] == ["s10_g1_own"]


def test_the_tiny_experiment_shares_the_default_regime_with_the_main_comparison(tiny):
    plan = Plan.from_config(tiny)
    experiment = plan.experiment
    assert [r.name for r in experiment.regimes] == ["s3_g4_own", "s3_g4_euler"]
    # relaxed progressive at [0.6, 1.0] is the main progressive_relax
    assert experiment.variants == {("perstep", False): "perstep", ("perstep", True): "perstep+relax",
                                   ("progressive", False): "progressive", ("progressive", True): "progressive_relax"}
    runs = experiment.runs()
    assert len(runs) == 2 * (1 + 4)  # per regime: the FP floor, 2 methods x relaxed or not
    assert {(r.variant, r.setting) for r in runs if r.regime.scheduler is None} >= {("perstep", "W4A6")}
    relaxed = [r for r in runs if r.relaxed]
    assert {r.baseline for r in relaxed} == {"perstep+relax"} and all(r.baseline == "perstep" for r in runs
                                                                      if not r.relaxed)
    assert runs[0].variant == FLOOR and runs[0].method == "fp" and runs[5].setting == "W32A32@s3_g4_euler"
    assert experiment.act_range_variants() == ("perstep", "progressive")
    out = experiment.outputs()
    assert "results/figures/experiment/s3_g4_euler_relaxed.png" in out
    assert "results/tables/experiment/act_ranges_W4A6@s3_g4_euler.csv" in out
    assert out[-2:] == ["results/tables/experiment.csv", "results/tables/experiment_deltas.csv"]
    assert experiment.table_columns()[1] == {"regime": "s3_g4_own", "steps": 3, "guidance": 4.0, "scheduler": "own",
                                             "base_variant": "perstep", "relax": False, "baseline": "perstep"}
    assert plan.setting_pattern() == r"W\d+A\d+(?:@(?:s3_g4_euler))?"


@pytest.mark.parametrize("files, regimes, calibrations", [
    (("config/toy_long.yaml", "config/experiment.yaml"), 8, 8 * 4 * 8 * 2),
    (("config/toy_long.yaml", "config/experiment.yaml", "config/experiment_slice.yaml"), 2, 2 * 2 * 8 * 2),
], ids=["full-grid", "slice"])
def test_the_experiment_configs_expand_to_their_grid(files, regimes, calibrations):
    config = merged("config/config.yaml", *files)
    plan = Plan.from_config(config)
    experiment = plan.experiment
    assert len(experiment.regimes) == regimes and config["prompts"]["evaluation"]["in_domain"]["n"] == 200
    runs = experiment.runs()
    assert len([r for r in runs if r.variant != FLOOR]) == calibrations and len(runs) == calibrations + regimes
    assert len({(r.variant, r.setting) for r in runs if r.variant != FLOOR}) == calibrations  # none shared
    assert {r.method for r in runs} == {"fp", "progressive", "perstep", "perstep_qw", "progressive_traj",
                                        "progressive_seq", "naive", "qdiff", "ptq4dm"}
    assert experiment.act_range_variants() == ("perstep_qw", "progressive_traj")
    assert all(plan.quant_config(r.variant, r.setting)["num_steps"] == r.regime.steps for r in runs
               if r.variant != FLOOR)


def problem(config: dict) -> str:
    with pytest.raises(ConfigProblem) as err:
        Plan.from_config(config)
    return str(err.value)


def test_config_problems_name_the_key_path(tiny):
    broken = copy.deepcopy(tiny)
    broken["ablations"]["relax_share"]["variant"] = "progresive"
    assert problem(broken).startswith("config key ablations.relax_share.variant: variant 'progresive' is not one of "
                                      "quant.variants (perstep, progressive, progressive_relax)")
    broken = copy.deepcopy(tiny)
    broken["ablations"]["relax_bits"]["variant"] = "progressive"
    assert "config key ablations.relax_bits.variant: 'progressive' relaxes no step" in problem(broken)
    broken = copy.deepcopy(tiny)
    broken["ablations"]["calib_size"]["sizes"] = [2, 8]
    assert "config key ablations.calib_size.sizes: 8 is more than the 4 calibration prompts" in problem(broken)
    broken = copy.deepcopy(tiny)
    broken["quant"]["variants"]["perstep"]["observe_acts"] = "first_pass"
    broken["quant"]["variants"]["perstep"]["method"] = "naive"
    assert problem(broken).startswith("config key quant.variants.perstep.observe_acts: variant 'perstep' at W4A6 "
                                      "(quant.bits), sampling: 3 steps")
    broken = copy.deepcopy(tiny)
    broken["report"]["baseline"] = "perstap"
    assert "config key report.baseline: 'perstap' is neither" in problem(broken)


def test_experiment_problems_name_the_key_path(tiny):
    for key, value, message in [
        ("methods", ["perstep", "progressive_relax"], "config key experiment.methods: 'progressive_relax' relaxes"),
        ("methods", ["perstep", "perstep_qw"], "config key experiment.methods: variant 'perstep_qw' is not one of"),
        ("images", 5, "config key experiment.images: 5 images per set, but prompts.evaluation.in_domain.n is 4"),
        ("prompt_sets", ["parti"], "config key experiment.prompt_sets: 'parti' is not one of prompts.evaluation"),
        ("relax", {"relax_interval": [0.9, 0.2]},
         "config key experiment.relax.relax_interval: relax_interval must be [lo, hi]"),
        ("baseline", "naive", "config key experiment.baseline: 'naive' is not one of experiment.methods"),
        ("act_ranges", ["perstep", "naive"], "config key experiment.act_ranges: 'naive' is not one of"),
    ]:
        broken = copy.deepcopy(tiny)
        broken["experiment"][key] = value
        assert problem(broken).startswith(message), key
    without = copy.deepcopy(tiny)
    del without["experiment"]
    with pytest.raises(ConfigProblem, match="config key experiment: the config has no experiment section"):
        Plan.from_config(without).require_experiment()


def test_every_quantization_the_plan_makes_is_a_valid_quant_config():
    plan = Plan.from_config(merged("config/config.yaml", "config/toy_long.yaml", "config/experiment.yaml"))
    for variant, setting in plan.runs():
        config = QuantConfig.from_dict(plan.quant_config(variant, setting))
        assert config.num_steps == plan.split(setting)[1].steps
    assert FP not in plan.variants and FLOOR not in plan.variants


def test_the_schema_names_every_scheduler_pcr_builds():
    from diffusers import DDIMScheduler

    from pcr.pipelines.schedulers import SCHEDULERS, make_scheduler

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["$defs"]["scheduler"]["enum"] == [*SCHEDULERS, None]
    own = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing").config
    for name, (class_name, _) in SCHEDULERS.items():
        built = make_scheduler(name, own)
        assert type(built).__name__ == class_name and built.config.prediction_type == "v_prediction", name
    with pytest.raises(ValueError, match="unknown scheduler 'dpmpp'"):
        make_scheduler("dpmpp", own)


@pytest.mark.parametrize("backends", [["simulated", "integer"], ["integer"]])
def test_integer_backend_rows_sample_with_their_variants_calibration(tiny, backends):
    tiny["quant"]["backends"] = backends
    plan = Plan.from_config(tiny)
    variants = plan.main_variants
    expected = [row for v in variants for row in ([v] if "simulated" in backends else []) + [f"{v}.int8"]]
    assert plan.main_rows == expected
    assert plan.runs() == Plan.from_config({**tiny, "quant": {**tiny["quant"], "backends": ["simulated"]}}).runs()
    row = f"{variants[-1]}.int8"
    assert plan.label(row) == f"{plan.label(variants[-1])} [int8 kernels]"
    inputs, metrics = plan.generation_inputs(row, "W4A6", "in_domain"), plan.metrics_inputs(row, "W4A6", "in_domain")
    assert inputs["params"] == f"results/calib/{variants[-1]}/W4A6.safetensors"
    assert metrics["cost"] == f"results/calib/{variants[-1]}/W4A6.cost.json"
    assert metrics["images"] == f"results/images/{row}/W4A6/in_domain/manifest.csv"
    assert plan.generation_params(row, "W4A6") == {**plan.generation_params(variants[-1], "W4A6"),
                                                   "backend": "integer"}
    assert "backend" not in plan.generation_params(variants[-1], "W4A6")  # simulated folders stay as they were
    info = plan.run_info(row, "W4A6", "in_domain")
    assert info["backend"] == "integer" and info["knobs"] == plan.knobs(variants[-1], "W4A6")
    assert sum(f"/{row}/" in f for f in plan.main_metrics()) == len(plan.main_bits) * len(plan.eval_sets)
    assert plan.report_baseline == ("perstep" if "simulated" in backends else "perstep.int8")


def test_the_toy_checks_sample_as_the_run_does_unless_told_otherwise(default):
    """The evaluator judges the images the FP folders hold: the default's toy.sample is absent."""
    run = default.config["sampling"]
    assert default.toy_sampling == {"steps": run["steps"], "guidance": run["guidance"], "scheduler": None}
    longer = merged("config/config.yaml", "config/toy_long.yaml")
    assert Plan.from_config(longer).toy_sampling["steps"] == longer["sampling"]["steps"] == 20
    told = copy.deepcopy(default.config)
    told["toy"]["sample"] = {"guidance": 7.5, "scheduler": "euler"}
    assert Plan.from_config(told).toy_sampling == {"steps": run["steps"], "guidance": 7.5, "scheduler": "euler"}
