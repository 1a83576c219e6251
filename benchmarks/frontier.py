"""The cost frontier: what each configuration's quality costs in training and evaluation time.

    python benchmarks/leaderboard.py --suite frontier --dataset ml-100k --length 200 --seeds 1
    python benchmarks/frontier.py --time Hydra,HSTU,chunk-25 --dataset ml-1m --length 200 \
        [--rounds 5]
    python benchmarks/frontier.py --memory HSTU,Hydra --dataset ml-1m --length 200 [--steps 4]
    python benchmarks/frontier.py --dataset ml-100k --length 200       # the report only

Quality comes from the leaderboard harness: every stored run of the ``leaderboard``,
``ablations`` and ``frontier`` suites at this dataset and length (``leaderboard.py --suite
frontier`` trains the ``FRONTIER`` rows: Hydra made cheaper one way at a time). A row's point is
its mean test NDCG@10 over its seeds, masked and unmasked.

Cost comes from paired timings (``--time``): the named rows, each built with the config its
leaderboard run trains with, all in ONE fresh process on the same threads, then ``--rounds``
rounds of one training epoch of each (RecBole's ``_train_epoch``, data loading included) and one
full-ranking validation of each, the order rotated every round so that no row always runs first.
Each row's figure is the median over rounds; a ratio between two rows is the median of their
per-round ratios, which only rows of the same ``--time`` call have. Calls are stored in
``benchmarks/results/frontier/<dataset>-<length>-times.json`` (appended), and the report,
``benchmarks/results/cost-frontier-<dataset>-<length>.md/.png``, is rewritten after each call. Rows
without a paired timing are plotted at their training runs' median s/epoch, hollow: those runs
were not paired and may have shared the cores.

Training memory comes from ``--memory``: each named row in a fresh process of its own, its data
and model built and a few training batches drawn, then the RSS those batches' training steps add
at their peak (``harness.peak_rss_mb`` minus the RSS before them): the activations, gradients and
optimizer state, without the dataset and the interpreter, which every row shares and which made
the whole-process peak a poor judge of a model's memory. The process runs with glibc's mmap
threshold fixed (``MALLOC_ENV``) so that a freed activation leaves the RSS at once. Calls are
stored in ``benchmarks/results/frontier/<dataset>-<length>-memory.json``.

Rows that differ only in ``chunk_size``, ``layer_checkpointing`` or ``checkpoint_slices`` compute
the same function (the SSD's chunk length and recomputing each layer in backward, whole or in
slices of sequences, trade speed and memory, not results): they need a timing, not a training
run, and take their base row's quality.
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import harness  # benchmarks/harness.py
import leaderboard  # benchmarks/leaderboard.py

REPO = Path(__file__).resolve().parent.parent
SUITES = ("leaderboard", "ablations", "frontier")  # where quality is read, first name wins
#: timing-only rows: name -> (the row whose quality they share, the speed-only keys they change)
SPEED_ONLY = {
    **{f"chunk-{c}": ("Hydra", {"chunk_size": c}) for c in (16, 25, 32, 100)},
    **{f"layers-1-chunk-{c}": ("layers-1", {"chunk_size": c}) for c in (25, 32)},
    # each layer recomputed for the whole batch at once, and in 4 slices of sequences
    **{
        f"{base}-ckpt": (base, {"layer_checkpointing": True, "checkpoint_slices": 1})
        for base in ("Hydra", "shared-bc")
    },
    **{
        f"{base}-ckpt-4": (base, {"layer_checkpointing": True, "checkpoint_slices": 4})
        for base in ("Hydra", "shared-bc", "one-mamba2")
    },
}
#: timing-only rows whose arithmetic differs from their base row's, so with no quality of theirs:
#: bfloat16 autocast (RecBole's enable_amp), the products in bfloat16, the kernels in float32
BF16 = {
    "HSTU-bf16": ("HSTU", {"enable_amp": True}),
    "bf16": ("Hydra", {"enable_amp": True}),
    "shared-bc-bf16": ("shared-bc", {"enable_amp": True}),
}
#: glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), and blocks
#: under the threshold come from the heap, which keeps freed memory resident: a peak would then
#: count the allocator's leftovers. A fixed threshold gives every tensor above it a mapping of
#: its own, returned to the system when the tensor is freed.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 65536}


def all_rows(args):
    """Every row of every suite as name -> (model, config, tuned keys), first suite first, and
    the speed-only rows on top of their base row."""
    rows = {}
    for suite in SUITES:
        suite_args = argparse.Namespace(**{**vars(args), "suite": suite})
        for name, row in leaderboard.suite_rows(suite_args).items():
            rows.setdefault(name, row)
    for name, (base, keys) in {**SPEED_ONLY, **BF16}.items():
        model, config, tuned = rows[base]
        rows[name] = (model, {**config, **keys}, tuned)
    return rows


def _build(model_name, dataset, config_dict):
    """RecBole's data, the model and its trainer for one row, in this process."""
    from recbole.data import data_preparation

    from recbole_hydra.config import make_config
    from recbole_hydra.registry import build_model, create_dataset, get_trainer

    config = make_config(model_name, dataset, config_dict=config_dict)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = build_model(config, train._dataset)
    return model, get_trainer(config)(config, model), train, valid


