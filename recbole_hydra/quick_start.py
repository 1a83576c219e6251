"""``run``: RecBole's ``run_recbole`` for plugin models and RecBole's own models alike.

RecBole resolves models by name inside ``recbole.model`` only, so ``run_recbole(model=<class>)``
and ``load_data_and_model`` cannot find a plugin model, and its ``create_dataset`` cannot pick a
plugin dataset class. Here the name is looked up in the plugin registry first, then in RecBole;
plugin models get ``GenerativeSequentialDataset`` and ``GenerativeTrainer``, RecBole's models get
exactly what ``run_recbole`` would give them.
"""

import logging
import os
import sys
import time
from logging import getLogger
from pathlib import Path

import torch
from recbole.config import Config
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer
from recbole.utils import InputType, init_logger, init_seed

from recbole_hydra import compat, config_schema
from recbole_hydra.data.amazon2023 import missing_dataset_hint
from recbole_hydra.data.dataset import GenerativeSequentialDataset
from recbole_hydra.errors import UsageError
from recbole_hydra.model import PLUGIN_MODELS, get_plugin_model
from recbole_hydra.trainer import GenerativeTrainer, MultiDomainTrainer

PROPERTIES = Path(__file__).resolve().parent.parent / "properties"


def recbole_model_names():
    """Names of RecBole's built-in models, from its model files (importing none of them:
    ``recbole.utils.get_model`` imports ``exlib_recommender``, which needs lightgbm/xgboost)."""
    root = Path(__import__("recbole.model").model.__file__).parent
    return {f.stem for f in root.glob("*_recommender/*.py") if not f.stem.startswith("_")}


def get_model(name):
    """The model class called ``name``: a plugin model, else a RecBole model."""
    if not isinstance(name, str):
        return name
    plugin = get_plugin_model(name)
    if plugin is not None:
        return plugin
    if name.lower() not in recbole_model_names():
        raise UsageError(
            f"unknown model {name!r}: use one of {', '.join(PLUGIN_MODELS)} or a RecBole model "
            "name such as SASRec"
        )
    try:
        return recbole_get_model(name)
    except ImportError as err:
        raise UsageError(f"model {name!r} needs a package that is not installed: {err}") from None


def is_plugin_model(model):
    name = model if isinstance(model, str) else model.__name__
    return name in PLUGIN_MODELS


def create_dataset(config):
    """RecBole's ``create_dataset``, with the generative dataset for plugin models (or the
    model's own ``dataset_class``, e.g. HydraMD's multi-domain dataset)."""
    if is_plugin_model(config["model"]):
        return getattr(get_model(config["model"]), "dataset_class", GenerativeSequentialDataset)(config)
    return recbole_create_dataset(config)


def get_trainer(config):
    if is_plugin_model(config["model"]):
        return MultiDomainTrainer if config["model"] == "HydraMD" else GenerativeTrainer
    return recbole_get_trainer(config["MODEL_TYPE"], config["model"])


def config_files(model_name, dataset, config_file_list=None):
    """The package's yaml for this model and dataset (when it has one), then the user's files."""
    files = [PROPERTIES / "overall.yaml", PROPERTIES / f"{model_name}.yaml",
             PROPERTIES / "dataset" / f"{dataset}.yaml"]
    return [str(f) for f in files if f.exists()] + list(config_file_list or [])


#: RecBole 1.2.1's default ``train_neg_sample_args``, which ``properties/overall.yaml`` turns off
#: (the models here sample their own negatives, and RecBole refuses CE models with it on).
RECBOLE_NEG_SAMPLING = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                        "candidate_num": 0}


def make_config(model, dataset, config_file_list=None, config_dict=None):
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
    if getattr(model_class, "input_type", None) == InputType.PAIRWISE and sampling.get("distribution", "none") == "none":
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
    dataset, data_path = config["dataset"], config["data_path"]
    inter = os.path.join(data_path, f"{dataset}.inter")
    if not os.path.isfile(inter) and config["domains"]:  # merging single-domain datasets (HydraMD)
        from recbole_hydra.data.multidomain import domain_sources

        domain_sources(config)  # one-line error when a domain's dataset is missing
        return
    if not os.path.isfile(inter):
        hint = missing_dataset_hint(dataset, data_path)  # raw files to get and the converter command
        if hint is not None:
            raise UsageError(hint)
        raise UsageError(
            f"dataset {dataset!r} has no atomic files: RecBole looks for {inter}. Put "
            f"{dataset}.inter (and .item/.user if any) in {data_path}, set --data_path=DIR, or "
            "for ml-1m run: python -m recbole_hydra.data.fetch ml-1m"
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
    if isinstance(load_col, dict) and order == "TO" and time_field and time_field not in (load_col.get("inter") or []):
        columns = [c for c in (load_col.get("inter") or []) if c != time_field] + [time_field]
        raise UsageError(
            f"the split orders interactions by time, but load_col loads only {load_col.get('inter')} "
            f"of {dataset}.inter: load {time_field!r} too, e.g. --load_col=\"{{'inter': {columns}}}\" "
            f"or load_col in a yaml (properties/dataset/{dataset}.yaml)"
        )


def check_dataset(config, dataset):
    """What can only be checked once the data is loaded."""
    candidates = dataset.item_num - 1  # the padding item is never ranked
    too_deep = [k for k in (config["topk"] or []) if k > candidates]
    if too_deep:
        fits = [k for k in config["topk"] if k <= candidates] or [min(10, candidates)]
        raise UsageError(
            f"topk {too_deep} asks for more items than {config['dataset']} has ({candidates}): "
            f"set e.g. --topk=\"{fits}\" (and valid_metric to one of its cut-offs)"
        )


def load_model(config, train_dataset):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    return get_model(config["model"])(config, train_dataset).to(config["device"])


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, epoch_callback=None,
        nproc=1, world_size=-1, ip="localhost", port=5678, group_offset=0):
    """Train and test ``model`` (a name or class) on ``dataset``; returns RecBole's result dict
    plus ``model_file``, ``n_params``, ``epochs`` and ``history`` (per epoch: training seconds,
    valid score and wall clock since training started).

    ``epoch_callback(epoch, entry, trainer)``, if given, is called after each validation with the
    number of epochs trained so far, that epoch's history entry and the trainer (the tuner reports
    to Ray Tune from it). ``nproc``/``world_size``/``ip``/``port``/``group_offset`` are RecBole's
    multi-process arguments: with ``nproc != 1`` or ``world_size > 0`` the run is spread over
    processes (``recbole_hydra.distributed``) and this returns rank 0's result."""
    if nproc != 1 or world_size > 0:
        from recbole_hydra import distributed

        return distributed.run(model, dataset, config_file_list, config_dict, saved=saved,
                               nproc=nproc, world_size=world_size, ip=ip, port=port,
                               group_offset=group_offset)
    config = make_config(model, dataset, config_file_list, config_dict)
    return train_and_test(config, saved=saved, epoch_callback=epoch_callback)


