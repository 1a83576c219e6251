"""The chunked selective scan (Mamba-1) against a step-by-step loop, and the Mamba1 block built
on it."""

import math

import pytest
import torch
import torch.nn.functional as F

import recbole_hydra.layers.selective_scan as scan_module
from recbole_hydra.layers.mamba1 import Mamba1
from recbole_hydra.layers.selective_scan import selective_scan, selective_scan_bld


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence step by step in float64 (mamba-ssm's selective_scan_ref, real A)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h
        h = h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def scan_inputs(b=3, d=5, n=4, length=13, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(b, d, length),
        delta=r(b, d, length),
        A=-3 * torch.rand(d, n, generator=g, dtype=dtype),
        B=r(b, n, length),
        C=r(b, n, length),
        D=r(d),
        z=r(b, d, length),
        delta_bias=r(d),
    )


@pytest.mark.parametrize("length", [1, 7, 13, 50])
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
@pytest.mark.parametrize("extras", [True, False])
def test_float64_equals_the_step_by_step_loop(length, chunk_size, extras):
    x = scan_inputs(length=length)
    if not extras:  # no D, z, delta_bias; delta kept positive instead of softplus
        x.update(D=None, z=None, delta_bias=None, delta=x["delta"].abs())
    y, last = selective_scan(
        **x, delta_softplus=extras, return_last_state=True, chunk_size=chunk_size
    )
    y_ref, last_ref = loop_scan(**x, delta_softplus=extras)
    assert y.dtype == torch.float64 and y.shape == y_ref.shape and last.shape == last_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=1e-12, atol=1e-12)


def test_float32_stays_close_to_float64():
    x = scan_inputs(b=4, d=16, n=8, length=50)
    y32 = selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True)
    y64, _ = loop_scan(**x, delta_softplus=True)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5 * y64.abs().max().item())


def test_half_precision_input_gives_its_dtype_back():
    x = {k: v.to(torch.bfloat16) for k, v in scan_inputs().items()}
    assert selective_scan(**x, delta_softplus=True).dtype == torch.bfloat16


def test_large_decays_neither_overflow_nor_lose_the_recent_input():
    # dt * A down to -1000 per step: exp of cumulative sums would overflow float32
    x = scan_inputs(length=40, dtype=torch.float32)
    x["delta"] = x["delta"].abs() * 50
    x["A"] = x["A"] * 10
    y, last = selective_scan(**x, return_last_state=True, chunk_size=16)
    y_ref, last_ref = loop_scan(**x)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 3, 16])
def test_gradients_match_finite_differences(chunk_size):
    x = scan_inputs(b=2, d=3, n=2, length=11)
    names = list(x)
    for v in x.values():
        v.requires_grad_(True)

    def f(*args):
        return selective_scan(
            **dict(zip(names, args)),
            delta_softplus=True,
            return_last_state=True,
            chunk_size=chunk_size,
        )

    assert torch.autograd.gradcheck(f, tuple(x.values()))


def test_row_blocks_and_time_first_layout(monkeypatch):
    x = scan_inputs(b=7, length=9)
    y_ref, last_ref = loop_scan(**x, delta_softplus=True)
    monkeypatch.setattr(scan_module, "_BLOCK_ELEMENTS", 2 * 9 * 5 * 4)  # 2 rows per block
    t = lambda v: v.transpose(1, 2)  # noqa: E731
    y, last = selective_scan_bld(
        t(x["u"]),
        t(x["delta"]),
        x["A"],
        t(x["B"]),
        t(x["C"]),
        x["D"],
        t(x["z"]),
        x["delta_bias"],
        True,
        return_last_state=True,
        chunk_size=4,
    )
    torch.testing.assert_close(t(y), y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=1e-12, atol=1e-12)


# -- the Mamba-1 block --------------------------------------------------------------------------


def mamba_step_by_step(m, u):
    """mamba-ssm's ``Mamba`` slow path written out: conv1d module, loop scan."""
    x, z = m.in_proj(u).chunk(2, dim=-1)
    x = F.silu(m.conv1d(x.transpose(1, 2))[..., : u.shape[1]])
    dt, B, C = m.x_proj(x.transpose(1, 2)).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = F.linear(dt, m.dt_proj.weight)
    t = lambda v: v.transpose(1, 2)  # noqa: E731
    y, _ = loop_scan(
        x, t(dt), -torch.exp(m.A_log), t(B), t(C), m.D, t(z), m.dt_proj.bias, delta_softplus=True
    )
    return m.out_proj(y.transpose(1, 2))


def test_mamba1_block_equals_step_by_step_and_is_causal():
    torch.manual_seed(0)
    m = Mamba1(16, d_state=8, chunk_size=4).double()
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    out = m(u)
    torch.testing.assert_close(out, mamba_step_by_step(m, u), rtol=1e-10, atol=1e-10)
    changed = u.clone()
    changed[:, 6] += 1.0
    out2 = m(changed)
    torch.testing.assert_close(out2[:, :6], out[:, :6], rtol=0, atol=0)
    assert not torch.allclose(out2[:, 6:], out[:, 6:])


def test_mamba1_initialisation_is_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba1(64, d_state=32, expand=2)
    assert m.dt_rank == 4 and m.d_inner == 128
    assert m.x_proj.weight.shape == (4 + 2 * 32, 128) and m.in_proj.weight.shape == (256, 64)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 33.0)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert m.dt_proj.weight.abs().max() <= 4**-0.5
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit


def test_mamba1_trains_in_float32():
    m = Mamba1(8, d_state=4)
    u = torch.randn(3, 20, 8)
    m(u).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert all(math.isfinite(p.grad.abs().sum().item()) for p in m.parameters())
