"""Synthesis, fit checks and bitstreams for the stforge boards, with the YoWASP toolchain.

Three entry points, all torch-free:

* :func:`synth_stats` — Yosys only (``synth_ice40 -dsp`` / ``synth_ecp5``) on the Verilog that
  :func:`amaranth.back.verilog.convert` emits: cell counts per resource, and where every memory
  went (block RAM, LUT RAM or flip-flops). Seconds per design, no board needed.
* :func:`check_fits` — compares such counts with the device and raises :class:`FitError` naming
  the resource and the numbers; memories above :data:`BLOCK_RAM_MIN_BITS` that did not land in
  block RAM are an error too.
* :func:`build_bitstream` — the full board flow through the amaranth-boards platform
  (``platform.build(..., do_build=False)``, ``plan.extract(dir)``, then its build script),
  timing-driven at the requested clock, resources and fmax from nextpnr's ``--report`` JSON.
  It returns the ``synth-<target>.json`` record of ``REPORTS.md``.

The toolchain is always YoWASP, found next to the running interpreter (the venv) or on ``PATH``,
and is handed to the build as its whole environment: ``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``,
``NEXTPNR_ECP5``, ``ECPPACK`` plus ``PATH=/usr/bin:/bin``, ``HOME`` and the YoWASP cache
variables, so a system Yosys or an ``AMARANTH_ENV_*`` script cannot leak in. Each tool variable
names a small sh wrapper (in the temporary build directory) that appends the command line and all
output to ``out_dir/build.log``, then ``exec`` runs the YoWASP tool in its place.
``AMARANTH_<override>`` variables that would change the flow are refused.

Interruption: every tool (Yosys alone, or the board build script with the tools it starts) runs in
its own session. On Ctrl-C, a timeout or any exception while it runs, the whole process group is
sent SIGTERM, then SIGKILL after :data:`STOP_GRACE_S` seconds, and the exception propagates; in
the main thread SIGTERM and SIGHUP stop the group too, then end the process with exit status
128 + signal after the usual cleanup. No tool outlives the Python process that started it, and an
interrupted build leaves no bitstream and no temporary build folder.

Clock: amaranth-boards constrains the default clock to the oscillator's frequency (12 MHz on the
iCEBreaker, 25 MHz on the ULX3S), and the platform writes that constraint to the PCF/LPF. To make
nextpnr time the design at ``clock_mhz`` we swap the platform's clock resource for a copy whose
``Clock`` carries that frequency (a per-instance change; the board class is untouched). The design
still runs from the oscillator unless it brings its own PLL, so the constraint is never set below
the oscillator's frequency.
"""

import contextlib
import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hw.components import BLOCK_RAM_MIN_BITS  # memories above it: block RAM
from hw.targets import TARGETS, Target, TargetError, get_target
from model.errors import StforgeError

__all__ = [
    "BLOCK_RAM_MIN_BITS",
    "TARGETS",
    "FitError",
    "SynthError",
    "Target",
    "TargetError",
    "TimingError",
    "ToolNotFoundError",
    "build_bitstream",
    "check_fits",
    "find_tool",
    "get_target",
    "synth_stats",
]



class SynthError(StforgeError):
    """A synthesis, place-and-route or packing step failed."""


class ToolNotFoundError(SynthError):
    """A YoWASP tool is not installed."""


class FitError(SynthError):
    """The design needs more of a resource than the device has."""


class TimingError(SynthError):
    """nextpnr could not meet the requested clock."""


# Yosys memory_libmap cells -> where the memory lives.
_MEMORY_KINDS = {
    "$__ICE40_RAM4K_": "bram",
    "$__DP16KD_": "bram",
    "$__PDPW16KD_": "bram",
    "$__ICE40_SPRAM_": "spram",
    "$__TRELLIS_DPR16X4_": "lutram",
}

_MEMORY_PLACES = {"ff": "flip-flops", "lutram": "LUT RAM", "unknown": "an unknown place"}

# nextpnr utilization cell types -> report keys.
_PNR_CELLS = {
    "ice40": {"lut": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM",
              "dsp": "ICESTORM_DSP"},
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D"},
}

