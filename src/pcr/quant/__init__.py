"""Simulated quantization of diffusers UNets: config, quantizers, quantized layers, saved parameters."""

from pcr.quant.config import ConfigError, QuantConfig
from pcr.quant.model import is_quantized, quant_layers, quant_mode, quantize_unet, unquantize_unet
from pcr.quant.params import ParamsMismatchError, QuantParams, load_params, quantize, save_params

__all__ = [
    "ConfigError", "ParamsMismatchError", "QuantConfig", "QuantParams", "is_quantized", "load_params",
    "quant_layers", "quant_mode", "quantize", "quantize_unet", "save_params", "unquantize_unet",
]
