"""Every shim that RecBole 1.2.1 needs on today's stack, in one place; ``install`` applies them.

1. Checkpoints under torch >= 2.6. ``torch.load`` defaults to ``weights_only=True``, and RecBole's
   checkpoints pickle its ``Config`` object with ``pickle_protocol=4``, whose framing torch's safe
   unpickler rejects outright: RecBole cannot reload its own checkpoint
   (``Trainer.evaluate(load_best_model=True)``, ``resume_checkpoint``, ``load_data_and_model``).
   ``load_recbole_checkpoint`` loads them with ``weights_only=False``, the behaviour RecBole was
   written for; as with any pickle, load only checkpoints you trust. RecBole's trainer module
   gets it as its ``torch.load``; ``torch.load`` elsewhere is untouched.
2. Warnings RecBole 1.2.1 raises on today's pandas that no user can act on (chained-assignment
   FutureWarnings inside its loader): ``quiet_known_warnings`` filters exactly those; the CLI
   calls it.
3. Plugin models in RecBole's own entry points. ``load_data_and_model`` (and ``run_recbole``) look
   models up with ``recbole.utils.get_model``, which only knows ``recbole.model``, and pick the
   dataset class by model name. Their module globals are pointed at the plugin-aware versions,
   which fall back to RecBole's for its own models.
"""

import types
import warnings

import torch

def load_recbole_checkpoint(path, *args, **kwargs):
    """``torch.load`` of a RecBole checkpoint (a pickle of RecBole's Config, see above)."""
    kwargs.setdefault("weights_only", False)
    return torch.load(path, *args, **kwargs)


def quiet_known_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole(\.|$)")


def _torch_with_checkpoint_load():
    """A stand-in for the ``torch`` module whose ``load`` is ``load_recbole_checkpoint``."""
    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(torch, name)
    proxy.load = load_recbole_checkpoint
    return proxy


def load_data_and_model(model_file):
    """RecBole's ``load_data_and_model``, for plugin and RecBole models, under torch >= 2.6."""
    import recbole.quick_start.quick_start as qs

    checkpoint = load_recbole_checkpoint(model_file)
    config = checkpoint["config"]
    qs.init_seed(config["seed"], config["reproducibility"])
    qs.init_logger(config)
    dataset = qs.create_dataset(config)
    train_data, valid_data, test_data = qs.data_preparation(config, dataset)
    qs.init_seed(config["seed"], config["reproducibility"])
    model = qs.get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def install(get_model, create_dataset):
    """Apply the shims (idempotent). Import ``recbole_hydra`` before using RecBole's entry points."""
    import recbole.quick_start
    import recbole.quick_start.quick_start as qs
    import recbole.trainer.trainer as trainer_module

    trainer_module.torch = _torch_with_checkpoint_load()
    qs.get_model = get_model
    qs.create_dataset = create_dataset
    qs.load_data_and_model = recbole.quick_start.load_data_and_model = load_data_and_model
