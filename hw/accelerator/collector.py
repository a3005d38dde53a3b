"""The spike collector, one for all stages: gathers a stage's spikes, writes and traces them
(see `SpikeCollector`)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import timing
from hw.plan import CYCLE_BITS, TRACE_KINDS

__all__ = ["CollectedStage", "SpikeCollector"]


@dataclass(frozen=True)
class CollectedStage:
    """What the collector needs of one stage (hw.plan.StagePlan gives it)."""
    id: int                 # the sequencer's `active` value while the stage runs
    node: int               # its node index (the trace's ``node`` field)
    channels: int
    height: int             # the positions the neurons run at: a conv's plane, 1 x tokens
    width: int
    out_tokens: int         # tokens of its value (a pooled conv: a quarter of the positions)
    tokens_outer: bool      # loop order: tokens outer (conv, matmul) or steps outer (attention)
    pool: bool              # 2x2 OR pooling: a cell's partial OR is read back and merged

    @classmethod
    def of(cls, stage, node_index: int) -> "CollectedStage":
        return cls(stage.id, node_index, stage.channels, stage.height, stage.width,
                   stage.out_tokens, stage.tokens_outer, stage.pool)


class SpikeCollector(wiring.Component):
    """Spikes of the active stage into spike vectors, written to its value and traced.

    The stages run one after the other, so they take turns on one collector: ``active``
    selects the stage's constants. The gather side takes one transfer (a channel, or a group
    of P) per cycle into a chunk register; a writer then stores the chunk (OR-pooled for a
    pooled conv: read the cell's partial OR back, merge, write) and, after a vector's last
    chunk, traces the whole vector, while the next one is already being gathered. After the
    stage's last vector the writer sends the layer-cycles record and raises ``done``.

    Vectors wider than `chunk` channels are gathered and written a chunk at a time (``chunk``
    on the write port says which; the value's write enables of that chunk are the store's): the
    gather register is one chunk wide. The gather side always takes the neuron array's outputs,
    except a chunk's last transfer while the writer is still busy with the previous chunk: a
    vector's last chunk costs the writer `writer_cycles` (WRITE, TRACE: 2; pooled READ_OLD,
    MERGE, WRITE_POOLED and, for a cell's last position, TRACE: 3 or 4), any other chunk one
    cycle (WRITE), which the next chunk's gathering outlasts (hw.plan.MIN_CHUNK).

    Members
    -------
    active : In(range(ids)), start : In(1)
        The running stage; ``start`` (a pulse) restarts the gather side for a new stage.
    spikes : In(stream.Signature(StructLayout({"spike": lanes})))
        The active stage's neuron outputs, in its loop order.
    cycles : In(CYCLE_BITS)
        The stage's cycle counter, for the layer-cycles record.
    addr : Out(...), chunk : Out(...), word : Out(chunk), write : Out(1)
        The value write: address step * out_tokens + token, which chunk, its bits; also the
        read address of a pooled conv's partial OR.
    old : In(width)
        A pooled conv's value word at ``addr`` (read data, a cycle after the address).
    trace : Out(stream.Signature(trace_layout))
    done : Out(1)
        The active stage has ended (one cycle, the layer-cycles record's transfer).
    """

    def __init__(self, stages, timesteps: int, chunk: int, lanes: int, trace_layout: dict):
        self._stages = list(stages)
        self._T, self._P = timesteps, lanes
        self._width = max(s.channels for s in self._stages)
        self._C = min(self._width, chunk)                 # the gather register's width
        self._G = -(-self._C // lanes)                    # transfers per chunk
        self._chunks = -(-self._width // self._C)
        self._trace_layout = data.StructLayout(trace_layout)
        ids = max(s.id for s in self._stages) + 1
        super().__init__({
            "active": In(range(ids + 2)), "start": In(1), "cycles": In(CYCLE_BITS),
            "spikes": In(stream.Signature(data.StructLayout({"spike": lanes}))),
            "addr": Out(range(max(timesteps * s.out_tokens for s in self._stages))),
            "chunk": Out(range(self._chunks)), "word": Out(self._C), "write": Out(1),
            "old": In(self._width),
            "trace": Out(stream.Signature(self._trace_layout)), "done": Out(1)})

    #: Cycles the writer takes for a vector's last chunk (hw.timing, the cycle model's)
    writer_cycles = staticmethod(timing.collector_writer_cycles)

    def elaborate(self, platform):
        m = Module()
        k = self._stage_constants(m)
        g = self._gather_registers()
        self._write_address(m, k, g)
        self._gather(m, k, g)
        self._writer(m, k, g)
        return m

    # ---- the active stage ------------------------------------------------------------------

    def _stage_constants(self, m):
        """The active stage's constants."""
        P, stages = self._P, self._stages
        k = SimpleNamespace(
            last_ch=Signal(range(max(-(-s.channels // P) for s in stages)),  # or group
                           name="last_channel"),
            tok_last=Signal(range(max(s.height * s.width for s in stages)), name="last_token"),
            wd_last=Signal(range(max(s.width for s in stages)), name="last_x"),
            tokens_outer=Signal(name="tokens_outer"), pool=Signal(name="pool"),
            node=Signal(8, name="node"))
        with m.Switch(self.active):
            for s in stages:
                with m.Case(s.id):
                    m.d.comb += [k.last_ch.eq(-(-s.channels // P) - 1),
                                 k.tok_last.eq(s.height * s.width - 1),
                                 k.wd_last.eq(s.width - 1), k.tokens_outer.eq(s.tokens_outer),
                                 k.pool.eq(s.pool), k.node.eq(s.node)]
        return k

    def _gather_registers(self):
        T, max_h = self._T, max(s.height for s in self._stages)
        max_tokens = max(s.height * s.width for s in self._stages)
        max_wd = max(s.width for s in self._stages)
        return SimpleNamespace(
            vec=Signal(self._C, name="vec"),
            # transfers gathered of the vector, and the next one's place in vec (bit slot * P)
            got=Signal(range(max(-(-s.channels // self._P) for s in self._stages) + 1),
                       name="got"),
            slot=Signal(range(self._G), name="slot"),
            g_chunk=Signal(range(self._chunks), name="gather_chunk"),
            # gather-side position of the vector being gathered
            step=Signal(range(T), name="step"), tok=Signal(range(max_tokens + 1), name="tok"),
            y=Signal(range(max_h + 1), name="y"), x=Signal(range(max_wd), name="x"),
            # writer-side copy: the vector being written and where
            w_step=Signal(range(T), name="w_step"),
            w_tok=Signal(range(max_tokens + 1), name="w_tok"),
            w_y=Signal(range(max_h + 1), name="w_y"), w_x=Signal(range(max_wd), name="w_x"),
            w_last=Signal(name="w_last"), w_final=Signal(name="w_final"),   # last vector/chunk
            trace_word=Signal(self._width, name="trace_word"),     # the whole vector
            out_pos=Signal(16, name="out_pos"),
            first_in_cell=Signal(name="first_in_cell"), last_in_cell=Signal(name="last_in_cell"),
            writer_busy=Signal(name="writer_busy"), handover=Signal(name="handover"))

    def _write_address(self, m, k, g):
        """Where the vector goes: its output token (a pooled conv: its 2x2 cell) and address."""
        with m.Switch(self.active):
            for s in self._stages:
                with m.Case(s.id):
                    if s.pool:
                        pos = (g.w_y >> 1) * (s.width // 2) + (g.w_x >> 1)
                        m.d.comb += [g.first_in_cell.eq((g.w_y[0] == 0) & (g.w_x[0] == 0)),
                                     g.last_in_cell.eq((g.w_y[0] == 1) & (g.w_x[0] == 1))]
                    else:
                        pos = g.w_tok
                        m.d.comb += [g.first_in_cell.eq(1), g.last_in_cell.eq(1)]
                    m.d.comb += [g.out_pos.eq(pos),
                                 self.addr.eq(g.w_step * s.out_tokens + pos)]

    def _trace_chunk(self, m, chunk, bits, trace_word):
        """trace_word's chunk `chunk` := bits."""
        C = self._C
        with m.Switch(chunk):
            for i in range(self._chunks):
                with m.Case(i):
                    n = min(C, self._width - i * C)
                    m.d.sync += trace_word[i * C:i * C + n].eq(bits[:n])

    # ---- the gather side -------------------------------------------------------------------

    def _advance(self, m, k, g):
        """The next vector's position: tokens outer (y, x with them), or steps outer."""
        with m.If(k.tokens_outer):
            with m.If(g.step == self._T - 1):
                m.d.sync += [g.step.eq(0), g.tok.eq(g.tok + 1)]
                with m.If(g.x == k.wd_last):
                    m.d.sync += [g.x.eq(0), g.y.eq(g.y + 1)]
                with m.Else():
                    m.d.sync += g.x.eq(g.x + 1)
            with m.Else():
                m.d.sync += g.step.eq(g.step + 1)
        with m.Else():
            with m.If(g.tok == k.tok_last):
                m.d.sync += [g.tok.eq(0), g.step.eq(g.step + 1)]
            with m.Else():
                m.d.sync += g.tok.eq(g.tok + 1)

    def _gather(self, m, k, g):
        """One spike per channel (or group) into the chunk register; a full chunk goes to the
        writer. `chunk_end` (the next transfer ends a chunk) is a register, computed from the
        next got/slot, so that the ready path into the neuron array starts at registers."""
        P = self._P
        last_vector = (g.step == self._T - 1) & (g.tok == k.tok_last)
        last_channel = g.got == k.last_ch
        chunk_end = Signal(name="chunk_end")
        got_next, slot_next = Signal.like(g.got, name="got_next"), \
            Signal.like(g.slot, name="slot_next")
        taken = self.spikes.valid & self.spikes.ready
        m.d.comb += [self.spikes.ready.eq(~(chunk_end & g.writer_busy)),
                     g.handover.eq(taken & chunk_end),
                     got_next.eq(g.got), slot_next.eq(g.slot)]
        with m.If(taken):
            spike_vec = g.vec | (self.spikes.payload.spike << (g.slot if P == 1 else g.slot * P))
            with m.If(chunk_end):
                m.d.comb += slot_next.eq(0)
                m.d.sync += [g.vec.eq(0), self.word.eq(spike_vec), self.chunk.eq(g.g_chunk),
                             g.w_final.eq(last_channel), g.w_step.eq(g.step),
                             g.w_tok.eq(g.tok), g.w_y.eq(g.y), g.w_x.eq(g.x),
                             g.w_last.eq(last_vector)]
                with m.If(g.g_chunk == 0):    # the whole vector, for the trace
                    m.d.sync += g.trace_word.eq(spike_vec)
                with m.Else():
                    self._trace_chunk(m, g.g_chunk, spike_vec, g.trace_word)
                with m.If(last_channel):
                    m.d.comb += got_next.eq(0)
                    m.d.sync += g.g_chunk.eq(0)
                    self._advance(m, k, g)
                with m.Else():
                    m.d.comb += got_next.eq(g.got + 1)
                    m.d.sync += g.g_chunk.eq(g.g_chunk + 1)
            with m.Else():
                m.d.comb += [got_next.eq(g.got + 1), slot_next.eq(g.slot + 1)]
                m.d.sync += g.vec.eq(spike_vec)
        with m.If(self.start):
            m.d.comb += [got_next.eq(0), slot_next.eq(0)]
            m.d.sync += [g.vec.eq(0), g.g_chunk.eq(0), g.step.eq(0), g.tok.eq(0), g.y.eq(0),
                         g.x.eq(0)]
        m.d.sync += [g.got.eq(got_next), g.slot.eq(slot_next),
                     chunk_end.eq((got_next == k.last_ch) | (slot_next == self._G - 1))]

    # ---- the writer ------------------------------------------------------------------------

    def _writer(self, m, k, g):
        """Store (OR-pooled for pooled convs), trace, and end the stage."""
        any_pool = any(s.pool for s in self._stages)
        with m.FSM(name="write"):
            with m.State("IDLE"):
                with m.If(g.handover):
                    if any_pool:
                        with m.If(k.pool):
                            m.next = "READ_OLD"
                        with m.Else():
                            m.next = "WRITE"
                    else:
                        m.next = "WRITE"
            if any_pool:
                self._pooled_states(m, g)
            with m.State("WRITE"):
                m.d.comb += [g.writer_busy.eq(1), self.write.eq(1)]
                with m.If(g.w_final):
                    m.next = "TRACE"
                with m.Else():                  # more chunks of this vector to come
                    m.next = "IDLE"
            with m.State("TRACE"):
                m.d.comb += [g.writer_busy.eq(1), self.trace.valid.eq(1),
                             self.trace.payload.kind.eq(TRACE_KINDS["spikes"]),
                             self.trace.payload.node.eq(k.node),
                             self.trace.payload.step.eq(g.w_step),
                             self.trace.payload.token.eq(g.out_pos),
                             self.trace.payload.data.eq(g.trace_word)]
                with m.If(self.trace.ready):
                    with m.If(g.w_last):
                        m.next = "CYCLES"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("CYCLES"):
                m.d.comb += [g.writer_busy.eq(1), self.trace.valid.eq(1),
                             self.trace.payload.kind.eq(TRACE_KINDS["cycles"]),
                             self.trace.payload.node.eq(k.node),
                             self.trace.payload.data.eq(self.cycles)]
                with m.If(self.trace.ready):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

    def _pooled_states(self, m, g):
        """READ_OLD (the cell's partial OR is read), MERGE, WRITE_POOLED."""
        C = self._C
        old = Signal(C, name="old_chunk")
        if self._chunks > 1:
            padded = Cat(self.old, Const(0, self._chunks * C - self._width))
            m.d.comb += old.eq(padded.word_select(self.chunk, C))
        else:
            m.d.comb += old.eq(self.old)
        with m.State("READ_OLD"):
            m.d.comb += g.writer_busy.eq(1)
            m.next = "MERGE"
        with m.State("MERGE"):
            m.d.comb += g.writer_busy.eq(1)
            merged = Mux(g.first_in_cell, self.word, self.word | old)
            m.d.sync += self.word.eq(merged)
            self._trace_chunk(m, self.chunk, merged, g.trace_word)
            m.next = "WRITE_POOLED"
        with m.State("WRITE_POOLED"):
            m.d.comb += [g.writer_busy.eq(1), self.write.eq(1)]
            with m.If(g.w_final & g.last_in_cell):
                m.next = "TRACE"
            with m.Elif(g.w_final & g.w_last):
                m.next = "CYCLES"
            with m.Else():
                m.next = "IDLE"
