"""The one exception family for user mistakes.

Every error a user can cause (bad config, missing data set, bad artifact) raises a subclass of
:class:`StforgeError`; the CLI prints its message as one line and exits non-zero. Anything else
escaping is a bug and keeps its traceback. `ArgumentParser` and the argument types here are the
one argument-validation path of every `stforge` stage.
"""

import argparse
import sys


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
    print(f"stforge: error: {exc}", file=sys.stderr)
    return 2


def report_interrupt(what: str = "interrupted") -> int:
    """Print a Ctrl-C as one line; return exit status 130 (128 + SIGINT)."""
    print(f"stforge: {what}", file=sys.stderr)
    return 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the stforge error path: a malformed command line is one line
    ``stforge: error: ...`` and exit status 2 (argparse's own prints the usage first)."""

    def error(self, message):
        print(f"stforge: error: {self.prog.split()[-1]}: {message}", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (one-line error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
