"""The leaderboard: every model trained to convergence under one protocol, 3 seeds, both metrics.

    python benchmarks/leaderboard.py --dataset ml-1m --length 200 [--models Hydra,HSTU,...]
        [--seeds 3] [--set key=value ...] [--report-only]
    python benchmarks/leaderboard.py --suite ablations --dataset ml-1m --length 200 ...
    python benchmarks/leaderboard.py --tune 8 --dataset ml-1m --length 200 [--models ...]

Each (row, seed) trains in a fresh process with the model's own yaml (its learning-rate
schedule over its ``epochs``, early stopping on valid NDCG@10 with its ``stopping_step``; no
wall-clock budget), at ``MAX_ITEM_LIST_LENGTH = --length``, seed 2020 + i. The best checkpoint is
then tested twice: RecBole's protocol (the user's history ranked too) and with the history masked
(``mask_history_items: True``, as HSTU, HLLM and gSASRec publish). Training validates on the
unmasked protocol for every model alike.
The cost table marks ``*`` each run that early stopping did not end (it trained every epoch of
its ``epochs``): the reader sees which runs are converged by validation and which by schedule.

Resumable: each finished run is stored as ``benchmarks/results/<suite>/<dataset>-<length>/
<row>-seed<seed>.json`` and skipped when the command runs again; a run cut short (Ctrl-C, a
killed process) continues from its checkpoint (``--resume_from``) in ``--workdir``. The report,
``benchmarks/results/<suite>-<dataset>-<length>.md/.json/.png``, is rewritten from every stored
run after each one; the leaderboard's holds the published anchors in their own rows.

Suites:

- ``leaderboard`` (``VARIANTS``): Hydra, and Hydra with the two objectives that push the user's
  own items down (``Hydra-CE``: full softmax, ``Hydra-CE-dot``: the same over plain dot products
  as SASRec and Mamba4Rec score; ``Hydra-seen``: ``seen_item_negatives``), and Hydra's sampled
  InfoNCE over dot products (``Hydra-dot``); HSTU
  with the package default ``time_query: current`` and the reference's ``next``; SASRec's
  architecture trained generatively with full-softmax CE (``SASRec+``, Klenitskiy & Vasilev
  2023; ``SASRec+-dot``: over dot products as they score, Hydra-CE-dot's objective) and with
  sampled InfoNCE (``SASRecGen``); Mamba4Rec trained generatively; RecBole's own
  SASRec as its users run it (one example per prefix).
- ``ablations`` (``ABLATIONS``): the default Hydra with one part changed per row.
- ``frontier`` (``FRONTIER``): the default Hydra made cheaper one way at a time, the quality side
  of ``benchmarks/frontier.py``'s cost frontier.

Equal tuning (``--tune N``): each leaderboard row with a search space in ``benchmarks/spaces/
<row>.hyper`` gets N Ray Tune trials (``recbole_hydra.tune``: ASHA on valid NDCG@10, seed 2020,
one trial at a time on every thread), the same N for every row; the test set is never looked at.
The best trial's keys go to ``properties/leaderboard/<dataset>-<length>/<row>.yaml`` and the
trial table to ``benchmarks/results/tune/<dataset>-<length>/<row>.md``; from then on the suite
has a row ``<row>-tuned`` (the row's config with those keys, over any ``--set``), trained and
tested as any other. A row that already has its yaml is not tuned again (delete the yaml to
retune); a search cut short resumes its unfinished trials when the command runs again.

Fitted schedules: a row whose learning rate decays over ``epochs`` (cosine) and whose stored runs
early stopping all ended was cut while its rate was still high, so its schedule did not span the
epochs it trained. It gets a row ``<row>-fit``: the same config with ``epochs`` set to the median
epochs those runs trained (validation decides, as it decided when they stopped). Rows of a
constant rate (HSTU, Mamba4Rec, as their references train) need no fit.
"""

import argparse
import collections
import json
import os
import statistics
import sys
from pathlib import Path

import harness  # benchmarks/harness.py

REPO = Path(__file__).resolve().parent.parent
SPACES = REPO / "benchmarks" / "spaces"  # <row>.hyper: each row's tuning space
METRICS = [f"{m}@{k}" for k in (10, 50, 200) for m in ("ndcg", "recall")]

