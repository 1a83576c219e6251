"""RecBole trainers of the package: the paper's schedule, per-domain evaluation, epoch history,
history masking in evaluation."""

from recbole_hydra.trainer.generative import GenerativeTrainer
from recbole_hydra.trainer.history import record_history
from recbole_hydra.trainer.masking import mask_history
from recbole_hydra.trainer.multidomain import MultiDomainTrainer

__all__ = ["GenerativeTrainer", "MultiDomainTrainer", "mask_history", "record_history"]
