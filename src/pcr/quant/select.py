"""Which UNet layers are quantized: every nn.Linear and nn.Conv2d whose name no keep_fp pattern matches."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

__all__ = ["QUANTIZABLE", "quantizable_layers"]

QUANTIZABLE = (nn.Linear, nn.Conv2d)


def quantizable_layers(model: nn.Module, keep_fp: tuple[str, ...] = ("conv_in", "conv_out")) -> dict[str, nn.Module]:
    """{name: module} of the Linear/Conv2d layers of ``model`` to quantize, in module order.

    ``keep_fp`` holds fnmatch patterns matched against full module names ("conv_in",
    "*.attn2.to_k"). A pattern that matches no Linear/Conv2d layer is an error, since a typo would
    otherwise silently quantize the layer it meant to keep.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}
    unused = [p for p in keep_fp if not any(fnmatchcase(name, p) for name in layers)]
    if unused:
        raise ValueError(f"keep_fp pattern(s) {unused} match no Linear/Conv2d layer of the "
                         f"{type(model).__name__}; layer names look like {list(layers)[:3]}")
    return {name: m for name, m in layers.items() if not any(fnmatchcase(name, p) for p in keep_fp)}

