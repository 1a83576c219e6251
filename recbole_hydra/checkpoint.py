"""Checkpoints: the one place that writes and reads them.

The format. A checkpoint is a ``torch.save`` of plain data only (tensors, numbers, strings, lists,
dicts), so that ``torch.load(path, weights_only=True)`` reads it and loading it runs no code:

    {"format": "recbole-hydra/1",
     "config": the run's RecBole config as plain data (``config_to_plain``),
     "dataset": the fingerprint of the data it was trained on (``dataset_fingerprint``),
     "epoch", "best_valid_score", "state_dict", "other_parameter": the best model (RecBole's),
     "resume": the newest training state or None}

RecBole's own trainer writes a pickle of its ``Config`` object instead, which only an unpickler
that runs code can read. ``compat`` points RecBole's ``Trainer`` at the functions here, so every
trainer (RecBole's, the package's, ``run_recbole``'s) writes this format: under a name unique to
the run (``checkpoint_name``), into a temporary file renamed over the old one (a kill during the
save leaves the previous checkpoint whole). A pickled checkpoint of RecBole's is read only when
the caller says it is trusted (``trust=True``, ``--trust_checkpoint``).

Loading. Every caller loads through this module: ``--checkpoint`` re-evaluation and
``load_data_and_model`` (RecBole's function of that name too, through ``compat``), RecBole's
trainer when it reloads the best model, ``--resume_from`` (``resume_trainer``), streaming
(``load_model``: the model alone, without its dataset) and the item-LLM export. A checkpoint
loaded with its dataset must meet the data it was trained on: the fingerprint (user and item id
maps, interaction rows) is compared, and a difference is a one-line error naming it.

Resume. After each validation the trainer's newest state (model, optimizer, learning-rate
schedule, epoch, best score, early-stopping count, random generators) is written into the run's
checkpoint beside the best model, so ``--resume_from`` continues the run exactly where it stood.

Export. ``export_item_table(model, path)`` writes the (n_items, hidden_size) table a model scores
against; ``load_item_table(model, table)`` puts it into a Hydra with ``item_model: embedding``,
which then scores exactly as the LLM model did. ``export_llm_checkpoint`` (also ``python -m
recbole_hydra.checkpoint CHECKPOINT OUT``) turns a saved LLM Hydra into an ordinary ``item_model:
embedding`` checkpoint for ``--checkpoint``, ``load_data_and_model`` and streaming, with no LLM
needed at inference.
"""

import argparse
import contextlib
import enum
import hashlib
import logging
import os
import pickle
import random
import secrets
import socket
import sys
import warnings
import zipfile

import numpy as np
import torch
from recbole.config import Config
from recbole.data import data_preparation
from recbole.evaluator import metric_types, smaller_metrics
from recbole.utils import enum_type, get_local_time, init_logger, init_seed, set_color

from recbole_hydra.config import check_config, model_yaml_defaults
from recbole_hydra.errors import UsageError
from recbole_hydra.registry import build_model, create_dataset, get_model

FORMAT = "recbole-hydra/1"

#: how a saved run is read and run, which changes neither what it learns nor how it is judged
_HOW_IT_RUNS = ("eval_batch_size", "data_path", "gpu_id", "show_progress", "state", "use_kernels")

#: what ``--checkpoint`` may change of a saved run: how it is evaluated, never what was trained
EVALUATION_KEYS = ("topk", "metrics", "valid_metric", *_HOW_IT_RUNS, "mask_history_items")

#: what ``--resume_from`` may change: how long and where the run goes on (``epochs`` re-plans
#: the learning-rate schedule over the new total)
RESUME_KEYS = (*_HOW_IT_RUNS, "epochs", "stopping_step", "time_budget_s")


