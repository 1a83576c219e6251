"""Train several models under one RecBole protocol and write one table and one plot.

    python benchmarks/compare.py --dataset ml-100k --models Hydra,SASRec,Mamba4Rec,HSTU --seeds 3 \
        [--time-budget MINUTES] [--set key=value ...] [--out benchmarks/results]

Every (model, seed) runs ``recbole_hydra.quick_start.run`` with the model's own default yaml in a
fresh process (so peak RSS is its own), under the same split and evaluator (leave-one-out, order
TO, full ranking; ``properties/overall.yaml``). ``--time-budget`` caps each run's training wall
clock (training stops between two batches once it is spent, the partial epoch is validated, and
the best checkpoint so far is tested). ``--set`` overrides a config key for every model (e.g.
``--set MAX_ITEM_LIST_LENGTH=200``).

Writes ``<out>/compare-<dataset><tag>.md`` (table: test Recall/NDCG@10/50/200 as mean +- std over
seeds, parameters, seconds per epoch, epochs, wall clock to the best valid score, peak RSS, the
hardware and this command), ``.json`` (every run's raw result and per-epoch history) and ``.png``
(valid NDCG@10 against wall clock, every model on one chart).
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness  # benchmarks/harness.py

REPO = Path(__file__).resolve().parent.parent
METRICS = [f"{m}@{k}" for k in (10, 50, 200) for m in ("recall", "ndcg")]


def worker(spec):
    """One run, in this process; hands its result to ``run_all`` (``harness.emit``)."""
    from recbole_hydra.quick_start import run

    result = run(spec["model"], spec["dataset"], config_dict=spec["config"], saved=True)
    keep = {
        k: result[k] for k in ("best_valid_score", "n_params", "epochs", "history", "model_file")
    }
    keep["test_result"] = dict(result["test_result"])
    keep["best_valid_result"] = dict(result["best_valid_result"])
    keep["peak_rss_mb"] = harness.peak_rss_mb()
    harness.emit(keep)


def run_all(args, overrides):
    """Every (model, seed) in a fresh process, ``args.jobs`` at a time; their results in plan
    order."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="recbole-hydra-compare-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    plan = [(m, s) for m in args.models for s in range(args.seeds)]
    env = {"OMP_NUM_THREADS": args.threads} if args.threads else None

    def one(numbered):
        i, (model, seed) = numbered
        config = {
            "seed": 2020 + seed,
            "show_progress": False,
            "data_path": os.path.abspath(args.data_path),
            **overrides,
        }
        if args.time_budget:
            config["time_budget_s"] = args.time_budget * 60
        spec = {"model": model, "dataset": args.dataset, "config": config}
        log = workdir / "logs" / f"{model}-{seed}.log"
        print(f"[{i}/{len(plan)}] {model} seed {seed} started (log: {log})", flush=True)
        done = harness.run_fresh(
            [os.path.abspath(__file__), "--worker", json.dumps(spec)],
            env=env,
            cwd=workdir,
            stderr_path=log,
        )
        if not done.ok:
            print(f"    {model} seed {seed} failed (exit {done.returncode}); see {log}", flush=True)
            return {"model": model, "seed": seed, "failed": True}
        result = dict(done.result, model=model, seed=seed, total_s=done.wall_s)
        print(
            f"    {model} seed {seed}: {result['epochs']} epochs in {result['total_s']:.0f} s, "
            f"test NDCG@10 {result['test_result']['ndcg@10']:.4f}",
            flush=True,
        )
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return list(pool.map(one, enumerate(plan, 1)))


def _epoch_fraction(entry):
    """1 for a whole epoch; trained batches / batches per epoch for one the time budget cut."""
    return entry["batches"] / entry["batches_per_epoch"] if "batches" in entry else 1.0


def _epoch_s(entry):
    """Seconds of a whole epoch (a cut epoch's seconds extrapolated to all its batches)."""
    return entry["train_s"] / _epoch_fraction(entry)


