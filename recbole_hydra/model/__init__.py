"""The package's RecBole models, resolved by name (imported lazily, on first use)."""

import importlib

PLUGIN_MODELS = {
    "Hydra": "recbole_hydra.model.hydra",
    "HydraMD": "recbole_hydra.model.hydra_md",
    "Mamba4Rec": "recbole_hydra.model.mamba4rec",
    "HSTU": "recbole_hydra.model.hstu",
    "SASRecGen": "recbole_hydra.model.sasrec_gen",
}


def get_plugin_model(name):
    """The plugin model class called ``name``, or None when ``name`` is not a plugin model."""
    module = PLUGIN_MODELS.get(name)
    if module is None:
        return None
    return getattr(importlib.import_module(module), name)
