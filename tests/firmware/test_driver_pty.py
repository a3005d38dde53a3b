"""The driver against fake boards on a pseudo-terminal (real pyserial on the slave side): a
board that babbles (with and without SYNC bytes, faster than any line or slower than the silence
timeout), one that stays silent, one that sends half a frame, one that is unplugged before or
during a command. Every case ends within its documented deadline (firmware/driver.py: silence
``timeout``; a whole reply ``deadline``; ``1 + retries`` attempts of PING) with one line.

The bounds asserted are correctness bounds on a hang, not performance figures: each call runs in
a thread and the test fails, instead of hanging, when it is still waiting after its bound plus a
margin for a loaded machine.
"""

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

from firmware.driver import MAX_REPLY_PAYLOAD, Accelerator, BoardTimeout, LinkError, PortError
from firmware.protocol import CRC_BYTES, HEADER_BYTES, PROTOCOL_VERSION, SYNC, Command, \
    encode_frame

ROOT = Path(__file__).resolve().parents[2]
MARGIN = 0.5        # seconds: thread start-up and scheduling on a loaded machine
TIMEOUT = 0.2       # the driver's silence timeout in these tests
#: the default whole-reply deadline: the timeout plus the longest reply at 115200 baud (0.29 s)
DEADLINE = TIMEOUT + (HEADER_BYTES + MAX_REPLY_PAYLOAD + CRC_BYTES) * 10 / 115200
PING_BYTES = len(encode_frame(Command.PING))


