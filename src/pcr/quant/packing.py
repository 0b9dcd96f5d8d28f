"""Weight codes of 4 bits or fewer, packed two per byte: in a params file and in an integer-backend model.

A code is stored as its offset from the grid's lowest code (code - qmin, 0..15), per output channel
row: byte j of a row holds codes 2j (low nibble) and 2j + 1 (high nibble); an odd row length ends in
a zero nibble. Rows are packed separately so a per-channel slice stays a slice.
"""

from __future__ import annotations

import math
import sys

import torch

from pcr.quant.quantizer import code_dtype, qrange

__all__ = ["PACKED_BITS", "packable", "pack_codes", "unpack_codes", "unpack_centred"]

PACKED_BITS = 4  # codes of at most this many bits are packed two per byte
_LITTLE_ENDIAN = sys.byteorder == "little"


def packable(bits: int) -> bool:
    return bits <= PACKED_BITS


def pack_codes(codes: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """uint8 (rows, ceil(inner / 2)) of codes (rows, ...) at ``bits`` <= 4."""
    if not packable(bits):
        raise ValueError(f"only codes of at most {PACKED_BITS} bits pack two per byte, not {bits}")
    qmin, _ = qrange(bits, symmetric)
    rows = codes.reshape(codes.shape[0], -1).to(torch.int16) - qmin
    if rows.shape[1] % 2:
        rows = torch.nn.functional.pad(rows, (0, 1))
    low, high = rows[:, 0::2], rows[:, 1::2]
    return (low | (high << 4)).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], bits: int, symmetric: bool) -> torch.Tensor:
    """The codes ``pack_codes`` packed, in their shape and ``code_dtype``."""
    qmin, _ = qrange(bits, symmetric)
    inner = math.prod(shape[1:])
    expected = (shape[0], (inner + 1) // 2)
    if tuple(packed.shape) != expected or packed.dtype != torch.uint8:
        raise ValueError(f"packed codes of shape {tuple(packed.shape)} ({packed.dtype}) cannot hold codes of shape "
                         f"{tuple(shape)}: expected uint8 {expected}")
    offset = torch.full((shape[0], 1), qmin, dtype=torch.int8, device=packed.device)
    return unpack_centred(packed, inner, offset).to(code_dtype(bits, symmetric)).reshape(shape)


def unpack_centred(packed: torch.Tensor, inner: int, offset: torch.Tensor) -> torch.Tensor:
    """int8 (rows, inner) of nibble + offset per row: with ``offset = qmin - zero point`` (int8 (rows, 1)),
    each code minus its zero point, as the integer kernels take it (|value| <= 15). Done per call by a
    model that keeps its 4-bit weights packed: both nibbles of a byte land in one int16 (its two bytes)."""
    wide = packed.to(torch.int16)  # low nibble into the low byte, high nibble into the high byte
    pairs = (wide & 15).bitwise_or_((wide & 0xF0) << 4)
    bytes_ = pairs.view(torch.int8) if _LITTLE_ENDIAN else pairs.view(torch.int8).view(-1, 2).flip(1)
    return bytes_.reshape(packed.shape[0], -1)[:, :inner].add_(offset)
