"""Training-step time and peak memory against sequence length, tokens per step held constant.

    python benchmarks/scaling.py [--models Hydra,SASRec,HSTU,Mamba4Rec] \
        [--lengths 64,256,1024,4096,16384] [--tokens 16384] [--timeout 300] [--mem-gb 16]

Every (model, length) point runs in a fresh process: batch = tokens // length sequences of
``length`` real items (ml-1m's 3706 items), each model's default yaml with
``MAX_ITEM_LIST_LENGTH = length`` and its own objective (Hydra/HSTU: generative InfoNCE over every
position; SASRec/Mamba4Rec: last-position CE, their defaults). It times forward + backward +
AdamW step (median of ``--repeats`` after one warm-up) and reads the process's peak RSS. A point
that passes ``--timeout`` seconds or ``--mem-gb`` of address space is reported as out of time /
memory, and longer lengths of that model are skipped. Writes ``benchmarks/results/scaling.json``
(every point, merged with the points of earlier runs, so that ``--models``/``--lengths`` can
rerun a few), ``scaling.md`` and ``scaling.png`` (log-log), both over all points.
"""

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import harness  # benchmarks/harness.py

REPO = Path(__file__).resolve().parent.parent
N_ITEMS = 3706  # ml-1m


def point(model_name, length, tokens, repeats):
    """One measurement in this process, handed to ``run_point`` (``harness.emit``)."""
    warnings.filterwarnings("ignore")
    import torch
    from recbole.config import Config
    from recbole.data.interaction import Interaction

    from recbole_hydra.checkpoint import ItemCountDataset
    from recbole_hydra.config import config_files
    from recbole_hydra.registry import get_model

    torch.manual_seed(0)
    cls = get_model(model_name)
    config = Config(
        model=cls,
        dataset="ml-1m",
        config_file_list=config_files(cls.__name__, "ml-1m"),
        config_dict={"MAX_ITEM_LIST_LENGTH": length, "train_neg_sample_args": None},
    )
    model = cls(config, ItemCountDataset(N_ITEMS))
    model.train()
    batch = max(1, tokens // length)
    seq = torch.randint(1, N_ITEMS, (batch, length))
    inter = {
        model.ITEM_SEQ: seq,
        model.ITEM_SEQ_LEN: torch.full((batch,), length),
        model.POS_ITEM_ID: torch.randint(1, N_ITEMS, (batch,)),
    }
    times = torch.arange(length, dtype=torch.float32).expand(batch, -1) * 3600
    inter.update({"timestamp_list": times, "timestamp": times[:, -1] + 3600})
    inter = Interaction(inter)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        model.calculate_loss(inter).backward()
        optimizer.step()

    step()
    measured = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        measured.append(time.perf_counter() - t0)
    harness.emit(
        {
            "step_s": statistics.median(measured),
            "batch": batch,
            "peak_rss_mb": harness.peak_rss_mb(),
            "params": sum(p.numel() for p in model.parameters()),
        }
    )


def run_point(model, length, args):
    done = harness.run_fresh(
        [Path(__file__).resolve(), "--point", model, length, args.tokens, args.repeats],
        env={"OMP_NUM_THREADS": args.threads} if args.threads else None,
        timeout=args.timeout,
        mem_limit_bytes=int(args.mem_gb * 2**30),
    )
    if done.timed_out:
        return {"status": f"out of time (> {args.timeout} s)"}
    if not done.ok:
        err = done.stderr.lower()
        if "memory" in err or "alloc" in err or done.returncode < 0:
            return {"status": f"out of memory (> {args.mem_gb} GB)"}
        return {"status": f"failed: {done.error()[:120]}"}
    return {"status": "ok", **done.result}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--point", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--models", default="Hydra,SASRec,HSTU,Mamba4Rec")
    parser.add_argument("--lengths", default="64,256,1024,4096,16384")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--mem-gb", type=float, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.point:
        model, length, tokens, repeats = args.point
        return point(model, int(length), int(tokens), int(repeats))
    harness.pyplot()  # a missing matplotlib stops the command now, not after the timings
    models = args.models.split(",")
    lengths = [int(n) for n in args.lengths.split(",")]
    out = Path(args.out)
    json_path = out / "scaling.json"
    earlier = json.loads(json_path.read_text()) if json_path.exists() else []
    results = {}
    for model in models:
        for length in lengths:
            if results.get((model, "stopped")):
                results[(model, length)] = {"status": "skipped (a shorter length failed)"}
                continue
            r = run_point(model, length, args)
            results[(model, length)] = r
            if r["status"] != "ok":
                results[(model, "stopped")] = True
            shown = (
                f"{r['step_s'] * 1000:.0f} ms/step, {r['peak_rss_mb']:.0f} MB"
                if r["status"] == "ok"
                else r["status"]
            )
            print(f"{model} L={length}: {shown}", flush=True)
    # Merge with the points of earlier runs (``--models``/``--lengths`` rerun only some points).
    points = {(e["model"], e["length"]): e for e in earlier}
    for (model, length), r in results.items():
        if length != "stopped":
            points[(model, length)] = {"model": model, "length": length, **r}
    out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(list(points.values()), indent=1))
    models = list(dict.fromkeys([m for m, _ in points] + models))
    lengths = sorted({n for _, n in points})
    results = {(m, n): points.get((m, n), {"status": "not run"}) for m in models for n in lengths}
    cells = [
        [model]
        + [
            f"{r['step_s'] * 1000:.0f} ms, {r['peak_rss_mb']:.0f} MB"
            if r["status"] == "ok"
            else r["status"]
            for r in (results[(model, n)] for n in lengths)
        ]
        for model in models
    ]
    md = harness.header(
        "Scaling: training step against sequence length",
        harness.command(),
        harness.machine(threads=f"OMP_NUM_THREADS={args.threads or 'default'}"),
        f"{args.tokens} tokens per step (batch = tokens / length), {N_ITEMS} items, each model's "
        "default yaml and objective; forward + backward + AdamW step, median of "
        f"{args.repeats}; peak RSS of the whole process (the imports included).",
    )
    md += harness.table(["model"] + [f"L={n}" for n in lengths], cells)
    harness.write_report(out / "scaling.md", md)
    plt = harness.pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for model in models:
        ok = [(n, results[(model, n)]) for n in lengths if results[(model, n)]["status"] == "ok"]
        if ok:
            ax_t.plot(
                [n for n, _ in ok], [r["step_s"] * 1000 for _, r in ok], marker="o", label=model
            )
            ax_m.plot(
                [n for n, _ in ok], [r["peak_rss_mb"] for _, r in ok], marker="o", label=model
            )
    for ax, label in ((ax_t, "training step (ms)"), (ax_m, "peak RSS (MB)")):
        harness.log_log(ax, f"sequence length ({args.tokens} tokens per step)", label, xbase=2)
    harness.save_png(fig, out / "scaling.png", dpi=120)
    print((out / "scaling.md").read_text())


if __name__ == "__main__":
    main()
