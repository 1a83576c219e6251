"""Hydra against attention at everyday lengths, on real data, same objective and batches.

    python benchmarks/everyday.py [--datasets ml-100k,ml-1m] [--lengths 50,200] \
        [--models Hydra,HSTU,SASRecGen[,Hydra-ckpt]] [--threads 2] [--out everyday] \
        [--repo PATH --label before]

For every (dataset, length, model), in a fresh process: RecBole's own data pipeline (LOO, order
TO) with ``MAX_ITEM_LIST_LENGTH = length``, each model's default architecture, and ONE objective
for all (generative InfoNCE, 512 negatives shared by the batch, no history item as negative,
cosine, tau 0.05, batch 128): the seconds of one training epoch (RecBole trainer's
``_train_epoch``, data loading included), of one full-ranking evaluation of all users on the
validation split (``trainer.evaluate``, metrics included), and the peak resident memory of each
(the kernel's high-water mark, reset before each phase; what the data already holds included).
``Hydra-ckpt`` is Hydra with ``layer_checkpointing: True`` (``VARIANTS``).

``--repo PATH`` imports recbole_hydra from another checkout (a ``git worktree`` of an older
commit) and ``--label`` names the run: how the before/after table is made. Results go to
benchmarks/results/<out>.json (one entry per run, merged) and <out>.md.

``--profile MODEL[,MODEL...]`` instead writes, for the first of ``--datasets`` and ``--lengths``,
each model's matmul FLOPs per training step, step time, achieved GFLOP/s and torch.profiler's
breakdown of training steps and of an evaluation batch (``<out>-profile-<dataset>-<length>.md``),
each model in a fresh process too.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import harness  # benchmarks/harness.py

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
OBJECTIVE = {
    "loss_type": "InfoNCE",
    "num_negatives": 512,
    "exclude_history_negatives": True,
    "similarity": "cosine",
    "temperature": 0.05,
    "train_mode": "generative",
    "max_windows_per_user": 0,
    "train_batch_size": 128,
    "eval_batch_size": 1024,
    "show_progress": False,
    "seed": 2020,
    "reproducibility": False,
}


# Models with a non-default setting, usable in --models: name -> (model, config overrides).
VARIANTS = {"Hydra-ckpt": ("Hydra", {"layer_checkpointing": True})}


def objective_text():
    """``OBJECTIVE`` in words, for the results files."""
    o = OBJECTIVE
    return (
        f"{o['train_mode']} {o['loss_type']}, {o['num_negatives']} shared negatives"
        + (" without history items" if o["exclude_history_negatives"] else "")
        + f", {o['similarity']}, tau {o['temperature']}, batch {o['train_batch_size']}"
    )


def _setup(model_name, dataset, length, data_path):
    """RecBole's data, the model and its trainer for one (model, dataset, length), in this process,
    with the CPU kernels built (or loaded) first: a one-off per machine, not part of any timing."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from recbole.data import data_preparation

    try:
        from recbole_hydra.config import make_config
        from recbole_hydra.registry import build_model, create_dataset, get_trainer
    except ImportError:  # a checkout from before the runner was split (--repo)
        from recbole_hydra.quick_start import create_dataset, get_trainer, make_config
        from recbole_hydra.quick_start import load_model as build_model
    try:
        from recbole_hydra.layers import kernels
    except ImportError:  # a checkout from before they existed (--repo)
        kernels = None

    model_name, variant = VARIANTS.get(model_name, (model_name, {}))
    config = make_config(
        model_name,
        dataset,
        config_dict={
            **OBJECTIVE,
            **variant,
            "MAX_ITEM_LIST_LENGTH": length,
            "data_path": os.path.abspath(data_path),
        },
    )
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = build_model(config, train._dataset)
    trainer = get_trainer(config)(config, model)
    if kernels is not None and hasattr(kernels, "cpu_kernels"):
        try:
            kernels.cpu_kernels(torch.zeros(1))
        except TypeError:  # a checkout from before the process-wide switch (--repo)
            kernels.cpu_kernels(True, torch.zeros(1))
    return config, model, trainer, train, valid


def point(model_name, dataset, length, data_path):
    """One measurement in this process, handed to ``run_point`` (``harness.emit``)."""
    import torch

    _config, model, trainer, train, valid = _setup(model_name, dataset, length, data_path)
    harness.reset_peak_rss()
    t0 = time.perf_counter()
    trainer._train_epoch(train, 0, show_progress=False)
    train_s = time.perf_counter() - t0
    train_peak = harness.peak_rss_mb()
    harness.reset_peak_rss()
    t0 = time.perf_counter()
    trainer.evaluate(valid, load_best_model=False, show_progress=False)
    eval_s = time.perf_counter() - t0
    harness.emit(
        {
            "model": model_name,
            "dataset": dataset,
            "length": length,
            "threads": torch.get_num_threads(),
            "train_epoch_s": train_s,
            "train_batches": len(train),
            "train_peak_mb": train_peak,
            "eval_s": eval_s,
            "eval_peak_mb": harness.peak_rss_mb(),
            "params": sum(p.numel() for p in model.parameters()),
        }
    )


