"""QDiffBench: prompt sets and splits, seeded sharded generation, metrics and cost accounting.

Names are imported lazily: a workflow step that reads prompts should not pay for torch-fidelity,
open_clip and diffusers (seconds per job, times ~70 jobs in the default run).
"""

import importlib

_MODULES = {
    "cost": ("cost_report", "layer_macs", "unet_example_inputs"),
    "features": ("ClipScorer", "create_extractor", "load_clip_scorer", "register_toy_clip_extractor"),
    "generation": ("GenerationError", "collect_shards", "generate", "image_name", "merge_manifests", "read_manifest"),
    "metrics": ("MetricsConfig", "bootstrap_interval", "evaluate", "paired_psnr_ssim", "read_metrics",
                "write_metrics"),
    "prompts": ("PromptOverlapError", "PromptSet", "check_disjoint", "load_prompts", "prompts_digest",
                "read_prompt_set", "write_prompt_set"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pcr.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pcr.bench.{_WHERE[name]}"), name)


def __dir__():
    return __all__
