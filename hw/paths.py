"""Where ``make bitstream`` puts its outputs, per target and model: the one rule that
``hw/board.py`` (the writer) and ``model/flows/bench.py`` (a reader) share. It imports nothing from the
project, so a reader gets the rule without Amaranth or the generator (and `make sweep-hw`'s
stage code versions, which follow imports, do not grow by the whole of hw/).

``synth-<target>.json`` and ``build/<target>/`` belong to :data:`DEFAULT_MODEL`; any other model
(an artifact's file name without ``.json``) gets ``synth-<target>-<model>.json`` and
``build/<target>-<model>/``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "bitstream_dir", "synth_report_path"]

#: The model whose build owns ``synth-<target>.json`` (the Makefile's ``MODEL ?= l1p``).
DEFAULT_MODEL = "l1p"


def synth_report_path(target: str, model: str, reports="build/reports") -> Path:
    """``<reports>/synth-<target>.json`` for :data:`DEFAULT_MODEL`, else
    ``<reports>/synth-<target>-<model>.json``: where ``make bitstream`` writes its report."""
    name = f"synth-{target}" if model == DEFAULT_MODEL else f"synth-{target}-{model}"
    return Path(reports) / f"{name}.json"


def bitstream_dir(target: str, model: str, build_root="build") -> Path:
    """``<build_root>/<target>`` for :data:`DEFAULT_MODEL`, else
    ``<build_root>/<target>-<model>``: where ``make bitstream`` puts the bitstream (the one the
    report's ``"bitstream"`` names) and the build logs."""
    return Path(build_root) / (target if model == DEFAULT_MODEL else f"{target}-{model}")
