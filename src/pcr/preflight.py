"""Preflight: before the first job, check everything a run needs from outside the workflow.

**One error, every problem, each naming its config key and how to fix it** (a missing piece used to
fail a job dozens of jobs in). Each is looked for where its loader looks:

- `model`: a local folder (model_index.json), a single-file checkpoint (+ `model_config`, which
  diffusers needs offline), or a hub id in the Hugging Face cache (model_index.json and every
  component's folder in the snapshot of refs/main), else on the hub.
- prompt files of `coco:`, `parti:`, `sdprompts:` and `txt:` specs (relative to `workdir`).
- `metrics.feature_extractor`: `feature_weights`, or inception-v3-compat's download where
  torch.hub keeps it (`<TORCH_HOME>/hub/checkpoints/`), else its URL; other extractors by name.
- `metrics.clip_model`/`clip_pretrained`: a checkpoint file, or the open_clip tag's download in the
  Hugging Face cache (hf_hub source) or `~/.cache/clip` (url source), else its source.
- `compute.device`/`metrics.device` "cuda" or "cuda:N": torch sees that GPU.

Network: whatever is not local is asked for all at once, in daemon threads that get NETWORK_BUDGET_S
seconds together (a silent DNS cannot hang the run); with HF_HUB_OFFLINE the hub is not asked.
`model: toy` gets the checks that do not concern the toy world (prompt files, devices). torch is
imported only by the device check, and with open_clip or torch-fidelity's registry (lazily).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NETWORK_BUDGET_S", "PreflightError", "preflight", "problems"]

NETWORK_BUDGET_S = 10.0  # all network look-ups together, at most
# torch-fidelity's inception-v3-compat download (torch_fidelity.feature_extractor_inceptionv3; a test
# checks they agree), read from `<torch.hub.get_dir()>/checkpoints/<its file name>` when present
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
METRICS_DEFAULTS = {"feature_extractor": "inception-v3-compat", "clip_model": "ViT-L-14", "clip_pretrained": "openai"}
PROMPT_FILE_SPECS = ("coco", "parti", "sdprompts", "txt")
TOY_CLIP = "toy-clip"


class PreflightError(ValueError):
    """What a run lacks before it starts; the message lists every problem, numbered, with its fix."""


@dataclass(frozen=True, eq=False)  # each one is its own look-up
class _Download:
    """Something not found locally that a job would download: fine if its source answers."""

    what: str  # "<key>: <value> is not in <where>"
    fix: str
    ask: Callable[[float], str | None]  # timeout -> None if the source answers, else why not


def preflight(config: dict, workdir: str | os.PathLike = ".", network_budget_s: float = NETWORK_BUDGET_S,
              devices: bool = True) -> None:
    """Raise PreflightError listing every problem of `config` (the workflow config dict), or return None.
    devices=False skips the device check: on a cluster's submit host, the jobs' GPUs are elsewhere."""
    found = problems(config, workdir, network_budget_s, devices)
    if found:
        lines = "\n".join(f"  {i}. {p}" for i, p in enumerate(found, 1))
        raise PreflightError(f"preflight found {len(found)} problem(s) before the first job:\n{lines}")


def problems(config: dict, workdir: str | os.PathLike = ".", network_budget_s: float = NETWORK_BUDGET_S,
             devices: bool = True) -> list[str]:
    """Every problem of `config`, one line each; paths in it are relative to `workdir`."""
    workdir = Path(workdir)
    metrics = {**METRICS_DEFAULTS, **(config.get("metrics") or {})}
    found = list(_prompt_files(config.get("prompts") or {}, workdir))
    if config.get("model", "toy") != "toy":  # the toy world trains its own model and CLIP
        found += _model(config, workdir)
        found += _feature_extractor(metrics, workdir)
        found += _clip(metrics, workdir)
    found += _devices(config, metrics) if devices else []
    answers = _ask_all([d for d in found if isinstance(d, _Download)], network_budget_s)
    return [f"{d.what}, and {answers[d]}: {d.fix}" if isinstance(d, _Download) else d
            for d in found if not isinstance(d, _Download) or answers[d] is not None]


# -- the network: every look-up at once, bounded in time ------------------------------------------


def _ask_all(downloads: list[_Download], budget_s: float) -> dict[_Download, str | None]:
    answers = {}

    def ask(download):
        try:
            answers[download] = download.ask(budget_s)
        except Exception as err:  # noqa: BLE001 - any failure means "cannot download"
            answers[download] = f"it failed ({type(err).__name__}: {err})"

    threads = [threading.Thread(target=ask, args=(d,), daemon=True) for d in downloads]
    deadline = time.monotonic() + budget_s
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {d: answers.get(d, f"its source gave no answer within {budget_s:g} s") for d in downloads}


def _url_answers(url: str, timeout: float) -> str | None:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError as err:  # the server answered: only "not there" is a problem
        return f"its source answers HTTP {err.code}" if err.code in (404, 410) else None
    except OSError as err:  # URLError, timeouts, refused connections
        return f"its source is unreachable ({getattr(err, 'reason', err)})"
    return None


def _hf_answers(repo: str, filename: str, timeout: float) -> str | None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=timeout)
    except GatedRepoError:
        return f"{repo} is gated on the hub (accept its licence there, then `hf auth login`)"
    except RepositoryNotFoundError:
        return f"{repo} is not on the hub (or is private: `hf auth login`)"
    except EntryNotFoundError:
        return f"{repo} on the hub has no {filename}"
    except Exception as err:  # noqa: BLE001 - connection errors of whichever HTTP client
        return f"the hub is unreachable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None


def _hf_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or flag.upper() in ("1", "ON", "YES", "TRUE")


def _hf_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename)  # in refs/main's snapshot; no network
    except ValueError:  # not a valid repo id: then not in the cache either
        return None
    return Path(found) if isinstance(found, str) else None


def _from_hub(key: str, value: str, repo: str, filename: str, fix: str) -> Iterator[str | _Download]:
    """repo's filename is not in the Hugging Face cache: a problem offline, else a download."""
    from huggingface_hub import constants

    what = f"{key}: {value} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if _hf_offline():
        yield f"{what} and the hub is off (HF_HUB_OFFLINE=1): {fix}"
    else:
        yield _Download(what, fix, lambda timeout: _hf_answers(repo, filename, timeout))