# Platform overrides that change what the build does. AMARANTH_<name> in the environment would
# replace the ones this module passes, or alter the flow behind its back.
_OVERRIDES = ("synth_opts", "nextpnr_opts", "script_after_synth", "script_after_read",
              "yosys_opts", "read_verilog_opts", "add_constraints", "add_preferences",
              "add_pre_pack", "icepack_opts", "ecppack_opts")


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def find_tool(name):
    """Absolute path of ``yowasp-<name>``: next to the interpreter (the venv) first, then PATH."""
    exe = f"yowasp-{name}"
    local = Path(sys.executable).parent / exe
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(exe)
    if found:
        return found
    raise ToolNotFoundError(f"{exe} not found next to {sys.executable} or on PATH; "
                            f"install the YoWASP tools with `make install`")


def _tool_env_var(name):
    return re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


def _hermetic_env(tools):
    """The whole environment of a tool run: tool paths, a system PATH and the YoWASP cache."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    for var in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "YOWASP_CACHE_DIR"):
        if var in os.environ:
            env[var] = os.environ[var]
    for name, path in tools.items():
        env[_tool_env_var(name)] = path
    return env


def _relevant_lines(log_path, count=3):
    """The last error lines of a log (or its last lines, if none says ERROR)."""
    try:
        lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines()]
    except OSError:
        return []
    lines = [line for line in lines if line]
    errors = [line for line in lines
              if re.search(r"\berror\b|\bfailed\b|exception", line, re.IGNORECASE)
              and not line.startswith("$ ")]
    return (errors or [line for line in lines if not line.startswith("$ ")])[-count:]


def _quote(log_path, *, kept=True):
    """The relevant log lines on one line, and where the log is if it is kept."""
    lines = _relevant_lines(log_path)
    quoted = " | ".join(lines) if lines else "(no output)"
    return f"{quoted} [log: {log_path}]" if kept else quoted


#: Seconds a stopped tool gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 3.0


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):   # gone, or nothing this process may signal
        pass


def _stop_process_group(proc, grace=None):
    """SIGTERM the process group ``proc`` leads, SIGKILL what is left of it after ``grace``
    seconds (:data:`STOP_GRACE_S`), and reap ``proc``. In the board flow the tools run behind
    the build script and ``sh`` wrappers: killing ``proc`` alone would orphan them."""
    grace = STOP_GRACE_S if grace is None else grace
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        proc.poll()                     # reap the leader: a zombie still counts in its group
        if not _group_alive(proc.pid):
            break
        if time.monotonic() >= deadline:
            _signal_group(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()


@contextlib.contextmanager
def _signals_raise():
    """In the main thread, turn SIGTERM and SIGHUP (where they still have their default action)
    into ``SystemExit(128 + signal)`` while a tool runs: its process group is stopped and the
    callers' cleanup runs (no half-built folder stays), then the process exits with the status a
    shell reports for that signal. A tool in its own session gets no hangup from the terminal,
    so without this closing the terminal would orphan it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on(signum, frame):
        raise SystemExit(128 + signum)

    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, exit_on)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_process(argv, *, cwd, env, stdout, timeout=None):
    """Run ``argv`` in a new session (its own process group) and return its exit status.

    On a timeout (``subprocess.TimeoutExpired``), Ctrl-C (``KeyboardInterrupt``) or any other
    exception while it runs, the whole group (the tool and everything it started) is stopped
    with :func:`_stop_process_group` before the exception propagates; SIGTERM and SIGHUP stop
    it too (:func:`_signals_raise`). Ctrl-C at a terminal reaches only this process (the tool
    is not in the terminal's foreground group), which then stops the tools: none is left
    running.
    """
    with _signals_raise():
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except BaseException:
            _stop_process_group(proc)
            raise


def _run_tool(argv, *, cwd, env, log_path, timeout, log_kept=True):
    """Run one tool with stdout and stderr appended to ``log_path``; raise SynthError on failure.

    The tool runs in its own process group, stopped as a whole on a timeout, Ctrl-C or any
    exception (:func:`_run_process`)."""
    tool = Path(argv[0]).name
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        try:
            returncode = _run_process(argv, cwd=cwd, env=env, stdout=log, timeout=timeout)
        except FileNotFoundError:
            raise ToolNotFoundError(f"{tool} could not be started ({argv[0]} is missing)") from None
        except subprocess.TimeoutExpired:
            raise SynthError(f"{tool} did not finish within {timeout} s: "
                             f"{_quote(log_path, kept=log_kept)}") from None
    if returncode != 0:
        raise SynthError(f"{tool} failed (exit {returncode}): "
                         f"{_quote(log_path, kept=log_kept)}")


