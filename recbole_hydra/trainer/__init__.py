"""RecBole trainers of the package: the paper's schedule, per-domain evaluation, epoch history."""

from recbole_hydra.trainer.generative import GenerativeTrainer
from recbole_hydra.trainer.history import record_history

__all__ = ["GenerativeTrainer", "record_history"]
