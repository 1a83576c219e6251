"""RMS normalisations: the plain one of Hydra (paper eq 3, 10, 12) and Mamba-2's gated one."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels

__all__ = ["RMSNorm", "GatedRMSNorm"]


class RMSNorm(nn.RMSNorm):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension; a learned scale, no bias.

    ``torch.nn.RMSNorm`` with this project's default ``eps = 1e-5`` (mamba-ssm's value) instead of
    torch's ``finfo(dtype).eps``.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__(hidden_size, eps=eps, elementwise_affine=True, device=device, dtype=dtype)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * SiLU(z))``, normalised over groups of ``group_size`` channels (Mamba-2).

    mamba-ssm's ``RMSNormGated`` with ``norm_before_gate=False``: the gate is applied first, then
    each group of ``group_size`` consecutive channels is normalised on its own (Mamba-2 uses one
    group per B/C group, so that the norm never mixes channels of different groups or, in Hydra,
    of different latent heads), then one learned scale per channel.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        group_size = hidden_size if group_size is None else group_size
        if group_size <= 0 or hidden_size % group_size != 0:
            raise ValueError(
                f"group_size ({group_size}) must divide hidden_size ({hidden_size}); "
                "use hidden_size // ngroups with ngroups dividing the number of channels"
            )
        self.hidden_size = hidden_size
        self.group_size = group_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: Tensor, z: Optional[Tensor] = None) -> Tensor:
        """``x (..., hidden_size)``; ``z`` the gate, of x's shape or of any shape with the same
        elements in the same order (e.g. ``(..., heads, channels per head)``, so that a strided
        column slice needs no copy)."""
        module = kernels.cpu_kernels(x) if z is not None else None
        # under CPU autocast the kernel takes every input in float32 (float32_under_autocast)
        if module is not None and (
            z.dtype == x.dtype == self.weight.dtype or torch.is_autocast_enabled("cpu")
        ):
            return _GatedRMSNormCpu.apply(x, z, self.weight, self.group_size, self.eps, module)
        if z is not None:
            x = x * F.silu(z.reshape(x.shape))
        grouped = x.unflatten(-1, (self.hidden_size // self.group_size, self.group_size))
        normed = F.rms_norm(grouped, (self.group_size,), eps=self.eps).flatten(-2)
        return normed * self.weight

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, group_size={self.group_size}, eps={self.eps}"


class _GatedRMSNormCpu(torch.autograd.Function):
    """``GatedRMSNorm`` by the compiled CPU kernel (``recbole_hydra/csrc/gated_rms_norm.cpp``): one
    pass per direction, and only x, z and one inverse RMS per group kept for backward, which
    recomputes the gate and the normalised values. Autograd of the PyTorch ops keeps five
    tensors of x's size (x, z, SiLU(z), the gated x, the normalised x)."""

    @staticmethod
    @kernels.float32_under_autocast
    def forward(
        ctx, x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float, kernels_module
    ) -> Tensor:
        groups = x.shape[-1] // group_size  # (N, groups, group_size) views where the strides allow
        x3, z3 = (t.reshape(-1, groups, group_size) for t in (x, z))
        x3, z3 = (t if t.stride(-1) == 1 else t.contiguous() for t in (x3, z3))
        out, inv_rms = kernels_module.gated_rms_norm_forward(x3, z3, weight.contiguous(), eps)
        ctx.save_for_backward(x3, z3, weight, inv_rms)
        ctx.kernels_module, ctx.shapes = kernels_module, (x.shape, z.shape)
        return out.view(x.shape)

    @staticmethod
    @kernels.backward_under_autocast
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x3, z3, weight, inv_rms = ctx.saved_tensors
        grad_x, grad_z, grad_weight = ctx.kernels_module.gated_rms_norm_backward(
            grad_out, x3, z3, weight.contiguous(), inv_rms
        )
        x_shape, z_shape = ctx.shapes
        return grad_x.view(x_shape), grad_z.view(z_shape), grad_weight, None, None, None
