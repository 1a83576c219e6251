"""Hydra with ID embeddings vs Hydra with an item LLM, overall and on cold items.

    python benchmarks/item_llm.py train --variant id --time-budget 600 [--set key=value ...]
    python benchmarks/item_llm.py train --variant llm-frozen --time-budget 600
    python benchmarks/item_llm.py cold saved/Hydra-A.pth saved/Hydra-B.pth [--max-count 5]

``train`` runs ``recbole_hydra.quick_start.run`` on ml-100k with Hydra's defaults
(``properties/Hydra.yaml``), plus ``properties/HydraLLM-ml-100k.yaml`` for the ``llm-*`` variants
(``llm-frozen``: the LLM runs once, the projection trains; ``llm-lora``: LoRA adapters), capped by
``--time-budget`` seconds of training (training stops once it is spent; the best checkpoint is
tested), and appends the run (test result, per-epoch seconds, checkpoint) to ``--out`` (JSON lines).

``cold`` loads each checkpoint with ``recbole_hydra.checkpoint.load_data_and_model`` and scores the
test users (RecBole's full ranking, padding item excluded, history not masked, as the trainer
does) split by how often their test item occurs in the training part of the data (every
interaction but each user's last two, the leave-one-out valid and test items): test Recall@10 and
NDCG@10 for all users (equal to RecBole's own test result), for users whose target was seen fewer
than ``--max-count`` times in training ("cold"; repeat the flag for several thresholds) and the
rest.
"""

import argparse
import json
import time
from pathlib import Path

import harness  # benchmarks/harness.py
import numpy as np
import torch

from recbole_hydra.checkpoint import load_data_and_model
from recbole_hydra.config import PROPERTIES
from recbole_hydra.quick_start import run

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "id": {},
    "llm-frozen": {"llm_finetune": "frozen"},
    "llm-lora": {"llm_finetune": "lora"},
}


def train(args):
    config = {
        "show_progress": False,
        "seed": args.seed,
        "time_budget_s": args.time_budget,
        **VARIANTS[args.variant],
    }
    config.update(args.overrides)
    files = [str(PROPERTIES / "HydraLLM-ml-100k.yaml")] if args.variant != "id" else None
    t0 = time.perf_counter()
    result = run("Hydra", "ml-100k", config_file_list=files, config_dict=config)
    record = {
        "variant": args.variant,
        "config": config,
        "wall_s": time.perf_counter() - t0,
        "epochs": result["epochs"],
        "n_params": result["n_params"],
        "model_file": result["model_file"],
        "train_s_per_epoch": [h["train_s"] for h in result["history"]],
        "valid_ndcg10": [h.get("valid_score") for h in result["history"]],
        "best_valid": dict(result["best_valid_result"]),
        "test": dict(result["test_result"]),
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


def train_counts(dataset):
    """Occurrences of each internal item id in the training interactions (all but each user's
    last two, after RecBole's stable sort by user and time)."""
    import pandas as pd

    path = Path(dataset.dataset_path) / f"{dataset.dataset_name}.inter"
    frame = pd.read_csv(path, sep="\t", dtype=str)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    uid, iid, time_field = dataset.uid_field, dataset.iid_field, dataset.time_field
    frame[time_field] = frame[time_field].astype(float)
    frame = frame.sort_values([uid, time_field], kind="stable")
    rank_from_end = frame.groupby(uid, sort=False).cumcount(ascending=False)
    train_items = frame.loc[rank_from_end >= 2, iid]
    counts = np.zeros(dataset.item_num, dtype=np.int64)
    ids = dataset.token2id(iid, train_items.tolist())
    np.add.at(counts, ids, 1)
    return counts


@torch.no_grad()
def cold(args):
    rows = []
    for model_file in args.checkpoints:
        config, model, dataset, _, _, test_data = load_data_and_model(model_file)
        counts = train_counts(dataset)
        model.eval()
        ranks, targets = [], []
        for batch in test_data:
            interaction = batch[0].to(model.device)
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -torch.inf
            target = interaction[model.ITEM_ID]
            target_score = scores.gather(1, target.unsqueeze(1))
            ranks.append((scores > target_score).sum(1).cpu())
            targets.append(target.cpu())
        rank, target = torch.cat(ranks).numpy(), torch.cat(targets).numpy()
        seen = counts[target]
        row = {
            "model_file": model_file,
            "item_model": config["item_model"] or "embedding",
            "llm_finetune": config["llm_finetune"] if config["item_model"] == "llm" else None,
        }
        groups = [("all", np.ones(len(seen), dtype=bool))]
        for k in args.max_count or [5]:
            groups += [(f"seen<{k}", seen < k), (f"seen>={k}", seen >= k)]
        for name, mask in groups:
            r = rank[mask]
            row[name] = {
                "users": int(mask.sum()),
                "recall@10": float((r < 10).mean()) if len(r) else float("nan"),
                "ndcg@10": float((np.where(r < 10, 1 / np.log2(r + 2), 0)).mean())
                if len(r)
                else float("nan"),
            }
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--variant", choices=list(VARIANTS), required=True)
    p.add_argument("--time-budget", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "item_llm-runs.jsonl"))
    p.set_defaults(func=train)
    c = sub.add_parser("cold")
    c.add_argument("checkpoints", nargs="+")
    c.add_argument(
        "--max-count",
        type=int,
        action="append",
        help="cold: seen fewer than this many times in training (repeatable; default 5)",
    )
    c.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "item_llm-cold.jsonl"))
    c.set_defaults(func=cold)
    args = parser.parse_args()
    if args.command == "train":
        args.overrides = harness.parse_sets(args.set, p)
    args.func(args)


if __name__ == "__main__":
    main()
