"""The Mamba-2 layers: the Mamba2 block and the batched multi-head latent block (step vs forward,
caches, padding, equivalence with separate blocks, causality, gradients, errors, the CUDA-kernel
glue), and the causal conv and RMS norms they are made of."""

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_hydra.layers import kernels
from recbole_hydra.layers.mamba2 import Mamba2, Mamba2Cache, MultiHeadLatentMamba2
from recbole_hydra.layers.norms import GatedRMSNorm, RMSNorm

F64 = torch.float64


def mamba2(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    args = dict(
        d_model=8, d_state=6, d_conv=4, expand=2, headdim=4, ngroups=2, chunk_size=5, dtype=F64
    )
    args.update(kw)
    return Mamba2(**args)


def latent(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    args = dict(
        n_heads=3,
        d_head=4,
        d_state=6,
        d_conv=4,
        expand=2,
        headdim=None,
        ngroups=1,
        chunk_size=5,
        dtype=F64,
    )
    args.update(kw)
    return MultiHeadLatentMamba2(**args)


BLOCKS = {
    "mamba2": mamba2,
    "mamba2_g1": lambda **kw: mamba2(ngroups=1, headdim=8, **kw),
    "latent": latent,
    "latent_multihead": lambda **kw: latent(headdim=2, ngroups=2, **kw),
    "latent_shared_bc": lambda **kw: latent(headdim=4, share_bc=True, **kw),
}


def inputs(block, batch=2, length=13, seed=1):
    return torch.randn(
        batch, length, block.d_model, dtype=F64, generator=torch.Generator().manual_seed(seed)
    )


def close(a, b, tol=1e-10):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() <= tol


def run_steps(block, u, cache=None):
    cache = block.init_cache(u.shape[0]) if cache is None else cache
    ys = []
    for t in range(u.shape[1]):
        y_t, cache = block.step(u[:, t], cache)
        ys.append(y_t)
    return torch.stack(ys, 1), cache


def reference_mamba2(block: Mamba2, u):
    """Mamba-2 as written in the paper / mamba-ssm, with a plain loop for the SSM."""
    b, l, _ = u.shape
    d_inner, g, n, h, p = block.d_inner, block.ngroups, block.d_state, block.nheads, block.headdim
    z, xBC, dt = (u @ block.in_proj.weight.T).split([d_inner, d_inner + 2 * g * n, h], dim=-1)
    xBC = F.silu(
        block.conv1d(xBC.transpose(1, 2))[..., :l].transpose(1, 2)
    )  # nn.Conv1d pads both sides
    x, B, C = xBC.split([d_inner, g * n, g * n], dim=-1)
    x, B, C = x.reshape(b, l, h, p), B.reshape(b, l, g, n), C.reshape(b, l, g, n)
    dt = F.softplus(dt + block.dt_bias)
    A = -torch.exp(block.A_log)
    state = torch.zeros(b, h, p, n, dtype=u.dtype)
    ys = []
    for t in range(l):
        Bt, Ct = B[:, t].repeat_interleave(h // g, 1), C[:, t].repeat_interleave(h // g, 1)
        state = (
            torch.exp(dt[:, t] * A)[..., None, None] * state
            + dt[:, t, :, None, None] * x[:, t, ..., None] * Bt[:, :, None]
        )
        ys.append((state * Ct[:, :, None]).sum(-1) + block.D[:, None] * x[:, t])
    y = torch.stack(ys, 1).reshape(b, l, d_inner) * F.silu(z)
    y = y.reshape(b, l, g, d_inner // g)
    y = (y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(
        b, l, d_inner
    ) * block.norm.weight
    return y @ block.out_proj.weight.T


@pytest.mark.parametrize("ngroups,headdim", [(1, 8), (2, 4), (1, 16)])
def test_mamba2_matches_reference(ngroups, headdim):
    block = mamba2(ngroups=ngroups, headdim=headdim)
    u = inputs(block)
    assert close(block(u), reference_mamba2(block, u))


@pytest.mark.parametrize("name", BLOCKS)
def test_step_equals_forward(name):
    block = BLOCKS[name]()
    u = inputs(block)
    y = block(u)
    y_steps, cache = run_steps(block, u)
    assert close(y_steps, y)
    # (b, 1, d) input works too and keeps its shape
    y_t, _ = block.step(u[:, :1], block.init_cache(2))
    assert y_t.shape == (2, 1, block.d_model) and close(y_t[:, 0], y[:, 0])


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("prefix", [2, 7, 10])
def test_forward_cache_continues_with_step(name, prefix):
    block = BLOCKS[name]()
    u = inputs(block, length=13)
    y_full = block(u)
    y_prefix, cache = block(u[:, :prefix], return_cache=True)
    assert isinstance(cache, Mamba2Cache)
    assert cache.conv_state.shape == (2, block.conv_dim, block.d_conv)
    assert cache.ssm_state.shape == (2, block.nheads, block.headdim, block.d_state)
    y_rest, cache_end = run_steps(block, u[:, prefix:], cache)
    assert close(torch.cat([y_prefix, y_rest], 1), y_full)
    _, cache_full = block(u, return_cache=True)
    assert close(cache_end.ssm_state, cache_full.ssm_state) and close(
        cache_end.conv_state, cache_full.conv_state
    )


@pytest.mark.parametrize("name", BLOCKS)
def test_right_padding_lengths(name):
    block = BLOCKS[name]()
    u = inputs(block, batch=3, length=11)
    lengths = torch.tensor([11, 6, 2])
    u_junk = u.clone()
    for i, n in enumerate(lengths):
        u_junk[i, n:] = 100.0 * torch.randn_like(u_junk[i, n:])  # whatever sits in the padding
    y, cache = block(u_junk, lengths=lengths, return_cache=True)
    for i, n in enumerate(lengths.tolist()):
        y_i, cache_i = block(u[i : i + 1, :n], return_cache=True)
        assert close(y[i : i + 1, :n], y_i)  # padding never changes real positions
        assert close(cache.ssm_state[i : i + 1], cache_i.ssm_state)
        assert close(cache.conv_state[i : i + 1], cache_i.conv_state)
        # and the cache continues the unpadded sequence
        y_next, _ = block.step(
            u[i : i + 1, n % 11],
            Mamba2Cache(cache.conv_state[i : i + 1], cache.ssm_state[i : i + 1]),
        )
        y_next_ref, _ = block.step(u[i : i + 1, n % 11], cache_i)
        assert close(y_next, y_next_ref)


@pytest.mark.parametrize("name", BLOCKS)
def test_forward_last_equals_forward_at_last_position(name):
    block = BLOCKS[name]()
    u = inputs(block, batch=3, length=11)
    lengths = torch.tensor([11, 6, 1])
    u[1, 6:] = 100.0  # padding
    last = block.forward_last(u, lengths)
    full = block(u, lengths=lengths)[torch.arange(3), lengths - 1]
    assert last.shape == (3, block.d_model) and full.abs().min() > 0
    assert close(last, full)


def test_zero_length_cache_is_empty_cache():
    block = latent()
    _, cache = block(
        inputs(block, batch=2, length=5), lengths=torch.tensor([0, 5]), return_cache=True
    )
    empty = block.init_cache(1)
    assert torch.equal(cache.ssm_state[:1], empty.ssm_state) and torch.equal(
        cache.conv_state[:1], empty.conv_state
    )


@pytest.mark.parametrize("headdim,ngroups", [(None, 1), (2, 2), (4, 1)])
def test_latent_equals_separate_blocks(headdim, ngroups):
    torch.manual_seed(3)
    n_heads, d_head = 3, 4
    blocks = [
        Mamba2(
            d_head,
            d_state=6,
            headdim=headdim or 2 * d_head,
            ngroups=ngroups,
            chunk_size=4,
            dtype=F64,
        )
        for _ in range(n_heads)
    ]
    for b in blocks:  # parameters that differ between heads and from their initial values
        with torch.no_grad():
            for p in b.parameters():
                p.add_(0.1 * torch.randn_like(p))
    module = MultiHeadLatentMamba2.from_blocks(blocks)
    assert module.headdim == (headdim or 2 * d_head)
    u = inputs(module, length=10)
    expected = torch.cat(
        [b(u[..., i * d_head : (i + 1) * d_head]) for i, b in enumerate(blocks)], dim=-1
    )
    assert close(module(u), expected)
    # the same holds for the recurrent caches
    _, cache = module(u, return_cache=True)
    caches = [
        b(u[..., i * d_head : (i + 1) * d_head], return_cache=True)[1] for i, b in enumerate(blocks)
    ]
    assert close(cache.ssm_state, torch.cat([c.ssm_state for c in caches], 1))


def reference_latent_shared_bc(block: MultiHeadLatentMamba2, u):
    """The latent block with B and C shared, written out head by head: each head's z, x, dt
    from its own slice of u, one B and one C from all of u, the conv and the SSM as plain loops,
    one RMS norm per head."""
    b, l, _ = u.shape
    v, dh, di, n = block.n_heads, block.d_head, block.d_inner_block, block.d_state
    hb, p, k_width = block.nheads_block, block.headdim, block.d_conv
    weight, bias = block.conv1d.weight[:, 0], block.conv1d.bias

    def conv_silu(seq, channels):
        out = torch.zeros_like(seq) + bias[channels]
        for t in range(l):
            for k in range(k_width):
                if t - (k_width - 1) + k >= 0:
                    out[:, t] += weight[channels, k] * seq[:, t - (k_width - 1) + k]
        return F.silu(out)

    B, C = conv_silu(u @ block.bc_proj_weight, slice(v * di, v * di + 2 * n)).split(n, dim=-1)
    A = -torch.exp(block.A_log)
    outs = []
    for i in range(v):
        heads, inner = slice(i * hb, (i + 1) * hb), slice(i * di, (i + 1) * di)
        z, x_in, dt = (u[..., i * dh : (i + 1) * dh] @ block.in_proj_weight[i]).split(
            [di, di, hb], dim=-1
        )
        x = conv_silu(x_in, inner).reshape(b, l, hb, p)
        dt = F.softplus(dt + block.dt_bias[heads])
        state = torch.zeros(b, hb, p, n, dtype=u.dtype)
        ys = []
        for t in range(l):
            decay = torch.exp(dt[:, t] * A[heads])[..., None, None]
            state = (
                decay * state + dt[:, t, :, None, None] * x[:, t, ..., None] * B[:, t, None, None]
            )
            ys.append((state * C[:, t, None, None]).sum(-1) + block.D[heads, None] * x[:, t])
        y = torch.stack(ys, 1).reshape(b, l, di) * F.silu(z)
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * block.norm.weight[inner]
        outs.append(y @ block.out_proj_weight[i])
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("headdim", [None, 4])
def test_latent_shared_bc_matches_reference(headdim):
    block = latent(headdim=headdim, share_bc=True)
    with torch.no_grad():  # parameters away from their initial values (D = 1, equal heads' A)
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert block.conv_dim == block.d_inner + 2 * block.d_state  # one B, one C
    assert block.in_proj_weight.shape[-1] == 2 * block.d_inner_block + block.nheads_block
    u = inputs(block, length=11)
    assert close(block(u), reference_latent_shared_bc(block, u))


def test_latent_heads_are_independent():
    block = latent()
    u = inputs(block)
    y = block(u)
    bumped = u.clone()
    bumped[..., :4] += 1.0  # head 0's slice only
    y_bumped = block(bumped)
    assert torch.equal(y_bumped[..., 4:], y[..., 4:]) and not torch.allclose(
        y_bumped[..., :4], y[..., :4]
    )


@pytest.mark.parametrize("name", BLOCKS)
def test_causal(name):
    block = BLOCKS[name]()
    u = inputs(block, length=12)
    y = block(u)
    for t in (0, 5, 10):
        bumped = u.clone()
        bumped[:, t + 1] += 1.0
        y_bumped = block(bumped)
        assert torch.equal(y_bumped[:, : t + 1], y[:, : t + 1])
        assert not torch.allclose(y_bumped[:, t + 1], y[:, t + 1])


@pytest.mark.parametrize("name", BLOCKS)
def test_gradients_reach_every_parameter(name):
    block = BLOCKS[name]()
    u = inputs(block).requires_grad_()
    block(u, lengths=torch.tensor([13, 9])).pow(2).sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    assert u.grad.abs().sum() > 0


def test_block_gradcheck():
    block = latent(n_heads=2, d_head=2, d_state=3, chunk_size=3)
    u = inputs(block, batch=1, length=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda u: block(u), (u,))
    conv_w = block.conv1d.weight
    assert torch.autograd.gradcheck(
        lambda w: torch.func.functional_call(block, {"conv1d.weight": w}, (u,)), (conv_w,)
    )


@pytest.mark.parametrize(
    "length", [1, 2, 3, 4, 7]
)  # shorter than, equal to and longer than the width
def test_causal_conv_silu_equals_conv1d_and_gradchecks(length):
    from recbole_hydra.layers.conv import _CausalConvSiLU

    torch.manual_seed(length)
    width, heads, channels = 4, 2, 3
    proj = torch.randn(2, length, heads, 2 * channels + 1, dtype=F64)
    x = proj[..., channels : 2 * channels].requires_grad_()  # a strided view, as the blocks pass it
    weight = torch.randn(heads, channels, width, dtype=F64, requires_grad=True)
    bias = torch.randn(heads, channels, dtype=F64, requires_grad=True)
    flat = x.reshape(2, length, -1).transpose(1, 2)
    reference = (
        F.silu(
            F.conv1d(
                flat,
                weight.reshape(-1, 1, width),
                bias.reshape(-1),
                padding=width - 1,
                groups=heads * channels,
            )[..., :length]
        )
        .transpose(1, 2)
        .reshape(x.shape)
    )
    torch.testing.assert_close(
        _CausalConvSiLU.apply(x, weight, bias), reference, rtol=1e-12, atol=1e-12
    )
    assert torch.autograd.gradcheck(
        _CausalConvSiLU.apply, (x.detach().requires_grad_(), weight, bias)
    )


def test_initialisation_as_mamba_ssm():
    torch.manual_seed(0)
    block = Mamba2(64, d_state=16, headdim=8)  # 16 heads
    A = torch.exp(block.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    dt = F.softplus(block.dt_bias)
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    assert torch.equal(block.D, torch.ones(16))
    assert (
        block.in_proj.bias is None and block.out_proj.bias is None and block.conv1d.bias is not None
    )
    # mamba-ssm's parameter names (its state_dict loads into this block)
    assert set(block.state_dict()) == {
        "in_proj.weight",
        "conv1d.weight",
        "conv1d.bias",
        "dt_bias",
        "A_log",
        "D",
        "norm.weight",
        "out_proj.weight",
    }
    assert block.in_proj.weight.shape == (2 * 128 + 2 * 16 + 16, 64)
    module = MultiHeadLatentMamba2(4, 16, d_state=16)
    assert module.in_proj_weight.shape == (4, 16, 2 * 32 + 2 * 16 + 1)
    assert module.out_proj_weight.shape == (4, 32, 16)
    assert module.in_proj_weight.abs().max() <= 1 / math.sqrt(16)


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by headdim"):
        Mamba2(10, headdim=3)
    with pytest.raises(ValueError, match="divisible by ngroups"):
        Mamba2(8, headdim=4, ngroups=3)
    with pytest.raises(ValueError, match="divisible by headdim"):
        MultiHeadLatentMamba2(2, 6, headdim=5)
    with pytest.raises(ValueError, match="divisible by ngroups"):
        MultiHeadLatentMamba2(2, 6, ngroups=2)  # headdim=None: one SSD head per latent head
    block = latent()
    with pytest.raises(ValueError, match="lengths must be integers"):
        block(inputs(block, length=5), lengths=torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="u must be"):
        block(torch.zeros(2, 5, block.d_model + 1, dtype=F64))
    with pytest.raises(ValueError, match="ngroups must be 1"):
        MultiHeadLatentMamba2(2, 4, headdim=4, ngroups=2, share_bc=True)
    with pytest.raises(ValueError, match="share"):
        MultiHeadLatentMamba2.from_blocks([mamba2(), mamba2(d_state=4)])


def test_kernels_not_touched_on_cpu():
    x = torch.zeros(1)
    assert kernels.usable("mamba_chunk_scan_combined", x) is None
    with kernels.disabled():
        assert kernels.usable("causal_conv1d_fn", x) is None


def test_float32_forward_close_to_float64():
    block = latent(d_state=16, chunk_size=8)
    u = inputs(block, length=40)
    y64 = block(u)
    y32 = block.float()(u.float())
    assert y32.dtype == torch.float32 and close(y32.double(), y64, tol=1e-4)


def test_norms():
    torch.manual_seed(0)
    x, z = torch.randn(3, 8, dtype=F64), torch.randn(3, 8, dtype=F64)
    norm = GatedRMSNorm(8, group_size=4, dtype=F64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    g = (x * F.silu(z)).view(3, 2, 4)
    expected = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(3, 8) * norm.weight
    assert close(norm(x, z), expected)
    rms = RMSNorm(8, dtype=F64)
    assert close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    with pytest.raises(ValueError, match="group_size"):
        GatedRMSNorm(8, group_size=3)


# ---- the CUDA-kernel glue, with stand-ins that follow the kernels' reference semantics -----------


def _fake_causal_conv1d_fn(x, weight, bias=None, activation=None):
    assert x.dim() == 3 and weight.dim() == 2 and activation == "silu"
    width = weight.shape[1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[
        ..., : x.shape[-1]
    ]
    return F.silu(out)


def _fake_causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    assert x.dim() == 2 and conv_state.shape[:2] == x.shape and activation == "silu"
    conv_state.copy_(
        torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1)], dim=-1)
    )  # in place, as the kernel
    return F.silu((conv_state * weight).sum(-1) + bias)


def _fake_chunk_scan(x, dt, A, B, C, chunk_size, D=None, return_final_states=False):
    assert A.dtype == torch.float32 and x.stride(-1) == 1
    from recbole_hydra.layers.ssd import ssd_scan

    y, final = ssd_scan(x, dt, A.to(x.dtype), B, C, chunk_size, D=D)
    return (y, final) if return_final_states else y


def _fake_state_update(state, x, dt, A, B, C, D=None):
    assert dt.shape == x.shape and A.shape == state.shape[1:] and D.shape == x.shape[1:]
    heads_per_group = x.shape[1] // B.shape[1]
    B, C = (t.repeat_interleave(heads_per_group, 1).unsqueeze(2) for t in (B, C))  # (b, h, 1, n)
    state.copy_(state * torch.exp(dt.unsqueeze(-1) * A.to(dt.dtype)) + (dt * x).unsqueeze(-1) * B)
    return (state * C).sum(-1) + D * x


FAKES = {
    "causal_conv1d_fn": _fake_causal_conv1d_fn,
    "causal_conv1d_update": _fake_causal_conv1d_update,
    "mamba_chunk_scan_combined": _fake_chunk_scan,
    "selective_state_update": _fake_state_update,
}


@pytest.mark.parametrize("name", ["mamba2", "latent_multihead", "latent_shared_bc"])
def test_kernel_path_glue_matches_pytorch_path(name, monkeypatch):
    reference = BLOCKS[name]()
    block = BLOCKS[name]()
    block.load_state_dict(reference.state_dict())
    calls = []

    def fake_usable(kernel, tensor):
        if not kernels.enabled():
            return None
        calls.append(kernel)
        return FAKES[kernel]

    monkeypatch.setattr(kernels, "usable", fake_usable)
    u = inputs(block)
    tol = 1e-6  # the kernel path passes A in float32, as mamba-ssm does
    y, cache = block(u[:, :9], lengths=torch.tensor([9, 6]), return_cache=True)
    with kernels.disabled():
        y_ref, cache_ref = reference(u[:, :9], lengths=torch.tensor([9, 6]), return_cache=True)
    assert close(y[0], y_ref[0], tol) and close(y[1, :6], y_ref[1, :6], tol)
    assert close(cache.ssm_state, cache_ref.ssm_state, tol) and close(
        cache.conv_state, cache_ref.conv_state
    )
    before = cache.conv_state.clone(), cache.ssm_state.clone()
    y_t, _ = block.step(u[:, 9], cache)
    with kernels.disabled():
        y_t_ref, _ = reference.step(u[:, 9], cache_ref)
    assert close(y_t, y_t_ref, tol)
    assert torch.equal(cache.conv_state, before[0]) and torch.equal(
        cache.ssm_state, before[1]
    )  # not modified
    assert set(calls) == set(FAKES)
