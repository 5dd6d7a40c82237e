"""A transposed convolution with nn.ConvTranspose2d's parameters and a faster CPU training path.

Two behaviours of oneDNN's deconvolution kernels make the stock layer slow to train on a CPU
(measured on a 2-core AVX512-BF16 machine with PyTorch 2.13, batch 128, bf16;
``bench/transposed_conv.py``, BENCHMARKS.md):

* its weight-gradient kernel runs more than twice as slow when it is also asked for the bias
  gradient (5.4 ms against 2.5 ms for the decoder's 32→64 layer), while the bias gradient on
  its own is a 0.1 ms sum of the output gradient;
* its forward pass is slow when the layer has very few output channels: the decoder's last
  layer (64→1) takes 4.7 ms, against 2.0 ms for the same numbers computed as one stride-1 2×2
  convolution into four times the channels followed by a pixel shuffle (the "sub-pixel" form).

:class:`ConvTranspose2d` keeps the stock module's parameters and state-dict keys, so saved
models are unchanged. On a CPU it computes the bias gradient with a separate sum and, for the
4×4 stride-2 padding-1 layers vqkit uses, takes the sub-pixel forward when there are at most
:data:`SUB_PIXEL_MAX_OUT_CHANNELS` output channels. Under ``torch.compile`` the same path is
traced (compiled training is otherwise slower: inductor calls the same bias-fused kernel). On
CUDA, and for grouped, dilated or output-padded layers, it is the stock layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Measured crossover of the sub-pixel forward against oneDNN's deconvolution (64 input
# channels, 14×14 input, bf16): 2.0 against 4.8 ms for 1 output channel, 3.3 against 4.7 for 3,
# 4.5 against 4.7 for 8, and 5.1 against 2.3 for 64.
SUB_PIXEL_MAX_OUT_CHANNELS = 4


def sub_pixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 4×4 stride-2 transposed convolution's weight (C_in, C_out, 4, 4) as the weight of a
    stride-1 2×2 convolution into 4·C_out channels, ordered (C_out, row phase, column phase)
    as ``pixel_shuffle`` expects.

    Output row 2P + a - 1 of the transposed convolution (padding 1) sums input rows P - m
    times kernel row 2m + a for m in {0, 1}; over the input padded by one, conv tap s reads
    input row P + s - 1, so tap s holds kernel row 2(1 - s) + a: the taps are flipped.
    """
    c_in, c_out = weight.shape[:2]
    taps = weight.view(c_in, c_out, 2, 2, 2, 2).flip(2, 4)  # (ci, co, s, a, s', c)
    return taps.permute(1, 3, 5, 0, 2, 4).reshape(4 * c_out, c_in, 2, 2)


def sub_pixel_conv_transpose(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2, padding=1)`` for 4×4 kernels, computed
    as a 2×2 convolution into every output phase, a pixel shuffle and a one-pixel crop."""
    phase_bias = None if bias is None else bias.repeat_interleave(4)
    phases = F.conv2d(x, sub_pixel_weight(weight), phase_bias, padding=1)
    return F.pixel_shuffle(phases, 2)[:, :, 1:-1, 1:-1]


class _ConvTranspose(torch.autograd.Function):
    """Forward as given; backward with the bias gradient taken apart from oneDNN's kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, sub_pixel):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        if sub_pixel:
            return sub_pixel_conv_transpose(x, weight, bias)
        return F.conv_transpose2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            None,
            list(ctx.stride),
            list(ctx.padding),
            [1, 1],
            True,
            [0, 0],
            1,
            [need_x, need_weight, False],
        )
        grad_bias = grad.sum((0, 2, 3)) if need_bias else None
        return grad_x, grad_weight, grad_bias, None, None, None


def _autocast_inputs(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Cast fp32 tensors to CPU autocast's dtype, as autocast would before a convolution."""
    if not torch.is_autocast_enabled("cpu"):
        return list(tensors)
    dtype = torch.get_autocast_dtype("cpu")
    return [t.to(dtype) if t is not None and t.dtype == torch.float32 else t for t in tensors]


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with the faster CPU training path described in the module doc."""

    def _takes_fast_path(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.output_padding == (0, 0)
            and self.padding_mode == "zeros"
        )

    def _sub_pixel_fits(self) -> bool:
        return (
            self.kernel_size == (4, 4)
            and self.stride == (2, 2)
            and self.padding == (1, 1)
            and self.out_channels <= SUB_PIXEL_MAX_OUT_CHANNELS
        )

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not self._takes_fast_path(x):
            return super().forward(x, output_size)
        x, weight, bias = _autocast_inputs(x, self.weight, self.bias)
        with torch.autocast("cpu", enabled=False):
            return _ConvTranspose.apply(
                x, weight, bias, self.stride, self.padding, self._sub_pixel_fits()
            )
