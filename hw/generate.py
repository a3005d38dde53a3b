"""`make hdl`: deterministic Verilog of the accelerator for an artifact (torch-free).

    python -m hw.generate build/artifacts/l1p.json --out build/hdl/l1p [--no-trace] [--lanes 2]

Writes ``stforge_top.v`` (memory contents are inlined as initial values by Amaranth's back end,
so the file is self-contained) and ``design.json`` (ports, widths, traced nodes) for the
testbenches. A user mistake prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amaranth.back import verilog

from hw.accelerator import NEURON_OPS, Accelerator
from model.artifact import load_artifact
from model.errors import StforgeError, report_error

__all__ = ["generate_verilog", "main", "TOP_NAME"]

TOP_NAME = "stforge_top"


def generate_verilog(artifact_path, out_dir, trace: bool = True, lanes: int = 1) -> dict:
    """Write Verilog and a design description; returns the description."""
    artifact = load_artifact(artifact_path)
    try:
        top = Accelerator(artifact, trace=trace, lanes=lanes)
    except ValueError as exc:       # a configuration this artifact cannot take
        raise StforgeError(str(exc)) from None
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    design = {
        "top": TOP_NAME, "artifact": str(Path(artifact_path).resolve()), "trace": trace,
        "lanes": top.lanes, "chunk": top.chunk,
        "pixel_bits": top.pixel_bits, "logit_bits": top.logit_bits, "classes": top.classes,
        "timesteps": top.T, "tokens": top.N, "input_shape": [top.in_c, top.in_h, top.in_w],
        "time_varying_input": top.time_varying,
        "trace_layout": {name: int(field.width) for name, field in top.trace_layout},
        "result_layout": {name: int(field.width) for name, field in top.result_layout},
        "traced": [{"index": i, "name": n["name"]} for i, n in enumerate(artifact.nodes)
                   if n["op"] in NEURON_OPS],
    }
    tmp = out_dir / f"{TOP_NAME}.v.tmp"
    tmp.write_text(text)
    tmp.replace(out_dir / f"{TOP_NAME}.v")
    (out_dir / "design.json").write_text(json.dumps(design, indent=1) + "\n")
    return design


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw.generate", description=__doc__.split("\n")[0])
    parser.add_argument("artifact", help="artifact manifest (.json) from `make export`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-trace", action="store_true", help="leave out the trace port")
    parser.add_argument("--lanes", type=int, default=1,
                        help="parallel lanes per unit (docs/HARDWARE.md; default 1)")
    args = parser.parse_args(argv)
    try:
        design = generate_verilog(args.artifact, args.out, trace=not args.no_trace,
                                  lanes=args.lanes)
    except StforgeError as exc:
        return report_error(exc)
    print(f"{design['top']}.v ({len(design['traced'])} traced nodes, {design['lanes']} "
          f"lane{'s' if design['lanes'] != 1 else ''}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
