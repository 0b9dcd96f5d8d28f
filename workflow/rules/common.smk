# Config validation, the table of variants (main comparison and ablations), and the target lists.
# Nothing here imports torch (pcr.quant.config is pure Python; pcr.jobs imports torch inside each job), so
# planning the DAG takes a second. Every rule's work is one pcr.jobs function (see its docstring for
# why run: blocks and not scripts).
import hashlib
import json
import os
import re

from snakemake.utils import validate

from pcr import jobs
from pcr.preflight import preflight
from pcr.quant.config import ADAROUND_KEYS, WEIGHT_KEYS, QuantConfig


validate(config, schema="../schemas/config.schema.yaml")


onstart:
    # before the first job of a real run (not a dry run): everything a profile needs that is
    # missing (weights, prompt files, metric networks, CUDA), listed in one error
    preflight(config, devices=workflow.local_exec)

FP, FLOOR, FP_BITS = "fp", "fp-reseeded", "W32A32"  # FP reference images; FP from other seeds (noise floor)
RESEED = 100_000  # the floor's image i has seed  seed + RESEED + i


wildcard_constraints:
    variant=r"[A-Za-z0-9_.+-]+",
    bits=r"W\d+A\d+",
    pset=r"[A-Za-z0-9_-]+",
    wkey=r"[A-Za-z0-9_.-]+",


TOY = config["model"] == "toy"
MODEL_SPEC = "toy:results/toy/model" if TOY else config["model"]
MODEL_INPUT = {"model": "results/toy/model"} if TOY else {}
MODEL_CONFIG = config.get("model_config")  # the components of a single-file checkpoint
SAMPLING = config["sampling"]
CALIB_N = config["prompts"]["calibration"]["n"]
EVAL_SETS = list(config["prompts"]["evaluation"])


class ConfigProblem(ValueError):
    """A config value the schema cannot check (a name that refers to another key)."""


def _fail(key, message):
    raise ConfigProblem(f"config key {key}: {message}")


def parse_bits(bits):
    weight, act = re.fullmatch(r"W(\d+)A(\d+)", bits).groups()
    return int(weight), int(act)


def _canonical(entry):
    return json.dumps({"quant": entry["quant"], "calib_size": entry["calib_size"]}, sort_keys=True)


# -- the variants: name -> {"label", "quant" (QuantConfig keys but bits), "calib_size"} -----------------
VARIANTS = {}
_BY_CONTENT = {}


def add_variant(name, label, quant, calib_size=CALIB_N):
    """Register a variant; one with the same settings as an earlier one is that one (computed once)."""
    entry = {"label": label, "quant": {**config["quant"]["common"], **quant}, "calib_size": calib_size}
    key = _canonical(entry)
    if key in _BY_CONTENT:
        return _BY_CONTENT[key]
    VARIANTS[name] = entry
    _BY_CONTENT[key] = name
    return name


for _name, _v in config["quant"]["variants"].items():
    add_variant(_name, _v["label"], {k: v for k, v in _v.items() if k != "label"})
MAIN_VARIANTS = list(VARIANTS)


def base_variant(key, name):
    if name not in config["quant"]["variants"]:
        _fail(key, f"variant {name!r} is not one of quant.variants ({', '.join(config['quant']['variants'])})")
    return VARIANTS[name]


def relaxed_interval(where, ratio):
    return [0.0, ratio] if where == "first" else [round(1.0 - ratio, 6), 1.0]


def relaxed_count(interval):
    """Relaxed calls of an interval, counted over the steps (the planner does not load the scheduler:
    one that makes more calls than steps, such as PNDM, relaxes the same share of its calls)."""
    steps = SAMPLING["steps"]
    return len(QuantConfig(num_steps=steps, relax_ratio=tuple(interval)).relaxed_steps(steps))


for _name, _set in [("calibration", config["prompts"]["calibration"]), *config["prompts"]["evaluation"].items()]:
    if not TOY and _set["spec"].startswith("toy:"):
        _fail(f"prompts.{'evaluation.' if _name != 'calibration' else ''}{_name}",
              f"the toy prompt set {_set['spec']!r} cannot be sampled with model {config['model']!r}. A profile given "
              "with --configfile is merged into config/config.yaml (the toy default); add --replace-workflow-config "
              "to run it alone")

