"""Hydra with and without the compiled CPU kernels, in one process, on the same batches.

    python benchmarks/kernels_ab.py [--dataset ml-1m] [--length 50] [--steps 30] [--threads 2]

Loads RecBole's data and Hydra once (the everyday benchmark's objective and batches), then
alternates the kernels switch (``recbole_hydra.layers.kernels.use``) on and off step by step
over the same training batches, and batch by batch over one evaluation batch
(``full_sort_predict`` of ``eval_batch_size`` users): alternating puts both variants under the
same machine load. Prints the median training step (forward + backward + AdamW) and evaluation
batch in ms for each.
"""

import argparse
import statistics
import time
import warnings

import everyday  # benchmarks/everyday.py: same data set-up and objective
import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data_path", default="dataset")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    _, model, _, train, valid = everyday._setup("Hydra", args.dataset, args.length, args.data_path)
    from recbole_hydra.layers import kernels  # importable once everyday has set the path up

    batches = [b for b, _ in zip(train, range(args.steps))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()

    model.train()
    times = {True: [], False: []}
    for flag in times:  # warm-up (and the kernels' build, once per machine)
        with kernels.use(flag):
            step(batches[0])
    for batch in batches[1:]:
        for flag in times:
            with kernels.use(flag):
                t0 = time.perf_counter()
                step(batch)
                times[flag].append(time.perf_counter() - t0)
    print(
        f"{args.dataset} L={args.length} train step ms: "
        f"kernels {statistics.median(times[True]) * 1e3:.1f}, "
        f"PyTorch ops {statistics.median(times[False]) * 1e3:.1f}"
    )
    model.eval()
    eval_batch = next(iter(valid))[0]
    times = {True: [], False: []}
    with torch.no_grad():
        for _ in range(6):
            for flag in times:
                with kernels.use(flag):
                    t0 = time.perf_counter()
                    model.full_sort_predict(eval_batch)
                    times[flag].append(time.perf_counter() - t0)
    print(
        f"{args.dataset} L={args.length} eval batch ms: "
        f"kernels {statistics.median(times[True][1:]) * 1e3:.1f}, "
        f"PyTorch ops {statistics.median(times[False][1:]) * 1e3:.1f}"
    )


if __name__ == "__main__":
    main()
