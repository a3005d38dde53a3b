"""Host driver for the board top (``hw/board.py``): ping, run an image, read logits and cycles.

    from firmware.driver import Accelerator
    with Accelerator("/dev/ttyUSB1", baud=115200, timeout=2.0) as board:
        board.ping()                                   # protocol version
        logits, cycles, predicted = board.infer(image) # image: (C, H, W) ints, order (c, y, x)

``port`` is a device name (opened with pyserial, 8N1) or any object with ``read(n)`` and
``write(data)`` that behaves like a pyserial port with a timeout: ``read(n)`` returns at most
``n`` bytes and ``b""`` when nothing arrived in time (the simulation bridge in ``sim/board_tb.py``
is such an object). The driver keeps no clock of its own: every wait is one ``read(1)``, so
``timeout`` is the longest silence it accepts from the board, in the port's own time.

Errors (all :class:`DriverError`, a :class:`model.errors.StforgeError`, one line each):

* :class:`BoardTimeout` — nothing came back ("no answer from the board on /dev/ttyUSB1 after
  2.0 s").
* :class:`LinkError` — the reply was corrupted (bad CRC, truncated, over-long, not a reply).
  Idempotent commands (PING, READ_RESULT) are retried ``retries`` times first.
* :class:`BoardError` — the board answered ``ERROR <code>`` (``.code``).
* :class:`PortError` — the serial port cannot be opened.

CLI (digits test images of the artifact's data split; torch-free)::

    stforge run --port /dev/ttyUSB1 --artifact build/artifacts/l1p.json \
        [--images 10] [--baud 115200] [--timeout 2.0] [--golden g.npz] [--clock-mhz 24] \
        [--memory-map build/ice40-up5k/memory_map.json]

prints one line per image and a summary; a port that is missing or does not answer prints one
line and exits 2; logits that differ from ``--golden`` (an ``stforge golden-data`` file) exit 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from firmware.images import read_memory_map, write_mem_chunks
from firmware.protocol import PROTOCOL_VERSION, Command, ErrorCode, Frame, FrameDecoder, \
    FrameError, encode_frame, pack_run, pack_write_mem, unpack_error, unpack_result
from model.errors import StforgeError, positive_int

__all__ = ["Accelerator", "BoardError", "BoardTimeout", "DriverError", "Inference", "LinkError",
           "PortError", "configure", "run"]

#: The largest reply payload: READ_RESULT with 255 logits.
MAX_REPLY_PAYLOAD = 6 + 4 * 255

_ERROR_HINTS = {
    ErrorCode.BAD_CRC: "the board saw a CRC error in the command (line noise or wrong baud rate?)",
    ErrorCode.TIMEOUT: "the command reached the board truncated",
    ErrorCode.BAD_LENGTH: "the command is longer than the board accepts (image of the wrong size?)",
    ErrorCode.UNKNOWN_COMMAND: "the board does not know this command",
    ErrorCode.BAD_ARGUMENT: "the board rejected the payload (image size or pixel range do not "
                            "match the bitstream's model?)",
    ErrorCode.BUSY: "the board is busy or has no result yet",
    ErrorCode.UNSUPPORTED: "this bitstream does not implement the command (weights are in "
                           "block-RAM init, WRITE_MEM is not supported)",
}


class DriverError(StforgeError):
    """Anything that went wrong talking to the board."""


class PortError(DriverError):
    """The serial port could not be opened."""


class BoardTimeout(DriverError):
    """The board did not answer in time."""


class LinkError(DriverError):
    """A reply arrived corrupted or was not the reply expected."""


class BoardError(DriverError):
    """The board answered ERROR; ``code`` is the :class:`ErrorCode` (or a plain int)."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class Inference(NamedTuple):
    """One inference: the logits (class 0 first), the accelerator's cycles, its class."""

    logits: tuple
    cycles: int
    predicted: int


def _command_name(command):
    try:
        return Command(command).name
    except ValueError:
        return f"0x{command:02x}"


