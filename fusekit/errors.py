"""The one exception type users see: a one-line message saying what is wrong and what to do."""


class FusekitError(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback."""


class TrainingInterrupted(FusekitError):
    """Ctrl-C during training; the last finished epoch is in the checkpoint."""