_NO_RELAX = ("relax_ratio", "relax_steps", "relax_auto_bits")
_RELAX_KEYS = _NO_RELAX + ("relax_bits",)  # dropped for the unrelaxed reference of a sweep
ABL = config["ablations"]
for _s in ABL["prompt_sets"]:
    if _s not in EVAL_SETS:
        _fail("ablations.prompt_sets", f"{_s!r} is not one of prompts.evaluation ({', '.join(EVAL_SETS)})")

# Each ablation: the (variant, bits) pairs it measures.
ABLATIONS = {"progressive": [(v, b) for b in ABL["progressive"]["bits"] for v in ABL["progressive"]["variants"]]}
for _v in ABL["progressive"]["variants"]:
    base_variant("ablations.progressive.variants", _v)

_a = ABL["relax_ratio"]
_base = base_variant("ablations.relax_ratio.variant", _a["variant"])
_plain = {k: v for k, v in _base["quant"].items() if k not in _RELAX_KEYS}
_rbits = {"relax_bits": _a["relax_bits"]} if "relax_bits" in _a else {}
ABLATIONS["relax_ratio"] = [(add_variant(f"{_a['variant']}-norelax", f"{_base['label']}, no relaxing", _plain),
                             _a["bits"])]
for _where in _a["where"]:
    for _r in _a["ratios"]:
        _q = {**_plain, **_rbits, "relax_ratio": relaxed_interval(_where, _r)}
        ABLATIONS["relax_ratio"].append((add_variant(f"{_a['variant']}-relax-{_where}-{_r}",
                                                     f"relax {_where} {_r:.0%}", _q), _a["bits"]))

_a = ABL["relax_bits"]
_base = base_variant("ablations.relax_bits.variant", _a["variant"])
if not any(k in _base["quant"] for k in _NO_RELAX):
    _fail("ablations.relax_bits.variant", f"{_a['variant']!r} relaxes no step; name a variant with relax_ratio, "
                                          "relax_steps or relax_auto_bits")
_plain = {k: v for k, v in _base["quant"].items() if k not in _RELAX_KEYS}
ABLATIONS["relax_bits"] = [(add_variant(f"{_a['variant']}-norelax", f"{_base['label']}, no relaxing", _plain),
                            _a["bits"])]
ABLATIONS["relax_bits"] += [(add_variant(f"{_a['variant']}-rbits-{b}", f"relaxed to {b} bits",
                                         {**_base["quant"], "relax_bits": b}), _a["bits"]) for b in _a["relax_bits"]]

_a = ABL["calib_size"]
_base = base_variant("ablations.calib_size.variant", _a["variant"])
for _n in _a["sizes"]:
    if _n > CALIB_N:
        _fail("ablations.calib_size.sizes", f"{_n} is more than the {CALIB_N} calibration prompts "
                                            "(prompts.calibration.n); raise that or lower the size")
ABLATIONS["calib_size"] = [(add_variant(f"{_a['variant']}-calib-{n}", f"{n} prompts", _base["quant"], n), _a["bits"])
                           for n in _a["sizes"]]

_a = ABL["relax_auto"]
_base = base_variant("ablations.relax_auto.variant", _a["variant"])
_plain = {k: v for k, v in _base["quant"].items() if k not in _RELAX_KEYS}
_rb = _a.get("relax_bits", 10)
_act = parse_bits(_a["bits"])[1]
ABLATIONS["relax_auto"] = [(add_variant(f"{_a['variant']}-norelax", f"{_base['label']}, no relaxing", _plain),
                            _a["bits"])]
for _where in ("first", "last"):
    _q = {**_plain, "relax_bits": _rb, "relax_ratio": relaxed_interval(_where, _a["ratio"])}
    ABLATIONS["relax_auto"].append((add_variant(f"{_a['variant']}-relax-{_where}-{_a['ratio']}",
                                                f"relax {_where} {_a['ratio']:.0%}", _q), _a["bits"]))
