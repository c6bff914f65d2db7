"""User-facing errors.

A ``ZscirError`` carries a message meant for a person: it names the file, field
or option at fault and what was expected. The CLI prints it on one line and
exits non-zero, without a traceback.
"""


class ZscirError(Exception):
    """An error caused by the user's input or environment, not by a bug."""


class MissingWeightsError(ZscirError):
    """Model weights are not available locally and cannot be downloaded."""
