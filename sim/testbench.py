"""cocotb testbench of the generated accelerator (`stforge_top`, docs/HARDWARE.md).

Runs inside the simulator process, so it imports NumPy and cocotb only. The runner
(`sim/runner.py`) passes, through the environment:

    STFORGE_DESIGN   design.json written by `stforge hdl` (port widths, layouts)
    STFORGE_GOLDEN   golden .npz written by `stforge golden-data`
    STFORGE_IMAGES   comma-separated image indices of the golden file to run
    STFORGE_RESULTS  where to write the per-image results (JSON) for the runner
    STFORGE_CORRUPT_PIXEL  (tests only) index of one pixel of the first image to change in what
                           the DUT receives, not in the golden data: the scoreboard must notice

A scoreboard (`sim/scoreboard.py`) compares every traced spike vector and the logits and class
bit for bit; the test fails on the first image with a mismatch, naming its exact location.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Event, ReadOnly, RisingEdge, ValueChange

from sim.scoreboard import GoldenData, Scoreboard

__all__ = ["AcceleratorTB", "run_images"]


def _fields(layout: dict) -> dict:
    """{field: (offset, width)} of a packed struct payload, first field in the LSBs."""
    out, offset = {}, 0
    for name, width in layout.items():
        out[name] = (offset, width)
        offset += width
    return out


def _unpack(value: int, fields: dict) -> dict:
    return {k: (value >> off) & ((1 << w) - 1) for k, (off, w) in fields.items()}


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


class AcceleratorTB:
    """Clock, reset, the pixel driver and the trace/logits/result monitors of one DUT."""

    def __init__(self, dut, design: dict):
        self.dut, self.design = dut, design
        self.trace_fields = _fields(design["trace_layout"])
        self.result_fields = _fields(design["result_layout"])
        self.trace_records: list[dict] = []
        self.logits: list[int] = []
        self.results: list[dict] = []
        self.result_event = Event()

    async def start(self) -> None:
        d = self.dut
        Clock(d.clk, 10, unit="ns").start()
        d.rst.value = 1
        d.pixels__valid.value = 0
        d.logits__ready.value = 1
        d.result__ready.value = 1
        if self.design["trace"]:
            d.trace__ready.value = 1
        for _ in range(4):
            await RisingEdge(d.clk)
        d.rst.value = 0
        await RisingEdge(d.clk)
        if self.design["trace"]:
            cocotb.start_soon(self._monitor(d.trace__valid, d.trace__payload, self._on_trace))
        cocotb.start_soon(self._monitor(d.logits__valid, d.logits__payload, self._on_logit))
        cocotb.start_soon(self._monitor(d.result__valid, d.result__payload, self._on_result))

    async def _monitor(self, valid, payload, sink) -> None:
        """Record each transfer (ready is held high): sleep until `valid` changes, then sample
        once per cycle while it is high. (Icarus leaves combinational outputs undefined until
        their inputs first change, i.e. until the first image starts: X counts as not valid.)"""
        clk = self.dut.clk
        while True:
            await ReadOnly()
            v = valid.value
            if not v.is_resolvable or not int(v):
                await ValueChange(valid)
                continue
            sink(payload.value.to_unsigned())
            await RisingEdge(clk)

    def _on_trace(self, value: int) -> None:
        self.trace_records.append(_unpack(value, self.trace_fields))

    def _on_logit(self, value: int) -> None:
        self.logits.append(_signed(value, self.design["logit_bits"]))

    def _on_result(self, value: int) -> None:
        self.results.append(_unpack(value, self.result_fields))
        self.result_event.set()

    async def send_image(self, pixels) -> None:
        d = self.dut
        for p in pixels:
            d.pixels__payload.value = int(p)
            d.pixels__valid.value = 1
            await RisingEdge(d.clk)
            while not int(d.pixels__ready.value):
                await RisingEdge(d.clk)
        d.pixels__valid.value = 0

    async def wait_result(self, count: int) -> dict:
        """Sleep (no per-cycle wake-ups) until the `count`-th result has been transferred."""
        while len(self.results) < count:
            self.result_event.clear()
            await self.result_event.wait()
        return self.results[count - 1]


async def run_images(dut) -> None:
    design = json.loads(Path(os.environ["STFORGE_DESIGN"]).read_text())
    golden = GoldenData(os.environ["STFORGE_GOLDEN"])
    images = [int(i) for i in os.environ["STFORGE_IMAGES"].split(",")]
    out_path = os.environ["STFORGE_RESULTS"]
    tb = AcceleratorTB(dut, design)
    scoreboard = Scoreboard(golden, design.get("trace_kinds"))
    await tb.start()
    started = time.time()
    report = []
    for n, image in enumerate(images, start=1):
        scoreboard.start_image(image)
        tb.trace_records.clear()
        tb.logits.clear()
        pixels = golden.images[image].reshape(-1).copy()
        if n == 1 and os.environ.get("STFORGE_CORRUPT_PIXEL"):
            k = int(os.environ["STFORGE_CORRUPT_PIXEL"])
            pixels[k] = 0 if pixels[k] else 1
        await tb.send_image(pixels)
        result = await tb.wait_result(n)
        await RisingEdge(dut.clk)
        for r in tb.trace_records:
            scoreboard.trace(r["kind"], r["node"], r["step"], r["token"], r["data"])
        r = scoreboard.finish_image(list(tb.logits), result["cls"], result["cycles"])
        report.append({"image": image, "bitexact": r.bitexact, "compared": r.compared,
                       "cycles": r.cycles, "predicted": r.predicted,
                       "label": int(golden.labels[image]), "layer_cycles": r.layer_cycles,
                       "mismatches": [str(m) for m in r.mismatches[:20]],
                       "mismatch_count": len(r.mismatches)})
        dut._log.info("image %d/%d (#%d): %s, %d cycles, class %d (label %d)", n, len(images),
                      image, "bit-exact" if r.bitexact else f"{len(r.mismatches)} MISMATCHES",
                      r.cycles, r.predicted, int(golden.labels[image]))
        with open(out_path, "w") as f:       # rewritten each image: partial runs stay readable
            json.dump({"images": report, "seconds": time.time() - started}, f)
    first = scoreboard.first_mismatch
    assert first is None, f"first mismatch: {first}"


@cocotb.test()
async def accelerator_matches_golden(dut):
    """Every traced spike, every logit and the class equal the golden model's."""
    await run_images(dut)
