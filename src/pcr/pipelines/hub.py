"""Load real Stable Diffusion and SDXL pipelines from the hub, a local folder or a single file.

Loading fails in many ways that all mean the same to a user (no network, a typo in the id, a
folder that is missing or half copied), and diffusers reports each with its own exception type
and, often, a chain of tracebacks. Here they all become one PipelineLoadError that says which
spec failed, why in one line, and how to supply the weights.

A spec ending in .safetensors or .ckpt is a single checkpoint file in the original (CompVis /
Stability) layout, read by diffusers' ``from_single_file``. Such a file holds weights only:
diffusers also needs the diffusers-format configs of its components, from ``config`` (a hub id
or a local diffusers folder). Without it, diffusers guesses the model type from the file's keys
and fetches that type's configs from the hub, which fails offline.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import SingleFileComponentError
from huggingface_hub.errors import EntryNotFoundError
from packaging.version import Version

__all__ = ["PipelineLoadError", "load_sd", "load_sdxl"]

# OSError covers the hub's errors (missing local entry, offline mode, unknown repository, HTTP
# and connection errors) and diffusers' missing-file errors; ValueError covers invalid repo ids.
_LOAD_ERRORS = (OSError, ValueError, EntryNotFoundError)
# diffusers 0.42 renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns).
_DTYPE_KWARG = "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class PipelineLoadError(RuntimeError):
    """A pipeline's weights could not be found or read."""


def _how_to_supply(family: str) -> str:
    return (
        f"Supply the weights either as a hub id with network access (or already in the Hugging "
        f"Face cache), e.g. `{family}:<org>/<model>`, or as `{family}:/path/to/folder` holding a "
        f"diffusers-format save (model_index.json and one subfolder per component, as written by "
        f"pipe.save_pretrained), or as `{family}:/path/to/model.safetensors` (or .ckpt) with "
        f"config=<hub id or diffusers folder describing its components>."
    )


def _looks_like_path(id_or_folder: str) -> bool:
    """True for specs that can only mean a local folder (a hub id is `name` or `org/name`)."""
    return id_or_folder.startswith(("/", "./", "../", "~", "\\")) or ":" in id_or_folder


def _first_line(err: BaseException) -> str:
    cause = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return cause[:300] + "..." if len(cause) > 300 else cause


def _check_folder(spec: str, family: str, folder: Path, what: str = "folder") -> str:
    if not folder.is_dir():
        raise PipelineLoadError(
            f"Cannot load {spec}: {what} {folder} does not exist. {_how_to_supply(family)}"
        )
    if not (folder / "model_index.json").is_file():
        raise PipelineLoadError(
            f"Cannot load {spec}: {what} {folder} has no model_index.json, so it is not a "
            f"diffusers-format save. {_how_to_supply(family)}"
        )
    return str(folder)


def _load_single_file(cls, family: str, path: str, config: str | None, **kwargs):
    spec = f"{family}:{path}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise PipelineLoadError(f"Cannot load {spec}: file {file} does not exist. {_how_to_supply(family)}")
    if config is not None and (Path(config).expanduser().is_dir() or _looks_like_path(config)):
        config = _check_folder(spec, family, Path(config).expanduser(), what="config folder")
    try:
        return cls.from_single_file(str(file), config=config, **kwargs)
    except (*_LOAD_ERRORS, SingleFileComponentError) as err:
        if config is None:
            advice = (
                "A single file holds weights only, and diffusers could not fetch its components' "
                "configs from the hub. Pass config=<hub id or local diffusers folder of the same "
                f"architecture>: load_{family}(path, config=...), or "
                "load_pipeline(spec, single_file_config=...)."
            )
        else:
            advice = (
                f"Check config={config!r}: a hub id needs network access (or the Hugging Face "
                "cache), and its components must match the file's architecture."
            )
        raise PipelineLoadError(
            f"Cannot load {spec} ({type(err).__name__}: {_first_line(err)}). {advice}"
        ) from None


def _load(cls: type[DiffusionPipeline], family: str, id_or_folder: str, dtype, config=None, **kwargs):
    spec = f"{family}:{id_or_folder}"
    if dtype is not None:
        kwargs[_DTYPE_KWARG] = dtype
    if id_or_folder.lower().endswith(SINGLE_FILE_SUFFIXES) and not Path(id_or_folder).expanduser().is_dir():
        return _load_single_file(cls, family, id_or_folder, config, **kwargs)
    if config is not None:
        raise ValueError(
            f"config={config!r} is for single-file checkpoints ({', '.join(SINGLE_FILE_SUFFIXES)}); "
            f"{spec} is a hub id or folder, which carries its own configs."
        )
    folder = Path(id_or_folder).expanduser()
    if folder.is_dir() or _looks_like_path(id_or_folder):
        id_or_folder = _check_folder(spec, family, folder)
    try:
        return cls.from_pretrained(id_or_folder, **kwargs)
    except _LOAD_ERRORS as err:
        raise PipelineLoadError(
            f"Cannot load {spec} ({type(err).__name__}: {_first_line(err)}). {_how_to_supply(family)}"
        ) from None


def load_sd(
    id_or_folder: str, dtype: torch.dtype | None = None, config: str | None = None
) -> StableDiffusionPipeline:
    """A Stable Diffusion 1.x/2.x pipeline, safety checker off (images are measured, not shown).

    id_or_folder is a hub id, a diffusers folder or a single .safetensors/.ckpt file; for a
    file, config (a hub id or diffusers folder) describes its components. dtype None keeps
    diffusers' default (float32).
    """
    return _load(
        StableDiffusionPipeline,
        "sd",
        id_or_folder,
        dtype,
        config,
        safety_checker=None,
        requires_safety_checker=False,
    )


def load_sdxl(
    id_or_folder: str, dtype: torch.dtype | None = None, config: str | None = None
) -> StableDiffusionXLPipeline:
    """An SDXL pipeline, invisible watermark off (it would perturb the images that are measured).

    Sources as for load_sd. dtype None keeps diffusers' default (float32).
    """
    return _load(StableDiffusionXLPipeline, "sdxl", id_or_folder, dtype, config, add_watermarker=False)
