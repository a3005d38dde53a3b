"""Gateware side of the host link: frame receiver and frame sender.

The frame format, the constants and the receive rules are defined once, in
:mod:`firmware.protocol`; this module imports them. ``FrameReceiver`` follows the same rules as
:class:`firmware.protocol.FrameDecoder` (hunt for SYNC, reject over-long lengths at once, check
the CRC at the end, time out between bytes, resync after every error), so both report the same
events for the same bytes.

The receiver does not buffer frames: it forwards the command and payload bytes as they arrive and
ends every frame with a verdict event, ``END`` (CRC good) or ``ERROR`` (with an
:class:`~firmware.protocol.ErrorCode`). A consumer must not commit side effects of a frame (start a
run, make written words visible) before it sees ``END``.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import crc, data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from firmware.protocol import MAX_PAYLOAD, SYNC, ErrorCode

__all__ = ["FRAME_EVENT", "REPLY_HEADER", "FrameEventKind", "FrameReceiver", "FrameSender",
           "frame_crc"]


class FrameEventKind(enum.Enum, shape=2):
    """What a :data:`FRAME_EVENT` carries in its ``data`` byte."""

    COMMAND = 0  #: the command byte; opens a frame
    PAYLOAD = 1  #: one payload byte
    END = 2      #: the frame's CRC matched (``data`` is 0)
    ERROR = 3    #: the frame was dropped; ``data`` is the ErrorCode


#: Payload of ``FrameReceiver.o``.
FRAME_EVENT = data.StructLayout({"kind": FrameEventKind, "data": 8})

#: Payload of ``FrameSender.header``: the reply command and its payload length in bytes.
REPLY_HEADER = data.StructLayout({"command": 8, "length": 16})


def frame_crc() -> crc.Processor:
    """The frames' CRC-16/CCITT-FALSE (``firmware.protocol.crc16``), one byte per cycle:
    ``start`` re-initialises it, ``valid`` adds ``data``, ``crc`` is the value so far."""
    return crc.catalog.CRC16_CCITT_FALSE(data_width=8).create()


def _check_payload_limit(max_payload):
    if isinstance(max_payload, bool) or not isinstance(max_payload, int) or \
            not 0 <= max_payload <= MAX_PAYLOAD:
        raise ValueError(f"Maximum payload must be an integer in 0..{MAX_PAYLOAD}, "
                         f"not {max_payload!r}")


class FrameReceiver(wiring.Component):
    """Parses frames from a byte stream (e.g. ``UARTRx.o``) and checks their CRC.

    Parameters
    ----------
    timeout_cycles : int
        Inter-byte timeout in clock cycles. When a frame has started and no byte arrives for this
        long, the frame is dropped with ``ERROR TIMEOUT`` and the receiver hunts for SYNC again.
        Choose a few byte times (a byte takes ``10 * divisor`` cycles on the UART).
    max_payload : int
        Frames announcing a longer payload are dropped with ``ERROR BAD_LENGTH`` as soon as the
        length field has arrived.

    Members
    -------
    i : ``In(stream.Signature(8))``
        Received bytes.
    o : ``Out(stream.Signature(FRAME_EVENT))``
        Per frame: ``COMMAND``, zero or more ``PAYLOAD`` and a final ``END``; or, when the frame is
        dropped, ``ERROR`` (possibly after some of its bytes). Back-pressure on ``o`` stalls ``i``.
    """

    def __init__(self, *, timeout_cycles, max_payload=MAX_PAYLOAD):
        if isinstance(timeout_cycles, bool) or not isinstance(timeout_cycles, int) or \
                timeout_cycles < 1:
            raise ValueError(f"Timeout must be a positive number of cycles, not {timeout_cycles!r}")
        _check_payload_limit(max_payload)
        self._timeout_cycles = timeout_cycles
        self._max_payload = max_payload
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(FRAME_EVENT)),
        })

    @property
    def timeout_cycles(self):
        return self._timeout_cycles

    @property
    def max_payload(self):
        return self._max_payload

    def elaborate(self, platform):
        m = Module()

        m.submodules.crc = check = frame_crc()
        length = Signal(16)
        remaining = Signal(16)
        received_crc_lo = Signal(8)
        verdict = Signal(FRAME_EVENT)  # the END or ERROR event waiting in state VERDICT
        idle_cycles = Signal(range(self._timeout_cycles + 1))

        byte = self.i.payload
        accepted = self.i.valid & self.i.ready
        m.d.comb += check.data.eq(byte)
        in_frame, timed_out = self._inter_byte_timeout(m, idle_cycles)
        frame = SimpleNamespace(check=check, length=length, remaining=remaining,
                                received_crc_lo=received_crc_lo, verdict=verdict, byte=byte,
                                accepted=accepted, in_frame=in_frame, timed_out=timed_out)

        with m.FSM():
            self._hunt_and_command(m, frame)
            self._length(m, frame)
            self._payload(m, frame)
            self._crc(m, frame)
            self._verdict(m, frame)

        return m

    def _inter_byte_timeout(self, m, idle_cycles):
        """Inter-byte timeout: counts cycles with no byte offered while a frame is open (a state
        drives ``in_frame``); ``timed_out`` pulses when the count runs out. A byte held back by
        back-pressure on `o` does not count as silence."""
        in_frame = Signal()
        timed_out = Signal()
        m.d.comb += timed_out.eq(in_frame & ~self.i.valid &
                                 (idle_cycles == self._timeout_cycles - 1))
        with m.If(~in_frame | self.i.valid | timed_out):
            m.d.sync += idle_cycles.eq(0)
        with m.Else():
            m.d.sync += idle_cycles.eq(idle_cycles + 1)
        return in_frame, timed_out

    @staticmethod
    def _drop(m, frame, code):
        """End the frame with ``ERROR code``: the verdict waits in state VERDICT."""
        m.d.sync += [
            frame.verdict.kind.eq(FrameEventKind.ERROR),
            frame.verdict.data.eq(code),
        ]
        m.next = "VERDICT"

    def _leave_on_timeout(self, m, frame):
        """In a state inside a frame: count silence, and drop the frame with TIMEOUT."""
        m.d.comb += frame.in_frame.eq(1)
        with m.If(frame.timed_out):
            self._drop(m, frame, ErrorCode.TIMEOUT)

    def _hunt_and_command(self, m, frame):
        """HUNT: skip bytes until SYNC; COMMAND: forward the command byte, which opens a frame."""
        byte, check = frame.byte, frame.check
        with m.State("HUNT"):
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid & (byte == SYNC)):
                m.d.comb += check.start.eq(1)
                m.next = "COMMAND"

        with m.State("COMMAND"):
            self._leave_on_timeout(m, frame)
            m.d.comb += [
                self.o.valid.eq(self.i.valid),
                self.o.p.kind.eq(FrameEventKind.COMMAND),
                self.o.p.data.eq(byte),
                self.i.ready.eq(self.o.ready),
            ]
            with m.If(frame.accepted):
                m.d.comb += check.valid.eq(1)
                m.next = "LENGTH_LO"

    def _length(self, m, frame):
        """LENGTH_LO, LENGTH_HI: the payload length; one above ``max_payload`` drops the frame
        with BAD_LENGTH at once, an empty payload goes straight to the CRC."""
        byte, check, length = frame.byte, frame.check, frame.length
        with m.State("LENGTH_LO"):
            self._leave_on_timeout(m, frame)
            m.d.comb += self.i.ready.eq(1)
            with m.If(frame.accepted):
                m.d.comb += check.valid.eq(1)
                m.d.sync += length[:8].eq(byte)
                m.next = "LENGTH_HI"

        with m.State("LENGTH_HI"):
            self._leave_on_timeout(m, frame)
            m.d.comb += self.i.ready.eq(1)
            full_length = Cat(length[:8], byte)
            with m.If(frame.accepted):
                m.d.comb += check.valid.eq(1)
                m.d.sync += [
                    length.eq(full_length),
                    frame.remaining.eq(full_length),
                ]
                with m.If(full_length > self._max_payload):
                    self._drop(m, frame, ErrorCode.BAD_LENGTH)
                with m.Elif(full_length == 0):
                    m.next = "CRC_LO"
                with m.Else():
                    m.next = "PAYLOAD"

    def _payload(self, m, frame):
        """PAYLOAD: forward each payload byte, counting down ``remaining``."""
        remaining = frame.remaining
        with m.State("PAYLOAD"):
            self._leave_on_timeout(m, frame)
            m.d.comb += [
                self.o.valid.eq(self.i.valid),
                self.o.p.kind.eq(FrameEventKind.PAYLOAD),
                self.o.p.data.eq(frame.byte),
                self.i.ready.eq(self.o.ready),
            ]
            with m.If(frame.accepted):
                m.d.comb += frame.check.valid.eq(1)
                m.d.sync += remaining.eq(remaining - 1)
                with m.If(remaining == 1):
                    m.next = "CRC_LO"

    def _crc(self, m, frame):
        """CRC_LO, CRC_HI: the received CRC against the computed one, END or BAD_CRC."""
        byte, verdict = frame.byte, frame.verdict
        with m.State("CRC_LO"):
            self._leave_on_timeout(m, frame)
            m.d.comb += self.i.ready.eq(1)
            with m.If(frame.accepted):
                m.d.sync += frame.received_crc_lo.eq(byte)
                m.next = "CRC_HI"

        with m.State("CRC_HI"):
            self._leave_on_timeout(m, frame)
            m.d.comb += self.i.ready.eq(1)
            with m.If(frame.accepted):
                with m.If(Cat(frame.received_crc_lo, byte) == frame.check.crc):
                    m.d.sync += [
                        verdict.kind.eq(FrameEventKind.END),
                        verdict.data.eq(0),
                    ]
                with m.Else():
                    m.d.sync += [
                        verdict.kind.eq(FrameEventKind.ERROR),
                        verdict.data.eq(ErrorCode.BAD_CRC),
                    ]
                m.next = "VERDICT"

    def _verdict(self, m, frame):
        """VERDICT: the END or ERROR event, then hunt for SYNC again."""
        with m.State("VERDICT"):
            m.d.comb += [
                self.o.valid.eq(1),
                self.o.payload.eq(frame.verdict),
            ]
            with m.If(self.o.ready):
                m.next = "HUNT"


class FrameSender(wiring.Component):
    """Builds reply frames (SYNC, command, length, payload, CRC) onto a byte stream.

    Members
    -------
    header : ``In(stream.Signature(REPLY_HEADER))``
        One per frame: the command and the payload length. Accepted when the sender is idle.
    payload : ``In(stream.Signature(8))``
        Exactly ``length`` payload bytes follow each header.
    o : ``Out(stream.Signature(8))``
        Frame bytes, e.g. to ``UARTTx.i``.
    busy : ``Out(1)``
        A frame is being sent.
    """

    def __init__(self):
        super().__init__({
            "header": In(stream.Signature(REPLY_HEADER)),
            "payload": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()

        m.submodules.crc = check = frame_crc()
        command = Signal(8)
        length = Signal(16)
        remaining = Signal(16)

        sent = self.o.valid & self.o.ready
        m.d.comb += check.data.eq(self.o.payload)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.header.ready.eq(1)
                with m.If(self.header.valid):
                    m.d.sync += [
                        command.eq(self.header.p.command),
                        length.eq(self.header.p.length),
                        remaining.eq(self.header.p.length),
                    ]
                    m.d.comb += check.start.eq(1)
                    m.next = "SYNC"

            with m.State("SYNC"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(SYNC)]
                with m.If(sent):
                    m.next = "COMMAND"

            with m.State("COMMAND"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(command)]
                with m.If(sent):
                    m.d.comb += check.valid.eq(1)
                    m.next = "LENGTH_LO"

            with m.State("LENGTH_LO"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(length[:8])]
                with m.If(sent):
                    m.d.comb += check.valid.eq(1)
                    m.next = "LENGTH_HI"

            with m.State("LENGTH_HI"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(length[8:])]
                with m.If(sent):
                    m.d.comb += check.valid.eq(1)
                    with m.If(length == 0):
                        m.next = "CRC_LO"
                    with m.Else():
                        m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                m.d.comb += [
                    self.o.valid.eq(self.payload.valid),
                    self.o.payload.eq(self.payload.payload),
                    self.payload.ready.eq(self.o.ready),
                ]
                with m.If(sent):
                    m.d.comb += check.valid.eq(1)
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "CRC_LO"

            with m.State("CRC_LO"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(check.crc[:8])]
                with m.If(sent):
                    m.next = "CRC_HI"

            with m.State("CRC_HI"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(check.crc[8:])]
                with m.If(sent):
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
