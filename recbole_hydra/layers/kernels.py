"""Optional kernels: mamba-ssm's and causal-conv1d's on CUDA, our own C++ ones on CPU.

Nothing here imports or builds anything at module import. On CUDA, ``usable(name, ...)`` loads
the installed package's kernel once, on first use, and returns ``None`` when the package is
missing or fails to load (``IMPORT_ERRORS`` says why). mamba-ssm's Triton kernels load also from
a mamba-ssm built without its compiled extension (``MAMBA_SKIP_CUDA_BUILD=TRUE``), whose package
``__init__`` fails: they are imported with that ``__init__`` skipped (``WITHOUT_PACKAGE_INIT``).
On CPU, ``cpu_kernels(...)`` compiles ``recbole_hydra/csrc/*.cpp`` once per machine with
PyTorch's JIT extension builder (a C++ compiler and ninja, ~30 s the first time, cached under
``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and returns ``None`` when that
is impossible, with one warning line saying why. Callers use their PyTorch
path on ``None``.

Whether kernels are used at all is one setting of the process, not of each layer: the config
layer calls ``set_enabled(config["use_kernels"])``, and ``use(flag)`` / ``disabled()`` switch it
for a block of code (tests comparing the kernel and PyTorch paths). ``RECBOLE_HYDRA_CPU_KERNELS=0``
turns the CPU kernels off whatever the switch says.
"""

import contextlib
import functools
import hashlib
import importlib
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["set_enabled", "enabled", "use", "disabled", "load", "usable", "cpu_kernels"]

_SELECTIVE_SCAN = "mamba_ssm.ops.selective_scan_interface"
_WHERE = {
    "mamba_chunk_scan_combined": "mamba_ssm.ops.triton.ssd_combined",
    "selective_state_update": "mamba_ssm.ops.triton.selective_state_update",
    "causal_conv1d_fn": "causal_conv1d",
    "causal_conv1d_update": "causal_conv1d",
    "selective_scan_fn": _SELECTIVE_SCAN,
    "mamba_inner_fn": _SELECTIVE_SCAN,
}
# a kernel that is defined but only works when its module could also import this attribute
# (mamba-ssm sets ``causal_conv1d_cuda = None`` when causal-conv1d is missing)
_NEEDS = {"mamba_inner_fn": "causal_conv1d_cuda"}
_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_SOURCES = (
    "bindings.cpp",
    "causal_conv_silu.cpp",
    "ssd_diagonal.cpp",
    "gated_rms_norm.cpp",
    "swiglu.cpp",
)
# -march=native: the build is per machine (the name below includes the CPU); -ffast-math at
# compile time only (never linked, so the process keeps IEEE denormals), for vectorised exp.
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


_enabled = True


def set_enabled(flag: bool) -> None:
    """Use the optional kernels (``True``, the default) or PyTorch ops only (``False``),
    process-wide."""
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    """Whether the optional kernels may be used (``set_enabled``)."""
    return _enabled


@contextlib.contextmanager
def use(flag: bool):
    """``set_enabled(flag)`` inside the ``with`` block, the previous setting after it."""
    previous = _enabled
    set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def disabled():
    """``use(False)``: PyTorch ops only inside the ``with`` block."""
    return use(False)


#: why a kernel's module could not be imported (``_module``'s path -> the error, one line)
IMPORT_ERRORS = {}
#: modules imported with their top-level package's ``__init__`` skipped (``_module``)
WITHOUT_PACKAGE_INIT = set()
# Triton kernels need nothing compiled, but mamba-ssm's ``__init__`` imports its compiled
# extension (``selective_scan_cuda``): built with MAMBA_SKIP_CUDA_BUILD=TRUE, the package fails to
# import while these modules would load.
_TRITON_ONLY = ("mamba_ssm.ops.triton.",)


@functools.lru_cache(maxsize=None)
def _module(path: str):
    try:
        return importlib.import_module(path)
    except Exception as error:  # ImportError, or an extension built for another torch/CUDA
        IMPORT_ERRORS[path] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    if path.startswith(_TRITON_ONLY):
        module = _import_without_package_init(path)
        if module is not None:
            IMPORT_ERRORS.pop(path, None)
            WITHOUT_PACKAGE_INIT.add(path)
        return module
    return None


