"""Seeded, sharded, resumable image generation: the images every QDiffBench metric compares.

Image i (prompt index i) is sampled from seed `seed + i`, whatever the batching or sharding, so
the full-precision run and every quantized run start each prompt from the same noise and their
images pair up by file name. Each PNG is written atomically, so a killed run leaves only whole
images, and a rerun keeps them (an image that is not the file the manifest pins, or does not decode
at the folder's size, is sampled again). Work is cut into fixed batches of prompt indices, so sharded,
resumed and uninterrupted runs write the same folder bit for bit.

Folder layout:
  00000.png, 00001.png, ...           one image per prompt index
  generation.json                     the settings; a rerun with other settings is refused
  manifest.csv                        index, prompt, seed, file, bytes, sha256 (when the folder is
                                      complete): consumers check the images against it (pcr.bench.folders)
  manifest.shard-K-of-N.csv           one per shard of a sharded run; merge_manifests joins them
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pcr.bench.folders import (
    MANIFEST,
    SETTINGS,
    FolderError,
    changed_images,
    image_name,
    read_manifest,
    usable_image,
    write_manifest,
)
from pcr.bench.prompts import prompt_list, prompts_digest
from pcr.io import atomic_file

__all__ = ["MANIFEST", "SEED_RULE", "SETTINGS", "GenerationError", "collect_shards", "generate", "image_name",
           "merge_manifests", "read_manifest"]

SEED_RULE = "seed + index"  # recorded with every result: how image i's seed follows from the base seed


class GenerationError(RuntimeError):
    """An output folder holds images of other settings, or a sharded run is incomplete."""


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_manifest(path: Path, prompts: Sequence[str], indices: Sequence[int], seed: int) -> None:
    write_manifest(path, ((i, prompts[i], seed + i) for i in indices))


def _clear(out_dir: Path) -> None:
    """Remove a generation folder's images, manifests and settings (nothing else)."""
    for pattern in ("*.png", ".*.tmp", "manifest*.csv", SETTINGS):
        for path in out_dir.glob(pattern):
            path.unlink()


def _check_settings(out_dir: Path, settings: dict, replace_stale: bool = False) -> None:
    """Write generation.json, or refuse if the folder already holds images of other settings
    (or, with replace_stale, delete them: a workflow rerun after its inputs changed)."""
    path = out_dir / SETTINGS
    if path.is_file() and replace_stale and json.loads(path.read_text()) != settings:
        _clear(out_dir)
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise GenerationError(
                f"{out_dir} holds images generated with other settings ({', '.join(changed)} differ: "
                f"{ {k: old.get(k) for k in changed} } there, { {k: settings.get(k) for k in changed} } now); "
                "mixing them would pair the wrong images. Use another folder or delete this one.")
    elif any(out_dir.glob("*.png")):
        raise GenerationError(f"{out_dir} holds PNGs but no {SETTINGS}: not a pcr generation folder. "
                              "Use another folder or empty this one.")
    else:
        _write_json(path, settings)


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    k, n = shard
    if not (isinstance(k, int) and isinstance(n, int) and n >= 1 and 0 <= k < n):
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    return k, n


