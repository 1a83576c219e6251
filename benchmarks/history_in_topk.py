"""How many of a model's unmasked top-k are items the user has already read (test users).

    python benchmarks/history_in_topk.py CHECKPOINT [CHECKPOINT ...] [--k 10]

For each checkpoint: its test users' full ranking as RecBole's protocol scores it (nothing
masked), the mean count of items of the user's input sequence among the top k, and the median
rank of the test target. On data without repeats (MovieLens) each such item is a miss that the
masked protocol (``mask_history_items: True``) would not count. Prints one markdown table.
"""

import argparse
import statistics
import sys

import torch

from recbole_hydra.checkpoint import load_data_and_model


def history_in_topk(model_file, k):
    config, model, _, _, _, test_data = load_data_and_model(model_file)
    model.eval()
    in_top, ranks = [], []
    with torch.no_grad():
        for interaction, *_ in test_data:
            interaction = interaction.to(model.device)
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -torch.inf  # the padding item, as RecBole's evaluator
            top = scores.topk(k, dim=1).indices
            sequences = interaction[model.ITEM_SEQ]
            for seq, row in zip(sequences.tolist(), top.tolist()):
                seen = {item for item in seq if item}
                in_top.append(sum(item in seen for item in row))
            target = scores.gather(1, interaction[model.ITEM_ID][:, None])
            ranks += ((scores > target).sum(1) + 1).tolist()
    return config["model"], statistics.mean(in_top), statistics.median(ranks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"| checkpoint | model | history items in the top {args.k} | median target rank |")
    print("|---|---|---:|---:|")
    for path in args.checkpoints:
        model, count, rank = history_in_topk(path, args.k)
        print(f"| {path} | {model} | {count:.2f} | {rank:g} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