# -- the config as plain data ----------------------------------------------------------------
def _plain(value, key):
    """``value`` as data ``torch.load(weights_only=True)`` reads: RecBole's enums and devices
    become marked dicts, numpy scalars and arrays Python numbers and lists."""
    if isinstance(value, np.generic):  # before float: numpy.float64 is a float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, enum.Enum) and getattr(enum_type, type(value).__name__, None) is type(
        value
    ):
        return {"__enum__": type(value).__name__, "name": value.name}
    if isinstance(value, dict):
        return {k: _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, key) for v in value)
    raise UsageError(
        f"config key {key} holds a {type(value).__name__}; a checkpoint keeps plain data only "
        "(numbers, strings, lists, dicts): set it to one of those"
    )


def _from_plain(value):
    if isinstance(value, dict):
        if set(value) == {"__device__"}:
            return torch.device(value["__device__"])
        if set(value) == {"__enum__", "name"}:
            kind = getattr(enum_type, value["__enum__"], None)
            if not (isinstance(kind, type) and issubclass(kind, enum.Enum)):
                raise UsageError(f"a checkpoint's config names an unknown {value['__enum__']}")
            return kind[value["name"]]
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_from_plain(v) for v in value)
    return value


def config_to_plain(config):
    """A RecBole ``Config`` as plain data (what ``config_from_plain`` rebuilds)."""
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "parameters": _plain(config.parameters, "parameters"),
        "final_config_dict": _plain(config.final_config_dict, "config"),
    }


def config_from_plain(data):
    """The ``Config`` that ``config_to_plain`` wrote, without building it again (the saved values
    are the run's, whatever the yaml files say today).

    A key that the model's yaml has and the checkpoint lacks was added to the model after the
    checkpoint was written: it takes the yaml's value, as every such key's default is the
    behaviour the model had before the key existed (e.g. ``norm_placement: pre``)."""
    final_config_dict = _from_plain(data["final_config_dict"])
    for key, value in model_yaml_defaults(data["model"]).items():
        final_config_dict.setdefault(key, value)
    config = Config.__new__(Config)
    config.__dict__.update(
        model=data["model"],
        dataset=data["dataset"],
        model_class=get_model(data["model"]),
        parameters=_from_plain(data["parameters"]),
        final_config_dict=final_config_dict,
        file_config_dict={},
        variable_config_dict={},
        cmd_config_dict={},
        external_config_dict={},
        internal_config_dict={},
        yaml_loader=None,
    )
    config.compatibility_settings()  # numpy aliases RecBole's metrics use (np.float, ...)
    return config


# -- the data a model was trained on ---------------------------------------------------------
def _digest(*arrays):
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset):
    """Counts and hashes of a loaded dataset, before ``data_preparation`` sorts and splits it:
    its user and item id maps (token -> internal id) and its interaction rows (users, items,
    times, in the order of the file)."""

    def id_map(field):
        tokens = dataset.field2id_token[field]
        return {"count": len(tokens) - 1, "sha256": _digest("\n".join(map(str, tokens)).encode())}

    inter = dataset.inter_feat
    fields = [f for f in (dataset.uid_field, dataset.iid_field, dataset.time_field) if f]
    rows = [np.asarray(inter[f]) for f in fields if f in inter]
    return {
        "users": id_map(dataset.uid_field),
        "items": id_map(dataset.iid_field),
        "interactions": {"count": len(inter), "sha256": _digest(*rows)},
    }


def check_fingerprint(model_file, saved, dataset, config):
    """One line naming what differs between the data a checkpoint was trained on and ``dataset``
    (a UsageError); nothing when they are the same or the checkpoint recorded nothing."""
    if saved is None:
        logging.getLogger().warning(
            f"{model_file} does not record the data it was trained on: make sure "
            f"{config['data_path']} holds the same {config['dataset']} files"
        )
        return
    now, changes = dataset_fingerprint(dataset), []
    for part, noun in (("users", "user"), ("items", "item"), ("interactions", "interaction")):
        before, after = saved[part], now[part]
        if before["count"] != after["count"]:
            changes.append(f"{before['count']} {noun}s then, {after['count']} now")
        elif before["sha256"] != after["sha256"]:
            what = "rows differ" if part == "interactions" else "ids map to other internal ids"
            changes.append(f"the {noun} {what} (same count; rows reordered or replaced?)")
    if changes:
        raise UsageError(
            f"{model_file} was trained on other {config['dataset']} data than "
            f"{config['data_path']} holds now ({'; '.join(changes)}): evaluate it on the files "
            "it was trained on"
        )