#: leaderboard name -> (model, config overrides)
VARIANTS = {
    "Hydra": ("Hydra", {}),
    "Hydra-CE": ("Hydra", {"loss_type": "CE"}),
    "Hydra-seen": ("Hydra", {"seen_item_negatives": True}),
    "Hydra-CE-dot": ("Hydra", {"loss_type": "CE", "similarity": "dot", "temperature": 1.0}),
    "Hydra-dot": ("Hydra", {"similarity": "dot", "temperature": 1.0}),
    "HSTU": ("HSTU", {}),
    "HSTU-next": ("HSTU", {"time_query": "next"}),
    "SASRec+": ("SASRecGen", {"loss_type": "CE"}),
    "SASRec+-dot": ("SASRecGen", {"loss_type": "CE", "similarity": "dot", "temperature": 1.0}),
    "SASRecGen": ("SASRecGen", {}),
    # the generative rows' 128 windows a batch: the yaml's 2048 counts prefixes, and 2048 windows
    # make one optimizer step an ml-100k epoch
    "Mamba4Rec-gen": ("Mamba4Rec", {"train_mode": "generative", "train_batch_size": 128}),
    "SASRec": ("SASRec", {}),
}

#: Hydra's ablations (leaderboard issue, item 4): one part of the default Hydra changed per row,
#: all at ``--length`` but the last two
ABLATIONS = {
    "Hydra": ("Hydra", {}),
    "no-rope-on-z": ("Hydra", {"rope_on_z": False}),
    "no-y-times-z": ("Hydra", {"gate_with_z": False}),
    "one-mamba2": ("Hydra", {"n_heads": 1, "head_size": 64}),  # the 4 x 16 heads' total width
    "post-norm": ("Hydra", {"norm_placement": "post"}),
    **{f"d_state-{n}": ("Hydra", {"d_state": n}) for n in (16, 64, 128)},
    **{f"heads-{v}": ("Hydra", {"n_heads": v}) for v in (2, 8)},
    # 1024: the most that ml-100k's 1,682 items allow; 2048 fits ml-1m only
    **{f"negatives-{k}": ("Hydra", {"num_negatives": k}) for k in (128, 1024, 2048)},
    "length-50": ("Hydra", {"MAX_ITEM_LIST_LENGTH": 50}),
    "whole-history": ("Hydra", {"MAX_ITEM_LIST_LENGTH": "whole"}),  # the longest user's
}
#: Hydra made cheaper one way at a time (the cost-frontier issue, ``benchmarks/frontier.py``,
#: which also reads the ablations' d_state and heads rows as frontier points)
FRONTIER = {
    "Hydra": ("Hydra", {}),
    "d_state-8": ("Hydra", {"d_state": 8}),
    "expand-1": ("Hydra", {"expand": 1}),
    "layers-1": ("Hydra", {"n_layers": 1}),
    "ffn-32": ("Hydra", {"ffn_inner_size": 32}),
    "expand-1-d_state-16": ("Hydra", {"expand": 1, "d_state": 16}),
    # one B and one C for all heads: the conv's channels per token 384 -> 192 at the default sizes
    "shared-bc": ("Hydra", {"share_bc": True}),
    "layers-1-shared-bc": ("Hydra", {"n_layers": 1, "share_bc": True}),
    "CE-dot-layers-1-shared-bc": (
        "Hydra",
        {**VARIANTS["Hydra-CE-dot"][1], "n_layers": 1, "share_bc": True},
    ),
}
SUITES = {"leaderboard": VARIANTS, "ablations": ABLATIONS, "frontier": FRONTIER}
TITLES = {
    "leaderboard": "Leaderboard",
    "ablations": "Hydra's ablations",
    "frontier": "Hydra's cheaper configurations",
}

#: published full-ranking anchors at length 200 (NDCG@10, Recall@10, protocol, source)
ANCHORS = {
    "ml-1m": [
        ("HSTU-large", 0.1893, 0.3294, "masked", "meta-recsys/generative-recommenders README"),
        ("HSTU", 0.1720, 0.3097, "masked", "meta-recsys/generative-recommenders README"),
        ("SASRec (sampled softmax)", 0.1603, 0.2853, "masked", "generative-recommenders README"),
        ("SASRec+ (full CE)", 0.1821, 0.3152, "masked", "Klenitskiy & Vasilev, RecSys 2023"),
        ("SASRec (3000 negatives)", 0.1857, 0.3159, "masked", "Klenitskiy & Vasilev, RecSys 2023"),
        ("gSASRec", 0.1726, 0.3003, "masked", "Petrov & Macdonald, RecSys 2023"),
        ("Mamba4Rec", 0.1822, 0.3121, "unmasked", "Mamba4Rec paper (RecBole evaluator)"),
    ]
}


