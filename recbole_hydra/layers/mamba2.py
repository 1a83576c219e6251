"""The Mamba-2 block, and Hydra's v latent Mamba-2 heads run as one batched block.

``Mamba2`` follows mamba-ssm's ``mamba_ssm.modules.mamba2.Mamba2`` (same arguments, initialisation
and parameter names, so its ``state_dict`` loads one of mamba-ssm's with ``rmsnorm=True``,
``D_has_hdim=False``, ``d_ssm=None``, ``bias=False``):

    u -> in_proj -> [z, xBC, dt_raw]
    xBC -> causal depthwise conv1d (width d_conv) -> SiLU -> [x, B, C]
    dt = softplus(dt_raw + dt_bias), A = -exp(A_log)
    y = SSD(x, dt, A, B, C) + D x                       (see ``ssd.py``)
    out = out_proj(RMSNorm(y * SiLU(z)))                (norm per group of d_inner // ngroups)

``MultiHeadLatentMamba2`` is Hydra's multi-head latent interaction (paper eq 7-8): v independent
Mamba-2 blocks of width ``d_head``, one per slice of the input, outputs concatenated, computed
as one block whose projections are batched over heads, whose conv and SSD scan run over all
heads' channels at once, and whose norm groups never straddle two heads.

Inference cache (``Mamba2Cache``): ``conv_state (b, conv_dim, d_conv)``, the last ``d_conv``
inputs of the conv (the x, B, C channels before the conv), oldest first, zeros before the
sequence start; ``ssm_state (b, nheads, headdim, d_state)``. For the latent block ``conv_dim``
and ``nheads`` count all heads: conv channels are x of all heads, then B, then C (the layout of one
Mamba2 with all heads and groups), SSD heads head after head.
"""

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .conv import causal_conv_silu
from .norms import GatedRMSNorm
from .ssd import ssd_final_state, ssd_scan, ssd_step
from .ssm_init import dt_bias_init

__all__ = ["Mamba2", "MultiHeadLatentMamba2", "Mamba2Cache"]


class Mamba2Cache(NamedTuple):
    conv_state: Tensor  # (b, conv_dim, d_conv): last d_conv conv inputs, oldest first
    ssm_state: Tensor  # (b, nheads, headdim, d_state)


def _A_log_init(nheads: int, A_init_range: Tuple[float, float], device=None, dtype=None) -> Tensor:
    low, high = A_init_range
    if not 0 < low <= high:
        raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range}")
    A = torch.empty(nheads, dtype=torch.float32, device=device).uniform_(low, high)
    return torch.log(A).to(dtype=dtype)