def rotated(names, r):
    """``names`` started at position ``r`` (mod its length): round r's order, so that each name
    comes first in turn and none always runs after the same neighbour."""
    k = r % len(names)
    return names[k:] + names[:k]


def time_worker(spec):
    """The paired rounds of one ``--time`` call, in this process."""
    import torch

    from recbole_hydra.layers import kernels

    kernels.cpu_kernels(torch.zeros(1))  # built or loaded once, before any clock runs
    built = {
        name: _build(model, spec["dataset"], config)
        for name, (model, config) in spec["rows"].items()
    }
    names = list(built)
    rounds = []
    for r in range(spec["rounds"]):
        order = rotated(names, r)
        timed = {}
        for name in order:
            model, trainer, train, valid = built[name]
            t0 = time.perf_counter()
            trainer._train_epoch(train, r, show_progress=False)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            trainer.evaluate(valid, load_best_model=False, show_progress=False)
            timed[name] = {"train_s": train_s, "eval_s": time.perf_counter() - t0}
        rounds.append({"order": order, "times": timed})
        print(f"round {r + 1}/{spec['rounds']}: {json.dumps(timed)}", file=sys.stderr, flush=True)
    params = {name: sum(p.numel() for p in built[name][0].parameters()) for name in names}
    harness.emit({"rounds": rounds, "params": params, "threads": torch.get_num_threads()})


def memory_worker(spec):
    """The training memory of one row, in this fresh process (``--memory``)."""
    import saved_memory  # benchmarks/saved_memory.py: it imports torch
    import torch

    from recbole_hydra.layers import kernels

    kernels.cpu_kernels(torch.zeros(1))
    model, trainer, train, _ = _build(spec["model"], spec["dataset"], spec["config"])
    batches = list(itertools.islice(train, spec["steps"]))  # drawn before the RSS is read
    before = harness.rss_mb()
    harness.reset_peak_rss()
    trainer._train_epoch(batches, 0, show_progress=False)
    peak = harness.peak_rss_mb()
    saved = saved_memory.saved_by_line(model, batches[0])  # after the peak: not in it
    harness.emit(
        {
            "saved_mb": sum(saved.values()) / 2**20,
            "saved_by_line": [
                (line.split("`")[1] if "`" in line else line, n / 2**20)
                for line, n in saved.most_common(8)
            ],
            "before_mb": before,
            "peak_mb": peak,
            "train_mb": peak - before,
            "steps": len(batches),
            "params": sum(p.numel() for p in model.parameters()),
        }
    )


def paired(call, name, base, phase="train_s"):
    """Median over the call's rounds of ``name``'s time over ``base``'s, and its range."""
    ratios = [r["times"][name][phase] / r["times"][base][phase] for r in call["rounds"]]
    return statistics.median(ratios), min(ratios), max(ratios)


def pareto(points):
    """Indices of the points no other point beats: none at most as costly and at least as good
    with one of the two strictly. ``points``: (cost, quality) pairs."""
    return [
        i
        for i, (cost, quality) in enumerate(points)
        if not any(
            c <= cost and q >= quality and (c < cost or q > quality)
            for j, (c, q) in enumerate(points)
            if j != i
        )
    ]


