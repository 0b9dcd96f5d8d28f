"""Streaming range observers for activations: each keeps a few numbers (or one histogram), never the
activations, so calibration memory does not grow with prompts x steps.

- minmax: the extreme values seen.
- ema: min and max of each batch, averaged with momentum (the reference code's observer).
- percentile: the [100 - p, p] percentiles of a streaming histogram.
- mse: the clipping range that minimises the squared quantization error over a streaming histogram.
"""

from __future__ import annotations

import math

import torch

from pcr.quant.quantizer import affine_params, qrange

__all__ = ["MinMaxObserver", "EMAObserver", "HistogramObserver", "make_observer"]


class MinMaxObserver:
    def __init__(self):
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def update(self, x: torch.Tensor, weight: float = 1.0) -> None:
        lo, hi = torch.aminmax(x.detach())
        lo, hi = lo.float(), hi.float()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None:
            raise RuntimeError("The observer saw no data: the layer was never called during calibration.")
        return self.lo, self.hi

    def extremes(self) -> torch.Tensor:
        """(lo, hi) of what it tracks, NaN or inf once the data was (pcr.quant.integrity checks it per call)."""
        return torch.zeros(2) if self.lo is None else torch.stack([self.lo, self.hi])


class EMAObserver(MinMaxObserver):
    """Per-batch extremes, averaged: new = m * old + (1 - m) * batch (a weight w counts as w batches)."""

    def __init__(self, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum

    def update(self, x: torch.Tensor, weight: float = 1.0) -> None:
        lo, hi = torch.aminmax(x.detach())
        lo, hi = lo.float(), hi.float()
        if self.lo is None:
            self.lo, self.hi = lo, hi
            return
        keep = self.momentum**weight
        self.lo = keep * self.lo + (1 - keep) * lo
        self.hi = keep * self.hi + (1 - keep) * hi


class HistogramObserver:
    """A histogram whose range grows with the data; old counts are spread over the new bins by
    interpolating their cumulative distribution, so it never needs the old samples."""

    def __init__(self, mode: str = "mse", bins: int = 2048, percentile: float = 99.99, grid: int = 64):
        self.mode, self.bins, self.percentile, self.grid = mode, bins, percentile, grid
        self.hist: torch.Tensor | None = None  # float64 counts
        self.lo = self.hi = 0.0
        self.finite = True  # False once it saw NaN or inf: lo, hi keep them, the histogram stops

    def update(self, x: torch.Tensor, weight: float = 1.0) -> None:
        x = x.detach().float().flatten()
        lo, hi = (v.item() for v in torch.aminmax(x))
        if not self.finite or not math.isfinite(lo) or not math.isfinite(hi):
            # NaN or inf cannot be binned; kept as the range, the per-call check names the layer and call
            if self.finite:
                self.lo, self.hi, self.finite = lo, hi, False
            return
        if self.hist is None:
            self.lo, self.hi = lo, hi if hi > lo else lo + 1e-8
            self.hist = torch.zeros(self.bins, dtype=torch.float64, device=x.device)
        elif lo < self.lo or hi > self.hi:
            # grow with a margin, so a slowly widening range does not re-bin (and blur) at every batch
            margin = 0.25 * (max(hi, self.hi) - min(lo, self.lo))
            self._rebin(lo - margin if lo < self.lo else self.lo, hi + margin if hi > self.hi else self.hi)
        self.hist += torch.histc(x, self.bins, self.lo, self.hi).double() * weight

    def _edges(self, lo: float, hi: float) -> torch.Tensor:
        return torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64, device=self.hist.device)

    def _rebin(self, lo: float, hi: float) -> None:
        old_edges = self._edges(self.lo, self.hi)
        cdf = torch.cat([self.hist.new_zeros(1), self.hist.cumsum(0)])
        new_cdf = _interp(self._edges(lo, hi), old_edges, cdf)
        self.hist = new_cdf.diff()
        self.lo, self.hi = lo, hi

    def extremes(self) -> torch.Tensor:
        """(lo, hi) of the histogram, NaN or inf once the data was (pcr.quant.integrity checks it per call)."""
        return torch.tensor([self.lo, self.hi])

    def range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.finite:
            return torch.tensor(self.lo), torch.tensor(self.hi)
        if self.hist is None:
            raise RuntimeError("The observer saw no data: the layer was never called during calibration.")
        if self.mode == "percentile":
            edges = self._edges(self.lo, self.hi)
            cdf = torch.cat([self.hist.new_zeros(1), self.hist.cumsum(0)])
            q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=torch.float64,
                             device=cdf.device) * cdf[-1]
            lo, hi = _interp(q, cdf, edges)
            return lo.float(), hi.float()
        return self._mse_range(bits, symmetric)

    def _mse_range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Search shrunk ranges, each scored by quantizing every bin centre exactly: rounding error inside
        the range and clipping error outside. (The usual step^2 / 12 estimate of rounding error overrates
        it for peaked activations, whose mass sits at 0, which is exact, and picks ranges too narrow at
        4 bits.) Both ends shrink together first, then each end alone in turn, with the other fixed."""
        edges = self._edges(self.lo, self.hi).float()
        centers, counts = (edges[1:] + edges[:-1]) / 2, self.hist.float()
        qmin, qmax = qrange(bits, symmetric)

        def errors(lo_c: torch.Tensor, hi_c: torch.Tensor) -> torch.Tensor:
            scale, zero_point = affine_params(lo_c, hi_c, bits, symmetric)
            scale, zero_point = scale[:, None], zero_point[:, None]
            codes = torch.clamp(torch.round(centers[None, :] * (1.0 / scale)) + zero_point, qmin, qmax)
            return (((codes - zero_point) * scale - centers[None, :]) ** 2 * counts[None, :]).sum(1)

        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)  # quantizer ranges always hold 0
        shrink = torch.linspace(1.0, 1.0 / self.grid, self.grid, device=counts.device)
        if symmetric:
            top = max(-lo, hi) * shrink
            best = int(errors(-top, top).argmin())
            return -top[best], top[best]
        best = int(errors(lo * shrink, hi * shrink).argmin())
        lo_best, hi_best = lo * shrink[best], hi * shrink[best]
        for _ in range(2):
            lo_best = (lo * shrink)[int(errors(lo * shrink, torch.full_like(shrink, float(hi_best))).argmin())]
            hi_best = (hi * shrink)[int(errors(torch.full_like(shrink, float(lo_best)), hi * shrink).argmin())]
        return lo_best, hi_best


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """numpy.interp for increasing ``xp`` (flat beyond the ends)."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((x - x0) / (x1 - x0).clamp(min=1e-300)).clamp(0, 1)
    return f0 + t * (f1 - f0)


def make_observer(name: str, momentum: float = 0.9, percentile: float = 99.99):
    """A fresh observer by name: minmax, ema, percentile, mse."""
    if name == "minmax":
        return MinMaxObserver()
    if name == "ema":
        return EMAObserver(momentum)
    if name in ("percentile", "mse"):
        return HistogramObserver(mode=name, percentile=percentile)
    raise ValueError(f"Unknown observer {name!r}; use minmax, ema, percentile or mse.")
