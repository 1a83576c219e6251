"""Rotary position embedding (RoFormer), used on Hydra's item-information branch Z (eq 6)."""

import torch
from torch import Tensor, nn


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: float) -> Tensor:
    """Pairs ``(x1, x2)`` of the two halves turned by the angle: ``(x1 c - x2 s, x2 c + x1 s)``
    for ``sign=1``, by minus the angle for ``sign=-1``. Each half is written once into one new
    tensor (no concatenation, no intermediates)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.empty(
        torch.broadcast_shapes(x.shape, cos.shape[:-1] + (x.shape[-1],)),
        dtype=x.dtype,
        device=x.device,
    )
    first, second = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=first).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=second).addcmul_(x1, sin, value=sign)
    return out


class _Rotation(torch.autograd.Function):
    """``_rotate`` with its backward written out: a rotation's transpose is the rotation by minus
    the angle, so backward turns the gradient back with the same two passes (autograd of the
    plain expression runs four products, a sum, a difference and a concatenation each way)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None


class RotaryEmbedding(nn.Module):
    """Rotates pairs of channels inside each head by an angle proportional to the position.

    Pairs are (j, j + d/2) (the "rotate half" layout of GPT-NeoX and Llama), frequencies
    ``base ** (-2j / d)``. Positions count from the first real item: RecBole right-pads, so
    position t of the tensor is the t-th real item and padding only ever sits after them.
    The cos and sin of positions ``0..l-1`` are kept between calls (recomputed when the length
    grows or the dtype or device changes): every training batch reads the same table.
    """

    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(
                f"RoPE needs an even head size, got {head_dim}: choose an even head_size"
            )
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self._table = None  # (inv_freq dtype, device, x dtype, cos, sin) of positions 0..n-1

    def _cos_sin(self, positions: Tensor, dtype: torch.dtype):
        angles = positions.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq  # (.., l, d/2)
        angles = angles.unsqueeze(-2)  # broadcast over heads
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def _first_positions(self, length: int, dtype: torch.dtype):
        key = (self.inv_freq.dtype, self.inv_freq.device, dtype)
        if self._table is None or self._table[:3] != key or self._table[3].shape[0] < length:
            positions = torch.arange(length, device=self.inv_freq.device)
            self._table = (*key, *self._cos_sin(positions, dtype))
        return self._table[3][:length], self._table[4][:length]

    def forward(self, x, positions=None):
        """x: (b, l, heads, d). positions: (l,) or (b, l) integer tensor; default 0..l-1."""
        if positions is None:
            cos, sin = self._first_positions(x.size(1), x.dtype)
        else:
            cos, sin = self._cos_sin(positions, x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return _Rotation.apply(x, cos, sin)
        return _rotate(x, cos, sin, 1.0)