def worker(spec):
    """One run in this process: train (or resume), test both ways, hand back the figures."""
    import time

    from recbole_hydra.quick_start import evaluate_checkpoint, resume, run

    saved = Path(spec["config"]["checkpoint_dir"])
    start = time.perf_counter()
    if saved.is_dir() and any(saved.glob("*.pth")):
        result = resume(str(saved), {"show_progress": False})
    else:
        result = run(spec["model"], spec["dataset"], config_dict=spec["config"])
    train_wall = time.perf_counter() - start
    tests = {}
    for name, mask in (("unmasked", False), ("masked", True)):
        t0 = time.perf_counter()
        again = evaluate_checkpoint(result["model_file"], {"mask_history_items": mask})
        tests[name] = {
            "test": dict(again["test_result"]),
            "valid": dict(again["best_valid_result"]),
            "eval_s": time.perf_counter() - t0,
        }
    history = result["history"]
    scores = [h.get("valid_score", float("-inf")) for h in history]
    harness.emit(
        {
            "n_params": result["n_params"],
            "epochs": result["epochs"],
            "stopped_early": result["stopped_early"],
            "best_epoch": scores.index(max(scores)) + 1 if scores else None,
            "train_s_per_epoch": statistics.median(h["train_s"] for h in history)
            if history
            else None,
            "train_wall_s": train_wall,
            "peak_rss_mb": harness.peak_rss_mb(),
            "model_file": result["model_file"],
            **tests,
        }
    )


def longest_history(args):
    """Interactions of the dataset's most active user: the length that holds every history."""
    from recbole_hydra.config import make_config

    config = make_config("Hydra", args.dataset, config_dict={"data_path": args.data_path})
    inter = Path(config["data_path"]) / f"{args.dataset}.inter"
    with open(inter, encoding="utf-8") as f:
        column = f.readline().rstrip("\n").split("\t").index(f"{config['USER_ID_FIELD']}:token")
        counts = collections.Counter(line.split("\t")[column] for line in f)
    return max(counts.values())


def base_config(args, seed, variant_config, overrides):
    """What every run of a row is given: seed, length, data, then the row's and --set keys."""
    if variant_config.get("MAX_ITEM_LIST_LENGTH") == "whole":
        variant_config = {**variant_config, "MAX_ITEM_LIST_LENGTH": longest_history(args)}
    return {
        "seed": seed,
        "MAX_ITEM_LIST_LENGTH": args.length,
        "show_progress": False,
        "data_path": os.path.abspath(args.data_path),
        **variant_config,
        **overrides,
    }


def tuned_dir(args):
    return Path(args.tuned) / f"{args.dataset}-{args.length}"


def suite_rows(args):
    """The suite's rows as name -> (model, config, tuned keys), and for the leaderboard a
    ``<row>-tuned`` row per tuned yaml: the row's config with the yaml's keys, which win over
    ``--set`` as the trials' sampled keys did."""
    import yaml

    rows = {name: (model, config, {}) for name, (model, config) in SUITES[args.suite].items()}
    if args.suite == "leaderboard":
        for path in sorted(tuned_dir(args).glob("*.yaml")):
            if path.stem in VARIANTS:
                model, variant_config = VARIANTS[path.stem]
                tuned = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                rows[f"{path.stem}-tuned"] = (model, variant_config, tuned)
        rows.update(fitted_rows(args, rows))
    return rows


def fitted_rows(args, rows):
    """A ``<row>-fit`` row for each row whose learning rate decays over ``epochs`` and whose
    every stored run early stopping ended: the row with ``epochs`` set to the median epochs those
    runs trained, so that its schedule decays within the epochs a run actually trains rather
    than being cut while the rate is still high. Rows of a constant rate need no fit."""
    import yaml

    from recbole_hydra.config import PROPERTIES

    store = Path(args.out) / args.suite / f"{args.dataset}-{args.length}"
    fitted = {}
    for name, (model, variant_config, tuned) in rows.items():
        yaml_file = PROPERTIES / f"{model}.yaml"
        defaults = (
            yaml.safe_load(yaml_file.read_text(encoding="utf-8")) if yaml_file.is_file() else {}
        )
        if {**defaults, **variant_config, **tuned}.get("lr_scheduler", "constant") == "constant":
            continue
        runs = [json.loads(p.read_text()) for p in sorted(store.glob(f"{name}-seed*.json"))]
        if runs and all(r.get("stopped_early") for r in runs):
            epochs = round(statistics.median(r["epochs"] for r in runs))
            fitted[f"{name}-fit"] = (model, variant_config, {**tuned, "epochs": epochs})
    return fitted