# -- the checks: each yields problem lines and downloads ------------------------------------------


def _prompt_files(prompts: dict, workdir: Path) -> Iterator[str]:
    sets = [("prompts.calibration.spec", prompts.get("calibration") or {})]
    sets += [(f"prompts.evaluation.{name}.spec", s) for name, s in (prompts.get("evaluation") or {}).items()]
    for key, entry in sets:
        kind, _, path = str(entry.get("spec", "")).partition(":")
        if kind in PROMPT_FILE_SPECS and not (workdir / path).is_file():
            yield (f"{key}: {entry['spec']}: the file {workdir / path} does not exist: put the prompt file there "
                   "(README, 'Paper profile on a GPU', says where each comes from) or point the spec at your copy")


def _missing_components(folder: Path, weights: bool = True) -> list[str]:
    """Components model_index.json names that the folder lacks (and, with `weights`, models' weights)."""
    index = json.loads((folder / "model_index.json").read_text())
    missing = []
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None or name == "safety_checker":
            continue  # pcr loads SD without its safety checker
        sub = folder / name
        found = [f for pattern in ("*.safetensors", "*.bin") for f in sub.glob(pattern) if f.is_file()]
        if not sub.is_dir() or not any(f.is_file() for f in sub.iterdir()):
            missing.append(name)
        elif weights and (sub / "config.json").is_file() and not found:
            missing.append(f"{name} weights")
    return missing


def _diffusers_source(key: str, value: str, target: str, workdir: Path,
                      weights: bool = True) -> Iterator[str | _Download]:
    """A diffusers-format model (weights=False: its configs only), as a local folder or a hub id."""
    folder = workdir / Path(target).expanduser()
    get = f"run `hf download {target}` with network, or give a local folder with model_index.json"
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            yield f"{key}: {value}: folder {folder} has no model_index.json: give a diffusers save (save_pretrained)"
        elif missing := _missing_components(folder, weights):
            yield f"{key}: {value}: folder {folder} lacks {', '.join(missing)}: copy the whole diffusers save"
    elif target.startswith(("/", ".", "~")) or target.count("/") != 1:
        yield f"{key}: {value}: folder {folder} does not exist (and is no hub id, org/name): fix the path"
    elif (index := _hf_cached(target, "model_index.json")) is None:
        yield from _from_hub(key, value, target, "model_index.json", get)
    elif missing := _missing_components(index.parent, weights):
        yield f"{key}: {value}: its Hugging Face cache snapshot {index.parent} lacks {', '.join(missing)}: {get}"


def _model(config: dict, workdir: Path) -> Iterator[str | _Download]:
    spec = str(config["model"])
    family, _, target = spec.partition(":")
    if spec in ("tiny-sd", "tiny-sdxl"):
        return
    if family not in ("sd", "sdxl") or not target:
        yield f"model: {spec!r} is no pipeline spec: give toy, sd:<hub id or folder> or sdxl:<hub id or folder>"
    elif Path(target).suffix.lower() in (".safetensors", ".ckpt"):
        if not (workdir / Path(target).expanduser()).is_file():
            yield f"model: {spec}: the checkpoint file {workdir / target} does not exist: fix the path"
        if config.get("model_config"):
            model_config = str(config["model_config"])  # only its configs are read, not its weights
            yield from _diffusers_source("model_config", model_config, model_config, workdir, weights=False)
        elif _hf_offline():
            yield (f"model_config: unset, but the single file {target} needs its components' configs from the hub, "
                   "which is off (HF_HUB_OFFLINE=1): set it to a diffusers folder or cached hub id of its architecture")
        else:
            from huggingface_hub import constants

            yield _Download(f"model_config: unset, so diffusers fetches {target}'s component configs from the hub",
                            "set model_config to a diffusers folder or a cached hub id of the same architecture",
                            lambda timeout: _url_answers(constants.ENDPOINT, timeout))
    else:
        yield from _diffusers_source("model", spec, target, workdir)


