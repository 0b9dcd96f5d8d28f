"""Streaming observers: right ranges from batches, without keeping the batches."""

import numpy as np
import pytest
import torch

from pcr.calibrate.observers import EMAObserver, HistogramObserver, MinMaxObserver, make_observer
from pcr.quant.quantizer import affine_params, fake_quantize


def batches(seed=0, n=6):
    gen = torch.Generator().manual_seed(seed)
    # heavy-tailed, asymmetric, widening from batch to batch: re-binning must cope
    return [torch.randn(4000, generator=gen).pow(3) * (1 + i / 3) + 0.5 for i in range(n)]


def test_minmax_is_the_extremes():
    obs = MinMaxObserver()
    data = batches()
    for x in data:
        obs.update(x)
    everything = torch.cat(data)
    lo, hi = obs.range(8, False)
    assert lo == everything.min() and hi == everything.max()


def test_ema_follows_the_batches_with_momentum():
    obs = EMAObserver(momentum=0.5)
    obs.update(torch.tensor([0.0, 4.0]))
    obs.update(torch.tensor([-2.0, 2.0]))
    lo, hi = obs.range(8, False)
    assert lo.item() == pytest.approx(-1.0) and hi.item() == pytest.approx(3.0)
    weighted = EMAObserver(momentum=0.5)
    weighted.update(torch.tensor([0.0, 4.0]))
    weighted.update(torch.tensor([-2.0, 2.0]), weight=2)  # counts as two batches
    assert weighted.range(8, False)[1].item() == pytest.approx(2.5)


def test_histogram_percentiles_match_the_exact_ones():
    obs = HistogramObserver(mode="percentile", percentile=99.0)
    data = batches()
    for x in data:
        obs.update(x)
    everything = torch.cat(data).numpy()
    lo, hi = obs.range(8, False)
    exact_lo, exact_hi = np.percentile(everything, [1.0, 99.0])
    width = everything.max() - everything.min()
    assert abs(lo.item() - exact_lo) < 0.01 * width and abs(hi.item() - exact_hi) < 0.01 * width


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_mse_range_beats_minmax_and_nearby_ranges(bits, symmetric):
    data = batches()
    everything = torch.cat(data)
    obs = HistogramObserver(mode="mse")
    for x in data:
        obs.update(x)

    def error(lo, hi):
        scale, zp = affine_params(torch.as_tensor(lo), torch.as_tensor(hi), bits, symmetric)
        return (fake_quantize(everything, scale, zp, bits, symmetric) - everything).pow(2).mean().item()

    lo, hi = obs.range(bits, symmetric)
    best = error(lo, hi)
    assert best < error(everything.min(), everything.max())  # clipping the heavy tails pays
    for factor in (0.8, 1.25):  # and the search found (about) the optimum, not just something smaller
        assert best <= 1.05 * error(lo * factor, hi * factor)


def test_histogram_memory_is_fixed():
    obs = make_observer("mse")
    for x in batches(n=3):
        obs.update(x)
    size = obs.hist.numel()
    for x in batches(seed=1, n=10):
        obs.update(x * 3)
    assert obs.hist.numel() == size
    assert obs.hist.sum().item() == pytest.approx(13 * 4000)


def test_unknown_observer_and_empty_observer_are_errors():
    with pytest.raises(ValueError, match="Unknown observer"):
        make_observer("kl")
    with pytest.raises(RuntimeError, match="saw no data"):
        make_observer("minmax").range(8, False)
