"""Position-wise feed-forward networks."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels


class SwiGLU(nn.Module):
    """Llama's gated FFN, ``W_down(SiLU(W_gate x) * W_up x)`` without bias.

    Hydra eq 11 prints ``W_up W_down`` back to back (garbled); docs/paper-reading.md fixes this
    reading. On CPU, with kernels enabled (``recbole_hydra.layers.kernels``), the two input
    projections run as one product and the element-wise middle by the compiled kernel
    (``_SwiGLUCpu``), when it builds.
    """

    def __init__(self, d_model, inner_size):
        super().__init__()
        self.w_gate = nn.Linear(d_model, inner_size, bias=False)
        self.w_up = nn.Linear(d_model, inner_size, bias=False)
        self.w_down = nn.Linear(inner_size, d_model, bias=False)

    def forward(self, x):
        module = kernels.cpu_kernels(x)
        # under CPU autocast the kernel's input, the product W x, would be bfloat16: not for it
        if (
            module is not None
            and x.dtype == self.w_gate.weight.dtype
            and not torch.is_autocast_enabled("cpu")
        ):
            return _SwiGLUCpu.apply(
                x, self.w_gate.weight, self.w_up.weight, self.w_down.weight, module
            )
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class _SwiGLUCpu(torch.autograd.Function):
    """``SwiGLU`` with the element-wise middle by the compiled CPU kernel
    (``recbole_hydra/csrc/swiglu.cpp``): backward keeps ``x`` and ``[W_gate x, W_up x]`` and
    recomputes ``SiLU(W_gate x) * W_up x`` in the same pass as its gradients; autograd of the
    PyTorch ops keeps also the SiLU and the product, two more tensors of the inner size per
    token."""

    @staticmethod
    def forward(
        ctx, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, kernels_module
    ) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        gate_up = (
            x2 @ torch.cat([w_gate, w_up]).T
        )  # (tokens, 2 inner): both input projections at once
        ctx.save_for_backward(x2, gate_up, w_gate, w_up, w_down)
        ctx.kernels_module, ctx.x_shape = kernels_module, x.shape
        return (kernels_module.swiglu_forward(gate_up) @ w_down.T).view(*x.shape[:-1], -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x2, gate_up, w_gate, w_up, w_down = ctx.saved_tensors
        grad_out2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_gate_up, hidden = ctx.kernels_module.swiglu_backward(grad_out2 @ w_down, gate_up)
        grad_w_down = grad_out2.T @ hidden
        grad_x = grad_gate_up @ torch.cat([w_gate, w_up])
        grad_w_gate, grad_w_up = (grad_gate_up.T @ x2).chunk(2)
        return grad_x.view(ctx.x_shape), grad_w_gate, grad_w_up, grad_w_down, None
