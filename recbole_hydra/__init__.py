"""recbole-hydra: Hydra (multi-head latent Mamba-2) and its baselines as RecBole models.

Importing the package applies the RecBole compatibility shims (``recbole_hydra.compat``), so
RecBole's own ``load_data_and_model`` and trainer work with plugin models and torch >= 2.6.
"""

import warnings

# ray 2.6 (imported with RecBole; setuptools<81 still has pkg_resources) warns on every start
# that pkg_resources is deprecated: silenced here, before RecBole is first imported, for every
# way in (recbole-hydra, python -m recbole_hydra, run_hydra.py, DDP workers, ``import``).
warnings.filterwarnings(
    "ignore", message="pkg_resources is deprecated", category=UserWarning, module=r"ray(\.|$)"
)

__version__ = "0.1.0"

from recbole_hydra import checkpoint, compat, registry  # noqa: E402
from recbole_hydra.quick_start import run  # noqa: E402

compat.install(
    get_model=registry.get_model,
    create_dataset=registry.create_dataset,
    read_checkpoint=checkpoint.read_checkpoint,
    load_data_and_model=checkpoint.load_data_and_model,
    save_checkpoint=checkpoint.save_trainer_checkpoint,
    resume_checkpoint=checkpoint.resume_trainer,
    checkpoint_name=checkpoint.checkpoint_name,
)

__all__ = ["run", "__version__"]
