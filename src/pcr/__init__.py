"""pcr: post-training quantization of text-to-image diffusion models (PCR and QDiffBench)."""

__version__ = "0.1.0"