def _torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, by default ~/.cache/torch/hub."""
    if "torch" in sys.modules:  # honours a torch.hub.set_dir()
        return Path(sys.modules["torch"].hub.get_dir())
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def _feature_extractor(metrics: dict, workdir: Path) -> Iterator[str | _Download]:
    name, weights = metrics["feature_extractor"], metrics.get("feature_weights")
    key = "metrics.feature_extractor"
    if name == TOY_CLIP:
        yield f"{key}: toy-clip is the toy world's, trained only for model: toy: use inception-v3-compat"
        return
    if weights:
        if not (workdir / weights).is_file():
            yield f"metrics.feature_weights: {weights} does not exist: fix the path, or unset it to download"
        return
    if name != "inception-v3-compat":  # torch-fidelity's others (CLIP, VGG, DINOv2): only the name is checked
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        if name not in FEATURE_EXTRACTORS_REGISTRY:
            yield f"{key}: {name!r} is no torch-fidelity feature extractor: e.g. inception-v3-compat"
    elif not (path := _torch_hub_dir() / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[-1]).is_file():
        yield _Download(f"{key}: {name}'s weights are not at {path}",
                        f"download {INCEPTION_URL} there (or set TORCH_HOME), or set metrics.feature_weights to a copy",
                        lambda timeout: _url_answers(INCEPTION_URL, timeout))


def _clip(metrics: dict, workdir: Path) -> Iterator[str | _Download]:
    name, pretrained = str(metrics["clip_model"]), str(metrics["clip_pretrained"])
    checkpoint = workdir / Path(pretrained).expanduser()
    is_file = os.sep in pretrained or checkpoint.suffix in (".bin", ".pt", ".pth", ".safetensors")
    if name == TOY_CLIP:
        yield "metrics.clip_model: toy-clip is the toy world's, trained only for model: toy: use ViT-L-14 (openai)"
    elif name.endswith(".json"):  # an open_clip model config of one's own: needs a checkpoint file
        if not {"embed_dim", "vision_cfg", "text_cfg"} <= set(_json_keys(workdir / name)):
            yield f"metrics.clip_model: {name} is no open_clip model config (embed_dim, vision_cfg, text_cfg): fix it"
        if not checkpoint.is_file():
            yield f"metrics.clip_pretrained: {pretrained} is no file; a model config of your own needs its checkpoint"
    elif is_file:
        if not checkpoint.is_file():
            yield f"metrics.clip_pretrained: {pretrained} does not exist: fix the path, or give an open_clip tag"
    else:
        yield from _clip_tag(name, pretrained)


def _json_keys(path: Path) -> list[str]:
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):  # missing, unreadable or not JSON
        return []


def _clip_tag(name: str, tag: str) -> Iterator[str | _Download]:
    """An open_clip model with a pretrained tag: where open_clip downloads it to (it prefers the hub)."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if name not in open_clip.list_models():
        yield f"metrics.clip_model: {name!r} is no open_clip model (open_clip.list_models()): e.g. ViT-L-14"
        return
    source = open_clip.get_pretrained_cfg(name, tag)
    if not source:
        tags = open_clip.list_pretrained_tags_by_model(name)
        yield f"metrics.clip_pretrained: {tag!r} is no open_clip tag of {name}: use one of {tags} or a checkpoint file"
    elif source.get("hf_hub"):
        repo, filename = os.path.split(source["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        names = [filename, HF_SAFE_WEIGHTS_NAME, str(Path(filename).with_suffix(".safetensors"))]
        if not any(_hf_cached(repo, f) for f in names):
            yield from _from_hub("metrics.clip_pretrained", f"{name} {tag} ({repo})", repo, filename,
                                 f"run `hf download {repo} {filename}` with network, or set it to a checkpoint file")
    elif not (path := Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(source["url"])).is_file():
        url = source["url"]
        yield _Download(f"metrics.clip_pretrained: {name} {tag} is not at {path}",
                        f"download {url} there, or set clip_pretrained to a local checkpoint file",
                        lambda timeout: _url_answers(url, timeout))


def _devices(config: dict, metrics: dict) -> Iterator[str]:
    for key, device in (("compute.device", (config.get("compute") or {}).get("device")),
                        ("metrics.device", metrics.get("device"))):
        if not str(device).startswith("cuda"):
            continue  # "auto" falls back to the CPU; "cpu" needs nothing
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
            yield f"{key}: {device}, but {why}: run on a GPU machine (check CUDA_VISIBLE_DEVICES), or set it to auto"
        elif index >= torch.cuda.device_count():
            yield f"{key}: {device}, but only {torch.cuda.device_count()} CUDA device(s) are visible: pick one of them"
