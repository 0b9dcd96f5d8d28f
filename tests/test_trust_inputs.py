"""Inputs pcr trusts only after checking them (issue 12): every variant's QuantConfig is validated while
the DAG is planned, naming the config key path; prompt files are read as the overlap check reads them;
results are written with the user's umask."""

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from pcr.bench.prompts import PromptSet, check_disjoint, load_prompts, prompts_digest, read_prompt_set
from pcr.io import atomic_dir, atomic_file
from pcr.plan import ConfigProblem, Plan, Regime
from pcr.quant.config import ConfigError, QuantConfig
from pcr.quant.relaxing import RelaxSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny():
    return yaml.safe_load((ROOT / ".test/config/config.yaml").read_text())


def problem(config: dict) -> ConfigProblem:
    with pytest.raises(ConfigProblem) as err:
        Plan.from_config(config)
    return err.value


def with_variant(config: dict, **keys) -> dict:
    config = copy.deepcopy(config)
    config["quant"]["variants"]["myvar"] = {"label": "mine", "method": "progressive", **keys}
    return config


# -- QuantConfig and RelaxSpec check themselves, naming the key ---------------------------------------------
@pytest.mark.parametrize("keys, key, message", [
    ({"relax_interval": (0.9, 0.1)}, "relax_interval", "lo <= hi"),
    ({"relax_interval": ("a", 1.0)}, "relax_interval", "two numbers"),
    ({"relax_ratio": (0.9, 0.1)}, "relax_ratio", "lo <= hi"),
    ({"relax_steps": (1.5,)}, "relax_steps", "UNet-call indices"),
    ({"relax_steps": (True,)}, "relax_steps", "UNet-call indices"),
    ({"act_bits": 6, "relax_bits": 4, "relax_interval": (0.5, 1.0)}, "relax_bits", "below act_bits=6"),
    ({"act_bits": 6, "relax_auto_bits": 5}, "relax_auto_bits", "[act_bits=6, relax_bits=10]"),
    ({"act_bits": 6, "relax_bits": 6, "relax_auto_bits": 6}, "relax_bits", "above act_bits"),
    ({"relax_bits": 20}, "relax_bits", "[2, 16]"),
    ({"weight_bits": True}, "weight_bits", "[2, 16]"),
    ({"guidance_scale": 0}, "guidance_scale", "> 0"),
    ({"guidance_scale": "7.5"}, "guidance_scale", "> 0"),
    ({"keep_fp": "conv_in"}, "keep_fp", "list of fnmatch patterns"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"ptq4dm_mean": 2.0}, "ptq4dm_mean", "[0, 1]"),
    ({"percentile": "high"}, "percentile", "(50, 100]"),
    ({"ema_momentum": 1.0}, "ema_momentum", "[0, 1)"),
    ({"act_symmetric": "yes"}, "act_symmetric", "true or false"),
])
def test_quant_config_names_the_key_of_a_bad_value(keys, key, message):
    with pytest.raises(ConfigError) as err:
        QuantConfig(**keys)
    assert err.value.key == key and message in str(err.value)


def test_unknown_keys_are_named_with_their_key():
    with pytest.raises(ConfigError) as err:
        QuantConfig.from_dict({"relax_step": [1]})
    assert err.value.key == "relax_step" and "known keys" in str(err.value)


def test_relaxed_calls_are_checked_against_the_calls_of_a_run():
    QuantConfig(num_steps=3, relax_steps=(3,)).check_calls(4)  # PNDM: 3 steps make 4 calls
    with pytest.raises(ConfigError) as err:
        QuantConfig(num_steps=3, relax_steps=(7,)).check_calls(3)
    assert err.value.key == "relax_steps" and "outside the 3 UNet calls" in str(err.value)
    with pytest.raises(ConfigError) as err:  # no call's centre lies in [0.95, 1] of 3 calls
        QuantConfig(num_steps=3, relax_interval=(0.95, 1.0), relax_rounding="centre").check_calls(3)
    assert err.value.key == "relax_interval" and "relaxes none of the 3 UNet calls" in str(err.value)
    QuantConfig(num_steps=3, relax_auto_bits=8.5).check_calls(3)  # auto decides at calibration
    with pytest.raises(ConfigError, match="relax_interval must be"):
        RelaxSpec((0.9, 0.1))


def test_relax_spec_from_old_keys_rounds_as_quant_config_does():
    keys = {"relax_ratio": [0.0, 0.2]}
    assert RelaxSpec.from_keys(keys) == QuantConfig(**{"relax_ratio": (0.0, 0.2)}).relax


