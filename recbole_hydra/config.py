"""A RecBole ``Config`` for a plugin or RecBole model, built and checked once.

The yaml files are read in RecBole's order: ``properties/overall.yaml`` (the protocol shared by
every model), ``properties/<Model>.yaml``, ``properties/dataset/<dataset>.yaml``, then the
user's files, then ``config_dict``. ``check_config`` then fails early (every key's type and
range: ``config_schema``), in one line, on what would otherwise fail deep inside RecBole;
``check_dataset`` does the same for what can only be seen once the data is loaded.
"""

import os
from pathlib import Path

from recbole.config import Config
from recbole.utils import InputType

from recbole_hydra import config_schema
from recbole_hydra.data.catalogue import missing_dataset_hint
from recbole_hydra.data.multidomain import domain_sources
from recbole_hydra.errors import UsageError
from recbole_hydra.registry import get_model

#: the package's yaml files (shipped in the wheel; ``properties/`` in a checkout links here)
PROPERTIES = Path(__file__).resolve().parent / "properties"

#: RecBole 1.2.1's default ``train_neg_sample_args``, which ``properties/overall.yaml`` turns off
#: (the models here sample their own negatives, and RecBole refuses CE models with it on).
RECBOLE_NEG_SAMPLING = {
    "distribution": "uniform",
    "sample_num": 1,
    "alpha": 1.0,
    "dynamic": False,
    "candidate_num": 0,
}


def config_files(model_name, dataset, config_file_list=None):
    """The package's yaml for this model and dataset (when it has one), then the user's files."""
    files = [
        PROPERTIES / "overall.yaml",
        PROPERTIES / f"{model_name}.yaml",
        PROPERTIES / "dataset" / f"{dataset}.yaml",
    ]
    return [str(f) for f in files if f.exists()] + list(config_file_list or [])


def make_config(model, dataset, config_file_list=None, config_dict=None):
    """The checked ``Config`` of ``model`` (a name or class) on ``dataset``."""
    model_class = get_model(model)
    for f in config_file_list or []:
        if not os.path.isfile(f):
            raise UsageError(f"config file {f} does not exist")
    config = Config(
        model=model_class,
        dataset=dataset,
        config_file_list=config_files(model_class.__name__, dataset, config_file_list),
        config_dict=config_dict,
    )
    sampling = config["train_neg_sample_args"] or {}
    pairwise = getattr(model_class, "input_type", None) == InputType.PAIRWISE
    if pairwise and sampling.get("distribution", "none") == "none":
        # A pairwise RecBole model (BPR, ...) needs RecBole's negative sampling back (in the form
        # RecBole's Config normalises it to).
        config["train_neg_sample_args"] = dict(RECBOLE_NEG_SAMPLING)
    check_config(config)
    return config


def check_config(config):
    """Fail early, in one line, on what would otherwise fail deep inside RecBole."""
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    if max_len is not None and int(max_len) < 1:
        raise UsageError(f"MAX_ITEM_LIST_LENGTH must be >= 1, got {max_len}")
    config_schema.validate(config)  # every key's type and range, and the sizes that must fit
    _check_dataset_files(config)


def _check_dataset_files(config):
    dataset, data_path = config["dataset"], config["data_path"]
    inter = os.path.join(data_path, f"{dataset}.inter")
    if not os.path.isfile(inter) and config["domains"]:  # single-domain datasets merged (HydraMD)
        domain_sources(config)  # one-line error when a domain's dataset is missing
        return
    if not os.path.isfile(inter):
        hint = missing_dataset_hint(dataset, data_path)  # what to get and the command to run
        if hint is not None:
            raise UsageError(hint)
        raise UsageError(
            f"dataset {dataset!r} has no atomic files: RecBole looks for {inter}. Put "
            f"{dataset}.inter (and .item/.user if any) in {data_path}, or set --data_path=DIR"
        )
    with open(inter, encoding="utf-8") as f:
        header = [col.split(":")[0] for col in f.readline().rstrip("\n").split("\t")]
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD"):
        if config[key] and config[key] not in header:
            raise UsageError(
                f"{inter} has no {config[key]!r} column (its columns: {', '.join(header)}); "
                f"sequential models need it: add the column or set {key}"
            )
    load_col = config["load_col"]
    order = (config["eval_args"] or {}).get("order")
    time_field = config["TIME_FIELD"]
    loaded = (load_col.get("inter") or []) if isinstance(load_col, dict) else None
    if loaded is not None and order == "TO" and time_field and time_field not in loaded:
        columns = [c for c in loaded if c != time_field] + [time_field]
        raise UsageError(
            f"the split orders interactions by time, but load_col loads only {loaded} "
            f"of {dataset}.inter: load {time_field!r} too, e.g. --load_col=\"{{'inter': "
            f'{columns}}}" or load_col in a yaml (properties/dataset/{dataset}.yaml)'
        )


def check_dataset(config, dataset):
    """What can only be checked once the data is loaded."""
    candidates = dataset.item_num - 1  # the padding item is never ranked
    too_deep = [k for k in (config["topk"] or []) if k > candidates]
    if too_deep:
        fits = [k for k in config["topk"] if k <= candidates] or [min(10, candidates)]
        raise UsageError(
            f"topk {too_deep} asks for more items than {config['dataset']} has ({candidates}): "
            f'set e.g. --topk="{fits}" (and valid_metric to one of its cut-offs)'
        )
