"""The experiment's plan, read from the workflow config: the variants (the main comparison's, the
ablations', the experiment's), the sampling regimes, the weight calibrations they share, and for each
run its QuantConfig, its sampling, its table knobs and its files.

Pure Python (no torch, no Snakemake): planning the DAG takes a second, and a unit test reaches every
decision. workflow/rules/common.smk wraps it for the rules. A config problem the schema cannot see
(a name that refers to nothing, a count that does not fit) raises ConfigProblem naming the key's
path here, at planning time, before any job runs: every run's QuantConfig is built and its relaxing
checked against the UNet calls of the regime it runs in, so no job fails on its config.
"""

from __future__ import annotations

import hashlib
import json

from pcr.plan.ablations import ABLATIONS, Ablation
from pcr.plan.experiment import Experiment
from pcr.plan.paths import calib_cost, calib_params, figure, manifest, metrics_file, prompt_file
from pcr.plan.settings import (
    FLOOR,
    FP,
    FP_BITS,
    RESEED,
    ConfigProblem,
    Regime,
    Variant,
    check_bits,
    parse_bits,
    sampling_regime,
)
from pcr.quant.config import ADAROUND_KEYS, BACKENDS, WEIGHT_KEYS, ConfigError, QuantConfig
from pcr.quant.relaxing import upgrade_keys

__all__ = ["KERNEL_ROW", "Plan"]

SIMULATED, INTEGER = BACKENDS
KERNEL_ROW = ".int8"  # suffix of the integer backend's rows (quant.backends); config names cannot hold a dot


