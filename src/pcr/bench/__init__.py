"""QDiffBench: prompt sets and splits, seeded sharded generation, metrics and cost accounting."""

from pcr.bench.cost import cost_report, layer_macs, unet_example_inputs
from pcr.bench.features import ClipScorer, create_extractor, load_clip_scorer, register_toy_clip_extractor
from pcr.bench.generate import GenerationError, generate, image_name, merge_manifests, read_manifest
from pcr.bench.metrics import MetricsConfig, bootstrap_interval, evaluate, paired_psnr_ssim, read_metrics, write_metrics
from pcr.bench.prompts import PromptOverlapError, PromptSet, check_disjoint, load_prompts, prompts_digest

__all__ = [
    "ClipScorer",
    "GenerationError",
    "MetricsConfig",
    "PromptOverlapError",
    "PromptSet",
    "bootstrap_interval",
    "check_disjoint",
    "cost_report",
    "create_extractor",
    "evaluate",
    "generate",
    "image_name",
    "layer_macs",
    "load_clip_scorer",
    "load_prompts",
    "merge_manifests",
    "paired_psnr_ssim",
    "prompts_digest",
    "read_manifest",
    "read_metrics",
    "register_toy_clip_extractor",
    "unet_example_inputs",
    "write_metrics",
]