# --------------------------------------------------------------------------------------------
# Synthesis statistics
# --------------------------------------------------------------------------------------------


def _count_resources(cells, family):
    """Report-keyed resource counts from a ``{cell type: count}`` map of a mapped netlist."""
    def total(*prefixes):
        return sum(n for cell, n in cells.items() if cell.startswith(prefixes))

    if family == "ice40":
        return {
            "lut": cells.get("SB_LUT4", 0),
            "ff": total("SB_DFF"),
            "bram": total("SB_RAM40_4K"),
            "spram": cells.get("SB_SPRAM256KA", 0),
            "dsp": cells.get("SB_MAC16", 0),
            "carry": cells.get("SB_CARRY", 0),
        }
    # ECP5: a CCU2C is two LUT4s of a slice; a 16x4 distributed RAM takes a slice pair.
    return {
        "lut": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
        + 4 * cells.get("TRELLIS_DPR16X4", 0),
        "ff": cells.get("TRELLIS_FF", 0),
        "bram": cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0),
        "spram": 0,
        "dsp": cells.get("MULT18X18D", 0),
        "carry": cells.get("CCU2C", 0),
    }


def _stat_cells(stat):
    """``{cell type: count}`` of the whole design from ``stat -json`` output."""
    summary = stat.get("design") or next(iter(stat.get("modules", {}).values()), {})
    cells = summary.get("num_cells_by_type", summary.get("cells", {}))
    return {cell: count for cell, count in cells.items() if not cell.startswith("$scopeinfo")}


def _stat_counts(path, family):
    return _count_resources(_stat_cells(json.loads(Path(path).read_text())), family)


def _parse_memories(dump_text, log_text):
    """Memories from an RTLIL dump of the ``$mem_v2`` cells, with where memory_libmap put them."""
    mapped = {}
    for match in re.finditer(r"^mapping memory (\S+) via (\S+)", log_text, re.MULTILINE):
        mapped[match.group(1)] = _MEMORY_KINDS.get(match.group(2), match.group(2))
    for match in re.finditer(r"^using FF mapping for memory (\S+)", log_text, re.MULTILINE):
        mapped[match.group(1)] = "ff"

    memories = []
    for block in re.findall(r"^\s*cell \$mem_v2 .*?^\s*end$", dump_text, re.MULTILINE | re.DOTALL):
        params = dict(re.findall(r"parameter \\(\w+) (\S+)", block))
        memid = params.get("MEMID", '""').strip('"').replace("\\\\", "\\").lstrip("\\")
        width = int(params.get("WIDTH", "0"))
        depth = int(params.get("SIZE", "0"))
        location = next((kind for name, kind in mapped.items()
                         if name.split(".", 1)[-1] == memid), "unknown")
        memories.append({"name": memid, "width": width, "depth": depth, "bits": width * depth,
                         "mapped_to": location})
    return sorted(memories, key=lambda mem: mem["name"])