def _import_without_package_init(path: str):
    """``path`` imported with its top-level package's ``__init__`` skipped (the package stands in
    sys.modules as a bare package for the import only); ``None`` if that fails too."""
    import importlib.util

    top = path.split(".")[0]
    if top in sys.modules:  # the package imported: the failure lies in the module itself
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    before = set(sys.modules)
    bare = sys.modules[top] = importlib.util.module_from_spec(spec)  # not executed: no __init__
    try:
        return importlib.import_module(path)
    except Exception as error:
        IMPORT_ERRORS[path] += f"; without {top}'s __init__: {type(error).__name__}: {error}"
        for name in set(sys.modules) - before:
            if name.startswith(top + "."):
                del sys.modules[name]
        return None
    finally:
        if sys.modules.get(top) is bare:  # ``import top`` elsewhere fails as it did before
            del sys.modules[top]


@functools.lru_cache(maxsize=None)
def load(name: str) -> Optional[Callable]:
    """The kernel ``name`` (one of ``_WHERE``), or ``None`` if its package cannot be imported."""
    module = _module(_WHERE[name])
    if module is None or (name in _NEEDS and getattr(module, _NEEDS[name], None) is None):
        return None
    return getattr(module, name, None)


def usable(name: str, tensor: Tensor) -> Optional[Callable]:
    """The kernel when kernels are enabled, ``tensor`` is on CUDA and the kernel loads; else
    ``None``."""
    if not _enabled or not tensor.is_cuda:
        return None
    return load(name)


def _machine() -> str:
    """What ``-march=native`` depends on: the CPU model and its instruction-set flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _is_built(name: str) -> bool:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return (Path(_get_build_directory(name, False)) / f"{name}.so").exists()
    except Exception:  # a private helper of torch's: only the message above depends on it
        return True


@functools.lru_cache(maxsize=None)
def _build():
    """Compile (or load the cached build of) the CPU kernels; ``None`` with a warning on failure."""
    if os.environ.get("RECBOLE_HYDRA_CPU_KERNELS", "1") == "0":
        return None
    try:
        from torch.utils import cpp_extension

        text = "".join((_CSRC / s).read_text() for s in _SOURCES)
        # the checkout's path too: torch rebuilds an extension whose sources moved, so two checkouts
        # sharing one name would rebuild each other's
        key = hashlib.sha1(
            (text + " ".join(_CFLAGS) + _machine() + torch.__version__ + str(_CSRC)).encode()
        ).hexdigest()[:12]
        name = f"recbole_hydra_cpu_{key}"
        if not _is_built(name):
            print(
                "recbole-hydra: compiling its CPU kernels (once per machine, about 30 s)...",
                file=sys.stderr,
                flush=True,
            )
        return cpp_extension.load(
            name,
            [str(_CSRC / s) for s in _SOURCES],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: run on PyTorch ops instead
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"recbole-hydra: CPU kernels unavailable ({reason[:200]}); "
            "using PyTorch ops, which are "
            "slower. Install a C++ compiler and ninja to build them, or set use_kernels: False to "
            "silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def cpu_kernels(tensor: Tensor):
    """The compiled CPU kernels module when kernels are enabled and ``tensor`` is a float32 or
    float64 CPU tensor, or a bfloat16 one under CPU autocast (the kernels' autograd functions
    take it in float32: ``float32_under_autocast``); else (or when they cannot be built)
    ``None``."""
    if not _enabled or tensor.device.type != "cpu":
        return None
    if tensor.dtype not in (torch.float32, torch.float64) and not (
        tensor.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    ):
        return None
    return _build()


#: for the ``forward`` / ``backward`` of a CPU kernel's autograd function: under CPU autocast
#: (RecBole's ``enable_amp``) its floating inputs arrive in float32 and it runs with autocast
#: off, so that the products around it run in bfloat16 while the kernel keeps its float32
#: arithmetic; without autocast they change nothing
float32_under_autocast = torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
backward_under_autocast = torch.amp.custom_bwd(device_type="cpu")
