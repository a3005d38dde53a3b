"""Host driver for the board top (``hw/board.py``): ping, run an image, read logits and cycles.

    from firmware.driver import Accelerator
    with Accelerator("/dev/ttyUSB1", baud=115200, timeout=2.0) as board:
        board.ping()                                   # protocol version
        logits, cycles, predicted = board.infer(image) # image: (C, H, W) ints, order (c, y, x)

``port`` is a device name (opened with pyserial, 8N1) or any object with ``read(n)`` and
``write(data)`` that behaves like a pyserial port with a timeout: ``read(n)`` returns at most
``n`` bytes and ``b""`` when nothing arrived in time (the simulation bridge in ``sim/board_tb.py``
is such an object).

Waiting for a reply. After sending a command the driver reads the reply one ``read(1)`` at a time
and gives up

* when the line is silent for ``timeout`` seconds (a read returns nothing; the port's own read
  timeout): :class:`BoardTimeout` if nothing came at all, else :class:`LinkError`;
* when the reply is not complete ``deadline`` seconds after the command was sent, however many
  bytes keep arriving (noise, a wrong baud rate, a babbling board): :class:`LinkError`. The
  default deadline is ``timeout`` plus the time the longest reply (:data:`MAX_REPLY_BYTES` =
  1032 bytes) takes on the wire at ``baud`` (8N1, 10 bits a byte): 2.09 s at the defaults.

The deadline is kept on ``clock``, read after every byte: ``time.monotonic`` for a serial device
(a name, or a pyserial port object); a port object of another kind keeps its own time (the
simulation's is simulated time), so it has no clock unless given one (``clock=``). Whatever the
clock, a reply is also given up after the bytes a line at ``baud`` carries in the deadline
(``deadline * baud / 10``, at least one longest reply), so a port that returns bytes faster than
any line cannot hold the driver either. A reply therefore ends at most ``deadline`` after its
command, or, when the bytes stop just before that, one ``timeout`` later: never after
``deadline + timeout``. PING and READ_RESULT are tried ``1 + retries`` times after a
:class:`LinkError`, each time after writing the command (on a device at most ``timeout``,
pyserial's write timeout).

Errors (all :class:`DriverError`, a :class:`model.errors.StforgeError`, one line each):

* :class:`BoardTimeout` — nothing came back ("no answer from the board on /dev/ttyUSB1 after
  2.0 s").
* :class:`LinkError` — the reply was corrupted (bad CRC, truncated, over-long, not a reply, a
  result whose class is not one of the model's), or bytes kept coming without a whole reply
  until the deadline. Idempotent commands (PING, READ_RESULT) are retried ``retries`` times
  first.
* :class:`BoardError` — the board answered ``ERROR <code>`` (``.code``).
* :class:`PortError` — the serial port cannot be opened, or fails while in use (unplugged: an
  ``OSError``, pyserial's ``SerialException`` or a ``termios.error``).

Arguments that cannot work (a timeout that is not a finite number above 0, a baud rate that is
not a positive integer, negative retries, an image of the wrong shape) are a :class:`ValueError`
before anything is sent; a port object without ``read`` and ``write`` is a :class:`TypeError`.

CLI (digits test images of the artifact's data split; torch-free)::

    stforge run --port /dev/ttyUSB1 --artifact build/artifacts/l1p.json \
        [--images 10] [--baud 115200] [--timeout 2.0] [--golden g.npz] [--clock-mhz 24] \
        [--memory-map build/ice40-up5k/memory_map.json]

prints one line per image and a summary; logits that differ from ``--golden`` (an
``stforge golden-data`` file) exit 1. Every mistake is one line ``stforge: error: ...`` and exit
status 2 (Ctrl-C: 130), found before the port is opened where it can be: ``--images``,
``--baud`` (positive integers), ``--timeout``, ``--clock-mhz`` (finite numbers above 0), an
artifact, golden file or memory map that is missing, a folder, empty or not what it should be.
A port that is missing, silent, babbling or unplugged is one line too, within the reply
deadline above (``--timeout`` plus the longest reply's time on the wire).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

from firmware.images import read_memory_map, write_mem_chunks
from firmware.protocol import CRC_BYTES, HEADER_BYTES, MAX_PAYLOAD, PROTOCOL_VERSION, Command, \
    ErrorCode, Frame, FrameDecoder, FrameError, encode_frame, pack_run, pack_write_mem, \
    unpack_error, unpack_result
from model.errors import StforgeError, positive_float, positive_int, shown

try:
    import termios
except ImportError:  # pragma: no cover - not on Windows
    termios = None

__all__ = ["Accelerator", "BoardError", "BoardTimeout", "DriverError", "Inference", "LinkError",
           "PortError", "configure", "run"]

#: The largest reply payload: READ_RESULT with 255 logits.
MAX_REPLY_PAYLOAD = 6 + 4 * 255
#: The longest reply frame on the wire.
MAX_REPLY_BYTES = HEADER_BYTES + MAX_REPLY_PAYLOAD + CRC_BYTES
#: Bits a byte takes on the wire (8N1: start, 8 data, stop).
BITS_PER_BYTE = 10

#: What a port raises when it fails in use: pyserial's SerialException is an OSError; a
#: disconnected tty makes ``tcflush`` / ``tcdrain`` raise termios.error, which is not.
_PORT_ERRORS = (OSError,) + ((termios.error,) if termios is not None else ())

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


def _reason(error) -> str:
    """Why a port failed, on one line (a termios.error carries ``(errno, text)``)."""
    if termios is not None and isinstance(error, termios.error) and len(error.args) == 2:
        return str(error.args[1])
    return " ".join(str(error).split()) or type(error).__name__


def _value(value) -> str:
    """``repr(value)`` on one line, shortened, for a ValueError's message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seconds(name, value, *, optional=False):
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds above 0"
                         f"{' or None' if optional else ''}, not {_value(value)}")
    return float(value)


