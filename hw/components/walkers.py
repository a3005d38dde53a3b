"""Event-driven sparse matrix-vector product with P free walkers (docs/HARDWARE.md, "Which
engine makes lanes pay").

The streams and their protocol are :class:`~hw.components.sparse.SparseMatmulEngine`'s: events
``{index, count, end}`` in, one vector's results ``{row, acc}`` (one walker) or ``{group,
acc[P]}`` out in row order. What differs is how P lanes work. Here each of the P *walkers*
takes a whole event (column) and walks its stored entries one per cycle into accumulators of
its own; an event goes to the lowest-numbered walker that is free, so a column costs one walker
its size, not every lane its fullest part, and a sparse matrix's short columns keep every
walker busy. At the drain the P walkers' accumulators of a row are summed (an adder tree per
lane), P rows per result.

Two or more accumulator banks let the walkers run ahead: once a vector's end marker has been
taken, the next vector's events are walked into the next bank while the last walkers finish
this one and it drains. A bank is drained once no walker holds one of its events, in vector
order, and takes new events only once drained; a drain starts as early as the cycle the drain
before issues its last result, so drains follow each other back to back.

Memories: the column-extent ROM (one read port, one event per cycle), an entry table per
walker (its own read port; a copy each), and per walker, bank and lane an accumulator memory of
ceil(out_features / P) words. The accelerator's shared engine from two lanes on (hw.plan
ENGINES); its timing is `hw.timing.WalkerTiming`, which the cycle model uses too.
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.components import block_ram_attrs, check_int, tree_sum
from hw.components.sparse import (CYCLE_COUNTER_WIDTH, add_cycle_counter, check_engine_matrix,
                                  engine_layouts)
from hw.timing import WalkerTiming
from model.ir.csc import dense_from_csc
from model.ir.intops import signed_bits

__all__ = ["WalkerMatmulEngine"]


class WalkerMatmulEngine(wiring.Component):
    """y = W x over a CSC matrix with `walkers` = P free walkers and `banks` accumulator banks.

    Parameters are SparseMatmulEngine's (``in_features``, ``out_features``, ``col_ptr``,
    ``row_idx``, ``values``, ``in_max``, ``acc_width``, ``variable_rows``) with ``walkers`` for
    ``lanes``: P walkers, P rows per result, and ``banks`` (default 2): vectors in flight, one
    being walked while the ones before drain or wait for their drain. Members as
    SparseMatmulEngine's: ``i``, ``o``, ``cycles`` and, with ``variable_rows``, ``rows``.

    Cycles of one vector, events offered every cycle and ``o`` always ready: `cycles_for`, from
    `hw.timing.WalkerTiming` (tests/hw/components/test_walkers.py checks it against the RTL).
    With one walker it is SparseMatmulEngine's formula.
    """

    def __init__(self, in_features, out_features, col_ptr, row_idx, values, in_max, acc_width,
                 walkers=1, variable_rows=False, banks=2):
        (self._in_features, self._out_features, self._col_ptr, self._row_idx, self._values,
         self._in_max, self._acc_width) = check_engine_matrix(
            in_features, out_features, col_ptr, row_idx, values, in_max, acc_width)
        self._walkers = check_int(walkers, "walkers", minimum=1)
        if self._walkers > self._out_features:
            raise ValueError(f"walkers {self._walkers} exceeds out_features "
                             f"{self._out_features}: a result carries one row per walker")
        self._banks = check_int(banks, "banks", minimum=2)
        self._groups = -(-self._out_features // self._walkers)
        self._variable_rows = bool(variable_rows)
        self._event_layout, self._result_layout = engine_layouts(
            self._in_features, self._out_features, self._in_max, self._acc_width, self._walkers)
        members = {"i": In(stream.Signature(self._event_layout)),
                   "o": Out(stream.Signature(self._result_layout)),
                   "cycles": Out(CYCLE_COUNTER_WIDTH)}
        if self._variable_rows:
            members["rows"] = In(range(1, self._out_features + 1), init=self._out_features)
        super().__init__(members)

    in_features = property(lambda self: self._in_features)
    out_features = property(lambda self: self._out_features)
    walkers = property(lambda self: self._walkers)
    lanes = property(lambda self: self._walkers)
    event_layout = property(lambda self: self._event_layout)
    result_layout = property(lambda self: self._result_layout)

    def weight_matrix(self) -> np.ndarray:
        return dense_from_csc(self._col_ptr, self._row_idx, self._values, self._out_features,
                              self._in_features)

    @property
    def entry_layout(self) -> data.StructLayout:
        """One stored entry: its row as (lane = row mod P, local = row div P), and its value."""
        value_bits = signed_bits(int(self._values.min(initial=0)),
                                 int(self._values.max(initial=0)))
        fields = {"local": unsigned(bits_for(self._groups - 1)), "value": signed(value_bits)}
        if self._walkers > 1:
            fields["lane"] = unsigned(bits_for(self._walkers - 1))
        return data.StructLayout(fields)

    def entries_init(self) -> list[dict]:
        P = self._walkers
        out = []
        for r, v in zip(self._row_idx, self._values):
            entry = {"local": int(r) // P, "value": int(v)}
            if P > 1:
                entry["lane"] = int(r) % P
            out.append(entry)
        return out

    def cycles_for(self, indices, rows: int | None = None) -> int:
        """Exact cycles of one vector whose events name the input columns `indices` (in order),
        at full rate: from its first accepted transfer through its last result transfer."""
        ((first, last),) = self.schedule([indices], None if rows is None else [rows])
        return last - first + 1

    def schedule(self, vectors, rows=None) -> list[tuple[int, int]]:
        """(first accepted transfer, last result transfer) cycles of every vector, each a list of
        input columns in event order, sent back to back at full rate (each item offered the
        cycle after the one before was accepted, results always taken), `rows` drained per
        vector (default out_features): `hw.timing.WalkerTiming`, the engine's one timing
        definition."""
        sizes = np.diff(self._col_ptr)
        rows = [self._out_features] * len(vectors) if rows is None else list(rows)
        timing = WalkerTiming(self._walkers, self._banks)
        offer, out = 0, []
        for columns, drained in zip(vectors, rows):
            first = None
            for j in columns:
                a = timing.event(offer, int(sizes[j]))
                first, offer = a if first is None else first, a + 1
            a, result = timing.end(offer)
            first, offer = a if first is None else first, a + 1
            last = result + -(-drained // self._walkers) - 1     # every result taken at once
            timing.drained(last, last)
            out.append((first, last))
        return out

    def elaborate(self, platform):
        m = Module()
        P, walkers = self._walkers, range(self._walkers)
        groups = self._groups
        row_shape = unsigned(bits_for(groups - 1))
        count_shape = self._event_layout["count"].shape

        # ---- tables
        pointer_shape = unsigned(bits_for(len(self._row_idx)))
        extent_layout = data.StructLayout({"start": pointer_shape, "end": pointer_shape})
        m.submodules.columns = columns = Memory(
            shape=extent_layout, depth=self._in_features,
            attrs=block_ram_attrs(extent_layout, self._in_features),
            init=[{"start": int(self._col_ptr[j]), "end": int(self._col_ptr[j + 1])}
                  for j in range(self._in_features)])
        column_read = columns.read_port()
        entry_layout, entries = self.entry_layout, self.entries_init()
        depth = max(len(entries), 1)
        entry_read = []
        for w in walkers:
            table = Memory(shape=entry_layout, depth=depth, init=entries,
                           attrs=block_ram_attrs(entry_layout, depth))
            m.submodules[f"entries{w}"] = table
            entry_read.append(table.read_port())
        banks = range(self._banks)
        acc_write = [[[None] * P for _ in banks] for _ in walkers]
        acc_read = [[[None] * P for _ in banks] for _ in walkers]
        for w in walkers:
            for b in banks:
                for p in range(P):
                    bank = Memory(shape=signed(self._acc_width), depth=groups, init=[],
                                  attrs=block_ram_attrs(signed(self._acc_width), groups))
                    m.submodules[f"acc_w{w}_b{b}_l{p}"] = bank
                    acc_write[w][b][p] = bank.write_port()
                    acc_read[w][b][p] = bank.read_port(transparent_for=(acc_write[w][b][p],))

        # ---- intake: the fetch stage holds one accepted event (its extent being read) or the
        # end marker; an event leaves for the lowest free walker, the end marker closes the bank
        fetch_valid, fetch_end = Signal(), Signal()
        fetch_count = Signal(count_shape)
        bank_shape = range(self._banks)

        def next_bank(bank):
            return Mux(bank == self._banks - 1, 0, bank + 1)

        in_bank = Signal(bank_shape)
        closed = Signal(self._banks)            # per bank: end marker taken, not drained
        busy = [Signal(name=f"busy{w}") for w in walkers]
        pointer = [Signal(pointer_shape, name=f"pointer{w}") for w in walkers]
        stop = [Signal(pointer_shape, name=f"stop{w}") for w in walkers]
        walk_count = [Signal(count_shape, name=f"walk_count{w}") for w in walkers]
        walk_bank = [Signal(bank_shape, name=f"walk_bank{w}") for w in walkers]
        free = [~busy[w] | (pointer[w] + 1 >= stop[w]) for w in walkers]
        any_free = free[0]
        for f in free[1:]:
            any_free = any_free | f
        leaving = fetch_valid & (fetch_end | any_free)
        accept = Signal()
        m.d.comb += [
            # the next vector's first event enters as the end marker leaves, if its bank is free
            self.i.ready.eq(Mux(leaving & fetch_end, ~closed.bit_select(next_bank(in_bank), 1),
                                ~closed.bit_select(in_bank, 1) &
                                (~fetch_valid | leaving))),
            accept.eq(self.i.valid & self.i.ready),
            column_read.addr.eq(self.i.p.index), column_read.en.eq(accept),
        ]
        with m.If(accept):
            m.d.sync += [fetch_valid.eq(1), fetch_count.eq(self.i.p.count),
                         fetch_end.eq(self.i.p.end)]
        with m.Elif(leaving):
            m.d.sync += fetch_valid.eq(0)
        with m.If(leaving & fetch_end):
            m.d.sync += in_bank.eq(next_bank(in_bank))

        # ---- walkers: the lowest free one takes the event; each issues one entry per cycle
        taken = fetch_valid & ~fetch_end
        ports = []
        for w in walkers:
            load = taken & free[w]
            for lower in range(w):
                load = load & ~free[lower]
            issue = busy[w] & (pointer[w] < stop[w])
            with m.If(load):
                m.d.sync += [busy[w].eq(1), pointer[w].eq(column_read.data.start),
                             stop[w].eq(column_read.data.end), walk_count[w].eq(fetch_count),
                             walk_bank[w].eq(in_bank)]
            with m.Elif(free[w]):
                m.d.sync += busy[w].eq(0)
            with m.Else():
                m.d.sync += pointer[w].eq(pointer[w] + 1)
            m.d.comb += [entry_read[w].addr.eq(pointer[w]), entry_read[w].en.eq(1)]
            entry_valid = Signal(name=f"entry_valid{w}")
            entry_count = Signal(count_shape, name=f"entry_count{w}")
            entry_bank = Signal(bank_shape, name=f"entry_bank{w}")
            m.d.sync += [entry_valid.eq(issue), entry_count.eq(walk_count[w]),
                         entry_bank.eq(walk_bank[w])]
            update_valid = Signal(name=f"update_valid{w}")
            update_bank = Signal(bank_shape, name=f"update_bank{w}")
            update_local = Signal(row_shape, name=f"update_local{w}")
            update_lane = Signal(range(P), name=f"update_lane{w}")
            update_term = Signal(signed(entry_layout["value"].shape.width +
                                        count_shape.width + 1), name=f"update_term{w}")
            entry = entry_read[w].data
            m.d.sync += [update_valid.eq(entry_valid), update_bank.eq(entry_bank),
                         update_local.eq(entry.local),
                         update_term.eq(entry.value * entry_count)]
            if P > 1:
                m.d.sync += update_lane.eq(entry.lane)
            ports.append((entry, update_valid, update_bank, update_local, update_lane,
                          update_term))

        # ---- drain: the oldest closed bank once no walker holds one of its events. A drain
        # starts at the latest in the cycle the one before issues its last group, so the drains
        # of consecutive vectors follow each other without a gap; the bank whose last result
        # still waits on ``o`` keeps its read port (and is reopened by that result's transfer)
        issuing = Signal()
        drain_bank, drain_next = Signal(bank_shape), Signal(bank_shape)
        drain_row, out_row = Signal(row_shape), Signal(row_shape)
        out_bank = Signal(bank_shape)
        holding = Signal()
        held = [busy[w] & (walk_bank[w] == drain_next) for w in walkers]
        any_held = held[0]
        for h in held[1:]:
            any_held = any_held | h
        if self._variable_rows:
            drain_base = Signal(range(groups * P + 1))
            drain_last = drain_base + P >= self.rows
            drain_live = [drain_base + p < self.rows for p in range(P)]
        else:
            drain_last = drain_row == groups - 1
            tail = self._out_features - (groups - 1) * P
            drain_live = [1 if p < tail else drain_row != groups - 1 for p in range(P)]
        out_live = Signal(P)
        out_last = Signal()
        advance = ~self.o.valid | self.o.ready
        transfer = self.o.valid & self.o.ready
        drain_start = Signal()
        # a closed bank waits for its drain (`pending`) until the drain starts; it stays closed
        # until its last result's transfer
        pending = Signal(self._banks)
        m.d.comb += [holding.eq(any_held),
                     drain_start.eq(pending.bit_select(drain_next, 1) & ~holding &
                                    (~issuing | (advance & drain_last)))]
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(issuing), out_row.eq(drain_row),
                         out_bank.eq(drain_bank), out_last.eq(drain_last)]
            m.d.sync += [out_live[p].eq(drain_live[p]) for p in range(P)]
            with m.If(issuing):
                m.d.sync += drain_row.eq(drain_row + 1)
                if self._variable_rows:
                    m.d.sync += drain_base.eq(drain_base + P)
                with m.If(drain_last):
                    m.d.sync += issuing.eq(0)
        with m.If(drain_start):         # after the last issue's updates: these win
            m.d.sync += [issuing.eq(1), drain_bank.eq(drain_next),
                         drain_next.eq(next_bank(drain_next)),
                         drain_row.eq(0)]
            if self._variable_rows:
                m.d.sync += drain_base.eq(0)
        for b in banks:         # the end marker closes the intake bank, its drain reopens it
            with m.If(leaving & fetch_end & (in_bank == b)):
                m.d.sync += [closed[b].eq(1), pending[b].eq(1)]
            with m.Else():
                with m.If(transfer & out_last & (out_bank == b)):
                    m.d.sync += closed[b].eq(0)
                with m.If(drain_start & (drain_next == b)):
                    m.d.sync += pending[b].eq(0)

        # ---- accumulator ports: a bank being drained is read (and cleared) by the drain, and
        # holds its read while its result waits on ``o``; another by its walkers' updates
        for w, (entry, u_valid, u_bank, u_local, u_lane, u_term) in enumerate(ports):
            for b in banks:
                for p in range(P):
                    read, write = acc_read[w][b][p], acc_write[w][b][p]
                    with m.If(issuing & (drain_bank == b)):
                        m.d.comb += [read.addr.eq(drain_row), read.en.eq(advance)]
                    with m.Elif(self.o.valid & (out_bank == b)):
                        m.d.comb += [read.addr.eq(drain_row), read.en.eq(0)]
                    with m.Else():
                        m.d.comb += [read.addr.eq(entry.local), read.en.eq(1)]
                    hit = u_valid & (u_bank == b) & (u_lane == p if P > 1 else 1)
                    with m.If(hit):
                        m.d.comb += [write.addr.eq(u_local), write.data.eq(read.data + u_term),
                                     write.en.eq(1)]
                    with m.Else():
                        m.d.comb += [write.addr.eq(out_row), write.data.eq(0),
                                     write.en.eq(transfer & (out_bank == b))]
        # the result: each walker's accumulator of the output bank, summed per lane
        if P == 1:
            m.d.comb += self.o.p.row.eq(out_row)
        else:
            m.d.comb += self.o.p.group.eq(out_row)
        for p in range(P):
            parts = []
            for w in walkers:
                part = Signal(signed(self._acc_width), name=f"out_w{w}_l{p}")
                with m.Switch(out_bank):
                    for b in banks:
                        with m.Case(b):
                            m.d.comb += part.eq(acc_read[w][b][p].data)
                parts.append(part)
            target = self.o.p.acc if P == 1 else self.o.p.acc[p]
            with m.If(out_live[p]):
                m.d.comb += target.eq(tree_sum(parts))
        add_cycle_counter(m, self.cycles, start=accept, stop=transfer & out_last)
        return m
