"""The experiment's plan (variants, ablations, regimes, the experiment's runs, knobs, files), read from
the workflow config without torch or Snakemake: ``Plan.from_config(config)``. workflow/rules/common.smk
wraps it for the rules; tests/test_plan.py tests it alone."""

from pcr.plan.ablations import ABLATIONS, Ablation
from pcr.plan.experiment import Experiment, ExperimentRun
from pcr.plan.plan import Plan
from pcr.plan.settings import FLOOR, FP, FP_BITS, RESEED, ConfigProblem, Regime, Variant, parse_bits

__all__ = ["ABLATIONS", "FLOOR", "FP", "FP_BITS", "RESEED", "Ablation", "ConfigProblem", "Experiment",
           "ExperimentRun", "Plan", "Regime", "Variant", "parse_bits"]
