"""Optional CUDA kernels of mamba-ssm and causal-conv1d.

Nothing here imports those packages at module import: ``load(name)`` tries once, on first use
(only ever for CUDA tensors), and returns ``None`` when the package is missing or fails to load,
in which case the callers use their PyTorch path.
"""

import functools
import importlib
from typing import Callable, Optional

from torch import Tensor

__all__ = ["load", "usable"]

_WHERE = {
    "mamba_chunk_scan_combined": "mamba_ssm.ops.triton.ssd_combined",
    "selective_state_update": "mamba_ssm.ops.triton.selective_state_update",
    "causal_conv1d_fn": "causal_conv1d",
    "causal_conv1d_update": "causal_conv1d",
}


@functools.lru_cache(maxsize=None)
def load(name: str) -> Optional[Callable]:
    """The kernel ``name`` (one of ``_WHERE``), or ``None`` if its package cannot be imported."""
    try:
        return getattr(importlib.import_module(_WHERE[name]), name)
    except Exception:  # ImportError, or an extension built for another torch/CUDA
        return None


def usable(name: str, enabled: bool, tensor: Tensor) -> Optional[Callable]:
    """The kernel when ``enabled``, ``tensor`` is on CUDA and the kernel loads; else ``None``."""
    if not enabled or not tensor.is_cuda:
        return None
    return load(name)
