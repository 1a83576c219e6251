"""RecBole trainers of the package: the paper's schedule, per-domain evaluation, epoch history."""

from recbole_hydra.trainer.generative import GenerativeTrainer

__all__ = ["GenerativeTrainer"]
