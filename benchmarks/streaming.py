"""Per-event latency: Hydra's O(1) state update against full recomputation.

    python benchmarks/streaming.py [--lengths 50,200,1000,10000] [--repeats 50] [--threads 1]

For each history length n, one user: the time of one new event + its top-10 (Hydra's
``StreamingRecommender.update`` + ``topk``), against recomputing the whole history (Hydra's
forward, and RecBole's SASRec with ``MAX_ITEM_LIST_LENGTH = n``) + top-10. Default model
configurations (``properties/Hydra.yaml``; SASRec with RecBole's defaults), ml-100k's item count,
random weights (latency does not depend on training), one thread unless ``--threads``. Writes
``benchmarks/results/streaming.md`` and ``.png``.
"""

import argparse
import statistics
import time
import warnings
from pathlib import Path

import harness  # benchmarks/harness.py
import torch
from recbole.config import Config
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_hydra.checkpoint import ItemCountDataset
from recbole_hydra.config import PROPERTIES
from recbole_hydra.model.hydra import Hydra
from recbole_hydra.serving import StreamingRecommender

REPO = Path(__file__).resolve().parent.parent
warnings.filterwarnings("ignore")

N_ITEMS = 1683  # ml-100k


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def hydra_model():
    config = Config(
        model=Hydra,
        dataset="ml-100k",
        config_file_list=[
            str(PROPERTIES / "overall.yaml"),
            str(PROPERTIES / "Hydra.yaml"),
        ],
    )
    return Hydra(config, ItemCountDataset(N_ITEMS)).eval()


def sasrec_model(length):
    config = Config(
        model="SASRec",
        dataset="ml-100k",
        config_dict={"MAX_ITEM_LIST_LENGTH": length, "train_neg_sample_args": None},
    )
    return SASRec(config, ItemCountDataset(N_ITEMS)).eval()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", default="50,200,1000,10000")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    harness.pyplot()  # a missing matplotlib stops the command now, not after the timings
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lengths = [int(n) for n in args.lengths.split(",")]
    hydra = hydra_model()
    streamer = StreamingRecommender(hydra)
    rows = []
    with torch.no_grad():
        for n in lengths:
            history = torch.randint(1, N_ITEMS, (n,))
            state = streamer.init_state(history)
            update_ms = timed(
                lambda state=state: streamer.topk(streamer.update(state, 5), 10), args.repeats
            )
            t0 = time.perf_counter()
            streamer.init_state(history)
            init_ms = (time.perf_counter() - t0) * 1000
            seq, lens = history[None], torch.tensor([n])
            reps = max(3, args.repeats // (1 + n // 500))
            hydra_full_ms = timed(
                lambda seq=seq, lens=lens: hydra.full_sort_predict(
                    {hydra.ITEM_SEQ: seq, hydra.ITEM_SEQ_LEN: lens}
                ).topk(10),
                reps,
            )
            sasrec = sasrec_model(n)
            sasrec_full_ms = timed(
                lambda seq=seq, lens=lens, sasrec=sasrec: sasrec.full_sort_predict(
                    {sasrec.ITEM_SEQ: seq, sasrec.ITEM_SEQ_LEN: lens}
                ).topk(10),
                reps,
            )
            rows.append((n, update_ms, init_ms, hydra_full_ms, sasrec_full_ms))
            print(
                f"n={n}: update+top10 {update_ms:.2f} ms, init {init_ms:.1f} ms, "
                f"Hydra full {hydra_full_ms:.1f} ms, SASRec full {sasrec_full_ms:.1f} ms",
                flush=True,
            )
    out = Path(args.out)
    md = harness.header(
        "Streaming: per-event latency (one user)",
        harness.command(),
        harness.machine(threads=args.threads),
        "Models: properties/Hydra.yaml defaults; RecBole SASRec defaults with "
        f"MAX_ITEM_LIST_LENGTH = n; {N_ITEMS} items (ml-100k); median of repeats.",
    )
    md += harness.table(
        [
            "history n",
            "Hydra update + top-10 (ms)",
            "Hydra state init, one pass (ms)",
            "Hydra full recompute + top-10 (ms)",
            "SASRec full recompute + top-10 (ms)",
            "events/s (update)",
        ],
        [
            [n, f"{upd:.2f}", f"{init:.1f}", f"{hf:.1f}", f"{sf:.1f}", f"{1000 / upd:.0f}"]
            for n, upd, init, hf, sf in rows
        ],
    )
    harness.write_report(out / "streaming.md", md)
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r[0] for r in rows]
    for idx, label in (
        (1, "Hydra: state update + top-10"),
        (3, "Hydra: full recompute"),
        (4, "SASRec: full recompute"),
    ):
        ax.plot(ns, [r[idx] for r in rows], marker="o", label=label)
    harness.log_log(ax, "history length (events)", "latency per new event (ms)")
    harness.save_png(fig, out / "streaming.png", dpi=120)
    print((out / "streaming.md").read_text())


if __name__ == "__main__":
    main()
