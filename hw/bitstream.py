"""``stforge bitstream`` / ``make bitstream``: the board top (:mod:`hw.board`) of an artifact
through synthesis, place and route, and its report.

    stforge bitstream --target ice40-up5k|ecp5-85f --artifact build/artifacts/l1p.json
        [--lanes 1] [--clock-mhz 24] [--baud 115200] [--no-pll] [--out build/<target>]
        [--report build/reports/synth-<target>.json]

builds the bitstream with :func:`hw.synth.build_bitstream` (timing-driven at the PLL clock) and
writes the ``synth-<target>.json`` record. Any user mistake, a design that does not fit and
missed timing print one line and exit 2, leaving no new bitstream and no report.

``synth-<target>.json`` and ``build/<target>/`` belong to the default model
(:data:`DEFAULT_MODEL`, ``make bitstream``'s ``MODEL`` default); any other artifact ``<model>``
(its file name without ``.json``) gets ``synth-<target>-<model>.json`` and
``build/<target>-<model>/`` (`bitstream_dir`, `synth_report_path`), so building it
neither overwrites the default model's report nor leaves that report describing another model's
bitstream. Every report names its model under ``"model"``. A design of P > 1 lanes is named
``<model>-x<P>`` there, as ``make hdl|sim LANES=P`` name theirs (`design_name`).
"""

from __future__ import annotations

from pathlib import Path

from firmware.images import write_memory_map
from hw.board import DEFAULT_BAUD, BoardTop
from hw.generate import memory_tables
from hw.targets import TARGETS, get_target
from model.errors import (StforgeError, check_output_dir, check_output_path, positive_float,
                          positive_int)
from model.ir.files import write_json

__all__ = ["DEFAULT_MODEL", "bitstream_dir", "build", "configure", "design_name", "run",
           "synth_report_path"]

# Where `make bitstream` puts its outputs, per target and model: ``synth-<target>.json`` and
# ``build/<target>/`` belong to DEFAULT_MODEL; any other model (an artifact's file name without
# ``.json``) gets ``synth-<target>-<model>.json`` and ``build/<target>-<model>/``. The bench
# reads the same rule.

#: The model whose build owns ``synth-<target>.json`` (the Makefile's ``MODEL ?= l1p``).
DEFAULT_MODEL = "l1p"


def design_name(model: str, lanes: int = 1) -> str:
    """``<model>`` for one lane, ``<model>-x<lanes>`` for more (the Makefile's DESIGN)."""
    return model if lanes == 1 else f"{model}-x{lanes}"


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


def build(target, artifact_path, *, clock_mhz=None, baud=DEFAULT_BAUD, pll=True, out_dir=None,
          report_path=None, lanes=1) -> dict:
    """Build the board bitstream of an artifact for ``target``; returns the report record.

    By default the bitstream goes to `bitstream_dir` and the report to
    `synth_report_path` of the artifact's model (its file name without ``.json``, with
    ``-x<lanes>`` for more than one lane)."""
    from hw.synth import TimingError, build_bitstream
    from model.ir import load_artifact
    spec = get_target(target)
    artifact = load_artifact(artifact_path)
    try:
        top = BoardTop.for_platform(artifact, spec.name, clock_mhz, baud, pll=pll, lanes=lanes)
    except ValueError as error:     # PLL cannot make the clock, UART rate impossible, lanes
        raise StforgeError(str(error)) from None
    model = design_name(Path(artifact_path).stem, lanes)
    out_dir = Path(out_dir or bitstream_dir(spec.name, model))
    board_mhz = spec.platform_class()().default_clk_frequency / 1e6
    # the pad is constrained at the oscillator; the PLL output carries its own constraint
    try:
        record = build_bitstream(top, spec.name, out_dir,
                                 board_mhz if top.pll else top.clk_hz / 1e6, name="top")
    except TimingError as error:
        if top.pll is None:
            raise
        detail = str(error).split(": ", 1)[-1]
        raise TimingError(f"Timing not met on {spec.name} at {top.clk_hz / 1e6:g} MHz (PLL from "
                          f"the {board_mhz:g} MHz oscillator): {detail}; a lower clock can be "
                          f"asked for with --clock-mhz / CLOCK_MHZ=") from None
    record.update({
        "clock_mhz": round(top.clk_hz / 1e6, 3),
        "pll": ({k: v for k, v in top.pll.items() if k not in ("f_in", "f_out")}
                if top.pll else None),
        "model": model,
        "lanes": lanes,
        "artifact": str(artifact_path),
        "baud": baud,
        "uart_divisor": top.divisor,
        "baud_actual": round(top.clk_hz / top.divisor, 1),
    })
    acc = top.accelerator
    record["memory_map"] = str(write_memory_map(out_dir / "memory_map.json", memory_tables(acc),
                                                loadable=acc.loadable))
    write_json(Path(report_path or synth_report_path(spec.name, model)), record)
    return record


def configure(parser) -> None:
    """`stforge bitstream`'s arguments."""
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--artifact", required=True, help="artifact manifest (.json)")
    parser.add_argument("--clock-mhz", type=positive_float, help="PLL clock (default: " + ", ".join(
        f"{t.default_clock_mhz:g} on {name}" for name, t in TARGETS.items()) + ")")
    parser.add_argument("--baud", type=positive_int, default=DEFAULT_BAUD)
    parser.add_argument("--lanes", type=positive_int, default=1,
                        help="the accelerator's lanes (iCE40: 1; default 1)")
    parser.add_argument("--no-pll", action="store_true", help="run from the board oscillator")
    parser.add_argument("--out", help=f"output folder (default build/<target> for the "
                                      f"{DEFAULT_MODEL} model, else build/<target>-<model>)")
    parser.add_argument("--report", help=f"report (default build/reports/synth-<target>.json "
                                         f"for the {DEFAULT_MODEL} model, else "
                                         f"synth-<target>-<model>.json)")


def run(args) -> int:
    """`stforge bitstream`: build, write the report and the memory map."""
    if args.no_pll and args.clock_mhz is not None:
        raise StforgeError("--clock-mhz needs the PLL; drop --no-pll")
    if args.out is not None:
        check_output_dir(args.out, "--out")
    if args.report is not None:
        check_output_path(args.report, "--report")
    record = build(args.target, args.artifact, clock_mhz=args.clock_mhz, baud=args.baud,
                   pll=not args.no_pll, out_dir=args.out, report_path=args.report,
                   lanes=args.lanes)
    print(f"{record['target']}: {record['lut']} LUT, {record['ff']} FF, {record['bram']} BRAM, "
          f"{record['spram']} SPRAM, {record['dsp']} DSP; fmax {record['fmax_mhz']} MHz "
          f"(clock {record['clock_mhz']} MHz) -> {record['bitstream']}")
    return 0