# auto relaxing gets the average bits of the fixed intervals (same number of relaxed steps)
_budget = _act + relaxed_count(relaxed_interval("last", _a["ratio"])) / SAMPLING["steps"] * (_rb - _act)
ABLATIONS["relax_auto"].append((add_variant(f"{_a['variant']}-relax-auto-{_a['ratio']}", "relax auto (measured)",
                                            {**_plain, "relax_bits": _rb, "relax_auto_bits": round(_budget, 6)}),
                                _a["bits"]))


def quant_config(variant, bits):
    """The full pcr.quant.QuantConfig dict of a (variant, bit setting)."""
    weight, act = parse_bits(bits)
    return {**VARIANTS[variant]["quant"], "weight_bits": weight, "act_bits": act, "num_steps": SAMPLING["steps"],
            "guidance_scale": SAMPLING["guidance"], "seed": config["seed"], "height": SAMPLING.get("height"),
            "width": SAMPLING.get("width")}


def weight_settings(variant, bits):
    """What the weight step depends on; variants that agree on it share one weight calibration."""
    q = quant_config(variant, bits)
    keys = WEIGHT_KEYS + (ADAROUND_KEYS if q.get("weight_method") == "adaround" else ())
    settings = {k: q[k] for k in keys if k in q and k != "weight_bits"} | {"weight_bits": q["weight_bits"]}
    if q.get("weight_method") == "adaround":  # AdaRound reads the calibration data
        settings["calib_size"] = VARIANTS[variant]["calib_size"]
    return settings


def weight_key(variant, bits):
    settings = weight_settings(variant, bits)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"W{settings['weight_bits']}-{settings.get('weight_method', 'minmax')}-{digest}"


def weight_quant_config(wkey):
    """The QuantConfig dict of a shared weight calibration: its weight settings only (activation
    settings do not touch the weight step, so they are left at their defaults)."""
    settings = {k: v for k, v in weight_settings(*WEIGHTS[wkey]).items() if k != "calib_size"}
    return {**settings, "num_steps": SAMPLING["steps"], "guidance_scale": SAMPLING["guidance"], "seed": config["seed"]}


WEIGHTS = {}  # weight key -> (variant, bits) whose settings it was made with
for _v in VARIANTS:
    for _b in set(config["quant"]["bits"]) | {b for pairs in ABLATIONS.values() for _, b in pairs}:
        WEIGHTS.setdefault(weight_key(_v, _b), (_v, _b))


def knobs(variant, bits):
    """The settings an ablation sweeps, derived from the config (so shared variants agree)."""
    q, n = quant_config(variant, bits), SAMPLING["steps"]
    entry = {"calib_size": VARIANTS[variant]["calib_size"], "observer": q.get("observer")}
    if "relax_auto_bits" in q:
        entry.update(relax_where="auto", relax_ratio=(q["relax_auto_bits"] - q["act_bits"])
                     / (q.get("relax_bits", 10) - q["act_bits"]), relax_bits=q.get("relax_bits", 10))
    elif "relax_ratio" in q or "relax_steps" in q:
        interval = q.get("relax_ratio")
        count = relaxed_count(interval) if interval else len(set(q["relax_steps"]))
        where = "steps" if not interval else "first" if interval[0] == 0 else "last" if interval[1] == 1 else "middle"
        entry.update(relax_where=where, relax_ratio=count / n, relax_bits=q.get("relax_bits", 10))
    else:
        entry.update(relax_where="none", relax_ratio=0.0, relax_bits=q["act_bits"])
    return entry


# -- paths --------------------------------------------------------------------------------------------
def images(variant, bits, pset):
    return f"results/images/{variant}/{bits}/{pset}"


def metrics_file(variant, bits, pset):
    return f"results/metrics/{variant}/{bits}/{pset}.json"


def main_metrics():
    """Metrics files of the main table, in its row order: the FP floor, then variant by bit setting."""
    files = [metrics_file(FLOOR, FP_BITS, s) for s in EVAL_SETS]
    files += [metrics_file(v, b, s) for v in MAIN_VARIANTS for b in config["quant"]["bits"] for s in EVAL_SETS]
    return files


def ablation_metrics(name):
    files = [metrics_file(FLOOR, FP_BITS, s) for s in ABL["prompt_sets"]]
    return files + [metrics_file(v, b, s) for v, b in ABLATIONS[name] for s in ABL["prompt_sets"]]


