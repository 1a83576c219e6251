"""Mamba-1's selective scan (Gu & Dao 2023, Algorithm 2) in PyTorch, without a loop over time.

For every channel d and state n, with ``dt = softplus(delta + delta_bias)`` (when asked):

    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t          (h: (b, d, n) per step)
    y_t = C_t . h_t + D u_t,   then  y_t * SiLU(z_t)

``selective_scan`` takes and returns mamba-ssm's layout (``selective_scan_ref`` /
``selective_scan_fn``: u, delta, z (b, d, l), B, C (b, n, l)); ``selective_scan_bld`` is the same
with time before channels (u, delta, z (b, l, d), B, C (b, l, n)), the layout the Mamba-1 block
produces.

How it is computed (``_linear_scan``): the sequence is cut into chunks of at most ``chunk_size``
steps. Inside a chunk, a parallel (Hillis-Steele) scan of ``ceil(log2 Q)`` vectorised steps
composes the affine maps ``h -> exp(dt A) h + dt B u``: after it every position holds the state
reached from a zero state at the chunk start and the product of the decays since that start.
Between chunks the state is carried in a loop over chunks (``l / Q`` small steps), and added
to every position of the next chunk times its decay product. Only products of the per-step
decays ``exp(dt A)`` and sums of states appear, so the rounding is that of the step-by-step
recurrence (float64: equal to a float64 loop to ~1e-15; float32: ~1e-6 relative) and nothing
overflows that the recurrence itself would not. The log-space form (``exp(S_t) * exp(-S_s)``
with ``S`` the in-chunk cumulative sum of ``dt A``) was tried: it was no faster on CPU, loses
about ``eps * |S|`` relative accuracy, and overflows float32 once a chunk's summed decay passes
~88 (Mamba4Rec's reference initialisation starts there: dt ~ 0.7 with A down to -32 is -350
over 16 steps). Half-precision inputs are computed in float32, as mamba-ssm does.

Memory: the states ``(b, l, d, n)`` are never held for the whole batch. Forward and backward
(a ``torch.autograd.Function``) work on blocks of batch rows of ``_BLOCK_ELEMENTS`` states
(``_BLOCK_ELEMENTS_GPU`` on a GPU, where each block costs its kernel launches), so on the CPU
the working set stays a few MiB (allocations of that size are reused by the allocator
instead of being page-faulted afresh), and autograd keeps only the ``(b, l, d)`` inputs: the
backward recomputes the states and runs the same scan backwards in time for the adjoint.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan", "selective_scan_bld", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 16
# states per work block: 2^20 float32 = 4 MiB (a few such buffers live at once). On a 2-core CPU,
# b=256, l=50, d=128, n=32: 2^19..2^20 beat 2^18 and 2^21..2^22 (noisy, shared machine); chunk
# 16 beat 8, 25 and 64.
_BLOCK_ELEMENTS = 1 << 20
# On a GPU each block costs a few dozen kernel launches whatever its size, and a block of 2^20
# states is one row at Mamba4Rec's ml-1m sizes (l=200, d=128, n=32): 2048 blocks per batch of
# 2048, launch-bound. 2^27 float32 states = 512 MiB a buffer (about five live at once).
_BLOCK_ELEMENTS_GPU = 1 << 27


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """mamba-ssm's ``selective_scan_ref`` semantics, any length ``l``.

    u, delta: (b, d, l); A: (d, n) real; B, C: (b, n, l); D: (d,); z: (b, d, l); delta_bias: (d,).
    Returns y (b, d, l) in u's dtype, and with ``return_last_state`` also the state after the last
    step, (b, d, n) in the compute dtype (float32, or float64 for float64 input). Unlike
    ``selective_scan_fn``, gradients flow through the last state too.
    """
    out = selective_scan_bld(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        D=D,
        z=None if z is None else z.transpose(1, 2),
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
        chunk_size=chunk_size,
    )
    if return_last_state:
        return out[0].transpose(1, 2), out[1]
    return out.transpose(1, 2)


def selective_scan_bld(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """``selective_scan`` with time before channels: u, delta, z (b, l, d); B, C (b, l, n);
    returns y (b, l, d) (and the last state (b, d, n))."""
    if A.is_complex():
        raise NotImplementedError("complex A (S4D-Lin) is not supported; Mamba-1 uses real A")
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError(
            "B and C must be input-dependent, (b, l, n) here or (b, n, l) in selective_scan"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u = u.to(compute)
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)
    if delta_softplus:
        delta = F.softplus(delta)
    x = delta * u
    y, last = _SelectiveScan.apply(
        delta, A.to(compute), x, B.to(compute), C.to(compute), int(chunk_size)
    )
    if D is not None:
        y = y + u * D.to(compute)
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


# -- the scan itself --------------------------------------------------------------------------


def _chunking(length: int, chunk_size: int) -> Tuple[int, int]:
    """(number of chunks, chunk length): the fewest chunks of at most ``chunk_size`` steps, of
    equal length, so that padding to ``chunks * chunk_len`` wastes fewer than ``chunks`` steps."""
    chunks = max(1, math.ceil(length / chunk_size))
    return chunks, math.ceil(length / chunks)


def _linear_scan(
    dec: Tensor, h: Tensor, chunk_len: int, reverse: bool, h_init: Optional[Tensor]
) -> Tensor:
    """``h_t = dec_t * h_{t-1} + inp_t`` (``reverse``: ``h_t = dec_t * h_{t+1} + inp_t``) along
    dim 1 of ``(r, L, d, n)`` tensors, ``L`` a multiple of ``chunk_len``; ``h`` holds ``inp`` on
    entry. Both inputs are overwritten (the result is one of the buffers). ``h_init (r, d, n)``:
    the state before the first step (after the last one when ``reverse``); zeros when None."""
    r, length = h.shape[:2]
    rest = h.shape[2:]
    chunks = length // chunk_len
    h = h.view(r, chunks, chunk_len, *rest)
    dec = dec.view(r, chunks, chunk_len, *rest)
    carry = chunks > 1 or h_init is not None
    h_buf, dec_buf = torch.empty_like(h), torch.empty_like(dec)
    k = 1
    while k < chunk_len:
        # element t holds the affine map of the window of k steps ending (starting) at t; compose
        # it with the map of the k steps before (after) that window
        last_level = 2 * k >= chunk_len
        if not reverse:
            torch.addcmul(h[:, :, k:], dec[:, :, k:], h[:, :, :-k], out=h_buf[:, :, k:])
            h_buf[:, :, :k] = h[:, :, :k]
            if carry or not last_level:
                torch.mul(dec[:, :, k:], dec[:, :, :-k], out=dec_buf[:, :, k:])
                dec_buf[:, :, :k] = dec[:, :, :k]
                dec, dec_buf = dec_buf, dec
        else:
            torch.addcmul(h[:, :, :-k], dec[:, :, :-k], h[:, :, k:], out=h_buf[:, :, :-k])
            h_buf[:, :, -k:] = h[:, :, -k:]
            if carry or not last_level:
                torch.mul(dec[:, :, :-k], dec[:, :, k:], out=dec_buf[:, :, :-k])
                dec_buf[:, :, -k:] = dec[:, :, -k:]
                dec, dec_buf = dec_buf, dec
        h, h_buf = h_buf, h
        k *= 2
    del h_buf, dec_buf
    if carry:
        # dec now holds the product of the decays from the chunk start (end) to each step
        state = h.new_zeros(r, *rest) if h_init is None else h_init.to(h.dtype)
        entering = h.new_empty(r, chunks, *rest)
        order = range(chunks - 1, -1, -1) if reverse else range(chunks)
        edge = 0 if reverse else -1
        for i in order:
            entering[:, i] = state
            state = torch.addcmul(h[:, i, edge], dec[:, i, edge], state)
        h.addcmul_(dec, entering.unsqueeze(2))
    return h.view(r, length, *rest)


def _states(delta: Tensor, A: Tensor, x: Tensor, B: Tensor, chunk_len: int) -> Tensor:
    """All states h_t (r, L, d, n) of rows already padded to ``L``."""
    dec = (delta.unsqueeze(-1) * A).exp_()
    inp = x.unsqueeze(-1) * B.unsqueeze(-2)
    return _linear_scan(dec, inp, chunk_len, reverse=False, h_init=None)


def _pad_time(t: Tensor, length: int) -> Tensor:
    """Zero-pad dim 1 of ``t`` to ``length`` (zero delta: decay 1; zero input: state unchanged)."""
    return t if t.shape[1] == length else F.pad(t, (0, 0, 0, length - t.shape[1]))


def _row_blocks(batch: int, per_row: int, device: torch.device):
    block = _BLOCK_ELEMENTS if device.type == "cpu" else _BLOCK_ELEMENTS_GPU
    rows = max(1, block // max(1, per_row))
    return [slice(i, min(batch, i + rows)) for i in range(0, batch, rows)]


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t, h_t = exp(delta_t A) h_{t-1} + x_t B_t, h_{-1} = 0.

    delta, x: (b, l, d); A: (d, n); B, C: (b, l, n). Returns y (b, l, d) and h_{l-1} (b, d, n).
    """

    @staticmethod
    def forward(ctx, delta, A, x, B, C, chunk_size):
        batch, length, d = delta.shape
        n = A.shape[1]
        chunks, chunk_len = _chunking(length, chunk_size)
        padded = chunks * chunk_len
        y = delta.new_empty(batch, length, d)
        last = delta.new_empty(batch, d, n)
        for rows in _row_blocks(batch, padded * d * n, delta.device):
            h = _states(
                _pad_time(delta[rows], padded),
                A,
                _pad_time(x[rows], padded),
                _pad_time(B[rows], padded),
                chunk_len,
            )
            y[rows] = torch.matmul(h[:, :length], C[rows].unsqueeze(-1)).squeeze(-1)
            last[rows] = h[:, length - 1]
        ctx.save_for_backward(delta, A, x, B, C)
        ctx.chunk_len = chunk_len
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        delta, A, x, B, C = ctx.saved_tensors
        batch, length, d = delta.shape
        n = A.shape[1]
        chunk_len = ctx.chunk_len
        padded = math.ceil(length / chunk_len) * chunk_len
        ddelta, dx = torch.zeros_like(delta), torch.zeros_like(x)
        dB, dC, dA = torch.zeros_like(B), torch.zeros_like(C), torch.zeros_like(A)
        if dy is None and dlast is None:
            return ddelta, dA, dx, dB, dC, None
        for rows in _row_blocks(batch, padded * d * n, delta.device):
            dlt = _pad_time(delta[rows], padded)
            xs = _pad_time(x[rows], padded)
            Bs = _pad_time(B[rows], padded)
            h = _states(dlt, A, xs, Bs, chunk_len)
            # adjoint g_t = dL/dh_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}, g after the end = dlast
            dec_next = (F.pad(dlt[:, 1:], (0, 0, 0, 1)).unsqueeze(-1) * A).exp_()
            if dy is not None:
                dys = _pad_time(dy[rows], padded)
                Cs = _pad_time(C[rows], padded)
                dC[rows] = torch.matmul(dys[:, :length].unsqueeze(-2), h[:, :length]).squeeze(-2)
                inp = dys.unsqueeze(-1) * Cs.unsqueeze(-2)
            else:
                inp = torch.zeros_like(h)
            g = _linear_scan(
                dec_next,
                inp,
                chunk_len,
                reverse=True,
                h_init=None if dlast is None else dlast[rows],
            )
            dx[rows] = torch.matmul(g[:, :length], Bs[:, :length].unsqueeze(-1)).squeeze(-1)
            dB[rows] = torch.matmul(xs[:, :length].unsqueeze(-2), g[:, :length]).squeeze(-2)
            # dL/d(delta_t A) = g_t * exp(delta_t A) h_{t-1} = g_t * (h_t - x_t B_t)
            da = h.addcmul_(xs.unsqueeze(-1), Bs.unsqueeze(-2), value=-1).mul_(g)
            del g
            dA += (da * dlt.unsqueeze(-1)).sum((0, 1))
            ddelta[rows] = da.mul_(A).sum(-1)[:, :length]
        return ddelta, dA, dx, dB, dC, None
