"""Build the generated Verilog with Verilator (or Icarus) and run the cocotb testbench over golden
images; write build/reports/sim.json (docs/REPORTS.md) and print a summary table.

    stforge sim --hdl build/hdl/l1p --golden build/sim/l1p-golden-360.npz \
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

from hw.cycles import image_spikes, inference_cycles, summarize as cycle_summary
from hw.plan import Plan
from model.errors import StforgeError, check_output_path, positive_int
from model.ir import load_artifact
from model.ir.files import write_json
from model.sources import hw_source_sha256
from sim.harness import HARNESS_TOP, harness_source
from sim.toolchain import SIMULATORS, build_verilator, prepare_simulator

__all__ = ["run_simulation", "configure", "run", "SIMULATORS"]

TOP = "stforge_top"
BUILD_RECIPE = 6          # bump when the build steps change: cached builds are redone


_KICK = re.compile(r"^(\s*reg (\\\$auto\$verilog_backend\S+) += 0;)$", re.M)
#: A register declared without an initial value (not a memory array)
_UNINITIALISED = re.compile(r"^(\s*reg (?:signed )?(?:\[[^\]]+\] )?\S+ ?);$", re.M)


def _icarus_source(verilog: Path, build_dir: Path) -> Path:
    """Two patches make Icarus simulate the design as Verilator and the FPGAs do, the design
    otherwise untouched:

    * Yosys guards every `always @*` block with a register initialised to 0 so that it runs at
      time 0; Icarus executes declaration initialisers without an event, so those blocks (and
      the outputs they drive) stay X until an input changes. An `initial` that sets the
      register to 1 gives them that event.
    * Registers without an initial value (memory read-data registers) start at 0, as in
      Verilator and in the FPGAs' configuration. Icarus's X would otherwise spread
      pessimistically (an X row index selects X even where every choice is equal). That the
      results do not depend on these power-up values is checked on Verilator with random
      initial values (tests/sim/test_sim.py).
    """
    text = _KICK.sub(lambda mt: f"{mt.group(1)}\n  initial #0 {mt.group(2)} = 1;",
                     verilog.read_text())
    text = _UNINITIALISED.sub(lambda mt: f"{mt.group(1)} = 0;", text)
    patched = build_dir / verilog.name
    patched.write_text(text)
    return patched


def _build(sim: str, hdl_dir: Path, build_dir: Path, waves: bool,
           random_init: bool = False, optimise: bool = True) -> float:
    """Build the harness around the design once per (Verilog, simulator, waves); returns the
    seconds spent (0 when the build is up to date)."""
    verilog = hdl_dir / f"{TOP}.v"
    harness = harness_source(json.loads((hdl_dir / "design.json").read_text()), waves)
    recipe = f"{sim}{waves}{random_init}{optimise}{BUILD_RECIPE}"
    digest = hashlib.sha256(verilog.read_bytes() + harness.encode() + recipe.encode()).hexdigest()
    stamp = build_dir / "stforge.stamp"
    if stamp.exists() and stamp.read_text() == digest:
        return 0.0
    started = time.time()
    stamp.unlink(missing_ok=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    top = build_dir / f"{HARNESS_TOP}.v"
    top.write_text(harness)
    if sim == "icarus":
        from cocotb_tools.runner import get_runner
        get_runner(sim).build(sources=[top, _icarus_source(verilog, build_dir)],
                              hdl_toplevel=HARNESS_TOP, build_dir=build_dir,
                              timescale=("1ns", "1ps"), waves=waves, always=True,
                              log_file=build_dir / "build.log")
    else:
        build_verilator([top, verilog], HARNESS_TOP, build_dir, waves, build_dir / "build.log",
                        random_init, optimise)
    stamp.write_text(digest)
    return time.time() - started


def _design_plan(design: dict) -> Plan:
    """The plan a generated design was built from, rebuilt from its design.json (artifact,
    lanes, chunk and the shared engine's organisation)."""
    return Plan.build(load_artifact(design["artifact"]), design.get("lanes", 1),
                      design.get("chunk"), engine=design.get("plan", {}).get("engine"))


def _deadlines(expected: list[dict]) -> list[int]:
    """Cycles after which an image counts as hung: twice the cycle model's total and more
    (the harness feeds the next image at once, so the pixels and a margin are added)."""
    return [2 * e["total"] + 10 * e["load"] + 1000 for e in expected]


def write_pixels(path: Path, golden, images, corrupt_pixel: int | None = None) -> int:
    """The harness's pixel file: every image's pixels in stream order, one hex value a line;
    returns the pixels per image. `corrupt_pixel` (tests only) flips pixel k of the first image
    in what the design receives, not in the golden data: the scoreboard must notice."""
    lines = []
    for n, image in enumerate(images):
        pixels = np.asarray(golden.images[image]).reshape(-1).astype(np.int64)
        if n == 0 and corrupt_pixel is not None:
            pixels[corrupt_pixel] = 0 if pixels[corrupt_pixel] else 1
        lines.append("\n".join(f"{int(p):x}" for p in pixels))
    path.write_text("\n".join(lines) + "\n")
    return len(np.asarray(golden.images[images[0]]).reshape(-1))


def run_simulation(hdl_dir, golden_path, images, sim: str = "verilator", waves: bool = False,
                   build_root="build/sim", corrupt_pixel: int | None = None,
                   random_init_seed: int | None = None, quiet: bool = False,
                   optimise: bool = True) -> dict:
    """Simulate `images` (indices into the golden file); returns the raw per-image results
    with the cycle model's expectation of each image (``expected``). `random_init_seed`
    (Verilator): every register without an initial value starts, and every X assignment
    takes, a random value from this seed, instead of 0. `optimise`: False builds Verilator's
    C++ at -O0 (short runs: it builds faster than it simulates slower)."""
    from cocotb_tools.runner import get_runner
    from model.ir.golden import GoldenData
    hdl_dir, golden_path = Path(hdl_dir), Path(golden_path)
    for p in (hdl_dir / f"{TOP}.v", hdl_dir / "design.json", golden_path):
        if not p.exists():
            raise StforgeError(f"{p} does not exist (run `make hdl` / `make sim`)")
    if not images:
        raise StforgeError("no images to simulate")
    prepare_simulator(sim)
    golden = GoldenData(golden_path)
    bad = [i for i in images if not 0 <= i < len(golden)]
    if bad:
        raise StforgeError(f"image {bad[0]} is not in {golden_path} (it holds {len(golden)})")
    design = json.loads((hdl_dir / "design.json").read_text())
    plan = _design_plan(design)
    expected = [inference_cycles(plan, *image_spikes(golden, i)) for i in images]
    random_init = random_init_seed is not None
    if random_init and sim != "verilator":
        raise StforgeError("random initial values need Verilator")
    build_dir = Path(build_root) / (f"{hdl_dir.name}-{sim}{'-waves' if waves else ''}"
                                    f"{'-random-init' if random_init else ''}")
    build_seconds = _build(sim, hdl_dir, build_dir, waves, random_init, optimise)
    run_dir = build_dir / "run"
    run_dir.mkdir(exist_ok=True)
    results, records = run_dir / "results.json", run_dir / "records.txt"
    results.unlink(missing_ok=True)
    pixels_per_image = write_pixels(run_dir / "pixels.hex", golden, images, corrupt_pixel)
    env = {"STFORGE_DESIGN": str((hdl_dir / "design.json").resolve()),
           "STFORGE_GOLDEN": str(golden_path.resolve()),
           "STFORGE_IMAGES": ",".join(map(str, images)),
           "STFORGE_DEADLINES": ",".join(map(str, _deadlines(expected))),
           "STFORGE_RECORDS": str(records.resolve()),
           "STFORGE_RESULTS": str(results.resolve()),
           # NumPy in the simulator process does no linear algebra: no idle BLAS threads
           "OPENBLAS_NUM_THREADS": "1"}
    plusargs = [f"+pixels={(run_dir / 'pixels.hex').resolve()}", f"+records={records.resolve()}",
                f"+images={len(images)}", f"+pixels_per_image={pixels_per_image}"]
    if random_init:
        plusargs += ["+verilator+rand+reset+2", f"+verilator+seed+{random_init_seed}"]
    started = time.time()
    try:
        get_runner(sim).test(test_module="sim.testbench", hdl_toplevel=HARNESS_TOP,
                             hdl_toplevel_lang="verilog", build_dir=build_dir,
                             test_dir=run_dir, extra_env=env, waves=waves,
                             plusargs=plusargs, timescale=("1ns", "1ps"),
                             log_file=run_dir / "sim.log" if quiet else None,
                             results_xml=str((run_dir / "results.xml").resolve()))
    except SystemExit:
        # Under pytest the cocotb runner exits when the cocotb test fails, i.e. on a mismatch;
        # the scoreboard's per-image results (read below) say what failed.
        pass
    seconds = time.time() - started
    if not results.exists():
        raise StforgeError(f"the simulation wrote no results (see {run_dir}/)")
    raw = json.loads(results.read_text())
    raw.update(build_seconds=build_seconds, run_seconds=seconds, build_dir=str(build_dir),
               hdl_dir=str(hdl_dir), requested=len(images),
               expected=expected[:len(raw["images"])])
    return raw


def summarize(raw: dict, sim: str, model: str, golden_path) -> dict:
    """sim.json from the per-image results and the analytic cycle model."""
    from model.ir.golden import GoldenData
    imgs = raw["images"]
    cycles = np.array([r["cycles"] for r in imgs], dtype=float)
    bitexact = sum(r["bitexact"] for r in imgs)
    correct = sum(r["predicted"] == r["label"] for r in imgs)
    report = {"simulator": sim, "model": model, "images": len(imgs), "bitexact": bitexact,
              "mismatches": raw.get("requested", len(imgs)) - bitexact,
              "compared": raw.get("compared"),
              "accuracy": correct / len(imgs) if imgs else 0.0,
              "cycles_per_inference": {"mean": float(cycles.mean()), "min": float(cycles.min()),
                                       "max": float(cycles.max())} if len(imgs) else {},
              "layers": [],
              "simulated_cycles": int(cycles.sum()),
              # the simulation itself: from the first image's start to the last result (the
              # simulator's start-up and the build are reported apart)
              "simulated_cycles_per_second": float(cycles.sum() / max(raw["seconds"], 1e-9)),
              "simulation_seconds": raw["seconds"],
              "run_seconds": raw["run_seconds"], "build_seconds": raw["build_seconds"]}
    if raw.get("hung") is not None:
        report["hung"] = {"image": raw["hung"], "cycles": raw.get("hung_after_cycles")}
    if imgs:
        # measured cycles beside the analytic cycle model and the ideal (work-bound) cycles
        design = json.loads((Path(raw["hdl_dir"]) / "design.json").read_text())
        plan = _design_plan(design)
        cyc = cycle_summary(plan, GoldenData(golden_path), measured=imgs,
                            indices=[r["image"] for r in imgs],
                            expected=raw.get("expected"))
        report.update(cyc, lanes=design.get("lanes", 1), engine=plan.engine)
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
    print(f"compared per image: {report['compared']}"
          + ("" if all(layer.get("measured", True) for layer in report["layers"]
                           if layer["name"] != "head") else
             "; layer cycles are the cycle model's (no trace port), totals measured"))
    if "hung" in report:
        print(f"HUNG: image {report['hung']['image']} gave no result within "
              f"{report['hung']['cycles']} cycles")
    if "first_mismatch" in report:
        print(f"FIRST MISMATCH: {report['first_mismatch']}")


def configure(parser) -> None:
    """`stforge sim`'s arguments."""
    parser.add_argument("--hdl", required=True, help="folder from `stforge hdl`")
    parser.add_argument("--golden", required=True, help=".npz from `stforge golden-data`")
    parser.add_argument("--images", type=positive_int, default=100, help="first N golden images")
    parser.add_argument("--sim", default=os.environ.get("SIM", "verilator"),
                        choices=sorted(SIMULATORS))
    parser.add_argument("--waves", action="store_true", help="dump a waveform of one image")
    parser.add_argument("--image", type=int, default=0, help="the image --waves records")
    parser.add_argument("--report", default="build/reports/sim.json")
    parser.add_argument("--model", default=None, help="name for the report (default: hdl folder)")


def run(args) -> int:
    """`stforge sim`: simulate, compare, write sim.json; exit 1 on any mismatch."""
    check_output_path(args.report, "--report")
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
        print(f"waveform of image {args.image}: {raw['build_dir']}/run/dump.vcd")
    return 0 if report["mismatches"] == 0 else 1
