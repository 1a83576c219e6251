"""Hydra's training steps under CPU bf16 autocast (RecBole's ``enable_amp``), with the CPU kernels
and without them, against float32 with them: paired, rotated rounds of the same 10 ml-1m batches
at length 200 in one process, 2 threads.

Without kernels is how bf16 autocast ran before the conv and gated-norm kernels took its
bfloat16 products in float32 (``kernels.float32_under_autocast``): every kernel stepped aside
for its PyTorch ops. Run: ``python benchmarks/autocast_kernels.py`` (needs ``dataset/ml-1m``;
``python -m recbole_hydra.data.fetch ml-1m --data_path dataset``).
"""

import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import _build, rotated  # noqa: E402  (benchmarks/frontier.py)

from recbole_hydra.layers import kernels  # noqa: E402

DATA = str(Path(__file__).resolve().parent.parent / "dataset")
CASES = {
    "fp32 kernels": (False, True),
    "bf16 kernels": (True, True),
    "bf16 no kernels": (True, False),
}


def main(rounds=5, steps=10, data_path=DATA):
    torch.set_num_threads(2)
    kernels.cpu_kernels(torch.zeros(1))  # built before any clock runs
    config = {"MAX_ITEM_LIST_LENGTH": 200, "data_path": data_path}
    _, trainer, train, _ = _build("Hydra", "ml-1m", config)
    batches = list(itertools.islice(train, steps))
    trainer._train_epoch(batches[:2], 0, show_progress=False)  # warm-up
    seconds = {name: [] for name in CASES}
    for r in range(rounds):
        for name in rotated(list(CASES), r):
            trainer.enable_amp, use_kernels = CASES[name]
            with kernels.use(use_kernels):
                t0 = time.perf_counter()
                trainer._train_epoch(batches, r, show_progress=False)
            seconds[name].append(time.perf_counter() - t0)
        print(r, {k: round(v[-1], 2) for k, v in seconds.items()}, flush=True)
    base = seconds["fp32 kernels"]
    print(f"| case | median s ({steps} steps) | median ratio to fp32 |\n|---|---:|---:|")
    for name, times in seconds.items():
        ratio = statistics.median(a / b for a, b in zip(times, base))
        print(f"| {name} | {statistics.median(times):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
