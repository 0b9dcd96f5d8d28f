"""Where each result lives (literal results/ paths: the workflow's rules write the same patterns)."""

from __future__ import annotations

__all__ = ["calib_cost", "calib_params", "figure", "images", "manifest", "metrics_file", "prompt_file",
           "weights_file"]


def prompt_file(pset: str) -> str:
    return f"results/prompts/{pset}.json"


def weights_file(wkey: str) -> str:
    return f"results/calib/weights/{wkey}.safetensors"


def calib_params(variant: str, setting: str) -> str:
    return f"results/calib/{variant}/{setting}.safetensors"


def calib_cost(variant: str, setting: str) -> str:
    return f"results/calib/{variant}/{setting}.cost.json"


def images(variant: str, setting: str, pset: str) -> str:
    return f"results/images/{variant}/{setting}/{pset}"


def manifest(variant: str, setting: str, pset: str) -> str:
    return f"{images(variant, setting, pset)}/manifest.csv"


def metrics_file(variant: str, setting: str, pset: str) -> str:
    return f"results/metrics/{variant}/{setting}/{pset}.json"


def figure(stem: str) -> list[str]:
    return [f"{stem}.png", f"{stem}.pdf"]
