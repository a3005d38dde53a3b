"""Build the generated Verilog with Verilator (or Icarus) and run the cocotb testbench over golden
images; write build/reports/sim.json (docs/REPORTS.md) and print a summary table.

    stforge sim --hdl build/hdl/l1p --golden build/sim/l1p-golden.npz \
        [--images 100] [--sim verilator|icarus] [--waves --image 3] [--report ...]

`make sim` prepares the inputs (export, golden data, HDL) and calls this. Torch-free: golden
data crosses in as an .npz. A user mistake prints one line and exits 2; a mismatch exits 1.

sim.json records in "hw_source_sha256" the content hash of the hardware sources this run checked
(model.sources.hw_source_sha256: hw/**/*.py and the project files they import), taken before the
simulation and compared after the cycle model ran; null (and a warning) when they changed in
between. `make sweep-hw` trusts the cycle model only while that hash is the checkout's. The hash
is of the sources at simulation time: `make sim` regenerates the Verilog just before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from hw.cycles import summarize as cycle_summary
from hw.plan import Plan
from model.errors import StforgeError, positive_int
from model.ir import load_artifact
from model.ir.files import write_json
from model.sources import hw_source_sha256
from sim.toolchain import SIMULATORS, prepare_simulator

__all__ = ["run_simulation", "configure", "run", "SIMULATORS"]

TOP = "stforge_top"
BUILD_RECIPE = 2          # bump when the build steps change: cached builds are redone


_KICK = re.compile(r"^(\s*reg (\\\$auto\$verilog_backend\S+) += 0;)$", re.M)


def _icarus_source(verilog: Path, build_dir: Path) -> Path:
    """Yosys guards every `always @*` block with a register initialised to 0 so that it runs at
    time 0; Icarus executes declaration initialisers without an event, so those blocks (and the
    outputs they drive) stay X until an input changes. An `initial` that sets the register to 1
    gives them that event. The design is otherwise untouched."""
    text = _KICK.sub(lambda mt: f"{mt.group(1)}\n  initial #0 {mt.group(2)} = 1;",
                     verilog.read_text())
    patched = build_dir / verilog.name
    patched.write_text(text)
    return patched


def _build(sim: str, verilog: Path, build_dir: Path, waves: bool) -> float:
    """Build once per (Verilog, simulator, waves); returns seconds spent (0 when cached)."""
    from cocotb_tools.runner import get_runner
    digest = hashlib.sha256(verilog.read_bytes() + f"{sim}{waves}{BUILD_RECIPE}".encode()).hexdigest()
    stamp = build_dir / "stforge.stamp"
    if stamp.exists() and stamp.read_text() == digest:
        return 0.0
    started = time.time()
    build_dir.mkdir(parents=True, exist_ok=True)
    if sim == "icarus":
        verilog = _icarus_source(verilog, build_dir)
    args = ["-Wno-fatal", "-Wno-WIDTH", "-O2"] if sim == "verilator" else []
    if sim == "verilator" and waves:
        args += ["--trace-structs"]          # cocotb adds --trace: a VCD (FST needs lz4 headers)
    get_runner(sim).build(sources=[verilog], hdl_toplevel=TOP, build_dir=build_dir,
                          timescale=("1ns", "1ps"), waves=waves, build_args=args, always=True,
                          log_file=build_dir / "build.log")
    stamp.write_text(digest)
    return time.time() - started


def run_simulation(hdl_dir, golden_path, images, sim: str = "verilator", waves: bool = False,
                   build_root="build/sim", extra_env: dict | None = None) -> dict:
    """Simulate `images` (indices into the golden file); returns the raw per-image results."""
    from cocotb_tools.runner import get_runner
    from model.ir.golden import GoldenData
    hdl_dir, golden_path = Path(hdl_dir), Path(golden_path)
    for p in (hdl_dir / f"{TOP}.v", hdl_dir / "design.json", golden_path):
        if not p.exists():
            raise StforgeError(f"{p} does not exist (run `make hdl` / `make sim`)")
    prepare_simulator(sim)
    golden = GoldenData(golden_path)
    bad = [i for i in images if not 0 <= i < len(golden)]
    if bad:
        raise StforgeError(f"image {bad[0]} is not in {golden_path} (it holds {len(golden)})")
    build_dir = Path(build_root) / f"{hdl_dir.name}-{sim}{'-waves' if waves else ''}"
    build_seconds = _build(sim, hdl_dir / f"{TOP}.v", build_dir, waves)
    results = build_dir / "results.json"
    results.unlink(missing_ok=True)
    started = time.time()
    env = {"STFORGE_DESIGN": str((hdl_dir / "design.json").resolve()),
           "STFORGE_GOLDEN": str(golden_path.resolve()),
           "STFORGE_IMAGES": ",".join(map(str, images)),
           "STFORGE_RESULTS": str(results.resolve()), **(extra_env or {})}
    try:
        get_runner(sim).test(test_module="sim.testbench", hdl_toplevel=TOP,
                             hdl_toplevel_lang="verilog", build_dir=build_dir,
                             test_dir=build_dir, extra_env=env, waves=waves,
                             timescale=("1ns", "1ps"),
                             results_xml=str((build_dir / "results.xml").resolve()))
    except SystemExit:
        # Under pytest the cocotb runner exits when the cocotb test fails, i.e. on a mismatch;
        # the scoreboard's per-image results (read below) say what failed.
        pass
    seconds = time.time() - started
    if not results.exists():
        raise StforgeError(f"the simulation wrote no results (see {build_dir}/)")
    raw = json.loads(results.read_text())
    raw.update(build_seconds=build_seconds, run_seconds=seconds, build_dir=str(build_dir),
               hdl_dir=str(hdl_dir))
    return raw


def summarize(raw: dict, sim: str, model: str, golden_path) -> dict:
    """sim.json from the per-image results (and the analytic cycle model, where available)."""
    from model.ir.golden import GoldenData
    imgs = raw["images"]
    cycles = np.array([r["cycles"] for r in imgs], dtype=float)
    bitexact = sum(r["bitexact"] for r in imgs)
    correct = sum(r["predicted"] == r["label"] for r in imgs)
    layer_names = list(imgs[0]["layer_cycles"]) if imgs else []
    layers = [{"name": n, "cycles": float(np.mean([r["layer_cycles"].get(n, 0) for r in imgs]))}
              for n in layer_names]
    report = {"simulator": sim, "model": model, "images": len(imgs), "bitexact": bitexact,
              "mismatches": len(imgs) - bitexact,
              "accuracy": correct / len(imgs) if imgs else 0.0,
              "cycles_per_inference": {"mean": float(cycles.mean()), "min": float(cycles.min()),
                                       "max": float(cycles.max())} if len(imgs) else {},
              "layers": layers,
              "simulated_cycles_per_second": float(cycles.sum() / max(raw["run_seconds"], 1e-9)),
              "run_seconds": raw["run_seconds"], "build_seconds": raw["build_seconds"]}
    if imgs:
        # measured cycles beside the analytic cycle model and the ideal (work-bound) cycles
        design = json.loads((Path(raw["hdl_dir"]) / "design.json").read_text())
        plan = Plan.build(load_artifact(design["artifact"]), design.get("lanes", 1),
                          design.get("chunk"))
        cyc = cycle_summary(plan, GoldenData(golden_path), measured=imgs,
                            indices=[r["image"] for r in imgs])
        report.update(cyc, lanes=design.get("lanes", 1))
    first = next((m for r in imgs for m in r["mismatches"]), None)
    if first:
        report["first_mismatch"] = first
    return report


def print_table(report: dict) -> None:
    print(f"\n{'layer':14} {'cycles':>10} {'ideal':>10} {'expected':>10} {'x ideal':>8}")
    for layer in report["layers"]:
        ideal = layer.get("ideal_cycles")
        expected = layer.get("expected_cycles")
        fmt = lambda v: f"{v:10.0f}" if isinstance(v, (int, float)) else f"{'-':>10}"
        ratio = f"{layer['cycles'] / ideal:8.2f}" if ideal else f"{'-':>8}"
        print(f"{layer['name']:14} {fmt(layer['cycles'])} {fmt(ideal)} {fmt(expected)} {ratio}")
    c = report["cycles_per_inference"]
    print(f"\n{report['model']} on {report['simulator']}: {report['bitexact']}/{report['images']} "
          f"images bit-exact, accuracy {report['accuracy']:.3f}, cycles per inference "
          f"mean {c['mean']:.0f} (min {c['min']:.0f}, max {c['max']:.0f})"
          + (f", ideal {report['ideal_cycles_per_inference']:.0f}"
             if "ideal_cycles_per_inference" in report else "")
          + (f", cycle model off by at most {100 * report['model_error']:.2f}%"
             if "model_error" in report else "")
          + f"; {report['simulated_cycles_per_second']:.0f} simulated cycles/s")
    if "first_mismatch" in report:
        print(f"FIRST MISMATCH: {report['first_mismatch']}")


def configure(parser) -> None:
    """`stforge sim`'s arguments."""
    parser.add_argument("--hdl", required=True, help="folder from `stforge hdl`")
    parser.add_argument("--golden", required=True, help=".npz from `stforge golden-data`")
    parser.add_argument("--images", type=positive_int, default=100, help="first N golden images")
    parser.add_argument("--sim", default=os.environ.get("SIM", "verilator"))
    parser.add_argument("--waves", action="store_true", help="dump a waveform of one image")
    parser.add_argument("--image", type=int, default=0, help="the image --waves records")
    parser.add_argument("--report", default="build/reports/sim.json")
    parser.add_argument("--model", default=None, help="name for the report (default: hdl folder)")


def run(args) -> int:
    """`stforge sim`: simulate, compare, write sim.json; exit 1 on any mismatch."""
    images = [args.image] if args.waves else list(range(args.images))
    hw_sources = hw_source_sha256()          # what this run verifies (see the docstring)
    raw = run_simulation(args.hdl, args.golden, images, args.sim, args.waves)
    report = summarize(raw, args.sim, args.model or Path(args.hdl).name, args.golden)
    if hw_source_sha256() != hw_sources:
        hw_sources = None
        print("stforge: warning: the hw sources changed during the simulation; sim.json records "
              "no hw_source_sha256, so it vouches for no version of them", file=sys.stderr)
    report["hw_source_sha256"] = hw_sources
    write_json(args.report, report)
    # every variant's last run also stays beside it, for comparisons (bench, README)
    write_json(Path(args.report).with_name(f"sim-{report['model']}.json"), report)
    print_table(report)
    if args.waves:
        print(f"waveform of image {args.image}: {raw['build_dir']}/dump.vcd")
    return 0 if report["mismatches"] == 0 else 1
