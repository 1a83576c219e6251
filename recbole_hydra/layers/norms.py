"""RMS normalisations: the plain one of Hydra (paper eq 3, 10, 12) and Mamba-2's gated one."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        if z is not None:
            x = x * F.silu(z)
        grouped = x.unflatten(-1, (self.hidden_size // self.group_size, self.group_size))
        normed = F.rms_norm(grouped, (self.group_size,), eps=self.eps).flatten(-2)
        return normed * self.weight

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, group_size={self.group_size}, eps={self.eps}"