def tune_missing(args, overrides):
    """``--tune`` trials for every chosen row that has a space and no tuned yaml yet."""
    import yaml

    from recbole_hydra import tune

    tables = args.out / "tune" / f"{args.dataset}-{args.length}"
    for variant in args.models:
        space, out = SPACES / f"{variant}.hyper", tuned_dir(args) / f"{variant}.yaml"
        if variant not in VARIANTS or not space.is_file() or out.exists():
            continue
        model, variant_config = VARIANTS[variant]
        tune_dir = Path(args.workdir).resolve() / "tune" / f"{args.dataset}-{args.length}" / variant
        resume = tune_dir.is_dir() and any(tune_dir.glob("*/search.json"))
        print(f"{variant}: {'resuming' if resume else 'starting'} {args.tune} trials in {tune_dir}")
        summary = tune.search(
            model,
            args.dataset,
            params_file=str(space),
            config_dict=base_config(args, 2020, variant_config, overrides),
            num_samples=args.tune,
            cpus_per_trial=args.threads,
            max_concurrent=1,
            resume=resume or None,
            tune_dir=str(tune_dir),
        )
        best, rows = summary["best"], summary["rows"]
        if summary["unfinished"]:
            print(f"{variant}: {summary['unfinished']} trials unfinished; run the command again")
            continue
        if best is None:  # running again restores the same failed trials: the space must change
            print(f"{variant}: every trial failed, the first with: {rows[0]['error']}")
            print(f"{variant}: fix {space} and delete {tune_dir} to tune it again")
            continue
        failed = sum(r["status"] == "failed" for r in rows)
        trials = f"{len(rows)} trials" + (f" ({failed} failed)" if failed else "")
        tables.mkdir(parents=True, exist_ok=True)
        lines = harness.header(
            f"Tuning {variant}: {args.dataset}, length {args.length}, {trials}",
            harness.command(),
            harness.machine(threads=args.threads),
            f"Space: `benchmarks/spaces/{space.name}`; ASHA on valid "
            f"{summary['metric']}, seed 2020, one trial at a time; search in `{tune_dir}`.",
        )
        harness.write_report(tables / f"{variant}.md", lines + [summary["table_md"].read_text()])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            f"# {variant} tuned on {args.dataset} length {args.length}: best of {trials}, "
            f"valid {summary['metric']} {best['best_valid']:.4f} ("
            f"benchmarks/results/tune/{tables.name}/{variant}.md)\n"
            + yaml.safe_dump(best["params"], sort_keys=False),
            encoding="utf-8",
        )
        print(f"{variant}: tuned ({trials}), valid {best['best_valid']:.4f}; wrote {out}")


def run_config(args, overrides, rows, variant, seed):
    """The row's model, and the config its run of ``seed`` trains with (``checkpoint_dir`` in
    the run's own folder of ``--workdir``, where an unfinished run resumes)."""
    model, variant_config, tuned = rows[variant]
    run_dir = Path(args.workdir).resolve() / report_name(args).removeprefix("leaderboard-")
    config = {**base_config(args, seed, variant_config, overrides), **tuned}
    config["checkpoint_dir"] = str(run_dir / f"{variant}-seed{seed}" / "saved")
    return model, config


def check_stored(args, overrides, store):
    """A chosen row's stored run, and its unfinished run that would resume, must have the config
    the row gives now, or one name would hold two configs: exit 2 naming the first other key."""
    rows = suite_rows(args)
    for variant in args.models:
        for seed in range(2020, 2020 + args.seeds):
            config = run_config(args, overrides, rows, variant, seed)[1]
            out = store / f"{variant}-seed{seed}.json"
            started = Path(config["checkpoint_dir"]).parent / "spec.json"
            path = out if out.exists() else started
            if not path.exists():
                continue
            stored = json.loads(path.read_text())["config"]
            for key in sorted((set(stored) | set(config)) - {"checkpoint_dir", "data_path"}):
                if stored.get(key) != config.get(key):
                    print(
                        f"{path} has {setting(stored, key)}, and the row now gives "
                        f"{setting(config, key)}: move {path.parent if path is started else path} "
                        "aside to train the row again",
                        file=sys.stderr,
                    )
                    sys.exit(2)


