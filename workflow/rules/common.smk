# Config validation, the plan, wildcard constraints, and the thin functions the rules call. The planning
# itself (variants, ablations, regimes, the experiment, knobs, weight keys) is pcr.plan, pure Python and
# tested without Snakemake (tests/test_plan.py). Nothing here imports torch (pcr.jobs imports it inside
# each job), so planning the DAG takes a second. Every rule's work is one pcr.jobs function (see its
# docstring for why run: blocks and not scripts).
import os

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from pcr import jobs
from pcr.plan import FLOOR, FP, FP_BITS, Plan
from pcr.plan.folders import folder_problem, shard_manifest
from pcr.plan.paths import images, manifest
from pcr.preflight import preflight

if "resources" in config:  # before the schema, whose error would not say where job sizes went
    raise WorkflowError(
        "config key resources: is no longer read; delete it. What a job declares to the executor "
        "(threads, mem_mb, runtime, gpu) lives in Snakemake profiles, so one config runs locally and on a "
        "cluster: workflow/profiles/default (the toy's sizes, read on every run) and --workflow-profile "
        "workflow/profiles/gpu (the real models, one GPU per model job). Other sizes go in a copy of one, "
        "under set-resources."
    )
validate(config, schema="../schemas/config.schema.yaml")
PLAN = Plan.from_config(config)  # a config problem the schema cannot see stops here, naming its key
EXPERIMENT_REGIMES = [r.name for r in PLAN.experiment.regimes] if PLAN.experiment else []


onstart:
    # before the first job of a real run (not a dry run): everything a profile needs that is
    # missing (weights, prompt files, metric networks, CUDA), listed in one error
    preflight(config, devices=workflow.local_exec)


# {bits} is a setting: the bit setting, "@<regime>" outside the default sampling regime (pcr.plan.settings);
# {regime} is an experiment regime's name ("(?!)" matches nothing: without an experiment there is none)
wildcard_constraints:
    variant=r"[A-Za-z0-9_.+-]+",
    bits=PLAN.setting_pattern(),
    pset=r"[A-Za-z0-9_-]+",
    wkey=r"[A-Za-z0-9_.-]+",
    regime="|".join(EXPERIMENT_REGIMES) or "(?!)",
    relax=r"unrelaxed|relaxed",


TOY = PLAN.toy
MODEL_SPEC, MODEL_INPUT, MODEL_CONFIG = PLAN.model_spec, PLAN.model_input, PLAN.model_config
ABLATIONS = PLAN.ablations
MAIN_ROWS = PLAN.main_rows  # the main table's variants, with their integer-backend rows
REPORT_BASELINE = PLAN.report_baseline


def get_final_output():
    return PLAN.final_output()


def ablation_output(name):
    return PLAN.ablation_output(name)


def ablation_metrics(name):
    return PLAN.ablation_metrics(name)


def main_metrics():
    return PLAN.main_metrics()


def lowest_bits():
    return PLAN.lowest_bits()


def experiment_output(regime=None):
    """The experiment target's files (regime: one regime's); asked only when a target needs them."""
    experiment = PLAN.require_experiment()
    return experiment.outputs(experiment.regime(regime) if regime else None)


def experiment_runs(regime=None):
    """(metrics files, their table columns) of the experiment, or of one regime."""
    experiment = PLAN.require_experiment()
    chosen = experiment.regime(regime) if regime else None
    return experiment.metrics_files(chosen), experiment.table_columns(chosen)


# -- input and params functions of the rules ------------------------------------------------------
def prompt_spec(pset):
    return PLAN.prompt_spec(pset)


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
    return PLAN.generation_inputs(wildcards.variant, wildcards.bits, wildcards.pset)


def generation_params(wildcards):
    return PLAN.generation_params(wildcards.variant, wildcards.bits)


def rerun_if_stale(path, inputs=()):
    """`inputs`, after forcing the job that writes the manifest `path` if its folder no longer holds what
    it lists (pcr.plan.folders says why). Snakemake 9 reruns a job whose output is missing only when
    something downstream has to run, and never looks at the images (not outputs); forced, as --forcerun
    <path> would, the job reruns (resuming) and so does everything downstream of it. Called from the
    generation rules' input functions: only folders of this run's DAG, in the main process."""
    if workflow.is_main_process and workflow.dag is not None and path not in workflow.dag.forcefiles:
        problem = folder_problem(path)
        if problem is not None:
            logger.warning(f"pcr: {problem}; generating it again (finished images are kept) before what reads it")
            workflow.dag.forcefiles.add(path)
    return inputs


def metrics_inputs(wildcards):
    return PLAN.metrics_inputs(wildcards.variant, wildcards.bits, wildcards.pset)


def run_info(wildcards):
    return PLAN.run_info(wildcards.variant, wildcards.bits, wildcards.pset)