def generate(pipe, prompts: Sequence[str], out_dir: str | os.PathLike, seed: int = 0, batch_size: int = 8,
             shard: tuple[int, int] = (0, 1), num_inference_steps: int = 50, guidance_scale: float = 7.5,
             height: int | None = None, width: int | None = None, info: dict | None = None,
             progress: bool = True, replace_stale: bool = False, timing: dict | None = None) -> Path:
    """Sample one PNG per prompt into `out_dir`; return the manifest written.

    Prompts are cut into fixed batches of `batch_size` (indices 0..b-1, b..2b-1, ...); shard k of n
    runs the batches j with j % n == k and writes manifest.shard-k-of-n.csv; an unsharded run
    writes manifest.csv, which pins each image's size and sha256. Finished images are kept: those a
    manifest in the folder pins, or (none does) that decode whole at the folder's size; any other is
    sampled again. A batch with NaN or inf pixels is refused before anything of it is written.
    batch_size is a setting of the folder, like the step count: a rerun must use the same one.
    `info` (model spec, quant config hash, prompt set name) is stored in generation.json for the
    metrics' provenance. The pipeline's own progress bar is silenced during the call; ours counts
    images. `replace_stale=True` deletes a folder of other settings instead of refusing it (the
    workflow, whose inputs changed, uses it; a folder of the same settings is always resumed).
    `timing`, if given, receives the images this call sampled and the seconds its pipeline calls took.
    """
    k, n = _check_shard(shard)
    prompts = _check_prompts(prompts)
    _check_guidance(guidance_scale)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "pipeline": type(pipe).__name__, "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale, "height": height, "width": width, "seed": seed, "seed_rule": SEED_RULE,
        "count": len(prompts), "prompts_sha256": prompts_digest(prompts), "batch_size": batch_size,
        "info": info or {}, **_model_provenance(pipe, height, width),
    }
    _check_settings(out_dir, settings, replace_stale)

    # Fixed batches of global indices; shard k runs batches j with j % n == k, and a batch with any
    # image missing runs whole. So every image comes out of the same batch computation however the
    # work is split or resumed, and the folder is the same bit for bit (a batch's other members can
    # move an image by ~1e-6 before rounding to uint8, so a different batch would not be).
    batches = [list(range(lo, min(lo + batch_size, len(prompts)))) for lo in range(0, len(prompts), batch_size)]
    mine = [i for j, batch in enumerate(batches) if j % n == k for i in batch]
    for i in mine:  # temporary files a killed run of this shard left behind
        for stale in out_dir.glob(f".{image_name(i)}.*.tmp"):
            stale.unlink(missing_ok=True)
    missing = _to_sample(out_dir, mine, settings["resolution"])
    todo = [batch for j, batch in enumerate(batches) if j % n == k and missing.intersection(batch)]
    size = {key: v for key, v in (("height", height), ("width", width)) if v is not None}
    old_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    try:
        bar = tqdm(total=len(mine), initial=len(mine) - len(missing), unit="img", disable=not progress,
                   desc=f"generate {out_dir.name}" + (f" shard {k}/{n}" if n > 1 else ""))
        with bar:
            for batch in todo:
                # CPU generators: the same seed gives the same initial noise on any device
                generators = [torch.Generator().manual_seed(seed + i) for i in batch]
                start = time.perf_counter()
                out = pipe([prompts[i] for i in batch], num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, generator=generators, output_type="np", **size)
                if timing is not None:
                    timing["images"] = timing.get("images", 0) + len(batch)
                    timing["seconds"] = timing.get("seconds", 0.0) + time.perf_counter() - start
                _refuse_filtered(out, batch)
                for i, image in zip(batch, _to_pil(pipe, out.images, batch, prompts), strict=True):
                    if i in missing:
                        with atomic_file(out_dir / image_name(i)) as tmp:
                            image.save(tmp, format="PNG")
                        bar.update(1)
    finally:
        if hasattr(pipe, "_progress_bar_config"):
            pipe._progress_bar_config = old_bar

    manifest = out_dir / (MANIFEST if n == 1 else f"manifest.shard-{k}-of-{n}.csv")
    _write_manifest(manifest, prompts, sorted(mine), seed)
    return manifest


def _check_prompts(prompts) -> list[str]:
    prompts = prompt_list(prompts, "generate")
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty sequence of strings")
    return prompts


def _check_guidance(guidance_scale) -> None:
    """Every pipeline pcr samples (diffusers' and the toy) skips classifier-free guidance at a scale <= 1,
    so 1 means 'no guidance'; zero, a negative scale or NaN would be recorded as a setting that means
    nothing."""
    if (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real)
            or not math.isfinite(guidance_scale) or guidance_scale <= 0):
        raise ValueError(f"guidance_scale must be a number > 0, got {guidance_scale!r}: 1 samples without "
                         "classifier-free guidance, larger values guide (Stable Diffusion's usual is 7.5)")


def _to_sample(out_dir: Path, mine: list[int], resolution: list) -> set[int]:
    """The indices a run samples: images absent, not the file a manifest in the folder pins, or (none
    pins it: Snakemake removes the manifest before a rerun) not decoding whole at the folder's size. A
    truncated or foreign PNG is never kept for its name alone."""
    rows = {}
    for path in sorted(out_dir.glob("manifest*.csv")):
        try:
            rows.update((r["index"], r) for r in read_manifest(path))
        except (FolderError, ValueError):  # an unreadable manifest pins nothing: its images are decoded
            continue
    size = None if None in resolution else (resolution[1], resolution[0])  # PIL's (width, height)
    return {i for i in mine if not usable_image(out_dir / image_name(i), rows.get(i), size)}


def _to_pil(pipe, images, batch: list[int], prompts: Sequence[str]) -> list:
    """PIL images of a batch sampled as floats in [0, 1], converted as the pipeline converts its own
    output_type="pil" (the PNGs are the same bit for bit), after refusing NaN or inf, which the
    conversion to uint8 would write as black or white pixels unnoticed."""
    pixels = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    bad = [i for i, image in zip(batch, pixels, strict=True) if not np.isfinite(image).all()]
    if bad:
        named = ", ".join(f"{image_name(i)} ({prompts[i]!r})" for i in bad[:5])
        raise GenerationError(
            f"the pipeline sampled non-finite pixels (NaN or inf) for {len(bad)} image(s): {named}; nothing of "
            "this batch is written. The usual cause is NaN or inf weights or quantization parameters (check the "
            "model and the calibration file its UNet was quantized with), or a float16 overflow (sample in "
            "float32 to tell).")
    convert = getattr(getattr(pipe, "image_processor", None), "numpy_to_pil", None) or pipe.numpy_to_pil
    return convert(pixels)


