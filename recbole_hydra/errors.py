"""The package's errors for bad user input and interrupted training, and the name of the program
that prints them."""

import os
import sys


class UsageError(ValueError):
    """A problem with the user's input that one line can explain; the CLI prints it, exit 2."""


def program():
    """The program the user ran, as its error lines name it (``<program>: error: ...``):
    ``recbole-hydra``, ``python -m recbole_hydra`` or ``run_hydra.py`` (argparse's ``prog``)."""
    path = sys.argv[0] if sys.argv and sys.argv[0] else "recbole-hydra"
    name = os.path.basename(path)
    if name == "__main__.py":  # python -m PACKAGE
        return f"python -m {os.path.basename(os.path.dirname(os.path.abspath(path)))}"
    return name


def command():
    """``program()`` as a command to type again: ``python run_hydra.py`` for a script."""
    name = program()
    return f"python {name}" if name.endswith(".py") else name


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``checkpoint`` is the run's file holding its newest training state
    (None when none was written yet), ``epoch`` the epoch that state ends."""

    def __init__(self, checkpoint=None, epoch=None):
        super().__init__(checkpoint)
        self.checkpoint, self.epoch = checkpoint, epoch
