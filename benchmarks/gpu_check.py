"""The GPU path in one prepared call: versions and kernels, CUDA against CPU on the same weights,
one epoch of each model in float32 and in bf16 autocast, RecBole's multi-process path (NCCL).

    bash benchmarks/gpu_check.sh                        # on the GPU machine: wheels, then this
    python benchmarks/gpu_check.py --device cuda        # the same, wheels already installed
    python benchmarks/gpu_check.py --device cpu --quick # the dry run: every step that needs no GPU

Steps, in this order, each guarded (a failing step records its one-line error and the next one
runs) and each skipped once the time budget (``--budget-s``, 400 s) is spent; the training runs
share what is left (``--train-budget-s`` at most each), Mamba4Rec last, after ``ddp``:

1. ``versions``: Python, torch, CUDA, cuDNN, NCCL, Triton, RecBole, numpy, pandas, mamba-ssm,
   causal-conv1d; the GPU; torch's float32 settings; each optional kernel of
   ``recbole_hydra.layers.kernels``: loaded, or why not.
2. ``compare layers`` / ``compare models``: the same float32 weights and inputs on the CPU
   (the package's CPU path: C++ kernels where they build) and on ``--device`` (on CUDA:
   mamba-ssm's Triton SSD where it loads, else the package's PyTorch ops); relative error
   ``|a - b| / |b|`` (Frobenius norms over the whole tensor) of the outputs and of every
   gradient, and of both sides against a float64 CPU run. Tolerance: 1e-4 where both sides are
   float32 PyTorch/C++ ops, 5e-3 where a Triton kernel ran (its float32 dots are tf32); a
   comparison passes within it, or when the device is no further from float64 than twice the
   CPU's own float32 error. With ``--device cpu`` the two sides are the CPU with kernels off
   (PyTorch ops) and on (C++).
   Blocks: Mamba-2, the latent heads (``MultiHeadLatentMamba2``), a Hydra layer, the package's
   ``ssd_scan`` against mamba-ssm's ``mamba_chunk_scan_combined`` (both on the device, when it
   imports), Mamba-1; models (loss, every parameter's gradient, full-sort scores, in eval mode,
   negatives drawn once on the CPU and shared): Hydra, Mamba4Rec, HSTU, SASRecGen.
3. ``train <model>``: one epoch of each model (its own yaml; ``MAX_ITEM_LIST_LENGTH`` 200 on
   ml-1m) in float32 and in bf16 autocast, then the test split: epoch seconds, evaluation
   seconds, peak GPU memory (``torch.cuda.max_memory_allocated``; peak RSS on the CPU), test
   NDCG@10 and Recall@10, and which kernels ran. bf16 autocast is RecBole's own ``enable_amp``
   (its trainer wraps the loss in ``torch.autocast(device_type)`` without a dtype, so float16
   on CUDA by default): this script sets ``torch.set_autocast_dtype('cuda', torch.bfloat16)``
   first, and ``enable_scaler`` stays False; the package has no setting of its own for it.
   Evaluation runs in float32 (RecBole's evaluation takes no autocast). Each run's training
   gets ``time_budget_s`` (the package's budget, cut between batches): a cut epoch reports the
   batches it trained and its seconds extrapolated to the whole epoch.
4. ``ddp``: ``recbole_hydra.training.run_distributed`` with ``nproc=1, world_size=1``: one
   spawned process that joins a process group (NCCL on CUDA, gloo on the CPU), trains Hydra one
   epoch, saves and reloads its checkpoint and tests it; its output (``NCCL_DEBUG=VERSION``) goes
   to ``ddp.log`` beside the results.

Writes ``benchmarks/results/gpu.md`` and ``gpu.json`` (``gpu-dryrun-cpu.*`` for ``--device
cpu``) after every step, and copies them into ``--out-dir`` (``$OUT`` on the device machine).

Environment it prepares: RecBole 1.2.1's ``recbole.quick_start`` imports ``ray`` (``from ray
import tune``) at module level, and ray 2.6.3 has no Python 3.12 wheel: where ``ray`` does not
import, a stand-in package (``tune.report`` raising) is put on ``sys.path`` and ``PYTHONPATH``
(``--stub-ray`` forces it). mamba-ssm's Triton kernels are autotuned over about 200 configs,
minutes of compiling: unless ``--autotune``, ``MAMBA_DETERMINISTIC=1`` makes mamba-ssm take one
config per kernel (and its deterministic reductions in the backward). Where numpy >= 2 runs
(``gpu_check.sh`` keeps the machine's numpy 2 if its compiled packages refuse numpy 1.26),
``numpy.float_``, ``numpy.complex_`` and ``numpy.unicode_`` are set for RecBole's ``Config``,
which reads them (the only numpy 2 break RecBole 1.2.1 hit in this script's dry run). RecBole's
``Config`` also parses ``--key=value`` from the command line and sets ``CUDA_VISIBLE_DEVICES`` to
``gpu_id``: this script hides its own arguments from it and restores the variable.
"""

import argparse
import collections
import contextlib
import copy
import datetime
import json
import os
import platform
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("Hydra", "HSTU", "SASRecGen", "Mamba4Rec")
TOL_FP32 = 1e-4  # float32 on both sides, no tf32 unit in play
TOL_TF32 = 5e-3  # a Triton kernel ran: its float32 dots run on tf32 (10-bit mantissa)

T0 = time.perf_counter()
#: which optional kernels the package dispatched to (counted while a step runs)
USED = collections.Counter()


def log(message):
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


def one_line(error):
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else type(error).__name__)[:400]


