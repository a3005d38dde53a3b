"""The one issue FSM of every conv and matmul stage (see `IssueFSM`)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw import timing
from hw.accelerator.util import or_all

__all__ = ["IssuedStage", "IssueFSM"]


@dataclass(frozen=True)
class IssuedStage:
    """What the issue FSM needs of one conv or matmul stage."""
    id: int                 # the sequencer's `active` value while the stage runs
    is_conv: bool           # nine taps per position (a 3x3 conv), else one
    static_replay: bool     # a static first conv: step 0 only (its feeder replays the rest)
    height: int             # the positions it runs at: a conv's plane, 1 x tokens
    width: int
    col_base: int           # its first engine column (0: a rank-factored engine of its own)
    inputs: int             # input channels: counts in its source word
    count_bits: int         # width of a count

    @property
    def positions(self) -> int:
        return self.height * self.width


class IssueFSM(wiring.Component):
    """The engine events of the active conv or matmul stage, from its source words.

    The stages run one after the other, so they take turns on one issue FSM: ``active``
    selects the stage's constants and source word (``word<id>``). Loop order tokens outer,
    time steps inner, the nine taps innermost for a conv. Per (token, step, tap): FETCH (the
    source read's address, ``step`` and ``token`` or ``ny``/``nx``, is valid; a conv tap
    outside the image ends here), then per chunk of `chunk` input channels LOAD_MASK (the
    chunk's non-zero counts into `mask`) and EMIT (one event per set bit, lowest first: isolated
    as mask & -mask, a carry chain, and encoded by OR trees of log depth; the last event's
    acceptance moves on, and a chunk without events costs one EMIT cycle), then after the last
    tap END (the end marker). END steps the read address on to the next vector, so its
    acceptance goes straight to the next vector's LOAD_MASK (its FETCH overlaps END; a conv's
    first tap outside the image still takes its FETCH cycle). Chunks keep the
    mask, its carry chain and the encoders `chunk` wide, not as wide as the widest value (an
    MLP's hidden layer); the source word stays on the read port meanwhile. A static first conv
    issues step 0 only. hw/cycles.py models it cycle for cycle.

    With ``prefetch`` (hw.plan `Plan.issue_prefetch`: more than one lane, where the issue FSM
    rather than the engine bounds a layer) a word is needed no longer than its last chunk's
    LOAD_MASK: the mask holds the events and a register (`held`) the chunk's counts. So the
    read address moves on there, to a conv's next tap inside the image or to the next vector:
    the next tap's LOAD_MASK follows the last event at once (no FETCH between taps, none for
    taps outside the image), and the next vector's first chunk is loaded as the END is taken
    (no LOAD_MASK cycle), except where its tap 0 lies outside the image: then one FETCH cycle
    jumps to its first tap inside, and another fetches it.

    Members
    -------
    start : In(1)
        A stage starts (a pulse; ``active`` names it from the next cycle on).
    active : In(range(ids))
    stage_busy : In(1)
        The active stage has not ended yet (its collector's last record): DRAIN waits for it.
    word<id> : In(inputs * count_bits), one per stage
        Its source word: the counts at the read address, one cycle after it.
    step, token : Out(...); ny, nx : Out(signed(...))
        The read address: step and token (matmul), or the conv tap's source position.
    events : Out(stream.Signature({index, count, end}))
        Engine column (the stage's base + input channel, * 9 + tap for a conv), the count, and
        the end marker after a vector's last event.
    """

    #: FETCH and LOAD_MASK (each tap or chunk), the cycle a chunk without events costs in EMIT,
    #: and END after a vector (hw.timing, the cycle model's; tests/hw/accelerator/test_issue.py)
    FETCH_CYCLES, LOAD_CYCLES = timing.ISSUE_FETCH, timing.ISSUE_LOAD_MASK
    EMPTY_CYCLES, END_CYCLES = timing.ISSUE_EMPTY_MASK, timing.ISSUE_END

    def __init__(self, stages, timesteps: int, chunk: int, prefetch: bool = False):
        self._stages = list(stages)
        self._T = timesteps
        self._prefetch = bool(prefetch)
        widest = max(max(s.inputs for s in self._stages), 1)
        self._n_mask = min(widest, chunk)
        self._chunks = -(-widest // self._n_mask)
        self._count_bits = max(s.count_bits for s in self._stages)
        self._max_index = max(s.col_base + (9 if s.is_conv else 1) * s.inputs
                              for s in self._stages)
        conv = [s for s in self._stages if s.is_conv]
        h = max([s.height for s in conv], default=1)
        wd = max(s.width for s in self._stages)
        members = {
            "start": In(1), "active": In(range(max(s.id for s in self._stages) + 3)),
            "stage_busy": In(1),
            "step": Out(range(timesteps)),
            "token": Out(range(max(s.positions for s in self._stages))),
            "ny": Out(signed(bits_for(h) + 2)), "nx": Out(signed(bits_for(wd) + 2)),
            "events": Out(stream.Signature(data.StructLayout({
                "index": unsigned(bits_for(self._max_index)),
                "count": unsigned(self._count_bits), "end": 1}))),
        }
        for s in self._stages:
            members[f"word{s.id}"] = In(s.inputs * s.count_bits)
        self._h, self._wd = h, wd
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        r = self._registers()
        k = self._stage_constants(m, r)
        self._tap_position(m, r, k)
        e = self._emitter(m, r, k)
        self._fsm(m, r, k, e)
        return m

    def _registers(self):
        return SimpleNamespace(
            y=Signal(range(self._h), name="y"), x=Signal(range(self._wd), name="x"),
            tap=Signal(range(10), name="tap"), chunk=Signal(range(self._chunks), name="chunk"),
            mask=Signal(self._n_mask, name="mask"), lowest=Signal(self._n_mask, name="lowest"),
            finishing=Signal(name="finishing"),
            # prefetch: the tap's counts, and whether a tap inside the image follows it
            held=Signal(data.ArrayLayout(unsigned(self._count_bits), self._n_mask),
                        name="held") if self._prefetch and self._count_bits > 1 else None,
            more_taps=Signal(name="more_taps") if self._prefetch else None)

    def _stage_constants(self, m, r):
        """The active stage's constants and its chunk of source counts: every stage's word is
        one signal (counts widened to count_bits), so the chunk is one selection, shared by
        the mask and the event count."""
        n_mask, bits = self._n_mask, self._count_bits
        k = SimpleNamespace(
            is_conv=Signal(name="is_conv"), replay=Signal(name="replay"),
            tok_last=Signal.like(self.token, name="token_last"),
            x_last=Signal.like(r.x, name="x_last"), h=Signal(len(r.y) + 1, name="h"),
            wd=Signal(len(r.x) + 1, name="wd"), chunk_last=Signal.like(r.chunk, name="chunk_last"),
            col_base=Signal(range(max(s.col_base for s in self._stages) + 1), name="col_base"),
            counts=Signal(data.ArrayLayout(unsigned(bits), n_mask), name="counts"),
            ev_ready=Signal(name="ev_ready"))
        chunk_words = {}
        for s in self._stages:
            n = -(-s.inputs // n_mask)
            word = Signal(n * n_mask * bits, name=f"word_{s.id}")
            pad = bits - s.count_bits
            source = getattr(self, f"word{s.id}")
            m.d.comb += word.eq(Cat(*[Cat(source[c * s.count_bits:(c + 1) * s.count_bits],
                                          Const(0, pad)) if pad else
                                      source[c * s.count_bits:(c + 1) * s.count_bits]
                                      for c in range(s.inputs)]))
            chunk_words[s.id] = word if n == 1 else \
                word.word_select(r.chunk[:bits_for(n - 1)], n_mask * bits)
        with m.Switch(self.active):
            for s in self._stages:
                with m.Case(s.id):
                    m.d.comb += [k.is_conv.eq(s.is_conv), k.replay.eq(s.static_replay),
                                 k.tok_last.eq(s.positions - 1), k.x_last.eq(s.width - 1),
                                 k.h.eq(s.height), k.wd.eq(s.width),
                                 k.chunk_last.eq(-(-s.inputs // n_mask) - 1),
                                 k.col_base.eq(s.col_base), k.counts.eq(chunk_words[s.id])]
        m.d.comb += k.ev_ready.eq(self.events.ready)
        return k

    def _tap_position(self, m, r, k):
        """The conv tap's source position, and whether it lies inside the image."""
        dy, dx = Signal(signed(3), name="dy"), Signal(signed(3), name="dx")
        k.inside = Signal(name="inside")
        with m.Switch(r.tap):
            for tap in range(9):
                with m.Case(tap):
                    m.d.comb += [dy.eq(tap // 3 - 1), dx.eq(tap % 3 - 1)]
        m.d.comb += [self.ny.eq(r.y + dy), self.nx.eq(r.x + dx),
                     k.inside.eq((self.ny >= 0) & (self.ny < k.h) &
                                 (self.nx >= 0) & (self.nx < k.wd))]
        if self._prefetch:
            self._next_inside_tap(m, r, k)

    def _next_inside_tap(self, m, r, k):
        """Prefetch: the first tap after ``tap`` inside the image (``next_tap``) and whether
        there is one (``has_next``), from the position's four edges: a priority choice over
        the taps after it. The centre tap is always inside, so from tap 0 there is one."""
        row_ok = [r.y != 0, Const(1), r.y != k.h - 1]
        col_ok = [r.x != 0, Const(1), r.x != k.wd - 1]
        inside = [row_ok[t // 3] & col_ok[t % 3] for t in range(9)]
        k.next_tap = Signal.like(r.tap, name="next_tap")
        k.has_next = Signal(name="has_next")
        with m.Switch(r.tap):
            for tap in range(8):
                with m.Case(tap):
                    for later in reversed(range(tap + 1, 9)):   # the lowest one wins
                        with m.If(inside[later]):
                            m.d.comb += [k.next_tap.eq(later), k.has_next.eq(1)]

    def _emitter(self, m, r, k):
        """The event: its count, and its engine column. `lowest` is the lowest set bit of
        `mask` (x & -x, a carry chain), kept in a register beside it, so the chain sits
        between registers, not in the event path. The column is a base (the stage's first
        engine column, plus the chunk's first channel and, for a conv, * 9 + tap), registered
        a cycle ahead of EMIT, plus the lowest set bit's index (* 9 for a conv): an OR of
        constants, so one adder sits between mask and engine."""
        n_mask, bits = self._n_mask, self._count_bits
        nonzero = Signal(n_mask, name="nonzero")
        m.d.comb += nonzero.eq(Cat(*[k.counts[i] != 0 for i in range(n_mask)]))
        low_count = Signal(bits, name="low_count")
        if bits > 1:
            counts = k.counts if r.held is None else r.held     # prefetch: the word moved on
            m.d.comb += low_count.eq(or_all([counts[i] & r.lowest[i].replicate(bits)
                                             for i in range(n_mask)]))
        else:               # a mask bit is set only where the count is 1
            m.d.comb += low_count.eq(1)
        index_base = Signal(range(self._max_index + 1), name="index_base")
        low_scaled = Signal(range(max(9 * n_mask, 2)), name="low_scaled")
        width = len(low_scaled)
        m.d.comb += low_scaled.eq(or_all(
            [Mux(k.is_conv, Const(9 * c, width), Const(c, width)) & r.lowest[c].replicate(width)
             for c in range(1, n_mask)]))
        base = k.col_base + Mux(k.is_conv, r.chunk * (9 * n_mask) + r.tap, r.chunk * n_mask)
        if self._prefetch:      # the tap moves on during EMIT: the base is the loaded chunk's
            k.index_base = index_base
            k.index_base_next = base
        else:
            m.d.sync += index_base.eq(base)
        m.d.comb += [self.events.payload.count.eq(low_count)]
        # the mask once the event is taken, and its lowest bit: from registers only, so the
        # engine's ready (a long path from its walker) only enables the registers' update
        taken_mask = Signal(n_mask, name="taken_mask")
        taken_lowest = Signal(n_mask, name="taken_lowest")
        m.d.comb += [taken_mask.eq(r.mask & ~r.lowest),
                     taken_lowest.eq(taken_mask & (~taken_mask + 1))]
        # the event on offer is the chunk's last: one bit left (from registers too)
        return SimpleNamespace(nonzero=nonzero, index=index_base + low_scaled,
                               taken_mask=taken_mask, taken_lowest=taken_lowest,
                               last_event=r.mask == r.lowest)

    def _set_mask(self, m, r, value):
        rest = Signal(self._n_mask, name="mask_next")
        m.d.comb += rest.eq(value)
        m.d.sync += [r.mask.eq(rest), r.lowest.eq(rest & (~rest + 1))]

    def _fsm(self, m, r, k, e):
        T, token, step = self._T, self.token, self.step
        ev = self.events

        def begin():
            m.d.sync += [token.eq(0), step.eq(0), r.y.eq(0), r.x.eq(0), r.tap.eq(0),
                         r.chunk.eq(0), r.finishing.eq(0)]
            m.next = "FETCH"

        # the read address moves on to the next vector as END begins (`vector_over`), so its
        # source word is on the read port by the time the end marker is taken (`finishing`:
        # none left); one block of counter updates for every way into END
        vector_over, chunk_over = Signal(name="vector_over"), Signal(name="chunk_over")
        with m.If(vector_over):
            m.d.sync += r.tap.eq(0)
            with m.If((step == T - 1) | k.replay):
                m.d.sync += step.eq(0)
                with m.If(token == k.tok_last):
                    m.d.sync += r.finishing.eq(1)
                with m.Else():
                    m.d.sync += token.eq(token + 1)
                    with m.If(r.x == k.x_last):
                        m.d.sync += [r.x.eq(0), r.y.eq(r.y + 1)]
                    with m.Else():
                        m.d.sync += r.x.eq(r.x + 1)
            with m.Else():
                m.d.sync += step.eq(step + 1)

        def enter_end():
            m.d.comb += vector_over.eq(1)
            m.next = "END"

        def next_tap():
            with m.If(r.tap == 8):
                enter_end()
            with m.Else():
                m.d.sync += r.tap.eq(r.tap + 1)
                m.next = "FETCH"

        def chunk_done():           # the next chunk of the same word, the next tap, or END
            with m.If(r.chunk != k.chunk_last):
                m.d.sync += r.chunk.eq(r.chunk + 1)
                m.next = "LOAD_MASK"
            with m.Else():
                m.d.sync += r.chunk.eq(0)
                if self._prefetch:  # the address moved on at LOAD_MASK: its word is there
                    with m.If(r.more_taps):
                        m.next = "LOAD_MASK"
                    with m.Else():
                        m.next = "END"
                else:
                    with m.If(k.is_conv):
                        next_tap()
                    with m.Else():
                        enter_end()

        def load_chunk():           # LOAD_MASK: the chunk's events into the mask, then EMIT
            self._set_mask(m, r, e.nonzero)
            m.next = "EMIT"
            if self._prefetch:
                # the mask (and `held`) keep the chunk: after the word's last chunk the address
                # moves on, to the conv's next tap inside the image or to the next vector
                m.d.sync += k.index_base.eq(k.index_base_next)
                if r.held is not None:
                    m.d.sync += r.held.eq(k.counts)
                with m.If(r.chunk == k.chunk_last):
                    with m.If(k.is_conv & k.has_next):
                        m.d.sync += [r.tap.eq(k.next_tap), r.more_taps.eq(1)]
                    with m.Else():
                        m.d.comb += vector_over.eq(1)
                        m.d.sync += r.more_taps.eq(0)

        with m.FSM(name="issue"):
            with m.State("IDLE"):
                with m.If(self.start):
                    begin()
            with m.State("FETCH"):
                # the read address is valid this cycle; data arrives next cycle
                m.next = "LOAD_MASK"
                with m.If(k.is_conv & ~k.inside):   # a tap outside the image: 1 cycle, not 3
                    if self._prefetch:              # on to the first tap inside
                        m.d.sync += r.tap.eq(k.next_tap)
                        m.next = "FETCH"
                    else:
                        next_tap()
            with m.State("LOAD_MASK"):
                load_chunk()
            with m.State("EMIT"):
                # the read address is held, so the source word stays valid while emitting;
                # the chunk is over as its last event is taken, or at once without events
                with m.If(r.mask != 0):
                    m.d.comb += [ev.valid.eq(1), ev.payload.index.eq(e.index),
                                 chunk_over.eq(k.ev_ready & e.last_event)]
                    with m.If(k.ev_ready):      # ready only enables: the carry chain is before
                        m.d.sync += [r.mask.eq(e.taken_mask), r.lowest.eq(e.taken_lowest)]
                with m.Else():
                    m.d.comb += chunk_over.eq(1)
                with m.If(chunk_over):
                    chunk_done()
            with m.State("END"):
                # the address is the next vector's (its word was fetched meanwhile): its
                # acceptance moves on to LOAD_MASK, to FETCH where the next vector's first tap
                # lies outside the image (FETCH skips it), or to DRAIN after the last vector
                m.d.comb += [ev.valid.eq(1), ev.payload.end.eq(1)]
                with m.If(k.ev_ready):
                    with m.If(r.finishing):
                        m.next = "DRAIN"
                    with m.Elif(k.is_conv & ~k.inside):
                        m.next = "FETCH"
                    with m.Else():
                        if self._prefetch:      # its word has been there since LOAD_MASK
                            load_chunk()
                        else:
                            m.next = "LOAD_MASK"
            with m.State("DRAIN"):
                # the collector ends the stage; the next one may start in that very cycle
                with m.If(self.start):
                    begin()
                with m.Elif(~self.stage_busy):
                    m.next = "IDLE"
