"""Text-to-image pipelines that pcr quantizes, loaded from one spec string.

Every pipeline comes back with a StepTracker attached to its UNet, so quantized layers can read
the current sampling step during any pipeline call (see pcr.pipelines.steps). ``use_scheduler``
swaps in another sampler by short name for a while (pcr.pipelines.schedulers).

Specs:
  toy:<folder>                   the toy shapes-world pipeline, as saved by ToyPipeline.save_pretrained
  sd:<hub id, folder or file>    Stable Diffusion 1.x/2.x: diffusers format, or one .safetensors/.ckpt
                                 file in the original layout (with single_file_config: its components)
  sdxl:<hub id, folder or file>  SDXL base, likewise
  tiny-sd, tiny-sdxl             tiny random pipelines of the real architectures, for tests
"""

from __future__ import annotations

from pathlib import Path

import torch

from pcr.pipelines.hub import _LOAD_ERRORS, PipelineLoadError, load_sd, load_sdxl
from pcr.pipelines.schedulers import SCHEDULERS, use_scheduler
from pcr.pipelines.steps import StepTracker, get_step_tracker
from pcr.pipelines.tiny import tiny_sd, tiny_sdxl
from pcr.runtime import MODEL_BUILD_LOCK, resolve_device, torch_dtype
from pcr.tokenizer import clip_tokenizer

__all__ = [
    "SCHEDULERS",
    "PipelineLoadError",
    "StepTracker",
    "clip_tokenizer",
    "get_step_tracker",
    "load_pipeline",
    "tiny_sd",
    "tiny_sdxl",
    "use_scheduler",
]

SPEC_FORMS = ("toy:<folder>", "sd:<hub id, folder or file>", "sdxl:<hub id, folder or file>", "tiny-sd", "tiny-sdxl")


def _load_toy(folder: str):
    from pcr.pipelines.toy import ToyPipeline  # only the toy world needs it

    if not Path(folder).expanduser().is_dir():
        raise PipelineLoadError(
            f"Cannot load toy:{folder}: the folder does not exist. Give the folder written by "
            "ToyPipeline.save_pretrained (the workflow's toy training step writes one)."
        )
    try:
        return ToyPipeline.from_pretrained(Path(folder).expanduser())
    except _LOAD_ERRORS as err:
        raise PipelineLoadError(
            f"Cannot load toy:{folder} ({type(err).__name__}: {err}). Give the folder written by "
            "ToyPipeline.save_pretrained (the workflow's toy training step writes one)."
        ) from None


def load_pipeline(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                  single_file_config: str | None = None):
    """Load the pipeline named by ``spec``, move it to ``device``/``dtype``, attach a StepTracker.

    device "auto" is CUDA when there is one. dtype None means float32 (the safe default; ask for
    float16/bfloat16 on a GPU); config names ("float16") are accepted. ``single_file_config`` (a hub
    id or diffusers folder) describes the components of a single-file checkpoint; offline it is
    needed. Safety checker (SD) and watermarker (SDXL) are off: benchmark images are unfiltered.
    """
    with MODEL_BUILD_LOCK:  # jobs load in threads; see pcr.runtime
        return _load(spec, device, dtype, single_file_config)


def _load(spec: str, device, dtype, single_file_config: str | None):
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = torch.float32 if dtype is None else torch_dtype(dtype) if isinstance(dtype, str) else dtype
    family, _, rest = spec.partition(":")
    if single_file_config is not None and family not in ("sd", "sdxl"):
        raise ValueError(f"single_file_config is for sd:/sdxl: single-file checkpoints, not {spec!r}")
    if spec == "tiny-sd":
        pipe = tiny_sd()
    elif spec == "tiny-sdxl":
        pipe = tiny_sdxl()
    elif family == "toy" and rest:
        pipe = _load_toy(rest)
    elif family == "sd" and rest:
        pipe = load_sd(rest, dtype=dtype, config=single_file_config)
    elif family == "sdxl" and rest:
        pipe = load_sdxl(rest, dtype=dtype, config=single_file_config)
    else:
        raise ValueError(f"Unknown pipeline spec {spec!r}; expected one of: {', '.join(SPEC_FORMS)}.")
    pipe = pipe.to(device=device)
    if pipe.dtype != dtype:  # diffusers warns on every dtype cast, even a no-op one
        pipe = pipe.to(dtype=dtype)
    StepTracker.attach(pipe)
    return pipe
