"""The host driver (firmware/driver.py) against fake ports: replies, timeouts, corrupted replies,
ERROR replies, argument checks; and its CLI over a pseudo-terminal (real pyserial)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from firmware.driver import Accelerator, BoardError, BoardTimeout, DriverError, Inference, \
    LinkError, PortError
from firmware.protocol import PROTOCOL_VERSION, Command, ErrorCode, Frame, FrameDecoder, Result, \
    encode_frame, pack_error, pack_result

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

LOGITS = (5, -3, 120000, -70000, 0, 1, 2, 3, 4, 119999)


class FakeBoard:
    """A port object: decodes the driver's frames and answers through `respond(frame)`, which
    returns the reply bytes (or b"" for silence). `read` returns b"" when nothing is queued, as a
    pyserial port does on timeout."""

    def __init__(self, respond=None):
        self.respond = respond or self.default
        self.decoder = FrameDecoder()
        self.frames = []
        self.out = bytearray()
        self.reads = 0
        self.name = "/dev/ttyFAKE"
        self.running = False
        self.result = None

    def default(self, frame):
        if frame.command == Command.PING:
            return encode_frame(Command.OK, bytes([PROTOCOL_VERSION]))
        if frame.command == Command.RUN:
            self.result = Result(LOGITS, predicted=2, cycles=4321)
            return encode_frame(Command.OK)
        if frame.command == Command.READ_RESULT:
            if self.result is None:
                return encode_frame(Command.ERROR, pack_error(ErrorCode.BUSY))
            return encode_frame(Command.OK, pack_result(self.result))
        return encode_frame(Command.ERROR, pack_error(ErrorCode.UNKNOWN_COMMAND))

    def write(self, data):
        for event in self.decoder.feed(data):
            assert isinstance(event, Frame), event
            self.frames.append(event)
            self.out += self.respond(event)
        return len(data)

    def read(self, n=1):
        self.reads += 1
        chunk = bytes(self.out[:n])
        del self.out[:n]
        return chunk

    def reset_input_buffer(self):
        self.out.clear()


def driver(board, **kw):
    return Accelerator(board, timeout=2.0, **kw)


def test_ping_and_infer():
    board = FakeBoard()
    acc = driver(board)
    assert acc.ping() == PROTOCOL_VERSION
    image = np.arange(64, dtype=np.uint8).reshape(1, 8, 8) % 17
    out = acc.infer(image)
    assert out == Inference(LOGITS, 4321, 2)
    logits, cycles, predicted = out
    assert (logits, cycles, predicted) == (LOGITS, 4321, 2)
    run = board.frames[1]
    assert run.command == Command.RUN
    assert list(run.payload) == [int(v) for v in image.reshape(-1)]     # order (c, y, x)
    assert [f.command for f in board.frames] == [Command.PING, Command.RUN, Command.READ_RESULT]


def test_for_artifact_checks_images_before_sending():
    manifest = {"model": {"input_shape": [1, 8, 8], "input_max": 16, "num_classes": 10,
                          "timesteps": 4, "time_varying_input": False}}
    board = FakeBoard()
    acc = Accelerator.for_artifact(board, manifest)
    with pytest.raises(ValueError, match=r"shape \(8, 7\).*\(1, 8, 8\)"):
        acc.infer(np.zeros((8, 7), np.uint8))
    with pytest.raises(ValueError, match="pixel value 17 outside 0..16"):
        acc.infer(np.full((1, 8, 8), 17))
    with pytest.raises(ValueError, match="integers"):
        acc.infer(np.zeros((1, 8, 8), np.float32))
    assert board.frames == []                      # nothing was sent
    assert acc.infer(list(range(16)) * 4).cycles == 4321        # a flat sequence works too


def test_timeout_message_names_port_and_time():
    silent = FakeBoard(lambda frame: b"")
    with pytest.raises(BoardTimeout, match=r"^no answer from the board on /dev/ttyFAKE after "
                                           r"2\.0 s$"):
        driver(silent).ping()


def test_truncated_reply_is_a_link_error():
    cut = FakeBoard(lambda frame: encode_frame(Command.OK, bytes([1]))[:4])
    with pytest.raises(LinkError, match="truncated reply"):
        driver(cut, retries=0).ping()
    junk = FakeBoard(lambda frame: b"\x00\x01\x02")
    with pytest.raises(LinkError, match="no frame"):
        driver(junk, retries=0).ping()


def corrupt(frame_bytes):
    return frame_bytes[:-1] + bytes([frame_bytes[-1] ^ 0x01])


def test_bad_crc_reply_is_retried_for_idempotent_commands():
    board = FakeBoard()
    calls = []

    def flaky(frame):
        calls.append(frame.command)
        reply = board.default(frame)
        return corrupt(reply) if len(calls) == 1 else reply

    board.respond = flaky
    assert driver(board, retries=1).ping() == PROTOCOL_VERSION
    assert calls == [Command.PING, Command.PING]


def test_bad_crc_reply_without_retries():
    board = FakeBoard()
    board.respond = lambda frame: corrupt(board.default(frame))
    with pytest.raises(LinkError, match="corrupted reply from the board on /dev/ttyFAKE: BAD_CRC"):
        driver(board, retries=0).ping()
    with pytest.raises(LinkError, match="BAD_CRC"):       # RUN is never retried
        driver(board, retries=3).run(np.zeros(64, np.uint8))
    assert sum(f.command == Command.RUN for f in board.frames) == 1


def test_garbage_before_the_reply_is_skipped():
    board = FakeBoard()
    board.respond = lambda frame: b"\x00\x13\xff" + board.default(frame)
    assert driver(board).ping() == PROTOCOL_VERSION


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_replies_raise_board_error(code):
    board = FakeBoard(lambda frame: encode_frame(Command.ERROR, pack_error(code)))
    with pytest.raises(BoardError, match=f"answered PING with ERROR {code.name}") as info:
        driver(board).ping()
    assert info.value.code == code


def test_busy_and_unsupported_messages():
    board = FakeBoard()
    with pytest.raises(BoardError, match="READ_RESULT with ERROR BUSY: .*no result") as info:
        driver(board).read_result()
    assert info.value.code == ErrorCode.BUSY
    unsupported = FakeBoard(lambda f: encode_frame(Command.ERROR,
                                                   pack_error(ErrorCode.UNSUPPORTED)))
    with pytest.raises(BoardError, match="WRITE_MEM is not supported"):
        driver(unsupported).ping()


def test_malformed_replies():
    odd_code = FakeBoard(lambda f: encode_frame(Command.ERROR, b"\x77"))
    with pytest.raises(BoardError, match="ERROR 0x77") as info:
        driver(odd_code).ping()
    assert info.value.code == 0x77
    with pytest.raises(LinkError, match="malformed ERROR"):
        driver(FakeBoard(lambda f: encode_frame(Command.ERROR, b""))).ping()
    with pytest.raises(LinkError, match="unexpected reply PING"):
        driver(FakeBoard(lambda f: encode_frame(Command.PING))).ping()
    with pytest.raises(DriverError, match="protocol version 9"):
        driver(FakeBoard(lambda f: encode_frame(Command.OK, b"\x09"))).ping()
    short = FakeBoard(lambda f: encode_frame(Command.OK, b"\x01\x02"))
    with pytest.raises(LinkError, match="malformed result"):
        driver(short).read_result()
    three = FakeBoard(lambda f: encode_frame(Command.OK, pack_result(Result((1, 2, 3), 2, 5))))
    with pytest.raises(LinkError, match="3 logits, the model has 10"):
        driver(three, classes=10).read_result()


def test_port_failure_is_a_port_error():
    class Unplugged(FakeBoard):
        def write(self, data):
            raise OSError(5, "Input/output error")

    with pytest.raises(PortError, match="serial port /dev/ttyFAKE failed during PING: .*Input/"):
        driver(Unplugged()).ping()


def test_port_argument_checks():
    with pytest.raises(TypeError, match="read\\(\\) and write\\(\\)"):
        Accelerator(object())
    with pytest.raises(ValueError, match="Timeout"):
        Accelerator(FakeBoard(), timeout=0)
    with pytest.raises(PortError, match="^cannot open serial port /nonexistent/ttyUSB9: "):
        Accelerator("/nonexistent/ttyUSB9")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def write_manifest(tmp_path):
    manifest = {"model": {"input_shape": [1, 8, 8], "input_max": 16, "num_classes": 10,
                          "timesteps": 4, "time_varying_input": False, "dataset": "digits"},
                "source": {"config": {"data": {"name": "digits", "seed": 0, "limit": None}}}}
    path = tmp_path / "art.json"
    path.write_text(json.dumps(manifest))
    return path


def run_cli(*args, timeout=120):
    return subprocess.run([PY, "-m", "model.flows.cli", "run", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_missing_port_is_one_line_exit_2(tmp_path):
    art = write_manifest(tmp_path)
    r = run_cli("--port", "/nonexistent/ttyUSB9", "--artifact", art, "--images", 2)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "stforge: error: cannot open serial port /nonexistent/ttyUSB9: No such file or directory"]
    r = run_cli("--port", "/nonexistent/ttyUSB9", "--artifact", tmp_path / "none.json")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "not found" in r.stderr


def pty_board(serve):
    """A pseudo-terminal whose master side runs `serve(fd)` in a thread; returns the tty path."""
    master, slave = os.openpty()
    import tty
    tty.setraw(slave)
    thread = threading.Thread(target=serve, args=(master,), daemon=True)
    thread.start()
    return os.ttyname(slave), (master, slave)


def test_cli_unanswering_port_is_one_line_exit_2(tmp_path):
    art = write_manifest(tmp_path)
    path, fds = pty_board(lambda fd: None)           # nobody answers
    try:
        r = run_cli("--port", path, "--artifact", art, "--timeout", 0.3)
    finally:
        for fd in fds:
            os.close(fd)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"stforge: error: no answer from the board on {path} after 0.3 s"]


def serve_frames(fd, answer):
    """Read frames from the pty master like a board and write `answer(frame)` for each."""
    decoder = FrameDecoder()
    while True:
        try:
            data = os.read(fd, 256)
        except OSError:
            return
        if not data:
            return
        for frame in decoder.feed(data):
            if isinstance(frame, Frame):
                os.write(fd, answer(frame))


def serve_fake(fd, logits_for):
    """Answer frames on the pty master like a board; logits_for(pixels) -> logits."""
    result = None

    def answer(frame):
        nonlocal result
        if frame.command == Command.PING:
            return encode_frame(Command.OK, bytes([PROTOCOL_VERSION]))
        if frame.command == Command.WRITE_MEM:   # weights in the bitstream (ECP5 build)
            return encode_frame(Command.ERROR, pack_error(ErrorCode.UNSUPPORTED))
        if frame.command == Command.RUN:
            logits = logits_for(frame.payload)
            result = Result(tuple(logits), int(np.argmax(logits)), 1000 + frame.payload[0])
            return encode_frame(Command.OK)
        return encode_frame(Command.OK, pack_result(result))
    serve_frames(fd, answer)


def test_cli_runs_digits_images_and_compares_with_golden(tmp_path):
    from model.data import load_digits
    art = write_manifest(tmp_path)
    split = load_digits(seed=0)
    labels = split.y_test[:4]
    by_image = {bytes(x.reshape(-1)): int(y) for x, y in zip(split.x_test[:4], labels)}

    def logits_for(pixels):                         # a board that is always right
        out = [0] * 10
        out[by_image[bytes(pixels)]] = 7
        return out

    golden = np.zeros((4, 10), np.int64)
    golden[np.arange(4), labels] = 7
    np.savez(tmp_path / "g.npz", logits=golden)
    path, fds = pty_board(lambda fd: serve_fake(fd, logits_for))
    try:
        r = run_cli("--port", path, "--artifact", art, "--images", 4, "--golden",
                    tmp_path / "g.npz", "--timeout", 5)
        golden[0, 0] = 1                            # now image 0 differs from the "golden"
        np.savez(tmp_path / "g2.npz", logits=golden)
        r2 = run_cli("--port", path, "--artifact", art, "--images", 2, "--golden",
                     tmp_path / "g2.npz", "--timeout", 5)
    finally:
        for fd in fds:
            os.close(fd)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"image 0: label {labels[0]}, board {labels[0]}, ")
    assert lines[-1].startswith("4 images: 4/4 correct (accuracy 1.000)")
    assert lines[-1].endswith("4/4 logits equal to golden")
    assert r2.returncode == 1
    assert "LOGITS DIFFER FROM GOLDEN" in r2.stdout.splitlines()[0]


def test_load_writes_whole_words_in_frames_the_board_can_take():
    """Accelerator.load: every table word once, little-endian, in WRITE_MEM frames of at most
    the RUN payload (64 bytes for 1x8x8 images) holding whole words; a board whose weights are
    in the bitstream answers the first frame UNSUPPORTED and nothing more is sent."""
    from firmware.images import Table, write_mem_chunks
    from firmware.protocol import unpack_write_mem
    tables = [Table(0, "engine.entries", 15, tuple(range(100))),
              Table(1, "neurons.parameters", 48, tuple((1 << 47) + i for i in range(20)))]
    written = {}

    def respond(frame):
        if frame.command == Command.WRITE_MEM:
            mem, address, data = unpack_write_mem(frame.payload)
            assert len(frame.payload) <= 64
            nbytes = (tables[mem].width + 7) // 8
            assert len(data) % nbytes == 0 and data
            for i in range(len(data) // nbytes):
                word = int.from_bytes(data[i * nbytes:(i + 1) * nbytes], "little")
                assert (mem, address + i) not in written
                written[mem, address + i] = word
            return encode_frame(Command.OK)
        return FakeBoard.default(board, frame)

    board = FakeBoard(respond)
    progress = []
    acc = driver(board, input_shape=(1, 8, 8))
    assert acc.load(tables, progress=lambda done, total: progress.append((done, total))) is True
    assert written == {(t.id, a): w for t in tables for a, w in enumerate(t.words)}
    frames = len(list(write_mem_chunks(tables, 64)))
    assert progress[-1] == (frames, frames) and len(board.frames) == frames

    rom = FakeBoard(lambda frame: encode_frame(Command.ERROR, pack_error(ErrorCode.UNSUPPORTED)))
    assert driver(rom, input_shape=(1, 8, 8)).load(tables) is False
    assert len(rom.frames) == 1
    assert driver(rom).loadable() is False
    refuse = FakeBoard(lambda f: encode_frame(Command.ERROR, pack_error(ErrorCode.BAD_ARGUMENT)))
    assert driver(refuse).loadable() is True
    assert unpack_write_mem(refuse.frames[0].payload) == (0, 0, b"")
    with pytest.raises(DriverError, match="input shape"):
        driver(FakeBoard()).load(tables)


def test_memory_images_come_from_the_accelerators_memory_map(shipped_l1p_path):
    """The loadable accelerator's two tables (the memory map `stforge bitstream` writes):
    every stored weight once (the engine's entries) and every neuron's constants once."""
    from hw.accelerator import Accelerator
    from hw.generate import memory_tables
    from model.ir import load_artifact
    art = load_artifact(shipped_l1p_path)
    acc = Accelerator(art, loadable=True)
    acc._MustUse__silence = True            # built for its memory map, never elaborated
    tables = memory_tables(acc)
    assert [(t.id, t.name) for t in tables] == [(0, "engine.entries"), (1, "neurons.parameters")]
    entries, params = tables
    assert all(0 <= w < (1 << entries.width) for w in entries.words)
    assert len(params.words) == sum(n.channels for n in art.neurons)


def test_cli_loadable_board_needs_the_memory_map(tmp_path):
    """A board that takes its tables from the host (answers WRITE_MEM) and no --memory-map:
    one line naming the option, exit 2."""
    art = write_manifest(tmp_path)

    def answer(frame):
        if frame.command == Command.PING:
            return encode_frame(Command.OK, bytes([PROTOCOL_VERSION]))
        return encode_frame(Command.ERROR, pack_error(ErrorCode.BAD_ARGUMENT))  # loadable

    def serve(fd):
        serve_frames(fd, answer)
    path, fds = pty_board(serve)
    try:
        r = run_cli("--port", path, "--artifact", art, "--timeout", 2)
    finally:
        for fd in fds:
            os.close(fd)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "stforge: error: this board takes its tables from the host: pass --memory-map "
        "<bitstream folder>/memory_map.json (written by `make bitstream`)"]


# --------------------------------------------------------------------------------------------
# Issue 16: every reply has a whole deadline; arguments and port failures are one line
# --------------------------------------------------------------------------------------------

class Babbler(FakeBoard):
    """A port whose read(1) always returns a byte that is not SYNC. It gives up after a million
    reads, so that a driver without a whole-reply deadline fails here instead of hanging."""

    def __init__(self, byte=b"\x00", clock=None, byte_time=0.0):
        super().__init__()
        self.byte, self.clock, self.byte_time = byte, clock, byte_time

    def read(self, n=1):
        self.reads += 1
        if self.reads > 1_000_000:
            raise AssertionError("the driver read a million bytes without giving up")
        if self.clock is not None:
            self.clock.now += self.byte_time
        return self.byte


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_port_that_always_sends_a_byte_ends_in_one_line():
    """Issue 16: read(1) always b"\\x00" made ping() read millions of bytes. A port object has
    no clock of the driver's, so the bytes a 115200-baud line carries in the deadline end it."""
    port = Babbler()
    acc = Accelerator(port, timeout=2.0, retries=0)
    assert acc.clock is None and acc.deadline == pytest.approx(2.0 + 1032 * 10 / 115200)
    with pytest.raises(LinkError, match=r"^no reply from the board on /dev/ttyFAKE within 2\.09 "
                                        r"s: 24072 bytes came, no frame \(line noise"):
        acc.ping()
    assert port.reads == acc.max_reply_read == 24072


def test_the_deadline_holds_on_an_injected_clock_while_bytes_keep_coming():
    """A byte every 10 ms (each one restarts the silence timeout of 0.2 s): the deadline of
    0.5 s on the clock ends the reply after 50 bytes, long before the byte count would."""
    clock = FakeClock()
    port = Babbler(clock=clock, byte_time=0.01)
    acc = Accelerator(port, timeout=0.2, deadline=0.5, clock=clock, retries=0)
    with pytest.raises(LinkError, match=r"within 0\.5 s: 50 bytes came"):
        acc.ping()
    assert clock.now - 100.0 == pytest.approx(0.5)
    # retries: one more whole deadline each
    acc = Accelerator(Babbler(clock=clock, byte_time=0.01), timeout=0.2, deadline=0.5,
                      clock=clock, retries=2)
    start = clock.now
    with pytest.raises(LinkError):
        acc.ping()
    assert clock.now - start == pytest.approx(1.5)


def test_a_slow_reply_within_the_deadline_is_fine():
    clock = FakeClock()
    board = FakeBoard()
    real_read = board.read

    def slow_read(n=1):
        clock.now += 0.05
        return real_read(n)
    board.read = slow_read
    acc = Accelerator(board, timeout=0.2, deadline=0.5, clock=clock)
    assert acc.ping() == PROTOCOL_VERSION           # 7 bytes, 0.35 s


def test_babble_with_sync_bytes_is_a_link_error():
    """Frames that never check out (SYNC, a length, garbage): CRC or length errors end it."""
    class SyncBabbler(Babbler):
        pattern = bytes([0xA5, 0x80, 0x03, 0x00, 1, 2, 3, 4, 5, 0xA5, 0xA5, 0xA5])

        def read(self, n=1):
            super().read(n)
            return bytes([self.pattern[self.reads % len(self.pattern)]])
    with pytest.raises(LinkError, match="corrupted reply"):
        Accelerator(SyncBabbler(), retries=3).ping()


@pytest.mark.parametrize("kwargs, message", [
    ({"timeout": float("inf")}, "Timeout must be a finite number of seconds above 0, not inf"),
    ({"timeout": float("nan")}, "Timeout must be a finite number of seconds above 0, not nan"),
    ({"timeout": 0}, "Timeout must be a finite number of seconds above 0, not 0"),
    ({"timeout": -1.0}, "not -1.0"),
    ({"timeout": "2"}, "not '2'"),
    ({"timeout": True}, "not True"),
    ({"timeout": None}, "not None"),
    ({"baud": 0}, "Baud rate must be a positive integer, not 0"),
    ({"baud": -9600}, "not -9600"),
    ({"baud": 9600.0}, "not 9600.0"),
    ({"baud": "9600"}, "not '9600'"),
    ({"baud": True}, "not True"),
    ({"retries": -1}, "Retries must be a non-negative integer, not -1"),
    ({"retries": 1.5}, "not 1.5"),
    ({"retries": None}, "not None"),
    ({"retries": False}, "not False"),
    ({"deadline": 0}, "Deadline must be a finite number of seconds above 0 or None, not 0"),
    ({"deadline": float("inf")}, "not inf"),
    ({"deadline": float("nan")}, "not nan"),
    ({"clock": 5}, "Clock must be a function returning seconds, not 5"),
    ({"input_shape": 64}, "Input shape must be positive integers"),
    ({"input_shape": (1, 0, 8)}, "not (1, 0, 8)"),
    ({"input_shape": (1, 8.0, 8)}, "not (1, 8.0, 8)"),
    ({"input_shape": (256, 256, 2)}, "at most 65535 pixels"),
    ({"input_max": 256}, "Input maximum must be an integer in 0..255, not 256"),
    ({"input_max": -1}, "not -1"),
    ({"classes": 0}, "Classes must be an integer in 1..255, not 0"),
    ({"classes": 256}, "not 256"),
    ({"classes": 10.0}, "not 10.0"),
    ({"name": 5}, "Name must be a string, not 5"),
])
def test_constructor_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError) as info:
        Accelerator(FakeBoard(), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_device_arguments_are_checked_before_the_port_is_opened():
    with pytest.raises(ValueError, match="Baud rate"):
        Accelerator("/nonexistent/ttyUSB9", baud=0)


@pytest.mark.parametrize("method, error, shown", [
    ("reset_input_buffer", "termios", "Input/output error"),
    ("flush", "termios", "Input/output error"),
    ("write", "serial", "write failed: [Errno 5] Input/output error"),
    ("read", "serial", "device reports readiness to read but returned no data"),
    ("read", "os", "[Errno 5] Input/output error"),
])
def test_a_port_failing_in_use_is_one_port_error(method, error, shown):
    """Issue 16: a disconnect raised termios.error (not an OSError) from tcflush / tcdrain and
    escaped as a traceback."""
    import termios

    import serial
    exc = {"termios": termios.error(5, "Input/output error"),
           "serial": serial.SerialException(shown),
           "os": OSError(5, "Input/output error")}[error]
    board = FakeBoard()

    def fail(*args):
        raise exc
    setattr(board, method, fail)
    with pytest.raises(PortError) as info:
        driver(board).ping()
    assert str(info.value) == f"serial port /dev/ttyFAKE failed during PING: {shown}"


def test_a_predicted_class_outside_the_classes_is_a_link_error():
    """Issue 16: a result whose class is >= the number of classes was accepted."""
    bad = FakeBoard(lambda f: encode_frame(Command.OK, pack_result(Result(LOGITS, 10, 5))))
    with pytest.raises(LinkError, match="returned class 10 with 10 logits"):
        driver(bad, classes=10).read_result()
    with pytest.raises(LinkError, match="returned class 10 with 10 logits"):
        driver(bad).read_result()
    good = FakeBoard(lambda f: encode_frame(Command.OK, pack_result(Result(LOGITS, 9, 5))))
    assert driver(good, classes=10).read_result().predicted == 9


@pytest.mark.parametrize("manifest, message", [
    ({}, "the manifest has no 'model' table"),
    ([], "the manifest has no 'model' table"),
    ({"model": {"input_max": 16, "num_classes": 10}}, "model.input_shape must be"),
    ({"model": {"input_shape": [1, 8], "input_max": 16, "num_classes": 10}}, "not [1, 8]"),
    ({"model": {"input_shape": [1, 8, 8], "num_classes": 10}}, "model.input_max must be"),
    ({"model": {"input_shape": [1, 8, 8], "input_max": 16}}, "model.num_classes must be"),
    ({"model": {"input_shape": [1, 8, 8], "input_max": 16, "num_classes": 10,
                "time_varying_input": True}}, "model.timesteps must be a positive integer"),
    ({"model": {"input_shape": [1, 8, 8], "input_max": 16, "num_classes": 10,
                "time_varying_input": "yes"}}, "model.time_varying_input must be true or false"),
])
def test_for_artifact_names_what_the_manifest_lacks(manifest, message):
    with pytest.raises(ValueError) as info:
        Accelerator.for_artifact(FakeBoard(), manifest)
    assert message in str(info.value)


def test_load_checks_its_tables_before_sending():
    from firmware.images import Table
    acc = driver(FakeBoard(), input_shape=(1, 8, 8))
    for tables, message in [
            (None, "Tables must be a sequence of Table"),
            ([(0, "x", 8, (1,))], "not one of tuple"),
            ([Table(0, "x", 8, (256,))], "holds a word that is not an integer of 8 bits"),
            ([Table(300, "x", 8, (1,))], "needs an id in 0..255"),
            ([Table(0, "wide", 600, (1,))], "cannot carry one 75-byte word of wide")]:
        with pytest.raises(ValueError, match=message):
            acc.load(tables)
    with pytest.raises(ValueError, match="Progress must be a function or None"):
        acc.load([Table(0, "x", 8, (1,))], progress=3)
    assert acc.port.frames == []