def _model_provenance(pipe, height: int | None, width: int | None) -> dict:
    """What else the images depend on: the resolution sampled, the safety checker, and for a quantized
    UNet what its parameters were calibrated on (a resolution that differs is flagged)."""
    from pcr.pipelines.adapters import adapter_for

    try:
        sampled = list(adapter_for(pipe).resolve_size(height, width))
    except TypeError:  # a family pcr has no adapter for: it samples, but its default size is unknown here
        sampled = [height, width]
    calibration = getattr(pipe.unet, "pcr_calibration", None)
    out = {"resolution": sampled, "safety_checker": "on" if getattr(pipe, "safety_checker", None) else "off",
           "quantization": calibration}
    if calibration is not None:
        out["resolution_mismatch"] = calibration["resolution"] is not None and calibration["resolution"] != sampled
    return out


def _refuse_filtered(out, batch: list[int]) -> None:
    """A safety checker replaces flagged images with black ones: never let one into a benchmark."""
    flagged = [i for i, hit in zip(batch, getattr(out, "nsfw_content_detected", None) or []) if hit]
    if flagged:
        raise GenerationError(f"the pipeline's safety checker blacked out images {[image_name(i) for i in flagged]}; "
                              "benchmark images must be unfiltered. Load the pipeline without it "
                              "(pcr.pipelines.load_pipeline does: safety_checker=None).")


def merge_manifests(out_dir: str | os.PathLike) -> Path:
    """Join the shard manifests of a sharded run into manifest.csv, once every shard is done."""
    out_dir = Path(out_dir)
    path = out_dir / SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"no {SETTINGS} in {out_dir}: run pcr.bench.generate() into it first")
    settings = json.loads(path.read_text())
    shards = sorted(out_dir.glob("manifest.shard-*-of-*.csv"))
    counts = {int(p.stem.rsplit("-", 1)[1]) for p in shards}
    if len(counts) != 1:
        raise GenerationError(f"{out_dir}: expected the shard manifests of one sharded run, found "
                              f"{[p.name for p in shards] or 'none'}")
    n = counts.pop()
    missing = [k for k in range(n) if not (out_dir / f"manifest.shard-{k}-of-{n}.csv").is_file()]
    if missing:
        raise GenerationError(f"{out_dir}: shard(s) {missing} of {n} have not finished; run them first")
    rows = sorted((r for p in shards for r in read_manifest(p)), key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(settings["count"])):
        raise GenerationError(f"{out_dir}: the shard manifests do not cover indices 0..{settings['count'] - 1} "
                              "exactly once; regenerate the folder")
    changed = changed_images(out_dir, rows)
    if changed:
        raise GenerationError(f"{out_dir}: images {changed[:5]} listed in the shard manifests are missing or not the "
                              "files they pin; rerun their shards (finished images are kept, these sampled again)")
    prompts = [r["prompt"] for r in rows]
    _write_manifest(out_dir / MANIFEST, prompts, range(len(prompts)), settings["seed"])
    return out_dir / MANIFEST


def collect_shards(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Join the folders of a sharded generation (one per shard job, each written by generate with
    its shard) into `out_dir`: images hard-linked (copied across file systems), generation.json and
    manifest.csv. The shard folders must share their settings and cover every index once."""
    out_dir = Path(out_dir)
    shard_dirs = [Path(d) for d in shard_dirs]
    settings = [json.loads((d / SETTINGS).read_text()) if (d / SETTINGS).is_file() else None for d in shard_dirs]
    if None in settings:
        raise GenerationError(f"{shard_dirs[settings.index(None)]} is not a generation folder; run its shard first")
    if any(s != settings[0] for s in settings):
        raise GenerationError(f"the shard folders {[str(d) for d in shard_dirs]} were generated with other settings; "
                              "rerun them")
    rows = sorted(({**r, "folder": d} for d in shard_dirs for p in d.glob("manifest.shard-*-of-*.csv")
                   for r in read_manifest(p)), key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(settings[0]["count"])):
        raise GenerationError(f"the shard folders do not cover indices 0..{settings[0]['count'] - 1} exactly once")
    for d in shard_dirs:
        changed = changed_images(d, [r for r in rows if r["folder"] == d])
        if changed:
            raise GenerationError(f"shard folder {d}: {', '.join(changed[:5])} missing or not the files its manifest "
                                  "pins (changed after generation); delete them and rerun that shard's generation "
                                  "(finished images are kept, these sampled again)")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, settings[0], replace_stale=True)
    for r in rows:
        target = out_dir / r["file"]
        if target.is_file():
            target.unlink()
        try:
            os.link(r["folder"] / r["file"], target)
        except OSError:
            shutil.copyfile(r["folder"] / r["file"], target)
    _write_manifest(out_dir / MANIFEST, [r["prompt"] for r in rows], range(len(rows)), settings[0]["seed"])
    return out_dir / MANIFEST
