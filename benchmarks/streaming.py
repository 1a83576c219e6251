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
import sys
import time
import warnings
from pathlib import Path

import torch

from hardware import cpu_name  # benchmarks/hardware.py

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")

from recbole.config import Config  # noqa: E402
from recbole.model.sequential_recommender.sasrec import SASRec  # noqa: E402

from recbole_hydra.model.hydra import Hydra  # noqa: E402
from recbole_hydra.serving import StreamingRecommender, _ItemCount  # noqa: E402

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
    config = Config(model=Hydra, dataset="ml-100k", config_file_list=[
        str(REPO / "properties" / "overall.yaml"), str(REPO / "properties" / "Hydra.yaml")])
    return Hydra(config, _ItemCount(N_ITEMS)).eval()


def sasrec_model(length):
    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "MAX_ITEM_LIST_LENGTH": length, "train_neg_sample_args": None})
    return SASRec(config, _ItemCount(N_ITEMS)).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="50,200,1000,10000")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
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
            update_ms = timed(lambda: streamer.topk(streamer.update(state, 5), 10), args.repeats)
            t0 = time.perf_counter()
            streamer.init_state(history)
            init_ms = (time.perf_counter() - t0) * 1000
            seq, lens = history[None], torch.tensor([n])
            reps = max(3, args.repeats // (1 + n // 500))
            hydra_full_ms = timed(lambda: hydra.full_sort_predict(
                {hydra.ITEM_SEQ: seq, hydra.ITEM_SEQ_LEN: lens}).topk(10), reps)
            sasrec = sasrec_model(n)
            sasrec_full_ms = timed(lambda: sasrec.full_sort_predict(
                {sasrec.ITEM_SEQ: seq, sasrec.ITEM_SEQ_LEN: lens}).topk(10), reps)
            rows.append((n, update_ms, init_ms, hydra_full_ms, sasrec_full_ms))
            print(f"n={n}: update+top10 {update_ms:.2f} ms, init {init_ms:.1f} ms, "
                  f"Hydra full {hydra_full_ms:.1f} ms, SASRec full {sasrec_full_ms:.1f} ms", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Streaming: per-event latency (one user)", "",
          f"Command: `python benchmarks/streaming.py {' '.join(sys.argv[1:])}`  ",
          f"Hardware: {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}  ",
          "Models: properties/Hydra.yaml defaults; RecBole SASRec defaults with "
          "MAX_ITEM_LIST_LENGTH = n; 1683 items (ml-100k); median of repeats.", "",
          "| history n | Hydra update + top-10 (ms) | Hydra state init, one pass (ms) | "
          "Hydra full recompute + top-10 (ms) | SASRec full recompute + top-10 (ms) | events/s (update) |",
          "|---|---|---|---|---|---|"]
    for n, upd, init, hf, sf in rows:
        md.append(f"| {n} | {upd:.2f} | {init:.1f} | {hf:.1f} | {sf:.1f} | {1000 / upd:.0f} |")
    (out / "streaming.md").write_text("\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r[0] for r in rows]
    for idx, label in ((1, "Hydra: state update + top-10"), (3, "Hydra: full recompute"), (4, "SASRec: full recompute")):
        ax.plot(ns, [r[idx] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("history length (events)")
    ax.set_ylabel("latency per new event (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "streaming.png", dpi=120)
    print((out / "streaming.md").read_text())


if __name__ == "__main__":
    main()
