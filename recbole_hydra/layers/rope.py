"""Rotary position embedding (RoFormer), used on Hydra's item-information branch Z (eq 6)."""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates pairs of channels inside each head by an angle proportional to the position.

    Pairs are (j, j + d/2) (the "rotate half" layout of GPT-NeoX and Llama), frequencies
    ``base ** (-2j / d)``. Positions count from the first real item: RecBole right-pads, so
    position t of the tensor is the t-th real item and padding only ever sits after them.
    """

    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(
                f"RoPE needs an even head size, got {head_dim}: choose an even head_size"
            )
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, x, positions=None):
        """x: (b, l, heads, d). positions: (l,) or (b, l) integer tensor; default 0..l-1."""
        if positions is None:
            positions = torch.arange(x.size(1), device=x.device)
        angles = positions.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq  # (.., l, d/2)
        angles = angles.unsqueeze(-2)  # broadcast over heads
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