def figure(stem):
    return [f"{stem}.png", f"{stem}.pdf"]


def get_final_output():
    """What `snakemake all` builds: the main comparison's table and figures (and the toy model's checks)."""
    out = ["results/tables/main.csv", *figure("results/figures/main"), *figure("results/figures/bits")]
    out += [f for s in EVAL_SETS for f in figure(f"results/figures/samples_{s}")]
    if TOY:
        out += ["results/toy/evaluator.json", "results/toy/sample_grid.png"]
    return out


def ablation_output(name):
    out = [f"results/tables/ablation_{name}.csv", *figure(f"results/figures/ablation_{name}")]
    if name == "progressive":
        out += figure(f"results/figures/act_ranges_{ABL['progressive']['bits'][-1]}")
    return out


def model_resources(mem_mb=None):
    """Resources of a job that runs the model (calibration, generation, metrics)."""
    r = config["resources"]
    return {"mem_mb": mem_mb or r["mem_mb"], "runtime": r["runtime"], "gpu": r["gpu"]}


# -- input and params functions of the rules ------------------------------------------------------


def prompt_spec(pset):
    p = config["prompts"]
    return p["calibration"] if pset == "calibration" else p["evaluation"][pset]


def prompt_source(wildcards):
    """The prompt file a real set is read from, so a changed file redraws the set. A missing file is
    left out here: the preflight (onstart) names every missing input at once before the first job,
    where Snakemake would stop at the first one."""
    kind, _, path = prompt_spec(wildcards.pset)["spec"].partition(":")
    inputs = [path] if kind != "toy" and os.path.exists(path) else []
    if wildcards.pset != "calibration":
        inputs.append("results/prompts/calibration.json")  # evaluation sets are checked against it
    return inputs


def generation_inputs(wildcards):
    inputs = {"prompts": f"results/prompts/{wildcards.pset}.json", **MODEL_INPUT}
    if wildcards.variant not in (FP, FLOOR):
        inputs["params"] = f"results/calib/{wildcards.variant}/{wildcards.bits}.safetensors"
    return inputs


def generation_params(wildcards):
    """Everything an image folder depends on; the FP floor samples from other seeds."""
    return {"spec": MODEL_SPEC, "steps": SAMPLING["steps"], "guidance": SAMPLING["guidance"],
            "height": SAMPLING.get("height"), "width": SAMPLING.get("width"), "batch_size": SAMPLING["batch_size"],
            "dtype": config["compute"]["dtype"], "seed": config["seed"] + (RESEED if wildcards.variant == FLOOR else 0)}


def metrics_inputs(wildcards):
    inputs = {
        "images": f"{images(wildcards.variant, wildcards.bits, wildcards.pset)}/manifest.csv",
        "reference": f"{images(FP, FP_BITS, wildcards.pset)}/manifest.csv",
        "prompts": f"results/prompts/{wildcards.pset}.json",
    }
    if wildcards.variant != FLOOR:
        inputs["cost"] = f"results/calib/{wildcards.variant}/{wildcards.bits}.cost.json"
    if TOY:
        inputs["clip"] = "results/toy/clip"
    return inputs


def run_info(wildcards):
    """The run block of a metrics file: what tables and figures group and label it by."""
    spec = prompt_spec(wildcards.pset)["spec"]
    if wildcards.variant == FLOOR:
        return {"variant": FLOOR, "label": "FP (other seeds)", "method": "fp", "bits": "FP", "weight_bits": 32,
                "act_bits": 32, "prompt_set": wildcards.pset, "prompt_spec": spec, "knobs": {}}
    weight, act = parse_bits(wildcards.bits)
    return {"variant": wildcards.variant, "label": VARIANTS[wildcards.variant]["label"],
            "method": VARIANTS[wildcards.variant]["quant"]["method"], "bits": wildcards.bits, "weight_bits": weight,
            "act_bits": act, "prompt_set": wildcards.pset, "prompt_spec": spec,
            "knobs": knobs(wildcards.variant, wildcards.bits)}


def lowest_bits():
    """The main comparison's most aggressive bit setting: its sample grid shows the most difference."""
    return min(config["quant"]["bits"], key=lambda b: sum(parse_bits(b)))
