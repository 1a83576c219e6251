"""Causal depthwise conv over time followed by SiLU: the conv of Mamba-1 and Mamba-2 blocks.

``causal_conv_silu`` runs the compiled CPU kernel (``recbole_hydra/csrc/causal_conv_silu.cpp``)
when kernels are enabled and it builds, else ``_CausalConvSiLU`` (PyTorch ops). Both take
channels last, ``x (b, l, *channels)``, as the blocks' input projections produce them (strided
views: no copy).
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels

__all__ = ["causal_conv_silu"]


def causal_conv_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``SiLU(bias + sum_k weight[..., k] x_{t - (K-1) + k})`` with ``x_s = 0`` before the start:
    ``x (b, l, *channels)`` (any strides, at most two channel dimensions for the kernel),
    ``weight (*channels, K)``, ``bias (*channels)`` or ``None``."""
    if bias is None:
        bias = weight.new_zeros(weight.shape[:-1])
    module = kernels.cpu_kernels(x)
    if module is not None and x.dim() <= 4:
        return _CausalConvSiLUCpu.apply(x, weight, bias, module)
    return _CausalConvSiLU.apply(x, weight, bias)


class _CausalConvSiLU(torch.autograd.Function):
    """``SiLU(bias + sum_k w_k x_{t - (K-1) + k})``: causal depthwise conv over time, then SiLU.

    ``x (b, l, *channels)`` (any strides), ``weight (*channels, K)``, ``bias (*channels)``. Channels
    stay last (no transposes): x is copied once, left-padded with K-1 zeros, and every tap is a
    multiply-add of a shifted full-length view of that copy. Written out by hand because the same
    ops under autograd allocate a tensor of x's size per op, and on CPU these (the B and C
    channels: 2 * ngroups * d_state per token) are the largest tensors of the block.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        width, length = weight.shape[-1], x.shape[1]
        padded = x.new_empty(x.shape[0], length + width - 1, *x.shape[2:])
        padded[:, : width - 1] = 0.0
        padded[:, width - 1 :] = x
        pre = torch.addcmul(bias, padded[:, :length], weight[..., 0])
        for k in range(1, width):
            pre.addcmul_(padded[:, k : k + length], weight[..., k])  # tap k reads x_{t - (K-1) + k}
        ctx.save_for_backward(padded, weight, pre)
        return F.silu(pre)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        padded, weight, pre = ctx.saved_tensors
        width, length = weight.shape[-1], pre.shape[1]
        channels = pre.shape[2:]
        # gradient w.r.t. pre-activations, right-padded with K-1 zeros for the transposed conv
        grad_pre_padded = pre.new_empty(pre.shape[0], length + width - 1, *channels)
        grad_pre_padded[:, length:] = 0.0
        grad_pre = grad_pre_padded[:, :length]
        torch.ops.aten.silu_backward.grad_input(grad_out, pre, grad_input=grad_pre)
        scratch = torch.empty_like(pre)
        grad_weight = torch.empty_like(weight)
        for k in range(width):  # dL/dw_k = sum over (b, t) of grad_pre_t * x_{t - (K-1) + k}
            torch.mul(grad_pre, padded[:, k : k + length], out=scratch)
            grad_weight[..., k] = scratch.view(-1, *channels).sum(0)
        # dL/dx_t = sum_k w_k grad_pre_{t + (K-1) - k}: the conv transposed
        grad_x = torch.mul(grad_pre_padded[:, width - 1 :], weight[..., 0], out=scratch)
        for k in range(1, width):
            grad_x.addcmul_(
                grad_pre_padded[:, width - 1 - k : width - 1 - k + length], weight[..., k]
            )
        grad_bias = grad_pre_padded.view(-1, *channels).sum(0)  # (the padding adds zeros)
        return grad_x, grad_weight, grad_bias


class _CausalConvSiLUCpu(torch.autograd.Function):
    """``_CausalConvSiLU`` by the compiled CPU kernel (``recbole_hydra/csrc/causal_conv_silu.cpp``):
    one pass over memory per direction instead of one per tap and op, and only x is kept for
    backward (the pre-activations are recomputed there). ``kernels_module``: the compiled module."""

    @staticmethod
    @kernels.float32_under_autocast
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, kernels_module) -> Tensor:
        lead = x.shape[:2]
        x4 = x if x.dim() == 4 else x.reshape(*lead, 1, -1)  # (b, l, groups, channels)
        if x4.stride(-1) != 1:
            x4 = x4.contiguous()
        weight_kc = (
            weight.reshape(*x4.shape[2:], -1).transpose(-1, -2).contiguous()
        )  # (groups, K, channels)
        bias4 = bias.reshape(x4.shape[2:]).contiguous()
        ctx.save_for_backward(x4, weight_kc, bias4)
        ctx.kernels_module, ctx.x_shape, ctx.weight_shape = kernels_module, x.shape, weight.shape
        return kernels_module.causal_conv_silu_forward(x4, weight_kc, bias4).view(x.shape)

    @staticmethod
    @kernels.backward_under_autocast
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x4, weight_kc, bias4 = ctx.saved_tensors
        grad_x, grad_w, grad_b = ctx.kernels_module.causal_conv_silu_backward(
            grad_out.reshape(x4.shape), x4, weight_kc, bias4
        )
        return (
            grad_x.view(ctx.x_shape),
            grad_w.transpose(-1, -2).reshape(ctx.weight_shape),
            grad_b.view(ctx.weight_shape[:-1]),
            None,
        )
