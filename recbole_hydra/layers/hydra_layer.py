"""One Hydra layer (paper section 4.2): multi-head latent Mamba with RoPE gating, then SwiGLU."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_hydra.layers.ffn import SwiGLU
from recbole_hydra.layers.mamba2 import MultiHeadLatentMamba2
from recbole_hydra.layers.norms import RMSNorm
from recbole_hydra.layers.rope import RotaryEmbedding

NORM_PLACEMENTS = ("pre", "post")


class HydraLayer(nn.Module):
    """``H -> H'`` for one layer, eq 5-12.

    - input network (eq 5, 6): ``X = SiLU(W_X H~)`` split into v heads of size d_c, and
      ``Z = RoPE(SiLU(W_Z H~))`` rotated inside each head; ``H~`` is ``H`` for the first layer and
      ``RMSNorm(H)`` after it (pre-norm, section 4.2.1). W_X and W_Z are one fused projection.
    - multi-head latent interaction (eq 7-9): v independent Mamba-2 blocks on the X heads, run as
      one batched module; ``Y' = W_out((Y * Z) / sqrt(v)) + H``.
    - FFN (eq 10-12): ``H_next = SwiGLU(RMSNorm(Y')) + Y'``.

    ``hidden_dropout_prob`` drops the two residual branches; the paper names only the embedding
    dropout (eq 3), so the default is 0.

    Ablations of section 4.2 (defaults: the paper's layer): ``rope_on_z=False`` leaves Z
    unrotated; ``gate_with_z=False`` drops Z and the interaction, ``Y' = W_out Y + H``;
    ``norm="post"`` normalises after each residual sum (SASRec's post-norm, which section 4.2.2
    says suits shallow networks): ``Y' = RMSNorm(W_out(...) + H)`` and ``H_next =
    RMSNorm(SwiGLU(Y') + Y')``, with no norm before either branch.
    """

    def __init__(
        self,
        hidden_size,
        n_heads,
        head_size,
        ffn_inner_size,
        rope_base=10000.0,
        pre_norm=True,
        hidden_dropout_prob=0.0,
        rope_on_z=True,
        gate_with_z=True,
        norm="pre",
        **mamba_kwargs,
    ):
        super().__init__()
        if norm not in NORM_PLACEMENTS:
            raise ValueError(f"norm must be one of {NORM_PLACEMENTS}, got {norm!r}")
        self.n_heads, self.head_size = n_heads, head_size
        self.gate_with_z = gate_with_z
        latent = n_heads * head_size
        pre, post = norm == "pre", norm == "post"
        self.input_norm = RMSNorm(hidden_size) if pre and pre_norm else nn.Identity()
        self.w_xz = nn.Linear(hidden_size, (2 if gate_with_z else 1) * latent, bias=False)
        self.rope = RotaryEmbedding(head_size, rope_base) if rope_on_z else None
        self.latent_mamba = MultiHeadLatentMamba2(n_heads, head_size, **mamba_kwargs)
        self.w_out = nn.Linear(latent, hidden_size, bias=False)
        self.ffn_norm = RMSNorm(hidden_size) if pre else nn.Identity()
        self.ffn = SwiGLU(hidden_size, ffn_inner_size)
        self.mixer_post_norm = RMSNorm(hidden_size) if post else nn.Identity()
        self.ffn_post_norm = RMSNorm(hidden_size) if post else nn.Identity()
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def forward(self, h, lengths=None, return_cache=False):
        """h: (b, l, hidden_size), right-padded. With ``return_cache``, also the latent Mamba's
        cache after position ``lengths - 1`` of each row (``lengths``: real lengths, (b,))."""
        x, z = self._x_and_z(self.input_norm(h))  # eq 5, 6
        y = self.latent_mamba(x, lengths=lengths, return_cache=return_cache)  # eq 7, 8
        if return_cache:
            y, cache = y
        out = self._interact_and_ffn(h, y, z)
        return (out, cache) if return_cache else out

    def forward_last(self, h, lengths):
        """The layer's output at the last real position of each row only: ``h (b, l, hidden_size)``,
        ``lengths (b,)`` -> ``(b, hidden_size)``, equal to ``forward(h)[i, lengths[i] - 1]``.
        The last layer at scoring time needs no other position (see ``Mamba2.forward_last``)."""
        b = h.shape[0]
        rows, last = torch.arange(b, device=h.device), (lengths - 1).clamp(min=0)
        h_norm, w_x = self.input_norm(h), self.w_xz.weight[: self.w_out.in_features]
        x = F.silu(F.linear(h_norm, w_x))  # every position feeds the state; Z only at the last
        _, z = self._x_and_z(h_norm[rows, last].unsqueeze(1), positions=last.view(b, 1))
        y = self.latent_mamba.forward_last(x, lengths)
        return self._interact_and_ffn(h[rows, last], y, None if z is None else z.view(b, -1))

    def step(self, h_t, position, cache):
        """One event: ``h_t (b, hidden_size)`` at ``position (b,)`` (0 = first item) and the
        cache -> ``(output (b, hidden_size), new cache)``; O(1) in the history length."""
        b = h_t.shape[0]
        x, z = self._x_and_z(self.input_norm(h_t).unsqueeze(1), positions=position.view(b, 1))
        y, cache = self.latent_mamba.step(x.squeeze(1), cache)
        return self._interact_and_ffn(h_t, y, None if z is None else z.view(b, -1)), cache

    def _x_and_z(self, h_in, positions=None):
        """``(b, l, d) -> X, Z`` (each ``(b, l, latent)``; Z None without the gate): eq 5, 6."""
        xz = F.silu(self.w_xz(h_in))
        if not self.gate_with_z:
            return xz, None
        x, z = xz.chunk(2, dim=-1)
        if self.rope is not None:
            b, l, _ = z.shape
            z = self.rope(z.view(b, l, self.n_heads, self.head_size), positions=positions)
            z = z.reshape(b, l, -1)
        return x, z

    def _interact_and_ffn(self, h, y, z):
        mixed = y if z is None else y * z / math.sqrt(self.n_heads)
        y_res = self.mixer_post_norm(self.dropout(self.w_out(mixed)) + h)  # eq 9
        return self.ffn_post_norm(self.dropout(self.ffn(self.ffn_norm(y_res))) + y_res)  # eq 10-12