def synth_stats(design, target, top_name="top", *, ports=None, log_dir=None, timeout=900):
    """Synthesize ``design`` for ``target`` with Yosys and count the resources it maps to.

    Parameters
    ----------
    design : Elaboratable or str
        An Amaranth design (converted with :func:`amaranth.back.verilog.convert`; a plain
        Elaboratable needs ``ports``) or Verilog text whose top module is ``top_name``.
    target : str
        A key of :data:`TARGETS`.
    log_dir : path or None
        Where to keep the Yosys log and the Verilog (``synth-<target>.log`` / ``.v``); by default
        they live in a temporary directory and are quoted in errors only.

    Returns
    -------
    dict
        ``target``, ``lut`` (SB_LUT4 on iCE40; LUT4 equivalents incl. carry and LUT RAM on ECP5),
        ``ff``, ``bram`` (EBR / DP16KD), ``spram``, ``dsp``, ``carry``, ``cells`` (all mapped
        cells), ``cell_types`` (count per cell type), ``memories`` (name, width, depth, bits and
        ``mapped_to``: ``bram``, ``spram``, ``lutram`` or ``ff``), ``seconds``.
    """
    spec = get_target(target)
    if not isinstance(top_name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", top_name):
        raise ValueError(f"Top module name must be a Verilog identifier, not {top_name!r}")
    if isinstance(design, str):
        verilog_text = design
    else:
        from amaranth.back import verilog
        verilog_text = verilog.convert(design, name=top_name, ports=ports)
    yosys = find_tool("yosys")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stforge-synth-") as work:
        work = Path(work)
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            log_path = Path(log_dir) / f"synth-{spec.name}.log"
            (Path(log_dir) / f"synth-{spec.name}.v").write_text(verilog_text)
        else:
            log_path = work / "yosys.log"
        log_path.write_text("")
        (work / "design.v").write_text(verilog_text)
        # Stop before memory mapping to list the memories, then finish the same script.
        (work / "synth.ys").write_text(
            "read_verilog -sv design.v\n"
            f"hierarchy -check -top {top_name}\n"
            f"{spec.script_after_read}\n"
            f"{spec.synth_command} -top {top_name} -run :map_ram\n"
            "dump -o memories.il t:$mem_v2\n"
            f"{spec.synth_command} -top {top_name} -run map_ram:\n"
            "tee -q -o stat.json stat -json\n")
        _run_tool([yosys, "synth.ys"], cwd=work, env=_hermetic_env({"yosys": yosys}),
                  log_path=log_path, timeout=timeout, log_kept=log_dir is not None)
        try:
            stat = json.loads((work / "stat.json").read_text())
        except (OSError, ValueError) as error:
            raise SynthError(f"Yosys wrote no readable statistics ({error}): "
                             f"{_quote(log_path, kept=log_dir is not None)}") from None
        dump = (work / "memories.il").read_text() if (work / "memories.il").exists() else ""
        log_text = log_path.read_text(errors="replace")

    cells = _stat_cells(stat)
    stats = {"target": spec.name, **_count_resources(cells, spec.family),
             "cells": sum(cells.values()), "cell_types": dict(sorted(cells.items())),
             "memories": _parse_memories(dump, log_text),
             "seconds": round(time.monotonic() - started, 2)}
    if log_dir is not None:
        stats["log"] = str(log_path)
    return stats


def check_fits(stats, target):
    """Raise :class:`FitError` unless ``stats`` fit ``target``; return the utilization fractions.

    ``stats`` is a :func:`synth_stats` result or a :func:`build_bitstream` report. Every exceeded
    resource is named with both numbers, e.g. "needs 34 EBR (4 Kbit) but the iCE40 UP5K has 30";
    so is every memory above :data:`BLOCK_RAM_MIN_BITS` bits that is not in block RAM.
    """
    spec = get_target(target)
    problems, utilization = [], {}
    for key, limit in spec.limits.items():
        used = stats.get(key) or 0
        if limit:
            utilization[key] = used / limit
        if used > limit:
            problems.append(f"needs {used} {spec.resource_names[key]} but the {spec.device} "
                            f"has {limit}")
    for memory in stats.get("memories", ()):
        if memory["bits"] > BLOCK_RAM_MIN_BITS and memory["mapped_to"] not in ("bram", "spram"):
            problems.append(
                f"memory {memory['name']!r} ({memory['depth']}x{memory['width']} = "
                f"{memory['bits']} bits) was mapped to "
                f"{_MEMORY_PLACES.get(memory['mapped_to'], memory['mapped_to'])}, not block RAM "
                f"(give it a synchronous read port)")
    if problems:
        raise FitError(f"Design does not fit {spec.name}: " + "; ".join(problems))
    return utilization


# --------------------------------------------------------------------------------------------
# Bitstreams
# --------------------------------------------------------------------------------------------


def _constrain_default_clock(platform, clock_hz):
    """Make the platform constrain its default clock to ``clock_hz`` (this instance only)."""
    resource = platform.lookup(platform.default_clk)
    from amaranth.build import Clock
    constrained = copy.copy(resource)
    constrained.clock = Clock(clock_hz)
    platform.resources[resource.name, resource.number] = constrained


def _write_tool_wrappers(tools, wrapper_dir, log_path):
    """Tiny sh wrappers that append each tool's command line and output to ``log_path``."""
    wrapper_dir.mkdir()
    wrappers = {}
    for name, path in tools.items():
        wrapper = wrapper_dir / name
        wrapper.write_text(
            "#!/bin/sh\n"
            f"printf '$ %s\\n' \"{Path(path).name} $*\" >> {shlex.quote(str(log_path))}\n"
            f"exec {shlex.quote(path)} \"$@\" >> {shlex.quote(str(log_path))} 2>&1\n")
        wrapper.chmod(0o755)
        wrappers[name] = str(wrapper)
    return wrappers


def _pnr_overuse(log_path):
    """``"; nextpnr packed 12476/5280 ICESTORM_LC, ..."`` for the over-used cell types in a
    nextpnr log's device utilisation table ('' when there are none or no log)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    over = [f"{used}/{available} {cell}" for cell, used, available in
            re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", text, re.MULTILINE)
            if int(used) > int(available)]
    return f"; nextpnr packed {', '.join(dict.fromkeys(over))}" if over else ""


def _failed_step(log_path):
    try:
        commands = [line for line in Path(log_path).read_text(errors="replace").splitlines()
                    if line.startswith("$ ")]
    except OSError:
        return "the build"
    return commands[-1][2:].split()[0] if commands else "the build"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_build_arguments(clock_mhz, name) -> None:
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or \
            not clock_mhz > 0:
        raise ValueError(f"Clock frequency must be a positive number of MHz, not {clock_mhz!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"Design name must be alphanumeric, not {name!r}")
    overridden = [f"AMARANTH_{key}" for key in _OVERRIDES if f"AMARANTH_{key}" in os.environ]
    if overridden:
        raise SynthError(f"{', '.join(overridden)} set in the environment would change the "
                         f"build behind stforge's back; unset it")


def _run_build(plan, products, env, spec, name, out_dir, log_path) -> None:
    """Run the extracted build script; a failure names the step and, if one ran out, the
    resource. The tools' logs and report are kept in `out_dir` either way."""
    report_name = f"{name}.report.json"
    try:
        with open(log_path, "a") as log:
            returncode = _run_process(["sh", f"{plan.script}.sh"], cwd=products, env=env,
                                      stdout=log)
        if returncode != 0:
            step = _failed_step(log_path)
            packed = _pnr_overuse(products / f"{name}.tim")
            try:  # when Yosys got through, say which resource ran out, if one did
                check_fits(_stat_counts(products / f"{name}.stat.json", spec.family), spec)
            except FitError as error:
                raise FitError(f"{error} ({step} failed{packed}) [log: {log_path}]") from None
            except (OSError, ValueError):
                pass
            if packed:      # Yosys' counts fit, nextpnr's packing does not
                raise FitError(f"Design does not fit {spec.name}: {packed[2:]} ({step} "
                               f"failed) [log: {log_path}]")
            raise SynthError(f"{step} failed for {spec.name}: {_quote(log_path)}")
    finally:
        for product, kept in ((f"{name}.rpt", f"{name}.yosys.log"),
                              (f"{name}.tim", f"{name}.nextpnr.log"),
                              (report_name, f"{name}.nextpnr.json")):
            if (products / product).exists():
                shutil.copyfile(products / product, out_dir / kept)


def _read_reports(products, spec, name, log_path) -> tuple[dict, dict, dict, list]:
    """(resources, clocks {name: {achieved, constraint}} (rounded), nextpnr utilization in
    use, the clocks that miss their constraint) of a finished build, from Yosys' stat and
    nextpnr's report."""
    try:
        pnr = json.loads((products / f"{name}.report.json").read_text())
        synth_counts = _stat_counts(products / f"{name}.stat.json", spec.family)
    except (OSError, ValueError) as error:
        raise SynthError(f"The build left no readable report ({error}): "
                         f"{_quote(log_path)}") from None
    used = {cell: entry for cell, entry in pnr.get("utilization", {}).items()
            if entry.get("used")}
    clocks = {clock: {"achieved": round(float(entry["achieved"]), 2),
                      "constraint": round(float(entry["constraint"]), 2)}
              for clock, entry in pnr.get("fmax", {}).items()}
    resources = {key: synth_counts[key] for key in ("lut", "ff", "bram", "spram", "dsp")}
    for key, cell in _PNR_CELLS[spec.family].items():
        resources[key] = pnr.get("utilization", {}).get(cell, {}).get("used", resources[key])
    failing = [f"{clock} reaches {entry['achieved']:.2f} MHz, {entry['constraint']:.2f} MHz "
               f"required" for clock, entry in pnr.get("fmax", {}).items()
               if entry["achieved"] < entry["constraint"]]  # nextpnr's own verdict
    return resources, clocks, used, failing


def build_bitstream(elaboratable, target, out_dir, clock_mhz, *, name="top"):
    """Synthesize, place, route and pack ``elaboratable`` for ``target``'s board.

    The design is a board top: it requests the platform's resources in ``elaborate`` and uses the
    ``sync`` domain, which the platform drives from the board oscillator. nextpnr is constrained
    to ``max(clock_mhz, oscillator)`` MHz and the build fails with :class:`TimingError` when a
    clock misses its constraint.

    Everything runs in a temporary directory inside ``out_dir``; only on success the bitstream
    is moved to ``out_dir/<name>.bin`` (iCE40) or ``.bit`` (ECP5), so a failed build leaves no
    partial bitstream (a bitstream of an earlier build is left as it was); so does an interrupted
    one (Ctrl-C), whose tools are stopped (:func:`_run_process`). Logs stay in ``out_dir`` either
    way: ``build.log`` (every tool's command and output), ``<name>.yosys.log``,
    ``<name>.nextpnr.log`` and ``<name>.nextpnr.json`` (nextpnr's report).

    Returns
    -------
    dict
        The ``synth-<target>.json`` record: ``target``, ``board``, ``lut`` (iCE40 logic cells /
        ECP5 TRELLIS_COMB), ``ff``, ``bram``, ``spram``, ``dsp``, ``fmax_mhz`` (the slowest
        clock), ``bitstream``, ``sha256``; plus ``device``, ``clock_mhz`` (the constraint),
        ``board_clock_mhz``, ``clocks`` (achieved/constraint per clock), ``utilization``
        (nextpnr used/available per cell type in use) and ``seconds``.
    """
    spec = get_target(target)
    _check_build_arguments(clock_mhz, name)
    tools = {tool: find_tool(tool) for tool in spec.tools}

    platform = spec.platform_class()()
    board_hz = platform.default_clk_frequency
    clock_hz = max(float(clock_mhz) * 1e6, board_hz)
    _constrain_default_clock(platform, clock_hz)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = (out_dir / "build.log").resolve()
    log_path.write_text(f"# stforge build_bitstream {spec.name} {name} at {clock_hz / 1e6:g} MHz\n")
    bitstream_name = name + spec.bitstream_suffix
    report_name = f"{name}.report.json"

    started = time.monotonic()
    # absolute: the tool wrappers are called from the build products directory
    build_dir = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=out_dir)).resolve()
    try:
        env = _hermetic_env(_write_tool_wrappers(tools, build_dir / ".tools", log_path))
        plan = platform.build(
            elaboratable, name=name, do_build=False,
            synth_opts=spec.synth_opts,
            script_after_read=spec.script_after_read or "# nothing after read",
            script_after_synth=f"tee -q -o {name}.stat.json stat -json",
            nextpnr_opts=f"--report {report_name} --timing-allow-fail")
        # not plan.execute_local: its subprocess.check_call, interrupted, kills only the `sh`
        # and leaves the tool it started running; _run_process stops the whole group
        products = plan.extract(str(build_dir / "build"))
        _run_build(plan, products, env, spec, name, out_dir, log_path)
        resources, clocks, used, failing = _read_reports(products, spec, name, log_path)
        if not (products / bitstream_name).is_file():
            raise SynthError(f"The build produced no {bitstream_name}: {_quote(log_path)}")
        if failing:
            raise TimingError(f"Timing not met on {spec.name} at {clock_hz / 1e6:g} MHz: "
                              f"{'; '.join(failing)} [log: {out_dir / (name + '.nextpnr.log')}]")

        final = out_dir / bitstream_name
        os.replace(products / bitstream_name, final)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)

    return {
        "target": spec.name,
        "board": spec.board,
        **resources,
        "fmax_mhz": min((entry["achieved"] for entry in clocks.values()), default=None),
        "bitstream": str(final),
        "sha256": _sha256(final),
        "device": spec.device,
        "clock_mhz": round(clock_hz / 1e6, 3),
        "board_clock_mhz": round(board_hz / 1e6, 3),
        "clocks": clocks,
        "utilization": used,
        "seconds": round(time.monotonic() - started, 1),
    }
