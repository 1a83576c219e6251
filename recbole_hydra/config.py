"""A RecBole ``Config`` for a plugin or RecBole model, built and checked once.

The yaml files are read in RecBole's order: ``properties/overall.yaml`` (the protocol shared by
every model), ``properties/<Model>.yaml``, ``properties/dataset/<dataset>.yaml``, then the
user's files, then ``config_dict``. RecBole's ``Config`` also reads ``sys.argv``; here it does
not (the command line is parsed once, by the CLI, into ``config_dict``). ``check_config`` then
fails early (every key's type and range: ``config_schema``; the atomic files:
``data.atomic``), in one line, on what would otherwise fail deep inside RecBole or give a wrong
result without a word; ``check_dataset`` does the same for what can only be seen once the data
is loaded. A key that neither RecBole nor this package knows is a warning naming the nearest
known one (a typo would otherwise change nothing, silently).
"""

import contextlib
import difflib
import functools
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np
import recbole
import yaml
from recbole.config import Config
from recbole.evaluator import metric_types
from recbole.utils import (
    EvaluatorType,
    InputType,
    ModelType,
    dataset_arguments,
    evaluation_arguments,
    general_arguments,
    training_arguments,
)

from recbole_hydra import config_schema
from recbole_hydra.data import atomic
from recbole_hydra.data.catalogue import missing_dataset_hint
from recbole_hydra.data.multidomain import domain_sources
from recbole_hydra.errors import UsageError
from recbole_hydra.registry import get_model, is_plugin_model

#: the package's yaml files (shipped in the wheel; ``properties/`` in a checkout links here)
PROPERTIES = Path(__file__).resolve().parent / "properties"

logger = logging.getLogger(__name__)

#: RecBole 1.2.1's default ``train_neg_sample_args``, which ``properties/overall.yaml`` turns off
#: (the models here sample their own negatives, and RecBole refuses CE models with it on).
RECBOLE_NEG_SAMPLING = {
    "distribution": "uniform",
    "sample_num": 1,
    "alpha": 1.0,
    "dynamic": False,
    "candidate_num": 0,
}

#: below this many users with a test example, ``check_dataset`` warns that metrics are noise
FEW_TEST_USERS = 100


def config_files(model_name, dataset, config_file_list=None):
    """The package's yaml for this model and dataset (when it has one), then the user's files."""
    files = [
        PROPERTIES / "overall.yaml",
        PROPERTIES / f"{model_name}.yaml",
        PROPERTIES / "dataset" / f"{dataset}.yaml",
    ]
    return [str(f) for f in files if f.exists()] + list(config_file_list or [])


def model_yaml_defaults(model_name):
    """The keys of the package's yaml for ``model_name``, read as RecBole reads them (``{}``
    for a model the package has no yaml for)."""
    path = PROPERTIES / f"{model_name}.yaml"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return yaml.load(f.read(), Loader=Config._build_yaml_loader(None)) or {}


def make_config(model, dataset, config_file_list=None, config_dict=None):
    """The checked ``Config`` of ``model`` (a name or class) on ``dataset``."""
    model_class = get_model(model)
    file_keys = {f: read_config_file(f) for f in config_file_list or []}
    with _without_command_line():
        try:
            config = Config(
                model=model_class,
                dataset=dataset,
                config_file_list=config_files(model_class.__name__, dataset, config_file_list),
                config_dict=config_dict,
            )
        except NotImplementedError as err:  # RecBole's two: an unknown or a value metric
            raise UsageError(_metric_error(err)) from None
    warn_unknown_keys(config_dict, file_keys)
    sampling = config["train_neg_sample_args"] or {}
    pairwise = getattr(model_class, "input_type", None) == InputType.PAIRWISE
    if pairwise and sampling.get("distribution", "none") == "none":
        # A pairwise RecBole model (BPR, ...) needs RecBole's negative sampling back (in the form
        # RecBole's Config normalises it to).
        config["train_neg_sample_args"] = dict(RECBOLE_NEG_SAMPLING)
    _load_item_text(config)
    check_config(config)
    return config


