"""Content hashes of stforge's own source files: one place that says which files a result depends
on and how they are hashed. Torch-free (standard library only), so sim/ and hw/ tools can use it.

* :func:`source_closure` — the project files some modules import, transitively (a static walk of
  ``import`` statements, function-level ones too, into model/, hw/, sim/, firmware/).
* :func:`hw_sources` / :func:`hw_source_sha256` — the hardware sources: every ``hw/**/*.py``
  (``__pycache__`` excluded) plus the project files outside hw/ that they import (the artifact
  reader and integer helpers the generator and the cycle model use). ``make sim`` records this
  hash in sim.json as ``hw_source_sha256``; ``make sweep-hw`` compares it with the checkout's.
* :func:`update_digest` / :func:`sources_sha256` — the hashing itself: for each file its path
  relative to the project root, a NUL, its bytes, a NUL. Only content counts: modification dates
  (which a fresh clone resets) and absolute paths (another checkout) do not.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

__all__ = ["ROOT", "PACKAGES", "source_closure", "update_digest", "sources_sha256", "hw_sources",
           "hw_source_sha256"]

#: The project root (the folder holding model/, hw/, sim/, firmware/).
ROOT = Path(__file__).resolve().parents[1]
#: The project's own import roots.
PACKAGES = ("model", "hw", "sim", "firmware")


def _root(root) -> Path:
    return ROOT if root is None else Path(root)


def _module_file(name: str, root: Path) -> Path | None:
    base = root / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def source_closure(modules, root=None) -> list[Path]:
    """The project source files `modules` import, transitively: a static walk over every
    `import` / `from ... import` (function-level ones too) into model/, hw/, sim/, firmware/."""
    root = _root(root)
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            continue
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]   # parent packages
        path = _module_file(name, root)
        if path is None or name in seen:
            continue
        seen[name] = path
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return sorted(set(seen.values()))


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
    """Every hw/**/*.py (no __pycache__) and the project files outside hw/ they import."""
    root = _root(root)
    files = [path for path in (root / "hw").rglob("*.py") if "__pycache__" not in path.parts]
    modules = [".".join(path.relative_to(root).with_suffix("").parts) for path in files]
    modules = [name.removesuffix(".__init__") for name in modules]
    return sorted(set(files) | set(source_closure(modules, root)))


def hw_source_sha256(root=None) -> str:
    """The content hash of :func:`hw_sources`: what sim.json's ``hw_source_sha256`` records."""
    root = _root(root)
    return sources_sha256(hw_sources(root), root)
