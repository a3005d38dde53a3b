"""The simulation harness: a SystemVerilog top around the generated accelerator (sim only).

Why. Driving the clock and the streams from Python costs a Python/VPI round trip per clock edge:
the generated L1P design ran at about 40 k cycles per second under cocotb even with an idle
testbench, while Verilator runs the same Verilog at about 1.5 M cycles per second on its own
(docs/HARDWARE.md, "Verification speed"). The harness keeps every per-cycle activity inside the
simulator: it generates the clock, feeds the images' pixels back to back from a file, and writes
every transfer of the ``trace``, ``logits`` and ``result`` streams (always ready) to a record
file. Python (sim/testbench.py) only waits for ``images_done`` to count up and checks each
image's records in bulk; nothing is lost, every record is compared.

Plusargs (set by sim/runner.py):

    +pixels=FILE     one pixel per line, hex, images one after the other in stream order
    +records=FILE    written: one transfer per line, ``T <hex>`` (trace payload), ``L <hex>``
                     (logit), ``R <hex>`` (result), in the order they happened
    +images=N        images to feed
    +pixels_per_image=K

The file is flushed after every result, so the records of image n are complete when
``images_done`` reaches n. Only the top's stream ports are touched: the harness works for any
design `stforge hdl` writes (with or without the trace port) on Verilator and Icarus.
"""

from __future__ import annotations

__all__ = ["HARNESS_TOP", "harness_source"]

#: The harness's module name: the simulator's top level
HARNESS_TOP = "stforge_sim"
#: Half a clock period in the harness's time unit (1 ns): the 100 MHz clock the cocotb
#: testbench used, so waveforms and sim times read the same
HALF_PERIOD_NS = 5


def _width(layout: dict) -> int:
    return sum(int(w) for w in layout.values())


def harness_source(design: dict, waves: bool = False) -> str:
    """The harness's SystemVerilog for a design (its design.json as a dict).

    The clock rises once per period and falls again in the same time step (``#0``: after every
    process the rising edge woke has run, before the next time step), so the simulator visits
    one time step per cycle instead of two: every step costs the simulator and cocotb's VPI
    loop their fixed work whether or not anything happens at it (the falling edge drives
    nothing: the design and the harness are clocked on the rising edge). With `waves` the
    clock is the plain symmetric one, so that a waveform reads as usual."""
    top = design["top"]
    pixel_bits, logit_bits = int(design["pixel_bits"]), int(design["logit_bits"])
    result_bits = _width(design["result_layout"])
    trace = bool(design["trace"])
    trace_bits = _width(design["trace_layout"]) if trace else 0
    trace_ports = (f""",
    .trace__payload(trace_payload), .trace__valid(trace_valid), .trace__ready(1'b1)"""
                   if trace else "")
    trace_decl = (f"  wire [{trace_bits - 1}:0] trace_payload;\n  wire trace_valid;\n"
                  if trace else "")
    trace_write = ('      if (trace_valid) $fwrite(records, "T %h\\n", trace_payload);\n'
                   if trace else "")
    clock = (f"  always #{HALF_PERIOD_NS} clk = ~clk;" if waves else
             f"  always begin #{2 * HALF_PERIOD_NS} clk = 1; #0 clk = 0; end   // one step a cycle")
    return f"""\
// Simulation harness of {top} (sim/harness.py): clock, pixel feeder and stream recorder.
`timescale 1ns/1ps
module {HARNESS_TOP};
  reg clk = 0;
{clock}
  // reset for the first 4 rising edges, released by a register (no race with the design)
  reg [2:0] boot = 0;
  wire rst = boot != 3'd4;
  always @(posedge clk) if (rst) boot <= boot + 3'd1;

  // read by the cocotb testbench: images whose result has been recorded
  reg [31:0] images_done /*verilator public_flat_rd*/ = 0;

  reg [1023:0] pixels_name, records_name;
  reg [31:0] images = 0, pixels_per_image = 0, fed = 0;
  integer pixels_file, records, scanned;
  task stop(input [8 * 40 - 1:0] why);
    begin
      $display("stforge_sim: %0s", why);
      $finish;
    end
  endtask
  initial begin
    if (!$value$plusargs("pixels=%s", pixels_name)) stop("no +pixels=");
    if (!$value$plusargs("records=%s", records_name)) stop("no +records=");
    if (!$value$plusargs("images=%d", images)) stop("no +images=");
    if (!$value$plusargs("pixels_per_image=%d", pixels_per_image)) stop("no +pixels_per_image=");
    pixels_file = $fopen(pixels_name, "r");
    if (pixels_file == 0) stop("cannot read the pixel file");
    records = $fopen(records_name, "w");
    if (records == 0) stop("cannot write the record file");
  end

  reg [{pixel_bits - 1}:0] pixel = 0, next_pixel;
  reg pixel_valid = 0;
  wire pixel_ready;
  wire [{logit_bits - 1}:0] logit;
  wire logit_valid;
  wire [{result_bits - 1}:0] result;
  wire result_valid;
{trace_decl}
  {top} dut(
    .clk(clk), .rst(rst),
    .pixels__payload(pixel), .pixels__valid(pixel_valid), .pixels__ready(pixel_ready),
    .logits__payload(logit), .logits__valid(logit_valid), .logits__ready(1'b1),
    .result__payload(result), .result__valid(result_valid), .result__ready(1'b1){trace_ports});

  // the pixel feeder: every pixel of every image back to back, one per accepted transfer
  always @(posedge clk) begin
    if (!rst && (!pixel_valid || pixel_ready)) begin
      if (fed < images * pixels_per_image) begin
        scanned = $fscanf(pixels_file, "%h\\n", next_pixel);
        pixel <= next_pixel;
        pixel_valid <= 1;
        fed <= fed + 1;
      end else begin
        pixel_valid <= 0;
      end
    end
  end

  // the recorder: every transfer of the always-ready output streams, in order
  always @(posedge clk) begin
    if (!rst) begin
{trace_write}      if (logit_valid) $fwrite(records, "L %h\\n", logit);
      if (result_valid) begin
        $fwrite(records, "R %h\\n", result);
        $fflush(records);
        images_done <= images_done + 1;
      end
    end
  end
endmodule
"""
