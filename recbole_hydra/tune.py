"""Hyperparameter search over RecBole config keys with Ray Tune, for plugin and RecBole models.

The search space is a RecBole hyper file (``run_hyper.py --params_file``), one key a line::

    learning_rate loguniform -8,0     # exp(U(-8, 0)): RecBole's loguniform takes exponents of e
    n_heads choice [2,4,8]            # a Python list literal
    dropout_prob uniform 0.0,0.5
    hidden_size quniform 32,128,32    # round(U(low, high) / q) * q

read as RecBole's ``HyperTuning._build_space_from_file`` reads it (name, type, then the value
with its spaces removed), into the equivalent Ray Tune distributions (``quniform`` with integer
bounds and step gives integers, so that it can tune sizes). Blank lines and ``#`` comments are
allowed; any other line that does not parse ends the search before it starts, naming the line.

Each trial is ``recbole_hydra.training.run`` with the sampled keys on top of the command line's
config, in its own directory under ``<tune_dir>/<experiment>/`` (so it leaves what a plain run
leaves there: ``saved/`` checkpoint, ``log/`` RecBole log, ``results.md``/``result.json``). After
every validation the trial reports the valid score to Tune (``run``'s ``epoch_callback``), and ASHA
stops trials whose score is in the bottom half of those that reached the same epoch. It first
judges at the epoch where early stopping could first have stopped the trial (``stopping_step``
validations), then at twice, four times that epoch...: a trial's first few epochs say more about
its warm-up and learning rate than about where it ends. A trial that completes reports its test
result last. A trial that raises is marked as failed in the table and the search goes on. The
experiment directory holds ``trials.md`` and ``trials.csv`` (all trials, best valid score first),
``best.yaml`` (the best trial's keys plus the command line's, for ``run_hydra.py
--config_files``) and ``search.json`` (what ``resume`` needs: an interrupted search restarts its
unfinished trials with ``Tuner.restore``).
"""

import ast
import csv
import json
import math
import os
import re
from pathlib import Path

from recbole_hydra.config import PROPERTIES, make_config
from recbole_hydra.errors import UsageError, command
from recbole_hydra.training import evaluate_checkpoint, results_table, run

PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")
METRIC = "valid_score"  # the config's valid_metric, as reported by every trial
STOPPED_MARK = "stopped_early"  # a file in the directory of a trial that ASHA stopped
SYNTAX = (
    "lines look like 'NAME TYPE VALUE': choice [a,b,...] | uniform LOW,HIGH | "
    "quniform LOW,HIGH,Q | loguniform LOW,HIGH (exponents of e, as in RecBole)"
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------
# the params file


def parse_params(text, source="params file"):
    """``{name: (type, values)}`` from the text of a RecBole hyper file; UsageError naming the
    line on anything that RecBole would not read, or would read into a space that cannot work."""
    params = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{lineno}: {raw.strip()!r}:"
        tokens = line.split()
        if len(tokens) < 3:
            raise UsageError(f"{where} expected NAME TYPE VALUE; {SYNTAX}")
        name, kind, value = tokens[0], tokens[1], "".join(tokens[2:])
        if not _NAME.match(name):
            raise UsageError(f"{where} {name!r} is not a config key name; {SYNTAX}")
        if name in params:
            raise UsageError(f"{where} {name} is given twice")
        if kind not in PARAM_TYPES:
            raise UsageError(f"{where} unknown type {kind!r}; {SYNTAX}")
        if kind == "choice":
            try:
                values = ast.literal_eval(" ".join(tokens[2:]))
            except (ValueError, SyntaxError):
                values = None
            if not isinstance(values, (list, tuple)) or not values:
                raise UsageError(f"{where} choice needs a non-empty list such as [2,4,8]")
            params[name] = (kind, list(values))
            continue
        parts = value.split(",")
        if len(parts) != (3 if kind == "quniform" else 2):
            raise UsageError(
                f"{where} {kind} needs " + ("LOW,HIGH,Q" if kind == "quniform" else "LOW,HIGH")
            )
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise UsageError(f"{where} {kind} bounds must be numbers") from None
        if not all(math.isfinite(x) for x in numbers) or numbers[0] > numbers[1]:
            raise UsageError(f"{where} {kind} needs finite LOW <= HIGH")
        if kind == "quniform" and numbers[2] <= 0:
            raise UsageError(f"{where} quniform needs a step Q > 0")
        if kind == "quniform" and all(_is_int(p) for p in parts):
            numbers = [int(p) for p in parts]
        params[name] = (kind, numbers)
    if not params:
        raise UsageError(f"{source} defines no parameters; {SYNTAX}")
    return params


def default_params_file(model):
    """``properties/tune/<model>.hyper`` (lower case) when the package has one."""
    name = model if isinstance(model, str) else model.__name__
    path = PROPERTIES / "tune" / f"{name.lower()}.hyper"
    return str(path) if path.is_file() else None


def read_params_file(path):
    if not path:
        example = PROPERTIES / "tune" / "hydra.hyper"
        raise UsageError(f"--tune needs --params_file=FILE (e.g. {example})")
    if not os.path.isfile(path):
        raise UsageError(f"params file {path} does not exist")
    return parse_params(Path(path).read_text(encoding="utf-8"), source=str(path))


def _is_int(text):
    return re.fullmatch(r"[+-]?\d+", text.strip()) is not None


def search_space(params):
    """Ray Tune distributions equal to RecBole's (hyperopt's) for ``parse_params``' output."""
    from ray import tune

    space = {}
    for name, (kind, values) in params.items():
        if kind == "choice":
            space[name] = tune.choice(values)
        elif kind == "uniform":
            space[name] = tune.uniform(*values)
        elif kind == "loguniform":  # hyperopt: exp(uniform(low, high))
            space[name] = tune.loguniform(math.exp(values[0]), math.exp(values[1]))
        elif all(isinstance(v, int) for v in values):
            space[name] = tune.qrandint(*values)
        else:
            space[name] = tune.quniform(*values)
    return space


# --------------------------------------------------------------------------------------------
# one trial (runs in a Ray worker, in the trial's directory)


def _report(metrics):
    try:  # ray >= 2.7
        from ray import train

        report = train.report
    except (ImportError, AttributeError):  # ray 2.6
        from ray.air import session

        report = session.report
    report(metrics)


def _plain(value):
    """Python values for what Ray samples (numpy scalars) and what the CLI parses (tuples)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def run_trial(params, base):
    """Train and test one sampled config; reports the valid score after every validation."""
    import logging

    import torch

    torch.set_num_threads(max(1, int(base["cpus_per_trial"])))
    root = logging.getLogger()
    for handler in root.handlers[:]:  # as RecBole's objective_function: a fresh log per trial
        root.removeHandler(handler)
    config_dict = {**base["config_dict"], **_plain(params), "show_progress": False}
    # The GPUs Ray gave the trial (RecBole would otherwise reset CUDA_VISIBLE_DEVICES to gpu_id).
    config_dict["gpu_id"] = (
        os.environ.get("CUDA_VISIBLE_DEVICES", "") if base["gpus_per_trial"] else ""
    )

    def report_epoch(epoch, entry, trainer):
        _report(
            {
                METRIC: entry["valid_score"],
                "epoch": epoch,
                "model_file": os.path.abspath(trainer.saved_model_file),
                **{f"valid/{k}": v for k, v in entry["valid_result"].items()},
            }
        )

    try:
        result = run(
            base["model"],
            base["dataset"],
            base["config_file_list"],
            config_dict,
            epoch_callback=report_epoch,
        )
    except SystemExit:  # how Ray ends a trial that its scheduler stops, inside report()
        Path(STOPPED_MARK).write_text("stopped by the scheduler (ASHA)\n")
        raise
    model_file = os.path.abspath(result["model_file"])
    Path("result.json").write_text(
        json.dumps(
            {k: _plain(v) for k, v in {**result, "model_file": model_file}.items()}, indent=1
        )
    )
    Path("results.md").write_text(results_table(result))
    # No "epoch" in this last report: ASHA (time_attr="epoch") ignores it.
    _report(
        {
            METRIC: result["best_valid_score"],
            "epochs_trained": result["epochs"],
            "model_file": model_file,
            **{f"test/{k}": v for k, v in result["test_result"].items()},
        }
    )


# --------------------------------------------------------------------------------------------
# the search (driver)


def search(
    model,
    dataset,
    params_file=None,
    config_file_list=None,
    config_dict=None,
    num_samples=8,
    cpus_per_trial=1,
    gpus_per_trial=0,
    max_concurrent=None,
    ray_address=None,
    resume=None,
    tune_dir="tune_results",
    points_to_evaluate=None,
    verbose=1,
    ray_init_kwargs=None,
):
    """Run (or with ``resume``, continue) a search; returns a summary dict (``rows`` best
    first, ``best``, ``best_test_result``, ``experiment_dir`` and the paths it wrote).

    ``resume`` is True (the newest experiment under ``tune_dir``) or an experiment directory.
    Ray: an initialised Ray is used as it is; else ``ray_address`` is connected to, or a local
    Ray is started (``ray_init_kwargs``), and either is shut down at the end.
    ``points_to_evaluate``: configs to try first (Ray's ``BasicVariantGenerator``).
    """
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise UsageError("--cpus_per_trial must be > 0 and --gpus_per_trial >= 0")
    if num_samples < 1 or (max_concurrent is not None and max_concurrent < 1):
        raise UsageError("--num_samples and --max_concurrent must be >= 1")
    if resume:
        experiment_dir = _experiment_to_resume(resume, tune_dir)
        base = json.loads((experiment_dir / "search.json").read_text())
        params = parse_params(base["params_text"], source=base["params_file"])
    else:
        params_file = params_file or default_params_file(model)
        params = read_params_file(params_file)
        base, experiment_dir = _new_experiment(
            model,
            dataset,
            params,
            params_file,
            config_file_list,
            config_dict,
            cpus_per_trial,
            gpus_per_trial,
            tune_dir,
        )
    import ray
    from ray import air, tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    started = False
    if not ray.is_initialized():
        kwargs = (
            dict(address=ray_address)
            if ray_address
            else dict(include_dashboard=False, log_to_driver=False, **(ray_init_kwargs or {}))
        )
        ray.init(**kwargs)
        started = True
    try:
        trainable = tune.with_resources(
            _trainable(base), {"cpu": base["cpus_per_trial"], "gpu": base["gpus_per_trial"]}
        )
        if resume:
            tuner = tune.Tuner.restore(
                str(experiment_dir), trainable=trainable, resume_unfinished=True
            )
        else:
            scheduler = ASHAScheduler(
                time_attr="epoch",
                metric=METRIC,
                mode=base["mode"],
                max_t=max(1, base["epochs"]),
                grace_period=min(max(1, base["epochs"]), max(1, base["grace_epochs"])),
                reduction_factor=2,
                stop_last_trials=False,
            )
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(params),
                tune_config=tune.TuneConfig(
                    num_samples=num_samples,
                    scheduler=scheduler,
                    search_alg=BasicVariantGenerator(
                        points_to_evaluate=points_to_evaluate,
                        max_concurrent=max_concurrent or 0,
                        random_state=base["seed"],
                    ),
                    reuse_actors=False,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=air.RunConfig(
                    name=experiment_dir.name,
                    storage_path=str(experiment_dir.parent),
                    verbose=verbose,
                    log_to_file=True,
                ),
            )
        grid = tuner.fit()
        return summarise(grid, base, params, experiment_dir)
    finally:
        if started:
            ray.shutdown()


def _trainable(base):
    def trial(params):
        run_trial(params, base)

    return trial


def _trial_name(trial):
    return f"trial_{trial.trial_id}"


def _new_experiment(
    model,
    dataset,
    params,
    params_file,
    config_file_list,
    config_dict,
    cpus_per_trial,
    gpus_per_trial,
    tune_dir,
):
    """Check the command line as a plain run would, and fix what each trial runs with."""
    from recbole.utils import get_local_time

    config_dict = _plain(dict(config_dict or {}))
    config = make_config(model, dataset, config_file_list, config_dict)  # UsageError early
    unknown = [k for k in params if k not in config.final_config_dict]
    if unknown:
        raise UsageError(
            f"{params_file}: {', '.join(unknown)} is not a config key of "
            f"{config['model']} (a typo?)"
        )
    trial_dict = dict(config_dict)
    # Trials run in their own directories (maybe on other machines): absolute paths.
    trial_dict["data_path"] = os.path.abspath(os.path.dirname(config["data_path"].rstrip("/")))
    base = {
        "model": config["model"],
        "dataset": dataset,
        "config_file_list": [os.path.abspath(f) for f in config_file_list or []],
        "config_dict": trial_dict,
        "user_config_dict": config_dict,
        "user_config_files": list(config_file_list or []),
        "params_file": str(params_file),
        "params_text": Path(params_file).read_text("utf-8"),
        "valid_metric": config["valid_metric"].lower(),
        "mode": "max" if config["valid_metric_bigger"] else "min",
        "epochs": int(config["epochs"]),
        "grace_epochs": int(config["stopping_step"]) * int(config["eval_step"]),
        "seed": int(config["seed"]),
        "cpus_per_trial": cpus_per_trial,
        "gpus_per_trial": gpus_per_trial,
    }
    name = f"{config['model']}-{dataset}-{get_local_time()}"
    experiment_dir = Path(tune_dir).resolve() / name
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / "search.json").write_text(json.dumps(base, indent=1))
    return base, experiment_dir


def _experiment_to_resume(resume, tune_dir):
    if resume is True or resume == "True":
        found = sorted(Path(tune_dir).glob("*/search.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UsageError(f"--resume: no search to resume under {tune_dir}/")
        return found[-1].parent.resolve()
    path = Path(resume).resolve()
    if not (path / "search.json").is_file():
        raise UsageError(f"--resume={resume}: not a search directory (it has no search.json)")
    return path


# --------------------------------------------------------------------------------------------
# the tables and the best config


def summarise(grid, base, params, experiment_dir):
    metric, bigger = base["valid_metric"], base["mode"] == "max"
    rows = []
    for result in grid:
        rows.append(_row(result, params, bigger))
    done = [r for r in rows if r["best_valid"] is not None]
    done.sort(key=lambda r: r["best_valid"], reverse=bigger)
    rows = done + [r for r in rows if r["best_valid"] is None]
    best = done[0] if done else None
    best_test = None
    if best is not None:
        best_test = best["test"] or _test_from_checkpoint(best["model_file"])
    paths = {
        "table_md": experiment_dir / "trials.md",
        "table_csv": experiment_dir / "trials.csv",
        "best_yaml": experiment_dir / "best.yaml",
    }
    paths["table_md"].write_text(markdown(rows, params, metric, best, best_test))
    _write_csv(paths["table_csv"], rows, params, metric)
    if best is not None:
        paths["best_yaml"].write_text(best_yaml(best, base, len(rows), experiment_dir))
    unfinished = sum(r["status"] == "unfinished" for r in rows)
    return {
        "rows": rows,
        "best": best,
        "best_test_result": best_test,
        "unfinished": unfinished,
        "experiment_dir": experiment_dir,
        "metric": metric,
        **paths,
    }


def _row(result, params, bigger=True):
    metrics = result.metrics or {}
    df = result.metrics_dataframe
    scores = [] if df is None or METRIC not in df else [float(s) for s in df[METRIC].dropna()]
    epochs = [] if df is None or "epoch" not in df else [int(e) for e in df["epoch"].dropna()]
    test = {k[5:]: v for k, v in metrics.items() if k.startswith("test/")}
    trial_dir = Path(result.path) if result.path else None
    config = result.config
    if not config and trial_dir is not None and (trial_dir / "params.json").is_file():
        config = json.loads((trial_dir / "params.json").read_text())  # a restored failed trial
    model_files = [] if df is None or "model_file" not in df else list(df["model_file"].dropna())
    if result.error is not None:
        status = "failed"
    elif test:
        status = "completed"
    elif trial_dir is not None and (trial_dir / STOPPED_MARK).is_file():
        status = "stopped early"
    else:
        status = "unfinished"
    best = (max(scores) if bigger else min(scores)) if scores else None
    return {
        "trial": trial_dir.name if trial_dir else "",
        "status": status,
        "params": {k: _plain((config or {}).get(k)) for k in params},
        "epochs": max(epochs) if epochs else (metrics.get("epochs_trained") or 0),
        "best_valid": best,
        "test": test,
        "model_file": model_files[-1] if model_files else "",
        "trial_dir": str(trial_dir) if trial_dir else "",
        "error": _one_line(result.error) if result.error is not None else "",
    }


def _one_line(error):
    """The last line of a trial's traceback, without the exception's module path."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return re.sub(r"^(?:\w+\.)+(\w+:)", r"\1", lines[-1]) if lines else type(error).__name__


def _test_from_checkpoint(model_file):
    """The test result of a trial that ASHA stopped: its best checkpoint, re-evaluated."""
    if not model_file or not os.path.isfile(model_file):
        return None
    return dict(evaluate_checkpoint(model_file, show_progress=False)["test_result"])


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(rows, params, metric, best, best_test):
    head = ["#", "trial", "status", *params, "epochs", f"valid {metric}", f"test {metric}"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for i, row in enumerate(rows, 1):
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        cells = [
            str(i),
            row["trial"],
            status.replace("|", "\\|"),
            *(_fmt(row["params"][p]) for p in params),
            str(row["epochs"]),
            "" if row["best_valid"] is None else f"{row['best_valid']:.4f}",
            f"{row['test'][metric]:.4f}" if metric in row["test"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if best is not None and best_test:
        metrics = list(best_test)
        text += (
            f"\nbest trial {best['trial']} (valid {metric} {best['best_valid']:.4f}), "
            f"test:\n\n| " + " | ".join(metrics) + " |\n" + "|---" * len(metrics) + "|\n"
            "| " + " | ".join(f"{best_test[m]:.4f}" for m in metrics) + " |\n"
        )
    return text


def _write_csv(path, rows, params, metric):
    tests = sorted({k for row in rows for k in row["test"]})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "rank",
                "trial",
                "status",
                *params,
                "epochs",
                f"valid_{metric}",
                *(f"test_{k}" for k in tests),
                "model_file",
                "trial_dir",
                "error",
            ]
        )
        for i, row in enumerate(rows, 1):
            writer.writerow(
                [
                    i,
                    row["trial"],
                    row["status"],
                    *(row["params"][p] for p in params),
                    row["epochs"],
                    "" if row["best_valid"] is None else row["best_valid"],
                    *(row["test"].get(k, "") for k in tests),
                    row["model_file"],
                    row["trial_dir"],
                    row["error"],
                ]
            )


def best_yaml(best, base, n_trials, experiment_dir):
    """The best trial's keys, then the command line's, as a RecBole config file."""
    import yaml

    files = " ".join(base["user_config_files"] + [str(experiment_dir / "best.yaml")])
    head = (
        f"# Best of {n_trials} trials of {experiment_dir.name} (trial {best['trial']}, "
        f"valid {base['valid_metric']} {best['best_valid']:.4f}).\n"
        f"# {command()} --model={base['model']} --dataset={base['dataset']} "
        f'--config_files="{files}"\n'
    )
    tuned = {k: _plain(v) for k, v in best["params"].items()}
    fixed = {k: v for k, v in base["user_config_dict"].items() if k not in tuned}
    text = head + "# tuned\n" + yaml.safe_dump(tuned, sort_keys=False)
    if fixed:
        text += "# fixed for the search\n" + yaml.safe_dump(fixed, sort_keys=False)
    return text
