"""The one exception family for user mistakes.

Every error a user can cause (bad config, missing data set, bad artifact) raises a subclass of
:class:`StforgeError`; the CLI prints its message as one line and exits non-zero. Anything else
escaping is a bug and keeps its traceback.
"""


class StforgeError(Exception):
    """A user-facing error: the message names the problem in one line."""


class ConfigError(StforgeError):
    """A config file or value is malformed, unknown or impossible."""


class DataError(StforgeError):
    """A data set is missing or not in the expected format."""


class ArtifactError(StforgeError):
    """An exported integer model artifact is malformed, tampered with or of the wrong version."""
