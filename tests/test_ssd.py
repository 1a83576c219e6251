"""The chunked SSD scan and the one-step recurrence against a plain loop over time."""

import itertools

import pytest
import torch

from recbole_hydra.layers.ssd import ssd_final_state, ssd_scan, ssd_step

F64 = torch.float64


def loop_scan(x, dt, A, B, C, D=None, initial_state=None):
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t + D x_t, one position and head
    at a time."""
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    state = (
        torch.zeros(batch, nheads, headdim, d_state, dtype=x.dtype)
        if initial_state is None
        else initial_state.clone()
    )
    y = torch.zeros_like(x)
    for t in range(length):
        for i in range(nheads):
            group = i // (nheads // ngroups)
            decay = torch.exp(dt[:, t, i] * A[i])[:, None, None]
            inflow = dt[:, t, i][:, None, None] * x[:, t, i, :, None] * B[:, t, group, None, :]
            state[:, i] = decay * state[:, i] + inflow
            y[:, t, i] = (state[:, i] * C[:, t, group, None, :]).sum(-1)
            if D is not None:
                y[:, t, i] += (D[i] if D.dim() == 2 else D[i]) * x[:, t, i]
    return y, state


def make_inputs(batch=2, length=19, nheads=4, headdim=3, ngroups=2, d_state=5, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, nheads, headdim, generator=g, dtype=dtype)
    dt = torch.rand(batch, length, nheads, generator=g, dtype=dtype) * 0.9 + 0.05
    A = -(torch.rand(nheads, generator=g, dtype=dtype) * 3 + 0.1)
    B = torch.randn(batch, length, ngroups, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, ngroups, d_state, generator=g, dtype=dtype)
    return x, dt, A, B, C


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = list(itertools.product([1, 4, 8, 64], [1, 2], [None, "h", "hp"], [False, True]))


@pytest.mark.parametrize("chunk_size,ngroups,d_kind,with_initial", CASES)
def test_scan_equals_loop(chunk_size, ngroups, d_kind, with_initial):
    x, dt, A, B, C = make_inputs(ngroups=ngroups)
    nheads, headdim, d_state = x.shape[2], x.shape[3], B.shape[3]
    g = torch.Generator().manual_seed(1)
    D = {
        None: None,
        "h": torch.randn(nheads, generator=g, dtype=F64),
        "hp": torch.randn(nheads, headdim, generator=g, dtype=F64),
    }[d_kind]
    S0 = (
        torch.randn(x.shape[0], nheads, headdim, d_state, generator=g, dtype=F64)
        if with_initial
        else None
    )

    y, final = ssd_scan(x, dt, A, B, C, chunk_size, D=D, initial_state=S0)
    y_ref, final_ref = loop_scan(x, dt, A, B, C, D=D, initial_state=S0)
    assert y.shape == x.shape and final.shape == final_ref.shape
    assert rel_err(y, y_ref) <= 1e-10
    assert rel_err(final, final_ref) <= 1e-10

    # the recurrent form, one step at a time, gives the same outputs and state
    state = torch.zeros_like(final_ref) if S0 is None else S0
    ys = []
    for t in range(x.shape[1]):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=D)
        ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y_ref) <= 1e-10
    assert rel_err(state, final_ref) <= 1e-10


def test_step_does_not_modify_state():
    x, dt, A, B, C = make_inputs(length=1)
    state = torch.randn(2, 4, 3, 5, dtype=F64)
    before = state.clone()
    ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    assert torch.equal(state, before)


def test_zero_dt_padding_leaves_state_and_outputs_unchanged():
    x, dt, A, B, C = make_inputs(length=13)
    real = 9
    y_short, s_short = ssd_scan(x[:, :real], dt[:, :real], A, B[:, :real], C[:, :real], 4)
    dt_padded = dt.clone()
    dt_padded[:, real:] = 0.0
    x_junk, B_junk, C_junk = (t.clone() for t in (x, B, C))
    for t in (x_junk, B_junk, C_junk):
        t[:, real:] = 1e3  # whatever sits at padded positions
    y, s = ssd_scan(x_junk, dt_padded, A, B_junk, C_junk, 4)
    assert rel_err(y[:, :real], y_short) <= 1e-12
    assert rel_err(s, s_short) <= 1e-12


@pytest.mark.parametrize("chunk_size", [3, 16])
def test_causal(chunk_size):
    x, dt, A, B, C = make_inputs(length=12)
    y, _ = ssd_scan(x, dt, A, B, C, chunk_size, D=torch.ones(4, dtype=F64))
    for t in (0, 4, 10):
        bumped = [v.clone() for v in (x, dt, B, C)]
        for v in bumped:
            v[:, t + 1] += 1.0
        y_bumped, _ = ssd_scan(
            bumped[0], bumped[1], A, bumped[2], bumped[3], chunk_size, D=torch.ones(4, dtype=F64)
        )
        assert torch.equal(y_bumped[:, : t + 1], y[:, : t + 1])
        assert not torch.allclose(y_bumped[:, t + 1], y[:, t + 1])


def test_gradcheck():
    x, dt, A, B, C = make_inputs(batch=2, length=7, nheads=4, headdim=2, ngroups=2, d_state=3)
    D = torch.randn(4, dtype=F64)
    S0 = torch.randn(2, 4, 2, 3, dtype=F64)
    inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, S0)]

    def fn(
        x, dt, A, B, C, D, S0
    ):  # chunk 3: padding, several chunks and the inter-chunk recurrence
        return ssd_scan(x, dt, A, B, C, 3, D=D, initial_state=S0)

    assert torch.autograd.gradcheck(fn, inputs)


def test_strong_decay_stays_finite_in_float32():
    # exp(segment sums) of large negative sums: no overflow forward, no inf * 0 backward
    x, dt, A, B, C = make_inputs(length=64, dtype=torch.float32)
    dt = (dt * 40).requires_grad_()
    y, s = ssd_scan(x, dt, A, B, C, 64)
    (y.sum() + s.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(dt.grad).all()
    y_ref, _ = loop_scan(*(t.double() for t in (x, dt.detach(), A, B, C)))
    assert rel_err(y.double(), y_ref) < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_low_precision_close_to_float64(dtype, tol):
    inputs = make_inputs(length=40)
    y_ref, s_ref = ssd_scan(*inputs, 16)
    y, s = ssd_scan(*(t.to(dtype) for t in inputs), 16)
    assert y.dtype == dtype and s.dtype == dtype
    assert rel_err(y.double(), y_ref) < tol and rel_err(s.double(), s_ref) < tol


def test_bad_shapes_raise_clear_errors():
    x, dt, A, B, C = make_inputs(nheads=4, ngroups=2)
    B3, C3 = (torch.randn(2, 19, 3, 5, dtype=F64) for _ in range(2))
    with pytest.raises(ValueError, match="multiple of ngroups"):
        ssd_scan(x, dt, A, B3, C3, 8)
    with pytest.raises(ValueError, match="D must have shape"):
        ssd_scan(x, dt, A, B, C, 8, D=torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_scan(x, dt[:, :-1], A, B, C, 8)
    with pytest.raises(ValueError, match="state must have shape"):
        ssd_step(torch.zeros(2, 4, 3, 4, dtype=F64), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])


@pytest.mark.parametrize("ngroups,with_initial", [(1, False), (2, True)])
def test_final_state_alone_equals_loop(ngroups, with_initial):
    x, dt, A, B, C = make_inputs(length=23, ngroups=ngroups)
    S0 = torch.randn(2, 4, 3, 5, dtype=F64) if with_initial else None
    _, final_ref = loop_scan(x, dt, A, B, C, initial_state=S0)
    assert rel_err(ssd_final_state(x, dt, A, B, initial_state=S0), final_ref) <= 1e-10


@pytest.mark.parametrize("length,chunk_size", [(7, 8), (19, 4)])
def test_without_final_state_same_outputs(length, chunk_size):
    x, dt, A, B, C = make_inputs(length=length)
    y, state = ssd_scan(x, dt, A, B, C, chunk_size, return_final_state=False)
    y_ref, _ = loop_scan(x, dt, A, B, C)
    assert state is None and rel_err(y, y_ref) <= 1e-10


def test_gradcheck_one_chunk_without_state():
    # the path that skips the chunk states (one chunk, no initial state, no final state wanted)
    x, dt, A, B, C = make_inputs(batch=2, length=6, nheads=4, headdim=2, ngroups=2, d_state=3)
    inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
    assert torch.autograd.gradcheck(lambda *a: ssd_scan(*a, 8, return_final_state=False)[0], inputs)
