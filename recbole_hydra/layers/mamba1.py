"""The Mamba-1 block (Gu & Dao 2023), as mamba-ssm's ``mamba_ssm.modules.mamba_simple.Mamba``.

    u (b, l, d_model) -> in_proj -> [x, z]                         (d_inner = expand * d_model each)
    x -> causal depthwise conv1d (width d_conv) -> SiLU
    x -> x_proj -> [dt (dt_rank), B (d_state), C (d_state)];  dt -> dt_proj (bias added in the scan)
    y = selective_scan(x, dt, A = -exp(A_log), B, C, D, z, delta_bias = dt_proj.bias, softplus)
    out = out_proj(y)                                               (y already gated by SiLU(z))

Parameter names, shapes and initialisation are mamba-ssm's (``state_dict`` loads one of its
``Mamba``): ``dt_rank = ceil(d_model / 16)``, ``A = 1..d_state`` for every channel (``A_log``,
S4D-real), ``D = 1``, ``dt_proj.weight ~ U(-dt_rank^-0.5, dt_rank^-0.5) * dt_scale``,
``softplus(dt_proj.bias) ~ log-uniform [dt_min, dt_max]`` (floored at ``dt_init_floor``), the other
linear layers PyTorch's default. ``A_log`` and ``D`` carry ``_no_weight_decay``, ``dt_proj.bias``
``_no_reinit``, as there.

On CUDA with kernels enabled (``recbole_hydra.layers.kernels``), mamba-ssm's fused
``mamba_inner_fn`` (when causal-conv1d is installed) or its ``selective_scan_fn`` is used;
mamba-ssm is only imported then, on first use.
Everywhere else the scan is ``recbole_hydra.layers.selective_scan`` (pure PyTorch) and the conv
``recbole_hydra.layers.conv`` (our compiled CPU kernel when it builds, else PyTorch ops).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .conv import causal_conv_silu
from .selective_scan import DEFAULT_CHUNK_SIZE, selective_scan_bld
from .ssm_init import dt_bias_init

__all__ = ["Mamba1"]


def _at_least_float32(t: Tensor) -> Tensor:
    # the scan's parameters stay in float32 under half precision (as mamba-ssm), float64 in float64
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Mamba1(nn.Module):
    """``(b, l, d_model) -> (b, l, d_model)``, causal in l: output t sees inputs 0..t only."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank="auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

        dt_init_std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_init_std)
            elif dt_init == "random":
                nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            else:
                raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
            self.dt_proj.bias.copy_(
                dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor, device=device)
            )
        self.dt_proj.bias._no_reinit = True

        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # kept in float32, as mamba-ssm
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def _conv(self, x: Tensor) -> Tensor:
        """Causal depthwise conv over time + SiLU; ``(b, l, d_inner)`` in and out."""
        weight = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        conv_fn = kernels.usable("causal_conv1d_fn", x)
        if conv_fn is not None:
            return conv_fn(
                x.transpose(1, 2), weight, self.conv1d.bias, activation="silu"
            ).transpose(1, 2)
        return causal_conv_silu(x, weight, self.conv1d.bias)

    def forward(self, u: Tensor) -> Tensor:
        A = -torch.exp(_at_least_float32(self.A_log))  # (d_inner, d_state)
        fused = kernels.usable("mamba_inner_fn", u)  # only when causal-conv1d is installed too
        if fused is not None:
            return self._forward_fused(u, A, fused)
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, l, d_inner) each
        x = self._conv(x)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # its bias is added inside the scan, in float32
        scan_fn = kernels.usable("selective_scan_fn", u)
        if scan_fn is not None:
            y = scan_fn(
                x.transpose(1, 2),
                dt.transpose(1, 2),
                A,
                B.transpose(1, 2).contiguous(),
                C.transpose(1, 2).contiguous(),
                _at_least_float32(self.D),
                z=z.transpose(1, 2),
                delta_bias=_at_least_float32(self.dt_proj.bias),
                delta_softplus=True,
            ).transpose(1, 2)
        else:
            y = selective_scan_bld(
                x,
                dt,
                A,
                B,
                C,
                D=_at_least_float32(self.D),
                z=z,
                delta_bias=_at_least_float32(self.dt_proj.bias),
                delta_softplus=True,
                chunk_size=self.chunk_size,
            )
        return self.out_proj(y)

    def _forward_fused(self, u: Tensor, A: Tensor, mamba_inner_fn) -> Tensor:
        """mamba-ssm's fast path: projections, conv and scan in one fused autograd function."""
        xz = self.in_proj(u).transpose(1, 2)  # (b, 2 d_inner, l)
        return mamba_inner_fn(
            xz,
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            A,
            None,
            None,
            _at_least_float32(self.D),
            delta_bias=_at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, chunk_size={self.chunk_size}"
        )
