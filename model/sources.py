"""Content hashes of stforge's own source files: which files a result depends on, declared,
and how they are hashed. Standard library only, so sim/ and hw/ tools can use it.

A result's sources are declared as entries relative to the project root (`declared_sources`):
a folder (every ``*.py`` below it, ``__pycache__`` excluded), ``folder/*.py`` (the modules
directly in it) or one file. Declared, not derived from imports: a cache key is then a fact
anyone can read, and module boundaries need not bend to keep it small.

* :data:`HW_SOURCES` / :func:`hw_source_sha256` — the hardware sources: hw/, the IR it reads
  (model/ir/, model/errors.py) and firmware/ (the link protocol and memory maps it shares).
  ``make sim`` records the hash in sim.json as ``hw_source_sha256``; ``make sweep-hw`` compares
  it with the checkout's.
* :func:`update_digest` / :func:`sources_sha256` — the hashing itself: for each file its path
  relative to the project root, a NUL, its bytes, a NUL. Only content counts: modification dates
  (which a fresh clone resets) and absolute paths (another checkout) do not.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["ROOT", "HW_SOURCES", "declared_sources", "update_digest", "sources_sha256",
           "hw_sources", "hw_source_sha256"]

#: The project root (the folder holding model/, hw/, sim/, firmware/).
ROOT = Path(__file__).resolve().parents[1]
#: What the generated hardware and its cycle model are made from.
HW_SOURCES = ("hw", "model/ir", "model/errors.py", "firmware")


def _root(root) -> Path:
    return ROOT if root is None else Path(root)


def declared_sources(entries, root=None) -> list[Path]:
    """The files of `entries` (see the module docstring), sorted, each once."""
    root = _root(root)
    files = set()
    for entry in entries:
        if entry.endswith("/*.py"):
            files.update((root / entry[:-5]).glob("*.py"))
        elif (root / entry).is_dir():
            files.update(p for p in (root / entry).rglob("*.py") if "__pycache__" not in p.parts)
        else:
            files.add(root / entry)
    return sorted(files)


def update_digest(digest, paths, root=None) -> None:
    """Feed `paths` (in the given order) into `digest`: relative path, NUL, bytes, NUL each."""
    root = _root(root)
    for path in paths:
        digest.update(str(Path(path).relative_to(root)).encode() + b"\0" +
                      Path(path).read_bytes() + b"\0")


def sources_sha256(paths, root=None) -> str:
    """sha256 of `paths` sorted by their path relative to `root` (see :func:`update_digest`)."""
    root = _root(root)
    digest = hashlib.sha256()
    update_digest(digest, sorted(paths, key=lambda p: Path(p).relative_to(root).as_posix()),
                  root)
    return digest.hexdigest()


def hw_sources(root=None) -> list[Path]:
    """The files of :data:`HW_SOURCES`."""
    return declared_sources(HW_SOURCES, root)


def hw_source_sha256(root=None) -> str:
    """The content hash of :func:`hw_sources`: what sim.json's ``hw_source_sha256`` records."""
    root = _root(root)
    return sources_sha256(hw_sources(root), root)
