"""The spike collector, one for all stages: gathers a stage's spikes, writes and traces them."""

from __future__ import annotations

from amaranth import Cat, Const, Mux, Signal
from amaranth.utils import bits_for

from hw.plan import TRACE_KINDS
from model.ir import Conv

__all__ = ["collector", "SpikeCollector"]


def collector(top, m, active, users, mem_r, mem_w, read, run_cycles, trace_ready,
              starting, store):
    """The one spike collector: the stages run one after the other, so they take turns on
    it (`users`: {stage id: SimpleNamespace(node, o, busy, done, tokens_outer, h, wd)}; the
    active stage's neuron output stream, constants and value memory are switched in).

    It gathers one spike per channel into a vector; a writer then stores it (OR-pooled for
    pooled convs) and traces it while the next vector is already being gathered; after the
    last vector the writer finishes the stage (plus the layer-cycles record).

    Vectors wider than `chunk` channels are gathered and written a chunk at a time (the
    value's lanes of that chunk are write-enabled; the chunk's bits are replicated across the
    value's word): the gather register is one chunk wide. A chunk that does not end its
    vector costs the writer one cycle (WRITE), far less than the next chunk takes to gather.

    The gather side always takes the neuron's outputs, except a chunk's last channel
    while the writer is still busy with the previous chunk (a vector's last chunk: 2 cycles,
    WRITE, TRACE; pooled 3 or 4: READ_OLD, MERGE, WRITE_POOLED and, for a cell's last
    position, TRACE). Returns the trace stream's (valid, payload)."""
    col = SpikeCollector(top, users)
    col.select_stage(m, active)
    col.declare_writer(store)
    col.writer_ports(m, active, mem_r, mem_w, read)
    col.declare_trace()
    col.gather(m, starting)
    col.writer_fsm(m, active, run_cycles, trace_ready)
    return col.trace_valid, col.trace_payload


