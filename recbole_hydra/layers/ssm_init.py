"""Initialisation shared by the Mamba-1 and Mamba-2 blocks (mamba-ssm's)."""

import math

import torch
from torch import Tensor

__all__ = ["dt_bias_init"]


def dt_bias_init(
    size: int, dt_min: float, dt_max: float, dt_init_floor: float, device=None, dtype=None
) -> Tensor:
    """``softplus^-1(dt)`` for ``size`` step sizes dt drawn log-uniform in ``[dt_min, dt_max]`` and
    floored at ``dt_init_floor``: the bias that makes the blocks start with such step sizes."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    log_dt = torch.rand(size, device=device, dtype=dtype) * (math.log(dt_max) - math.log(dt_min))
    dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
