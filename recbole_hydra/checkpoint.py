"""Checkpoints: the one place that reads them, rebuilds their config, data and model, and writes
derived ones.

A checkpoint is RecBole's: ``{"config", "epoch", "cur_step", "best_valid_score", "state_dict",
"other_parameter", "optimizer"}`` written by its ``Trainer._save_checkpoint``. Every caller of the
package loads one through this module: ``--checkpoint`` re-evaluation, RecBole's own
``load_data_and_model`` (``compat`` points it here), RecBole's trainer when it reloads the best
model, streaming (``load_model``: the model alone, without its dataset) and the item-LLM export.

Export. ``export_item_table(model, path)`` writes the (n_items, hidden_size) table a model scores
against; ``load_item_table(model, table)`` puts it into a Hydra with ``item_model: embedding``,
which then scores exactly as the LLM model did. ``export_llm_checkpoint`` (also ``python -m
recbole_hydra.checkpoint CHECKPOINT OUT``) turns a saved LLM Hydra into an ordinary ``item_model:
embedding`` checkpoint for ``run_hydra.py --checkpoint``, ``load_data_and_model`` and streaming,
with no LLM needed at inference.
"""

import argparse
import copy
import logging
import os

import torch
from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed

from recbole_hydra.errors import UsageError
from recbole_hydra.registry import build_model, create_dataset, get_model


def read_checkpoint(path, *args, **kwargs):
    """``torch.load`` of a RecBole checkpoint, a pickle of RecBole's ``Config``.

    torch >= 2.6 loads with ``weights_only=True`` by default, which cannot read that pickle
    (protocol 4 framing), so the checkpoint is unpickled as RecBole was written to do it: load
    only checkpoints you trust. Building a ``Config`` restores the numpy aliases (``np.float``,
    ...) that RecBole's metrics use; unpickling one does not, so the loaded config restores them
    as building it would (a process that only evaluates a checkpoint needs them)."""
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist")
    kwargs.setdefault("weights_only", False)
    checkpoint = torch.load(path, *args, **kwargs)
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if hasattr(config, "compatibility_settings"):
        config.compatibility_settings()
    return checkpoint


def _config_on_this_machine(checkpoint):
    """The checkpoint's config, on the CPU when it was saved on a GPU this machine lacks."""
    config = checkpoint["config"]
    if (
        config["device"] is not None
        and config["device"].type == "cuda"
        and (not torch.cuda.is_available())
    ):
        config["device"] = torch.device("cpu")
    return config


def load_data_and_model(model_file):
    """RecBole's ``load_data_and_model`` for plugin and RecBole models: ``(config, model,
    dataset, train_data, valid_data, test_data)`` with the checkpoint's weights."""
    checkpoint = read_checkpoint(model_file, map_location="cpu")
    config = _config_on_this_machine(checkpoint)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().info(f"loading {model_file}")
    dataset = create_dataset(config)
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


def load_model(model_file, device="cpu", model_class=None):
    """The model of a checkpoint, in eval mode on ``device``, without loading its dataset (the
    item count is read off ``item_embedding.weight``). ``model_class``: the class the checkpoint
    must hold (a UsageError otherwise)."""
    checkpoint = read_checkpoint(model_file, map_location=device)
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


def export_llm_checkpoint(model_file, out_file, table_file=None):
    """Turn a RecBole checkpoint of Hydra with ``item_model: llm`` into one with ``item_model:
    embedding`` whose item embedding is the LLM's item table (no LLM weights, no optimizer state:
    for evaluation and inference, not for resuming training). Returns the table."""
    checkpoint = read_checkpoint(model_file, map_location="cpu")
    config = checkpoint["config"]
    if config["item_model"] != "llm":
        raise UsageError(f"{model_file} is not a model with item_model: llm")
    device = config["device"]
    config["device"] = torch.device("cpu")
    model = get_model(config["model"])(config, create_dataset(config))
    model.load_state_dict(checkpoint["state_dict"])
    table = export_item_table(model, table_file)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("item_encoder.")}
    state["item_embedding.weight"] = table
    plain = copy.copy(config)
    plain.final_config_dict = dict(config.final_config_dict)
    plain["item_model"], plain["device"] = "embedding", device
    out = {k: v for k, v in checkpoint.items() if k != "optimizer"}
    out.update(config=plain, state_dict=state)
    torch.save(out, out_file, pickle_protocol=4)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Export a Hydra (item_model: llm) checkpoint as an item_model: embedding "
        "checkpoint whose item embedding is the LLM's item table."
    )
    parser.add_argument("checkpoint", help="saved/Hydra-....pth trained with item_model: llm")
    parser.add_argument("out", help="where to write the embedding checkpoint")
    parser.add_argument("--table", default=None, help="also write the (n_items, d) table here")
    args = parser.parse_args(argv)
    table = export_llm_checkpoint(args.checkpoint, args.out, args.table)
    print(f"wrote {args.out} ({table.shape[0]} items x {table.shape[1]})")


if __name__ == "__main__":
    main()
