"""Host <-> board frame format: the one source of truth for the host driver and the gateware.

Pure Python (no Amaranth, no NumPy, no torch). ``hw/link.py`` imports its constants from here, and
the gateware tests check ``FrameReceiver`` / ``FrameSender`` against :func:`encode_frame` and
:class:`FrameDecoder` byte for byte.

Frame layout (all multi-byte fields little-endian)::

    +------+---------+------------+-----------------+------------+
    | SYNC | command | length     | payload         | CRC-16     |
    | 0xA5 | 1 byte  | 2 bytes LE | `length` bytes  | 2 bytes LE |
    +------+---------+------------+-----------------+------------+

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final
XOR; ``crc16(b"123456789") == 0x29B1``) over command, both length bytes and the payload — not over
SYNC.

Receiving (:class:`FrameDecoder` here, ``hw.link.FrameReceiver`` in gateware; both follow the same
rules so that they agree on every byte sequence):

* While hunting, every byte other than SYNC is discarded silently.
* A length above the receiver's ``max_payload`` is reported at once as ``BAD_LENGTH``.
* A CRC mismatch is reported as ``BAD_CRC`` after the whole frame has been read.
* An inter-byte timeout in the middle of a frame (a truncated frame) is reported as ``TIMEOUT``.
* After any error the receiver hunts for SYNC again starting with the next byte; it never waits
  for more than one timeout.

Commands (host -> board) and their payloads:

* ``PING`` — empty. Reply ``OK`` carrying one byte, :data:`PROTOCOL_VERSION`.
* ``WRITE_MEM`` — :func:`pack_write_mem`: memory id (u8), word address (u32), data bytes (the
  memory's words, little-endian, in the width the memory map gives that memory). Reply ``OK``.
  A board whose weights are fixed in the bitstream answers ``ERROR UNSUPPORTED``.
* ``RUN`` — :func:`pack_run`: the input pixels, one unsigned byte each. Reply ``OK`` once started.
* ``READ_RESULT`` — empty. Reply ``OK`` carrying :func:`pack_result`: predicted class (u8),
  cycles (u32), number of logits (u8), logits (i32 each).

Replies (board -> host): ``OK`` (payload as above) or ``ERROR`` carrying one byte,
an :class:`ErrorCode` (:func:`pack_error`).

Arguments: byte strings (payloads, data, pixels) are bytes-like objects or iterables of integers
in 0..255, integers are ``int`` (not ``bool``), times are finite numbers of seconds. Every helper
and constructor here refuses an argument it cannot take (of the wrong type, out of range, longer
than a frame can carry, a non-finite time) with one :class:`ValueError` naming it, never with
another exception; an over-long iterable is refused once it passes the limit, without reading it
to the end.
"""

import binascii
import dataclasses
import enum
import math
import operator
import struct

__all__ = [
    "CRC16_INIT",
    "CRC16_POLY",
    "CRC_BYTES",
    "HEADER_BYTES",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "SYNC",
    "Command",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Result",
    "crc16",
    "encode_frame",
    "pack_error",
    "pack_result",
    "pack_run",
    "pack_write_mem",
    "unpack_error",
    "unpack_result",
    "unpack_run",
    "unpack_write_mem",
]

#: First byte of every frame.
SYNC = 0xA5
#: SYNC, command and the two length bytes.
HEADER_BYTES = 4
#: The CRC trailer.
CRC_BYTES = 2
#: The largest payload the 16-bit length field can describe.
MAX_PAYLOAD = 0xFFFF
#: CRC-16/CCITT-FALSE parameters.
CRC16_POLY = 0x1021
CRC16_INIT = 0xFFFF
#: Sent in the payload of the reply to ``PING``.
PROTOCOL_VERSION = 1


class Command(enum.IntEnum):
    """The command byte. Values below 0x80 are requests, from 0x80 on replies."""

    PING = 0x01
    WRITE_MEM = 0x02
    RUN = 0x03
    READ_RESULT = 0x04
    OK = 0x80
    ERROR = 0x81