def quality(args, timed):
    """Stored runs at this dataset and length, by row (first suite wins), for rows trained at
    ``--length`` (a length row's epochs hold other windows, not another configuration's), and
    each timed speed-only row with its base row's runs."""
    by_row = {}
    for suite in SUITES:
        store = Path(args.out) / suite / f"{args.dataset}-{args.length}"
        runs = {}
        for path in sorted(store.glob("*.json")):
            run = json.loads(path.read_text())
            if run["config"].get("MAX_ITEM_LIST_LENGTH") == args.length:
                runs.setdefault(run["variant"], []).append(run)
        for name, group in runs.items():
            by_row.setdefault(name, group)
    for name, (base, _) in SPEED_ONLY.items():
        if base in by_row and name in timed:
            by_row[name] = by_row[base]
    return by_row


def report_path(args, suffix):
    """``cost-frontier-...``: ``frontier-...`` is the report of leaderboard.py's frontier suite."""
    return Path(args.out) / f"cost-frontier-{args.dataset}-{args.length}.{suffix}"


def times_path(args):
    return Path(args.out) / "frontier" / f"{args.dataset}-{args.length}-times.json"


def memory_path(args):
    return Path(args.out) / "frontier" / f"{args.dataset}-{args.length}-memory.json"


def load_calls(path):
    """The calls stored at ``path``, oldest first (none before the first call)."""
    return json.loads(path.read_text()) if path.exists() else []


def latest_timings(calls):
    """Each row's median train and eval seconds from the latest call that timed it."""
    out = {}
    for k, call in enumerate(calls):
        for name in call["rounds"][0]["times"]:
            rounds = [r["times"][name] for r in call["rounds"]]
            out[name] = {
                "call": k + 1,
                **{
                    phase: statistics.median(t[phase] for t in rounds)
                    for phase in ("train_s", "eval_s")
                },
            }
    return out


