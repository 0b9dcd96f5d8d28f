"""The workflow's jobs: one function per Snakemake rule, called from the rule's one-line ``run:`` block.

Why functions and not scripts: a ``script:`` job starts a new Python that imports torch and
diffusers again, about 5 s per job, which was most of a toy job's time. pcr's default Snakemake
profile (workflow/profiles/default) runs ``run:`` jobs in threads of the Snakemake process, so the
imports are paid once per run. The same functions run unchanged where Snakemake spawns a process
per job (a cluster executor, ``--workflow-profile none``).

Each job writes its outputs atomically and its progress bars, warnings and errors to its own log
(``pcr.runtime.job_log``), and reads only plain arguments, so it can be called without Snakemake.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import traceback
from pathlib import Path

from pcr.io import atomic_file
from pcr.runtime import MODEL_BUILD_LOCK, job_log, use_available_cpus

__all__ = ["act_ranges", "calibrate", "calibrate_weights", "collect_shards", "delta_table", "evaluate_toy",
           "experiment_deltas", "experiment_figure", "experiment_table", "figure", "generate", "metrics", "prompts",
           "run_time_table", "sample_grid", "table", "toy_sample_grid", "train_toy_clip", "train_toy_model"]


_IMPORT_LOCK = threading.Lock()
# diffusers names its classes lazily: their first lookups, made by two jobs starting together in threads,
# can race and fail ("cannot import name 'StableDiffusionPipeline'"), so the first job makes them alone
DIFFUSERS_NAMES = ("DiffusionPipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline", "ImagePipelineOutput",
                   "UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler")


@functools.cache
def _import_diffusers() -> None:
    import diffusers

    from pcr.pipelines.schedulers import SCHEDULERS

    for name in DIFFUSERS_NAMES + tuple(class_name for class_name, _ in SCHEDULERS.values()):
        getattr(diffusers, name)


def job(fn):
    """The job's stderr (progress bars, warnings, its traceback) goes to ``log``; torch gets the CPUs
    for the job and the caller's thread count back after it."""

    @functools.wraps(fn)
    def run(log: str, *args, **kwargs):
        import torch

        with _IMPORT_LOCK:
            _import_diffusers()
        threads = torch.get_num_threads()
        with job_log(log):
            use_available_cpus()
            try:
                return fn(*args, **kwargs)
            except BaseException:
                traceback.print_exc()
                raise
            finally:
                torch.set_num_threads(threads)

    return run


