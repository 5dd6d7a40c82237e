"""The faster transposed convolution gives the stock layer's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqkit.config import preset_config
from vqkit.fast_conv import ConvTranspose2d, sub_pixel_conv_transpose
from vqkit.model import VQVAE


def stock_and_fast(c_in: int, c_out: int, bias: bool, **kwargs) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    stock = nn.ConvTranspose2d(c_in, c_out, bias=bias, **kwargs).double()
    fast = ConvTranspose2d(c_in, c_out, bias=bias, **kwargs).double()
    fast.load_state_dict(stock.state_dict())
    return stock, fast


def output_and_grads(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    if isinstance(layer, ConvTranspose2d):  # the CPU fast path was taken, not the stock layer
        assert type(out.grad_fn).__name__ == "_ConvTransposeBackward"
    out.backward(grad)
    return [out.detach(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize(
    ("c_in", "c_out", "size", "bias"),
    [(64, 1, 14, True), (3, 4, 5, True), (32, 64, 7, True), (8, 5, 6, False), (2, 3, 1, True)],
)
def test_stride2_layers_match_the_stock_layer_in_float64(c_in, c_out, size, bias):
    stock, fast = stock_and_fast(c_in, c_out, bias, kernel_size=4, stride=2, padding=1)
    x = torch.randn(3, c_in, size, size, dtype=torch.float64)
    grad = torch.randn(3, c_out, 2 * size, 2 * size, dtype=torch.float64)
    pairs = zip(output_and_grads(stock, x, grad), output_and_grads(fast, x, grad), strict=True)
    for expected, got in pairs:
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_other_shapes_take_the_bias_separated_backward_and_still_match():
    stock, fast = stock_and_fast(4, 2, True, kernel_size=3, stride=1, padding=1)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    grad = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    pairs = zip(output_and_grads(stock, x, grad), output_and_grads(fast, x, grad), strict=True)
    for expected, got in pairs:
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "geometry",
    [
        {"stride": 2, "padding": 0},
        {"stride": 2, "padding": 2},
        {"stride": 1, "padding": 1},
        {"stride": 2, "padding": 1, "dilation": 2},
    ],
)
def test_four_by_four_layers_with_one_output_channel_match_the_stock_layer_at_any_geometry(
    geometry,
):
    # The sub-pixel form only holds for stride 2, padding 1, no dilation; a 4x4 layer with
    # few output channels and any other geometry must still give the stock layer's numbers.
    stock, fast = stock_and_fast(3, 1, True, kernel_size=4, **geometry)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    results = []
    for layer in (stock, fast):
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        out.backward(torch.ones_like(out))
        results.append([out.detach(), inputs.grad] + [p.grad for p in layer.parameters()])
    for expected, got in zip(*results, strict=True):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_sub_pixel_form_equals_the_transposed_convolution_formula():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)  # non-square input too
    weight = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    expected = F.conv_transpose2d(x, weight, bias, stride=2, padding=1)
    torch.testing.assert_close(sub_pixel_conv_transpose(x, weight, bias), expected)


def test_under_bf16_autocast_it_computes_in_bf16_and_returns_fp32_parameter_gradients():
    stock, fast = stock_and_fast(16, 1, True, kernel_size=4, stride=2, padding=1)
    stock.float(), fast.float()
    x = torch.randn(4, 16, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = stock(x), fast(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)
    got.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())


def test_saved_weights_keep_the_stock_layer_names():
    stock, fast = stock_and_fast(4, 2, True, kernel_size=4, stride=2, padding=1)
    assert list(fast.state_dict()) == list(stock.state_dict()) == ["weight", "bias"]


def test_gradients_pass_a_finite_difference_check():
    torch.manual_seed(2)
    layer = ConvTranspose2d(3, 2, 4, 2, 1).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: layer(a), (x,))
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()

    def through_the_layer(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(layer, {"weight": w, "bias": b}, (x.detach(),))
        assert type(out.grad_fn).__name__ == "_ConvTransposeBackward"
        return out

    assert torch.autograd.gradcheck(through_the_layer, (weight, bias))


@pytest.mark.parametrize("hidden", [1, 4])
def test_a_narrow_decoder_trains_through_its_in_place_relu(hidden):
    # Its first transposed convolution (hidden <= 4 output channels) took the sub-pixel path,
    # whose cropped output was a view: the in-place ReLU after it raised in the first step.
    config = preset_config("efficient").model
    config.hidden_dim = hidden
    model = VQVAE(config)
    out = model(torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8))
    (out.reconstruction.mean() + out.vq_loss).backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
