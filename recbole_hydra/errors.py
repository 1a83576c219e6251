"""The package's error for bad user input."""


class UsageError(ValueError):
    """A problem with the user's input that one line can explain; the CLI prints it, exit 2."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``checkpoint`` is the run's file holding its newest training state
    (None when none was written yet), ``epoch`` the epoch that state ends."""

    def __init__(self, checkpoint=None, epoch=None):
        super().__init__(checkpoint)
        self.checkpoint, self.epoch = checkpoint, epoch