def setting(config, key):
    return f"{key}={config[key]!r}" if key in config else f"no {key} (the yaml's)"


def run_missing(args, overrides, store):
    """Every (model, seed) not yet stored, one at a time, each in a fresh process."""
    rows = suite_rows(args)
    for variant in args.models:
        for seed in range(2020, 2020 + args.seeds):
            out = store / f"{variant}-seed{seed}.json"
            if out.exists():
                continue
            model, config = run_config(args, overrides, rows, variant, seed)
            run_dir = Path(config["checkpoint_dir"]).parent
            spec = {"model": model, "dataset": args.dataset, "config": config}
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))  # for check_stored
            log = run_dir / "stderr.log"
            print(f"{variant} seed {seed}: training (log {log})", flush=True)
            done = harness.run_fresh(
                [os.path.abspath(__file__), "--worker", json.dumps(spec)],
                cwd=run_dir,
                stderr_path=log,
            )
            if not done.ok:
                print(f"{variant} seed {seed}: failed ({done.error()}); see {log}", flush=True)
                continue
            record = {"variant": variant, "model": model, "seed": seed, "config": config}
            record.update(done.result, wall_s=done.wall_s)
            record.update(command=harness.command(), hardware=harness.machine())
            out.write_text(json.dumps(record, indent=1))
            ndcg = record["unmasked"]["test"]["ndcg@10"], record["masked"]["test"]["ndcg@10"]
            print(f"{variant} seed {seed}: test NDCG@10 {ndcg[0]:.4f} / masked {ndcg[1]:.4f}")
            write_report(args, store)