# -- the plan validates every variant in every regime it runs, naming the key path ---------------------------
def test_relax_steps_outside_the_runs_calls_are_a_planning_problem(tiny):
    err = problem(with_variant(tiny, relax_steps=[7]))
    assert err.key == "quant.variants.myvar.relax_steps"
    assert "outside the 3 UNet calls" in str(err) and "W4A6" in str(err) and "sampling" in str(err)


def test_relax_steps_count_the_calls_of_the_regimes_scheduler(tiny):
    tiny["sampling"]["scheduler"] = "pndm"  # 3 steps, 4 calls
    plan = Plan.from_config(with_variant(tiny, relax_steps=[3]))
    assert plan.knobs("myvar", "W4A6")["relax_where"] == "steps"  # tables read it without the scheduler
    assert problem(with_variant(tiny, relax_steps=[4])).key == "quant.variants.myvar.relax_steps"
    assert Regime(3, 4.0, "heun").unet_calls("toy") == 5 and Regime(3, 4.0).unet_calls("toy") == 3
    assert Regime(50, 7.5).unet_calls("sd:runwayml/stable-diffusion-v1-5") == 51  # SD 1.x ships PNDM


def test_experiment_variants_are_checked_in_each_regime_they_run(tiny):
    tiny["experiment"]["regimes"].append({"steps": 2, "guidance": 4.0})
    tiny["experiment"]["relax"] = {"relax_steps": [2], "relax_bits": 10}  # fits 3 calls, not 2
    err = problem(tiny)
    assert err.key == "experiment.relax.relax_steps" and "s2_g4_own" in str(err)


@pytest.mark.parametrize("keys, key, message", [
    ({"relax_auto_bits": 5}, "quant.variants.myvar.relax_auto_bits", "relax_auto_bits must lie in"),
    ({"relax_interval": [0.9, 0.1]}, "quant.variants.myvar.relax_interval", "lo <= hi"),
    ({"relax_ratio": [0.9, 0.1]}, "quant.variants.myvar.relax_ratio", "lo <= hi"),
    ({"relax_interval": [0.6, 1.0], "relax_bits": 4}, "quant.variants.myvar.relax_bits", "below act_bits=6"),
    ({"relax_step": [1]}, "quant.variants.myvar.relax_step", "unknown"),
    ({"relax_interval": [0.95, 1.0], "relax_rounding": "centre"}, "quant.variants.myvar.relax_interval",
     "relaxes none"),
])
def test_a_variants_bad_key_is_named_by_its_path(tiny, keys, key, message):
    err = problem(with_variant(tiny, **keys))
    assert err.key == key and message in str(err)


def test_the_old_name_relax_ratio_plans_as_quant_config_reads_it(tiny):
    plan = Plan.from_config(with_variant(tiny, relax_ratio=[0.6, 1.0]))
    variant = plan.variants["myvar"]
    assert variant.quant["relax_interval"] == [0.6, 1.0] and variant.quant["relax_rounding"] == "centre"
    config = QuantConfig.from_dict(plan.quant_config("myvar", "W4A6"))
    share = plan.knobs("myvar", "W4A6")["relax_share"]
    assert share == len(config.relaxed_steps(3)) / 3


def test_settings_and_derived_variants_name_where_they_come_from(tiny):
    broken = copy.deepcopy(tiny)
    broken["quant"]["bits"] = ["W4A6", "W4A12"]  # progressive_relax relaxes to 10 bits: below A12
    err = problem(broken)
    assert err.key == "quant.variants.progressive_relax.relax_bits" and "W4A12 (quant.bits)" in str(err)
    broken = copy.deepcopy(tiny)
    broken["ablations"]["relax_bits"]["relax_bits"] = [4]
    assert problem(broken).key == "ablations.relax_bits.relax_bits"
    broken = copy.deepcopy(tiny)
    broken["ablations"]["relax_auto"]["relax_bits"] = 5
    assert problem(broken).key == "ablations.relax_auto.relax_bits"
    broken = copy.deepcopy(tiny)
    broken["experiment"]["relax"] = {"relax_auto_bits": 5}
    assert problem(broken).key == "experiment.relax.relax_auto_bits"
    broken = copy.deepcopy(tiny)
    broken["quant"]["common"]["percentile"] = 40
    assert problem(broken).key == "quant.common.percentile"


@pytest.mark.parametrize("where, bits", [("quant.bits", ["W1A8"]), ("ablations.progressive.bits", ["W4"]),
                                         ("ablations.relax_share.bits", "W4A17"), ("experiment.bits", ["w4a6"])])
def test_bad_bit_settings_are_named(tiny, where, bits):
    section, *rest = where.split(".")
    block = tiny[section]
    for part in rest[:-1]:
        block = block[part]
    block[rest[-1]] = bits
    err = problem(tiny)
    assert err.key == where and "W<weight bits>A<activation bits>" in str(err)


