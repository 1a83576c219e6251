"""recbole-hydra: Hydra (multi-head latent Mamba-2) and its baselines as RecBole models.

Importing the package applies the RecBole compatibility shims (``recbole_hydra.compat``), so
RecBole's own ``load_data_and_model`` and trainer work with plugin models and torch >= 2.6.
"""

__version__ = "0.1.0"

from recbole_hydra import compat, registry  # noqa: E402
from recbole_hydra.checkpoint import load_data_and_model, read_checkpoint  # noqa: E402
from recbole_hydra.quick_start import run  # noqa: E402

compat.install(
    get_model=registry.get_model,
    create_dataset=registry.create_dataset,
    read_checkpoint=read_checkpoint,
    load_data_and_model=load_data_and_model,
)

__all__ = ["run", "__version__"]
