"""pcr: post-training quantization of text-to-image diffusion models (PCR and QDiffBench)."""

__version__ = "0.1.0"
__all__ = ["quantize", "calibrate"]


def __getattr__(name: str):
    # Lazy, so `import pcr` stays light for tools that only read configs or results.
    if name == "quantize":
        from pcr.quant.params import quantize

        return quantize
    if name == "calibrate":
        import pcr.calibrate

        return pcr.calibrate
    raise AttributeError(f"module 'pcr' has no attribute {name!r}")
