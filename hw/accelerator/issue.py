"""The one issue FSM of every conv and matmul stage (see `IssueFSM`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.utils import bits_for

from hw.accelerator.util import or_all
from model.ir import Conv

if TYPE_CHECKING:
    from hw.accelerator.top import Accelerator

__all__ = ["IssueFSM"]


class IssueFSM:
    """The one issue FSM of every conv and matmul stage: the stages run one after the other, so
    they take turns on it (`add` registers a stage; the active one's constants, source word and
    engine stream are switched in, as for the collector).

    Loop order tokens outer, time steps inner, the nine taps innermost for a conv. Per
    (token, step, tap): FETCH (the source read's address is valid; a conv tap outside the image
    ends here), then per chunk of `chunk` input channels LOAD_MASK (the chunk's non-zero
    channels into `mask`) and EMIT (one event per set bit, lowest first: isolated as
    mask & -mask, a carry chain, and encoded by OR trees of log depth; one more cycle when the
    mask is empty), then after the last tap END (the end marker) and NEXT. Chunks keep the
    mask, its carry chain and the encoders `chunk` wide, not as wide as the widest
    value (an MLP's hidden layer); the source word stays on the read port meanwhile. A static
    first conv issues step 0 only (its feeder replays the others). hw/cycles.py models it
    cycle for cycle.
    """

    def __init__(self, acc: "Accelerator", nodes: list[dict]):
        self.acc, self.specs = acc, {}
        conv = [n for n in nodes if isinstance(n, Conv)]
        h = max([n.height for n in conv], default=1)
        wd = max([n.width for n in conv] + [acc.N])
        positions = max([n.positions for n in conv] + [acc.N])
        self.token = Signal(range(positions), name="issue_token")
        self.step = Signal(range(acc.T), name="issue_step")
        self.y = Signal(range(h), name="issue_y")
        self.x = Signal(range(wd), name="issue_x")
        self.tap = Signal(range(10), name="issue_tap")
        self.ny = Signal(signed(bits_for(h) + 2), name="issue_ny")
        self.nx = Signal(signed(bits_for(wd) + 2), name="issue_nx")

    def add(self, sid: int, spec: SimpleNamespace) -> None:
        self.specs[sid] = spec

    def build(self, m: Module, active: Signal, run_cycles: Signal) -> None:
        if not self.specs:
            return
        T, specs, CHUNK = self.acc.T, self.specs, self.acc.chunk
        token, step, y, x, tap, ny, nx = (self.token, self.step, self.y, self.x, self.tap,
                                          self.ny, self.nx)
        widest = max(max(len(s.word_counts) for s in specs.values()), 1)
        n_mask = min(widest, CHUNK)
        chunks = -(-widest // n_mask)
        count_bits = max(s.count_bits for s in specs.values())
        chunk = Signal(range(chunks), name="issue_chunk")
        col_base = Signal(range(max(s.col_base for s in specs.values()) + 1),
                          name="issue_col_base")
        chunk_last = Signal.like(chunk, name="chunk_last")

        # every stage's source counts as one word (each count widened to count_bits), so that
        # the active stage's chunk is one selection, shared by the mask and the event count:
        # per-use copies of per-channel expressions made a large model's netlist grow fast
        chunk_words = {}
        for sid, s in specs.items():
            n = -(-len(s.word_counts) // n_mask)
            word = Signal(n * n_mask * count_bits, name=f"issue_word_{sid}")
            pad = count_bits - s.count_bits
            m.d.comb += word.eq(Cat(*[Cat(c, Const(0, pad)) if pad else c
                                      for c in s.word_counts]))
            chunk_words[sid] = word if n == 1 else \
                word.word_select(chunk[:bits_for(n - 1)], n_mask * count_bits)

        # the active stage's constants and source chunk
        is_conv, replay = Signal(name="issue_is_conv"), Signal(name="issue_replay")
        tok_last = Signal.like(token, name="issue_token_last")
        x_last = Signal.like(x, name="issue_x_last")
        h = Signal(len(y) + 1, name="issue_h")
        wd = Signal(len(x) + 1, name="issue_wd")
        counts = Signal(data.ArrayLayout(unsigned(count_bits), n_mask), name="issue_counts")
        busy, ev_ready = Signal(name="issue_stage_busy"), Signal(name="issue_ev_ready")
        mask = Signal(n_mask, name="issue_mask")
        lowest = Signal(n_mask, name="issue_lowest")
        with m.Switch(active):
            for sid, s in specs.items():
                with m.Case(sid):
                    m.d.comb += [is_conv.eq(s.is_conv), replay.eq(s.static_replay),
                                 tok_last.eq(s.positions - 1), x_last.eq(s.wd - 1),
                                 h.eq(s.h), wd.eq(s.wd),
                                 chunk_last.eq(-(-len(s.word_counts) // n_mask) - 1),
                                 col_base.eq(s.col_base), counts.eq(chunk_words[sid]),
                                 busy.eq(s.busy), ev_ready.eq(s.ev.ready)]
        nonzero = Signal(n_mask, name="issue_nonzero")
        m.d.comb += nonzero.eq(Cat(*[counts[i] != 0 for i in range(n_mask)]))
        low_count = Signal(count_bits, name="issue_low_count")
        if count_bits > 1:
            m.d.comb += low_count.eq(or_all([counts[i] & lowest[i].replicate(count_bits)
                                             for i in range(n_mask)]))
        else:               # a mask bit is set only where the count is 1
            m.d.comb += low_count.eq(1)

        dy, dx = Signal(signed(3), name="issue_dy"), Signal(signed(3), name="issue_dx")
        inside = Signal(name="issue_inside")
        with m.Switch(tap):
            for k in range(9):
                with m.Case(k):
                    m.d.comb += [dy.eq(k // 3 - 1), dx.eq(k % 3 - 1)]
        m.d.comb += [ny.eq(y + dy), nx.eq(x + dx),
                     inside.eq((ny >= 0) & (ny < h) & (nx >= 0) & (nx < wd))]

        # event emitter: `lowest` is the lowest set bit of `mask` (x & -x, a carry chain), kept
        # in a register beside it, so the chain sits between registers, not in the event path

        def set_mask(value):
            rest = Signal(n_mask, name="issue_mask_next")
            m.d.comb += rest.eq(value)
            m.d.sync += [mask.eq(rest), lowest.eq(rest & (~rest + 1))]
        # The event's engine column: a base (the stage's first engine column, plus the chunk's
        # first channel and, for a conv, * 9 + tap), registered a cycle ahead of EMIT (tap,
        # chunk and stage change at least a cycle before it), plus the lowest set bit's index
        # (* 9 for a conv): an OR of constants, so one adder sits between mask and engine.
        max_index = max(s.col_base + (9 if s.is_conv else 1) * len(s.word_counts)
                        for s in specs.values())
        index_base = Signal(range(max_index + 1), name="issue_index_base")
        low_scaled = Signal(range(max(9 * n_mask, 2)), name="issue_low_scaled")
        width = len(low_scaled)
        m.d.comb += low_scaled.eq(or_all(
            [Mux(is_conv, Const(9 * c, width), Const(c, width)) & lowest[c].replicate(width)
             for c in range(1, n_mask)]))
        m.d.sync += index_base.eq(col_base + Mux(is_conv, chunk * (9 * n_mask) + tap,
                                                 chunk * n_mask))
        ev_valid, ev_end = Signal(name="issue_ev_valid"), Signal(name="issue_ev_end")
        ev_index = Signal(bits_for(max_index), name="issue_ev_index")
        for sid, s in specs.items():
            m.d.comb += [s.ev.valid.eq(ev_valid & (active == sid)),
                         s.ev.payload.index.eq(ev_index), s.ev.payload.count.eq(low_count),
                         s.ev.payload.end.eq(ev_end)]

        start = or_all([s.start for s in specs.values()])

        def begin():
            m.d.sync += [token.eq(0), step.eq(0), y.eq(0), x.eq(0), tap.eq(0), chunk.eq(0),
                         run_cycles.eq(1)]
            for s in specs.values():
                with m.If(s.start):
                    m.d.sync += s.busy.eq(1)
            m.next = "FETCH"

        def next_tap():
            with m.If(tap == 8):
                m.next = "END"
            with m.Else():
                m.d.sync += tap.eq(tap + 1)
                m.next = "FETCH"

        with m.FSM(name="issue"):
            with m.State("IDLE"):
                with m.If(start):
                    begin()
            with m.State("FETCH"):
                # the read address is valid this cycle; data arrives next cycle
                m.next = "LOAD_MASK"
                with m.If(is_conv & ~inside):   # a tap outside the image: 1 cycle, not 3
                    next_tap()
            with m.State("LOAD_MASK"):
                set_mask(nonzero)
                m.next = "EMIT"
            with m.State("EMIT"):
                # the read address is held, so the source word stays valid while emitting
                with m.If(mask != 0):
                    m.d.comb += [ev_valid.eq(1), ev_index.eq(index_base + low_scaled)]
                    with m.If(ev_ready):
                        set_mask(mask & ~lowest)
                with m.Elif(chunk != chunk_last):       # the next chunk of the same word
                    m.d.sync += chunk.eq(chunk + 1)
                    m.next = "LOAD_MASK"
                with m.Else():
                    m.d.sync += chunk.eq(0)
                    with m.If(is_conv):
                        next_tap()
                    with m.Else():
                        m.next = "END"
            with m.State("END"):
                m.d.comb += [ev_valid.eq(1), ev_end.eq(1)]
                with m.If(ev_ready):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += tap.eq(0)
                with m.If((step == T - 1) | replay):
                    m.d.sync += step.eq(0)
                    with m.If(token == tok_last):
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += token.eq(token + 1)
                        with m.If(x == x_last):
                            m.d.sync += [x.eq(0), y.eq(y + 1)]
                        with m.Else():
                            m.d.sync += x.eq(x + 1)
                        m.next = "FETCH"
                with m.Else():
                    m.d.sync += step.eq(step + 1)
                    m.next = "FETCH"
            with m.State("DRAIN"):
                # the collector ends the stage; the next one may start in that very cycle
                with m.If(start):
                    begin()
                with m.Elif(~busy):
                    m.next = "IDLE"
