"""Position-wise feed-forward networks."""

import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """Llama's gated FFN, ``W_down(SiLU(W_gate x) * W_up x)`` without bias.

    Hydra eq 11 prints ``W_up W_down`` back to back (garbled); NOTES.md fixes this reading.
    """

    def __init__(self, d_model, inner_size):
        super().__init__()
        self.w_gate = nn.Linear(d_model, inner_size, bias=False)
        self.w_up = nn.Linear(d_model, inner_size, bias=False)
        self.w_down = nn.Linear(inner_size, d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