def profile(model_name, dataset, length, data_path, rows=25, steps=8):
    """Where one model's time goes, at one (dataset, length), in this process.

    Returns a dict: matmul FLOPs of one training step (``torch.utils.flop_counter``: forward +
    backward of every matmul, attention included; elementwise ops are not counted), the median
    wall ms of a training step (forward + backward + AdamW) and of one evaluation batch
    (``full_sort_predict`` of ``eval_batch_size`` users), and torch.profiler's tables (self CPU
    time by op and input shape) of 3 training steps and of one evaluation batch.
    """
    import statistics

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from torch.utils.flop_counter import FlopCounterMode

    _config, model, _trainer, train, valid = _setup(model_name, dataset, length, data_path)
    batches = [b.to(model.device) for b, _ in zip(train, range(steps + 1))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()

    model.train()
    step(batches[0])
    counter = FlopCounterMode(display=False)
    with counter:
        model.calculate_loss(batches[0]).backward()
    flops = counter.get_total_flops()
    tokens = int(batches[0][model.ITEM_SEQ_LEN].sum())
    times = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches[1:4]:
            step(batch)
    train_table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows
    )
    model.eval()
    eval_batch = next(iter(valid))[0].to(model.device)
    eval_times = []
    with torch.no_grad():
        for _ in range(4):
            t0 = time.perf_counter()
            model.full_sort_predict(eval_batch)
            eval_times.append(time.perf_counter() - t0)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model.full_sort_predict(eval_batch)
    eval_table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows
    )
    step_s = statistics.median(times)
    return {
        "model": model_name,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "tokens_per_step": tokens,
        "train_gflop_per_step": flops / 1e9,
        "train_kflop_per_token": flops / tokens / 1e3,
        "train_step_ms": step_s * 1000,
        "train_gflops_per_s": flops / 1e9 / step_s,
        "eval_batch_users": len(eval_batch),
        "eval_batch_ms": statistics.median(eval_times[1:]) * 1000,
        "train_table": train_table,
        "eval_table": eval_table,
    }


def write_profile(results, path, dataset, length, command):
    lines = harness.header(
        f"Where the time goes: {dataset}, length {length}",
        command,
        harness.machine(threads=results[0]["threads"]),
        f"Same objective and batches as the everyday table ({objective_text()}). FLOPs: matmul "
        "FLOPs of one training step, forward + backward, counted by torch.utils.flop_counter "
        "(elementwise ops not counted); step: median wall time of forward + backward + AdamW; "
        "eval: median wall time of full_sort_predict on one evaluation batch.",
    )
    lines += harness.table(
        [
            "model",
            "params",
            "matmul GFLOP / step",
            "kFLOP / token",
            "step ms",
            "GFLOP/s",
            "eval batch ms",
        ],
        [
            [
                r["model"],
                f"{r['params']:,}",
                f"{r['train_gflop_per_step']:.2f}",
                f"{r['train_kflop_per_token']:.0f}",
                f"{r['train_step_ms']:.0f}",
                f"{r['train_gflops_per_s']:.1f}",
                f"{r['eval_batch_ms']:.0f}",
            ]
            for r in results
        ],
        align="lrrrrrr",
    )
    lines.append("")
    for r in results:
        lines += [
            f"## {r['model']}: 3 training steps",
            "",
            "```",
            r["train_table"],
            "```",
            "",
            f"## {r['model']}: one evaluation batch ({r['eval_batch_users']} users)",
            "",
            "```",
            r["eval_table"],
            "```",
            "",
        ]
    harness.write_report(path, lines)


def _fresh(args, argv):
    """``python everyday.py <argv>`` in a fresh process, with ``--threads`` and ``--repo``."""
    env = {}
    if args.threads:
        env["OMP_NUM_THREADS"] = args.threads
    if args.repo:
        env["PYTHONPATH"] = (
            os.path.abspath(args.repo) + os.pathsep + os.environ.get("PYTHONPATH", "")
        )
    return harness.run_fresh([os.path.abspath(__file__), *argv], env=env, cwd=args.workdir)


def run_point(args, model, dataset, length):
    done = _fresh(args, ["--point", model, dataset, length, os.path.abspath(args.data_path)])
    if not done.ok:
        print(f"  {model} {dataset} L={length}: failed ({done.error()})", flush=True)
        return None
    return dict(done.result, label=args.label)


