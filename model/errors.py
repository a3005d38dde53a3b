"""The one exception family for user mistakes.

Every error a user can cause (bad config, missing data set, bad artifact) raises a subclass of
:class:`StforgeError`; the CLI prints its message as one line and exits non-zero. Anything else
escaping is a bug and keeps its traceback. `ArgumentParser` and the argument types here are the
one argument-validation path of every `stforge` stage.
"""

import argparse
import math
import os
import re
import sys
from pathlib import Path


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


def shown(text) -> str:
    """A name or path as it appears in a one-line message (quoted when it holds a line break or
    another unprintable character)."""
    text = str(text)
    return text if text and text.isprintable() else repr(text)


def _int_at_least(minimum: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return check


#: argparse types: an integer >= 1, an integer >= 0 (a one-line error otherwise)
positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (``nan``, ``inf`` and 0 are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:          # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def int_in(low: int, high: int):
    """An argparse type: an integer in ``low..high`` (both included)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, not {value}")
        return value
    parse.__name__ = f"int_in_{low}_{high}"
    return parse


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite number between ``low`` and ``high``; ``low_open`` /
    ``high_open`` leave that end out (``nan`` and ``inf`` are always refused)."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"must be a number in {span}, not {text}")
        return value
    parse.__name__ = f"number_in_{span}"
    return parse


#: Seeds reach NumPy's generator, which takes 0..2**32 - 1.
MAX_SEED = 2**32 - 1

#: An argparse type: a random seed (0..MAX_SEED).
seed = int_in(0, MAX_SEED)
seed.__name__ = "seed"

#: A name that becomes a file name (an exported model's artifact, its HDL folder): a plain
#: identifier, so that it can neither be empty nor leave the output folder (``../x``, ``a/b``).
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def check_name(name: str, what: str = "name") -> str:
    """Refuse a name that is not a plain identifier (:data:`NAME_PATTERN`); returns it."""
    if not NAME_PATTERN.fullmatch(name):
        raise StforgeError(f"{what} {name!r} is not a plain name: use letters, digits, '_' and "
                           f"'-', starting with a letter or '_'")
    return name


def check_output_path(path, what: str = "output") -> Path:
    """Refuse, before any work, an output file that cannot be written: a directory, a path
    under a regular file, or a folder without write permission. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise StforgeError(f"{what} {path} is a directory, not a file")
    _check_writable_below(path.parent, path, what)
    return path


def check_output_dir(path, what: str = "output folder") -> Path:
    """As :func:`check_output_path`, for a folder the stage will create or write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StforgeError(f"{what} {path} is a file, not a folder")
    _check_writable_below(path, path, what)
    return path


def _check_writable_below(folder: Path, path: Path, what: str) -> None:
    """The nearest existing folder at or above `folder` (where `path` will be created) must be
    a writable folder."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StforgeError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StforgeError(f"{what} {path}: {existing} is not writable")
