"""The compiled CPU kernels (recbole_hydra/csrc) against the PyTorch ops they replace, and the
fallback when they cannot be built."""

import shutil
import warnings

import pytest
import torch

from recbole_hydra.layers import kernels
from recbole_hydra.layers.conv import _CausalConvSiLU, _CausalConvSiLUCpu, causal_conv_silu
from recbole_hydra.layers.ffn import SwiGLU
from recbole_hydra.layers.hydra_layer import HydraLayer
from recbole_hydra.layers.mamba1 import Mamba1
from recbole_hydra.layers.mamba2 import Mamba2, MultiHeadLatentMamba2
from recbole_hydra.layers.norms import GatedRMSNorm
from recbole_hydra.layers.ssd import _DiagonalBlocks, ssd_scan

F64 = torch.float64

if (
    shutil.which("c++") is None and shutil.which("g++") is None
):  # the only reason they may not build
    pytest.skip("no C++ compiler: the CPU kernels cannot be built here", allow_module_level=True)


@pytest.fixture(scope="module")
def module():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build must fail these tests, not fall back
        built = kernels.cpu_kernels(torch.zeros(1))
    assert built is not None
    return built


@pytest.mark.parametrize(
    "length", [1, 2, 3, 4, 7, 19, 131, 260]
)  # around the width and the 128-step segments
@pytest.mark.parametrize("groups", [1, 3])
def test_conv_kernel_equals_pytorch_conv_both_directions(module, length, groups):
    torch.manual_seed(length * 10 + groups)
    width, channels = 4, 5
    proj = torch.randn(2, length, groups, 2 * channels + 1, dtype=F64)
    weight = torch.randn(groups, channels, width, dtype=F64)
    bias = torch.randn(groups, channels, dtype=F64)
    grad = torch.randn(2, length, groups, channels, dtype=F64)
    results = []
    for fn in (
        lambda *a: _CausalConvSiLU.apply(*a),
        lambda *a: _CausalConvSiLUCpu.apply(*a, module),
    ):
        x = proj[
            ..., channels : 2 * channels
        ].requires_grad_()  # a strided view, as the blocks pass it
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        out = fn(x, w, b)
        out.backward(grad)
        results.append((out, x.grad, w.grad, b.grad))
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_conv_kernel_gradcheck_and_three_dim_input(module):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, dtype=F64, requires_grad=True)  # (b, l, channels): Mamba-1's layout
    weight = torch.randn(4, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: _CausalConvSiLUCpu.apply(*a, module), (x, weight, bias)
    )
    torch.testing.assert_close(
        causal_conv_silu(x, weight, bias), _CausalConvSiLU.apply(x, weight, bias)
    )
    torch.testing.assert_close(
        causal_conv_silu(x, weight, None), _CausalConvSiLU.apply(x, weight, torch.zeros_like(bias))
    )


@pytest.mark.parametrize(
    "shape", [(2, 3, 2, 2, 5, 3, 4), (1, 1, 1, 1, 1, 2, 2), (3, 2, 1, 3, 17, 8, 6)]
)
def test_diagonal_kernel_equals_pytorch_blocks(module, shape):
    b, c, g, r, q, n, p = shape
    torch.manual_seed(q)
    a_cum = (-torch.rand(b, c, g, r, q, dtype=F64)).cumsum(-1)
    B, C = torch.randn(b, c, g, q, n, dtype=F64), torch.randn(b, c, g, q, n, dtype=F64)
    x_dt = torch.randn(b, c, g, r, q, p, dtype=F64)
    ours = module.ssd_diagonal_forward(
        a_cum.reshape(-1, r, q), B.reshape(-1, q, n), C.reshape(-1, q, n), x_dt.reshape(-1, r, q, p)
    ).view(x_dt.shape)
    torch.testing.assert_close(
        ours, _DiagonalBlocks.apply(a_cum, B, C, x_dt), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("length,chunk", [(13, 5), (8, 64), (1, 4)])
def test_scan_without_autograd_same_with_and_without_kernels(length, chunk):
    torch.manual_seed(length)
    b, h, p, g, n = 2, 4, 3, 2, 5
    x = torch.randn(b, length, h, p, dtype=F64)
    dt = torch.rand(b, length, h, dtype=F64)
    A = -torch.rand(h, dtype=F64) - 0.5
    B, C = torch.randn(b, length, g, n, dtype=F64), torch.randn(b, length, g, n, dtype=F64)
    with torch.no_grad():
        y, state = ssd_scan(x, dt, A, B, C, chunk, D=torch.ones(h, dtype=F64))
        with kernels.disabled():
            y_ref, state_ref = ssd_scan(x, dt, A, B, C, chunk, D=torch.ones(h, dtype=F64))
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_ref, rtol=1e-12, atol=1e-12)


