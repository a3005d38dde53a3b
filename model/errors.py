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


def report_error(exc: BaseException) -> int:
    """Print a user error as the one line every stforge CLI uses; return exit status 2."""
    import sys
    print(f"stforge: error: {exc}", file=sys.stderr)
    return 2


def report_interrupt(what: str = "interrupted") -> int:
    """Print a Ctrl-C as one line; return exit status 130 (128 + SIGINT)."""
    import sys
    print(f"stforge: {what}", file=sys.stderr)
    return 130
