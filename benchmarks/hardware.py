"""What every benchmark writes next to its figures: the machine they came from."""

import os
import platform


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s ``model name``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    """``<cpu>, <n> cores, <RAM> GiB RAM, torch <version>, Python <version>`` in one line."""
    import torch

    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
    except (ValueError, OSError, AttributeError):
        mem = ""
    return (f"{cpu_name()}, {os.cpu_count()} cores, {mem}torch {torch.__version__}, "
            f"Python {platform.python_version()}")
