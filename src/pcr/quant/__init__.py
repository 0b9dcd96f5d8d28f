"""Quantization of diffusers UNets: config, quantizers, quantized layers, saved parameters, and the
integer backend (int8 kernels, float weights released).

Names are imported lazily, so `pcr.quant.config` (pure Python) can be read without torch: the
workflow plans its DAG with QuantConfig.
"""

import importlib

_MODULES = {
    "config": ("BACKENDS", "ConfigError", "QuantConfig"),
    "model": ("is_quantized", "quant_layers", "quant_mode", "quantize_unet", "unquantize_unet"),
    "integrity": ("NonFiniteError", "ParamsFileError"),
    "freeze": ("freeze_integer", "weight_bytes"),
    "params": ("ParamsMismatchError", "QuantParams", "load_params", "params_digest", "quantize", "save_params"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pcr.quant' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pcr.quant.{_WHERE[name]}"), name)


def __dir__():
    return __all__
