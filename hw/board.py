"""The board top: the accelerator behind the UART host link.

    UART rx -> UARTRx -> FrameReceiver -> command handler -> Accelerator (pixels / logits / result)
    UART tx <- UARTTx <- FrameSender   <-/

Commands (``firmware/protocol.py``; every reply is one frame, ``OK`` or ``ERROR <code>``):

``PING``        empty payload -> ``OK [PROTOCOL_VERSION]``.
``RUN``         exactly ``C*H*W`` (``T*C*H*W`` for event input) pixel bytes, order (t,) c, y, x,
                each ``<= input_max`` -> ``OK []`` once the pixels are handed to the accelerator.
                The payload is buffered and checked first: nothing starts before the frame's CRC
                has matched. Wrong length or a pixel above ``input_max`` -> ``BAD_ARGUMENT``;
                a RUN while a run is in progress -> ``BUSY``. A RUN after a finished run starts
                a new one (the old result is dropped).
``READ_RESULT`` empty -> ``OK`` + :func:`firmware.protocol.pack_result` (class u8, cycles u32,
                count u8, logits i32 LE sign-extended). Sent while a run is in progress, the
                reply waits for the run to end (a run takes the cycles the accelerator needs,
                ~0.11 M for the default l1p model; a watchdog answers ``BUSY`` after
                ``result_wait``, 1 s by default). Before any run -> ``BUSY``. The result stays
                readable until the next RUN.
``WRITE_MEM``   With ``loadable`` (the iCE40 build: its engine entries and neuron constants live
                in SPRAM, which a bitstream cannot initialise): memory id (u8), word address
                (u32), then whole words of that table (``Accelerator.memory_map``), each
                ``ceil(width / 8)`` bytes little-endian -> ``OK []`` once written. Like RUN,
                the payload is buffered and nothing is written before the CRC has matched. An
                unknown id, no words, a partial word or words past the table's end ->
                ``BAD_ARGUMENT``; during a run -> ``BUSY``. The host loads every table after
                configuration (``firmware.driver.Accelerator.load``); a run before that computes
                with empty tables. Without ``loadable`` the weights boot from block-RAM initial
                values and the reply is ``UNSUPPORTED``.
other commands  -> ``UNKNOWN_COMMAND``; a non-empty PING / READ_RESULT -> ``BAD_ARGUMENT``.

A frame the receiver drops gets an ``ERROR`` reply with the receiver's code (``BAD_CRC``,
``TIMEOUT`` for a frame truncated for longer than ``frame_timeout``, ``BAD_LENGTH`` for a length
above the RUN payload size) and the receiver hunts for SYNC again, so the link always recovers.
While the board is sending a reply (or a READ_RESULT waits for the run) it does not take receive
events; a host that talks over a reply loses bytes, which end as one of those errors. The board
never waits on the host: every state is left after a bounded number of cycles.

Clocking. With ``platform=None`` (simulation) the design has ports ``clk``, ``rst``, ``rx``,
``tx`` and runs in ``sync`` at the nominal ``clk_hz``. On a board it requests ``uart 0`` and the
clock: with ``pll`` (per FPGA family in :mod:`hw.clocking`) ``sync`` comes from an
``SB_PLL40_PAD`` (iCE40, fed by the oscillator pad) or an ``EHXPLLL`` (ECP5), held in reset until
the PLL locks plus a power-on delay (iCE40 block RAM reads zero for ~3 us after configuration);
without, it is the board oscillator (12 MHz iCEBreaker, 25 MHz ULX3S).

The bitstream (``stforge bitstream``, ``make bitstream``) is built by :mod:`hw.bitstream`.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Module, Mux, Signal
from amaranth.lib import enum, io, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from firmware.protocol import PROTOCOL_VERSION, Command, ErrorCode
from hw.accelerator import Accelerator
from hw.clocking import FAMILY_CLOCKS, PllConfig, board_clock
from hw.link import FrameEventKind, FrameReceiver, FrameSender
from hw.targets import TARGETS, get_target
from hw.uart import UARTRx, UARTTx, uart_divisor

__all__ = ["BOARD_TOP_NAME", "DEFAULT_BAUD", "DEFAULT_CLOCK_MHZ", "BoardTop"]

#: Verilog module name of the board top in simulation.
BOARD_TOP_NAME = "stforge_board"
#: The board top's PLL clock per target unless asked otherwise (hw.targets).
DEFAULT_CLOCK_MHZ = {name: t.default_clock_mhz for name, t in TARGETS.items()}
DEFAULT_BAUD = 115200
#: Inter-byte timeout of a frame (seconds): USB-serial adapters pause between USB packets.
DEFAULT_FRAME_TIMEOUT = 0.02
#: The longest READ_RESULT waits for a run in progress (seconds) before answering BUSY.
DEFAULT_RESULT_WAIT = 1.0

# --------------------------------------------------------------------------------------------
# The board top
# --------------------------------------------------------------------------------------------

class _Reply(enum.Enum, shape=2):
    EMPTY = 0   #: no payload
    BYTE = 1    #: one byte (ERROR code, PING version)
    RESULT = 2  #: the READ_RESULT payload


class BoardTop(wiring.Component):
    """The accelerator of ``artifact`` behind the UART link (see the module docstring).

    Parameters
    ----------
    artifact : model.ir.Graph
        A loaded integer model (:func:`model.ir.load_artifact`).
    clk_hz : float
        Frequency of the ``sync`` domain (the PLL output with ``pll``): sets the UART divisor
        (``round(clk_hz / baud)``, at least 4 and within 2 % of ``baud``) and the frame timeout.
    baud : int
        UART rate.
    pll : PllConfig or None
        Generate ``sync`` with this PLL (``hw.clocking.ice40_pll`` / ``ecp5_pll``, ``f_out`` must
        equal ``clk_hz``); used only when elaborated for a platform.
    frame_timeout : float
        Inter-byte timeout of the frame receiver, seconds (at least 20 byte times are used).
    result_wait : float
        Watchdog of a READ_RESULT sent during a run: after this many seconds without a result
        the board answers ``ERROR BUSY`` (a run of the default model takes ~10 ms at 12 MHz).
    loadable : bool
        Build ``Accelerator(loadable=True)`` and implement ``WRITE_MEM`` (see the module
        docstring); :meth:`for_platform` sets it for iCE40 targets.
    lanes : int
        The accelerator's lanes (``Accelerator(lanes=...)``; a loadable one takes one only).

    Members
    -------
    rx : ``In(1)``, tx : ``Out(1)``
        The UART lines when elaborated without a platform (idle high). On a board the design
        requests ``platform.request("uart", 0)`` instead and these stay unused.
    """

    def __init__(self, artifact, clk_hz, baud=DEFAULT_BAUD, *, pll: PllConfig | None = None,
                 frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
                 result_wait: float = DEFAULT_RESULT_WAIT, loadable: bool = False,
                 lanes: int = 1):
        self.divisor = uart_divisor(clk_hz, baud)
        if pll is not None and abs(pll.f_out - clk_hz) > 1e-6 * clk_hz:
            raise ValueError(f"PLL output {pll.f_out / 1e6:g} MHz differs from clk_hz "
                             f"{clk_hz / 1e6:g} MHz")
        if not frame_timeout > 0:
            raise ValueError(f"Frame timeout must be positive seconds, not {frame_timeout!r}")
        if not result_wait > 0:
            raise ValueError(f"Result wait must be positive seconds, not {result_wait!r}")
        self.artifact, self.clk_hz, self.baud, self.pll = artifact, clk_hz, baud, pll
        self.accelerator = Accelerator(artifact, loadable=loadable, lanes=lanes)
        acc = self.accelerator
        self.loadable = acc.loadable
        #: WRITE_MEM ids: (bytes per word, words) per table of the accelerator's memory map
        self.tables = [((t.width + 7) // 8, len(t.words)) for t in acc.memory_map()] \
            if self.loadable else []
        self.n_pixels = acc.in_c * acc.in_h * acc.in_w * (acc.T if acc.time_varying else 1)
        self.input_max = int(artifact.model.input_max)
        self.classes = acc.classes
        if acc.logit_bits > 32:
            raise ValueError(f"Logits of {acc.logit_bits} bits do not fit the 32-bit result")
        if self.input_max > 255 or self.classes > 255:
            raise ValueError("Pixels above 255 or more than 255 classes do not fit the protocol")
        self.timeout_cycles = max(int(frame_timeout * clk_hz), 20 * 10 * self.divisor)
        self.result_bytes = 6 + 4 * self.classes
        #: READ_RESULT waits at most this long for a run in progress (then ERROR BUSY)
        self.result_wait_cycles = max(2, int(result_wait * clk_hz))
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    @classmethod
    def for_platform(cls, artifact, target, clock_mhz=None, baud=DEFAULT_BAUD, *, pll=True,
                     frame_timeout=DEFAULT_FRAME_TIMEOUT, lanes=1):
        """The board top for a :data:`hw.targets.TARGETS` name, clocked by a PLL at ``clock_mhz``
        (default :data:`DEFAULT_CLOCK_MHZ`) or, with ``pll=False``, by the oscillator, with an
        accelerator of `lanes` lanes. On iCE40 it is ``loadable`` (one lane only): the block
        RAM is too small for the tables, SPRAM holds them."""
        spec = get_target(target)
        platform_cls = spec.platform_class()
        osc = platform_cls().default_clk_frequency
        loadable = spec.loadable
        if not pll:
            return cls(artifact, osc, baud, frame_timeout=frame_timeout, loadable=loadable,
                       lanes=lanes)
        mhz = spec.default_clock_mhz if clock_mhz is None else clock_mhz
        config = FAMILY_CLOCKS[spec.family].search(osc, mhz * 1e6)
        return cls(artifact, config.f_out, baud, pll=config, frame_timeout=frame_timeout,
                   loadable=loadable, lanes=lanes)

    # ---- elaboration -------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        rx_line, tx_line = self._serial_lines(m, platform)
        link = self._link(m, platform, rx_line, tx_line)
        feed = self._pixel_feeder(m)
        result = self._result_capture(m, feed)
        _CommandHandler(self, m, link, feed, result).emit()
        return m

    def _serial_lines(self, m, platform):
        """The board's clock and UART pads (or, without a platform, the rx/tx ports)."""
        if platform is not None:
            if self.pll is not None:
                board_clock(self.pll, self.clk_hz, platform).drive_sync(m, platform)
            elif abs(platform.default_clk_frequency - self.clk_hz) > 1e-6 * self.clk_hz:
                raise ValueError(f"Without a PLL the design runs at the board clock "
                                 f"{platform.default_clk_frequency / 1e6:g} MHz, not "
                                 f"{self.clk_hz / 1e6:g} MHz")
            # raw ports for every line of the resource (the ULX3S one has rts/dtr too)
            lines = {sub.name: "-" for sub in platform.lookup("uart", 0).ios}
            uart = platform.request("uart", 0, dir=lines)
            m.submodules.rx_buffer = rx_buffer = io.Buffer("i", uart.rx)
            m.submodules.tx_buffer = tx_buffer = io.Buffer("o", uart.tx)
            rx_line, tx_line = rx_buffer.i, tx_buffer.o
        else:
            rx_line, tx_line = self.rx, self.tx

        return rx_line, tx_line

    def _link(self, m, platform, rx_line, tx_line):
        """UART and framing: bytes in and out, frames checked and built (hw.link)."""
        n_pixels, acc = self.n_pixels, self.accelerator
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        m.submodules.receiver = receiver = FrameReceiver(timeout_cycles=self.timeout_cycles,
                                                         max_payload=n_pixels)
        m.submodules.sender = sender = FrameSender()
        m.submodules.accelerator = acc
        m.d.comb += [uart_rx.rx.eq(rx_line), tx_line.eq(uart_tx.tx)]
        if platform is not None:
            m.d.comb += self.tx.eq(uart_tx.tx)
        wiring.connect(m, uart_rx.o, receiver.i)
        wiring.connect(m, sender.o, uart_tx.i)

        return SimpleNamespace(receiver=receiver, sender=sender)

    def _pixel_feeder(self, m):
        """The RUN payload buffer and the feeder that streams it into the accelerator."""
        n_pixels, acc = self.n_pixels, self.accelerator
        m.submodules.pixel_buffer = pixel_buffer = Memory(shape=8, depth=n_pixels, init=[])
        buf_w = pixel_buffer.write_port()
        buf_r = pixel_buffer.read_port()
        start = Signal()          # pulse: a good RUN frame was accepted
        running = Signal()        # from `start` until the result has been captured
        has_result = Signal()
        feeding = Signal()
        feed_index = Signal(range(n_pixels))
        m.d.comb += acc.pixels.payload.eq(buf_r.data)
        with m.If(feeding):
            m.d.comb += buf_r.addr.eq(feed_index)
        with m.FSM(name="feeder"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [feed_index.eq(0), feeding.eq(1)]
                    m.next = "FETCH"
            with m.State("FETCH"):     # the buffer's read port has one cycle of latency
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += acc.pixels.valid.eq(1)
                with m.If(acc.pixels.ready):
                    with m.If(feed_index == n_pixels - 1):
                        m.d.sync += feeding.eq(0)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += feed_index.eq(feed_index + 1)
                        m.next = "FETCH"

        return SimpleNamespace(buf_w=buf_w, buf_r=buf_r, start=start, running=running,
                               has_result=has_result, feeding=feeding)

    def _result_capture(self, m, feed):
        """Logits (sign-extended on the way out), class and cycles of the last run."""
        classes, acc = self.classes, self.accelerator
        start, running, has_result = feed.start, feed.running, feed.has_result
        m.submodules.logit_store = logit_store = Memory(
            shape=acc.logits.payload.shape(), depth=classes, init=[])
        logit_w = logit_store.write_port()
        logit_r = logit_store.read_port()
        logit_index = Signal(range(classes + 1))
        result_cls = Signal(8)
        result_cycles = Signal(32)
        m.d.comb += [acc.logits.ready.eq(1), acc.result.ready.eq(1),
                     logit_w.addr.eq(logit_index), logit_w.data.eq(acc.logits.payload),
                     logit_w.en.eq(acc.logits.valid)]
        with m.If(acc.logits.valid):
            m.d.sync += logit_index.eq(logit_index + 1)
        with m.If(acc.result.valid):
            m.d.sync += [result_cls.eq(acc.result.payload.cls),
                         result_cycles.eq(acc.result.payload.cycles),
                         has_result.eq(1), running.eq(0), logit_index.eq(0)]
        with m.If(start):
            m.d.sync += [running.eq(1), has_result.eq(0), logit_index.eq(0)]

        return SimpleNamespace(logit_r=logit_r, result_cls=result_cls,
                               result_cycles=result_cycles)


# --------------------------------------------------------------------------------------------
# Command handling
# --------------------------------------------------------------------------------------------

class _CommandHandler:
    """PING, WRITE_MEM, RUN, READ_RESULT: parse, check, act, reply (docs/BOARD.md).

    The board top's command FSM (``handler``) and its registers, emitted into the board top's
    module by :meth:`emit` (a helper of :meth:`BoardTop.elaborate`, not a submodule, so the
    netlist keeps its shape): frame intake, dispatch per command (:meth:`_commands`), WRITE_MEM's
    write loop, and the reply."""

    def __init__(self, top: BoardTop, m, link, feed, result):
        self.top, self.m, self.acc = top, m, top.accelerator
        self.receiver, self.sender = link.receiver, link.sender
        self.feed, self.result = feed, result
        self.event = link.receiver.o.payload
        self.buf_r_index = Signal(range(top.n_pixels + 1))
        self.wm = None
        if top.loadable:
            self.wm = _WriteMem(top.tables, top.n_pixels)
            self.wm.add_checks(m)
        self.command = Signal(8)
        self.count = Signal(16)         # payload bytes of the current frame
        self.bad_pixel = Signal()       # a RUN byte above input_max
        self.reply_command = Signal(8)
        self.reply_length = Signal(16)
        self.reply_kind = Signal(_Reply)
        self.reply_byte = Signal(8)
        self.index = Signal(range(max(top.result_bytes, 2)))
        self.wait_cycles = Signal(range(top.result_wait_cycles))
        self.index_next = Signal.like(self.index)
        m.d.comb += self.index_next.eq(self.index)
        m.d.sync += self.index.eq(self.index_next)

    def emit(self):
        """The FSM, state by state, then the reply's payload bytes."""
        m = self.m
        with m.FSM(name="handler"):
            self._intake()
            self._dispatch()
            self._wait_result()
            if self.top.loadable:
                self._write_mem_loop()
            self._send_reply()
        self._reply_payload()

    def _reply(self, code=None, *, kind=_Reply.BYTE, byte=None):
        """Latch a reply and go send it. `code` set: ERROR(code)."""
        m = self.m
        if code is not None:
            m.d.sync += [self.reply_command.eq(Command.ERROR), self.reply_length.eq(1),
                         self.reply_kind.eq(_Reply.BYTE), self.reply_byte.eq(code)]
        else:
            m.d.sync += [self.reply_command.eq(Command.OK), self.reply_kind.eq(kind),
                         self.reply_length.eq({_Reply.EMPTY: 0, _Reply.BYTE: 1,
                                               _Reply.RESULT: self.top.result_bytes}[kind])]
            if byte is not None:
                m.d.sync += self.reply_byte.eq(byte)
        m.next = "HEADER"

    # ---- frame intake --------------------------------------------------------------------------

    def _intake(self):
        """IDLE: wait for a frame (or the receiver's error); FRAME: count and buffer its payload
        (checking RUN pixels, parsing WRITE_MEM's header) until the receiver's verdict."""
        m, top, event, wm = self.m, self.top, self.event, self.wm
        command, count, bad_pixel, buf_w = self.command, self.count, self.bad_pixel, self.feed.buf_w
        with m.State("IDLE"):
            m.d.comb += self.receiver.o.ready.eq(1)
            with m.If(self.receiver.o.valid):
                with m.If(event.kind == FrameEventKind.COMMAND):
                    m.d.sync += [command.eq(event.data), count.eq(0), bad_pixel.eq(0)]
                    if top.loadable:       # an empty WRITE_MEM must not inherit these
                        wm.open_frame(m)
                    m.next = "FRAME"
                with m.Elif(event.kind == FrameEventKind.ERROR):
                    self._reply(event.data)

        with m.State("FRAME"):
            m.d.comb += self.receiver.o.ready.eq(1)
            with m.If(self.receiver.o.valid):
                with m.Switch(event.kind):
                    with m.Case(FrameEventKind.PAYLOAD):
                        m.d.sync += count.eq(count + 1)
                        with m.If(command == Command.RUN):
                            with m.If(event.data > top.input_max):
                                m.d.sync += bad_pixel.eq(1)
                        # the buffer is being read only while feeding: leave it alone
                        # then (such a RUN or WRITE_MEM is answered BUSY anyway)
                        m.d.comb += [buf_w.addr.eq(count), buf_w.data.eq(event.data),
                                     buf_w.en.eq(~self.feed.feeding & (count < top.n_pixels))]
                        if top.loadable:
                            with m.If(command == Command.WRITE_MEM):
                                wm.payload_byte(m, count, event.data)
                    with m.Case(FrameEventKind.END):
                        m.next = "DISPATCH"
                    with m.Case(FrameEventKind.ERROR):
                        self._reply(event.data)
                    with m.Case(FrameEventKind.COMMAND):   # not sent by the receiver
                        m.d.sync += [command.eq(event.data), count.eq(0), bad_pixel.eq(0)]
                        if top.loadable:
                            wm.open_frame(m)

    # ---- dispatch per command ------------------------------------------------------------------

    def _commands(self):
        """The command table: what DISPATCH does for each command of a checked frame."""
        return {Command.PING: self._ping, Command.RUN: self._run,
                Command.READ_RESULT: self._read_result, Command.WRITE_MEM: self._write_mem}

    def _dispatch(self):
        """DISPATCH: the frame's CRC matched; act on its command, or UNKNOWN_COMMAND."""
        m = self.m
        with m.State("DISPATCH"):
            with m.Switch(self.command):
                for command, action in self._commands().items():
                    with m.Case(command):
                        action()
                with m.Default():
                    self._reply(ErrorCode.UNKNOWN_COMMAND)

    def _ping(self):
        """PING: the protocol version; a payload is BAD_ARGUMENT."""
        with self.m.If(self.count != 0):
            self._reply(ErrorCode.BAD_ARGUMENT)
        with self.m.Else():
            self._reply(kind=_Reply.BYTE, byte=PROTOCOL_VERSION)

    def _run(self):
        """RUN: exactly n_pixels pixels, none above input_max, and no run in progress: start."""
        m, feed = self.m, self.feed
        with m.If((self.count != self.top.n_pixels) | self.bad_pixel):
            self._reply(ErrorCode.BAD_ARGUMENT)
        with m.Elif(feed.running):
            self._reply(ErrorCode.BUSY)
        with m.Else():
            m.d.comb += feed.start.eq(1)
            self._reply(kind=_Reply.EMPTY)

    def _read_result(self):
        """READ_RESULT: the result, after waiting for a run in progress; BUSY before any run."""
        m, feed = self.m, self.feed
        with m.If(self.count != 0):
            self._reply(ErrorCode.BAD_ARGUMENT)
        with m.Elif(feed.running):
            m.d.sync += self.wait_cycles.eq(0)
            m.next = "WAIT_RESULT"
        with m.Elif(~feed.has_result):
            self._reply(ErrorCode.BUSY)
        with m.Else():
            self._reply(kind=_Reply.RESULT)

    def _write_mem(self):
        """WRITE_MEM: with `loadable`, a fitting payload outside a run goes to the write loop;
        without, UNSUPPORTED."""
        m, feed, wm = self.m, self.feed, self.wm
        if not self.top.loadable:
            self._reply(ErrorCode.UNSUPPORTED)
            return
        with m.If(feed.running | feed.feeding):
            self._reply(ErrorCode.BUSY)
        with m.Elif(~wm.fits):
            self._reply(ErrorCode.BAD_ARGUMENT)
        with m.Else():
            m.d.sync += [self.buf_r_index.eq(5), wm.byte.eq(0)]
            m.next = "WRITE_FETCH"

    def _wait_result(self):
        """WAIT_RESULT: a READ_RESULT during a run, answered when the run ends or by the
        watchdog."""
        m = self.m
        with m.State("WAIT_RESULT"):
            m.d.sync += self.wait_cycles.eq(self.wait_cycles + 1)
            with m.If(self.feed.has_result):
                self._reply(kind=_Reply.RESULT)
            with m.Elif(self.wait_cycles == self.top.result_wait_cycles - 1):
                self._reply(ErrorCode.BUSY)          # watchdog: the link never waits forever

    # ---- WRITE_MEM's write loop (loadable only) ------------------------------------------------

    def _write_mem_loop(self):
        """The checked payload from the buffer into the table, a word at a time."""
        m, acc, wm = self.m, self.acc, self.wm
        buf_r, buf_r_index = self.feed.buf_r, self.buf_r_index
        with m.State("WRITE_FETCH"):        # the buffer's read port: one cycle
            m.d.comb += buf_r.addr.eq(buf_r_index)
            m.next = "WRITE_BYTE"
        with m.State("WRITE_BYTE"):
            with m.Switch(wm.byte):
                for i in range(max(b for b, _ in self.top.tables)):
                    with m.Case(i):
                        m.d.sync += wm.word.word_select(i, 8).eq(buf_r.data)
            m.d.sync += [buf_r_index.eq(buf_r_index + 1), wm.byte.eq(wm.byte + 1)]
            m.next = "WRITE_FETCH"
            with m.If(wm.byte == wm.word_bytes - 1):
                m.next = "WRITE_WORD"
        with m.State("WRITE_WORD"):
            m.d.comb += [acc.load.valid.eq(1), acc.load.payload.memory.eq(wm.id),
                         acc.load.payload.addr.eq(wm.addr),
                         acc.load.payload.data.eq(wm.word)]
            with m.If(acc.load.ready):
                m.d.sync += [wm.addr.eq(wm.addr + 1), wm.byte.eq(0)]
                m.next = "WRITE_FETCH"
                with m.If(buf_r_index == self.count):
                    self._reply(kind=_Reply.EMPTY)

    # ---- the reply -----------------------------------------------------------------------------

    def _send_reply(self):
        """HEADER, then PAYLOAD: the latched reply to the frame sender, back to IDLE."""
        m, sender = self.m, self.sender
        reply_length, index, index_next = self.reply_length, self.index, self.index_next
        with m.State("HEADER"):
            m.d.comb += [sender.header.valid.eq(1),
                         sender.header.payload.command.eq(self.reply_command),
                         sender.header.payload.length.eq(reply_length),
                         index_next.eq(0)]
            with m.If(sender.header.ready):
                with m.If(reply_length == 0):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "PAYLOAD"

        with m.State("PAYLOAD"):
            m.d.comb += sender.payload.valid.eq(1)
            with m.If(sender.payload.ready):
                m.d.comb += index_next.eq(index + 1)
                with m.If(index == reply_length - 1):
                    m.next = "IDLE"

    def _reply_payload(self):
        """The reply's payload byte at ``index``: the latched byte, or READ_RESULT's class,
        cycles, count and logits (the logit store is read one cycle ahead, at ``index_next``)."""
        m, top, result = self.m, self.top, self.result
        index, index_next = self.index, self.index_next
        ahead = Signal(range(max(top.result_bytes, 7)))
        m.d.comb += [ahead.eq(index_next - 6),
                     result.logit_r.addr.eq(Mux(index_next >= 6, ahead >> 2, 0))]
        logit32 = Signal(32)
        m.d.comb += logit32.eq(result.logit_r.data)        # sign-extends the stored logit
        result_byte = Signal(8)
        with m.Switch(index):
            with m.Case(0):
                m.d.comb += result_byte.eq(result.result_cls)
            for i in range(4):
                with m.Case(1 + i):
                    m.d.comb += result_byte.eq(result.result_cycles.word_select(i, 8))
            with m.Case(5):
                m.d.comb += result_byte.eq(top.classes)
            with m.Default():
                m.d.comb += result_byte.eq(logit32.word_select((index - 6)[:2], 8))
        m.d.comb += self.sender.payload.payload.eq(
            Mux(self.reply_kind == _Reply.RESULT, result_byte, self.reply_byte))


class _WriteMem:
    """The registers of a WRITE_MEM frame (``wm_*``), and ``fits``: its id, address and word
    count name whole words inside a table (the check before anything is written)."""

    def __init__(self, tables, n_pixels):
        self.tables = tables
        word_bytes = max(b for b, _ in tables)
        depth = max(d for _, d in tables)
        self.id = Signal(8, name="wm_id")
        self.addr = Signal(range(depth + 1), name="wm_addr")
        self.high = Signal(name="wm_addr_high")      # an address bit above the table range
        self.k = Signal(range(word_bytes), name="wm_k")          # byte within word, received
        self.words = Signal(range(n_pixels + 1), name="wm_words")
        self.byte = Signal(range(word_bytes), name="wm_byte")    # byte within word, written
        self.word = Signal(8 * word_bytes, name="wm_word")
        self.word_bytes = Signal(range(word_bytes + 1), name="wm_word_bytes")
        self.depth = Signal(range(depth + 1), name="wm_depth")
        self.fits = Signal(name="wm_fits")          # a cycle after the frame's bytes
        self.end = Signal(len(self.addr) + 1, name="wm_end")

    def add_checks(self, m):
        """The table's word size and depth by id, and the registered ``fits``."""
        with m.Switch(self.id):
            for i, (nbytes, words) in enumerate(self.tables):
                with m.Case(i):
                    m.d.comb += [self.word_bytes.eq(nbytes), self.depth.eq(words)]
        # registered: the frame's last byte comes at least a cycle before its END event, and
        # the check's adder and comparator stay out of the handler's paths
        m.d.comb += self.end.eq(self.addr + self.words)
        m.d.sync += self.fits.eq((self.id < len(self.tables)) & ~self.high & (self.k == 0) &
                                 (self.words != 0) & (self.end <= self.depth))

    def open_frame(self, m):
        """A frame opens: no id, address or words yet. Without this, a WRITE_MEM without payload
        passed on the previous frame's `fits` and its write loop never ended (found by the
        board-link fuzz, tests/hw/test_board.py)."""
        m.d.sync += [self.id.eq(0xFF), self.addr.eq(0), self.high.eq(0), self.k.eq(0),
                     self.words.eq(0)]

    def payload_byte(self, m, count, byte):
        """One payload byte of a WRITE_MEM frame: id, 4 address bytes, then word bytes."""
        addr_bits = len(self.addr)
        with m.If(count == 0):
            m.d.sync += [self.id.eq(byte), self.addr.eq(0), self.high.eq(0), self.k.eq(0),
                         self.words.eq(0)]
        for i in range(4):
            with m.Elif(count == 1 + i):
                low = 8 * i
                if low < addr_bits:
                    m.d.sync += self.addr.bit_select(low, min(8, addr_bits - low)).eq(byte)
                keep = max(0, min(8, addr_bits - low))
                with m.If((byte >> keep) != 0):
                    m.d.sync += self.high.eq(1)
        with m.Else():
            with m.If(self.k == self.word_bytes - 1):
                m.d.sync += [self.k.eq(0), self.words.eq(self.words + 1)]
            with m.Else():
                m.d.sync += self.k.eq(self.k + 1)