class ErrorCode(enum.IntEnum):
    """The payload byte of an ``ERROR`` reply, and the code of a :class:`FrameError`."""

    BAD_CRC = 0x01          #: the CRC did not match
    TIMEOUT = 0x02          #: a frame stopped arriving mid-way (truncated)
    BAD_LENGTH = 0x03       #: the length field exceeds the receiver's maximum payload
    UNKNOWN_COMMAND = 0x04  #: a well-formed frame with a command the board does not know
    BAD_ARGUMENT = 0x05     #: a well-formed command with a payload it cannot accept
    BUSY = 0x06             #: the board cannot take the command now (e.g. RUN while running)
    UNSUPPORTED = 0x07      #: a known command this board does not implement (e.g. WRITE_MEM
                            #: on a bitstream whose weights boot from block-RAM init)


def _show(value):
    """``repr(value)`` on one line, shortened: error messages stay one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _check_int(name, value, low, high, what=None):
    """``value`` as an ``int`` in ``low..high`` (``int`` or a NumPy integer, not ``bool``)."""
    number = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            pass
    if number is None or not low <= number <= high:
        raise ValueError(f"{name} must be an integer in {what or f'{low}..{high}'}, "
                         f"not {_show(value)}")
    return number


def _check_byte(name, value):
    return _check_int(name, value, 0, 0xFF)


def _check_time(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {_show(value)}")


def _to_bytes(name, data, limit=None, *, item=None):
    """``data`` (a bytes-like object or an iterable of integers 0..255) as ``bytes``; a
    ValueError for anything else, or for more than ``limit`` bytes (found without reading an
    over-long iterable to its end)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data)
        except (ValueError, TypeError) as error:       # a released memoryview
            raise ValueError(f"{name} cannot be read as bytes ({error})") from None
    else:
        if isinstance(data, (str, int)):        # bytes(5) would be five zero bytes
            raise ValueError(f"{name} must be bytes or a sequence of integers in 0..255, "
                             f"not {type(data).__name__}")
        try:
            items = iter(data)
        except TypeError:
            raise ValueError(f"{name} must be bytes or a sequence of integers in 0..255, "
                             f"not {type(data).__name__}") from None
        item = item or f"{name} byte"
        out = bytearray()
        for value in items:
            if limit is not None and len(out) == limit:
                raise ValueError(f"{name} exceeds the maximum of {limit} bytes")
            out.append(_check_byte(item, value))
        data = bytes(out)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{name} of {len(data)} bytes exceeds the maximum of {limit}")
    return data


def crc16(data, crc=CRC16_INIT):
    """CRC-16/CCITT-FALSE of ``data``; pass a previous result as ``crc`` to continue it
    (the standard library's ``binascii.crc_hqx``: this polynomial, MSB first, no final XOR)."""
    crc = _check_int("CRC", crc, 0, 0xFFFF)
    return binascii.crc_hqx(_to_bytes("Data", data), crc)


def encode_frame(command, payload=b""):
    """The bytes of one frame: SYNC, command, length, payload, CRC."""
    command = _check_byte("Command", command)
    payload = _to_bytes("Payload", payload, MAX_PAYLOAD)
    body = bytes([command]) + struct.pack("<H", len(payload)) + payload
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


@dataclasses.dataclass(frozen=True)
class Frame:
    """A received frame whose CRC matched."""

    command: int
    payload: bytes = b""

    def __post_init__(self):
        _check_byte("Command", self.command)
        object.__setattr__(self, "payload", _to_bytes("Payload", self.payload, MAX_PAYLOAD))

    def __str__(self):
        try:
            name = Command(self.command).name
        except ValueError:
            name = f"0x{self.command:02x}"
        return f"{name}({self.payload.hex()})"


@dataclasses.dataclass(frozen=True)
class FrameError:
    """A frame that was dropped; ``detail`` says why (not compared)."""

    code: ErrorCode
    detail: str = dataclasses.field(default="", compare=False)


