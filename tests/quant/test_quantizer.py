"""Quantize-dequantize agrees bit for bit with PyTorch's fake-quantize kernels."""

import pytest
import torch

from pcr.quant.quantizer import affine_params, code_dtype, dequantize, fake_quantize, qrange, quantize

BITS = [2, 4, 6, 8, 10, 16]


@pytest.fixture
def x():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, 9, 3, 3, generator=gen) * 2 + 0.3


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("bits", BITS)
def test_per_tensor_matches_torch(x, bits, symmetric):
    scale, zero_point = affine_params(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    reference = torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zero_point.reshape(1), qmin, qmax)
    codes = quantize(x, scale, zero_point, bits, symmetric)
    assert codes.dtype == code_dtype(bits, symmetric)
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert torch.equal(dequantize(codes, scale, zero_point), reference)
    assert torch.equal(fake_quantize(x, scale, zero_point, bits, symmetric), reference)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("bits", BITS)
def test_per_channel_matches_torch(x, bits, symmetric):
    flat = x.reshape(32, -1)
    scale, zero_point = affine_params(flat.amin(1), flat.amax(1), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    reference = torch.fake_quantize_per_channel_affine(x, scale, zero_point, 0, qmin, qmax)
    codes = quantize(x, scale, zero_point, bits, symmetric, axis=0)
    assert torch.equal(dequantize(codes, scale, zero_point, axis=0), reference)
    assert torch.equal(fake_quantize(x, scale, zero_point, bits, symmetric, axis=0), reference)


def test_error_shrinks_with_bits(x):
    errors = []
    for bits in BITS:
        scale, zero_point = affine_params(x.min(), x.max(), bits, False)
        errors.append((fake_quantize(x, scale, zero_point, bits, False) - x).abs().max().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3


def test_zero_is_exact_and_degenerate_ranges_do_not_divide_by_zero():
    scale, zero_point = affine_params(torch.tensor(0.5), torch.tensor(2.0), 8, False)  # range widened to 0
    assert fake_quantize(torch.zeros(3), scale, zero_point, 8, False).abs().max() == 0
    scale, zero_point = affine_params(torch.tensor(0.0), torch.tensor(0.0), 8, False)
    assert torch.isfinite(scale) and scale > 0
    assert torch.equal(fake_quantize(torch.zeros(4), scale, zero_point, 8, False), torch.zeros(4))


def test_gradient_path_is_straight_through_and_equal(x):
    scale, zero_point = affine_params(x.min() / 2, x.max() / 2, 4, False)
    x = x.clone().requires_grad_()
    out = fake_quantize(x, scale, zero_point, 4, False)
    with torch.no_grad():
        assert torch.equal(out, fake_quantize(x, scale, zero_point, 4, False))
    out.sum().backward()
    inside = (x > x.min() / 2) & (x < x.max() / 2)
    assert torch.all(x.grad[inside] == 1) and torch.all(x.grad[~inside.detach()].abs() <= 1)


def test_half_inputs_stay_half_and_sixteen_bit_codes_do_not_overflow(x):
    scale, zero_point = affine_params(x.min(), x.max(), 16, False)
    out = fake_quantize(x.half(), scale, zero_point, 16, False)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), x, atol=2e-2, rtol=1e-3)