BLOCKS = {
    "mamba2": lambda: Mamba2(8, d_state=6, headdim=4, ngroups=2, chunk_size=5, dtype=F64),
    "latent": lambda: MultiHeadLatentMamba2(3, 4, d_state=6, chunk_size=5, dtype=F64),
    "latent_grouped": lambda: MultiHeadLatentMamba2(
        2, 4, d_state=3, headdim=2, ngroups=2, chunk_size=4, dtype=F64
    ),
    "mamba1": lambda: Mamba1(8, d_state=4, dtype=F64),
    "hydra_layer": lambda: HydraLayer(8, 2, 4, 6, d_state=5, chunk_size=4).double(),
}


def _saved_bytes(fn, *args):
    """Bytes of distinct storages autograd keeps for backward while running fn(*args)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values())


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_outputs_and_gradients_same_with_and_without_kernels(name):
    torch.manual_seed(0)
    block = BLOCKS[name]()
    u = torch.randn(2, 11, block.d_model if hasattr(block, "d_model") else 8, dtype=F64)
    results = []
    for use_kernels in (True, False):
        block.zero_grad()
        v = u.clone().requires_grad_()
        with kernels.use(use_kernels):
            out = block(v)
            out.pow(2).sum().backward()
            with torch.no_grad():
                out_eval = block(u)
        results.append([out, out_eval, v.grad] + [p.grad for p in block.parameters()])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("blocks,group_size", [(1, 6), (3, 4), (2, 2)])
def test_gated_norm_kernel_equals_pytorch_ops_both_directions(module, blocks, group_size):
    torch.manual_seed(blocks)
    d_block = 2 * group_size
    hidden = blocks * d_block
    norm = GatedRMSNorm(hidden, group_size=group_size, dtype=F64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 7, hidden, dtype=F64)
    z_proj = torch.randn(
        3, 7, blocks, d_block + 1, dtype=F64
    )  # z a column slice, as the blocks pass it
    grad = torch.randn(3, 7, hidden, dtype=F64)
    results = []
    for use_kernels in (True, False):
        norm.weight.grad = None
        xv, zv = x.clone().requires_grad_(), z_proj.clone().requires_grad_()
        with kernels.use(use_kernels):
            out = norm(xv, zv[..., :d_block])
            out.backward(grad)
            with torch.no_grad():
                out_eval = norm(x, z_proj[..., :d_block])
        results.append((out, out_eval, xv.grad, zv.grad, norm.weight.grad))
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert kernels.enabled()
    assert torch.autograd.gradcheck(
        lambda a, b: norm(a, b),
        (x[:1, :3].clone().requires_grad_(), x[:1, :3].clone().requires_grad_()),
    )


def test_swiglu_kernel_equals_pytorch_ops_both_directions(module):
    torch.manual_seed(0)
    ffn = SwiGLU(6, 5).double()
    x, grad = torch.randn(2, 9, 6, dtype=F64), torch.randn(2, 9, 6, dtype=F64)
    results = []
    for use_kernels in (True, False):
        ffn.zero_grad()
        xv = x.clone().requires_grad_()
        with kernels.use(use_kernels):
            out = ffn(xv)
            out.backward(grad)
            with torch.no_grad():
                out_eval = ffn(x)
        results.append([out, out_eval, xv.grad] + [p.grad for p in ffn.parameters()])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    weights = [p for p in ffn.parameters()]
    assert torch.autograd.gradcheck(
        lambda a, *w: ffn(a), (x[0, :4].clone().requires_grad_(), *weights)
    )


def _backward_nodes(tensor):
    """The names of every autograd node that ``tensor``'s graph holds."""
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_hydra_layer_under_cpu_bf16_autocast_uses_the_kernels_in_float32(module):
    """RecBole's ``enable_amp`` on the CPU is bfloat16 autocast. The conv and gated-norm kernels
    take autocast's bfloat16 products in float32 and run inside it (before, they stepped aside
    for PyTorch ops in bfloat16); the SwiGLU kernel, whose products are its own, steps aside.
    Both paths give the same output and gradients to bfloat16's precision, and every parameter
    gets a gradient."""
    torch.manual_seed(0)
    layer = HydraLayer(16, 2, 8, 16, d_state=8, chunk_size=4)
    x = torch.randn(2, 9, 16)
    results = []
    for use_kernels in (True, False):
        layer.zero_grad()
        with kernels.use(use_kernels), torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        nodes = _backward_nodes(out)
        kernel_nodes = {"_CausalConvSiLUCpuBackward", "_GatedRMSNormCpuBackward"}
        assert (kernel_nodes <= nodes) == use_kernels, nodes
        assert "_SwiGLUCpuBackward" not in nodes
        out.float().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
        results.append([out] + [p.grad for p in layer.parameters()])
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=2e-2, atol=2e-2)