class _Mamba2Mixer(nn.Module):
    """What ``Mamba2`` and ``MultiHeadLatentMamba2`` share: everything between the projections.

    Both are ``n_blocks`` Mamba-2 blocks side by side (one for ``Mamba2``). Per block sizes:
    ``d_inner_block``, ``nheads_block``, ``ngroups_block``; totals ``d_inner``, ``nheads``,
    ``ngroups``. Subclasses define ``_project_in`` (``u (..., d_model)`` to ``z, xBC, dt``, each
    ``(..., n_blocks, size per block)``, ``xBC`` being each block's conv channels ``[x, B, C]``) and
    ``_project_out`` (``(..., d_inner)`` to ``(..., d_model)``). The conv runs on ``xBC`` as it
    comes out of the projection (a strided view: no copy), block after block. Channel order of the
    conv's parameters (and of ``conv_state``): x of all blocks, B of all blocks, C of all blocks,
    i.e. the layout of one Mamba2 with all the heads and groups (``_block_order`` maps between).
    """

    n_blocks: int
    d_model: int
    d_inner_block: int
    nheads_block: int
    ngroups_block: int
    headdim: int
    d_state: int
    d_conv: int
    chunk_size: int
    share_bc: bool = False  # one B and one C for all blocks (MultiHeadLatentMamba2's share_bc)

    def _init_mixer(self, A_init_range, dt_min, dt_max, dt_init_floor, device, dtype) -> None:
        factory = {"device": device, "dtype": dtype}
        self.d_inner = self.n_blocks * self.d_inner_block
        self.nheads = self.n_blocks * self.nheads_block
        self.ngroups = self.ngroups_block if self.share_bc else self.n_blocks * self.ngroups_block
        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            self.d_conv,
            groups=self.conv_dim,
            padding=self.d_conv - 1,
            bias=True,
            **factory,
        )
        self.dt_bias = nn.Parameter(
            dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor, **factory)
        )
        self.A_log = nn.Parameter(
            _A_log_init(self.nheads, A_init_range, device=device, dtype=dtype)
        )
        self.D = nn.Parameter(torch.ones(self.nheads, **factory))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # as mamba-ssm
        # one norm group per B/C group of each block: never across two latent heads
        self.norm = GatedRMSNorm(
            self.d_inner, eps=1e-5, group_size=self.d_inner_block // self.ngroups_block, **factory
        )
        if self.share_bc:
            return  # the conv's channels are already in the shared projection's order
        # conv channel c of block i's [x, B, C] is channel _block_order[i, c] of conv1d
        gn = self.ngroups_block * self.d_state
        x_ch = torch.arange(self.d_inner).view(self.n_blocks, self.d_inner_block)
        B_ch = self.d_inner + torch.arange(self.ngroups * self.d_state).view(self.n_blocks, gn)
        self.register_buffer(
            "_block_order",
            torch.cat([x_ch, B_ch, B_ch + self.ngroups * self.d_state], dim=1),
            persistent=False,
        )

    def _project_in(self, u: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def _in_proj(self, u: Tensor, spans: Sequence[Tuple[int, int]]) -> Tensor:
        """``u (..., d_model)`` times the in_proj columns ``[start, stop)`` of each span (columns of
        one block, ``[z, x, B, C, dt]``), side by side: ``(..., n_blocks, total width)``."""
        raise NotImplementedError

    def _project_out(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    # ---- pieces ---------------------------------------------------------------------------

    def _A(self) -> Tensor:
        # fp16/bf16 A_log would make A inexact: at least float32, as mamba-ssm
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def _conv_parts(self, t: Tensor) -> Tuple[Tensor, ...]:
        """Split the conv's channel dimension (first of ``t``) into the x, B, C channels."""
        return t.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state])

    def _split_xBC(self, xBC: Tensor) -> Tuple[Tensor, ...]:
        """``(..., n_blocks, conv channels of a block)`` -> its x, B, C, each
        ``(..., n_blocks, size)``."""
        gn = self.ngroups_block * self.d_state
        return xBC.split([self.d_inner_block, gn, gn], dim=-1)

    def _conv_params_by_block(self) -> Tuple[Tensor, Tensor]:
        """The conv's weight ``(n_blocks, channels, d_conv)`` and bias ``(n_blocks, channels)``,
        each block's channels in its ``[x, B, C]`` order (the order of ``_project_in``'s xBC)."""
        return self.conv1d.weight.squeeze(1)[self._block_order], self.conv1d.bias[self._block_order]

    def _conv(self, xBC: Tensor) -> Tuple[Tensor, ...]:
        """Causal depthwise conv over time + SiLU of ``xBC (b, l, n_blocks, conv channels of a
        block)``, in one call; returns x, B, C, each ``(b, l, n_blocks, size)``."""
        weight, bias = self._conv_params_by_block()
        conv_fn = kernels.usable("causal_conv1d_fn", xBC)
        if conv_fn is not None:
            flat = xBC.reshape(*xBC.shape[:2], -1).transpose(
                1, 2
            )  # (b, channels, l), channels last in memory
            out = conv_fn(flat, weight.flatten(0, 1), bias.flatten(), activation="silu").transpose(
                1, 2
            )
            return self._split_xBC(
                out.contiguous().view(xBC.shape)
            )  # channels last, as the scan kernel wants
        return self._split_xBC(causal_conv_silu(xBC, weight, bias))

    def _conv_state(self, parts: Sequence[Tensor], lengths: Optional[Tensor]) -> Tensor:
        """The last ``d_conv`` conv inputs before position ``lengths`` (zeros before the start)."""
        batch, length = parts[0].shape[:2]
        device = parts[0].device
        ends = torch.full((batch,), length, device=device) if lengths is None else lengths
        index = ends[:, None] + torch.arange(
            self.d_conv, device=device
        )  # position end - d_conv + k ...
        windows = []
        for part in parts:
            padded = F.pad(part.flatten(2), (0, 0, self.d_conv, 0))  # ... sits at end + k here
            windows.append(padded.gather(1, index[:, :, None].expand(-1, -1, padded.shape[-1])))
        return torch.cat(windows, dim=-1).transpose(1, 2).contiguous()

    def _scan(
        self, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, return_final_state: bool
    ) -> Tuple[Tensor, Optional[Tensor]]:
        scan_fn = kernels.usable("mamba_chunk_scan_combined", x)
        if scan_fn is not None:
            out = scan_fn(
                x,
                dt,
                A.float(),
                B,
                C,
                chunk_size=self.chunk_size,
                D=self.D,
                return_final_states=return_final_state,
            )
            return out if return_final_state else (out, None)
        return ssd_scan(
            x, dt, A, B, C, self.chunk_size, D=self.D, return_final_state=return_final_state
        )

    # ---- public API -------------------------------------------------------------------------

    def forward(
        self, u: Tensor, lengths: Optional[Tensor] = None, return_cache: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Mamba2Cache]]:
        """``u (b, l, d_model)`` -> ``(b, l, d_model)``; with ``return_cache`` also the cache
        after it.

        ``lengths (b,)``: for right-padded input, the number of real positions of each sequence.
        Padded positions get ``dt = 0``, so they never move the SSM state, and (the conv being
        causal) never reach a real position; the cache is the one after the last real position.
        Outputs at padded positions are meaningless.
        """
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"u must be (batch, length, {self.d_model}), got shape {tuple(u.shape)}"
            )
        batch, length, _ = u.shape
        z, xBC_in, dt_raw = self._project_in(u)
        x, B, C = self._conv(xBC_in)
        dt = F.softplus(dt_raw.reshape(batch, length, self.nheads) + self.dt_bias)
        if lengths is not None:
            lengths = self._check_lengths(lengths, batch, length, u.device)
            is_pad = torch.arange(length, device=u.device) >= lengths[:, None]
            dt = dt.masked_fill(is_pad[:, :, None], 0.0)
        x = x.reshape(batch, length, self.nheads, self.headdim)
        if torch.is_grad_enabled():
            # x is a view of the conv output, which also holds B and C; the scan keeps x for
            # backward, and a copy of x alone lets the larger conv output be freed.
            x = x.contiguous()
        y, ssm_state = self._scan(
            x,
            dt,
            self._A(),
            B.reshape(batch, length, self.ngroups, self.d_state),
            C.reshape(batch, length, self.ngroups, self.d_state),
            return_final_state=return_cache,
        )
        y = self.norm(
            y.reshape(batch, length, self.d_inner), z
        )  # z (b, l, n_blocks, d_inner_block): no copy
        out = self._project_out(y)
        if not return_cache:
            return out
        return out, Mamba2Cache(self._conv_state(self._split_xBC(xBC_in), lengths), ssm_state)

    def forward_last(self, u: Tensor, lengths: Tensor) -> Tensor:
        """The output at the last real position of each row only: ``u (b, l, d_model)``,
        ``lengths (b,)`` -> ``(b, d_model)``, equal to ``forward(u, lengths)[i, lengths[i] - 1]``.

        The SSD output there is read from the state after it, ``S_T C_T + D x_T``
        (``ssd_final_state``), so the within-chunk quadratic part is never formed; z and C are
        projected only where they are read (the last position, and the conv's window before it),
        and the norm and output projection run on one position per row: how a model scores its
        next item.
        Rows of length 0 give a meaningless row.
        """
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"u must be (batch, length, {self.d_model}), got shape {tuple(u.shape)}"
            )
        batch, length, _ = u.shape
        lengths = self._check_lengths(lengths, batch, length, u.device)
        if kernels.usable("mamba_chunk_scan_combined", u) is not None:
            return self.forward(u, lengths)[
                torch.arange(batch, device=u.device), (lengths - 1).clamp(min=0)
            ]
        rows, last = torch.arange(batch, device=u.device), (lengths - 1).clamp(min=0)
        window = (
            last[:, None] - (self.d_conv - 1) + torch.arange(self.d_conv, device=u.device)
        )  # (b, d_conv)
        u_window = u[rows[:, None], window.clamp(min=0)] * (window >= 0).unsqueeze(-1).to(
            u.dtype
        )  # 0 before the start
        x, B, C_t, z_t, dt_raw = self._last_position_inputs(u, u_window)
        is_pad = torch.arange(length, device=u.device) >= lengths[:, None]
        dt = F.softplus(dt_raw.reshape(batch, length, self.nheads) + self.dt_bias).masked_fill(
            is_pad[:, :, None], 0.0
        )
        x = x.reshape(batch, length, self.nheads, self.headdim)
        state = ssd_final_state(
            x, dt, self._A(), B.reshape(batch, length, self.ngroups, self.d_state)
        )
        C_t = C_t.reshape(batch, self.ngroups, self.d_state, 1)
        y = (state.view(batch, self.ngroups, -1, self.d_state) @ C_t).view(
            batch, self.nheads, self.headdim
        )
        y = y + x[rows, last] * self.D.unsqueeze(-1)
        return self._project_out(
            self.norm(y.reshape(batch, self.d_inner), z_t.reshape(batch, self.d_inner))
        )

    def _last_position_inputs(self, u: Tensor, u_window: Tensor) -> Tuple[Tensor, ...]:
        """What ``forward_last`` reads: x and B after the conv and dt_raw at every position of ``u
        (b, l, d_model)``; C after the conv and z at the last position, whose conv window
        ``u_window (b, d_conv, d_model)`` is. The last position needs z and C only there, x, B and
        dt everywhere: each set of in_proj columns is projected on the rows that need it."""
        di, gn, nh = self.d_inner_block, self.ngroups_block * self.d_state, self.nheads_block
        end = 2 * di + 2 * gn + nh  # a block's in_proj columns: [z, x, B, C, dt]
        xB_in, dt_raw = self._in_proj(u, [(di, 2 * di + gn), (end - nh, end)]).split(
            [di + gn, nh], dim=-1
        )
        z_C = self._in_proj(
            u_window, [(0, di), (2 * di + gn, 2 * di + 2 * gn)]
        )  # (b, d_conv, n_blocks, di + gn)
        weight, bias = self._conv_params_by_block()
        x, B = causal_conv_silu(xB_in, weight[:, : di + gn], bias[:, : di + gn]).split(
            [di, gn], dim=-1
        )
        C_t = F.silu(
            bias[:, di + gn :] + (z_C[..., di:].permute(0, 2, 3, 1) * weight[:, di + gn :]).sum(-1)
        )  # (b, n_blocks, gn)
        return x, B, C_t, z_C[:, -1, :, :di], dt_raw

    def step(self, u_t: Tensor, cache: Mamba2Cache) -> Tuple[Tensor, Mamba2Cache]:
        """One position: ``u_t (b, d_model)`` or ``(b, 1, d_model)`` and the cache before it ->
        ``(y_t, cache after it)``, ``y_t`` shaped as ``u_t``. O(1) in the sequence length; the
        given cache is not modified."""
        one_step_dim = u_t.dim() == 3
        if one_step_dim:
            if u_t.shape[1] != 1:
                raise ValueError(
                    f"step takes one position, got u_t of shape {tuple(u_t.shape)}; use forward"
                )
            u_t = u_t[:, 0]
        if u_t.dim() != 2 or u_t.shape[-1] != self.d_model:
            raise ValueError(f"u_t must be (batch, {self.d_model}), got shape {tuple(u_t.shape)}")
        batch = u_t.shape[0]
        z, xBC_in, dt_raw = self._project_in(u_t)
        x, B, C = self._split_xBC(xBC_in)
        xBC = torch.cat([x.flatten(1), B.flatten(1), C.flatten(1)], dim=-1)  # (b, conv_dim)
        weight = self.conv1d.weight.squeeze(1)
        conv_update = kernels.usable("causal_conv1d_update", u_t)
        if conv_update is not None:
            conv_state = cache.conv_state.clone()  # the kernel updates in place
            xBC = conv_update(xBC, conv_state, weight, self.conv1d.bias, "silu")
        else:
            conv_state = torch.cat([cache.conv_state[:, :, 1:], xBC.unsqueeze(-1)], dim=-1)
            xBC = F.silu(torch.einsum("bck,ck->bc", conv_state, weight) + self.conv1d.bias)
        x, B, C = self._conv_parts(xBC.T)
        x = x.T.reshape(batch, self.nheads, self.headdim)
        B, C = (t.T.reshape(batch, self.ngroups, self.d_state) for t in (B, C))
        dt = F.softplus(dt_raw.reshape(batch, self.nheads) + self.dt_bias)
        A = self._A()
        state_update = kernels.usable("selective_state_update", u_t)
        if state_update is not None:
            ssm_state = cache.ssm_state.clone()  # the kernel updates in place
            p, n = self.headdim, self.d_state
            y = state_update(
                ssm_state,
                x,
                dt.unsqueeze(-1).expand(-1, -1, p),
                A.float()[:, None, None].expand(-1, p, n),
                B,
                C,
                D=self.D.unsqueeze(-1).expand(-1, p),
            )
        else:
            y, ssm_state = ssd_step(cache.ssm_state, x, dt, A, B, C, D=self.D)
        out = self._project_out(
            self.norm(y.reshape(batch, self.d_inner), z.reshape(batch, self.d_inner))
        )
        return (out.unsqueeze(1) if one_step_dim else out), Mamba2Cache(conv_state, ssm_state)

    def init_cache(self, batch_size: int, device=None, dtype=None) -> Mamba2Cache:
        """The cache before the first position (zeros)."""
        device = self.D.device if device is None else device
        dtype = self.D.dtype if dtype is None else dtype
        return Mamba2Cache(
            torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype),
            torch.zeros(
                batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype
            ),
        )

    @staticmethod
    def _check_lengths(lengths: Tensor, batch: int, length: int, device) -> Tensor:
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.shape != (batch,):
            raise ValueError(
                f"lengths must have shape ({batch},), one per sequence, got {tuple(lengths.shape)}"
            )
        if lengths.is_floating_point() or bool(((lengths < 0) | (lengths > length)).any()):
            raise ValueError(
                f"lengths must be integers in [0, {length}] (real positions of right-padded input)"
            )
        return lengths.long()