def _metric_error(err):
    if not str(err).startswith("There is no metric named"):
        return (
            "metrics mixes value metrics (RMSE, MAE, AUC, LogLoss ...) with full-ranking "
            "evaluation: give ranking metrics only, e.g. --metrics=\"['Recall', 'NDCG']\""
        )
    name = str(err).rpartition(" ")[2].strip("'")
    near = difflib.get_close_matches(name.lower(), list(metric_types), n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    return f"unknown metric {name!r} in metrics: {hint}RecBole's are " + ", ".join(
        sorted(metric_types)
    )


@contextlib.contextmanager
def _without_command_line():
    """RecBole's ``Config`` reads ``--key=value`` from ``sys.argv`` itself (and fails on a key
    given twice); the CLI has parsed them into ``config_dict`` already, and a library caller's
    ``sys.argv`` is not its config: let ``Config`` see the program name alone."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def read_config_file(path):
    """The keys of the user's yaml file ``path``, read as RecBole reads it. ``UsageError`` when
    it does not exist, is not yaml, or holds no ``key: value`` lines."""
    if not os.path.isfile(path):
        raise UsageError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f.read(), Loader=yaml.FullLoader)
    except UnicodeDecodeError as err:
        raise UsageError(
            f"config file {path} is not UTF-8 text ({err.reason}): save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        problem += _yaml_where(getattr(err, "problem_mark", None))
        context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and context_mark:  # e.g. where an unclosed [ opened
            problem += f" ({context}{_yaml_where(context_mark)})"
        raise UsageError(f"config file {path} is not valid yaml: {problem}: fix it") from None
    if content is None:
        raise UsageError(
            f"config file {path} is empty (or only comments): write key: value lines in it, "
            "or leave it out of --config_files"
        )
    if not isinstance(content, dict):
        raise UsageError(
            f"config file {path} holds a {type(content).__name__}, not key: value lines: write "
            "one key: value per line (e.g. epochs: 10)"
        )
    return list(content)


def _yaml_where(mark):
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


_YAML_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", re.MULTILINE)
_CONFIG_KEY = re.compile(r"""config\[["']([A-Za-z_][A-Za-z0-9_]*)["']\]""")


@functools.lru_cache(maxsize=None)
def known_keys():
    """Every config key that RecBole or this package reads or sets: the top-level keys of
    RecBole's yaml files (overall, every model, dataset and quick-start file) and of this
    package's, ``config_schema``'s keys, RecBole's argument lists, and every ``config["key"]``
    in RecBole's and this package's source (the keys they set themselves, or read without a
    default in a yaml, such as ``encoding`` or ``time_budget_s``)."""
    recbole_root = Path(recbole.__file__).resolve().parent
    keys = set(general_arguments + training_arguments + evaluation_arguments + dataset_arguments)
    for folder in (recbole_root / "properties", PROPERTIES):
        for f in sorted(folder.rglob("*.yaml")):
            keys.update(_YAML_KEY.findall(f.read_text(encoding="utf-8")))
    for folder in (recbole_root, Path(__file__).resolve().parent):
        for f in sorted(folder.rglob("*.py")):
            keys.update(_CONFIG_KEY.findall(f.read_text(encoding="utf-8")))
    for rules in (*config_schema.MODEL_KEYS.values(), config_schema.RECBOLE_MODEL_KEYS):
        keys.update(rules)
    return frozenset(keys)


def warn_unknown_keys(config_dict=None, file_keys=None):
    """Warn (one line each) about every key of ``config_dict`` and of the user's files
    (``{file: [keys]}``) that no part of RecBole or this package reads, naming the nearest
    known key: a typo such as ``hiden_size`` would otherwise change nothing, silently."""
    known = known_keys()
    by_case = {key.lower(): key for key in known}
    given = [(key, "") for key in config_dict or {}]
    given += [(key, f" in {f}") for f, keys in (file_keys or {}).items() for key in keys]
    for key, where in given:
        if not isinstance(key, str) or key in known:
            continue
        nearest = [by_case[key.lower()]] if key.lower() in by_case else []
        nearest = nearest or difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {nearest[0]!r}?" if nearest else "check its spelling"
        logger.warning(
            f"unknown config key {key!r}{where}: neither RecBole nor recbole-hydra reads it, so "
            f"it changes nothing; {hint}"
        )


def _load_item_text(config):
    """``item_model: llm`` reads item text from the ``.item`` file, which RecBole loads only when
    ``load_col`` names its columns: when ``load_col`` names none of the ``.item`` file, load the
    id and the text fields (``item_text_fields``, or by default every column but the float ones
    that ``normalize_all``/``normalize_field`` rescale into numbers that mean nothing as
    text)."""
    load_col = config["load_col"]
    if config["item_model"] != "llm" or not isinstance(load_col, dict) or "item" in load_col:
        return
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        return  # the item LLM's own message says what to provide
    iid, wanted = config["ITEM_ID_FIELD"], config["item_text_fields"]
    header = atomic.read_header(path, **_file_format(config, "item"))
    if wanted is not None:
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        fields = [name for name in header if name in wanted and name != iid]
    else:
        rescaled = config["normalize_all"] or config["normalize_field"] or []
        fields = [
            name
            for name, ftype in header.items()
            if name != iid and not ("float" in ftype and (rescaled is True or name in rescaled))
        ]
    config["load_col"] = {**load_col, "item": [iid] + fields}


def check_config(config):
    """Fail early, in one line, on what would otherwise fail deep inside RecBole."""
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    if max_len is not None and int(max_len) < 1:
        raise UsageError(f"MAX_ITEM_LIST_LENGTH must be >= 1, got {max_len}")
    config_schema.validate(config)  # every key's type and range, and the sizes that must fit
    _check_valid_metric(config)
    _check_dataset_files(config)


def _check_valid_metric(config):
    """The trainer picks the best epoch by ``valid_metric``, read from the evaluation of
    ``metrics`` at ``topk``: both must be there (else it fails after a whole epoch)."""
    valid_metric, metrics, topk = config["valid_metric"], config["metrics"], config["topk"]
    name, at, cutoff = str(valid_metric).partition("@")
    by_name = {m.lower(): m for m in metrics}
    if name.lower() not in by_name:
        suggestion = f"{metrics[0]}@{cutoff}" if at else metrics[0]
        raise UsageError(
            f"valid_metric {valid_metric} is not among metrics {metrics}: add {name} to metrics "
            f"or set e.g. --valid_metric={suggestion}"
        )
    if metric_types.get(name.lower()) != EvaluatorType.RANKING:
        return
    if not at or not cutoff.isdigit() or int(cutoff) not in topk:
        given = f"its cut-off {cutoff} is not in topk {topk}" if at else "it has no @cut-off"
        options = f"add {cutoff} to topk, or " if at and cutoff.isdigit() else ""
        raise UsageError(
            f"valid_metric {valid_metric} ranks the top k items, but {given}: {options}set "
            f"e.g. --valid_metric={by_name[name.lower()]}@{topk[0]}"
        )


def _loaded_columns(config, source):
    """The columns RecBole loads from the ``source`` file (inter, item, user): a set, or None
    for all of them (RecBole's ``_get_load_and_unload_col``)."""
    load_col = config["load_col"]
    if load_col is None:
        return None
    if source not in load_col:
        return set()
    return None if load_col[source] == "*" else set(load_col[source])


def _file_format(config, source):
    """How the ``source`` file (inter, item, user) is read and what its messages suggest: the
    separator, the encoding, the types of the config's fields, an example header."""
    uid, iid, time_field = (config[k] for k in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD"))
    example = {"inter": [uid, iid, time_field], "item": [iid], "user": [uid]}[source]
    types = {uid: "token", iid: "token", time_field: "float", config["RATING_FIELD"]: "float"}
    return {
        "sep": config["field_separator"],
        "encoding": config["encoding"] or "utf-8",
        "types": {k: v for k, v in types.items() if k},
        "example": [f for f in example if f],
    }


def _check_atomic_file(config, path, source, required):
    """``atomic.check_file`` of the ``source`` file at ``path``; ``required``: the columns whose
    cells must be filled in (where loaded)."""
    loaded = _loaded_columns(config, source)
    uid, iid, time_field = (config[k] for k in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD"))
    time_loaded = source == "inter" and time_field and (loaded is None or time_field in loaded)
    return atomic.check_file(
        path,
        **_file_format(config, source),
        ids=[f for f in (uid, iid) if f],
        time=time_field if time_loaded else None,
        required=[f for f in required if f and (loaded is None or f in loaded)],
    )


def _check_dataset_files(config):
    dataset, data_path = config["dataset"], config["data_path"]
    inter = os.path.join(data_path, f"{dataset}.inter")
    required = [config[key] for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD")]
    if not os.path.isfile(inter) and config["domains"]:  # single-domain datasets merged (HydraMD)
        for name, folder in domain_sources(config):  # one-line error when one is missing
            _check_atomic_file(config, os.path.join(folder, f"{name}.inter"), "inter", required)
        return
    if not os.path.isfile(inter):
        hint = missing_dataset_hint(dataset, data_path)  # what to get and the command to run
        if hint is not None:
            raise UsageError(hint)
        raise UsageError(
            f"dataset {dataset!r} has no atomic files: RecBole looks for {inter}. Put "
            f"{dataset}.inter (and .item/.user if any) in {data_path}, or set --data_path=DIR"
        )
    header = atomic.read_header(inter, **_file_format(config, "inter"))
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD"):
        if config[key] and config[key] not in header:
            raise UsageError(
                f"{inter} has no {config[key]!r} column (its columns: {', '.join(header)}); "
                f"sequential models need it: add the column or set {key}"
            )
    order = (config["eval_args"] or {}).get("order")
    time_field = config["TIME_FIELD"]
    loaded = _loaded_columns(config, "inter")
    if loaded is not None and order == "TO" and time_field and time_field not in loaded:
        listed = config["load_col"].get("inter") or []
        columns = [c for c in listed if c != time_field] + [time_field]
        raise UsageError(
            f"the split orders interactions by time, but load_col loads only {listed} "
            f"of {dataset}.inter: load {time_field!r} too, e.g. --load_col=\"{{'inter': "
            f'{columns}}}" or load_col in a yaml (properties/dataset/{dataset}.yaml)'
        )
    _check_atomic_file(config, inter, "inter", required)
    for source, key in (("item", "ITEM_ID_FIELD"), ("user", "USER_ID_FIELD")):
        path = os.path.join(data_path, f"{dataset}.{source}")
        if not os.path.isfile(path) or _loaded_columns(config, source) == set():
            continue
        if config[key] not in _check_atomic_file(config, path, source, [config[key]]):
            raise UsageError(
                f"{path} has no {config[key]!r} column: RecBole joins a .{source} file to the "
                f"interactions by it: add it ({config[key]}:token) or set {key}"
            )


def check_dataset(config, dataset):
    """What can only be checked once the data is loaded (and filtered, before the split)."""
    name = config["dataset"]
    candidates = dataset.item_num - 1  # the padding item is never ranked
    too_deep = [k for k in (config["topk"] or []) if k > candidates]
    if too_deep:
        fits = [k for k in config["topk"] if k <= candidates] or [min(10, candidates)]
        raise UsageError(
            f"topk {too_deep} asks for more items than {name} has ({candidates}): "
            f'set e.g. --topk="{fits}" (and valid_metric to one of its cut-offs)'
        )
    _check_leave_one_out(config, dataset)
    negatives = config["num_negatives"]
    sampled = is_plugin_model(config["model"]) and config["loss_type"] == "InfoNCE"
    if sampled and negatives > candidates:
        raise UsageError(
            f"num_negatives ({negatives}) is more than the {candidates} items of {name} that "
            f"negatives are drawn from: set --num_negatives={candidates} or less (or "
            "--loss_type=CE, the softmax over every item)"
        )


def _check_leave_one_out(config, dataset):
    """RecBole's leave-one-out (``LS``, grouped by user) takes each user's last example for the
    test split and, with ``valid_and_test``, the one before for the valid split, but never a
    user's only example: a user needs 2 + that many examples to be in every split (a sequential
    model's examples are the prefixes of the history, one fewer than its interactions). No user
    with enough is an empty split (a traceback after training); few of them, noise."""
    args = config["eval_args"] or {}
    split = args.get("split") or {}
    if "LS" not in split or args.get("group_by") != "user":
        return
    held_out = 2 if split["LS"] == "valid_and_test" else 1
    sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    uids = np.asarray(dataset.inter_feat[dataset.uid_field])
    per_user = np.bincount(uids)[1:]  # interactions per user (id 0: padding)
    per_user = per_user[per_user > 0]  # users of the .user file only have none
    needed = held_out + 1 + int(sequential)  # interactions for a train, (valid,) test example
    if not (per_user >= needed).any():
        splits = "a train, a valid and a test" if held_out == 2 else "a train and a test"
        most = int(per_user.max()) if len(per_user) else 0
        raise UsageError(
            f"{config['dataset']}: leave-one-out needs users with >= {needed} interactions "
            f"({splits} example each), but none of its {len(per_user)} users has more than "
            f"{most}: add interactions ({needed} or more per user)"
        )
    tested = int((per_user >= 2 + int(sequential)).sum())
    users = len(per_user)
    if tested < FEW_TEST_USERS:
        logger.warning(
            f"{config['dataset']}: only {tested} of its {users} users have a test example: "
            f"metrics averaged over fewer than {FEW_TEST_USERS} users are not meaningful"
        )
