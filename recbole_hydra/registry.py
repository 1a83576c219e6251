"""Which model, dataset class and trainer a model name means, for plugin and RecBole models.

RecBole resolves models by name inside ``recbole.model`` only, so ``run_recbole(model=<class>)``
and ``load_data_and_model`` cannot find a plugin model, and its ``create_dataset`` cannot pick a
plugin dataset class. Here a name is looked up among the plugin models first, then in RecBole;
plugin models get ``GenerativeSequentialDataset`` (or their own ``dataset_class``) and
``GenerativeTrainer`` (or the trainer listed for them below), RecBole's models exactly what
``run_recbole`` would give them.
"""

import importlib
from pathlib import Path

from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer
from recbole.utils import init_seed

from recbole_hydra.data.dataset import GenerativeSequentialDataset
from recbole_hydra.errors import UsageError
from recbole_hydra.trainer import GenerativeTrainer, MultiDomainTrainer

#: plugin model name -> the module that defines it (imported on first use)
PLUGIN_MODELS = {
    "Hydra": "recbole_hydra.model.hydra",
    "HydraMD": "recbole_hydra.model.hydra_md",
    "Mamba4Rec": "recbole_hydra.model.mamba4rec",
    "HSTU": "recbole_hydra.model.hstu",
    "SASRecGen": "recbole_hydra.model.sasrec_gen",
}

#: plugin models whose trainer is not ``GenerativeTrainer``
PLUGIN_TRAINERS = {"HydraMD": MultiDomainTrainer}


def model_name(model):
    """The name of ``model``, a name or a model class."""
    return model if isinstance(model, str) else model.__name__


def is_plugin_model(model):
    return model_name(model) in PLUGIN_MODELS


def recbole_model_names():
    """Names of RecBole's built-in models, lower case, from its model files (importing none of
    them: ``recbole.utils.get_model`` imports ``exlib_recommender``, which needs lightgbm)."""
    root = Path(importlib.import_module("recbole.model").__file__).parent
    return {f.stem for f in root.glob("*_recommender/*.py") if not f.stem.startswith("_")}


def get_model(name):
    """The model class called ``name``: a plugin model, else a RecBole model (a class is
    returned as it is)."""
    if not isinstance(name, str):
        return name
    if name in PLUGIN_MODELS:
        return getattr(importlib.import_module(PLUGIN_MODELS[name]), name)
    if name.lower() not in recbole_model_names():
        raise UsageError(
            f"unknown model {name!r}: use one of {', '.join(PLUGIN_MODELS)} or a RecBole model "
            "name such as SASRec"
        )
    try:
        return recbole_get_model(name)
    except ImportError as err:
        raise UsageError(f"model {name!r} needs a package that is not installed: {err}") from None


def create_dataset(config):
    """RecBole's ``create_dataset``, with the generative dataset for plugin models (or the
    model's own ``dataset_class``, e.g. HydraMD's multi-domain dataset)."""
    if is_plugin_model(config["model"]):
        model = get_model(config["model"])
        return getattr(model, "dataset_class", GenerativeSequentialDataset)(config)
    return recbole_create_dataset(config)


def get_trainer(config):
    """The trainer class for ``config["model"]``."""
    name = config["model"]
    if is_plugin_model(name):
        return PLUGIN_TRAINERS.get(name, GenerativeTrainer)
    return recbole_get_trainer(config["MODEL_TYPE"], name)


def build_model(config, train_dataset):
    """``config["model"]`` built on ``train_dataset`` and moved to ``config["device"]``, seeded
    as RecBole seeds it (per process in a process group)."""
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    return get_model(config["model"])(config, train_dataset).to(config["device"])