class SpikeCollector:
    """The collector's signals and its parts (see `collector`), built in this order."""

    def __init__(self, top, users):
        self.top, self.users = top, users
        self.T = self.top.T
        self.names = {sid: u.node.name for sid, u in self.users.items()}
        self.P = self.top.lanes
        self.width = max(self.top.channels[n] for n in self.names.values())
        self.groups_of = {sid: -(-self.top.channels[n] // self.P) for sid, n in self.names.items()}
        self.tokens_of = {sid: u.h * u.wd for sid, u in self.users.items()}
        self.max_tokens = max(self.tokens_of.values())
        self.max_h = max(u.h for u in self.users.values())
        self.max_wd = max(u.wd for u in self.users.values())
        self.any_pool = any(isinstance(u.node, Conv) and u.node.pool for u in self.users.values())

        # the active stage's constants and neuron output
        self.last_ch = Signal(range(max(self.groups_of.values())),       # or group
                              name="col_last_channel")
        self.tok_last = Signal(range(self.max_tokens), name="col_last_token")
        self.wd_last = Signal(range(self.max_wd), name="col_last_x")
        self.tokens_outer = Signal(name="col_tokens_outer")
        self.pool = Signal(name="col_pool")
        self.n_index = Signal(8, name="col_node")
        self.o_valid, self.o_ready = Signal(name="col_valid"), Signal(name="col_ready")
        self.o_spike = Signal(self.P, name="col_spike")

    def select_stage(self, m, active):
        """The active stage's constants and neuron output."""
        with m.Switch(active):
            for sid, u in self.users.items():
                name = self.names[sid]
                with m.Case(sid):
                    m.d.comb += [
                        self.last_ch.eq(self.groups_of[sid] - 1),
                        self.tok_last.eq(self.tokens_of[sid] - 1),
                        self.wd_last.eq(u.wd - 1), self.tokens_outer.eq(u.tokens_outer),
                        self.pool.eq(isinstance(u.node, Conv) and bool(u.node.pool)),
                        self.n_index.eq(self.top.node_index[name]),
                        self.o_valid.eq(u.o.valid), u.o.ready.eq(self.o_ready),
                        self.o_spike.eq(u.o.payload.spike)]

    def declare_writer(self, store):
        self.C = min(self.width, self.top.chunk)          # the gather register's width
        self.G = -(-self.C // self.P)       # transfers (groups of P channels) per chunk
        self.chunks = -(-self.width // self.C)
        self.vec = Signal(self.C, name="col_vec")
        # transfers (channels, or groups of P) gathered of the vector, and the next one's place
        # in vec (its first bit: slot * P)
        self.got = Signal(range(max(self.groups_of.values()) + 1), name="col_got")
        self.slot = Signal(range(self.G), name="col_slot")
        self.g_chunk = Signal(range(self.chunks), name="col_chunk")   # the chunk being gathered
        # gather-side position of the vector being gathered
        self.c_step = Signal(range(self.T), name="col_step")
        self.c_tok = Signal(range(self.max_tokens + 1), name="col_tok")
        self.cy = Signal(range(self.max_h + 1), name="col_y")
        self.cx = Signal(range(self.max_wd), name="col_x")
        # writer-side copy: the vector being written and where
        self.w_step = Signal(range(self.T), name="col_w_step")
        self.w_tok = Signal(range(self.max_tokens + 1), name="col_w_tok")
        self.w_cy = Signal(range(self.max_h + 1), name="col_w_y")
        self.w_cx = Signal(range(self.max_wd), name="col_w_x")
        self.w_last = Signal(name="col_w_last")
        self.w_chunk = Signal(range(self.chunks), name="col_w_chunk")
        self.w_final = Signal(name="col_w_final")                # the vector's last chunk
        self.word = Signal(self.C, name="col_word")
        store.written = self.word        # every value write is this chunk, replicated
        self.trace_word = Signal(self.width, name="col_trace_word")   # the whole vector, for TRACE
        self.old = Signal(self.C, name="col_old")                     # a pooled cell's partial OR
        self.write = Signal(name="col_write")
        self.out_pos = Signal(16, name="col_out_pos")
        self.out_addr = Signal(range(max(self.T * self.top.positions[n]
                                         for n in self.names.values())),
                          name="col_out_addr")
        self.first_in_cell = Signal(name="col_first_in_cell")
        self.last_in_cell = Signal(name="col_last_in_cell")

    def writer_ports(self, m, active, mem_r, mem_w, read):
        """The active stage's value memory: where the writer writes (and reads a pooled
        cell's partial OR back)."""
        with m.Switch(active):
            for sid, u in self.users.items():
                name = self.names[sid]
                with m.Case(sid):
                    if isinstance(u.node, Conv) and u.node.pool:
                        pos = (self.w_cy >> 1) * (u.wd // 2) + (self.w_cx >> 1)
                        data, n = mem_r[name].data, -(-self.top.channels[name] // self.C)
                        if n > 1:       # the chunk being written
                            data = Cat(data, Const(0, n * self.C - len(data))).word_select(
                                self.w_chunk[:bits_for(n - 1)], self.C)
                        m.d.comb += [
                            self.first_in_cell.eq((self.w_cy[0] == 0) & (self.w_cx[0] == 0)),
                            self.last_in_cell.eq((self.w_cy[0] == 1) & (self.w_cx[0] == 1)),
                                     self.old.eq(data)]
                        read(sid, name, self.out_addr)
                    else:
                        pos = self.w_tok
                        m.d.comb += [self.first_in_cell.eq(1), self.last_in_cell.eq(1)]
                    m.d.comb += [self.out_pos.eq(pos),
                                 self.out_addr.eq(self.w_step * self.top.positions[name] + pos)]
                    wp, n_chunks = mem_w[name], len(mem_w[name].en)
                    m.d.comb += [wp.addr.eq(self.out_addr),
                                 wp.data.eq(Cat(*[self.word] * n_chunks)),
                                 wp.en.eq(Mux(self.write, Const(1, n_chunks) <<
                                              self.w_chunk[:bits_for(n_chunks - 1)], 0))]

    def declare_trace(self):
        self.trace_valid = Signal(name="col_trace_valid")
        self.trace_payload = Signal(self.top.trace_layout, name="col_trace")

    def trace_chunk(self, m, k, bits):
        """trace_word's chunk k := bits."""
        with m.Switch(k):
            for i in range(self.chunks):
                with m.Case(i):
                    n = min(self.C, self.width - i * self.C)
                    m.d.sync += self.trace_word[i * self.C:i * self.C + n].eq(bits[:n])

    def gather(self, m, starting):
        """The gather side: one spike per channel (or group) into the chunk register."""
        def advance():
            with m.If(self.tokens_outer):
                with m.If(self.c_step == self.T - 1):
                    m.d.sync += self.c_step.eq(0)
                    m.d.sync += self.c_tok.eq(self.c_tok + 1)
                    with m.If(self.cx == self.wd_last):
                        m.d.sync += [self.cx.eq(0), self.cy.eq(self.cy + 1)]
                    with m.Else():
                        m.d.sync += self.cx.eq(self.cx + 1)
                with m.Else():
                    m.d.sync += self.c_step.eq(self.c_step + 1)
            with m.Else():
                with m.If(self.c_tok == self.tok_last):
                    m.d.sync += [self.c_tok.eq(0), self.c_step.eq(self.c_step + 1)]
                with m.Else():
                    m.d.sync += self.c_tok.eq(self.c_tok + 1)

        last_vector = (self.c_step == self.T - 1) & (self.c_tok == self.tok_last)
        self.writer_busy = Signal(name="col_writer_busy")
        last_channel = self.got == self.last_ch
        # `chunk_end` (the next output ends a chunk) is a register, computed from the next
        # got/slot, so that the ready path into the neuron array starts at registers: it is the
        # head of the chain neuron array -> feeder -> engine. `last_ch` follows `active` a cycle
        # late at a stage's start, long before the stage's first output.
        chunk_end = Signal(name="col_chunk_end")
        got_next, slot_next = Signal.like(self.got, name="col_got_next"), \
            Signal.like(self.slot, name="col_slot_next")
        self.handover = Signal(name="col_handover")              # a chunk goes to the writer
        m.d.comb += [self.o_ready.eq(~(chunk_end & self.writer_busy)),
                     self.handover.eq(self.o_valid & self.o_ready & chunk_end),
                     got_next.eq(self.got), slot_next.eq(self.slot)]
        with m.If(self.o_valid & self.o_ready):
            spike_vec = self.vec | (self.o_spike << (self.slot if self.P == 1
                                                     else self.slot * self.P))
            with m.If(chunk_end):
                m.d.comb += slot_next.eq(0)
                m.d.sync += [self.vec.eq(0), self.word.eq(spike_vec), self.w_chunk.eq(self.g_chunk),
                             self.w_final.eq(last_channel), self.w_step.eq(self.c_step),
                             self.w_tok.eq(self.c_tok), self.w_cy.eq(self.cy),
                             self.w_cx.eq(self.cx), self.w_last.eq(last_vector)]
                with m.If(self.g_chunk == 0):    # the whole vector, for the trace
                    m.d.sync += self.trace_word.eq(spike_vec)
                with m.Else():
                    self.trace_chunk(m, self.g_chunk, spike_vec)
                with m.If(last_channel):
                    m.d.comb += got_next.eq(0)
                    m.d.sync += self.g_chunk.eq(0)
                    advance()
                with m.Else():
                    m.d.comb += got_next.eq(self.got + 1)
                    m.d.sync += self.g_chunk.eq(self.g_chunk + 1)
            with m.Else():
                m.d.comb += [got_next.eq(self.got + 1), slot_next.eq(self.slot + 1)]
                m.d.sync += self.vec.eq(spike_vec)
        with m.If(starting):
            m.d.comb += [got_next.eq(0), slot_next.eq(0)]
            m.d.sync += [self.vec.eq(0), self.g_chunk.eq(0), self.c_step.eq(0),
                         self.c_tok.eq(0), self.cy.eq(0),
                         self.cx.eq(0)]
        m.d.sync += [self.got.eq(got_next), self.slot.eq(slot_next),
                     chunk_end.eq((got_next == self.last_ch) | (slot_next == self.G - 1))]

    def writer_fsm(self, m, active, run_cycles, trace_ready):
        """The writer: store (OR-pooled for pooled convs), trace, and end the stage."""
        with m.FSM(name="collector_write"):
            with m.State("IDLE"):
                with m.If(self.handover):
                    if self.any_pool:
                        with m.If(self.pool):
                            m.next = "READ_OLD"
                        with m.Else():
                            m.next = "WRITE"
                    else:
                        m.next = "WRITE"
            if self.any_pool:
                with m.State("READ_OLD"):
                    m.d.comb += self.writer_busy.eq(1)
                    m.next = "MERGE"
                with m.State("MERGE"):
                    m.d.comb += self.writer_busy.eq(1)
                    merged = Mux(self.first_in_cell, self.word, self.word | self.old)
                    m.d.sync += self.word.eq(merged)
                    self.trace_chunk(m, self.w_chunk, merged)
                    m.next = "WRITE_POOLED"
                with m.State("WRITE_POOLED"):
                    m.d.comb += [self.writer_busy.eq(1), self.write.eq(1)]
                    with m.If(self.w_final & self.last_in_cell):
                        m.next = "TRACE"
                    with m.Elif(self.w_final & self.w_last):
                        m.next = "CYCLES"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("WRITE"):
                m.d.comb += [self.writer_busy.eq(1), self.write.eq(1)]
                with m.If(self.w_final):
                    m.next = "TRACE"
                with m.Else():                  # more chunks of this vector to come
                    m.next = "IDLE"
            with m.State("TRACE"):
                m.d.comb += [self.writer_busy.eq(1), self.trace_valid.eq(1),
                             self.trace_payload.kind.eq(TRACE_KINDS["spikes"]),
                             self.trace_payload.node.eq(self.n_index),
                             self.trace_payload.step.eq(self.w_step),
                             self.trace_payload.token.eq(self.out_pos),
                             self.trace_payload.data.eq(self.trace_word)]
                with m.If(trace_ready):
                    with m.If(self.w_last):
                        m.next = "CYCLES"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("CYCLES"):
                m.d.comb += [self.writer_busy.eq(1), self.trace_valid.eq(1),
                             self.trace_payload.kind.eq(TRACE_KINDS["cycles"]),
                             self.trace_payload.node.eq(self.n_index),
                             self.trace_payload.data.eq(run_cycles)]
                with m.If(trace_ready):
                    with m.Switch(active):
                        for sid, u in self.users.items():
                            with m.Case(sid):
                                m.d.comb += u.done.eq(1)
                                m.d.sync += u.busy.eq(0)
                    m.next = "IDLE"
