"""Load real Stable Diffusion and SDXL pipelines from the Hugging Face hub or a local folder.

Loading fails in many ways that all mean the same to a user (no network, a typo in the id, a
folder that is missing or half copied), and diffusers reports each with its own exception type
and, often, a chain of tracebacks. Here they all become one PipelineLoadError that says which
spec failed, why in one line, and how to supply the weights.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from huggingface_hub.errors import EntryNotFoundError
from packaging.version import Version

__all__ = ["PipelineLoadError", "load_sd", "load_sdxl"]

# OSError covers the hub's errors (missing local entry, offline mode, unknown repository, HTTP
# and connection errors) and diffusers' missing-file errors; ValueError covers invalid repo ids.
_LOAD_ERRORS = (OSError, ValueError, EntryNotFoundError)
# diffusers 0.42 renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns).
_DTYPE_KWARG = "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"


class PipelineLoadError(RuntimeError):
    """A pipeline's weights could not be found or read."""


def _how_to_supply(family: str) -> str:
    return (
        f"Supply the weights either as a hub id with network access (or already in the Hugging "
        f"Face cache), e.g. `{family}:<org>/<model>`, or as `{family}:/path/to/folder` holding a "
        f"diffusers-format save (model_index.json and one subfolder per component, as written by "
        f"pipe.save_pretrained)."
    )


def _looks_like_path(id_or_folder: str) -> bool:
    """True for specs that can only mean a local folder (a hub id is `name` or `org/name`)."""
    return id_or_folder.startswith(("/", "./", "../", "~", "\\")) or ":" in id_or_folder


def _load(cls: type[DiffusionPipeline], family: str, id_or_folder: str, dtype, **kwargs):
    spec = f"{family}:{id_or_folder}"
    folder = Path(id_or_folder).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise PipelineLoadError(
                f"Cannot load {spec}: folder {folder} has no model_index.json, so it is not a "
                f"diffusers-format save. {_how_to_supply(family)}"
            )
        id_or_folder = str(folder)
    elif _looks_like_path(id_or_folder):
        raise PipelineLoadError(
            f"Cannot load {spec}: folder {folder} does not exist. {_how_to_supply(family)}"
        )
    if dtype is not None:
        kwargs[_DTYPE_KWARG] = dtype
    try:
        return cls.from_pretrained(id_or_folder, **kwargs)
    except _LOAD_ERRORS as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if len(cause) > 300:
            cause = cause[:300] + "..."
        raise PipelineLoadError(
            f"Cannot load {spec} ({type(err).__name__}: {cause}). {_how_to_supply(family)}"
        ) from None


def load_sd(id_or_folder: str, dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """A Stable Diffusion 1.x/2.x pipeline, safety checker off (images are measured, not shown).

    dtype None keeps diffusers' default (float32).
    """
    return _load(
        StableDiffusionPipeline,
        "sd",
        id_or_folder,
        dtype,
        safety_checker=None,
        requires_safety_checker=False,
    )


def load_sdxl(id_or_folder: str, dtype: torch.dtype | None = None) -> StableDiffusionXLPipeline:
    """An SDXL pipeline, invisible watermark off (it would perturb the images that are measured).

    dtype None keeps diffusers' default (float32).
    """
    return _load(StableDiffusionXLPipeline, "sdxl", id_or_folder, dtype, add_watermarker=False)