# -- reading ---------------------------------------------------------------------------------
def read_checkpoint(path, map_location=None, trust=False, **_):
    """A checkpoint as a dict, its ``config`` a RecBole ``Config``; every load goes through here
    (RecBole's trainer calls it as its ``torch.load``).

    The package's checkpoints are read with ``torch.load(weights_only=True)``: nothing in them can
    run. A pickled checkpoint (RecBole's own format) is read only with ``trust=True``; otherwise,
    and for files that are empty, truncated or not checkpoints, one line says what is wrong."""
    if isinstance(path, (str, os.PathLike)):
        if not os.path.isfile(path):
            raise UsageError(f"checkpoint {path} does not exist")
        if os.path.getsize(path) == 0:
            raise UsageError(f"checkpoint {path} is empty (0 bytes): use another checkpoint")
    try:
        with warnings.catch_warnings():  # torch's note on RecBole's protocol 4, before it refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise UsageError(f"{path} is not a readable checkpoint: {_first_line(err)}") from None
        if not trust:
            raise UsageError(
                f"{path} is a pickled checkpoint (RecBole's own format, or not written by this "
                "package): loading it can run code stored in it. Only if you trust the file, "
                "load it with --trust_checkpoint (Python: trust=True)"
            ) from None
        checkpoint = _read_trusted_pickle(path, map_location)
    except Exception as err:  # torch raises RuntimeError, KeyError, EOFError, ... on bad files
        raise UsageError(f"{path} is not a readable checkpoint (truncated?): {_first_line(err)}")
    if not (isinstance(checkpoint, dict) and "state_dict" in checkpoint and "config" in checkpoint):
        raise UsageError(
            f"{path} is not a RecBole checkpoint (it holds a {type(checkpoint).__name__}, not a "
            "dict with config and state_dict): pass a saved/<Model>-....pth of a run"
        )
    if checkpoint.get("format") == FORMAT:
        checkpoint["config"] = config_from_plain(checkpoint["config"])
    elif "format" in checkpoint:
        raise UsageError(f"{path} is in format {checkpoint['format']!r}: upgrade recbole-hydra")
    elif hasattr(checkpoint["config"], "compatibility_settings"):  # a trusted RecBole pickle
        checkpoint["config"].compatibility_settings()
    return checkpoint


def _read_trusted_pickle(path, map_location):
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise UsageError(f"{path} is not a readable checkpoint: {_first_line(err)}") from None


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _config_on_this_machine(config):
    """``config`` on the CPU when it was saved on a GPU this machine lacks."""
    device = config["device"]
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    return config


def with_overrides(config, overrides, allowed, purpose):
    """``config`` with the ``overrides`` a saved run accepts for ``purpose`` (only keys of
    ``allowed``), re-derived as RecBole's ``Config`` derives them and checked once more."""
    overrides = dict(overrides or {})
    refused = [k for k in overrides if k not in allowed]
    if refused:
        raise UsageError(
            f"--{refused[0]} cannot be changed for a saved model ({purpose} uses it as it was "
            f"trained); what {purpose} can change: {', '.join(allowed)}"
        )
    for key, value in overrides.items():
        config[key] = value
    if "data_path" in overrides:  # RecBole's Config: data_path/<dataset>
        config["data_path"] = os.path.join(str(overrides["data_path"]), config["dataset"])
    if isinstance(config["metrics"], str):
        config["metrics"] = [config["metrics"]]
    if isinstance(config["topk"], int):
        config["topk"] = [config["topk"]]
    unknown = [m for m in config["metrics"] or [] if str(m).lower() not in metric_types]
    if unknown:
        raise UsageError(f"there is no metric named {unknown[0]!r}: e.g. --metrics=\"['NDCG']\"")
    if "valid_metric" in overrides:
        bigger = str(config["valid_metric"]).split("@")[0].lower() not in smaller_metrics
        config["valid_metric_bigger"] = bigger
    if "gpu_id" in overrides:  # RecBole's Config._init_device for one process
        config["gpu_id"] = str(config["gpu_id"])
        os.environ["CUDA_VISIBLE_DEVICES"] = config["gpu_id"]
        use_cuda = bool(config["gpu_id"]) and torch.cuda.is_available()
        config["device"] = torch.device("cuda" if use_cuda else "cpu")
    check_config(config)
    return config


