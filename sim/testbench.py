"""cocotb testbench of the generated accelerator inside its simulation harness (sim/harness.py).

Runs inside the simulator process, so it imports NumPy and cocotb only. The harness clocks the
design, feeds the pixels and records every output transfer to a file; this testbench looks at
the harness's ``images_done`` every `POLL_CYCLES` cycles, reads each finished image's records
and hands them to the scoreboard (`sim/scoreboard.py`), which compares every traced spike vector, the
logits and the class bit for bit. No Python code runs per clock cycle.

The runner (`sim/runner.py`) passes, through the environment:

    STFORGE_DESIGN   design.json written by `stforge hdl` (port widths, layouts)
    STFORGE_GOLDEN   golden .npz written by `stforge golden-data`
    STFORGE_IMAGES   comma-separated image indices of the golden file, in the pixel file's order
    STFORGE_RECORDS  the harness's record file (its +records= plusarg)
    STFORGE_DEADLINES  comma-separated cycles per image after which the image counts as hung
    STFORGE_RESULTS  where to write the per-image results (JSON) for the runner
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cocotb
from cocotb.triggers import Timer

from sim.harness import HALF_PERIOD_NS
from sim.scoreboard import GoldenData, Scoreboard

__all__ = ["RecordReader", "run_images"]

#: Cycles between two looks at the harness's image counter. A value-change callback on it
#: would be checked by the simulator after every evaluation (about a tenth of its time).
POLL_CYCLES = 4096

# Ctrl-C reaches every process of the terminal's group: the runner (`stforge sim`) stops this
# simulator and says so in one line, so the simulator itself ignores it (else its embedded
# Python prints a KeyboardInterrupt traceback first).
signal.signal(signal.SIGINT, signal.SIG_IGN)


def _fields(layout: dict) -> dict:
    """{field: (offset, width)} of a packed struct payload, first field in the LSBs."""
    out, offset = {}, 0
    for name, width in layout.items():
        out[name] = (offset, int(width))
        offset += int(width)
    return out


def _unpack(value: int, fields: dict) -> dict:
    return {k: (value >> off) & ((1 << w) - 1) for k, (off, w) in fields.items()}


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


class RecordReader:
    """Reads the harness's record file image by image (it grows while the simulation runs)."""

    def __init__(self, path, design: dict):
        self.file = open(path)
        self.trace_fields = _fields(design["trace_layout"])
        self.result_fields = _fields(design["result_layout"])
        self.logit_bits = int(design["logit_bits"])

    def next_image(self) -> tuple[list[dict], list[int], dict]:
        """(trace records, logits, result) of the next image whose result was recorded."""
        trace, logits = [], []
        for line in self.file:
            tag, value = line[0], int(line[2:], 16)
            if tag == "T":
                trace.append(_unpack(value, self.trace_fields))
            elif tag == "L":
                logits.append(_signed(value, self.logit_bits))
            else:
                return trace, logits, _unpack(value, self.result_fields)
        raise RuntimeError("the record file ended before the image's result")


async def run_images(dut) -> None:
    design = json.loads(Path(os.environ["STFORGE_DESIGN"]).read_text())
    golden = GoldenData(os.environ["STFORGE_GOLDEN"])
    images = [int(i) for i in os.environ["STFORGE_IMAGES"].split(",")]
    deadlines = [int(c) for c in os.environ["STFORGE_DEADLINES"].split(",")]
    out_path = os.environ["STFORGE_RESULTS"]
    scoreboard = Scoreboard(golden, design.get("trace_kinds"), traced=bool(design["trace"]))
    await Timer(1, "ns")                 # the harness has opened its files
    reader = RecordReader(os.environ["STFORGE_RECORDS"], design)
    started = written = time.time()
    report, done, hung = [], 0, None

    def write_results():
        results = {"images": report, "seconds": time.time() - started,
                   "compared": scoreboard.compares, "hung": hung}
        if hung is not None:
            results["hung_after_cycles"] = deadlines[done]
        with open(out_path, "w") as f:
            json.dump(results, f)
    while done < len(images) and hung is None:
        waited = 0          # polled, not a value-change callback: none is checked per step
        while int(dut.images_done.value) == done and waited < deadlines[done]:
            step = min(POLL_CYCLES, deadlines[done] - waited)
            await Timer(2 * HALF_PERIOD_NS * step, "ns")
            waited += step
        now = int(dut.images_done.value)
        if now == done:
            hung = images[done]
            break
        for n in range(done, now):
            image = images[n]
            trace, logits, result = reader.next_image()
            scoreboard.start_image(image)
            for r in trace:
                scoreboard.trace(r["kind"], r["node"], r["step"], r["token"], r["data"])
            r = scoreboard.finish_image(logits, result["cls"], result["cycles"])
            report.append({"image": image, "bitexact": r.bitexact, "compared": r.compared,
                           "cycles": r.cycles, "predicted": r.predicted,
                           "label": int(golden.labels[image]), "layer_cycles": r.layer_cycles,
                           "mismatches": [str(m) for m in r.mismatches[:20]],
                           "mismatch_count": len(r.mismatches)})
            dut._log.info("image %d/%d (#%d): %s, %d cycles, class %d (label %d)", n + 1,
                          len(images), image, "bit-exact" if r.bitexact else
                          f"{len(r.mismatches)} MISMATCHES, first: {r.mismatches[0]}",
                          r.cycles, r.predicted, int(golden.labels[image]))
        done = now
        if time.time() - written > 2:        # a stopped run's results stay readable
            write_results()
            written = time.time()
    reader.file.close()
    write_results()
    assert hung is None, f"image {hung}: no result within {deadlines[done]} cycles"
    first = scoreboard.first_mismatch
    assert first is None, f"first mismatch: {first}"


@cocotb.test()
async def accelerator_matches_golden(dut):
    """Every traced spike, every logit and the class equal the golden model's."""
    await run_images(dut)
