"""`make hdl`: deterministic Verilog of the accelerator for an artifact (torch-free).

    stforge hdl build/artifacts/l1p.json --out build/hdl/l1p [--no-trace] [--lanes 2]

Writes ``stforge_top.v`` (memory contents are inlined as initial values by Amaranth's back end,
so the file is self-contained), ``design.json`` (ports, widths, traced nodes) for the
testbenches and ``memory_map.json`` (the design's tables, firmware.images) for hosts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from amaranth.back import verilog

from firmware.images import Table, write_memory_map
from hw.accelerator import Accelerator
from model.ir import load_artifact
from model.ir.files import write_text
from model.errors import StforgeError, check_output_dir, positive_int

__all__ = ["generate_verilog", "settle_constant_processes", "memory_tables", "configure", "run",
           "TOP_NAME"]

TOP_NAME = "stforge_top"


def memory_tables(accelerator: Accelerator) -> list[Table]:
    """The accelerator's tables by id, as the host writes them (firmware.images)."""
    return [Table(t.id, t.name, t.width, tuple(t.words)) for t in accelerator.memory_map()]


#: A process of Yosys's Verilog back end that only assigns a constant: ``always @*`` with no
#: signal to wait on, which by the standard never runs (Verilator and Icarus keep the reg at its
#: power-up value); the FPGA build, from RTLIL, makes it the constant.
_CONSTANT_PROCESS = re.compile(r"^( +)always @\*\n +([^=\n]+?) = (\d+'[hb][0-9a-fA-F]+);$", re.M)


def settle_constant_processes(text: str) -> str:
    """Give every constant ``always @*`` process of the Verilog an ``initial`` twin, so that
    simulators see the constant from time 0 as the FPGA does. Found by `make fuzz-hw`: with
    1-bit spike counts the issue FSM's event count is the constant 1, and both simulators
    read 0 (every weight times 0: a stem that never fired)."""
    return _CONSTANT_PROCESS.sub(
        lambda m: f"{m[1]}initial {m[2]} = {m[3]};\n{m[0]}", text)


def generate_verilog(artifact_path, out_dir, trace: bool = True, lanes: int = 1) -> dict:
    """Write Verilog and a design description; returns the description."""
    artifact = load_artifact(artifact_path)
    try:
        top = Accelerator(artifact, trace=trace, lanes=lanes)
    except ValueError as exc:       # a configuration this artifact cannot take
        raise StforgeError(str(exc)) from None
    text = settle_constant_processes(verilog.convert(top, name=TOP_NAME, emit_src=False))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    design = {
        "top": TOP_NAME, "artifact": str(Path(artifact_path).resolve()), "trace": trace,
        "lanes": top.lanes, "chunk": top.chunk,
        "pixel_bits": top.pixel_bits, "logit_bits": top.logit_bits, "classes": top.classes,
        "timesteps": top.T, "tokens": top.N, "input_shape": [top.in_c, top.in_h, top.in_w],
        "time_varying_input": top.time_varying,
        "trace_layout": {name: int(field.width) for name, field in top.trace_layout},
        "trace_kinds": top.plan.design()["trace_kinds"], "plan": top.plan.design(),
        "result_layout": {name: int(field.width) for name, field in top.result_layout},
        "traced": [{"index": artifact.index(n.name), "name": n.name} for n in artifact.neurons],
    }
    write_text(out_dir / f"{TOP_NAME}.v", text)
    write_memory_map(out_dir / "memory_map.json", memory_tables(top), loadable=top.loadable)
    write_text(out_dir / "design.json", json.dumps(design, indent=1) + "\n")
    return design


def configure(parser) -> None:
    """`stforge hdl`'s arguments."""
    parser.add_argument("artifact", help="artifact manifest (.json) from `make export`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-trace", action="store_true", help="leave out the trace port")
    parser.add_argument("--lanes", type=positive_int, default=1,
                        help="parallel lanes per unit (docs/HARDWARE.md; default 1)")


def run(args) -> int:
    """`stforge hdl`: write the design; a user mistake raises StforgeError (one line)."""
    check_output_dir(args.out, "--out")
    design = generate_verilog(args.artifact, args.out, trace=not args.no_trace,
                              lanes=args.lanes)
    print(f"{design['top']}.v ({len(design['traced'])} traced nodes, {design['lanes']} "
          f"lane{'s' if design['lanes'] != 1 else ''}) -> {args.out}")
    return 0
