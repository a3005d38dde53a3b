"""8N1 UART transmitter and receiver with byte streams.

One start bit (0), eight data bits LSB first, one stop bit (1); the line idles high. Both blocks
count in clock cycles per bit (``divisor = clk_hz / baud``); :func:`uart_divisor` derives it from
frequencies and rejects rates the clock cannot hit within tolerance.

The receiver samples every bit in its middle: it waits ``divisor // 2`` cycles after the falling
edge of the start bit, checks the start bit is still low (a shorter glitch is ignored), then
samples each following bit ``divisor`` cycles apart. A stop bit read as 0 is a framing error: the
byte is dropped, ``framing_error`` pulses for one cycle and the receiver waits for the line to
return high (so a held-low line, a "break", reports one error, not a stream of them).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["MIN_DIVISOR", "UARTRx", "UARTTx", "uart_divisor"]

#: The smallest supported cycles-per-bit: the receiver needs a middle to sample in.
MIN_DIVISOR = 4

#: The largest rate error (relative) :func:`uart_divisor` accepts; 8N1 tolerates about 4-5 %
#: between both ends, so each end keeps to 2 %.
MAX_BAUD_ERROR = 0.02


def _check_divisor(divisor):
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ValueError(f"UART divisor must be an integer >= {MIN_DIVISOR} (clock cycles per bit),"
                         f" not {divisor!r}")


def uart_divisor(clk_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clk_hz``, rounded to the nearest integer.

    Raises :class:`ValueError` when either rate is not positive, when the divisor would be
    below :data:`MIN_DIVISOR`, or when the rounded divisor misses ``baud`` by more than
    :data:`MAX_BAUD_ERROR`.
    """
    for name, value in (("Clock frequency", clk_hz), ("Baud rate", baud)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, not {value!r}")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"Baud rate {baud} is too fast for a {clk_hz} Hz clock: "
                         f"{clk_hz / baud:.2f} cycles per bit, at least {MIN_DIVISOR} are needed")
    error = abs(clk_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"Baud rate {baud} is off by {error:.1%} at {clk_hz} Hz "
                         f"(divisor {divisor}); at most {MAX_BAUD_ERROR:.0%} is tolerated")
    return divisor


class UARTTx(wiring.Component):
    """8N1 UART transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz / baud``), at least :data:`MIN_DIVISOR`.

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes to send. A byte is accepted only while the transmitter is idle; it then occupies the
        line for ``10 * divisor`` cycles.
    tx : ``Out(1)``
        Serial output, idle high (registered).
    busy : ``Out(1)``
        A frame is being shifted out.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
            "busy": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()

        # Bits still to send, LSB first: start (0), data[0..7], stop (1).
        shreg = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))
        timer = Signal(range(self._divisor))

        m.d.comb += [
            self.busy.eq(bits_left != 0),
            self.i.ready.eq(bits_left == 0),
        ]

        with m.If(bits_left == 0):
            with m.If(self.i.valid):
                m.d.sync += [
                    shreg.eq((1 << 9) | (self.i.payload << 1)),
                    bits_left.eq(10),
                    timer.eq(0),
                ]
        with m.Else():
            with m.If(timer == 0):
                # Start of a bit period: drive the next bit for `divisor` cycles.
                m.d.sync += [
                    self.tx.eq(shreg[0]),
                    shreg.eq(shreg >> 1),
                    timer.eq(self._divisor - 1),
                ]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 1):
                    m.d.sync += bits_left.eq(bits_left - 1)

        with m.If(bits_left == 0):
            m.d.sync += self.tx.eq(1)
        return m


class UARTRx(wiring.Component):
    """8N1 UART receiver sampling mid-bit.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz / baud``), at least :data:`MIN_DIVISOR`.

    Members
    -------
    rx : ``In(1)``
        Serial input, idle high. It passes a two-flop synchronizer, so it may be asynchronous.
    o : ``Out(stream.Signature(8))``
        Received bytes. The line cannot be paused: a byte still unaccepted when the next one
        completes is overwritten and ``overrun`` pulses.
    framing_error : ``Out(1)``
        Pulses for one cycle when a stop bit reads 0; that byte is dropped.
    overrun : ``Out(1)``
        Pulses for one cycle when a received byte replaced an unaccepted one.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "framing_error": Out(1),
            "overrun": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()

        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self._divisor))
        data = Signal(8)
        bit_index = Signal(range(8))

        m.d.sync += [
            self.framing_error.eq(0),
            self.overrun.eq(0),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # Falling edge of a start bit: go to its middle.
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [
                        timer.eq(self._divisor - 1),
                        bit_index.eq(0),
                    ]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        data.eq((rx << 7) | (data >> 1)),
                        bit_index.eq(bit_index + 1),
                        timer.eq(self._divisor - 1),
                    ]
                    with m.If(bit_index == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.d.sync += [
                        self.o.payload.eq(data),
                        self.o.valid.eq(1),
                        self.overrun.eq(self.o.valid & ~self.o.ready),
                    ]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += self.framing_error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):
                # Wait for the line to go idle before hunting for the next start bit.
                with m.If(rx):
                    m.next = "IDLE"
        return m
