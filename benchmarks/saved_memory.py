"""What each model keeps for backward in one training step, by the source line that keeps it.

    python benchmarks/saved_memory.py [--dataset ml-1m] [--length 200] \
        [--models Hydra,HSTU,SASRecGen,Hydra-ckpt] [--rows 12] [--data_path dataset]

One batch of the everyday benchmark (same data, objective and batch size as ``everyday.py``):
``model.calculate_loss(batch)`` under ``torch.autograd.graph.saved_tensors_hooks``, counting each
storage autograd keeps once (views of one storage share it; parameters are left out) and
charging it to the innermost recbole_hydra / recbole source line on the stack when it was first
kept. These tensors are what a training step's memory holds between forward and backward, the
part of the peak that depends on the model (the process peak adds the data, the imports and
backward's transient gradients). Writes benchmarks/results/saved-memory-<dataset>-<length>.md.
"""

import argparse
import collections
import traceback
import warnings

import everyday  # benchmarks/everyday.py: same data set-up and objective
import harness  # benchmarks/harness.py
import torch


def saved_by_line(model, batch):
    """``{source line: bytes}`` of the storages autograd keeps for
    ``model.calculate_loss(batch)``."""
    owners = {p.untyped_storage().data_ptr() for p in model.parameters()}
    by_line = collections.Counter()

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in owners or storage.nbytes() == 0:
            return tensor
        owners.add(storage.data_ptr())
        line = "?"
        for frame in reversed(traceback.extract_stack()[:-1]):
            if "recbole_hydra" in frame.filename or "/recbole/" in frame.filename:
                line = f"`{frame.filename.split('/')[-1]}:{frame.lineno}` {frame.line.strip()[:90]}"
                break
        by_line[line] += storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.calculate_loss(batch)
    return by_line


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--models", default="Hydra,HSTU,SASRecGen,Hydra-ckpt")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--data_path", default="dataset")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sections, totals = [], []
    for name in args.models.split(","):
        torch.manual_seed(0)
        _, model, _, train, _ = everyday._setup(name, args.dataset, args.length, args.data_path)
        batch = next(iter(train))
        by_line = saved_by_line(model, batch)
        total = sum(by_line.values()) / 2**20
        tokens = batch[model.ITEM_SEQ].numel()
        totals.append([name, f"{tokens:,}", f"{total:.1f}", f"{total * 2**20 / tokens / 1024:.1f}"])
        sections += [f"## {name}", ""]
        sections += harness.table(
            ["MB", "kept by"],
            [[f"{b / 2**20:.1f}", line] for line, b in by_line.most_common(args.rows)],
            align="rl",
        )
        sections.append("")
        print(f"{name}: {total:.1f} MB kept for backward", flush=True)
    out = everyday.RESULTS / f"saved-memory-{args.dataset}-{args.length}.md"
    harness.write_report(
        out,
        [
            *harness.header(
                f"Kept for backward: {args.dataset}, length {args.length}, one training batch",
                harness.command(),
                harness.machine(),
                "Storages autograd keeps between forward and backward "
                "(each once; parameters excluded), "
                "by the source line that first kept them (see the script's docstring).",
            ),
            *harness.table(
                ["model", "batch tokens (padded)", "MB kept", "KB per token"], totals, align="lrrr"
            ),
            "",
            *sections,
        ],
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