def load_data_and_model(model_file, overrides=None, trust=False):
    """RecBole's ``load_data_and_model`` for plugin and RecBole models: ``(config, model,
    dataset, train_data, valid_data, test_data)`` with the checkpoint's weights, after checking
    that the dataset is the one it was trained on. ``overrides``: evaluation-only keys
    (``EVALUATION_KEYS``); ``trust``: also read a pickled RecBole checkpoint."""
    checkpoint = read_checkpoint(model_file, map_location="cpu", trust=trust)
    config = _config_on_this_machine(checkpoint["config"])
    if overrides:
        config = with_overrides(config, overrides, EVALUATION_KEYS, "--checkpoint")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().info(f"loading {model_file}")
    dataset = create_dataset(config)
    check_fingerprint(model_file, checkpoint.get("dataset"), dataset, config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = build_model(config, train_data._dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


class ItemCountDataset:
    """What ``SequentialRecommender.__init__`` reads from a dataset: the number of items. Lets a
    model be built from its checkpoint without loading its data."""

    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


def load_model(model_file, device="cpu", model_class=None, trust=False):
    """The model of a checkpoint, in eval mode on ``device``, without loading its dataset (the
    item count is read off ``item_embedding.weight``). ``model_class``: the class the checkpoint
    must hold (a UsageError otherwise)."""
    checkpoint = read_checkpoint(model_file, map_location=device, trust=trust)
    config = checkpoint["config"]
    expected = getattr(model_class, "__name__", None)
    if expected is not None and config["model"] != expected:
        raise UsageError(f"{model_file} holds a {config['model']} model; this needs {expected}")
    weights = checkpoint["state_dict"].get("item_embedding.weight")
    if weights is None:
        raise UsageError(
            f"{model_file} has no item embedding table (item_model: llm?): export "
            "it first with python -m recbole_hydra.checkpoint"
        )
    config["device"] = torch.device(device)
    model = get_model(config["model"])(config, ItemCountDataset(weights.shape[0])).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


# -- writing: RecBole's Trainer checkpoints, safely ------------------------------------------
def checkpoint_name(checkpoint_dir, model):
    """``<dir>/<Model>-<time>-<6 hex digits>.pth``: RecBole's name, unique to the run (runs
    started in the same second keep their own files)."""
    while True:
        name = f"{model}-{get_local_time()}-{secrets.token_hex(3)}.pth"
        path = os.path.join(checkpoint_dir, name)
        if not os.path.exists(path):
            return path


def atomic_save(obj, path):
    """``torch.save`` into a temporary file renamed over ``path``: readers see the old file or
    the new one, never a part (also when the process is killed, or machines that share a
    filesystem write the same path)."""
    partial = f"{path}.{socket.gethostname()}-{os.getpid()}.part"
    try:
        torch.save(obj, partial)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def prepare_trainer(trainer, fingerprint, train_data):
    """What a trainer's checkpoints record beyond RecBole's: the dataset's fingerprint
    (``dataset_fingerprint``), and the training loader's shuffling generator for an exact
    resume."""
    trainer.dataset_fingerprint = fingerprint
    trainer.train_generator = getattr(train_data, "generator", None)


def save_trainer_checkpoint(trainer, epoch, verbose=True, resume_point=False, **kwargs):
    """RecBole's ``Trainer._save_checkpoint`` (``compat`` installs it): the best model so far
    (at ``epoch``) and the newest training state, in the package's format. With
    ``resume_point=True`` only the training state is new (after a validation that did not
    improve)."""
    config, model = trainer.config, trainer.model
    if not config["single_spec"] and config["local_rank"] != 0:
        return
    path = kwargs.pop("saved_model_file", trainer.saved_model_file)
    if epoch < 0 and os.path.isfile(path):
        return  # RecBole's save when a resumed run has no epoch left: the file has the best
    if not resume_point or getattr(trainer, "best_checkpoint", None) is None:
        trainer.best_checkpoint = {
            "epoch": epoch,
            "best_valid_score": _plain(trainer.best_valid_score, "best_valid_score"),
            "state_dict": {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            },
            "other_parameter": model.other_parameter(),
        }
    best = trainer.best_checkpoint
    state = {
        "format": FORMAT,
        "config": config_to_plain(config),
        "dataset": getattr(trainer, "dataset_fingerprint", None),
        **best,
        "resume": _training_state(trainer, epoch, same_as_best=best["epoch"] == epoch),
    }
    atomic_save(state, path)
    if verbose:
        trainer.logger.info(set_color("Saving current", "blue") + f": {path}")


def _training_state(trainer, epoch, same_as_best):
    scheduler = getattr(trainer, "lr_scheduler", None)
    generator = getattr(trainer, "train_generator", None)
    numpy_state = np.random.get_state()
    return {
        "epoch": epoch,
        "cur_step": trainer.cur_step,
        "best_valid_score": _plain(trainer.best_valid_score, "best_valid_score"),
        "best_valid_result": _plain(trainer.best_valid_result, "best_valid_result"),
        "state_dict": None if same_as_best else trainer.model.state_dict(),
        "other_parameter": trainer.model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": None if scheduler is None else scheduler.state_dict(),
        "random": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)))
            + tuple(numpy_state[2:]),
            "python": random.getstate(),
            "train_loader": None if generator is None else generator.get_state(),
        },
    }