def test_kernels_under_autocast_compute_in_float32(module):
    """Under autocast a kernel's bfloat16 input is taken in float32, and its result is the
    float32 kernel's on that input: nothing is rounded to bfloat16 inside it."""
    torch.manual_seed(0)
    x = torch.randn(2, 30, 3, 8).bfloat16().requires_grad_()
    weight, bias = torch.randn(3, 8, 4), torch.randn(3, 8)
    z = torch.randn(2, 30, 24).bfloat16()
    norm = GatedRMSNorm(24, group_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv = causal_conv_silu(x, weight, bias)
        normed = norm(conv.flatten(-2), z)
    assert conv.dtype == normed.dtype == torch.float32
    x32 = x.detach().float().requires_grad_()
    conv32 = causal_conv_silu(x32, weight, bias)
    torch.testing.assert_close(conv, conv32, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(normed, norm(conv32.flatten(-2), z.float()), rtol=1e-6, atol=1e-6)
    conv.sum().backward()
    conv32.sum().backward()
    assert x.grad.dtype == torch.bfloat16  # autograd hands each input a gradient of its dtype
    torch.testing.assert_close(x.grad, x32.grad.bfloat16())


def test_gated_norm_and_swiglu_kernels_keep_less_for_backward(module):
    """What they exist for besides speed: backward recomputes the gates, so autograd keeps three
    fewer tensors of x's size for the norm (SiLU(z), the gated and the normalised x) and two
    fewer of the inner size for the FFN (the SiLU and the product)."""
    torch.manual_seed(0)
    norm, ffn = GatedRMSNorm(32, group_size=8), SwiGLU(16, 32)
    x, z, u = (torch.randn(4, 50, d, requires_grad=True) for d in (32, 32, 16))
    one_tensor = (
        4 * 50 * 32 * 4
    )  # bytes of one (4, 50, 32) float32 tensor: x, or the FFN's inner size
    for m, args, fewer in ((norm, (x, z), 3), (ffn, (u,), 2)):
        with_kernels = _saved_bytes(m, *args)
        with kernels.disabled():
            without = _saved_bytes(m, *args)
        assert without - with_kernels >= (fewer - 0.1) * one_tensor, (
            type(m).__name__,
            with_kernels,
            without,
        )


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("error: command 'c++' failed: No such file or directory")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    kernels._build.cache_clear()
    try:
        with pytest.warns(
            RuntimeWarning, match="CPU kernels unavailable .*No such file.*use_kernels: False"
        ):
            assert kernels.cpu_kernels(torch.zeros(1)) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once, not at every call
            assert kernels.cpu_kernels(torch.zeros(1)) is None
            block = BLOCKS["latent"]()
            block(
                torch.randn(2, 7, block.d_model, dtype=F64)
            ).sum().backward()  # PyTorch ops instead
    finally:
        kernels._build.cache_clear()


def test_kernels_off_by_switch_environment_or_dtype(monkeypatch, module):
    with kernels.disabled():
        assert not kernels.enabled() and kernels.cpu_kernels(torch.zeros(1)) is None
    assert kernels.enabled()  # the previous setting is back after the block
    kernels.set_enabled(False)
    try:
        assert kernels.cpu_kernels(torch.zeros(1)) is None
    finally:
        kernels.set_enabled(True)
    assert kernels.cpu_kernels(torch.zeros(1, dtype=torch.bfloat16)) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # taken in float32 then
        assert kernels.cpu_kernels(torch.zeros(1, dtype=torch.bfloat16)) is not None
    monkeypatch.setenv("RECBOLE_HYDRA_CPU_KERNELS", "0")
    kernels._build.cache_clear()
    try:
        assert kernels.cpu_kernels(torch.zeros(1)) is None
    finally:
        monkeypatch.delenv("RECBOLE_HYDRA_CPU_KERNELS")
        kernels._build.cache_clear()
    assert kernels.cpu_kernels(torch.zeros(1)) is not None