def summarise(runs, models):
    rows = {}
    for model in models:
        ok = [r for r in runs if r["model"] == model and not r.get("failed")]
        if not ok:
            rows[model] = None
            continue

        def stat(values):
            mean = statistics.fmean(values)
            return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)

        best_wall = []
        for r in ok:
            scored = [h for h in r["history"] if "valid_score" in h]
            best = max(scored, key=lambda h: h["valid_score"]) if scored else None
            best_wall.append(best["wall_s"] if best else float("nan"))
        rows[model] = {
            "n": len(ok),
            "metrics": {m: stat([r["test_result"][m] for r in ok]) for m in METRICS},
            "params": ok[0]["n_params"],
            "s_per_epoch": stat([statistics.fmean(_epoch_s(h) for h in r["history"]) for r in ok]),
            "epochs": stat([sum(_epoch_fraction(h) for h in r["history"]) for r in ok]),
            "wall_to_best": stat(best_wall),
            "total_s": stat([r["total_s"] for r in ok]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        }
    return rows


def time_to_reach(runs, model, target):
    """Mean wall clock at which ``model``'s valid NDCG@10 first reaches ``target`` (None: never)."""
    times = []
    for r in runs:
        if r["model"] != model or r.get("failed"):
            continue
        hit = next(
            (
                h["wall_s"]
                for h in r["history"]
                if h.get("valid_result", {}).get("ndcg@10", -1) >= target
            ),
            None,
        )
        if hit is None:
            return None
        times.append(hit)
    return statistics.fmean(times) if times else None


def write_markdown(path, args, rows, runs, command):
    lines = harness.header(
        f"{args.dataset}: {', '.join(args.models)}",
        command,
        harness.machine(),
        f"Date: {time.strftime('%Y-%m-%d')}; {args.jobs} run(s) at a time, "
        f"{args.threads or 'default'} thread(s) each",
        "Protocol: RecBole leave-one-out (order TO), full ranking over all items, history items "
        "NOT masked (RecBole's sequential full-sort); test metrics of the best-valid-NDCG@10 "
        f"checkpoint; mean +- std over {args.seeds} seed(s); each model's own default yaml.",
    )
    if args.time_budget:
        lines += [
            (
                f"Time budget: {args.time_budget:g} min of training per run; "
                "an epoch that the budget cut counts as the fraction of its batches trained "
                "in `epochs`, and its seconds are extrapolated to the whole epoch in `s/epoch`."
            ),
            "",
        ]
    head = ["model", "params"] + [
        m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in METRICS
    ]
    head += ["s/epoch", "epochs", "wall to best valid (s)", "total wall (s)", "peak RSS (MB)"]
    cells = []
    for model in args.models:
        row = rows[model]
        if row is None:
            cells.append([model, "failed"] + [""] * (len(head) - 2))
            continue
        cells.append(
            [model, f"{row['params']:,}"]
            + [f"{row['metrics'][m][0]:.4f} +- {row['metrics'][m][1]:.4f}" for m in METRICS]
            + [
                f"{row['s_per_epoch'][0]:.1f}",
                f"{row['epochs'][0]:.1f}",
                f"{row['wall_to_best'][0]:.0f}",
                f"{row['total_s'][0]:.0f}",
                f"{row['peak_rss_mb']:.0f}",
            ]
        )
    lines += harness.table(head, cells)
    if rows.get("SASRec"):
        target = statistics.fmean(
            r["best_valid_result"]["ndcg@10"]
            for r in runs
            if r["model"] == "SASRec" and not r.get("failed")
        )
        base = time_to_reach(runs, "SASRec", target)
        lines += ["", f"Wall clock to reach SASRec's best valid NDCG@10 ({target:.4f}):", ""]
        for model in args.models:
            t = time_to_reach(runs, model, target)
            ratio = f" ({t / base:.2f}x SASRec's)" if t is not None and base else ""
            lines.append(
                f"- {model}: " + (f"{t:.0f} s{ratio}" if t is not None else "never reached")
            )
    harness.write_report(path, lines)


def write_plot(path, args, runs):
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, model in enumerate(args.models):
        for r in runs:
            if r["model"] != model or r.get("failed"):
                continue
            pts = [
                (h["wall_s"], h["valid_result"]["ndcg@10"])
                for h in r["history"]
                if "valid_result" in h
            ]
            if pts:
                xs, ys = zip(*pts)
                # markers: a model the budget stopped after one validation is one point
                ax.plot(
                    xs,
                    ys,
                    color=colours[i % len(colours)],
                    alpha=0.8,
                    marker="o",
                    markersize=3,
                    label=model if r["seed"] == 0 else None,
                )
    ax.set_xlabel("training wall clock (s)")
    ax.set_ylabel("valid NDCG@10")
    ax.set_title(f"{args.dataset}: valid NDCG@10 against wall clock")
    ax.grid(alpha=0.3)
    ax.legend()
    harness.save_png(fig, path, dpi=120)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", default="Hydra,SASRec,Mamba4Rec,HSTU")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--time-budget", type=float, default=None, help="minutes of training per run"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every model (repeatable)",
    )
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    parser.add_argument(
        "--workdir", default=None, help="where runs write saved/ and log/ (default: a temp dir)"
    )
    parser.add_argument(
        "--replot",
        metavar="JSON",
        help="rewrite the .md and .png of an earlier run "
        "from its .json (the same runs and command)",
    )
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    harness.pyplot()  # a missing matplotlib stops the command now, not after the runs
    if args.replot:
        stem = Path(args.replot).with_suffix("")
        saved = json.loads(Path(args.replot).read_text())
        args = parser.parse_args(shlex.split(saved["command"])[2:])
        args.models = [m for m in args.models.split(",") if m]
        write_markdown(
            Path(f"{stem}.md"),
            args,
            summarise(saved["runs"], args.models),
            saved["runs"],
            saved["command"],
        )
        write_plot(Path(f"{stem}.png"), args, saved["runs"])
        return print(f"rewrote {stem}.md and .png")
    args.models = [m for m in args.models.split(",") if m]
    overrides = harness.parse_sets(args.set, parser)
    command = harness.command()
    runs = run_all(args, overrides)
    rows = summarise(runs, args.models)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compare-{args.dataset}{args.tag}"
    Path(f"{stem}.json").write_text(json.dumps({"command": command, "runs": runs}, indent=1))
    write_markdown(Path(f"{stem}.md"), args, rows, runs, command)
    write_plot(Path(f"{stem}.png"), args, runs)
    print(Path(f"{stem}.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