def _write_json(path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


_PIPELINES: dict = {}  # (spec, device, dtype, model_config) -> [lock, stamp, pipeline]
_PIPELINES_LOCK = threading.Lock()


def _stamp(spec: str) -> int | None:
    """The model folder's or file's modification time: a retrained or replaced model is loaded again."""
    path = spec.partition(":")[2]
    return os.stat(path).st_mtime_ns if path and os.path.exists(path) else None


@contextlib.contextmanager
def _pipeline(compute: dict, spec: str, model_config: str | None = None):
    """The job's pipeline, loaded once per process and lent to one job at a time: loading took longer
    than a toy job's work (a real checkpoint takes seconds to minutes). Jobs quantize it; it is
    handed back unquantized (pcr's layer swaps never touch the float weights), or dropped on error or
    when the integer backend released its float weights."""
    from pcr.pipelines import load_pipeline
    from pcr.quant import is_quantized, unquantize_unet
    from pcr.quant.freeze import is_frozen

    key, stamp = (spec, compute["device"], compute["dtype"], model_config), _stamp(spec)
    with _PIPELINES_LOCK:
        entry = _PIPELINES.setdefault(key, [threading.Lock(), None, None])
    with entry[0]:
        if entry[2] is None or entry[1] != stamp:
            entry[2] = None  # let a stale copy go before its successor is loaded
            entry[2] = load_pipeline(spec, device=compute["device"], dtype=compute["dtype"],
                                     single_file_config=model_config)
            entry[1] = stamp
        try:
            yield entry[2]
        except BaseException:
            entry[2] = None
            raise
        if any(is_frozen(m) for m in entry[2].unet.modules()):  # pcr.quantize(..., backend="integer")
            entry[2] = None
        elif is_quantized(entry[2].unet):
            unquantize_unet(entry[2].unet)


# -- prompts and the toy world ------------------------------------------------------------------
@job
def prompts(spec: str, n: int, seed: int, calibration: str | None, out: str) -> None:
    """Draw a prompt set; an evaluation set must share no prompt with the calibration set."""
    from pcr.bench.prompts import check_disjoint, load_prompts, read_prompt_set, write_prompt_set

    drawn = load_prompts(spec, n=n, seed=seed)
    if calibration:
        check_disjoint(read_prompt_set(calibration), drawn)
    write_prompt_set(out, drawn)


@job
def train_toy_clip(out: str, cfg: dict, seed: int, res: int, p_two: float) -> None:
    from pcr.toy.clip import train_toy_clip as train

    with MODEL_BUILD_LOCK:  # it builds modules (and seeds torch's global RNG): no load beside it
        train(out, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed, res=res, p_two=p_two)


@job
def train_toy_model(clip: str, out: str, cfg: dict, seed: int, res: int, p_two: float) -> None:
    from pcr.toy.model import train_toy_model as train

    with MODEL_BUILD_LOCK:
        train(clip, out, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed, res=res,
              p_two=p_two, high_noise_bias=cfg["high_noise_bias"], attention_16=cfg["attention_16"])


@job
def evaluate_toy(model: str, clip: str, out: str, sample: dict, n: int, seed: int, p_two: float) -> None:
    """The toy models' checks; ``sample``: steps, guidance and scheduler (a short name; None: the model's own)."""
    from pcr.pipelines import load_pipeline
    from pcr.pipelines.schedulers import use_scheduler
    from pcr.tokenizer import clip_tokenizer
    from pcr.toy.clip import load_toy_clip
    from pcr.toy.evaluate import evaluate_toy_models

    toy_clip, _ = load_toy_clip(clip)
    pipe = load_pipeline(f"toy:{model}")
    with use_scheduler(pipe, sample.get("scheduler")):
        result = evaluate_toy_models(pipe, toy_clip, clip_tokenizer(), n=n, seed=seed, p_two=p_two,
                                     steps=sample["steps"], guidance=sample["guidance"])
    _write_json(out, result)


@job
def toy_sample_grid(model: str, grid: str, prompt_list: str, sample: dict, rows: int, cols: int, seed: int,
                    p_two: float) -> None:
    from pcr.pipelines import load_pipeline
    from pcr.pipelines.schedulers import use_scheduler
    from pcr.toy.evaluate import sample_grid as draw
    from pcr.toy.world import toy_prompts

    chosen = toy_prompts("eval_in", rows, seed, p_two)
    pipe = load_pipeline(f"toy:{model}")
    with use_scheduler(pipe, sample.get("scheduler")):
        image = draw(pipe, chosen, seeds=cols, seed=seed, steps=sample["steps"], guidance=sample["guidance"])
    with atomic_file(grid) as tmp:
        image.save(tmp, format="PNG")
    with atomic_file(prompt_list) as tmp:
        tmp.write_text("".join(f"{i}\t{q.text}\n" for i, q in enumerate(chosen)))


# -- calibration ------------------------------------------------------------------------------------
@job
def calibrate_weights(spec: str, model_config: str | None, prompt_file: str, calib_size: int, quant: dict,
                      compute: dict, out: str, scheduler: str | None = None) -> None:
    """The weight step, shared by every variant with the same weight settings. ``scheduler`` (a short
    name, None: the checkpoint's own) matters to AdaRound only, which samples FP trajectories."""
    from pcr.bench import read_prompt_set
    from pcr.calibrate import calibrate_weights_only
    from pcr.pipelines.schedulers import use_scheduler
    from pcr.quant import save_params

    chosen = read_prompt_set(prompt_file, calib_size or None)
    with _pipeline(compute, spec, model_config) as pipe, use_scheduler(pipe, scheduler):
        save_params(out, calibrate_weights_only(pipe, list(chosen), quant, model=spec))


@job
def calibrate(spec: str, model_config: str | None, prompt_file: str, weights: str, calib_size: int, quant: dict,
              compute: dict, out: str, cost: str, scheduler: str | None = None) -> None:
    """One variant's activation calibration on the shared weights, and its cost report, sampled with
    ``scheduler`` (a short name of pcr.pipelines.schedulers; None: the checkpoint's own). The saved
    parameters record its class and timesteps, so generation with another scheduler is refused."""
    from pcr.bench import cost_report, read_prompt_set
    from pcr.calibrate import calibrate as run
    from pcr.pipelines.schedulers import use_scheduler
    from pcr.quant import load_params, save_params

    chosen = read_prompt_set(prompt_file, calib_size)
    with _pipeline(compute, spec, model_config) as pipe, use_scheduler(pipe, scheduler):
        params = run(pipe, list(chosen), quant, model=spec, weights=load_params(weights))
        report = cost_report(pipe.unet, params.config, params.act_bits)
    params.info["prompt_set"] = chosen.name
    save_params(out, params)
    _write_json(cost, report)


@job
def act_ranges(fp_trajectory: str, quantized_trajectory: str, out: str) -> None:
    import pandas as pd

    from pcr.quant import load_params
    from pcr.quant.params import trajectory_ranges

    rows = trajectory_ranges(load_params(fp_trajectory), load_params(quantized_trajectory))
    with atomic_file(out) as tmp:
        pd.DataFrame(rows, columns=["layer", "step", "trajectory", "lo", "hi"]).to_csv(tmp, index=False)


# -- images and metrics -----------------------------------------------------------------------------
@job
def generate(sampling: dict, model_config: str | None, prompt_file: str, params: str | None, shard: tuple,
             compute: dict, manifest: str) -> None:
    """One image folder (or one shard of it), FP when ``params`` is None, sampled with
    ``sampling["scheduler"]`` where given (a short name; absent: the checkpoint's own) and on
    ``sampling["backend"]`` (absent: simulated). What the sampling took is written beside the manifest
    (``runtime_file``) for the cost report."""
    import torch

    import pcr
    from pcr.bench import generate as run
    from pcr.bench import read_prompt_set
    from pcr.pipelines.schedulers import use_scheduler
    from pcr.quant import load_params, weight_bytes

    chosen = read_prompt_set(prompt_file)
    scheduler, backend = sampling.get("scheduler"), sampling.get("backend", "simulated")
    info = {"model": sampling["spec"], "prompt_set": chosen.name, "quant_config_hash": None}
    if scheduler is not None:  # absent for the checkpoint's own: folders of before stay valid
        info["scheduler"] = scheduler
    timing: dict = {}
    with (_pipeline({**compute, "dtype": sampling["dtype"]}, sampling["spec"], model_config) as pipe,
          use_scheduler(pipe, scheduler)):
        fp_bytes = weight_bytes(pipe.unet)
        if params is not None:
            loaded = load_params(params)
            info.update(quant_config_hash=loaded.config.digest(),
                        params_sha256=loaded.digest()[:16])
            pcr.quantize(pipe, loaded, backend=backend)
        run(pipe, list(chosen), Path(manifest).parent, seed=sampling["seed"], batch_size=sampling["batch_size"],
            shard=tuple(shard), num_inference_steps=sampling["steps"], guidance_scale=sampling["guidance"],
            height=sampling["height"], width=sampling["width"], info=info, replace_stale=True, timing=timing)
        if timing:  # a resumed folder with nothing left to sample keeps its earlier record
            paths = dict(getattr(pipe.unet, "pcr_kernel_paths", None) or {})
            _write_json(runtime_file(manifest), {
                "backend": backend if params is not None else "fp", "images": timing["images"],
                "seconds_per_image": timing["seconds"] / timing["images"], "threads": torch.get_num_threads(),
                "device": str(pipe.device), "unet_weight_mb": weight_bytes(pipe.unet) / 2**20,
                "unet_weight_mb_fp": fp_bytes / 2**20, "kernel_paths": paths})


def runtime_file(manifest: str | Path) -> Path:
    """Where a generation job records its sampling time and the UNet's weight memory: runtime.json beside
    manifest.csv (runtime.shard-k-of-n.json beside a shard's manifest)."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name.replace("manifest", "runtime", 1)).with_suffix(".json")


@job
def collect_shards(manifests: list[str], out: str) -> None:
    from pcr.bench.generation import collect_shards as collect

    collect([Path(f).parent for f in manifests], Path(out).parent)


@job
def metrics(compute: dict, out: str, *, images: str, reference: str, prompts: str, settings: dict, seed: int,
            paired: bool, run_info: dict, cost: str | None = None, clip: str | None = None) -> None:
    """QDiffBench metrics of one folder (``images``: its manifest) against the FP folder, with its cost
    and run labels; ``clip`` is the toy CLIP folder in the toy world. Keywords: the rule's input and params."""
    from pcr.bench import MetricsConfig, evaluate, read_prompt_set, write_metrics
    from pcr.runtime import resolve_device

    settings = {"device": resolve_device(compute["device"]), **settings, "seed": seed}
    # the toy world: its CLIP is the feature network and the CLIP scorer
    config = MetricsConfig.toy(clip, **settings) if clip else MetricsConfig.from_dict(settings)
    result = evaluate(Path(images).parent, Path(reference).parent, read_prompt_set(prompts), config, paired=paired)
    spent = json.loads(Path(cost).read_text()) if cost else {
        "weight_bits": 32, "avg_act_bits": 32.0, "bitops_ratio": 1.0, "note": "full precision"}
    spent["measured"] = measured_cost(images, reference)
    write_metrics(out, {**result, "cost": spent, "run": run_info})


def measured_cost(images: str, reference: str) -> dict:
    """What the generation jobs of a folder and of its FP reference measured (their runtime files): seconds
    per image, the UNet's weight memory, the kernel paths, and the ratios to FP; {} where either is
    missing (a sharded folder, or one sampled before pcr recorded it). Both were timed in their own jobs,
    so the ratio is only as fair as the load the two jobs ran under."""
    files = [runtime_file(images), runtime_file(reference)]
    if not all(f.is_file() for f in files):
        return {}
    run, fp = (json.loads(f.read_text()) for f in files)
    return {**run, "seconds_per_image_fp": fp["seconds_per_image"],
            "speedup_vs_fp": fp["seconds_per_image"] / run["seconds_per_image"],
            "unet_weight_ratio": run["unet_weight_mb"] / run["unet_weight_mb_fp"]}


# -- tables and figures -------------------------------------------------------------------------------
@job
def table(metrics_files: list[str], csv: str, markdown: str) -> None:
    from pcr.report import metrics_table, write_table

    write_table(metrics_table(list(metrics_files)), csv, markdown)


@job
def run_time_table(bench_dir: str, csv: str, markdown: str) -> None:
    from pcr.report.timing import write_run_time_table

    write_run_time_table(bench_dir, csv, markdown)


@job
def delta_table(metrics_files: list[str], baseline: str, csv: str, markdown: str) -> None:
    from pcr.report import write_delta_table

    write_delta_table(list(metrics_files), baseline, csv, markdown)


@job
def figure(kind: str, source: str, png: str) -> None:
    from pcr.report import draw_figure

    draw_figure(kind, source, Path(png).with_suffix(""))


@job
def sample_grid(reference: str, images: list[str], prompt_file: str, labels: list[str], rows: int, png: str) -> None:
    """The same prompts and seeds across methods: FP first, then each variant's folder."""
    from pcr.report import sample_grid as draw

    folders = [Path(reference).parent] + [Path(f).parent for f in images]
    texts = json.loads(Path(prompt_file).read_text(encoding="utf-8"))["prompts"]
    draw(dict(zip(labels, folders, strict=True)), Path(png).with_suffix(""), list(range(min(rows, len(texts)))),
         prompts=texts)


# -- the experiment: runs across sampling regimes ----------------------------------------------------
# Columns each metrics file's row gets from the plan (pcr.plan.ExperimentRun.columns), before
# pcr.report.metrics_table's: regime, steps, guidance, scheduler, base_variant (the method of
# experiment.methods; metrics_table's `method` is its activation calibration method) and relax.
RUN_COLUMNS = ["regime", "steps", "guidance", "scheduler", "base_variant", "relax"]


def _run_columns(metrics_files: list[str], columns: list[dict]):
    import pandas as pd

    if len(columns) != len(metrics_files):
        raise ValueError(f"{len(columns)} column rows for {len(metrics_files)} metrics files; give one per file")
    return pd.DataFrame([{k: c[k] for k in RUN_COLUMNS} for c in columns]).assign(
        source=[str(f) for f in metrics_files])


@job
def experiment_table(metrics_files: list[str], columns: list[dict], csv: str, markdown: str) -> None:
    """Every run of the experiment: its regime and relaxing columns, then metrics_table's."""
    from pcr.report import metrics_table, write_table

    runs = _run_columns(metrics_files, columns)
    table = metrics_table(list(metrics_files))
    write_table(runs.drop(columns="source").join(table), csv, markdown)


@job
def experiment_deltas(metrics_files: list[str], columns: list[dict], csv: str, markdown: str) -> None:
    """Paired deltas against the baseline of each run's regime and relaxing (its columns' "baseline"):
    one pcr.report.delta_table per (regime, baseline), the regime and relaxing columns first."""
    import pandas as pd

    from pcr.report import delta_table, write_table

    runs = _run_columns(metrics_files, columns)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(columns):
        groups.setdefault((c["regime"], c["baseline"]), []).append(i)
    parts = [delta_table([metrics_files[i] for i in rows], baseline) for (_, baseline), rows in groups.items()]
    deltas = pd.concat(parts, ignore_index=True)
    write_table(deltas.merge(runs, on="source", how="left")[RUN_COLUMNS + list(deltas.columns)], csv, markdown)


@job
def experiment_figure(deltas_csv: str, relaxed: bool, png: str) -> None:
    """One regime's deltas, unrelaxed or relaxed methods (each against its own baseline), as the main
    figure draws them; the FP floor rows give the FID noise floor."""
    import pandas as pd

    from pcr.report import main_figure

    df = pd.read_csv(deltas_csv)
    chosen = df[(df["relax"].astype(str) == str(relaxed)) | (df["method"] == "fp")]
    regime = df["regime"].iloc[0]
    title = f"{regime}{', relaxed' if relaxed else ''}: each method's paired difference to its baseline"
    main_figure(chosen, Path(png).with_suffix(""), title)