class FakeBoard:
    """The master side of a pseudo-terminal, served by `behaviour(board)` in a thread.

    `path` is the slave device for the driver. The behaviour polls `self.stop` and uses the
    helpers below; `commands` counts the bytes the driver sent. Leaving the context stops the
    thread, then closes both sides (a behaviour may have closed the master already: unplugged).
    """

    def __init__(self, behaviour):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.stop = threading.Event()
        self.received = bytearray()
        self.got_command = threading.Event()
        self.unplugged = False
        self.thread = threading.Thread(target=behaviour, args=(self,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "fake board thread did not stop"
        if not self.unplugged:
            os.close(self.master)
        os.close(self.slave)

    def poll(self, seconds=0.01):
        """Take what the driver sent; True once a command (a frame of 6 bytes or more) arrived."""
        readable, _, _ = select.select([self.master], [], [], seconds)
        if readable:
            try:
                self.received += os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                pass
        if len(self.received) >= PING_BYTES:
            self.got_command.set()
        return self.got_command.is_set()

    def send(self, data):
        """Write what fits into the pty now (never blocks)."""
        try:
            os.write(self.master, data)
        except (BlockingIOError, OSError):
            pass

    def unplug(self):
        os.close(self.master)
        self.unplugged = True


def silent(board):
    while not board.stop.is_set():
        board.poll()


def babbling(chunk, interval):
    """Sends `chunk()` every `interval` seconds (0: as fast as the pty takes it), forever."""
    def behaviour(board):
        while not board.stop.is_set():
            board.poll(0)
            board.send(chunk())
            if interval:
                time.sleep(interval)
    return behaviour


def half_frames(board):
    """Answers each command with the first half of a PING reply, then stays silent."""
    reply = encode_frame(Command.OK, bytes([PROTOCOL_VERSION]))
    answered = 0
    while not board.stop.is_set():
        board.poll()
        if len(board.received) >= PING_BYTES * (answered + 1):
            answered += 1
            board.send(reply[:len(reply) // 2])


def unplugged_after_command(board):
    while not board.stop.is_set():
        if board.poll():
            time.sleep(0.05)           # the driver is waiting for the reply now
            board.unplug()
            return


def ends_within(call, bound):
    """Run `call()` in a thread; fail unless it ends within `bound` + MARGIN seconds. Returns
    (the exception it raised, seconds taken)."""
    outcome = {}

    def target():
        start = time.monotonic()
        try:
            call()
        except BaseException as error:   # noqa: B036 - handed to the test thread
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound + MARGIN)
    assert not thread.is_alive(), f"still waiting after {bound + MARGIN:.2f} s"
    error = outcome.get("error")
    assert error is not None, "the call returned instead of raising"
    assert "\n" not in str(error), str(error)
    return error, outcome["seconds"]


def driver(path, **kwargs):
    return Accelerator(path, **{"timeout": TIMEOUT, "retries": 0, **kwargs})


def non_sync():
    return bytes(random.choice([b for b in range(256) if b != SYNC]) for _ in range(8))


def any_bytes():
    return bytes(random.randrange(256) for _ in range(8))


# A line that keeps talking: bytes every 10 ms, far inside the 0.2 s silence timeout, so only
# the whole-reply deadline can end the wait (the driver of issue 16 waited forever here).
@pytest.mark.parametrize("chunk", [lambda: b"\x00", non_sync], ids=["zeros", "noise"])
def test_slow_babble_ends_at_the_deadline(chunk):
    with FakeBoard(babbling(chunk, 0.01)) as board, driver(board.path) as acc:
        error, seconds = ends_within(acc.ping, DEADLINE)
    assert isinstance(error, LinkError)
    assert str(error).startswith(f"no reply from the board on {board.path} within 0.29 s: ")
    assert seconds >= DEADLINE * 0.9        # the clock ended it, not the byte count


def test_fast_babble_ends_by_byte_count():
    """Bytes faster than any line (a pty has no baud rate): the bytes a 9600-baud line carries
    in its deadline (0.2 s + 1032 bytes at 960 bytes/s = 1.275 s: 1224 bytes) end the reply
    well before the deadline would."""
    with FakeBoard(babbling(lambda: b"\x00" * 256, 0)) as board, \
            driver(board.path, baud=9600) as acc:
        error, seconds = ends_within(acc.ping, 1.275)
    assert isinstance(error, LinkError)
    assert str(error).startswith(f"no reply from the board on {board.path} within 1.27 s: "
                                 f"1224 bytes came, no frame")


def test_babble_with_sync_bytes_ends_within_the_deadline():
    """Random bytes, SYNC among them: frames that fail their CRC or length end it, or the
    deadline does."""
    random.seed(16)
    with FakeBoard(babbling(any_bytes, 0.005)) as board, driver(board.path) as acc:
        error, _ = ends_within(acc.ping, DEADLINE)
    assert isinstance(error, LinkError), error


def test_retries_multiply_the_deadline():
    """PING is retried after a LinkError: 1 + retries attempts, each within its deadline."""
    with FakeBoard(babbling(lambda: b"\x00", 0.01)) as board, \
            driver(board.path, retries=2) as acc:
        error, seconds = ends_within(acc.ping, 3 * DEADLINE)
    assert isinstance(error, LinkError)
    assert seconds >= 3 * DEADLINE * 0.9
    assert len(board.received) == 3 * PING_BYTES


def test_silent_board_ends_at_the_timeout():
    with FakeBoard(silent) as board, driver(board.path) as acc:
        error, _ = ends_within(acc.ping, TIMEOUT)
    assert isinstance(error, BoardTimeout)
    assert str(error) == f"no answer from the board on {board.path} after 0.2 s"


def test_half_frame_ends_one_timeout_after_it():
    with FakeBoard(half_frames) as board, driver(board.path) as acc:
        error, _ = ends_within(acc.ping, TIMEOUT)
    assert isinstance(error, LinkError)
    assert str(error) == (f"the board on {board.path} sent a truncated reply (3 bytes, then "
                          f"nothing for 0.2 s)")


def test_unplugged_before_a_command_is_a_port_error():
    """A disconnected tty: tcflush raises termios.error (not an OSError) — one PortError line."""
    with FakeBoard(silent) as board, driver(board.path) as acc:
        board.stop.set()
        board.thread.join()
        board.unplug()
        error, _ = ends_within(acc.ping, 0)
    assert isinstance(error, PortError)
    assert str(error) == f"serial port {board.path} failed during PING: Input/output error"


def test_unplugged_while_waiting_is_a_port_error():
    with FakeBoard(unplugged_after_command) as board, driver(board.path, timeout=5) as acc:
        error, _ = ends_within(acc.ping, 0.05 + 0.1)
    assert isinstance(error, PortError)
    assert str(error).startswith(f"serial port {board.path} failed during PING: ")


# --------------------------------------------------------------------------------------------
# `stforge run` against the same boards
# --------------------------------------------------------------------------------------------

def write_artifact(tmp_path):
    import json
    manifest = {"model": {"input_shape": [1, 8, 8], "input_max": 16, "num_classes": 10,
                          "timesteps": 4, "time_varying_input": False, "dataset": "digits"}}
    (tmp_path / "art.json").write_text(json.dumps(manifest))
    return tmp_path / "art.json"


#: `stforge` as started from a terminal, where Ctrl-C raises KeyboardInterrupt: a test runner's
#: worker may hand its children SIGINT ignored or blocked, and Python then keeps it so (CI once
#: saw the Ctrl-C test below wait out its timeout that way)
_AS_FROM_A_TERMINAL = (
    "import signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from model.flows.cli import main; sys.exit(main(sys.argv[1:]))")


def stforge_run(*args):
    return subprocess.Popen([sys.executable, "-c", _AS_FROM_A_TERMINAL, "run", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_against_a_babbling_board_is_one_line_exit_2(tmp_path):
    """PING twice (retries 1), each ended by the default deadline: 0.3 s + the longest reply's
    time on the wire at 115200 baud."""
    art = write_artifact(tmp_path)
    with FakeBoard(babbling(non_sync, 0.01)) as board:
        process = stforge_run("--port", board.path, "--artifact", art, "--timeout", 0.3)
        try:
            out, err = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 2, err
    assert err.splitlines() == [err.strip()] and err.startswith(
        f"stforge: error: no reply from the board on {board.path} within 0.39 s: ")
    assert out == ""


def test_cli_ctrl_c_while_waiting_is_one_line_exit_130(tmp_path):
    art = write_artifact(tmp_path)
    with FakeBoard(silent) as board:
        process = stforge_run("--port", board.path, "--artifact", art, "--timeout", 60)
        try:
            assert board.got_command.wait(60), "the CLI never sent PING"
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 130
    assert err == "stforge: interrupted\n"