def _is_pyserial(port) -> bool:
    try:
        import serial
    except ImportError:  # pragma: no cover - pyserial is a dependency
        return False
    return isinstance(port, serial.SerialBase)


def _model_facts(manifest):
    """``(input_shape, input_max, classes)`` of an artifact manifest (a dict); a ValueError
    names the first field that is missing or wrong."""
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise ValueError("the manifest has no 'model' table")

    def field(key, ok, what):
        value = model.get(key)
        if not ok(value):
            raise ValueError(f"model.{key} must be {what}, not {_value(value)}")
        return value

    shape = field("input_shape", lambda v: isinstance(v, list) and len(v) == 3 and
                  all(_is_int(n) and n >= 1 for n in v),
                  "[channels, height, width], three positive integers")
    input_max = field("input_max", lambda v: _is_int(v) and 0 <= v <= 255, "an integer in 0..255")
    classes = field("num_classes", lambda v: _is_int(v) and 1 <= v <= 255,
                    "an integer in 1..255")
    if field("time_varying_input", lambda v: v is None or isinstance(v, bool), "true or false"):
        shape = [field("timesteps", lambda v: _is_int(v) and v >= 1, "a positive integer")] + shape
    return tuple(shape), input_max, classes


class Accelerator:
    """The board's accelerator over a serial link (see the module docstring).

    Parameters
    ----------
    port : str or file-like
        Serial device (opened 8N1 at ``baud`` with ``timeout``) or an open port object.
    baud : int
        Baud rate when ``port`` is a device name.
    timeout : float
        Seconds of silence after which a read gives up (a finite number above 0; the port
        object's own timeout applies when an object is passed, this value is then quoted in
        messages and starts the default ``deadline``).
    retries : int
        Extra attempts (0 or more) of PING / READ_RESULT after a corrupted reply.
    deadline : float
        Seconds one reply may take in all, from the end of its command to its last byte, however
        many bytes arrive (default: ``timeout`` plus the longest reply's time on the wire at
        ``baud``). See the module docstring.
    clock : callable
        The clock the deadline is kept on, in seconds (default: ``time.monotonic`` for a serial
        device; none for another port object, whose replies are then bounded by bytes only).
    input_shape, input_max, classes :
        When given (e.g. from the artifact: :meth:`for_artifact`), images and results are checked
        against them before sending / after receiving.
    name : str
        How messages name the port (default: the device name or ``port.name``).
    """

    def __init__(self, port, baud=115200, timeout=2.0, *, retries=1, deadline=None, clock=None,
                 input_shape=None, input_max=None, classes=None, name=None):
        if not _is_int(baud) or baud < 1:
            raise ValueError(f"Baud rate must be a positive integer, not {_value(baud)}")
        self.timeout = _check_seconds("Timeout", timeout)
        if not _is_int(retries) or retries < 0:
            raise ValueError(f"Retries must be a non-negative integer, not {_value(retries)}")
        deadline = _check_seconds("Deadline", deadline, optional=True)
        if clock is not None and not callable(clock):
            raise ValueError(f"Clock must be a function returning seconds, not {_value(clock)}")
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
            if not shape or not all(_is_int(n) and n >= 1 for n in shape) or \
                    math.prod(shape) > MAX_PAYLOAD:
                raise ValueError(f"Input shape must be positive integers, at most {MAX_PAYLOAD} "
                                 f"pixels in all, not {_value(input_shape)}")
            input_shape = shape
        if input_max is not None and not (_is_int(input_max) and 0 <= input_max <= 255):
            raise ValueError(f"Input maximum must be an integer in 0..255, not {_value(input_max)}")
        if classes is not None and not (_is_int(classes) and 1 <= classes <= 255):
            raise ValueError(f"Classes must be an integer in 1..255, not {_value(classes)}")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"Name must be a string, not {_value(name)}")
        self.baud = baud
        self.retries = retries
        self.deadline = (deadline if deadline is not None else
                         self.timeout + MAX_REPLY_BYTES * BITS_PER_BYTE / baud)
        self.input_shape = input_shape
        self.input_max = input_max
        self.classes = classes
        #: the most bytes one reply may bring: what the line carries in the deadline
        self.max_reply_read = max(MAX_REPLY_BYTES,
                                  math.ceil(self.deadline * baud / BITS_PER_BYTE))
        self._owned = False
        if isinstance(port, (str, Path)):
            self.name = shown(name or port)
            self.port = self._open(str(port), baud, self.timeout)
            self._owned = True
        else:
            if not (hasattr(port, "read") and hasattr(port, "write")):
                raise TypeError(f"port must be a device name or have read() and write(), "
                                f"not {type(port).__name__}")
            self.port = port
            self.name = shown(name or getattr(port, "name", None) or type(port).__name__)
        if clock is None and (self._owned or _is_pyserial(port)):
            clock = time.monotonic
        self.clock = clock

    @classmethod
    def for_artifact(cls, port, artifact_manifest, **kwargs):
        """A driver that checks images and results against an artifact manifest (a dict; a
        ValueError names a field it lacks)."""
        shape, input_max, classes = _model_facts(artifact_manifest)
        return cls(port, input_shape=shape, input_max=input_max, classes=classes, **kwargs)

    @staticmethod
    def _open(device, baud, timeout):
        try:
            import serial
        except ImportError as error:  # pragma: no cover - pyserial is a dependency
            raise PortError(f"pyserial is not installed ({error}); run `make install`") from None
        try:
            return serial.Serial(device, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                 timeout=timeout, write_timeout=timeout)
        except OverflowError:       # a baud rate beyond the C int pyserial hands to the tty
            raise PortError(f"cannot open serial port {shown(device)}: {baud} baud is out of "
                            f"range") from None
        except (ValueError,) + _PORT_ERRORS as error:     # ValueError: a NUL in the name, a
            # custom baud rate the tty refuses ("Failed to set custom baud rate")
            errno = getattr(error, "errno", None)
            reason = os.strerror(errno) if isinstance(errno, int) else _reason(error)
            raise PortError(f"cannot open serial port {shown(device)}: {reason}") from None

    def close(self):
        if self._owned:
            self._owned = False
            try:
                self.port.close()
            except _PORT_ERRORS as error:
                raise PortError(f"serial port {self.name} failed to close: "
                                f"{_reason(error)}") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        try:
            self.close()
        except PortError:
            if exc_type is None:        # else the error in flight is the one to report
                raise

    # ---- frames ------------------------------------------------------------------------------

    def _discard_input(self):
        reset = getattr(self.port, "reset_input_buffer", None)
        if reset is not None:
            reset()

    def _read_reply(self):
        """The next reply frame, within the deadline; raises BoardTimeout / LinkError."""
        decoder = FrameDecoder(max_payload=MAX_REPLY_PAYLOAD)
        clock = self.clock
        end = None if clock is None else clock() + self.deadline
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
            if received >= self.max_reply_read or (end is not None and clock() >= end):
                what = "a reply that does not end" if decoder.in_frame else "no frame"
                raise LinkError(f"no reply from the board on {self.name} within "
                                f"{self.deadline:.3g} s: {received} bytes came, {what} (line "
                                f"noise or a wrong baud rate?)")

    def _exchange(self, command, payload):
        """Write one command and read one reply frame; a failing port is a PortError."""
        try:
            self._discard_input()
            self.port.write(encode_frame(command, payload))
            flush = getattr(self.port, "flush", None)
            if flush is not None:
                flush()
            return self._read_reply()
        except _PORT_ERRORS as error:   # pyserial's SerialException / write timeout included
            raise PortError(f"serial port {self.name} failed during "
                            f"{_command_name(command)}: {_reason(error)}") from None

    def _transact(self, command, payload=b"", *, retry=False):
        """Send one command; return the payload of its OK reply."""
        retries = self.retries if retry else 0
        while True:
            try:
                reply = self._exchange(command, payload)
            except LinkError:
                if retries == 0:
                    raise
                retries -= 1
                continue
            return self._check_reply(command, reply)

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
        if result.predicted >= len(result.logits):
            raise LinkError(f"the board on {self.name} returned class {result.predicted} with "
                            f"{len(result.logits)} logits (a corrupted result?)")
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
        size. `progress(done, total)` is called after each frame. Tables that cannot be sent
        (see :func:`firmware.images.write_mem_chunks`) are a ValueError before anything is."""
        if self.input_shape is None:
            raise DriverError("load needs the model's input shape (use Accelerator.for_artifact)")
        if progress is not None and not callable(progress):
            raise ValueError(f"Progress must be a function or None, not {_value(progress)}")
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

def _section(table, key, where):
    """``table[key]`` as a dict ({} when absent); a DriverError when it is something else."""
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise DriverError(f"{where}.{key} of the artifact must be a table, not {_value(value)}")
    return value


def _test_images(manifest, count):
    """The first ``count`` test images and labels of the artifact's (digits) split."""
    from model.data import load_digits
    data = _section(_section(_section(manifest, "source", "manifest"), "config", "source"),
                    "data", "source.config")
    name = data.get("name", manifest["model"].get("dataset"))
    if name is None:
        raise DriverError("the artifact does not name its data set (model.dataset); the driver "
                          "CLI runs digits test images")
    if name != "digits":
        raise DriverError(f"the driver CLI runs digits test images; this artifact was trained on "
                          f"{_value(name)}")
    seed, limit = data.get("seed", 0), data.get("limit")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise DriverError(f"the artifact's data seed must be an integer in 0..2**32-1, not "
                          f"{_value(seed)}")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise DriverError(f"the artifact's data limit must be a positive integer, not "
                          f"{_value(limit)}")
    split = load_digits(seed=seed)
    x, y = split.x_test[:limit], split.y_test[:limit]
    return x[:count], y[:count]


