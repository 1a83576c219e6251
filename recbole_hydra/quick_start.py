"""RecBole's quick-start entry points for plugin and RecBole models alike.

``run`` is RecBole's ``run_recbole`` (train, validate, test; one process or a process group),
``resume`` continues an interrupted run from its checkpoint, ``evaluate_checkpoint`` re-evaluates
a saved model and ``load_data_and_model`` is RecBole's function of that name, all working for the
package's models.
Where each step lives: ``registry`` (model, dataset class and trainer of a name), ``config``
(build and check), ``training`` (train/test), ``checkpoint`` (load and save).
"""

from recbole_hydra.checkpoint import load_data_and_model
from recbole_hydra.training import evaluate_checkpoint, resume, run

__all__ = ["run", "resume", "evaluate_checkpoint", "load_data_and_model"]
