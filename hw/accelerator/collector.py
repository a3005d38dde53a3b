"""The spike collector, one for all stages: gathers a stage's spikes, writes and traces them."""

from __future__ import annotations

from amaranth import Cat, Const, Mux, Signal
from amaranth.utils import bits_for

from hw.plan import TRACE_KINDS
from model.ir import Conv

__all__ = ["collector"]


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
    T = top.T
    names = {sid: u.node.name for sid, u in users.items()}
    P = top.lanes
    width = max(top.channels[n] for n in names.values())
    groups_of = {sid: -(-top.channels[n] // P) for sid, n in names.items()}
    tokens_of = {sid: u.h * u.wd for sid, u in users.items()}
    max_tokens = max(tokens_of.values())
    max_h = max(u.h for u in users.values())
    max_wd = max(u.wd for u in users.values())
    any_pool = any(isinstance(u.node, Conv) and u.node.pool for u in users.values())

    # the active stage's constants and neuron output
    last_ch = Signal(range(max(groups_of.values())), name="col_last_channel")  # or group
    tok_last = Signal(range(max_tokens), name="col_last_token")
    wd_last = Signal(range(max_wd), name="col_last_x")
    tokens_outer = Signal(name="col_tokens_outer")
    pool = Signal(name="col_pool")
    n_index = Signal(8, name="col_node")
    o_valid, o_ready = Signal(name="col_valid"), Signal(name="col_ready")
    o_spike = Signal(P, name="col_spike")
    with m.Switch(active):
        for sid, u in users.items():
            name = names[sid]
            with m.Case(sid):
                m.d.comb += [
                    last_ch.eq(groups_of[sid] - 1), tok_last.eq(tokens_of[sid] - 1),
                    wd_last.eq(u.wd - 1), tokens_outer.eq(u.tokens_outer),
                    pool.eq(isinstance(u.node, Conv) and bool(u.node.pool)),
                    n_index.eq(top.node_index[name]),
                    o_valid.eq(u.o.valid), u.o.ready.eq(o_ready),
                    o_spike.eq(u.o.payload.spike)]

    C = min(width, top.chunk)          # the gather register's width
    G = -(-C // P)                      # transfers (groups of P channels) per chunk
    chunks = -(-width // C)
    vec = Signal(C, name="col_vec")
    # transfers (channels, or groups of P) gathered of the vector, and the next one's place
    # in vec (its first bit: slot * P)
    got = Signal(range(max(groups_of.values()) + 1), name="col_got")
    slot = Signal(range(G), name="col_slot")
    g_chunk = Signal(range(chunks), name="col_chunk")   # the chunk being gathered
    # gather-side position of the vector being gathered
    c_step = Signal(range(T), name="col_step")
    c_tok = Signal(range(max_tokens + 1), name="col_tok")
    cy = Signal(range(max_h + 1), name="col_y")
    cx = Signal(range(max_wd), name="col_x")
    # writer-side copy: the vector being written and where
    w_step = Signal(range(T), name="col_w_step")
    w_tok = Signal(range(max_tokens + 1), name="col_w_tok")
    w_cy = Signal(range(max_h + 1), name="col_w_y")
    w_cx = Signal(range(max_wd), name="col_w_x")
    w_last = Signal(name="col_w_last")
    w_chunk = Signal(range(chunks), name="col_w_chunk")
    w_final = Signal(name="col_w_final")                # the vector's last chunk
    word = Signal(C, name="col_word")
    store.written = word        # every value write is this chunk, replicated
    trace_word = Signal(width, name="col_trace_word")   # the whole vector, for TRACE
    old = Signal(C, name="col_old")                     # a pooled cell's partial OR
    write = Signal(name="col_write")
    out_pos = Signal(16, name="col_out_pos")
    out_addr = Signal(range(max(T * top.positions[n] for n in names.values())),
                      name="col_out_addr")
    first_in_cell, last_in_cell = Signal(name="col_first_in_cell"), Signal(name="col_last_in_cell")
    with m.Switch(active):
        for sid, u in users.items():
            name = names[sid]
            with m.Case(sid):
                if isinstance(u.node, Conv) and u.node.pool:
                    pos = (w_cy >> 1) * (u.wd // 2) + (w_cx >> 1)
                    data, n = mem_r[name].data, -(-top.channels[name] // C)
                    if n > 1:       # the chunk being written
                        data = Cat(data, Const(0, n * C - len(data))).word_select(
                            w_chunk[:bits_for(n - 1)], C)
                    m.d.comb += [first_in_cell.eq((w_cy[0] == 0) & (w_cx[0] == 0)),
                                 last_in_cell.eq((w_cy[0] == 1) & (w_cx[0] == 1)),
                                 old.eq(data)]
                    read(sid, name, out_addr)
                else:
                    pos = w_tok
                    m.d.comb += [first_in_cell.eq(1), last_in_cell.eq(1)]
                m.d.comb += [out_pos.eq(pos),
                             out_addr.eq(w_step * top.positions[name] + pos)]
                wp, n_chunks = mem_w[name], len(mem_w[name].en)
                m.d.comb += [wp.addr.eq(out_addr),
                             wp.data.eq(Cat(*[word] * n_chunks)),
                             wp.en.eq(Mux(write, Const(1, n_chunks) <<
                                          w_chunk[:bits_for(n_chunks - 1)], 0))]
    trace_valid = Signal(name="col_trace_valid")
    trace_payload = Signal(top.trace_layout, name="col_trace")

    def trace_chunk(k, bits):
        """trace_word's chunk k := bits."""
        with m.Switch(k):
            for i in range(chunks):
                with m.Case(i):
                    n = min(C, width - i * C)
                    m.d.sync += trace_word[i * C:i * C + n].eq(bits[:n])

    def advance():
        with m.If(tokens_outer):
            with m.If(c_step == T - 1):
                m.d.sync += c_step.eq(0)
                m.d.sync += c_tok.eq(c_tok + 1)
                with m.If(cx == wd_last):
                    m.d.sync += [cx.eq(0), cy.eq(cy + 1)]
                with m.Else():
                    m.d.sync += cx.eq(cx + 1)
            with m.Else():
                m.d.sync += c_step.eq(c_step + 1)
        with m.Else():
            with m.If(c_tok == tok_last):
                m.d.sync += [c_tok.eq(0), c_step.eq(c_step + 1)]
            with m.Else():
                m.d.sync += c_tok.eq(c_tok + 1)

    last_vector = (c_step == T - 1) & (c_tok == tok_last)
    writer_busy = Signal(name="col_writer_busy")
    last_channel = got == last_ch
    # `chunk_end` (the next output ends a chunk) is a register, computed from the next
    # got/slot, so that the ready path into the neuron array starts at registers: it is the
    # head of the chain neuron array -> feeder -> engine. `last_ch` follows `active` a cycle
    # late at a stage's start, long before the stage's first output.
    chunk_end = Signal(name="col_chunk_end")
    got_next, slot_next = Signal.like(got, name="col_got_next"), \
        Signal.like(slot, name="col_slot_next")
    handover = Signal(name="col_handover")              # a chunk goes to the writer
    m.d.comb += [o_ready.eq(~(chunk_end & writer_busy)),
                 handover.eq(o_valid & o_ready & chunk_end),
                 got_next.eq(got), slot_next.eq(slot)]
    with m.If(o_valid & o_ready):
        spike_vec = vec | (o_spike << (slot if P == 1 else slot * P))
        with m.If(chunk_end):
            m.d.comb += slot_next.eq(0)
            m.d.sync += [vec.eq(0), word.eq(spike_vec), w_chunk.eq(g_chunk),
                         w_final.eq(last_channel), w_step.eq(c_step), w_tok.eq(c_tok),
                         w_cy.eq(cy), w_cx.eq(cx), w_last.eq(last_vector)]
            with m.If(g_chunk == 0):    # the whole vector, for the trace
                m.d.sync += trace_word.eq(spike_vec)
            with m.Else():
                trace_chunk(g_chunk, spike_vec)
            with m.If(last_channel):
                m.d.comb += got_next.eq(0)
                m.d.sync += g_chunk.eq(0)
                advance()
            with m.Else():
                m.d.comb += got_next.eq(got + 1)
                m.d.sync += g_chunk.eq(g_chunk + 1)
        with m.Else():
            m.d.comb += [got_next.eq(got + 1), slot_next.eq(slot + 1)]
            m.d.sync += vec.eq(spike_vec)
    with m.If(starting):
        m.d.comb += [got_next.eq(0), slot_next.eq(0)]
        m.d.sync += [vec.eq(0), g_chunk.eq(0), c_step.eq(0), c_tok.eq(0), cy.eq(0),
                     cx.eq(0)]
    m.d.sync += [got.eq(got_next), slot.eq(slot_next),
                 chunk_end.eq((got_next == last_ch) | (slot_next == G - 1))]

    with m.FSM(name="collector_write"):
        with m.State("IDLE"):
            with m.If(handover):
                if any_pool:
                    with m.If(pool):
                        m.next = "READ_OLD"
                    with m.Else():
                        m.next = "WRITE"
                else:
                    m.next = "WRITE"
        if any_pool:
            with m.State("READ_OLD"):
                m.d.comb += writer_busy.eq(1)
                m.next = "MERGE"
            with m.State("MERGE"):
                m.d.comb += writer_busy.eq(1)
                merged = Mux(first_in_cell, word, word | old)
                m.d.sync += word.eq(merged)
                trace_chunk(w_chunk, merged)
                m.next = "WRITE_POOLED"
            with m.State("WRITE_POOLED"):
                m.d.comb += [writer_busy.eq(1), write.eq(1)]
                with m.If(w_final & last_in_cell):
                    m.next = "TRACE"
                with m.Elif(w_final & w_last):
                    m.next = "CYCLES"
                with m.Else():
                    m.next = "IDLE"
        with m.State("WRITE"):
            m.d.comb += [writer_busy.eq(1), write.eq(1)]
            with m.If(w_final):
                m.next = "TRACE"
            with m.Else():                  # more chunks of this vector to come
                m.next = "IDLE"
        with m.State("TRACE"):
            m.d.comb += [writer_busy.eq(1), trace_valid.eq(1),
                         trace_payload.kind.eq(TRACE_KINDS["spikes"]),
                         trace_payload.node.eq(n_index),
                         trace_payload.step.eq(w_step),
                         trace_payload.token.eq(out_pos),
                         trace_payload.data.eq(trace_word)]
            with m.If(trace_ready):
                with m.If(w_last):
                    m.next = "CYCLES"
                with m.Else():
                    m.next = "IDLE"
        with m.State("CYCLES"):
            m.d.comb += [writer_busy.eq(1), trace_valid.eq(1),
                         trace_payload.kind.eq(TRACE_KINDS["cycles"]),
                         trace_payload.node.eq(n_index),
                         trace_payload.data.eq(run_cycles)]
            with m.If(trace_ready):
                with m.Switch(active):
                    for sid, u in users.items():
                        with m.Case(sid):
                            m.d.comb += u.done.eq(1)
                            m.d.sync += u.busy.eq(0)
                m.next = "IDLE"
    return trace_valid, trace_payload