def train_and_test(config, saved=True, epoch_callback=None):
    """``run`` from a built config (single-process, or one rank of a process group)."""
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    check_dataset(config, dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = load_model(config, train_data._dataset)
    logger.info(model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    trainer = get_trainer(config)(config, model)
    if not config["single_spec"]:
        compat.share_checkpoint(trainer)
    history = _record_history(trainer, config["time_budget_s"], epoch_callback,
                              distributed=not config["single_spec"])
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    logger.info(f"best valid : {best_valid_result}")
    logger.info(f"test result: {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "model_file": trainer.saved_model_file if saved else None,
        "n_params": n_params,
        "epochs": len(history),
        "history": history,
    }


class _BudgetedBatches:
    """A RecBole dataloader that stops yielding batches once ``out_of_time()`` says so (after at
    least one batch); every other attribute is the dataloader's own."""

    def __init__(self, loader, out_of_time, stopped):
        self._loader, self._out_of_time, self._stopped = loader, out_of_time, stopped

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for index, batch in enumerate(self._loader):
            if index and self._out_of_time():
                self._stopped.append(index)
                return
            yield batch


def _record_history(trainer, time_budget_s=None, epoch_callback=None, distributed=False):
    """Time each training epoch and note each validation, without touching RecBole's loop.

    With ``time_budget_s``, training stops once the budget is spent (after at least one batch): in
    a single process between two batches (an epoch of a slow model on a large dataset can outlast
    any budget; the cut epoch is validated as a whole one is, and its history entry says how many
    batches it trained), in a process group at the end of an epoch (the ranks agree on it: the
    budget is spent when it is spent on any rank, so that all stop at the same step). The
    validation after that reports the worst score with patience 0, so RecBole's own early
    stopping ends the run and keeps the best checkpoint it saved. ``epoch_callback(epoch, entry,
    trainer)`` is called after each validation.
    """
    history, start, over = [], [], []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def budget_spent():
        spent = time.perf_counter() - start[0] > time_budget_s
        if distributed:
            flag = torch.tensor([float(spent)], device=trainer.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            spent = bool(flag.item())
        return spent

    def timed_train_epoch(train_data, *args, **kwargs):
        if not start:
            start.append(time.perf_counter())
        if time_budget_s is not None and (over or (history and budget_spent())):  # the first always starts
            over.append(True)
            return 0.0
        stopped = []
        if time_budget_s is not None and not distributed:
            train_data = _BudgetedBatches(train_data, budget_spent, stopped)
        t0 = time.perf_counter()
        loss = train_epoch(train_data, *args, **kwargs)
        history.append({"train_s": time.perf_counter() - t0})
        if stopped:  # the budget ran out inside this epoch: validate it, then stop
            history[-1].update(batches=stopped[0], batches_per_epoch=len(train_data))
            over.append(True)
        return loss

    def noted_valid_epoch(*args, **kwargs):
        cut_epoch_unvalidated = bool(history) and "batches" in history[-1] and "valid_score" not in history[-1]
        if over and not cut_epoch_unvalidated:
            trainer.stopping_step = 0
            worst = -float("inf") if trainer.valid_metric_bigger else float("inf")
            return worst, history[-1].get("valid_result", {}) if history else {}
        score, result = valid_epoch(*args, **kwargs)
        if history:
            history[-1].update(valid_score=score, valid_result=dict(result),
                               wall_s=time.perf_counter() - start[0])
            if epoch_callback is not None:
                epoch_callback(len(history), history[-1], trainer)
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, noted_valid_epoch
    return history


def evaluate_checkpoint(model_file, show_progress=True):
    """Re-evaluate a saved checkpoint on its own valid and test split."""
    if not os.path.isfile(model_file):
        raise UsageError(f"checkpoint {model_file} does not exist")
    checkpoint = compat.load_recbole_checkpoint(model_file, map_location="cpu")
    config = checkpoint["config"]
    config["device"] = torch.device("cpu") if not torch.cuda.is_available() else config["device"]
    init_logger(config)
    logging.getLogger().info(f"evaluating {model_file}")
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = load_model(config, train_data._dataset)
    trainer = get_trainer(config)(config, model)
    valid_result = trainer.evaluate(valid_data, load_best_model=True, model_file=model_file,
                                    show_progress=show_progress)
    test_result = trainer.evaluate(test_data, load_best_model=True, model_file=model_file,
                                   show_progress=show_progress)
    return {"best_valid_result": valid_result, "test_result": test_result, "model_file": model_file}


compat.install(get_model=get_model, create_dataset=create_dataset)