# ---- the environment -------------------------------------------------------------------------

RAY_STUB = '''"""A stand-in for ray, written by benchmarks/gpu_check.py: RecBole 1.2.1's
quick_start imports ``from ray import tune`` at module level, and ray 2.6.3 has no wheel for
this Python."""

from . import tune  # noqa: F401

__version__ = "0+stand-in"
'''
RAY_TUNE_STUB = """def report(*args, **kwargs):
    raise RuntimeError("ray is a stand-in here (benchmarks/gpu_check.py): no Ray Tune")
"""


#: numpy 2 removed these; RecBole 1.2.1's ``Config`` reads them (``compatibility_settings``)
NUMPY2_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_"}


def numpy2_aliases():
    """Where numpy >= 2 runs (the GPU machine's, if its compiled packages refuse numpy 1.26), give
    RecBole 1.2.1's ``Config`` the three numpy 1 aliases it reads; returns the names set. Runs at
    import, so that the multi-process step's spawned process (which imports this file as
    ``__mp_main__``) has them too."""
    import numpy

    missing = [name for name in NUMPY2_ALIASES if not hasattr(numpy, name)]
    for name in missing:
        setattr(numpy, name, getattr(numpy, NUMPY2_ALIASES[name]))
    return missing


NUMPY2_SET = numpy2_aliases()


def prepare_environment(args):
    """The ray stand-in (where ray does not import), mamba-ssm's autotuning choice; returns what
    was done, for the report."""
    import importlib.util

    done = {}
    if args.stub_ray or importlib.util.find_spec("ray") is None:
        folder = Path(tempfile.mkdtemp(prefix="gpu_check-ray-"))
        (folder / "ray").mkdir()
        (folder / "ray" / "__init__.py").write_text(RAY_STUB)
        (folder / "ray" / "tune.py").write_text(RAY_TUNE_STUB)
        sys.path.insert(0, str(folder))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(folder), os.environ.get("PYTHONPATH")) if p
        )
        done["ray"] = f"stand-in package at {folder} (ray does not import here)"
    if NUMPY2_SET:
        done["numpy 2"] = f"aliases numpy.{', numpy.'.join(NUMPY2_SET)} set for RecBole's Config"
    if not args.autotune:
        os.environ.setdefault("MAMBA_DETERMINISTIC", "1")
    done["MAMBA_DETERMINISTIC"] = os.environ.get("MAMBA_DETERMINISTIC", "unset")
    return done


def count_kernel_use():
    """Wrap the package's dispatch (``kernels.usable``, ``kernels.cpu_kernels``) to count, in
    ``USED``, each call that got a kernel. The layers look both up on the module at each call."""
    from recbole_hydra.layers import kernels

    if getattr(kernels.usable, "_counted", False):
        return
    usable, cpu_kernels = kernels.usable, kernels.cpu_kernels

    def counted_usable(name, tensor):
        fn = usable(name, tensor)
        if fn is not None:
            USED[name] += 1
        return fn

    def counted_cpu_kernels(tensor):
        module = cpu_kernels(tensor)
        if module is not None:
            USED["CPU C++ kernels"] += 1
        return module

    counted_usable._counted = True
    kernels.usable, kernels.cpu_kernels = counted_usable, counted_cpu_kernels


@contextlib.contextmanager
def kernels_used(into):
    """``into`` gets the kernel calls counted inside the block, e.g. ``{'CPU C++ kernels': 12}``."""
    before = USED.copy()
    try:
        yield into
    finally:
        into.update({k: v - before.get(k, 0) for k, v in USED.items() if v != before.get(k, 0)})


