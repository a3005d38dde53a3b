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

        # Inter-byte timeout: counts cycles with no byte offered while a frame is open. A byte
        # held back by back-pressure on `o` does not count as silence.
        in_frame = Signal()
        timed_out = Signal()
        m.d.comb += timed_out.eq(in_frame & ~self.i.valid &
                                 (idle_cycles == self._timeout_cycles - 1))
        with m.If(~in_frame | self.i.valid | timed_out):
            m.d.sync += idle_cycles.eq(0)
        with m.Else():
            m.d.sync += idle_cycles.eq(idle_cycles + 1)

        def leave_on_timeout():
            m.d.comb += in_frame.eq(1)
            with m.If(timed_out):
                m.d.sync += [
                    verdict.kind.eq(FrameEventKind.ERROR),
                    verdict.data.eq(ErrorCode.TIMEOUT),
                ]
                m.next = "VERDICT"

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid & (byte == SYNC)):
                    m.d.comb += check.start.eq(1)
                    m.next = "COMMAND"

            with m.State("COMMAND"):
                leave_on_timeout()
                m.d.comb += [
                    self.o.valid.eq(self.i.valid),
                    self.o.p.kind.eq(FrameEventKind.COMMAND),
                    self.o.p.data.eq(byte),
                    self.i.ready.eq(self.o.ready),
                ]
                with m.If(accepted):
                    m.d.comb += check.valid.eq(1)
                    m.next = "LENGTH_LO"

            with m.State("LENGTH_LO"):
                leave_on_timeout()
                m.d.comb += self.i.ready.eq(1)
                with m.If(accepted):
                    m.d.comb += check.valid.eq(1)
                    m.d.sync += length[:8].eq(byte)
                    m.next = "LENGTH_HI"

            with m.State("LENGTH_HI"):
                leave_on_timeout()
                m.d.comb += self.i.ready.eq(1)
                full_length = Cat(length[:8], byte)
                with m.If(accepted):
                    m.d.comb += check.valid.eq(1)
                    m.d.sync += [
                        length.eq(full_length),
                        remaining.eq(full_length),
                    ]
                    with m.If(full_length > self._max_payload):
                        m.d.sync += [
                            verdict.kind.eq(FrameEventKind.ERROR),
                            verdict.data.eq(ErrorCode.BAD_LENGTH),
                        ]
                        m.next = "VERDICT"
                    with m.Elif(full_length == 0):
                        m.next = "CRC_LO"
                    with m.Else():
                        m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                leave_on_timeout()
                m.d.comb += [
                    self.o.valid.eq(self.i.valid),
                    self.o.p.kind.eq(FrameEventKind.PAYLOAD),
                    self.o.p.data.eq(byte),
                    self.i.ready.eq(self.o.ready),
                ]
                with m.If(accepted):
                    m.d.comb += check.valid.eq(1)
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "CRC_LO"

            with m.State("CRC_LO"):
                leave_on_timeout()
                m.d.comb += self.i.ready.eq(1)
                with m.If(accepted):
                    m.d.sync += received_crc_lo.eq(byte)
                    m.next = "CRC_HI"

            with m.State("CRC_HI"):
                leave_on_timeout()
                m.d.comb += self.i.ready.eq(1)
                with m.If(accepted):
                    with m.If(Cat(received_crc_lo, byte) == check.crc):
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

            with m.State("VERDICT"):
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.payload.eq(verdict),
                ]
                with m.If(self.o.ready):
                    m.next = "HUNT"

        return m


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
