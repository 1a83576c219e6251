"""The GPU path: CUDA against the CPU on the same weights (skipped without CUDA; CI has none),
and what of it can be checked on a CPU: the kernel loading, the selective scan's GPU blocks and
the comparison functions of benchmarks/gpu_check.py."""

import copy
import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import recbole_hydra.model.base as model_base
from recbole_hydra.layers import kernels
from recbole_hydra.layers import selective_scan as scan_module
from recbole_hydra.layers.ssd import ssd_scan
from tests.model_helpers import build_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL_HYDRA = dict(
    hidden_size=32,
    n_layers=2,
    n_heads=2,
    d_state=16,
    chunk_size=8,
    num_negatives=32,
    dropout_prob=0.0,
    MAX_ITEM_LIST_LENGTH=20,
)


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def tolerance():
    """float32 ops on both sides; tf32 dots where mamba-ssm's Triton SSD runs on CUDA."""
    return 5e-3 if kernels.load("mamba_chunk_scan_combined") is not None else 1e-4


@pytest.fixture
def shared_negatives(monkeypatch):
    """The sampled negatives drawn on the CPU from one seed, so both devices score the same."""

    def sample(n_items, num_negatives, device, generator=None):
        g = torch.Generator().manual_seed(5)
        return torch.randint(1, n_items, (num_negatives,), generator=g).to(device)

    monkeypatch.setattr(model_base, "sample_negatives", sample)


def loss_grads_scores(model, batch, device):
    m = copy.deepcopy(model).to(device).eval()
    m.device = torch.device(device)
    loss = m.calculate_loss(batch.to(device))
    loss.backward()
    with torch.no_grad():
        scores = m.full_sort_predict(batch.to(device))
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    return loss, grads, scores


# ---- on a CUDA machine -----------------------------------------------------------------------


@cuda
def test_hydra_loss_gradients_and_scores_on_cuda_equal_the_cpus(tmp_path, shared_negatives):
    model, train, _, _ = build_model(tmp_path, "Hydra", **SMALL_HYDRA)
    batch = next(iter(train))
    cpu = loss_grads_scores(model, batch, "cpu")
    gpu = loss_grads_scores(model, batch, "cuda")
    tol = tolerance()
    assert rel_err(gpu[0], cpu[0]) < tol
    assert set(gpu[1]) == set(cpu[1])
    worst = max(cpu[1], key=lambda n: rel_err(gpu[1][n], cpu[1][n]))
    assert rel_err(gpu[1][worst], cpu[1][worst]) < tol, worst
    assert rel_err(gpu[2], cpu[2]) < tol


@cuda
def test_hydra_forward_on_cuda_equals_the_cpus_with_and_without_kernels(tmp_path):
    model, train, _, _ = build_model(tmp_path, "Hydra", **SMALL_HYDRA)
    batch = next(iter(train))
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        reference = copy.deepcopy(model).cpu().eval()(seq, lengths)
        gpu = copy.deepcopy(model).cuda().eval()
        for use_kernels in (True, False):
            with kernels.use(use_kernels):
                out = gpu(seq.cuda(), lengths.cuda())
            assert rel_err(out, reference) < (tolerance() if use_kernels else 1e-4)


@cuda
def test_ssd_scan_equals_mamba_chunk_scan_combined():
    kernel = kernels.load("mamba_chunk_scan_combined")
    if kernel is None:
        pytest.skip("mamba-ssm's Triton SSD does not import here")
    g = torch.Generator().manual_seed(0)
    b, l, h, p, n = 2, 100, 4, 32, 16
    x = torch.randn(b, l, h, p, generator=g).cuda()
    dt = torch.nn.functional.softplus(torch.randn(b, l, h, generator=g) - 2).cuda()
    A = -torch.exp(torch.rand(h, generator=g)).cuda()
    B, C = (torch.randn(b, l, 1, n, generator=g).cuda() for _ in range(2))
    D = torch.randn(h, generator=g).cuda()
    y, state = ssd_scan(x, dt, A, B, C, 32, D=D)
    y_kernel, state_kernel = kernel(x, dt, A, B, C, 32, D=D, return_final_states=True)
    assert rel_err(y_kernel, y) < 5e-3
    assert rel_err(state_kernel, state) < 5e-3