def mean_std(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def report_name(args):
    return f"{args.suite}-{args.dataset}-{args.length}"


def write_report(args, store):
    runs = [json.loads(p.read_text()) for p in sorted(store.glob("*.json"))]
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    name = report_name(args)
    lines = harness.header(
        f"{TITLES[args.suite]}: {args.dataset}, length {args.length}",
        harness.command(),
        runs[0]["hardware"] if runs else harness.machine(),
        "Protocol: RecBole leave-one-out (order TO), full ranking over all items; early stopping "
        "on unmasked valid NDCG@10; test unmasked (RecBole) and masked (history items -inf, the "
        "target kept). Seeds 2020.. (n per row). Timings: 2 threads, not paired.",
        "Runs trained by: " + "; ".join(f"`{c}`" for c in sorted({r["command"] for r in runs})),
    )
    for protocol in ("masked", "unmasked"):
        lines += [f"## Test, {protocol}", ""]
        rows = []
        for variant, group in by_variant.items():
            cells = [mean_std([r[protocol]["test"][m] for r in group]) for m in METRICS]
            rows.append([variant, len(group), *cells])
        lines += harness.table(["model", "n", *METRICS], rows, "lr" + "r" * len(METRICS)) + [""]
    lines += cost_section(by_variant)
    published = args.suite == "leaderboard" and args.length == 200
    anchors = ANCHORS.get(args.dataset) if published else None
    if args.suite == "leaderboard":
        lines += goal_section(by_variant, anchors)
    else:
        lines += ablation_section(by_variant)
    if anchors:
        lines += ["## Published anchors (length 200; their datasets differ slightly)", ""]
        rows = [[n, f"{nd:.4f}", f"{hr:.4f}", p, src] for n, nd, hr, p, src in anchors]
        lines += harness.table(["model", "NDCG@10", "Recall@10", "protocol", "source"], rows)
    harness.write_report(args.out / f"{name}.md", lines)
    (args.out / f"{name}.json").write_text(json.dumps(runs, indent=1))
    if runs:
        plot(by_variant, anchors, args.out / f"{name}.png", args)


def epochs_run(run):
    """The epochs a run trained, marked ``*`` where early stopping did not end it (it ran to its
    ``epochs``), ``?`` where its record does not say."""
    early = run.get("stopped_early")
    return f"{run['epochs']}{'?' if early is None else '' if early else '*'}"


def cost_section(by_variant):
    rows = []
    for variant, group in by_variant.items():
        rows.append(
            [
                variant,
                group[0]["n_params"],
                f"{statistics.median(r['train_s_per_epoch'] for r in group):.1f}",
                "/".join(str(r["best_epoch"]) for r in group),
                "/".join(epochs_run(r) for r in group),
                f"{statistics.median(r['wall_s'] for r in group) / 60:.1f}",
                f"{max(r['peak_rss_mb'] for r in group):.0f}",
            ]
        )
    head = ["model", "params", "s/epoch", "best epoch", "epochs run", "wall min", "peak RSS MB"]
    lines = ["## Cost", ""] + harness.table(head, rows, "lrrrrrr") + [""]
    ended = {r.get("stopped_early") for group in by_variant.values() for r in group}
    if False in ended:
        lines += [
            "\\* early stopping did not end the run: it trained all its `epochs`. A decaying "
            "schedule (cosine over `epochs`) has reached its floor there; under a constant one "
            "validation may still have been rising.",
            "",
        ]
    if None in ended:
        lines += ["? the run's record does not say whether early stopping ended it.", ""]
    return lines


def ndcg10(group, protocol, split):
    """Mean, standard deviation (nan for one seed) and n of a row's NDCG@10."""
    values = [r[protocol][split]["ndcg@10"] for r in group]
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.mean(values), std, len(values)


def goal_section(by_variant, anchors=None):
    """The leaderboard's goal per protocol: Hydra's row against the best baseline's, each side's
    row chosen by its mean valid NDCG@10 on that protocol (never by test), its test mean set
    against 1.05x the baseline's and the gap against both standard deviations; then the masked
    Hydra row against the best published masked anchor, where ``anchors`` has one."""
    sides = [
        {v: g for v, g in by_variant.items() if (g[0]["model"] == "Hydra") == ours}
        for ours in (True, False)
    ]
    if not all(sides):
        return []
    yes_no = {True: "yes", False: "no"}
    rows, masked_hydra = [], None
    for protocol in ("masked", "unmasked"):
        picked = [max(side, key=lambda v: ndcg10(side[v], protocol, "valid")[0]) for side in sides]
        (hydra, h_std, h_n), (base, b_std, b_n) = (
            ndcg10(side[v], protocol, "test") for side, v in zip(sides, picked)
        )
        if protocol == "masked":
            masked_hydra = (picked[0], hydra, h_n)
        separated = yes_no[hydra - base > max(h_std, b_std)] if min(h_n, b_n) > 1 else "n < 2"
        rows.append(
            [protocol, f"{picked[0]} (n={h_n})", f"{picked[1]} (n={b_n})"]
            + [f"{hydra / base:.3f}", yes_no[hydra >= 1.05 * base], separated]
        )
    head = ["protocol", "Hydra row", "best baseline", "test ratio", ">= 1.05x", "gap > both std"]
    note = (
        "Each side's row is its highest mean valid NDCG@10 on that protocol (test never picks); "
        "ratio and gap are of mean test NDCG@10."
    )
    title = "## Goal: Hydra >= 1.05x the best baseline"
    lines = [title, "", note, "", *harness.table(head, rows, "lllrll"), ""]
    published = [a for a in anchors or [] if a[3] == "masked"]
    if published:
        name, value = max(published, key=lambda a: a[1])[:2]
        row, hydra, n = masked_hydra
        lines += [
            f"Masked, against the best published figure: {row} (n={n}) has {hydra:.4f}, "
            f"{hydra / value:.3f}x {name}'s {value:.4f} (their dataset differs slightly).",
            "",
        ]
    return lines


def ablation_section(by_variant, base="Hydra"):
    """Each ablation against the default Hydra: its mean test NDCG@10 over the base's on both
    protocols, whether the difference exceeds both rows' standard deviations, and its cost
    (parameters, median s/epoch) over the base's. The seeds of a row are its own; n says how
    many, and a row of one seed cannot be weighed against the noise."""
    if base not in by_variant:
        return []

    def median_epoch(group):
        return statistics.median(r["train_s_per_epoch"] for r in group)

    ref = {p: ndcg10(by_variant[base], p, "test") for p in ("masked", "unmasked")}
    rows = []
    for variant, group in by_variant.items():
        if variant == base:
            continue
        cells = [variant, len(group)]
        for protocol in ("masked", "unmasked"):
            mean, std, n = ndcg10(group, protocol, "test")
            b_mean, b_std, b_n = ref[protocol]
            beyond = abs(mean - b_mean) > max(std, b_std)
            cells += [
                f"{mean / b_mean:.3f}",
                "n < 2" if min(n, b_n) < 2 else "yes" if beyond else "no",
            ]
        cells += [
            f"{group[0]['n_params'] / by_variant[base][0]['n_params']:.2f}",
            f"{median_epoch(group) / median_epoch(by_variant[base]):.2f}",
        ]
        rows.append(cells)
    head = ["ablation", "n", "masked x", "beyond std", "unmasked x", "beyond std"]
    head += ["params x", "s/epoch x"]
    return [
        f"## Against the default Hydra (n={len(by_variant[base])})",
        "",
        'Ratios of mean test NDCG@10 and of cost to the default Hydra\'s; "beyond std": the '
        "difference of the means exceeds both rows' standard deviations. s/epoch is not paired.",
        "",
        *harness.table(head, rows, "lrrlrlrr"),
        "",
    ]


def plot(by_variant, anchors, path, args):
    """Test NDCG@10 per model (bars: unmasked and masked, mean +- std over seeds), then the
    published anchors as grey bars under their own protocol."""
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.8))
    names = list(by_variant)
    for offset, protocol in ((-0.2, "unmasked"), (0.2, "masked")):
        means, stds = [], []
        for v in names:
            values = [r[protocol]["test"]["ndcg@10"] for r in by_variant[v]]
            means.append(statistics.mean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        xs = [i + offset for i in range(len(names))]
        ax.bar(xs, means, width=0.4, yerr=stds, capsize=3, label=f"ours, {protocol}")
    labels = list(names)
    for i, (name, ndcg, _, protocol, _) in enumerate(anchors or [], start=len(names)):
        offset = 0.2 if protocol == "masked" else -0.2
        colour = "0.45" if protocol == "masked" else "0.75"
        ax.bar(i + offset, ndcg, width=0.4, color=colour)
        labels.append(f"{name}\n(published, {protocol})")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"{args.dataset}, length {args.length}: ours (mean +- std over seeds), published")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    harness.save_png(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--length", type=int, default=200, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument(
        "--suite",
        choices=list(SUITES),
        default="leaderboard",
        help="which rows: models, ablations or cheaper Hydras",
    )
    parser.add_argument("--models", help="comma-separated names of the suite's rows (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data_path", default=str(REPO / "dataset"))
    parser.add_argument("--workdir", default=str(REPO / "saved" / "leaderboard"))
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results"), help="where results are written"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--tune", type=int, default=0, metavar="N", help="first tune each row: N trials (ASHA)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a tuning trial")
    parser.add_argument(
        "--tuned",
        default=str(REPO / "properties" / "leaderboard"),
        help="where tuned configs are written and read",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    harness.pyplot()  # a missing matplotlib stops the command now, not after hours of training
    if args.tune < 0 or args.threads < 1:
        parser.error("--tune must be >= 0 and --threads >= 1")
    if args.tune and args.suite != "leaderboard":
        parser.error("--tune tunes the leaderboard's rows (--suite leaderboard)")
    rows = suite_rows(args)
    args.models = [m for m in (args.models or ",".join(rows)).split(",") if m]
    unknown = [m for m in args.models if m not in rows]
    if unknown:
        parser.error(f"unknown {args.suite} row {unknown[0]!r}: one of {', '.join(rows)}")
    overrides = harness.parse_sets(args.set, parser)
    args.out = Path(args.out)
    store = args.out / args.suite / f"{args.dataset}-{args.length}"
    store.mkdir(parents=True, exist_ok=True)
    if args.tune and not args.report_only:
        check_stored(args, overrides, store)  # before hours of tuning, not after
        tune_missing(args, overrides)
        # the rows just tuned join the suite; --models names the untuned rows to train as well
        rows = suite_rows(args)
        args.models += [f"{m}-tuned" for m in args.models if f"{m}-tuned" in rows]
    if not args.report_only:
        check_stored(args, overrides, store)
        run_missing(args, overrides, store)
    write_report(args, store)


if __name__ == "__main__":
    sys.exit(main())