def used_text(used):
    return ", ".join(f"{k} x{v}" for k, v in sorted(used.items())) or "PyTorch ops only"


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- step 1: versions and kernels ------------------------------------------------------------


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions(device):
    import numpy
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__,
    }
    for name, module in (("triton", "triton"), ("recbole", "recbole"), ("pandas", "pandas")):
        try:
            out[name] = __import__(module).__version__
        except Exception as error:
            out[name] = f"not importable ({one_line(error)})"
    for dist in ("scipy", "mamba-ssm", "causal-conv1d"):
        out[dist] = _version(dist) or "not installed"
    ray = sys.modules.get("ray")  # RecBole imported it: the real one or the stand-in
    out["ray"] = getattr(ray, "__version__", "not imported") if ray else "not imported"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["GPU"] = (
            f"{props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
        )
        try:
            out["NCCL"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as error:
            out["NCCL"] = f"unknown ({one_line(error)})"
        try:
            import subprocess

            out["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except Exception as error:
            out["driver"] = f"unknown ({one_line(error)})"
        out["float32 matmul"] = (
            f"allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
            f"precision={torch.get_float32_matmul_precision()}"
        )
        out["cuDNN allow_tf32"] = torch.backends.cudnn.allow_tf32
    return out


def kernel_status():
    """Each optional kernel: loaded (and from where) or why not; the CPU kernels' build."""
    import torch

    from recbole_hydra.layers import kernels

    status = {}
    for name, path in kernels._WHERE.items():
        fn = kernels.load(name)
        if fn is not None:
            how = (
                " (its package's __init__ skipped)" if path in kernels.WITHOUT_PACKAGE_INIT else ""
            )
            status[name] = f"loaded from {path}{how}"
        else:
            why = kernels.IMPORT_ERRORS.get(path)
            if why is None and name in kernels._NEEDS:
                why = f"{path} has no {kernels._NEEDS[name]} (causal-conv1d's compiled extension)"
            status[name] = f"not used: {why or 'not defined in ' + path}"
    built = kernels.cpu_kernels(torch.zeros(1)) is not None
    status["CPU C++ kernels"] = "built" if built else "not built (PyTorch ops on the CPU)"
    return status


# ---- step 2: CUDA against CPU on the same weights --------------------------------------------


def rel_err(a, b):
    """``|a - b| / |b|`` over the whole tensor, in float64; inf if either is not finite."""
    import torch

    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    ref = b.norm().item()
    diff = (a - b).norm().item()
    return 0.0 if diff == 0 else diff / max(ref, 1e-300)


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _run_side(module, inputs, weights, device, dtype, use_kernels, forward):
    """``forward(module, *inputs)`` on a copy of ``module`` at ``device``/``dtype``; returns its
    outputs and the gradients of ``sum(out * weight)`` for every parameter and float input."""
    import torch

    from recbole_hydra.layers import kernels

    m = copy.deepcopy(module).to(device=device, dtype=dtype)
    xs = []
    for x in inputs:  # copies: the sides never share an input tensor or its gradient
        x = x.detach().to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        xs.append(x.clone().requires_grad_(True) if x.is_floating_point() else x.clone())
    with kernels.use(use_kernels):
        outs = _tensors(forward(m, *xs))
        loss = sum((o * w.to(device=device, dtype=o.dtype)).sum() for o, w in zip(outs, weights))
        loss.backward()
    sync(torch.device(device))
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    grads.update({f"input{i}": x.grad for i, x in enumerate(xs) if x.grad is not None})
    return [o.detach() for o in outs], grads


def compare_module(name, module, inputs, device, forward=None, ref_kernels=True):
    """The comparison of one block: ``module`` (float32, on the CPU) and its ``inputs`` on the
    CPU (kernels ``ref_kernels``) and on ``device`` (kernels on), and on the CPU in float64."""
    import torch

    forward = forward or (lambda m, *xs: m(*xs))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        probe = _tensors(forward(copy.deepcopy(module), *inputs))
    weights = [torch.randn(o.shape, generator=gen) for o in probe]
    used = {}
    ref_out, ref_grads = _run_side(
        module, inputs, weights, "cpu", torch.float32, ref_kernels, forward
    )
    with kernels_used(used):
        dut_out, dut_grads = _run_side(
            module, inputs, weights, device, torch.float32, True, forward
        )
    f64_out, f64_grads = _run_side(module, inputs, weights, "cpu", torch.float64, True, forward)
    return _verdict(name, used, ref_out, ref_grads, dut_out, dut_grads, f64_out, f64_grads)


def _verdict(name, used, ref_out, ref_grads, dut_out, dut_grads, f64_out=None, f64_grads=None):
    triton = any(k.startswith(("mamba_chunk", "selective_state")) for k in used)
    tol = TOL_TF32 if triton else TOL_FP32
    out_err = max((rel_err(a, b) for a, b in zip(dut_out, ref_out)), default=0.0)
    missing = sorted(set(ref_grads) ^ set(dut_grads))
    grad_errs = {n: rel_err(dut_grads[n], ref_grads[n]) for n in ref_grads if n in dut_grads}
    worst = max(grad_errs, key=grad_errs.get) if grad_errs else None
    row = {
        "name": name,
        "device path": used_text(used),
        "tol": tol,
        "out err": out_err,
        "grad err": grad_errs[worst] if worst else None,
        "worst grad": worst,
        "grads": len(grad_errs),
    }
    if f64_out is not None:
        row["device vs f64"] = max(
            [rel_err(a, b) for a, b in zip(dut_out, f64_out)]
            + [rel_err(dut_grads[n], f64_grads[n]) for n in f64_grads if n in dut_grads]
        )
        row["cpu vs f64"] = max(
            [rel_err(a, b) for a, b in zip(ref_out, f64_out)]
            + [rel_err(ref_grads[n], f64_grads[n]) for n in f64_grads if n in ref_grads]
        )
    worst_err = max(out_err, row["grad err"] or 0.0)
    row["ok"] = (
        not missing
        and len(dut_out) == len(ref_out)
        and (
            worst_err <= tol
            # or no further from float64 than twice the CPU's own float32 error
            or ("device vs f64" in row and row["device vs f64"] <= 2 * row["cpu vs f64"])
        )
    )
    if missing:
        row["error"] = f"gradients only on one side: {missing[:5]}"
    log(
        f"  {name}: out {out_err:.2e}, worst grad {row['grad err'] or 0:.2e} ({worst}), "
        f"tol {tol:.0e}, {'ok' if row['ok'] else 'FAIL'}; device path: {row['device path']}"
    )
    return row


def compare_sizes(quick):
    """Shapes of the block comparisons: Hydra's default latent heads (head 16, expand 2: SSD
    headdim 32, d_state 32, chunk 64), so that the Triton kernels compile for one shape only."""
    return dict(batch=2 if quick else 8, length=64 if quick else 200, d_head=16, n_heads=4)


def compare_layers(device, quick=False, ref_kernels=None):
    """Mamba-2, the latent heads, a Hydra layer, ``ssd_scan`` against mamba-ssm's kernel, Mamba-1.
    Returns the rows (a failing comparison is a row with its error)."""
    import torch

    from recbole_hydra.layers.hydra_layer import HydraLayer
    from recbole_hydra.layers.mamba1 import Mamba1
    from recbole_hydra.layers.mamba2 import Mamba2, MultiHeadLatentMamba2

    ref_kernels = (device.type != "cpu") if ref_kernels is None else ref_kernels
    s = compare_sizes(quick)
    b, l, dh, v = s["batch"], s["length"], s["d_head"], s["n_heads"]
    d = dh * v
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(b, l, d, generator=gen)
    cases = [
        ("Mamba-2 block", lambda: Mamba2(d, d_state=32, headdim=32, chunk_size=64), [u]),
        (
            "latent heads (MultiHeadLatentMamba2)",
            lambda: MultiHeadLatentMamba2(v, dh, d_state=32, chunk_size=64),
            [u],
        ),
        (
            "Hydra layer",
            lambda: HydraLayer(d, v, dh, d, d_state=32, chunk_size=64, pre_norm=True),
            [u],
        ),
        ("Mamba-1 block", lambda: Mamba1(d, d_state=32, expand=2), [u]),
    ]
    rows = []
    for name, make, inputs in cases:
        try:
            torch.manual_seed(0)
            rows.append(compare_module(name, make(), inputs, device, ref_kernels=ref_kernels))
        except Exception as error:
            log(f"  {name}: ERROR {one_line(error)}")
            rows.append({"name": name, "ok": False, "error": one_line(error)})
    rows.append(compare_ssd_kernel(device, quick))
    return rows


def compare_ssd_kernel(device, quick=False):
    """The package's ``ssd_scan`` (PyTorch ops) against mamba-ssm's ``mamba_chunk_scan_combined``
    on ``device``, outputs, final state and gradients of x, dt, A, B, C, D."""
    import torch

    from recbole_hydra.layers import kernels
    from recbole_hydra.layers.ssd import ssd_scan

    name = "ssd_scan vs mamba_chunk_scan_combined"
    try:
        kernel = kernels.load("mamba_chunk_scan_combined")
        if kernel is None or device.type != "cuda":
            why = kernels.IMPORT_ERRORS.get(kernels._WHERE["mamba_chunk_scan_combined"])
            reason = "no CUDA device" if device.type != "cuda" else why
            log(f"  {name}: skipped ({reason})")
            return {"name": name, "ok": None, "skipped": reason}
        s = compare_sizes(quick)
        b, l, h, p, n, chunk = s["batch"], s["length"], 8, 32, 32, 64
        gen = torch.Generator().manual_seed(3)
        inputs = {
            "x": torch.randn(b, l, h, p, generator=gen),
            "dt": torch.nn.functional.softplus(torch.randn(b, l, h, generator=gen) - 2),
            "A": -torch.exp(torch.rand(h, generator=gen) * 2),
            "B": torch.randn(b, l, 1, n, generator=gen),
            "C": torch.randn(b, l, 1, n, generator=gen),
            "D": torch.randn(h, generator=gen),
        }
        weights = [torch.randn(b, l, h, p, generator=gen), torch.randn(b, h, p, n, generator=gen)]

        def side(fn, dtype):
            xs = {
                k: v.to(device=device, dtype=dtype).clone().requires_grad_(True)
                for k, v in inputs.items()
            }
            y, state = fn(xs)
            loss = (y * weights[0].to(y)).sum() + (state * weights[1].to(state)).sum()
            loss.backward()
            sync(device)
            return [y.detach(), state.detach()], {k: v.grad for k, v in xs.items()}

        ours = side(
            lambda t: ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"]),
            torch.float32,
        )
        used = {}
        with kernels_used(used):
            USED["mamba_chunk_scan_combined"] += 1  # called directly, not through the dispatch
            theirs = side(
                lambda t: kernel(
                    t["x"],
                    t["dt"],
                    t["A"],
                    t["B"],
                    t["C"],
                    chunk,
                    D=t["D"],
                    return_final_states=True,
                ),
                torch.float32,
            )
        f64 = side(
            lambda t: ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"]),
            torch.float64,
        )
        return _verdict(name, used, ours[0], ours[1], theirs[0], theirs[1], f64[0], f64[1])
    except Exception as error:
        log(f"  {name}: ERROR {one_line(error)}")
        return {"name": name, "ok": False, "error": one_line(error)}


def write_toy_dataset(root, n_users, n_items, min_len, max_len, seed=0):
    """A RecBole atomic file ``root/gpu-toy/gpu-toy.inter`` of random sequences."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(root) / "gpu-toy"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        for t in range(int(rng.integers(min_len, max_len + 1))):
            lines.append(f"u{u}\ti{int(rng.integers(n_items))}\t{1000 * u + 60 * t}")
    (folder / "gpu-toy.inter").write_text("\n".join(lines) + "\n")
    return str(root)


@contextlib.contextmanager
def keep_visible_devices():
    """RecBole's Config sets ``CUDA_VISIBLE_DEVICES`` to ``gpu_id``; put it back afterwards (a
    process started later, the multi-process step's, must still see the GPU)."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def make_config(model, dataset, device, **overrides):
    from recbole_hydra.config import make_config as package_make_config

    settings = {
        "gpu_id": "0" if device.type == "cuda" else "",
        "show_progress": False,
        "state": "WARNING",
        "reproducibility": True,
    }
    settings.update(overrides)
    with keep_visible_devices():
        return package_make_config(model, dataset, config_dict=settings)


@contextlib.contextmanager
def shared_negatives(seed=5):
    """The models' sampled negatives drawn on the CPU from one seed, whatever the device, so
    that both sides of a comparison score the same negatives."""
    import torch

    import recbole_hydra.model.base as base

    original = base.sample_negatives

    def sample(n_items, num_negatives, device, generator=None):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(1, n_items, (num_negatives,), generator=g).to(device)

    base.sample_negatives = sample
    try:
        yield
    finally:
        base.sample_negatives = original


def compare_models(device, quick=False, workdir=None, ref_kernels=None, models=MODELS):
    """Each model's loss, gradients and full-sort scores on a toy dataset, in eval mode (no
    dropout), the same weights and batch on the CPU and on ``device``."""
    import torch
    from recbole.data import data_preparation

    from recbole_hydra.registry import create_dataset, get_model

    ref_kernels = (device.type != "cpu") if ref_kernels is None else ref_kernels
    length = 32 if quick else 200
    root = write_toy_dataset(
        Path(workdir or tempfile.mkdtemp(prefix="gpu_check-")) / "toy",
        n_users=16 if quick else 32,
        n_items=300,
        min_len=length // 2,
        max_len=length + length // 4,
    )
    rows = []
    for model_name in models:
        name = f"{model_name} loss, gradients, scores"
        try:
            config = make_config(
                model_name,
                "gpu-toy",
                torch.device("cpu"),
                data_path=root,
                MAX_ITEM_LIST_LENGTH=length,
                train_batch_size=4 if quick else 16,
                eval_batch_size=4 if quick else 16,
                load_col={"inter": ["user_id", "item_id", "timestamp"]},
                user_inter_num_interval="[0,inf)",
                item_inter_num_interval="[0,inf)",
            )
            dataset = create_dataset(config)
            train, _, test = data_preparation(config, dataset)
            torch.manual_seed(0)
            model = get_model(model_name)(config, train._dataset).eval()
            batch = next(iter(train))
            eval_batch = next(iter(test))[0]

            def forward(m, *_, batch=batch, eval_batch=eval_batch):
                with shared_negatives():
                    loss = m.calculate_loss(batch.to(m.device))
                with torch.no_grad():
                    scores = m.full_sort_predict(eval_batch.to(m.device))
                return loss, scores

            rows.append(compare_model(name, model, device, forward, ref_kernels=ref_kernels))
        except Exception as error:
            log(f"  {name}: ERROR {one_line(error)}")
            traceback.print_exc(limit=-3)
            rows.append({"name": name, "ok": False, "error": one_line(error)})
    return rows


def compare_model(name, model, device, forward, ref_kernels=True):
    """``forward(model) -> (loss, scores)`` on the CPU (float32, kernels ``ref_kernels``), on
    ``device`` and on the CPU in float64; the loss's gradients of every parameter."""
    import torch

    from recbole_hydra.layers import kernels

    def side(dev, dtype, use_kernels):
        m = copy.deepcopy(model).to(device=dev, dtype=dtype)
        m.device = torch.device(dev)  # RecBole's models keep their device as an attribute
        with kernels.use(use_kernels):
            loss, scores = forward(m)
            loss.backward()
        sync(torch.device(dev))
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        return [loss.detach(), scores.detach()], grads

    used = {}
    ref = side("cpu", torch.float32, ref_kernels)
    with kernels_used(used):
        dut = side(device, torch.float32, True)
    f64 = side("cpu", torch.float64, True)
    return _verdict(name, used, ref[0], ref[1], dut[0], dut[1], f64[0], f64[1])


# ---- step 3: one epoch of each model ---------------------------------------------------------


def train_model(model_name, args, device, budget_for_run):
    """One epoch of ``model_name`` in float32 and in bf16 autocast on the same data; a row per
    precision."""
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_hydra.config import check_dataset
    from recbole_hydra.layers import kernels
    from recbole_hydra.registry import build_model, create_dataset, get_trainer
    from recbole_hydra.trainer import record_history

    t0 = time.perf_counter()
    config = make_config(
        model_name,
        args.dataset,
        device,
        data_path=args.data_path,
        MAX_ITEM_LIST_LENGTH=args.length,
        epochs=1,
        checkpoint_dir=str(Path.cwd() / "saved"),
    )
    if args.quick:  # the dry run: Mamba4Rec's batch of 2048 takes minutes on a laptop CPU
        config["train_batch_size"] = min(config["train_batch_size"], 256)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    check_dataset(config, dataset)
    train, _, test = data_preparation(config, dataset)
    data_s = time.perf_counter() - t0
    log(f"  {model_name}: data ready in {data_s:.1f}s ({len(train)} batches per epoch)")
    rows = []
    for precision in ("float32", "bf16 autocast"):
        row = {"model": model_name, "precision": precision, "data_s": data_s}
        rows.append(row)
        budget = budget_for_run()
        if budget is None:
            row["error"] = "skipped: out of time"
            continue
        try:
            config["enable_amp"] = precision != "float32"
            config["enable_scaler"] = False
            config["time_budget_s"] = budget
            init_seed(config["seed"], config["reproducibility"])
            model = build_model(config, train._dataset)
            trainer = get_trainer(config)(config, model)
            history = record_history(trainer, budget)
            losses = []
            timed_epoch = trainer._train_epoch

            def train_epoch(*a, timed_epoch=timed_epoch, losses=losses, **k):
                loss = timed_epoch(*a, **k)
                losses.append(loss)
                return loss

            trainer._train_epoch = train_epoch
            # when each batch's loss starts: RecBole reads every loss with .item(), so each start
            # follows the previous batch's end (the first batch carries the warm-up and any
            # Triton compiling)
            starts, calculate_loss = [], model.calculate_loss

            def timed_loss(interaction, starts=starts, calculate_loss=calculate_loss):
                starts.append(time.perf_counter())
                return calculate_loss(interaction)

            model.calculate_loss = timed_loss
            used = {}
            with kernels.use(config["use_kernels"] is not False), kernels_used(used):
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                harness.reset_peak_rss()
                trainer.fit(train, None, saved=False, show_progress=False)
                sync(device)
                row["peak_train_mib"] = _peak_mib(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                harness.reset_peak_rss()
                t1 = time.perf_counter()
                result = trainer.evaluate(test, load_best_model=False, show_progress=False)
                sync(device)
                row["eval_s"] = time.perf_counter() - t1
                row["peak_eval_mib"] = _peak_mib(device)
            entry = history[0] if history else {}
            row["train_s"] = entry.get("train_s")
            row["batches"] = entry.get("batches", len(train))
            row["batches_per_epoch"] = entry.get("batches_per_epoch", len(train))
            row["epoch_s"] = (
                row["train_s"] * row["batches_per_epoch"] / max(1, row["batches"])
                if row["train_s"] is not None
                else None
            )
            row["first_batch_s"] = starts[1] - starts[0] if len(starts) > 1 else None
            row["steady_epoch_s"] = (
                (starts[-1] - starts[1]) / (len(starts) - 2) * row["batches_per_epoch"]
                if len(starts) > 2
                else None
            )
            loss = losses[0] if losses else None
            if isinstance(loss, tuple):
                loss = sum(loss)
            row["mean_loss"] = None if loss is None else float(loss) / max(1, row["batches"])
            row["ndcg@10"] = float(result["ndcg@10"])
            row["recall@10"] = float(result["recall@10"])
            row["kernels"] = used_text(used)
            row["time_budget_s"] = budget
            cut = "" if row["batches"] == row["batches_per_epoch"] else " (cut by the budget)"
            log(
                f"  {model_name} {precision}: {row['batches']}/{row['batches_per_epoch']} batches "
                f"in {row['train_s']:.1f}s{cut}, epoch {row['epoch_s']:.1f}s (first batch "
                f"{_fmt(row['first_batch_s'], '.2f')}s, steady epoch "
                f"{_fmt(row['steady_epoch_s'], '.1f')}s), eval "
                f"{row['eval_s']:.1f}s, peak {row['peak_train_mib']:.0f}/"
                f"{row['peak_eval_mib']:.0f} MiB, test NDCG@10 {row['ndcg@10']:.4f}; "
                f"{row['kernels']}"
            )
            del trainer, model
        except Exception as error:
            log(f"  {model_name} {precision}: ERROR {one_line(error)}")
            traceback.print_exc(limit=-4)
            row["error"] = one_line(error)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _peak_mib(device):
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return harness.peak_rss_mb()


# ---- step 4: RecBole's multi-process path ----------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def output_to(path):
    """This process's stdout and stderr (file descriptors 1 and 2, so child processes' too) go
    to ``path`` inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def ddp(args, device, log_path, budget):
    """Hydra, one epoch, through ``run_distributed(nproc=1, world_size=1)``."""
    from recbole_hydra.training import run_distributed

    settings = {
        "gpu_id": "0" if device.type == "cuda" else "",
        "data_path": args.data_path,
        "MAX_ITEM_LIST_LENGTH": args.length,
        "epochs": 1,
        "show_progress": False,
        "time_budget_s": budget,
        "checkpoint_dir": str(Path.cwd() / "saved-ddp"),
    }
    os.environ["NCCL_DEBUG"] = "VERSION"
    t0 = time.perf_counter()
    with keep_visible_devices(), output_to(log_path):
        result = run_distributed(
            "Hydra",
            args.dataset,
            config_dict=settings,
            saved=True,
            nproc=1,
            world_size=1,
            port=free_port(),
            timeout_s=180,
        )
    wall = time.perf_counter() - t0
    text = Path(log_path).read_text(errors="replace")
    nccl = [line.strip() for line in text.splitlines() if "NCCL version" in line]
    out = {
        "backend": (
            "nccl" if device.type == "cuda" else "gloo"
        ),  # compat.init_distributed's rule: gpu_id set and CUDA available
        "nccl line": nccl[0][:200] if nccl else None,
        "wall_s": wall,
        "ndcg@10": float(result["test_result"]["ndcg@10"]) if result else None,
        "epochs": result["epochs"] if result else None,
        "train_s": result["history"][0].get("train_s") if result and result["history"] else None,
        "checkpoint": bool(
            result and result["model_file"] and os.path.exists(result["model_file"])
        ),
    }
    log(
        f"  ddp: {out['backend']}, {wall:.1f}s wall, test NDCG@10 {out['ndcg@10']}, checkpoint "
        f"{'written' if out['checkpoint'] else 'MISSING'}; {out['nccl line'] or 'no NCCL line'}"
    )
    return out


# ---- the report ------------------------------------------------------------------------------


def _fmt(value, spec=".2e"):
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def report_lines(results):
    on_cpu = not results["device"].startswith("cuda")
    lines = harness.header(
        "The GPU path" + (": dry run on the CPU" if on_cpu else f" on one {results.get('gpu')}"),
        results["command"],
        results["machine"],
        f"Date: {results['date']}; total wall {results['wall_s']:.0f} s of a "
        f"{results['budget_s']:.0f} s budget",
        "Written by `benchmarks/gpu_check.py` (see its docstring for what each step does)."
        + (
            " `--quick`: small comparison shapes, train_batch_size at most 256."
            if results.get("quick")
            else ""
        ),
    )
    lines += ["## Versions", ""]
    lines += harness.table(["", "version"], list(results.get("versions", {}).items()))
    lines += ["", "## Kernels", ""]
    lines += harness.table(["kernel", "status"], list(results.get("kernels", {}).items()))
    lines += [""] + [f"Environment: {k}: {v}" for k, v in results.get("environment", {}).items()]
    rows = results.get("comparisons", [])
    lines += ["", "## Device against CPU, same float32 weights", ""]
    lines += [
        f"Relative error |a - b| / |b| of the device's result against the CPU's; `worst grad` is "
        f"the gradient with the largest error. Tolerance {TOL_FP32:.0e} for float32 ops on both "
        f"sides, {TOL_TF32:.0e} where a Triton kernel ran (tf32 dots). `vs f64`: each side's "
        "largest error (outputs and gradients) against a float64 CPU run. `ok`: within the "
        "tolerance, or no further from float64 than twice the CPU's own float32 error.",
        "",
    ]
    lines += harness.table(
        [
            "comparison",
            "device path",
            "tol",
            "out err",
            "worst grad err",
            "worst grad",
            "device vs f64",
            "cpu vs f64",
            "result",
        ],
        [
            [
                r["name"],
                r.get("device path", ""),
                _fmt(r.get("tol"), ".0e"),
                _fmt(r.get("out err")),
                _fmt(r.get("grad err")),
                r.get("worst grad") or "",
                _fmt(r.get("device vs f64")),
                _fmt(r.get("cpu vs f64")),
                "ok"
                if r.get("ok")
                else (
                    "skipped: " + str(r["skipped"])
                    if "skipped" in r
                    else "FAIL" + (f": {r['error']}" if r.get("error") else "")
                ),
            ]
            for r in rows
        ],
    )
    train = results.get("training", [])
    lines += ["", "## One epoch of each model", ""]
    lines += [
        f"{results.get('dataset')} at MAX_ITEM_LIST_LENGTH {results.get('length')}, each model's "
        "own yaml; test split after the epoch (history not masked). `epoch s`: training seconds, "
        "extrapolated to the whole epoch when the time budget cut it (`batches`); `steady epoch "
        "s`: the same from the batches after the first, which carries the warm-up and any Triton "
        "compiling; `eval s`: the test split; peak memory: "
        + (
            "torch.cuda.max_memory_allocated"
            if results["device"].startswith("cuda")
            else "peak RSS of this process"
        )
        + " during training / evaluation.",
        "",
    ]
    lines += harness.table(
        [
            "model",
            "precision",
            "batches",
            "epoch s",
            "first batch s",
            "steady epoch s",
            "eval s",
            "peak train MiB",
            "peak eval MiB",
            "NDCG@10",
            "Recall@10",
            "mean loss",
            "kernels",
            "error",
        ],
        [
            [
                r["model"],
                r["precision"],
                f"{r['batches']}/{r['batches_per_epoch']}" if "batches" in r else "",
                _fmt(r.get("epoch_s"), ".1f"),
                _fmt(r.get("first_batch_s"), ".2f"),
                _fmt(r.get("steady_epoch_s"), ".1f"),
                _fmt(r.get("eval_s"), ".1f"),
                _fmt(r.get("peak_train_mib"), ".0f"),
                _fmt(r.get("peak_eval_mib"), ".0f"),
                _fmt(r.get("ndcg@10"), ".4f"),
                _fmt(r.get("recall@10"), ".4f"),
                _fmt(r.get("mean_loss"), ".4f"),
                r.get("kernels", ""),
                r.get("error", ""),
            ]
            for r in train
        ],
        "llrrrrrrrrrrll",
    )
    d = results.get("ddp")
    lines += ["", "## RecBole's multi-process path (world size 1)", ""]
    if d:
        lines += harness.table(["", "value"], [[k, _fmt(v, ".4f")] for k, v in d.items()])
    lines += ["", "## Steps", ""]
    lines += harness.table(
        ["step", "seconds", "result"],
        [[s["step"], _fmt(s.get("seconds"), ".1f"), s["result"]] for s in results["steps"]],
        "lrl",
    )
    return lines


def write_results(results, args):
    results["wall_s"] = time.perf_counter() - T0
    stem = "gpu" if results["device"].startswith("cuda") else f"gpu-dryrun-{results['device']}"
    paths = [
        harness.write_report(RESULTS / f"{stem}.md", report_lines(results)),
        RESULTS / f"{stem}.json",
    ]
    paths[1].write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for p in paths:
            if p.resolve().parent != out.resolve():
                shutil.copy(p, out / p.name)
    return paths


# ---- main ------------------------------------------------------------------------------------


def prepare_data(args):
    """The dataset's atomic files: RecBole's ml-100k, or ``--data-archive`` unpacked into
    ``--data-path`` when they are not there yet."""
    if args.dataset == "ml-100k" and args.data_path is None:
        args.data_path = str(Path(__import__("recbole").__file__).parent / "dataset_example")
    args.data_path = str(Path(args.data_path or ROOT / "dataset").resolve())
    inter = Path(args.data_path) / args.dataset / f"{args.dataset}.inter"
    if inter.exists():
        return f"{inter} ({inter.stat().st_size / 2**20:.0f} MiB)"
    if not args.data_archive:
        raise FileNotFoundError(
            f"{inter} is missing: run python -m recbole_hydra.data.fetch {args.dataset} or "
            "pass --data-archive"
        )
    with tarfile.open(args.data_archive) as tar:
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(args.data_path, **kwargs)
    return f"{inter} unpacked from {args.data_archive} ({inter.stat().st_size / 2**20:.0f} MiB)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (dry run)")
    parser.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run)")
    parser.add_argument("--dataset", default=None, help="default: ml-1m; ml-100k with --quick")
    parser.add_argument("--length", type=int, default=None, help="MAX_ITEM_LIST_LENGTH (200)")
    parser.add_argument("--data-path", default=None, help="RecBole data_path (default dataset/)")
    parser.add_argument("--data-archive", default=None, help="tar of <dataset>/<dataset>.inter")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", default="versions,compare,train,ddp")
    parser.add_argument("--budget-s", type=float, default=400, help="whole script, seconds")
    parser.add_argument(
        "--train-budget-s", type=float, default=None, help="per training run (60; 10 with --quick)"
    )
    parser.add_argument("--out-dir", default=os.environ.get("OUT"), help="copy the results here")
    parser.add_argument(
        "--stub-ray", action="store_true", help="the ray stand-in even if ray imports"
    )
    parser.add_argument("--autotune", action="store_true", help="mamba-ssm's full Triton autotune")
    args = parser.parse_args(argv)
    args.dataset = args.dataset or ("ml-100k" if args.quick else "ml-1m")
    args.length = args.length or (50 if args.quick else 200)
    args.train_budget_s = args.train_budget_s or (10.0 if args.quick else 60.0)
    for name in ("data_path", "data_archive", "out_dir"):  # main() changes the current folder
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    return args


def main(argv=None):
    args = parse_args(argv)
    results = {
        "device": args.device,
        "command": harness.command(),
        "date": datetime.date.today().isoformat(),
        "budget_s": args.budget_s,
        "dataset": args.dataset,
        "length": args.length,
        "quick": args.quick,
        "steps": [],
        "environment": prepare_environment(args),
    }
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line
    deadline = T0 + args.budget_s
    steps = set(args.steps.split(","))
    models = [m for m in args.models.split(",") if m]
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check-work-"))
    os.chdir(workdir)  # RecBole writes log/, log_tensorboard/ and saved/ into the current folder
    log(f"gpu_check: {args.device}, budget {args.budget_s:.0f}s, working in {workdir}")

    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()  # before any RecBole Config sets CUDA_VISIBLE_DEVICES
        torch.set_autocast_dtype("cuda", torch.bfloat16)  # RecBole's enable_amp: bf16
    results["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    results["machine"] = harness.machine(
        GPU=torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    )

    def step(name, fn, reserve_s=0.0, need_s=0.0):
        """Run ``fn`` guarded, if more than ``need_s`` of the budget is left after
        ``reserve_s``."""
        left = deadline - time.perf_counter() - reserve_s
        if left <= (0.0 if args.quick else need_s):
            results["steps"].append({"step": name, "result": "skipped: out of time"})
            log(f"{name}: skipped, out of time")
            write_results(results, args)
            return None
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            value = fn()
            outcome = "done"
        except Exception as error:
            traceback.print_exc(limit=-4)
            value, outcome = None, "error: " + one_line(error)
        seconds = time.perf_counter() - t0
        results["steps"].append({"step": name, "seconds": seconds, "result": outcome})
        log(f"{name}: {outcome} in {seconds:.1f}s")
        write_results(results, args)
        return value

    def setup():
        from recbole_hydra import compat  # importing the package applies the RecBole shims

        compat.quiet_known_warnings()  # RecBole's pandas FutureWarnings, as the CLI does
        count_kernel_use()
        return prepare_data(args)

    results["data"] = step("import and data", setup)
    if "versions" in steps:
        results["versions"] = step("versions", lambda: versions(device)) or {}
        results["kernels"] = step("kernels", kernel_status) or {}
        for k, v in {**results["versions"], **results["kernels"]}.items():
            log(f"  {k}: {v}")
    if "compare" in steps:
        results["comparisons"] = []
        rows = step("compare layers", lambda: compare_layers(device, args.quick))
        results["comparisons"] += rows or []
        rows = step(
            "compare models", lambda: compare_models(device, args.quick, workdir, models=models)
        )
        results["comparisons"] += rows or []
    order = [m for m in models if m != "Mamba4Rec"]  # Mamba4Rec last: its prefix data is slow
    runs_left = [2 * len(models) if "train" in steps else 0]
    ddp_reserve = 45.0 if "ddp" in steps else 0.0

    def budget_for_run():
        """Training seconds for the next run: an even share of what is left (with room for
        data, evaluation and the multi-process step), at most ``--train-budget-s``."""
        left = deadline - time.perf_counter() - ddp_reserve
        share = 0.5 * left / max(1, runs_left[0])
        runs_left[0] -= 1
        if left < 20:
            return None
        return max(3.0, min(args.train_budget_s, share))

    results["training"] = []

    def train(model):
        rows = train_model(model, args, device, budget_for_run)
        results["training"].extend(rows)

    def run_ddp():
        log_path = Path(args.out_dir or workdir) / "ddp.log"
        budget = min(args.train_budget_s, max(5.0, 0.5 * (deadline - time.perf_counter())))
        results["ddp"] = ddp(args, device, log_path, budget)

    if "train" in steps:
        for model in order:
            step(
                f"train {model}",
                lambda model=model: train(model),
                reserve_s=ddp_reserve,
                need_s=30,
            )
    if "ddp" in steps:
        ddp_reserve = 0.0
        step("ddp (world size 1)", run_ddp, need_s=30)
    if "train" in steps and "Mamba4Rec" in models:
        step("train Mamba4Rec", lambda: train("Mamba4Rec"), need_s=60)
    paths = write_results(results, args)
    failed = [s["step"] for s in results["steps"] if s["result"] != "done"]
    bad = [r["name"] for r in results.get("comparisons", []) if r.get("ok") is False]
    log(f"wrote {', '.join(map(str, paths))}")
    log(
        f"finished in {time.perf_counter() - T0:.0f}s; steps not done: {failed or 'none'}; "
        f"comparisons failed: {bad or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