def write_report(args):
    calls = load_calls(times_path(args))
    timed = latest_timings(calls)
    memory_calls = load_calls(memory_path(args))
    trained_mb = {n: m["train_mb"] for call in memory_calls for n, m in call["rows"].items()}
    by_row = quality(args, timed)
    lines = harness.header(
        f"Cost frontier: {args.dataset}, length {args.length}",
        harness.command(),
        calls[-1]["hardware"] if calls else harness.machine(),
        "Quality: mean test NDCG@10 over the seeds of each row's stored leaderboard runs "
        "(suites " + ", ".join(SUITES) + "). Cost: medians of paired rounds where a row was timed "
        "(`--time`; ratios only within one call), else its training runs' median s/epoch (not "
        "paired: marked `~`). Frontier: no other row at most as costly and at least as good. "
        "Peak RSS: median over the row's training runs (each its own process: data, training and "
        "evaluation). Training adds: the RSS its training steps add at their peak (`--memory`, "
        "the latest call), without the data and interpreter that every row shares.",
    )
    rows, points = [], {"masked": [], "unmasked": []}
    names = [n for n in by_row if n in timed] + [n for n in by_row if n not in timed]
    for name in names:
        group = by_row[name]
        cost = timed[name]["train_s"] if name in timed else None
        if cost is None:
            cost = statistics.median(r["train_s_per_epoch"] for r in group)
        ndcg = {p: statistics.mean(r[p]["test"]["ndcg@10"] for r in group) for p in points}
        for p in points:
            points[p].append((cost, ndcg[p]))
        rows.append(
            [
                name,
                len(group),
                group[0]["n_params"],
                f"{cost:.1f}" + ("" if name in timed else " ~"),
                f"{timed[name]['eval_s']:.1f}" if name in timed else "-",
                timed[name]["call"] if name in timed else "-",
                f"{statistics.median(r['peak_rss_mb'] for r in group):.0f}",
                f"{trained_mb[name]:.0f}" if name in trained_mb else "-",
                f"{ndcg['masked']:.4f}",
                f"{ndcg['unmasked']:.4f}",
            ]
        )
    on_front = {p: set(pareto(points[p])) for p in points}
    for i, row in enumerate(rows):
        row.append(" ".join(p for p in ("masked", "unmasked") if i in on_front[p]) or "-")
    lines += ["## Points", ""]
    if rows:
        head = ["row", "n", "params", "train s/epoch", "eval s", "paired call", "peak RSS MB"]
        head += ["training adds MB", "masked", "unmasked", "frontier"]
        lines += harness.table(head, rows, "lrrrrrrrrrl") + [""]
    else:
        lines += [
            "No quality yet: no stored leaderboard run at this dataset and length (`python "
            f"benchmarks/leaderboard.py --dataset {args.dataset} --length {args.length}` "
            "trains them); the paired timings below are cost only.",
            "",
        ]
    for k, call in enumerate(calls):
        lines += [f"## Paired call {k + 1}: {len(call['rounds'])} rounds", ""]
        lines += [f"Command: `{call['command']}`  ", f"Hardware: {call['hardware']}", ""]
        names_k = list(call["rounds"][0]["times"])
        base = "HSTU" if "HSTU" in names_k else names_k[0]
        cells = []
        for name in names_k:
            per_round = [r["times"][name] for r in call["rounds"]]
            cell = [name, call["params"][name]]
            for phase in ("train_s", "eval_s"):
                values = [t[phase] for t in per_round]
                median, low, high = paired(call, name, base, phase)
                cell += [
                    f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})",
                    f"{median:.3f} ({low:.3f}-{high:.3f})",
                ]
            cells.append(cell)
        head = ["row", "params", "train s", f"train / {base}", "eval s", f"eval / {base}"]
        lines += ["Median over rounds (range); ratios: median of per-round ratios (range).", ""]
        lines += harness.table(head, cells, "lrrrrr") + [""]
    for k, call in enumerate(memory_calls):
        lines += [f"## Training memory, call {k + 1}", ""]
        lines += [f"Command: `{call['command']}`  ", f"Hardware: {call['hardware']}", ""]
        base = "HSTU" if "HSTU" in call["rows"] else next(iter(call["rows"]))
        cells = [
            [
                name,
                m["params"],
                m["steps"],
                f"{m['before_mb']:.0f}",
                f"{m['peak_mb']:.0f}",
                f"{m['train_mb']:.0f}",
                f"{m['train_mb'] / call['rows'][base]['train_mb']:.2f}",
            ]
            for name, m in call["rows"].items()
        ]
        head = ["row", "params", "steps", "RSS before MB", "peak MB", "training adds MB"]
        lines += harness.table([*head, f"adds / {base}"], cells, "lrrrrrr") + [""]
        saved = {n: m for n, m in call["rows"].items() if "saved_mb" in m}
        if saved:
            lines += [
                "Saved for backward by one training forward (each storage once, parameters left "
                "out), and the source lines (`saved_memory.py`) that saved the most, MiB:",
                "",
            ]
            for name, m in saved.items():
                where = ", ".join(f"`{line}` {mb:.0f}" for line, mb in m["saved_by_line"])
                lines.append(f"- {name}: {m['saved_mb']:.0f} in all; {where}")
            lines.append("")
    harness.write_report(report_path(args, "md"), lines)
    if rows:
        hydra = {n for n in names if by_row[n][0].get("model") == "Hydra"}
        plot(names, points, on_front, timed, hydra, args)


def plot(names, points, on_front, timed, hydra, args):
    """Quality against training seconds per epoch, both protocols: Hydra's rows blue, the
    baselines red, the frontier joined by a grey line."""
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, protocol in zip(axes, ("masked", "unmasked")):
        xy = points[protocol]
        front = sorted(on_front[protocol], key=lambda i: xy[i][0])
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-", color="0.6", zorder=1)
        for i, name in enumerate(names):
            colour = "C0" if name in hydra else "C3"
            face = colour if name in timed else "none"
            ax.scatter(*xy[i], s=30, edgecolors=colour, facecolors=face, zorder=2)
        ax.autoscale_view()
        in_points = ax.transData.transform(xy) * 72 / fig.dpi
        for i, lift in enumerate(label_lifts(in_points, names)):
            leader = {"arrowprops": {"arrowstyle": "-", "lw": 0.4, "color": "0.6"}} if lift else {}
            ax.annotate(
                names[i],
                xy[i],
                fontsize=6,
                xytext=(3, 3 + lift),
                textcoords="offset points",
                **leader,  # a lifted label's line back to its point
            )
        ax.set_xlabel("training s / epoch (filled: paired median; hollow: its runs, not paired)")
        ax.set_ylabel(f"test NDCG@10, {protocol}")
        ax.set_title(f"{args.dataset}, length {args.length}, {protocol} (blue: Hydra)")
    harness.save_png(fig, report_path(args, "png"))