def write_markdown(entries, path, command):
    labels = list(dict.fromkeys(e["label"] for e in entries))
    after = [e for e in entries if e["label"] == labels[-1]]
    lines = harness.header(
        "Hydra at everyday lengths",
        command,
        harness.machine(threads=f"{after[0]['threads'] if after else '?'} thread(s) per run"),
        "Protocol: RecBole LOO (order TO); every model with its own architecture defaults and the "
        f"SAME objective and batches ({objective_text()}). Train = one epoch of RecBole's trainer "
        "(data loading included); eval = full ranking of every user on the validation split "
        "(RecBole's evaluator included); peak = process high-water RSS during that phase (the "
        "loaded dataset included).",
    )
    for label in labels:
        rows = [e for e in entries if e["label"] == label]
        cells = []
        for e in rows:
            hydra = next(
                (
                    h
                    for h in rows
                    if h["model"] == "Hydra"
                    and h["dataset"] == e["dataset"]
                    and h["length"] == e["length"]
                ),
                None,
            )

            def ratio(key, hydra=hydra, e=e):
                return f"{hydra[key] / e[key]:.2f}x" if hydra else ""

            cells.append(
                [
                    e["dataset"],
                    e["length"],
                    e["model"],
                    f"{e['params']:,}",
                    f"{e['train_epoch_s']:.1f}",
                    f"{e['eval_s']:.1f}",
                    f"{e['train_peak_mb']:.0f}",
                    f"{e['eval_peak_mb']:.0f}",
                    ratio("train_epoch_s"),
                    ratio("eval_s"),
                    ratio("train_peak_mb"),
                ]
            )
        lines += [f"## {label}", ""]
        lines += harness.table(
            [
                "dataset",
                "length",
                "model",
                "params",
                "train epoch s",
                "eval s",
                "train peak MB",
                "eval peak MB",
                "Hydra/model train",
                "Hydra/model eval",
                "Hydra/model train peak",
            ],
            cells,
            align="lrlrrrrrrrr",
        )
        lines.append("")
    harness.write_report(path, lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ml-100k,ml-1m")
    parser.add_argument("--lengths", default="50,200")
    parser.add_argument("--models", default="Hydra,HSTU,SASRecGen")
    parser.add_argument(
        "--threads", type=int, default=0, help="OMP threads per run (0: torch's default)"
    )
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument(
        "--workdir", default=None, help="where runs write log/ (default: a temp dir)"
    )
    parser.add_argument(
        "--repo", default=None, help="import recbole_hydra from this checkout instead"
    )
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", default="everyday")
    parser.add_argument("--profile", default=None, metavar="MODELS")
    parser.add_argument("--point", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--profile-point", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        model, dataset, length, data_path = args.point
        return point(model, dataset, int(length), data_path)
    if args.profile_point:
        model, dataset, length, data_path = args.profile_point
        return harness.emit(profile(model, dataset, int(length), data_path))
    if args.workdir is None:
        import tempfile

        args.workdir = tempfile.mkdtemp(prefix="recbole-hydra-everyday-")
    command = harness.command()
    if args.profile:
        data_path = os.path.abspath(os.path.join(REPO, args.data_path))
        dataset, length = args.datasets.split(",")[0], int(args.lengths.split(",")[0])
        results = []
        for model in args.profile.split(","):
            done = _fresh(args, ["--profile-point", model, dataset, length, data_path])
            if not done.ok:
                sys.exit(f"profile of {model} failed: {done.error()}")
            results.append(done.result)
        out = RESULTS / f"{args.out}-profile-{dataset}-{length}.md"
        write_profile(results, out, dataset, length, command)
        print(out.read_text().split("## ")[0])
        return
    json_path = RESULTS / f"{args.out}.json"
    entries = json.loads(json_path.read_text()) if json_path.exists() else []
    for dataset in args.datasets.split(","):
        for length in (int(v) for v in args.lengths.split(",")):
            for model in args.models.split(","):
                print(f"{args.label}: {model} on {dataset} at length {length} ...", flush=True)
                result = run_point(args, model, dataset, length)
                if result is None:
                    continue
                print(
                    f"  train {result['train_epoch_s']:.1f} s, eval {result['eval_s']:.1f} s, "
                    f"peak {result['train_peak_mb']:.0f}/{result['eval_peak_mb']:.0f} MB",
                    flush=True,
                )
                key = (args.label, model, dataset, length)
                entries = [
                    e for e in entries if (e["label"], e["model"], e["dataset"], e["length"]) != key
                ]
                entries.append(result)
                json_path.write_text(json.dumps(entries, indent=1))
    order = {
        label: i for i, label in enumerate(dict.fromkeys(e["label"] for e in entries))
    }  # first run first
    entries.sort(
        key=lambda e: (
            order[e["label"]],
            e["dataset"],
            e["length"],
            e["model"] != "Hydra",
            e["model"],
        )
    )
    write_markdown(entries, RESULTS / f"{args.out}.md", command)
    print(f"wrote {RESULTS / (args.out + '.md')}")


if __name__ == "__main__":
    main()