class FrameDecoder:
    """Streaming frame decoder: feed bytes, get :class:`Frame` and :class:`FrameError` events.

    Parameters
    ----------
    max_payload : int
        Longer frames are rejected as ``BAD_LENGTH`` as soon as their length field arrives.
    timeout : float or None
        Inter-byte timeout in seconds (finite, above 0), applied when :meth:`feed` is given
        ``now`` (a finite time in seconds). Without it, the caller reports a timeout itself by
        calling :meth:`expire` (e.g. when a serial read times out).
    """

    _HUNT, _COMMAND, _LENGTH_LO, _LENGTH_HI, _PAYLOAD, _CRC_LO, _CRC_HI = range(7)

    def __init__(self, *, max_payload=MAX_PAYLOAD, timeout=None):
        _check_int("Maximum payload", max_payload, 0, MAX_PAYLOAD)
        if timeout is not None and (isinstance(timeout, bool) or
                                    not isinstance(timeout, (int, float)) or
                                    not math.isfinite(timeout) or timeout <= 0):
            # inf would never expire a frame, and nan compares false with everything
            raise ValueError(f"Timeout must be a finite number of seconds above 0 or None, "
                             f"not {_show(timeout)}")
        self._max_payload = max_payload
        self._timeout = timeout
        self._last_time = None
        self.discarded = 0  # bytes skipped while hunting for SYNC
        self._reset()

    @property
    def max_payload(self):
        return self._max_payload

    @property
    def in_frame(self):
        """True between a SYNC byte and the end of its frame."""
        return self._state != self._HUNT

    def _reset(self):
        self._state = self._HUNT
        self._command = 0
        self._length = 0
        self._payload = bytearray()
        self._crc = CRC16_INIT
        self._received_crc = 0

    def expire(self):
        """Report an inter-byte timeout: drop a partial frame (``TIMEOUT``) and hunt again."""
        if not self.in_frame:
            return []
        got = len(self._payload)
        self._reset()
        return [FrameError(ErrorCode.TIMEOUT, f"frame truncated after {got} payload bytes")]

    def feed(self, data, *, now=None):
        """Consume ``data``; return the frames and errors it completes, in order. ``now`` is the
        time the bytes arrived (finite seconds), for the decoder's own timeout."""
        data = _to_bytes("Data", data)
        if now is not None:
            _check_time("Now", now)     # a NaN would make every later gap look short
        events = []
        if now is not None and self._timeout is not None:
            if self._last_time is not None and now - self._last_time > self._timeout:
                events += self.expire()
        if now is not None and data:
            self._last_time = now
        for byte in data:
            event = self._feed_byte(byte)
            if event is not None:
                events.append(event)
        return events

    def _feed_byte(self, byte):
        state = self._state
        if state == self._HUNT:
            if byte == SYNC:
                self._reset()
                self._state = self._COMMAND
            else:
                self.discarded += 1
            return None
        if state in (self._CRC_LO, self._CRC_HI):
            if state == self._CRC_LO:
                self._received_crc = byte
                self._state = self._CRC_HI
                return None
            received = self._received_crc | (byte << 8)
            expected = self._crc
            frame = Frame(self._command, bytes(self._payload))
            self._reset()
            if received != expected:
                return FrameError(ErrorCode.BAD_CRC,
                                  f"CRC 0x{received:04x} received, 0x{expected:04x} computed")
            return frame
        self._crc = crc16(bytes([byte]), self._crc)
        if state == self._COMMAND:
            self._command = byte
            self._state = self._LENGTH_LO
        elif state == self._LENGTH_LO:
            self._length = byte
            self._state = self._LENGTH_HI
        elif state == self._LENGTH_HI:
            self._length |= byte << 8
            if self._length > self._max_payload:
                length = self._length
                self._reset()
                return FrameError(ErrorCode.BAD_LENGTH,
                                  f"length {length} exceeds the maximum of {self._max_payload}")
            self._state = self._PAYLOAD if self._length else self._CRC_LO
        else:  # payload
            self._payload.append(byte)
            if len(self._payload) == self._length:
                self._state = self._CRC_LO
        return None


# --------------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------------