@pytest.mark.parametrize("key, value, message", [
    ("guidance", 0, "> 0"), ("guidance", -1.0, "> 0"), ("guidance", "4", "> 0"), ("steps", 0, ">= 1"),
    ("steps", 2.5, ">= 1"), ("scheduler", "dpmpp", "one of"), ("batch_size", 0, ">= 1"), ("shards", 0, ">= 1"),
    ("height", 7, ">= 8"),
])
def test_sampling_keys_are_checked_at_planning(tiny, key, value, message):
    tiny["sampling"][key] = value
    err = problem(tiny)
    assert err.key == f"sampling.{key}" and message in str(err)


@pytest.mark.parametrize("key, value", [("guidance", 0), ("guidance", [4.0, 0.0]), ("steps", 0),
                                        ("scheduler", ["euler", "dpmpp"])])
def test_experiment_regimes_are_checked_at_planning(tiny, key, value):
    tiny["experiment"]["regimes"][0][key] = value
    assert problem(tiny).key == f"experiment.regimes[0].{key}"


def test_regime_checks_itself():
    with pytest.raises(ValueError, match="guidance must be a number > 0"):
        Regime(3, 0.0)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        Regime(3, 4.0, "dpmpp")


def test_the_calls_table_agrees_with_the_schedulers_pcr_builds():
    from diffusers import DDIMScheduler

    from pcr.pipelines.sampling import count_unet_calls
    from pcr.pipelines.schedulers import SCHEDULERS, make_scheduler

    own = DDIMScheduler(timestep_spacing="trailing").config
    for name in SCHEDULERS:
        for steps in (3, 10):
            assert Regime(steps, 4.0, name).unet_calls("toy") == count_unet_calls(make_scheduler(name, own), steps)
    assert Regime(3, 4.0).unet_calls("toy") == 3  # the toy model samples with DDIM


def test_the_schema_takes_the_old_name_and_refuses_zero_guidance(tiny):
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.validate(with_variant(tiny, relax_ratio=[0.6, 1.0]), schema)
    tiny["sampling"]["guidance"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tiny, schema)


# -- prompts: one normalisation for dedupe and overlap, BOMs stripped, no bare strings ------------------------
def test_dedupe_uses_the_overlap_checks_normalisation(tmp_path):
    (tmp_path / "p.txt").write_text("A Red Circle\na red circle\na  RED circle \na blue square\n")
    prompts = load_prompts(f"txt:{tmp_path / 'p.txt'}")
    assert prompts.prompts == ("A Red Circle", "a blue square")  # the first spelling kept


def test_a_bom_is_not_part_of_the_first_prompt(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\na dog\n", encoding="utf-8-sig")
    assert load_prompts(f"txt:{tmp_path / 'p.txt'}").prompts == ("a cat", "a dog")
    (tmp_path / "sd.csv").write_text("Prompt\na castle\n", encoding="utf-8-sig")
    assert load_prompts(f"sdprompts:{tmp_path / 'sd.csv'}").prompts == ("a castle",)
    (tmp_path / "p.tsv").write_text("Prompt\tCategory\nbond\tAbstract\n", encoding="utf-8-sig")
    assert load_prompts(f"parti:{tmp_path / 'p.tsv'}").prompts == ("bond",)
    coco = {"annotations": [{"image_id": 1, "id": 1, "caption": "a plate"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco), encoding="utf-8-sig")
    assert load_prompts(f"coco:{tmp_path / 'c.json'}").prompts == ("a plate",)
    (tmp_path / "set.json").write_text(json.dumps({"name": "s", "prompts": ["a", "b"]}), encoding="utf-8-sig")
    assert read_prompt_set(tmp_path / "set.json").prompts == ("a", "b")


def test_a_bare_string_is_refused_where_prompts_are_expected():
    with pytest.raises(TypeError, match="a list of prompts"):
        check_disjoint("a red circle", ["a blue square"])
    with pytest.raises(TypeError, match="a list of prompts"):
        check_disjoint(["a red circle"], "a blue square")
    with pytest.raises(TypeError, match="a list of prompts"):
        PromptSet("mine", "a red circle")
    with pytest.raises(TypeError, match="a list of prompts"):
        prompts_digest("a red circle")
    assert PromptSet("mine", ["a", "b"]).prompts == ("a", "b")


# -- results are written with the user's umask --------------------------------------------------------------
@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(mask: int):
        os.umask(mask)

    yield set_umask
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_results_are_written_with_the_users_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    with atomic_file(tmp_path / "r.json") as tmp:
        tmp.write_text("{}")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"0")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "model").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "model" / "w.bin").stat().st_mode & 0o777 == file_mode
    assert os.umask(mask) == mask  # reading the umask left it as it was