def _load_manifest(path):
    """The artifact manifest (a dict whose model facts :meth:`Accelerator.for_artifact` can
    use); a DriverError line otherwise."""
    where = shown(path)
    try:
        manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DriverError(f"artifact {where} not found (run `make export`)") from None
    except IsADirectoryError:
        raise DriverError(f"artifact {where} is a folder, not a .json file") from None
    except (OSError, ValueError, RecursionError) as error:     # JSON, UTF-8, a NUL in the path
        raise DriverError(f"artifact {where} is not readable ({_reason(error)})") from None
    try:
        _model_facts(manifest)
    except ValueError as error:
        raise DriverError(f"artifact {where} is not usable: {error}") from None
    return manifest


def _load_golden(path, count, classes):
    """The logits of a golden .npz (``stforge golden-data``): an integer array of at least
    ``count`` images by ``classes``; a DriverError line otherwise."""
    import zipfile

    import numpy as np
    where = shown(path)
    if Path(path).is_dir():
        raise DriverError(f"golden data {where} is a folder, not an .npz file")
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DriverError(f"golden data {where} not found (stforge golden-data writes it)") \
            from None
    except EOFError:
        raise DriverError(f"golden data {where} is empty, not an .npz file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else \
            "not an .npz file"
        raise DriverError(f"golden data {where} is not readable ({reason})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):       # an .npy holds one bare array
        raise DriverError(f"golden data {where} is not an .npz file (stforge golden-data "
                          f"writes one)")
    with npz:
        try:
            logits = npz["logits"]
        except KeyError:
            raise DriverError(f"golden data {where} holds no logits") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DriverError(f"golden data {where} is not readable ({_reason(error)})") \
                from None
    if logits.ndim != 2 or logits.dtype.kind not in "iu":
        raise DriverError(f"golden data {where}: logits must be integers, one row per image, "
                          f"not {logits.dtype} of shape {logits.shape}")
    if logits.shape[1] != classes:
        raise DriverError(f"golden data {where} holds {logits.shape[1]} logits per image, the "
                          f"model has {classes} classes")
    if len(logits) < count:
        raise DriverError(f"golden data {where} holds {len(logits)} images, {count} requested")
    return logits


def _load_tables(path, payload):
    """The memory map's tables, each checked to fit WRITE_MEM frames of ``payload`` bytes."""
    tables = read_memory_map(path)          # a StforgeError line when it is not one
    try:
        for _ in write_mem_chunks(tables, payload):
            pass
    except ValueError as error:
        raise DriverError(f"memory map {shown(path)}: {error}") from None
    return tables


def configure(parser) -> None:
    """`stforge run`'s arguments."""
    parser.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB1")
    parser.add_argument("--artifact", required=True, help="the artifact the bitstream was built "
                                                          "from (.json)")
    parser.add_argument("--images", type=positive_int, default=10, help="first N test images")
    parser.add_argument("--baud", type=positive_int, default=115200, help="bits per second")
    parser.add_argument("--timeout", type=positive_float, default=2.0,
                        help="seconds of silence after which a reply is given up; a whole reply "
                             "may take this plus the longest reply's time on the wire")
    parser.add_argument("--golden", help="golden .npz (stforge golden-data) to compare logits")
    parser.add_argument("--clock-mhz", type=positive_float,
                        help="board clock, to print latencies")
    parser.add_argument("--memory-map", help="memory_map.json beside the bitstream (make "
                                             "bitstream): the tables a loadable board needs")


def run(args) -> int:
    """`stforge run`: test images through the board, compared with the golden logits."""
    manifest = _load_manifest(args.artifact)
    shape, _, classes = _model_facts(manifest)
    images, labels = _test_images(manifest, args.images)
    golden = (_load_golden(args.golden, len(images), classes) if args.golden is not None
              else None)
    tables = (_load_tables(args.memory_map, math.prod(shape)) if args.memory_map is not None
              else None)
    with Accelerator.for_artifact(args.port, manifest, baud=args.baud,
                                  timeout=args.timeout) as board:
        board.ping()
        if board.loadable():        # the iCE40 build: its tables come from the host
            if tables is None:
                raise DriverError("this board takes its tables from the host: pass "
                                  "--memory-map <bitstream folder>/memory_map.json "
                                  "(written by `make bitstream`)")
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