class Plan:
    """Everything the workflow runs for one config; ``Plan.from_config(config)``."""

    def __init__(self, config: dict):
        self.config = config
        self.seed = config["seed"]
        self.toy = config["model"] == "toy"
        self.model_spec = "toy:results/toy/model" if self.toy else config["model"]
        self.model_input = {"model": "results/toy/model"} if self.toy else {}
        self.model_config = config.get("model_config")  # the components of a single-file checkpoint
        self.default_regime = sampling_regime(config["sampling"])
        self.regimes = {self.default_regime.name: self.default_regime}
        self.calib_n = config["prompts"]["calibration"]["n"]
        self.eval_sets = list(config["prompts"]["evaluation"])
        self.main_bits = list(check_bits("quant.bits", config["quant"]["bits"]))
        for name in ABLATIONS:
            if name in config["ablations"]:
                check_bits(f"ablations.{name}.bits", config["ablations"][name]["bits"])
        self._check_toy_prompt_sets()
        self.toy_sampling = self._toy_sampling(config)
        self.variants: dict[str, Variant] = {}
        self._by_content: dict[str, str] = {}
        self._config_names: dict[str, str] = {}  # quant.variants entry -> the variant it is (same settings: one)
        for name, entry in config["quant"]["variants"].items():
            quant = {k: v for k, v in entry.items() if k != "label"}
            self._config_names[name] = self.add_variant(name, entry["label"], quant, key=f"quant.variants.{name}",
                                                        base=name)
        self.main_variants = list(self.variants)
        self.backends = list(config["quant"].get("backends", [SIMULATED]))
        # the integer backend's rows, "<variant>.int8", sample with their variant's calibrated parameters
        self.kernel_rows = {f"{v}{KERNEL_ROW}": v for v in self.main_variants} if INTEGER in self.backends else {}
        self.main_rows = [row for v in self.main_variants  # each variant's rows side by side
                          for row, backend in ((v, SIMULATED), (v + KERNEL_ROW, INTEGER)) if backend in self.backends]
        self.ablation_sets = self._ablation_sets()
        self.ablations: dict[str, Ablation] = {name: build(self, f"ablations.{name}", config["ablations"][name])
                                               for name, build in ABLATIONS.items() if name in config["ablations"]}
        self.experiment = Experiment(self, config["experiment"]) if config.get("experiment") else None
        for regime in self.experiment.regimes if self.experiment else ():
            self.regimes.setdefault(regime.name, regime)
        self.report_baseline = self._report_baseline()
        self.weights: dict[str, tuple[str, str]] = {}  # weight key -> the (variant, setting) it is made with
        for (variant, setting), bits_key in self._sourced_runs().items():
            self._check_quant(variant, setting, bits_key)
            self.weights.setdefault(self.weight_key(variant, setting), (variant, setting))

    @classmethod
    def from_config(cls, config: dict) -> Plan:
        return cls(config)

    # -- variants ---------------------------------------------------------------------------------------
    def add_variant(self, name: str, label: str, quant: dict, calib_size: int | None = None, *, key: str,
                    base: str = "") -> str:
        """Register a variant; one with the same settings as an earlier one is that one (computed once)."""
        common = self.config["quant"]["common"]
        sources = self._sources(key, base, common, quant)
        try:
            quant = {**upgrade_keys(common), **upgrade_keys(quant)}  # the old name relax_ratio, as QuantConfig reads it
        except ConfigError as err:
            raise ConfigProblem(sources.get(err.key, key), str(err)) from None
        calib_size = self.calib_n if calib_size is None else calib_size
        content = json.dumps({"quant": quant, "calib_size": calib_size}, sort_keys=True)
        if content in self._by_content:
            return self._by_content[content]
        try:
            self.variants[name] = Variant(name, label, quant, calib_size, key, base or name, sources)
        except ConfigError as err:
            raise ConfigProblem(sources.get(err.key, key), f"variant {name!r}: {err}") from None
        self._by_content[content] = name
        return name

    def _sources(self, key: str, base: str, common: dict, quant: dict) -> dict:
        """Where each QuantConfig key of a variant is set, for errors: quant.common, its quant.variants entry,
        the block that derives it (an ablation's, experiment.relax), or unchanged, the variant it derives from."""
        parent = self.variants.get(self._config_names.get(base, "")) if key != f"quant.variants.{base}" else None
        block = self._block(key)
        out = {}
        for prefix, keys in (("quant.common", common), (key, quant)):
            for k, value in keys.items():
                if prefix == key and parent is not None and k in parent.quant and parent.quant[k] == value:
                    out[k] = parent.source(k)
                else:
                    out[k] = f"{prefix}.{k}" if prefix != key or parent is None or k in block else key
            if "relax_ratio" in keys:  # the old name: what it sets is named by it
                out["relax_interval"] = out["relax_ratio"]
                out.setdefault("relax_rounding", out["relax_ratio"])
        return out

    def _block(self, key: str) -> dict:
        """The config block at dotted path ``key`` ({} when there is none)."""
        block = self.config
        for part in key.split("."):
            block = block.get(part) if isinstance(block, dict) else None
        return block if isinstance(block, dict) else {}

    def base_variant(self, key: str, name: str) -> Variant:
        """The planned variant of quant.variants entry ``name``; ``key`` is the config key that names it."""
        if name not in self._config_names:
            raise ConfigProblem(key, f"variant {name!r} is not one of quant.variants "
                                     f"({', '.join(self.config['quant']['variants'])})")
        return self.variants[self._config_names[name]]

    def runs(self) -> list[tuple[str, str]]:
        """Every (variant, setting) calibrated: the main comparison's, the ablations', the experiment's."""
        return list(self._sourced_runs())

    def _sourced_runs(self) -> dict[tuple[str, str], str]:
        """Every (variant, setting) calibrated -> the config key whose bit settings first ask for it."""
        out = {(v, b): "quant.bits" for v in self.main_variants for b in self.main_bits}
        for name, ablation in self.ablations.items():
            for run in ablation.runs:
                out.setdefault(run, f"ablations.{name}.bits")
        for run in self.experiment.runs() if self.experiment else ():
            if run.variant != FLOOR:
                out.setdefault((run.variant, run.setting), "experiment.bits")
        return out

    def label(self, variant: str) -> str:
        if variant in self.kernel_rows:
            return f"{self.variants[self.kernel_rows[variant]].label} [int8 kernels]"
        return self.variants[variant].label

    def calibrated(self, variant: str) -> str:
        """The variant whose calibration a row samples with: itself, or an integer-backend row's variant."""
        return self.kernel_rows.get(variant, variant)

    def calib_size(self, variant: str) -> int:
        return self.variants[self.calibrated(variant)].calib_size

    # -- settings: bits, and the regime they are sampled in ------------------------------------------------
    def setting(self, bits: str, regime: Regime | None = None) -> str:
        """``bits`` in ``regime``: "W4A6" in the default regime (config key sampling), else "W4A6@<regime>"."""
        regime = regime or self.default_regime
        return bits if regime == self.default_regime else f"{bits}@{regime.name}"

    def split(self, setting: str) -> tuple[str, Regime]:
        """(bits, regime) of a setting."""
        bits, _, name = setting.partition("@")
        if name and name not in self.regimes:
            raise ValueError(f"setting {setting!r} names no planned regime; the regimes are {sorted(self.regimes)}")
        return bits, self.regimes[name] if name else self.default_regime

    def setting_pattern(self) -> str:
        """A regular expression of every setting: the bits wildcard's constraint."""
        others = sorted(name for name, regime in self.regimes.items() if regime != self.default_regime)
        return r"W\d+A\d+" + (f"(?:@(?:{'|'.join(others)}))?" if others else "")

    def scheduler(self, setting: str) -> str | None:
        return self.split(setting)[1].scheduler

    # -- what a run is ------------------------------------------------------------------------------------
    def quant_config(self, variant: str, setting: str) -> dict:
        """The full pcr.quant.QuantConfig dict of a (variant, setting): bits and the regime's sampling added."""
        bits, regime = self.split(setting)
        weight, act = parse_bits(bits)
        sampling = self.config["sampling"]
        return {**self.variants[self.calibrated(variant)].quant, "weight_bits": weight, "act_bits": act,
                "num_steps": regime.steps, "guidance_scale": regime.guidance, "seed": self.seed,
                "height": sampling.get("height"), "width": sampling.get("width")}

    def _check_quant(self, variant: str, setting: str, bits_key: str) -> None:
        """Build the run's QuantConfig and check its relaxing against the calls of its regime; a problem
        names the config key that set the bad value."""
        bits, regime = self.split(setting)
        model = self.config["model"]
        if regime == self.default_regime:
            where = f"sampling: {regime.describe(model)}"
        else:
            where = f"experiment regime {regime.name} (experiment.regimes): {regime.describe(model)}"
        try:
            QuantConfig.from_dict(self.quant_config(variant, setting)).check_calls(regime.unet_calls(model))
        except ConfigError as err:
            run_keys = {"weight_bits": bits_key, "act_bits": bits_key, "height": "sampling.height",
                        "width": "sampling.width", "seed": "seed"}
            key = run_keys.get(err.key) or self.variants[variant].source(err.key)
            raise ConfigProblem(key, f"variant {variant!r} at {bits} ({bits_key}), {where}: {err}") from None

    def knobs(self, variant: str, setting: str) -> dict:
        """The settings an ablation sweeps, derived from the config (so shared variants agree)."""
        q, v = self.quant_config(variant, setting), self.variants[self.calibrated(variant)]
        return {"calib_size": v.calib_size, "observer": q.get("observer"),
                **v.relax.knobs(q["act_bits"], self.split(setting)[1].steps)}

    def generation_params(self, variant: str, setting: str) -> dict:
        """Everything an image folder depends on; the FP floor samples from other seeds."""
        regime, sampling = self.split(setting)[1], self.config["sampling"]
        params = {"spec": self.model_spec, "steps": regime.steps, "guidance": regime.guidance,
                  "height": sampling.get("height"), "width": sampling.get("width"),
                  "batch_size": sampling["batch_size"], "dtype": self.config["compute"]["dtype"],
                  "seed": self.seed + (RESEED if variant == FLOOR else 0)}
        if regime.scheduler is not None:  # absent for the checkpoint's own: folders of before stay valid
            params["scheduler"] = regime.scheduler
        if variant in self.kernel_rows:  # likewise absent for the simulated backend
            params["backend"] = INTEGER
        return params

    def run_info(self, variant: str, setting: str, pset: str) -> dict:
        """The run block of a metrics file: what tables and figures group and label it by."""
        bits, regime = self.split(setting)
        spec = self.prompt_spec(pset)["spec"]
        if variant == FLOOR:
            info = {"variant": FLOOR, "label": "FP (other seeds)", "method": "fp", "bits": "FP", "weight_bits": 32,
                    "act_bits": 32, "prompt_set": pset, "prompt_spec": spec, "knobs": {}}
        else:
            weight, act = parse_bits(bits)
            info = {"variant": variant, "label": self.label(variant),
                    "method": self.variants[self.calibrated(variant)].method, "bits": bits, "weight_bits": weight,
                    "act_bits": act, "prompt_set": pset, "prompt_spec": spec, "knobs": self.knobs(variant, setting)}
            if variant in self.kernel_rows:
                info["backend"] = INTEGER
        if regime != self.default_regime:
            info["regime"] = regime.columns()
        return info

    # -- shared weight calibrations --------------------------------------------------------------------------
    def weight_settings(self, variant: str, setting: str) -> dict:
        """What the weight step depends on; variants that agree on it share one weight calibration."""
        q = self.quant_config(variant, setting)
        adaround = q.get("weight_method") == "adaround"
        keys = WEIGHT_KEYS + (ADAROUND_KEYS if adaround else ())
        settings = {k: q[k] for k in keys if k in q and k != "weight_bits"} | {"weight_bits": q["weight_bits"]}
        if adaround:  # AdaRound samples the calibration prompts' FP trajectories
            settings["calib_size"] = self.variants[variant].calib_size
            if self.scheduler(setting) is not None:
                settings["scheduler"] = self.scheduler(setting)
        return settings

    def weight_key(self, variant: str, setting: str) -> str:
        settings = self.weight_settings(variant, setting)
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        return f"W{settings['weight_bits']}-{settings.get('weight_method', 'minmax')}-{digest}"

    def weight_job(self, wkey: str) -> dict:
        """A shared weight calibration's QuantConfig dict (weight settings only: activation settings do not
        touch the weight step), its calibration prompts (0: none read) and its scheduler."""
        variant, setting = self.weights[wkey]
        settings = self.weight_settings(variant, setting)
        regime = self.split(setting)[1]
        quant = {k: v for k, v in settings.items() if k not in ("calib_size", "scheduler")}
        return {"quant": {**quant, "num_steps": regime.steps, "guidance_scale": regime.guidance, "seed": self.seed},
                "calib_size": settings.get("calib_size", 0), "scheduler": settings.get("scheduler")}

    # -- rule inputs -----------------------------------------------------------------------------------------
    def prompt_spec(self, pset: str) -> dict:
        prompts = self.config["prompts"]
        return prompts["calibration"] if pset == "calibration" else prompts["evaluation"][pset]

    def generation_inputs(self, variant: str, setting: str, pset: str) -> dict:
        inputs = {"prompts": prompt_file(pset), **self.model_input}
        if variant not in (FP, FLOOR):
            inputs["params"] = calib_params(self.calibrated(variant), setting)
        return inputs

    def metrics_inputs(self, variant: str, setting: str, pset: str) -> dict:
        """A folder's manifest, its regime's FP reference and the prompts (and cost, toy CLIP)."""
        reference = self.setting(FP_BITS, self.split(setting)[1])
        inputs = {"images": manifest(variant, setting, pset), "reference": manifest(FP, reference, pset),
                  "prompts": prompt_file(pset)}
        if variant != FLOOR:
            inputs["cost"] = calib_cost(self.calibrated(variant), setting)
        if self.toy:
            inputs["clip"] = "results/toy/clip"
        return inputs

    # -- targets ---------------------------------------------------------------------------------------------
    def main_metrics(self) -> list[str]:
        """Metrics files of the main table, in its row order: the FP floor, then variant by bit setting."""
        files = [metrics_file(FLOOR, FP_BITS, s) for s in self.eval_sets]
        runs = [(v, b) for v in self.main_rows for b in self.main_bits]
        return files + [metrics_file(v, b, s) for v, b in runs for s in self.eval_sets]

    def final_output(self) -> list[str]:
        """What `snakemake all` builds: the main comparison's table and figures (and the toy model's checks)."""
        out = ["results/tables/main.csv", *figure("results/figures/main"), *figure("results/figures/bits")]
        out += [f for s in self.eval_sets for f in figure(f"results/figures/samples_{s}")]
        if self.toy:
            out += ["results/toy/evaluator.json", "results/toy/sample_grid.png"]
        return out

    def lowest_bits(self) -> str:
        """The main comparison's most aggressive bit setting: its sample grid shows the most difference."""
        return min(self.main_bits, key=lambda b: sum(parse_bits(b)))

    def ablation_metrics(self, name: str) -> list[str]:
        files = [metrics_file(FLOOR, FP_BITS, s) for s in self.ablation_sets]
        return files + [metrics_file(v, b, s) for v, b in self.ablations[name].runs for s in self.ablation_sets]

    def ablation_output(self, name: str) -> list[str]:
        out = [f"results/tables/ablation_{name}.csv", *figure(f"results/figures/ablation_{name}")]
        for *_, bits in self.ablations[name].act_ranges:
            out += figure(f"results/figures/act_ranges_{bits}")
        return out

    def act_range_variants(self, bits: str) -> tuple[str, str]:
        """(FP-trajectory, quantized-trajectory) variants whose ranges results/tables/act_ranges_<bits>.csv holds."""
        for ablation in self.ablations.values():
            for fp_trajectory, quantized_trajectory, at in ablation.act_ranges:
                if at == bits:
                    return fp_trajectory, quantized_trajectory
        raise ValueError(f"no ablation draws the activation ranges at {bits}")

    def require_experiment(self) -> Experiment:
        if self.experiment is None:
            raise ConfigProblem("experiment", "the config has no experiment section; run the experiment with "
                                              "--configfile config/toy_long.yaml config/experiment.yaml (or give one)")
        return self.experiment

    # -- checks of names the schema cannot resolve -----------------------------------------------------------------
    @staticmethod
    def _toy_sampling(config: dict) -> dict | None:
        """How the toy model's own checks sample it: config toy.sample, or by default as every model of the
        run is sampled, so the evaluator judges the images the benchmark's FP folders hold."""
        if config["model"] != "toy":
            return None
        sampling = config["sampling"]
        own = config["toy"].get("sample") or {}
        return {"steps": own.get("steps", sampling["steps"]), "guidance": own.get("guidance", sampling["guidance"]),
                "scheduler": own.get("scheduler", sampling.get("scheduler"))}

    def _check_toy_prompt_sets(self) -> None:
        prompts = self.config["prompts"]
        for name, spec in [("calibration", prompts["calibration"]), *prompts["evaluation"].items()]:
            if not self.toy and spec["spec"].startswith("toy:"):
                key = "prompts.calibration" if name == "calibration" else f"prompts.evaluation.{name}"
                raise ConfigProblem(key, f"the toy prompt set {spec['spec']!r} cannot be sampled with model "
                                         f"{self.config['model']!r}. A profile given with --configfile is merged into "
                                         "config/config.yaml (the toy default); add --replace-workflow-config to "
                                         "run it alone")

    def _ablation_sets(self) -> list[str]:
        for name in self.config["ablations"]["prompt_sets"]:
            if name not in self.eval_sets:
                raise ConfigProblem("ablations.prompt_sets", f"{name!r} is not one of prompts.evaluation "
                                                             f"({', '.join(self.eval_sets)})")
        return list(self.config["ablations"]["prompt_sets"])

    def _report_baseline(self) -> str:
        """The main figure's baseline: report.baseline (a variant or its label), else perstep, else the first;
        its integer-backend row where the simulated backend is not run."""
        baseline = (self.config.get("report") or {}).get("baseline") or (
            "perstep" if "perstep" in self.main_variants else self.main_variants[0])
        if baseline not in self.main_variants + [self.label(v) for v in self.main_variants]:
            raise ConfigProblem("report.baseline", f"{baseline!r} is neither a variant of quant.variants "
                                                   f"({', '.join(self.main_variants)}) nor the label of one")
        if SIMULATED in self.backends:
            return baseline
        variant = baseline if baseline in self.main_variants else next(
            v for v in self.main_variants if self.label(v) == baseline)
        return f"{variant}{KERNEL_ROW}"