# ---- on any machine --------------------------------------------------------------------------


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    """A mamba-ssm as MAMBA_SKIP_CUDA_BUILD builds it: the package's __init__ fails on its missing
    compiled extension, its Triton modules import."""
    root = tmp_path / "site"
    triton = root / "mamba_ssm" / "ops" / "triton"
    triton.mkdir(parents=True)
    (root / "mamba_ssm" / "__init__.py").write_text("import selective_scan_cuda\n")
    (root / "mamba_ssm" / "ops" / "__init__.py").write_text("")
    (triton / "__init__.py").write_text("")
    (triton / "ssd_combined.py").write_text(
        textwrap.dedent(
            """
            from mamba_ssm.ops.triton.helper import twice

            def mamba_chunk_scan_combined(x):
                return twice(x)
            """
        )
    )
    (triton / "helper.py").write_text("def twice(x):\n    return 2 * x\n")
    (root / "mamba_ssm" / "ops" / "selective_scan_interface.py").write_text(
        "import selective_scan_cuda\n"
    )
    monkeypatch.syspath_prepend(str(root))
    for cache in (kernels._module, kernels.load):
        cache.cache_clear()
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] == "mamba_ssm":
            del sys.modules[name]
    for cache in (kernels._module, kernels.load):
        cache.cache_clear()
    kernels.IMPORT_ERRORS.clear()
    kernels.WITHOUT_PACKAGE_INIT.clear()


def test_triton_kernels_load_from_a_mamba_ssm_without_its_compiled_extension(fake_mamba_ssm):
    fn = kernels.load("mamba_chunk_scan_combined")
    assert fn is not None and fn(3) == 6
    assert "mamba_ssm.ops.triton.ssd_combined" in kernels.WITHOUT_PACKAGE_INIT
    # the compiled ones stay unavailable, with the reason kept, and the package still fails to
    # import as it did
    assert kernels.load("selective_scan_fn") is None
    assert "selective_scan_cuda" in kernels.IMPORT_ERRORS[kernels._WHERE["selective_scan_fn"]]
    with pytest.raises(ImportError):
        importlib.import_module("mamba_ssm")
    # on the CPU the dispatch never hands them out
    assert kernels.usable("mamba_chunk_scan_combined", torch.zeros(1)) is None


def test_selective_scan_takes_large_blocks_on_a_gpu():
    per_row = 208 * 128 * 32  # Mamba4Rec on ml-1m: length 200 padded to 208, d_inner 128, N 32
    assert len(scan_module._row_blocks(2048, per_row, torch.device("cpu"))) == 2048
    assert len(scan_module._row_blocks(2048, per_row, torch.device("cuda"))) <= 16


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("gpu_check")
    # smaller than its --quick sizes: this is about the functions running, in a few seconds
    monkeypatch.setattr(
        module, "compare_sizes", lambda quick: dict(batch=2, length=16, d_head=8, n_heads=2)
    )
    return module


def test_gpu_check_comparisons_run_on_the_cpu(gpu_check, tmp_path):
    """``--device cpu``: the CPU with kernels off against the CPU with them on."""
    device = torch.device("cpu")
    rows = gpu_check.compare_layers(device, quick=True)
    rows += gpu_check.compare_models(device, quick=True, workdir=tmp_path, models=("Hydra",))
    names = [r["name"] for r in rows]
    assert "Hydra loss, gradients, scores" in names and "Hydra layer" in names
    for row in rows:
        if row["name"].startswith("ssd_scan vs"):
            assert row["ok"] is None and "skipped" in row  # no CUDA, no mamba-ssm here
        else:
            assert row["ok"], row
            assert row["grads"] > 0 and row["device vs f64"] < 1e-3
    lines = gpu_check.report_lines(
        {
            "device": "cpu",
            "command": "python benchmarks/gpu_check.py --device cpu --quick",
            "machine": "test",
            "date": "today",
            "wall_s": 1.0,
            "budget_s": 1.0,
            "steps": [],
            "comparisons": rows,
        }
    )
    assert any(line.startswith("| Hydra layer |") for line in lines)
