"""The SSD (state space duality) scan of Mamba-2, in plain PyTorch.

Reference: T. Dao and A. Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", ICML 2024, arXiv:2405.21060 ("SSD paper" below).

Per head, with a scalar decay ``A < 0`` and step ``dt > 0`` (the SSD paper's eq. (1) with
``A_t = exp(dt_t A)`` and input ``dt_t x_t``)::

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T          state S_t: (headdim p, d_state n)
    y_t = S_t C_t + D x_t

Unrolled, ``y = M x`` with ``M_ts = C_t^T B_s exp(a_{s+1} + ... + a_t) dt_s`` for ``s <= t``
(``a_t = dt_t A``): the semiseparable matrix of the SSD paper's eq. (3), which for a scalar
decay is a masked-attention matrix ``M = L o (C B^T)`` (SSD paper section 5). ``ssd_scan``
evaluates it by the chunked algorithm of the SSD paper's section 6 (its Listing 1, mamba-ssm's
``ssd_minimal.py``): diagonal blocks in the quadratic form, off-diagonal blocks through the
states at chunk boundaries. ``ssd_step`` is the recurrence itself, for one event at a time.

Layout follows mamba-ssm (``mamba_chunk_scan_combined``): ``x (b, l, h, p)``, ``dt (b, l, h)``,
``A (h,)``, ``B, C (b, l, g, n)``; head ``i`` reads group ``i // (h // g)``.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels

__all__ = ["ssd_scan", "ssd_step", "ssd_final_state"]


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor]) -> None:
    b, h, p = x.shape[0], x.shape[-2], x.shape[-1]
    g = B.shape[-2]
    if dt.shape != x.shape[:-1]:
        raise ValueError(
            f"dt must have shape {tuple(x.shape[:-1])} (x without headdim), got {tuple(dt.shape)}"
        )
    if A.shape != (h,):
        raise ValueError(f"A must have shape ({h},), one decay per head, got {tuple(A.shape)}")
    if B.shape != C.shape or B.shape[:-2] != x.shape[:-2]:
        raise ValueError(
            f"B and C must both have shape {tuple(x.shape[:-2])} + (ngroups, d_state), "
            f"got B {tuple(B.shape)} and C {tuple(C.shape)}"
        )
    if h % g != 0:
        raise ValueError(
            f"nheads ({h}) must be a multiple of ngroups ({g}): "
            "change ngroups to a divisor of nheads"
        )
    if D is not None and D.shape not in ((h,), (h, p)):
        raise ValueError(f"D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if b == 0:
        raise ValueError("empty batch")


class _DiagonalBlocks(torch.autograd.Function):
    """Step 1 of ``ssd_scan``, the diagonal blocks: inside each chunk
    ``y_i = sum_{j <= i} exp(a_cum_i - a_cum_j) (C_i . B_j) x_j``, i.e. ``y = (L o C B^T) x``
    (the SSD paper's eq. (3) on one block, its Listing 1 step 1).

    The decay mask is ``L_ij = exp(a_cum_i - a_cum_j)`` (``a_cum``: cumulative log decay from the
    chunk start), the difference form of mamba-ssm's kernels; it is masked to ``-inf`` above the
    diagonal before the ``exp``, so nothing overflows. Written by hand because autograd of the same
    expression makes and re-reads about ten (chunk x chunk) tensors per head, which at everyday
    lengths (50 to 200) cost more than the matmuls; here forward makes two (``L``, and
    ``M = L o C B^T``), backward three.

    ``a_cum (b,c,g,r,q)`` (float32 or wider), ``B, C (b,c,g,q,n)``, ``x_dt (b,c,g,r,q,p)``;
    returns ``y (b,c,g,r,q,p)``.
    """

    @staticmethod
    def forward(ctx, a_cum: Tensor, B: Tensor, C: Tensor, x_dt: Tensor) -> Tensor:
        # One dtype throughout, autocast off: backward runs without autocast, and would otherwise
        # meet the half-precision products of an autocast forward next to float32 tensors.
        dtype = torch.promote_types(torch.promote_types(B.dtype, C.dtype), x_dt.dtype)
        B, C, x_dt = B.to(dtype), C.to(dtype), x_dt.to(dtype)
        q = a_cum.shape[-1]
        with torch.autocast(a_cum.device.type, enabled=False):
            above = torch.ones(q, q, dtype=torch.bool, device=a_cum.device).triu(1)
            log_decay = a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)  # [i, j]: log decay j to i
            decay = log_decay.masked_fill_(above, float("-inf")).exp_().to(dtype)  # L
            mixer = decay * (C @ B.transpose(-1, -2)).unsqueeze(3)  # M = L o C B^T (b,c,g,r,q,q)
            ctx.save_for_backward(B, C, x_dt, decay, mixer)
            ctx.a_dtype = a_cum.dtype
            return mixer @ x_dt

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        B, C, x_dt, decay, mixer = ctx.saved_tensors
        grad_x_dt = mixer.transpose(-1, -2) @ grad_y
        grad_mixer = grad_y @ x_dt.transpose(-1, -2)  # (b,c,g,r,q,q)
        grad_scores = grad_mixer * decay
        grad_scores = grad_scores.squeeze(3) if grad_scores.shape[3] == 1 else grad_scores.sum(3)
        grad_C = grad_scores @ B
        grad_B = grad_scores.transpose(-1, -2) @ C
        # d M_ij / d (a_cum_i - a_cum_j) = M_ij (zero above the diagonal, where M is 0)
        grad_log_decay = grad_mixer.mul_(mixer)
        grad_a_cum = grad_log_decay.sum(-1) - grad_log_decay.sum(-2)
        return grad_a_cum.to(ctx.a_dtype), grad_B, grad_C, grad_x_dt


def _diagonal_blocks(a_cum: Tensor, B: Tensor, C: Tensor, x_dt: Tensor) -> Tensor:
    """Step 1 of ``ssd_scan``. Without autograd (evaluation, serving) by the compiled CPU kernel
    when enabled and built (``recbole_hydra/csrc/ssd_diagonal.cpp``: each (batch, chunk, group)
    block's ``C B^T`` and mask stay in a cache-sized scratch, never a batch-sized tensor); for
    training by ``_DiagonalBlocks``, whose batched backward measured faster than a fused one."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (a_cum, B, C, x_dt))
    module = None if needs_grad else kernels.cpu_kernels(x_dt)
    if module is not None and a_cum.dtype == B.dtype == C.dtype == x_dt.dtype:
        shape, (q, n) = x_dt.shape, B.shape[-2:]  # x_dt (b,c,g,r,q,p) -> (b*c*g, r, q, p), ...
        return module.ssd_diagonal_forward(
            a_cum.reshape(-1, shape[3], q).contiguous(),
            B.reshape(-1, q, n).contiguous(),
            C.reshape(-1, q, n).contiguous(),
            x_dt.reshape(-1, *shape[3:]).contiguous(),
        ).view(shape)
    return _DiagonalBlocks.apply(a_cum, B, C, x_dt)


class _ChunkRecurrence(torch.autograd.Function):
    """``S_k = decay_k S_{k-1} + s_k`` over chunks (step 3 of ``ssd_scan``).

    A plain loop under autograd costs a few autograd nodes per chunk, which dominates at long
    lengths; here each direction is one tight loop of two in-place-sized ops per chunk.
    Inputs ``decay (b, c, h)``, ``s (b, c, h, p, n)``, ``initial (b, h, p, n)``; returns the state
    entering every chunk ``(b, c, h, p, n)`` and the state after the last one.
    """

    @staticmethod
    def forward(ctx, decay: Tensor, s: Tensor, initial: Tensor) -> Tuple[Tensor, Tensor]:
        entering = torch.empty_like(s)
        state = initial
        for k in range(s.shape[1]):
            entering[:, k] = state
            state = torch.addcmul(s[:, k], decay[:, k, :, None, None], state)
        ctx.save_for_backward(decay, entering)
        return entering, state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_entering: Tensor, grad_final: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        decay, entering = ctx.saved_tensors
        grad_s = torch.empty_like(entering)  # gradient w.r.t. the state leaving chunk k
        grad = grad_final
        for k in reversed(range(entering.shape[1])):
            grad_s[:, k] = grad
            grad = torch.addcmul(grad_entering[:, k], decay[:, k, :, None, None], grad)
        grad_decay = (grad_s * entering).sum(dim=(-1, -2))  # d S_k / d decay_k = S_{k-1}
        return grad_decay, grad_s, grad


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Optional[Tensor] = None,
    initial_state: Optional[Tensor] = None,
    return_final_state: bool = True,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Run the SSD recurrence over a whole sequence with the chunked algorithm.

    Args:
        x: ``(b, l, h, p)`` inputs, ``h`` heads of ``p`` channels.
        dt: ``(b, l, h)`` positive step sizes (after softplus). ``dt = 0`` leaves the state as it
            is, which is how padding is made invisible.
        A: ``(h,)`` negative decay rates.
        B, C: ``(b, l, g, n)`` input and output maps, ``g`` groups shared by ``h // g`` heads each.
        chunk_size: the longest chunk; the sequence is cut into equal chunks of at most this length.
        D: optional skip, ``(h,)`` or ``(h, p)``.
        initial_state: optional ``(b, h, p, n)`` state before the first position.
        return_final_state: ``False`` returns ``None`` for the state and, when the sequence fits
            in one chunk and there is no initial state, skips the chunk-state steps 2-4 altogether.

    On CPU and without autograd, the diagonal blocks (step 1) run on the compiled kernel of
    ``recbole_hydra.layers.kernels`` when kernels are enabled and it builds.

    Returns:
        ``y (b, l, h, p)`` and the state after the last position, ``(b, h, p, n)``.
    """
    _check(x, dt, A, B, C, D)
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    if length == 0:
        state = (
            x.new_zeros(batch, nheads, headdim, d_state) if initial_state is None else initial_state
        )
        return x.clone(), (state.to(x.dtype) if return_final_state else None)
    per_group = nheads // ngroups
    # The decay exponents are summed over up to a chunk of steps: keep them at least float32.
    acc_dtype = torch.promote_types(x.dtype, torch.float32)

    # Equal chunks of at most chunk_size, padded at the end with dt = 0 (no input, no decay).
    n_chunks = max(1, -(-length // chunk_size))
    q = max(1, -(-length // n_chunks))
    pad = n_chunks * q - length
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))

    # Chunked views; heads split as (group, head within group) so B and C are never repeated.
    shape = (batch, n_chunks, q, ngroups, per_group)
    a = (
        (dt.to(acc_dtype) * A.to(acc_dtype)).reshape(shape).permute(0, 1, 3, 4, 2)
    )  # (b,c,g,r,q): log A_t
    a_cum = a.cumsum(dim=-1)  # log decay from the chunk start to position i, inclusive
    enters_state = n_chunks > 1 or initial_state is not None
    x_dt = (
        (x * dt.unsqueeze(-1)).reshape(*shape, headdim).permute(0, 1, 3, 4, 2, 5).contiguous()
    )  # (b,c,g,r,q,p)
    B = B.view(batch, n_chunks, q, ngroups, d_state).transpose(2, 3).contiguous()  # (b,c,g,q,n)
    C = C.view(batch, n_chunks, q, ngroups, d_state).transpose(2, 3).contiguous()

    # 1. Diagonal blocks: inside a chunk, the quadratic (masked attention) form y = (L o C B^T) x.
    y = _diagonal_blocks(a_cum, B, C, x_dt)  # (b,c,g,r,q,p)
    if not (enters_state or return_final_state):
        return _finish(y, x, D, length), None

    # 2. Chunk states (right factors): what each chunk alone adds to the state at its end.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum).to(x.dtype)  # (b,c,g,r,q)
    x_to_end = (x_dt * decay_to_end.unsqueeze(-1)).transpose(-1, -2)  # (b,c,g,r,p,q)
    states = x_to_end.reshape(batch, n_chunks, ngroups, per_group * headdim, q) @ B  # (b,c,g,r*p,n)
    states = states.view(batch, n_chunks, nheads, headdim, d_state)

    # 3. Inter-chunk recurrence (centre factors): the state entering each chunk,
    #    S_k = A_k S_{k-1} + s_k, one step per chunk, so the cost is linear in the number of chunks.
    chunk_decay = torch.exp(a_cum[..., -1]).to(x.dtype).reshape(batch, n_chunks, nheads)
    if initial_state is None:
        initial_state = x.new_zeros(batch, nheads, headdim, d_state)
    entering, final_state = _ChunkRecurrence.apply(chunk_decay, states, initial_state.to(x.dtype))

    # 4. Off-diagonal blocks (left factors): the entering state read out by C, decayed to position i
    #    (zero when the only chunk starts from a zero state).
    if enters_state:
        entering = entering.view(batch, n_chunks, ngroups, per_group * headdim, d_state)
        y_from_state = (C @ entering.transpose(-1, -2)).view(
            batch, n_chunks, ngroups, q, per_group, headdim
        )
        y = y + y_from_state.transpose(3, 4) * torch.exp(a_cum).to(x.dtype).unsqueeze(-1)

    return _finish(y, x, D, length), (final_state if return_final_state else None)


def _finish(y: Tensor, x: Tensor, D: Optional[Tensor], length: int) -> Tensor:
    """Chunked ``(b,c,g,r,q,p)`` back to ``(b, l, h, p)``, plus the skip ``D x``."""
    batch, n_chunks, _, _, q, headdim = y.shape
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, n_chunks * q, -1, headdim)[:, :length]
    if D is not None:
        y = y + x[:, :length] * (D.unsqueeze(-1) if D.dim() == 1 else D)
    return y


def ssd_final_state(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, initial_state: Optional[Tensor] = None
) -> Tensor:
    """The state after the last position alone, without any output: ``(b, h, p, n)``.

    ``S_T = sum_s exp(a_{s+1} + ... + a_T) dt_s x_s B_s^T + exp(a_1 + ... + a_T) S_0`` (the
    recurrence of ``ssd_step`` unrolled; ``a_t = dt_t A``): one matmul over the whole length, so
    linear in it, and far cheaper than ``ssd_scan`` when only the last output is wanted (the output
    there is ``S_T C_T + D x_T``). The exponents are suffix sums of the negative ``a``, summed
    directly (never a difference of two large cumulative sums), so the weights stay exact.
    Same layout and rules as ``ssd_scan``.
    """
    _check(x, dt, A, B, B, None)
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    a_after = F.pad(
        (dt.to(acc_dtype) * A.to(acc_dtype))[:, 1:], (0, 0, 0, 1)
    )  # a_{s+1}, 0 at the end
    decay_to_end = a_after.flip(1).cumsum(1).flip(1).exp().to(x.dtype)  # (b, l, h)
    x_w = (x * (dt.to(x.dtype) * decay_to_end).unsqueeze(-1)).view(
        batch, length, ngroups, -1
    )  # (b,l,g,r*p)
    state = (x_w.permute(0, 2, 3, 1) @ B.transpose(1, 2)).view(batch, nheads, headdim, d_state)
    if initial_state is not None:
        total = (dt.to(acc_dtype) * A.to(acc_dtype)).sum(1).exp().to(x.dtype)  # (b, h)
        state = state + total[:, :, None, None] * initial_state.to(x.dtype)
    return state


def ssd_step(
    state: Tensor,
    x_t: Tensor,
    dt_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    D: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One step of the recurrence: ``x_t (b, h, p)``, ``dt_t (b, h)``, ``B_t, C_t (b, g, n)``,
    ``state (b, h, p, n)``. Returns ``y_t (b, h, p)`` and the new state (``state`` is not
    modified)."""
    _check(x_t, dt_t, A, B_t, C_t, D)
    batch, nheads, headdim = x_t.shape
    ngroups, d_state = B_t.shape[-2:]
    if state.shape != (batch, nheads, headdim, d_state):
        raise ValueError(
            f"state must have shape {(batch, nheads, headdim, d_state)}, got {tuple(state.shape)}"
        )
    acc_dtype = torch.promote_types(x_t.dtype, torch.float32)
    decay = torch.exp(dt_t.to(acc_dtype) * A.to(acc_dtype)).to(x_t.dtype)
    # S_t = exp(dt A) S_{t-1} + dt x_t B_t^T, heads of one group sharing B_t (no repeat).
    x_dt = (x_t * dt_t.unsqueeze(-1)).reshape(batch, ngroups, -1, 1)  # (b,g,r*p,1)
    new_state = decay.view(batch, nheads, 1, 1) * state + (x_dt * B_t.unsqueeze(2)).view_as(state)
    # y_t = S_t C_t + D x_t
    y_t = (new_state.view(batch, ngroups, -1, d_state) @ C_t.unsqueeze(-1)).view_as(x_t)
    if D is not None:
        y_t = y_t + x_t * (D.unsqueeze(-1) if D.dim() == 1 else D)
    return y_t, new_state