class Accelerator:
    """The board's accelerator over a serial link (see the module docstring).

    Parameters
    ----------
    port : str or file-like
        Serial device (opened 8N1 at ``baud`` with ``timeout``) or an open port object.
    baud : int
        Baud rate when ``port`` is a device name.
    timeout : float
        Seconds of silence after which a read gives up (the port object's own timeout applies
        when an object is passed; this value is then only quoted in messages).
    retries : int
        Extra attempts of PING / READ_RESULT after a corrupted reply.
    input_shape, input_max, classes :
        When given (e.g. from the artifact: :meth:`for_artifact`), images and results are checked
        against them before sending / after receiving.
    name : str
        How messages name the port (default: the device name or ``port.name``).
    """

    def __init__(self, port, baud=115200, timeout=2.0, *, retries=1, input_shape=None,
                 input_max=None, classes=None, name=None):
        if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                and timeout > 0):
            raise ValueError(f"Timeout must be positive seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.input_max = input_max
        self.classes = classes
        self._owned = False
        if isinstance(port, (str, Path)):
            self.name = name or str(port)
            self.port = self._open(str(port), baud, self.timeout)
            self._owned = True
        else:
            if not (hasattr(port, "read") and hasattr(port, "write")):
                raise TypeError(f"port must be a device name or have read() and write(), "
                                f"not {type(port).__name__}")
            self.port = port
            self.name = name or getattr(port, "name", None) or type(port).__name__

    @classmethod
    def for_artifact(cls, port, artifact_manifest, **kwargs):
        """A driver that checks images and results against an artifact manifest (a dict)."""
        man = artifact_manifest["model"]
        shape = tuple(man["input_shape"])
        if man.get("time_varying_input"):
            shape = (man["timesteps"],) + shape
        return cls(port, input_shape=shape, input_max=int(man["input_max"]),
                   classes=int(man["num_classes"]), **kwargs)

    @staticmethod
    def _open(device, baud, timeout):
        try:
            import serial
        except ImportError as error:  # pragma: no cover - pyserial is a dependency
            raise PortError(f"pyserial is not installed ({error}); run `make install`") from None
        try:
            return serial.Serial(device, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                 timeout=timeout, write_timeout=timeout)
        except (serial.SerialException, OSError, ValueError) as error:
            errno = getattr(error, "errno", None)
            reason = os.strerror(errno) if isinstance(errno, int) else str(error)
            raise PortError(f"cannot open serial port {device}: {reason}") from None

    def close(self):
        if self._owned:
            self.port.close()
            self._owned = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- frames ------------------------------------------------------------------------------

    def _discard_input(self):
        reset = getattr(self.port, "reset_input_buffer", None)
        if reset is not None:
            reset()

    def _read_reply(self):
        """The next reply frame; raises BoardTimeout / LinkError."""
        decoder = FrameDecoder(max_payload=MAX_REPLY_PAYLOAD)
        received = 0
        while True:
            byte = self.port.read(1)
            if not byte:
                if received == 0:
                    raise BoardTimeout(f"no answer from the board on {self.name} after "
                                       f"{self.timeout} s")
                what = "a truncated reply" if decoder.in_frame else "no frame"
                raise LinkError(f"the board on {self.name} sent {what} ({received} bytes, then "
                                f"nothing for {self.timeout} s)")
            received += len(byte)
            for event in decoder.feed(byte):
                if isinstance(event, FrameError):
                    raise LinkError(f"corrupted reply from the board on {self.name}: "
                                    f"{event.code.name} ({event.detail})")
                return event

    def _transact(self, command, payload=b"", *, retry=False):
        """Send one command; return the payload of its OK reply."""
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            try:
                self._discard_input()
                self.port.write(encode_frame(command, payload))
                flush = getattr(self.port, "flush", None)
                if flush is not None:
                    flush()
                reply = self._read_reply()
            except LinkError:
                if attempt + 1 < attempts:
                    continue
                raise
            except OSError as error:     # pyserial's SerialException / write timeout included
                raise PortError(f"serial port {self.name} failed during "
                                f"{_command_name(command)}: {error}") from None
            return self._check_reply(command, reply)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_reply(self, command, reply: Frame):
        name = _command_name(command)
        if reply.command == Command.OK:
            return reply.payload
        if reply.command == Command.ERROR:
            try:
                code = unpack_error(reply.payload)
            except ValueError as error:
                raise LinkError(f"malformed ERROR reply to {name} from {self.name}: "
                                f"{error}") from None
            label = code.name if isinstance(code, ErrorCode) else f"0x{code:02x}"
            hint = _ERROR_HINTS.get(code, "unknown error code")
            raise BoardError(f"the board on {self.name} answered {name} with ERROR {label}: "
                             f"{hint}", code)
        raise LinkError(f"unexpected reply {reply} to {name} from the board on {self.name}")

    # ---- commands ----------------------------------------------------------------------------

    def ping(self) -> int:
        """Check the board answers; returns its protocol version (must be ours)."""
        payload = self._transact(Command.PING, retry=True)
        if len(payload) != 1:
            raise LinkError(f"PING reply from {self.name} carries {len(payload)} bytes, not 1")
        if payload[0] != PROTOCOL_VERSION:
            raise DriverError(f"the board on {self.name} speaks protocol version {payload[0]}, "
                              f"this driver {PROTOCOL_VERSION}")
        return payload[0]

    def _pixels(self, image) -> bytes:
        """The RUN payload of an image: a (C, H, W) array or a flat sequence, order (c, y, x)."""
        import numpy as np
        arr = np.asarray(image)
        if arr.dtype.kind not in "iub":
            raise ValueError(f"image must hold integers, not {arr.dtype}")
        if self.input_shape is not None:
            flat = (int(np.prod(self.input_shape)),)
            if arr.shape not in (self.input_shape, flat):
                raise ValueError(f"image has shape {arr.shape}, the model takes "
                                 f"{self.input_shape}")
        pixels = [int(v) for v in arr.reshape(-1)]
        limit = 255 if self.input_max is None else self.input_max
        bad = [p for p in pixels if not 0 <= p <= limit]
        if bad:
            raise ValueError(f"pixel value {bad[0]} outside 0..{limit}")
        return pack_run(pixels)

    def run(self, image) -> None:
        """Send RUN with the image; returns once the board has started it."""
        payload = self._transact(Command.RUN, self._pixels(image))
        if payload:
            raise LinkError(f"RUN reply from {self.name} carries {len(payload)} bytes, not 0")

    def read_result(self) -> Inference:
        """READ_RESULT: waits (on the board) for a run in progress to finish."""
        payload = self._transact(Command.READ_RESULT, retry=True)
        try:
            result = unpack_result(payload)
        except ValueError as error:
            raise LinkError(f"malformed result from {self.name}: {error}") from None
        if self.classes is not None and len(result.logits) != self.classes:
            raise LinkError(f"the board on {self.name} returned {len(result.logits)} logits, the "
                            f"model has {self.classes} classes (bitstream of another model?)")
        return Inference(tuple(result.logits), result.cycles, result.predicted)

    def loadable(self) -> bool:
        """Whether the bitstream takes its tables from the host (the iCE40 build). Asks with a
        WRITE_MEM that names no words, which writes nothing either way: a loadable board
        refuses it as BAD_ARGUMENT, one with its weights in the bitstream as UNSUPPORTED."""
        try:
            self._transact(Command.WRITE_MEM, pack_write_mem(0, 0, b""), retry=True)
        except BoardError as error:
            if error.code == ErrorCode.UNSUPPORTED:
                return False
            if error.code == ErrorCode.BAD_ARGUMENT:
                return True
            raise
        raise LinkError(f"the board on {self.name} accepted a WRITE_MEM without words")

    def load(self, tables, progress=None) -> bool:
        """Write the memory images (:func:`firmware.images.read_memory_map`) with WRITE_MEM.

        Returns False, having written nothing, when the bitstream keeps its weights in block-RAM
        init (the board answers the first frame UNSUPPORTED), True once every table is written.
        Needs ``input_shape`` (:meth:`for_artifact`): the board takes payloads up to the RUN
        size. `progress(done, total)` is called after each frame."""
        import math
        if self.input_shape is None:
            raise DriverError("load needs the model's input shape (use Accelerator.for_artifact)")
        chunks = list(write_mem_chunks(tables, math.prod(self.input_shape)))
        for done, (mem_id, address, data) in enumerate(chunks, start=1):
            try:
                payload = self._transact(Command.WRITE_MEM,
                                         pack_write_mem(mem_id, address, data), retry=True)
            except BoardError as error:
                if done == 1 and error.code == ErrorCode.UNSUPPORTED:
                    return False
                raise
            if payload:
                raise LinkError(f"WRITE_MEM reply from {self.name} carries {len(payload)} "
                                f"bytes, not 0")
            if progress is not None:
                progress(done, len(chunks))
        return True

    def infer(self, image) -> Inference:
        """Run one image: ``(logits, cycles, predicted)``."""
        self.run(image)
        return self.read_result()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _test_images(manifest, count):
    """The first ``count`` test images and labels of the artifact's (digits) split."""
    from model.data import load_digits
    data = manifest.get("source", {}).get("config", {}).get("data", {})
    name = data.get("name", manifest["model"].get("dataset"))
    if name != "digits":
        raise DriverError(f"the driver CLI runs digits test images; this artifact was trained on "
                          f"{name!r}")
    split = load_digits(seed=int(data.get("seed", 0)))
    x, y = split.x_test, split.y_test
    if data.get("limit") is not None:
        x, y = x[:data["limit"]], y[:data["limit"]]
    return x[:count], y[:count]


def _load_manifest(path):
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        manifest["model"]["input_shape"]
    except FileNotFoundError:
        raise DriverError(f"artifact {path} not found (run `make export`)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DriverError(f"artifact {path} is not readable ({error})") from None
    return manifest


def configure(parser) -> None:
    """`stforge run`'s arguments."""
    parser.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB1")
    parser.add_argument("--artifact", required=True, help="the artifact the bitstream was built "
                                                          "from (.json)")
    parser.add_argument("--images", type=positive_int, default=10, help="first N test images")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    parser.add_argument("--golden", help="golden .npz (stforge golden-data) to compare logits")
    parser.add_argument("--clock-mhz", type=float, help="board clock, to print latencies")
    parser.add_argument("--memory-map", help="memory_map.json beside the bitstream (make "
                                             "bitstream): the tables a loadable board needs")


def run(args) -> int:
    """`stforge run`: test images through the board, compared with the golden logits."""
    manifest = _load_manifest(args.artifact)
    images, labels = _test_images(manifest, args.images)
    golden = None
    if args.golden:
        import numpy as np
        try:
            with np.load(args.golden) as npz:
                golden = npz["logits"]
        except (OSError, ValueError, KeyError) as error:
            raise DriverError(f"golden data {args.golden} is not readable ({error})") from None
        if len(golden) < len(images):
            raise DriverError(f"{args.golden} holds {len(golden)} images, {len(images)} "
                              f"requested")
    with Accelerator.for_artifact(args.port, manifest, baud=args.baud,
                                  timeout=args.timeout) as board:
        board.ping()
        if board.loadable():        # the iCE40 build: its tables come from the host
            if not args.memory_map:
                raise DriverError("this board takes its tables from the host: pass "
                                  "--memory-map <bitstream folder>/memory_map.json "
                                  "(written by `make bitstream`)")
            try:
                tables = read_memory_map(args.memory_map)
            except StforgeError as error:
                raise DriverError(str(error)) from None
            board.load(tables)
            print(f"loaded {sum(len(t.words) for t in tables)} words "
                  f"({', '.join(t.name for t in tables)}) into the board")
        correct, mismatches, cycles = 0, 0, []
        for i, (image, label) in enumerate(zip(images, labels)):
            out = board.infer(image)
            cycles.append(out.cycles)
            correct += out.predicted == int(label)
            note = ""
            if golden is not None:
                same = list(out.logits) == [int(v) for v in golden[i]]
                mismatches += not same
                note = ", logits = golden" if same else ", LOGITS DIFFER FROM GOLDEN"
            latency = (f", {out.cycles / args.clock_mhz:.1f} us" if args.clock_mhz else "")
            print(f"image {i}: label {int(label)}, board {out.predicted}, "
                  f"{out.cycles} cycles{latency}{note}")
    n = len(images)
    print(f"{n} images: {correct}/{n} correct (accuracy {correct / n:.3f}), cycles mean "
          f"{sum(cycles) / n:.0f} (min {min(cycles)}, max {max(cycles)})"
          + (f"; {n - mismatches}/{n} logits equal to golden" if golden is not None else ""))
    return 1 if mismatches else 0