def pack_write_mem(mem_id, address, data):
    """``WRITE_MEM`` payload: memory id (u8), word address (u32), the data bytes."""
    mem_id = _check_byte("Memory id", mem_id)
    address = _check_int("Address", address, 0, 0xFFFF_FFFF, "0..2**32-1")
    data = _to_bytes("Data", data, MAX_PAYLOAD - 5)     # more: split the write
    return struct.pack("<BI", mem_id, address) + data


def unpack_write_mem(payload):
    """``(mem_id, address, data)`` from a ``WRITE_MEM`` payload."""
    payload = _to_bytes("Payload", payload, MAX_PAYLOAD)
    if len(payload) < 5:
        raise ValueError(f"WRITE_MEM payload needs at least 5 bytes, got {len(payload)}")
    mem_id, address = struct.unpack_from("<BI", payload)
    return mem_id, address, bytes(payload[5:])


def pack_run(pixels):
    """``RUN`` payload: one unsigned byte per input pixel."""
    return _to_bytes("Pixels", pixels, MAX_PAYLOAD, item="Pixel")


def unpack_run(payload):
    """The pixel list of a ``RUN`` payload."""
    return list(_to_bytes("Payload", payload, MAX_PAYLOAD))


@dataclasses.dataclass(frozen=True)
class Result:
    """What ``READ_RESULT`` returns: the output logits, the predicted class, the cycle count."""

    logits: tuple
    predicted: int
    cycles: int


def pack_result(result):
    """``OK`` payload answering ``READ_RESULT``: class u8, cycles u32, count u8, logits i32."""
    try:
        logits, predicted, cycles = result.logits, result.predicted, result.cycles
    except AttributeError:
        raise ValueError(f"Result must have logits, predicted and cycles, not "
                         f"{type(result).__name__}") from None
    predicted = _check_byte("Predicted class", predicted)
    cycles = _check_int("Cycle count", cycles, 0, 0xFFFF_FFFF, "0..2**32-1")
    if isinstance(logits, (str, bytes)) or not hasattr(logits, "__iter__"):
        raise ValueError(f"Logits must be a sequence of integers, not {type(logits).__name__}")
    checked = []
    for logit in logits:
        if len(checked) == 0xFF:
            raise ValueError("At most 255 logits fit a result")
        checked.append(_check_int("Logit", logit, -2**31, 2**31 - 1, "-2**31..2**31-1"))
    logits = tuple(checked)
    return (struct.pack("<BIB", predicted, cycles, len(logits)) +
            struct.pack(f"<{len(logits)}i", *logits))


def unpack_result(payload):
    """The :class:`Result` in a ``READ_RESULT`` reply payload."""
    payload = _to_bytes("Payload", payload, MAX_PAYLOAD)
    if len(payload) < 6:
        raise ValueError(f"Result payload needs at least 6 bytes, got {len(payload)}")
    predicted, cycles, count = struct.unpack_from("<BIB", payload)
    if len(payload) != 6 + 4 * count:
        raise ValueError(f"Result payload announces {count} logits but has {len(payload)} bytes")
    logits = struct.unpack_from(f"<{count}i", payload, 6)
    return Result(logits=tuple(logits), predicted=predicted, cycles=cycles)


def pack_error(code):
    """``ERROR`` payload: the one-byte :class:`ErrorCode`."""
    codes = ", ".join(str(int(c)) for c in ErrorCode)
    code = _check_int("Error code", code, 0, 0xFF, f"{{{codes}}}")
    try:
        return bytes([ErrorCode(code)])
    except ValueError:
        raise ValueError(f"Error code must be an integer in {{{codes}}}, "
                         f"not {_show(code)}") from None


def unpack_error(payload):
    """The :class:`ErrorCode` of an ``ERROR`` payload (unknown codes stay plain ints)."""
    payload = _to_bytes("Payload", payload, MAX_PAYLOAD)
    if len(payload) != 1:
        raise ValueError(f"ERROR payload must be 1 byte, got {len(payload)}")
    try:
        return ErrorCode(payload[0])
    except ValueError:
        return payload[0]
