"""Atomic file writes: a reader never sees a half-written artifact, report or golden file.

Every file stforge writes for another stage (artifacts, golden data, Verilog, reports, cache
entries) goes through here: the data lands in a temporary file beside the target (same folder,
so the final rename is atomic) and replaces the target only once complete; on any failure the
temporary file is removed, so are the folders the write created, and the target is untouched.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["write_bytes", "write_text", "write_json", "write_npz", "write_figure"]


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (parent folders are created); returns the path.

    The temporary file is unique (``.<name>.<random>``), so concurrent writers of one path
    (parallel sweep workers) never mix their bytes: the last rename wins whole."""
    path = Path(path)
    created = _make_parents(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes it private; a report is not
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(created):       # the folders this write made, innermost first
            try:
                folder.rmdir()
            except OSError:                    # another writer put something there meanwhile
                break
        raise
    return path


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, outermost first (a
    failed write removes them again, so that it leaves no trace)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    created = []
    try:
        for f in reversed(missing):
            try:
                f.mkdir()
            except FileExistsError:            # a concurrent writer made it
                if not f.is_dir():
                    raise
                continue
            created.append(f)
    except BaseException:
        for f in reversed(created):
            f.rmdir()
        raise
    return created


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path, data) -> Path:
    """A report or manifest: indented JSON and a final newline, written atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_npz(path, arrays: dict, compressed: bool = False) -> Path:
    """NumPy arrays as one .npz, written atomically."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def write_figure(path, figure, dpi: int = 120) -> Path:
    """A Matplotlib figure as PNG, written atomically (the caller closes the figure)."""
    import io
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return write_bytes(path, buffer.getvalue())