def label_lifts(points, names, char_width=3.3, height=7.0):
    """Label offsets upwards (typographic points) so that no two labels overlap: each label,
    taken bottom to top, rises above every earlier one whose box it would cross. ``points``: the
    points' positions in typographic points; a label's box starts at its point and is
    ``char_width`` per character wide and ``height`` high (a 6-point font)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0]))
    placed, lifts = [], [0.0] * len(points)  # (left, right, bottom) of each placed label
    for i in order:
        x, y = points[i]
        right, lift = x + char_width * len(names[i]), 0.0
        for left, other_right, bottom in sorted(placed, key=lambda box: box[2]):
            if left < right and x < other_right and abs(y + lift - bottom) < height:
                lift = bottom + height - y
        placed.append((x, right, y + lift))
        lifts[i] = lift
    return lifts


def row_specs(args, parser, names_csv, least, why):
    """The named rows as name -> (model, the config their leaderboard run trains with); a
    parser error (exit 2) for an unknown row, or ``why`` for fewer than ``least`` different
    rows."""
    rows = all_rows(args)
    names = [n for n in names_csv.split(",") if n]
    unknown = [n for n in names if n not in rows]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}: one of {', '.join(rows)}")
    if len(set(names)) < least:
        parser.error(why)
    specs = {}
    for name in names:
        model, config, tuned = rows[name]
        specs[name] = (model, {**leaderboard.base_config(args, 2020, config, {}), **tuned})
    return specs


def append_call(path, result):
    """Store one call's ``result`` with the command and hardware, after the earlier calls."""
    path.parent.mkdir(parents=True, exist_ok=True)
    calls = load_calls(path)
    calls.append({**result, "command": harness.command(), "hardware": harness.machine()})
    path.write_text(json.dumps(calls, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--length", type=int, default=200, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--time", help="comma-separated rows to time against each other, paired")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data_path", default=str(REPO / "dataset"))
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results"), help="where results are written"
    )
    parser.add_argument(
        "--tuned", default=str(REPO / "properties" / "leaderboard"), help="tuned configs"
    )
    parser.add_argument(
        "--workdir", default=str(REPO / "saved" / "frontier"), help="the timing calls' logs"
    )
    parser.add_argument(
        "--memory", help="comma-separated rows whose training memory to measure, one process each"
    )
    parser.add_argument("--steps", type=int, default=4, help="training steps per --memory row")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return time_worker(json.loads(args.worker))
    if args.memory_worker:
        return memory_worker(json.loads(args.memory_worker))
    harness.pyplot()
    if args.time:
        if args.rounds < 1:
            parser.error("--rounds must be >= 1")
        specs = row_specs(
            args,
            parser,
            args.time,
            2,
            "--time needs two different rows or more: a ratio needs a pair",
        )
        spec = {"dataset": args.dataset, "rounds": args.rounds, "rows": specs}
        log = Path(args.workdir) / f"{args.dataset}-{args.length}-times.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"timing {', '.join(specs)}: {args.rounds} rounds, paired (log {log})", flush=True)
        argv = [os.path.abspath(__file__), "--worker", json.dumps(spec)]
        done = harness.run_fresh(argv, cwd=log.parent, stderr_path=log)
        if not done.ok:
            print(f"the paired timing failed ({done.error()}): see {log}", file=sys.stderr)
            return 1
        append_call(times_path(args), done.result)
    if args.memory:
        if args.steps < 1:
            parser.error("--steps must be >= 1")
        measured = {}
        for name, (model, config) in row_specs(
            args, parser, args.memory, 1, "--memory needs a row"
        ).items():
            log = Path(args.workdir) / f"{args.dataset}-{args.length}-memory-{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"training memory of {name}: {args.steps} steps (log {log})", flush=True)
            spec = {"dataset": args.dataset, "model": model, "config": config, "steps": args.steps}
            argv = [os.path.abspath(__file__), "--memory_worker", json.dumps(spec)]
            done = harness.run_fresh(argv, env=MALLOC_ENV, cwd=log.parent, stderr_path=log)
            if not done.ok:
                print(f"measuring {name} failed ({done.error()}): see {log}", file=sys.stderr)
                return 1
            measured[name] = done.result
        append_call(memory_path(args), {"rows": measured})
    write_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
