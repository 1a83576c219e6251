"""The package's error for bad user input."""


class UsageError(ValueError):
    """A problem with the user's input that one line can explain; the CLI prints it, exit 2."""