def resume_trainer(trainer, resume_file):
    """RecBole's ``Trainer.resume_checkpoint`` (``compat`` installs it): the trainer continues
    the run of ``resume_file`` where its newest training state stood, writing to that file."""
    checkpoint = read_checkpoint(str(resume_file), map_location=trainer.device)
    state = checkpoint.get("resume")
    if state is None:
        raise UsageError(
            f"{resume_file} holds no training state to resume (written by RecBole itself or "
            "by an older recbole-hydra): start the run again"
        )
    if checkpoint["config"]["model"] != trainer.config["model"]:
        raise UsageError(
            f"{resume_file} holds a {checkpoint['config']['model']} run, not "
            f"{trainer.config['model']}"
        )
    best_keys = ("epoch", "best_valid_score", "state_dict", "other_parameter")
    trainer.best_checkpoint = {k: checkpoint[k] for k in best_keys}
    trainer.saved_model_file = str(resume_file)
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step = state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    trainer.best_valid_result = state["best_valid_result"]
    weights = checkpoint["state_dict"] if state["state_dict"] is None else state["state_dict"]
    trainer.model.load_state_dict(weights)
    trainer.model.load_other_parameter(state["other_parameter"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.resumed_lr_scheduler = state["lr_scheduler"]  # GenerativeTrainer.fit restores it
    rng = state["random"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(rng["python"])
    generator = getattr(trainer, "train_generator", None)
    if generator is not None and rng["train_loader"] is not None:
        generator.set_state(rng["train_loader"])
    trainer.logger.info(f"resuming {resume_file} at epoch {trainer.start_epoch}")


def resume_config(resume_file, overrides=None):
    """The config of the run ``resume_file`` continues, with the ``RESUME_KEYS`` overrides."""
    config = _config_on_this_machine(read_checkpoint(resume_file, map_location="cpu")["config"])
    return with_overrides(config, overrides, RESUME_KEYS, "--resume_from")


def newest_checkpoint(path):
    """``path`` itself, or the newest ``.pth`` in the directory ``path``."""
    if not os.path.isdir(path):
        return path
    files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".pth")]
    if not files:
        raise UsageError(f"{path} holds no checkpoint (.pth) to resume from")
    return max(files, key=os.path.getmtime)


# -- the item-LLM export ---------------------------------------------------------------------
@torch.no_grad()
def export_item_table(model, path=None):
    """The (n_items, d) item table a model scores against (its eval-mode ``item_table()``), on
    the CPU; written with ``torch.save`` when ``path`` is given."""
    was_training = model.training
    model.eval()
    try:
        table = model.item_table().detach().to("cpu", torch.float32).clone()
    finally:
        model.train(was_training)
    if path is not None:
        torch.save(table, path)
    return table


@torch.no_grad()
def load_item_table(model, table):
    """Copy an exported table (a tensor or a file of ``export_item_table``) into the
    ``item_embedding`` of a Hydra with ``item_model: embedding``."""
    if not isinstance(table, torch.Tensor):
        table = torch.load(table, map_location="cpu", weights_only=True)
    weight = getattr(model, "item_embedding", None)
    if weight is None:
        raise ValueError("load_item_table needs a model with item_model: embedding")
    if tuple(table.shape) != tuple(weight.weight.shape):
        raise ValueError(
            f"the table is {tuple(table.shape)}, the model's item embedding "
            f"{tuple(weight.weight.shape)}: same dataset and hidden_size needed"
        )
    weight.weight.copy_(table.to(weight.weight))


def export_llm_checkpoint(model_file, out_file, table_file=None, trust=False):
    """Turn a checkpoint of Hydra with ``item_model: llm`` into one with ``item_model:
    embedding`` whose item embedding is the LLM's item table (no LLM weights, no training state:
    for evaluation and inference, not for resuming training). Returns the table."""
    checkpoint = read_checkpoint(model_file, map_location="cpu", trust=trust)
    config = checkpoint["config"]
    if config["item_model"] != "llm":
        raise UsageError(f"{model_file} is not a model with item_model: llm")
    device = config["device"]
    config["device"] = torch.device("cpu")
    dataset = create_dataset(config)
    check_fingerprint(model_file, checkpoint.get("dataset"), dataset, config)
    model = get_model(config["model"])(config, dataset)
    model.load_state_dict(checkpoint["state_dict"])
    table = export_item_table(model, table_file)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("item_encoder.")}
    state["item_embedding.weight"] = table
    config["item_model"], config["device"] = "embedding", device
    out = {k: checkpoint.get(k) for k in ("epoch", "best_valid_score", "other_parameter")}
    out.update(
        format=FORMAT,
        config=config_to_plain(config),
        dataset=dataset_fingerprint(dataset),
        state_dict=state,
        resume=None,
    )
    atomic_save(out, out_file)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Export a Hydra (item_model: llm) checkpoint as an item_model: embedding "
        "checkpoint whose item embedding is the LLM's item table."
    )
    parser.add_argument("checkpoint", help="saved/Hydra-....pth trained with item_model: llm")
    parser.add_argument("out", help="where to write the embedding checkpoint")
    parser.add_argument("--table", default=None, help="also write the (n_items, d) table here")
    parser.add_argument(
        "--trust_checkpoint", action="store_true", help="also read a pickled RecBole checkpoint"
    )
    args = parser.parse_args(argv)
    try:
        table = export_llm_checkpoint(args.checkpoint, args.out, args.table, args.trust_checkpoint)
    except UsageError as err:
        sys.stderr.write(f"{parser.prog}: error: {err}\n")
        return 2
    print(f"wrote {args.out} ({table.shape[0]} items x {table.shape[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