def _sizes(
    d_model: int,
    expand: int,
    headdim: int,
    ngroups: int,
    d_state: int,
    d_conv: int,
    chunk_size: int,
):
    d_inner = expand * d_model
    for name, value in (
        ("d_model", d_model),
        ("expand", expand),
        ("headdim", headdim),
        ("ngroups", ngroups),
        ("d_state", d_state),
        ("d_conv", d_conv),
        ("chunk_size", chunk_size),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if d_inner % headdim != 0:
        raise ValueError(
            f"d_inner = expand * d_model = {d_inner} must be divisible by headdim ({headdim}); "
            f"choose headdim among the divisors of {d_inner}"
        )
    nheads = d_inner // headdim
    if nheads % ngroups != 0:
        raise ValueError(
            f"nheads = d_inner // headdim = {nheads} must be divisible by ngroups ({ngroups}); "
            f"choose ngroups among the divisors of {nheads} (or a smaller headdim)"
        )
    return d_inner, nheads


class Mamba2(_Mamba2Mixer):
    """Mamba-2 block (mamba-ssm's ``Mamba2`` arguments, initialisation and parameter names).

    On CUDA, with kernels enabled (``recbole_hydra.layers.kernels``), mamba-ssm / causal-conv1d
    kernels run when they are installed; elsewhere the PyTorch path (which runs anywhere).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: Tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.d_inner_block, self.nheads_block = _sizes(
            d_model, expand, headdim, ngroups, d_state, d_conv, chunk_size
        )
        self.n_blocks, self.ngroups_block = 1, ngroups
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.headdim, self.chunk_size = headdim, chunk_size
        self._init_mixer(A_init_range, dt_min, dt_max, dt_init_floor, device, dtype)
        factory = {"device": device, "dtype": dtype}
        # in_proj output order: [z, x, B, C, dt]
        self.in_proj = nn.Linear(
            d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False, **factory
        )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory)

    def _project_in(self, u: Tensor) -> Tuple[Tensor, ...]:
        return tuple(
            t.unsqueeze(-2)
            for t in self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        )

    def _in_proj(self, u: Tensor, spans: Sequence[Tuple[int, int]]) -> Tensor:
        return F.linear(u, torch.cat([self.in_proj.weight[a:b] for a, b in spans])).unsqueeze(-2)

    def _project_out(self, y: Tensor) -> Tensor:
        return self.out_proj(y)


class MultiHeadLatentMamba2(_Mamba2Mixer):
    """Hydra's multi-head latent interaction (paper eq 7-8): ``n_heads`` Mamba-2 blocks of width
    ``d_head``, each with its own parameters, run as one batched computation.

    Input ``(b, l, n_heads * d_head)`` is the concatenation of the heads' inputs ``X_1..X_v``;
    output ``(b, l, n_heads * d_head)`` is ``concat(Mamba2_1(X_1), ..., Mamba2_v(X_v))``. Each head
    is a ``Mamba2(d_head, d_state, d_conv, expand, headdim, ngroups)``; ``headdim=None`` means
    ``expand * d_head`` (one SSD head per latent head). Parameters, batched over heads:
    ``in_proj_weight (v, d_head, d_in_proj)`` (columns ``[z, x, B, C, dt]`` as Mamba2's in_proj),
    ``out_proj_weight (v, d_inner, d_head)``, both used as ``x @ W`` in one batched matmul; the
    conv over the x channels of all heads, then B, then C; ``dt_bias``, ``A_log``, ``D`` and
    ``norm.weight`` head after head. ``from_blocks`` builds one from v ``Mamba2`` blocks.

    ``share_bc=True`` (not the paper's layer, which keeps the heads independent): one B and one C
    for all heads, projected from the whole input by ``bc_proj_weight (n_heads * d_head,
    2 * d_state)`` (columns ``[B, C]``), as one Mamba-2 with ``ngroups=1`` shares them across its
    SSD heads. Each head keeps its own x, z, dt, conv on x, A, D and norm; ``in_proj_weight`` then
    has the columns ``[z, x, dt]``, and the conv's B and C channels are ``d_state`` each. The conv
    and the SSD's ``C B^T`` run once instead of once per head.

    The default ``chunk_size=64`` balances the quadratic within-chunk part against the number of
    chunk states on CPU (``benchmarks/ssd_block.py`` sweeps it).
    """

    def __init__(
        self,
        n_heads: int,
        d_head: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: Optional[int] = None,
        ngroups: int = 1,
        chunk_size: int = 64,
        share_bc: bool = False,
        A_init_range: Tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(n_heads, int) or n_heads <= 0:
            raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
        if share_bc and ngroups != 1:
            raise ValueError(
                f"share_bc=True shares one B/C group across heads: ngroups must be 1, got {ngroups}"
            )
        self.share_bc = bool(share_bc)
        headdim = expand * d_head if headdim is None else headdim
        self.d_inner_block, self.nheads_block = _sizes(
            d_head, expand, headdim, ngroups, d_state, d_conv, chunk_size
        )
        self.n_blocks = self.n_heads = n_heads
        self.d_head, self.ngroups_block = d_head, ngroups
        self.d_model = n_heads * d_head
        self.d_state, self.d_conv, self.expand, self.headdim = d_state, d_conv, expand, headdim
        self.chunk_size = chunk_size
        self._init_mixer(A_init_range, dt_min, dt_max, dt_init_floor, device, dtype)
        factory = {"device": device, "dtype": dtype}
        bc_per_head = 0 if self.share_bc else 2 * ngroups * d_state
        self.d_in_proj_block = 2 * self.d_inner_block + bc_per_head + self.nheads_block
        self.in_proj_weight = nn.Parameter(
            torch.empty(n_heads, d_head, self.d_in_proj_block, **factory)
        )
        if self.share_bc:
            self.bc_proj_weight = nn.Parameter(torch.empty(self.d_model, 2 * d_state, **factory))
            bound = self.d_model**-0.5  # nn.Linear's default init
            nn.init.uniform_(self.bc_proj_weight, -bound, bound)
        self.out_proj_weight = nn.Parameter(
            torch.empty(n_heads, self.d_inner_block, d_head, **factory)
        )
        # nn.Linear's default init, per head: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        nn.init.uniform_(self.in_proj_weight, -(d_head**-0.5), d_head**-0.5)
        nn.init.uniform_(
            self.out_proj_weight, -(self.d_inner_block**-0.5), self.d_inner_block**-0.5
        )

    @staticmethod
    def _per_head_matmul(x: Tensor, weight: Tensor) -> Tensor:
        """``(..., v, d_in) @ (v, d_in, d_out) -> (..., v, d_out)``: one bmm over heads, no copies
        of x (its head slices are read in place as strided matrices)."""
        lead = x.shape[:-2]
        out = torch.bmm(x.reshape(-1, *x.shape[-2:]).transpose(0, 1), weight)  # (v, tokens, d_out)
        return out.transpose(0, 1).unflatten(0, lead)

    def _project_in(self, u: Tensor) -> Tuple[Tensor, ...]:
        if self.share_bc:  # xBC is then the pair (x (..., v, d_inner), BC (..., 1, 2 d_state))
            d_inner, end = self.d_inner_block, self.d_in_proj_block
            z, dt = self._in_proj(u, [(0, d_inner), (2 * d_inner, end)]).split(
                [d_inner, end - 2 * d_inner], dim=-1
            )
            return z, (self._in_proj(u, [(d_inner, 2 * d_inner)]), self._bc_proj(u, 0, 2)), dt
        # Two products, not one split into three: the conv's channels come out as their own tensor
        # (not a strided slice), and backward adds two small input gradients instead of
        # concatenating three output gradients into a (tokens, v, d_in_proj) tensor.
        d_inner, nheads, end = self.d_inner_block, self.nheads_block, self.d_in_proj_block
        xBC = self._in_proj(u, [(d_inner, end - nheads)])
        z, dt = self._in_proj(u, [(0, d_inner), (end - nheads, end)]).split(
            [d_inner, nheads], dim=-1
        )
        return z, xBC, dt

    def _in_proj(self, u: Tensor, spans: Sequence[Tuple[int, int]]) -> Tensor:
        w = self.in_proj_weight
        columns = (
            w[..., spans[0][0] : spans[0][1]]
            if len(spans) == 1
            else torch.cat([w[..., a:b] for a, b in spans], dim=-1)
        )
        return self._per_head_matmul(u.unflatten(-1, (self.n_heads, self.d_head)), columns)

    def _bc_proj(self, u: Tensor, first: int, stop: int) -> Tensor:
        """``u (..., d_model)`` times the shared B/C columns of parts ``[first, stop)`` (0 = B,
        1 = C): ``(..., 1, (stop - first) * d_state)``, one group for all heads."""
        n = self.d_state
        return (u @ self.bc_proj_weight[:, first * n : stop * n]).unsqueeze(-2)

    def _split_xBC(self, xBC) -> Tuple[Tensor, ...]:
        if not self.share_bc:
            return super()._split_xBC(xBC)
        x, BC = xBC
        return (x, *BC.split(self.d_state, dim=-1))

    def _conv(self, xBC) -> Tuple[Tensor, ...]:
        if not self.share_bc:
            return super()._conv(xBC)
        x_in, BC_in = xBC
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
        conv_fn = kernels.usable("causal_conv1d_fn", x_in)
        if conv_fn is not None:
            flat = torch.cat([x_in.flatten(2), BC_in.flatten(2)], dim=-1).transpose(1, 2)
            out = conv_fn(flat, weight, bias, activation="silu").transpose(1, 2).contiguous()
            x, BC = out.split([self.d_inner, 2 * self.d_state], dim=-1)
            return self._split_xBC((x.unflatten(-1, x_in.shape[-2:]), BC.unsqueeze(-2)))
        # x per head and the shared B, C: two calls, the x channels then the B and C channels
        (x_w, x_b), (BC_w, BC_b) = self._shared_conv_params()
        return self._split_xBC(
            (causal_conv_silu(x_in, x_w, x_b), causal_conv_silu(BC_in, BC_w, BC_b))
        )

    def _shared_conv_params(self) -> Tuple[Tuple[Tensor, Tensor], ...]:
        """With ``share_bc``: the conv's (weight, bias) of the x channels, ``(n_heads,
        d_inner_block, d_conv)`` and ``(n_heads, d_inner_block)``, then of the shared B and C
        channels, ``(1, 2 * d_state, d_conv)`` and ``(1, 2 * d_state)``: views, no copies."""
        sizes = [self.d_inner, 2 * self.d_state]
        shapes = [(self.n_heads, self.d_inner_block), (1, 2 * self.d_state)]
        weights = self.conv1d.weight.squeeze(1).split(sizes)
        biases = self.conv1d.bias.split(sizes)
        return tuple(
            (w.view(*shape, -1), b.view(shape)) for w, b, shape in zip(weights, biases, shapes)
        )

    def _last_position_inputs(self, u: Tensor, u_window: Tensor) -> Tuple[Tensor, ...]:
        if not self.share_bc:
            return super()._last_position_inputs(u, u_window)
        di, end = self.d_inner_block, self.d_in_proj_block
        x_in, dt_raw = self._in_proj(u, [(di, end)]).split([di, end - 2 * di], dim=-1)
        (x_w, x_b), (BC_w, BC_b) = self._shared_conv_params()
        (B_w, C_w), (B_b, C_b) = BC_w.split(self.d_state, dim=1), BC_b.split(self.d_state, dim=1)
        x = causal_conv_silu(x_in, x_w, x_b)
        B = causal_conv_silu(self._bc_proj(u, 0, 1), B_w, B_b)
        C_window = self._bc_proj(u_window, 1, 2)  # (b, d_conv, 1, d_state)
        C_t = F.silu(C_b + (C_window.permute(0, 2, 3, 1) * C_w).sum(-1))  # (b, 1, d_state)
        z_t = self._in_proj(u_window[:, -1], [(0, di)])  # (b, n_heads, d_inner_block)
        return x, B, C_t, z_t, dt_raw

    def _project_out(self, y: Tensor) -> Tensor:
        return self._per_head_matmul(
            y.unflatten(-1, (self.n_heads, self.d_inner_block)), self.out_proj_weight
        ).flatten(-2)

    @classmethod
    def from_blocks(
        cls, blocks: Sequence[Mamba2], chunk_size: Optional[int] = None
    ) -> "MultiHeadLatentMamba2":
        """The batched module computing ``concat(blocks[i](X_i))``, with the blocks' weights copied.

        ``chunk_size`` defaults to the first block's.
        """
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, Mamba2) for b in blocks):
            raise ValueError("from_blocks needs a non-empty sequence of Mamba2 blocks")
        first = blocks[0]

        def config(b):
            return b.d_model, b.d_state, b.d_conv, b.expand, b.headdim, b.ngroups_block

        if any(config(b) != config(first) for b in blocks):
            raise ValueError(
                "all blocks must share d_model, d_state, d_conv, expand, headdim and ngroups"
            )
        module = cls(
            len(blocks),
            first.d_model,
            d_state=first.d_state,
            d_conv=first.d_conv,
            expand=first.expand,
            headdim=first.headdim,
            ngroups=first.ngroups_block,
            chunk_size=first.chunk_size if chunk_size is None else chunk_size,
            device=first.D.device,
            dtype=first.D.dtype,
        )
        with torch.no_grad():
            module.in_proj_weight.copy_(torch.stack([b.in_proj.weight.T for b in blocks]))
            module.out_proj_weight.copy_(torch.stack([b.out_proj.weight.T for b in blocks]))
            for name in ("weight", "bias"):  # x of all heads, then B of all heads, then C
                parts = [b._conv_parts(getattr(b.conv1d, name)) for b in blocks]
                getattr(module.conv1d, name).copy_(
                    torch.cat([p[i] for i in range(3) for p in parts])
                )
            for name in ("dt_bias", "A_log", "D"):
                getattr(module, name).copy_(torch.cat([getattr(b, name) for b in blocks]))
            module.norm.weight.copy_(torch.cat([b.norm.weight for b in blocks]))
        return module
