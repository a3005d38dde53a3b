"""Event-driven sparse matrix-vector product y = W x over small non-negative spike counts.

W (out x in) is stored column-compressed (CSC), as in the artifact: an input j that did not fire
is never sent, and an input that fired touches only the stored entries of column j. Work is one
stored entry per cycle, so silent inputs and pruned weights both cost nothing. Dense matrices use
the same engine with every entry stored (``csc_from_dense(w, keep_zeros=True)``).

With ``lanes=P`` the output rows are dealt round-robin to P lanes (row r to lane r % P), each
with its own part of every column and its own accumulators: an event walks all P parts at once,
so a column costs its largest part instead of all its entries, and the drain emits P rows per
transfer. That trades P times the accumulator and table ports for up to P times the throughput.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.components import add_table, block_ram_attrs, check_int, check_int_array, \
    load_signature
from hw.plan import lane_column_sizes
from model.ir.csc import dense_from_csc
from model.ir.intops import acc_range, signed_bits

__all__ = ["SparseMatmulEngine", "check_csc", "check_engine_matrix", "engine_layouts",
           "add_cycle_counter", "CYCLE_COUNTER_WIDTH"]

#: Width of the ``cycles`` performance counter of every engine (wraps around).
CYCLE_COUNTER_WIDTH = 32


def check_csc(col_ptr, row_idx, values, rows: int, cols: int, prefix: str = ""):
    """Validate a CSC matrix (rows x cols) and return its three arrays as int64.

    `prefix` ("" or "b_") names the parameters in error messages as the artifact names them.
    """
    col_ptr = check_int_array(col_ptr, f"{prefix}col_ptr", shape=(cols + 1,))
    row_idx = check_int_array(row_idx, f"{prefix}row_idx")
    if row_idx.ndim != 1:
        raise ValueError(f"{prefix}row_idx must be one-dimensional, not of shape {row_idx.shape}")
    values = check_int_array(values, f"{prefix}values", shape=row_idx.shape)
    if col_ptr[0] != 0 or np.any(np.diff(col_ptr) < 0) or col_ptr[-1] != len(row_idx):
        raise ValueError(f"{prefix}col_ptr must rise from 0 to len({prefix}row_idx) = "
                         f"{len(row_idx)}, not {col_ptr.tolist()!r}")
    if len(row_idx) and (row_idx.min() < 0 or row_idx.max() >= rows):
        raise ValueError(f"{prefix}row_idx must lie in 0..{rows - 1}, not "
                         f"[{row_idx.min()}, {row_idx.max()}]")
    for j in range(cols):
        column = row_idx[col_ptr[j]:col_ptr[j + 1]]
        if len(np.unique(column)) != len(column):
            raise ValueError(f"{prefix}row_idx repeats a row within column {j}: "
                             f"{column.tolist()!r}")
    return col_ptr, row_idx, values


def check_engine_matrix(in_features, out_features, col_ptr, row_idx, values, in_max,
                        acc_width) -> tuple:
    """An event-driven engine's matrix parameters, checked: (in_features, out_features, col_ptr,
    row_idx, values, in_max, acc_width), the arrays int64. `acc_width` must hold every partial
    sum of ``W x`` for ``0 <= x <= in_max`` (any subset of a row's terms: a lane's or a
    walker's part too)."""
    in_features = check_int(in_features, "in_features", minimum=1)
    out_features = check_int(out_features, "out_features", minimum=1)
    col_ptr, row_idx, values = check_csc(col_ptr, row_idx, values, out_features, in_features)
    in_max = check_int(in_max, "in_max", minimum=1)
    acc_width = check_int(acc_width, "acc_width", minimum=1)
    matrix = dense_from_csc(col_ptr, row_idx, values, out_features, in_features)
    needed = signed_bits(*acc_range(matrix, in_max))
    if acc_width < needed:
        raise ValueError(f"acc_width {acc_width} is too narrow: W x can need {needed} bits for "
                         f"inputs up to in_max = {in_max}")
    return in_features, out_features, col_ptr, row_idx, values, in_max, acc_width


def engine_layouts(in_features: int, out_features: int, in_max: int, acc_width: int,
                   lanes: int) -> tuple[data.StructLayout, data.StructLayout]:
    """(event layout ``{index, count, end}``, result layout ``{row, acc}`` with one lane or
    ``{group, acc[lanes]}``) of an event-driven engine: the streams every such engine shares."""
    event = data.StructLayout({"index": unsigned(bits_for(in_features - 1)),
                               "count": unsigned(bits_for(in_max)), "end": 1})
    if lanes == 1:
        return event, data.StructLayout({"row": unsigned(bits_for(out_features - 1)),
                                         "acc": signed(acc_width)})
    groups = -(-out_features // lanes)
    return event, data.StructLayout({"group": unsigned(bits_for(groups - 1)),
                                     "acc": data.ArrayLayout(signed(acc_width), lanes)})


class SparseMatmulEngine(wiring.Component):
    """y = W x for one vector x of spike counts, event-driven over a CSC weight matrix.

    Protocol. A vector is a sequence of *events* on ``i`` (``end`` = 0), one per active input
    ``index`` j with its spike ``count`` c (1..in_max; 0 is harmless but still walks the column),
    in any order, each index at most once, followed by one *end marker* (``end`` = 1, ``index``
    and ``count`` ignored). An empty vector is just the end marker. The engine then emits
    ``out_features`` results ``{row, acc}`` on ``o`` in row order 0..out_features-1, and accepts
    the next vector's events only after the last result has been transferred.

    Datapath. Each event reads column j's extent (start, end) from a ROM; a walker then visits
    one stored entry (row, value) per cycle and does ``acc[row] += value * c`` as a pipelined
    read-modify-write of the accumulator RAM (a read port transparent to the write port makes
    consecutive updates of one row safe, so any event order works). The next event's extent is
    fetched while the walker still works on the current column, so columns follow each other
    without a bubble. The drain reads the accumulators in row order and writes each one back to
    zero as its result is transferred: no separate clear pass. (A reset in the middle of a vector
    leaves partial sums in the RAM; draining one empty vector clears them.)

    Lanes. With ``lanes=P > 1`` output row r belongs to lane r % P, at local row r // P. Each
    lane has its own entry table (``entries<p>``: for every column, the entries of its rows, with
    local rows) and its own accumulators (``accumulators[<b>]_lane<p>``, ceil(out_features / P)
    deep); one extent ROM holds the P lanes' (start, end) pairs of each column. An event is taken
    by all lanes at once and they walk their parts of the column in lockstep, one entry per lane
    per cycle (a lane done with its part idles), so the column costs its largest part. The drain
    emits ``groups`` = ceil(out_features / P) results ``{group, acc}`` in order, ``acc[p]`` being
    row group * P + p; rows past the last one (in the last group) read as 0.

    Cycles. With events offered every cycle and ``o`` always ready, a vector of events on
    columns j_1..j_E takes exactly

        cycles = sum_e max(max_p nnz_p(j_e), 1) + ceil(out_features / P) + 4

    counted from the cycle the first transfer of the vector (event or end marker) is accepted
    through the cycle of its last result transfer, inclusive (see `cycles_for`); nnz_p(j) is
    lane p's part of column j (`lane_column_sizes`), the whole column nnz(j) when P = 1. Each
    event costs its column's largest part (an empty column still occupies the walker for a
    cycle), the drain one cycle per result, and the 4 are the first transfer's acceptance, the
    column-extent ROM read, the end marker's turn in the walker and the last result's read.
    Stalls on either stream add to it cycle for cycle.

    Parameters
    ----------
    in_features, out_features : int
        Shape of W (out_features x in_features).
    col_ptr, row_idx, values : sequences of int
        W in CSC form per input column, as the artifact stores it (`model.ir.csc.csc_from_dense`).
    in_max : int
        Largest spike count an input can carry (>= 1).
    acc_width : int
        Width of the signed accumulators and of ``o.payload.acc``; it must hold every partial sum
        of ``W x`` for ``0 <= x <= in_max`` (checked).
    lanes : int
        Number of lanes P, 1..out_features (default 1: one entry per cycle, one row per result).

    Members
    -------
    i : In(stream.Signature(event_layout))
        Events ``{index, count, end}``.
    o : Out(stream.Signature(result_layout))
        Results ``{row, acc}``; with lanes > 1 ``{group, acc}``, ``acc`` an array of P
        accumulators.
    cycles : Out(32)
        Cycles the current (or last) vector has been in flight: counts from the cycle its first
        transfer is accepted through the cycle of its last result transfer.
    With ``overlap=True`` the accumulators are two banks: once a vector's end marker has had its
    walker turn, the next vector's events are accepted (two cycles later) and walked into the
    other bank while this one drains, so walking and draining overlap. A vector's end marker
    waits for the walker until the previous drain has finished. A single vector's cycles are as
    above.

    rows : In(range(1, out_features + 1)), only with ``variable_rows=True``
        Results to drain per vector (rows 0..rows-1), held stable while a vector is in flight.
        One engine then serves several matrices in turn (the accelerator's layers): their
        columns side by side in one CSC, each layer sending its own column range and draining
        its own rows. Cycles as above with ``rows`` for ``out_features`` (ceil(rows / P)
        results).
    load : In(load_signature(entry_layout, nnz)), only with ``loadable=True``
        The entry table is then written through this stream (``entries_init()``, one entry per
        transfer, always ready) before the first vector, instead of being a ROM; the engine must
        be idle meanwhile (hw/components `add_table`: on iCE40 the table goes to SPRAM). Not
        supported with lanes > 1 yet (ValueError).
    """

    def __init__(self, in_features, out_features, col_ptr, row_idx, values, in_max, acc_width,
                 variable_rows=False, overlap=False, loadable=False, lanes=1):
        (self._in_features, self._out_features, self._col_ptr, self._row_idx, self._values,
         self._in_max, self._acc_width) = check_engine_matrix(
            in_features, out_features, col_ptr, row_idx, values, in_max, acc_width)
        self._lanes = check_int(lanes, "lanes", minimum=1)
        if self._lanes > self._out_features:
            raise ValueError(f"lanes {self._lanes} exceeds out_features {self._out_features}: "
                             f"every lane must own at least one row")
        if loadable and self._lanes > 1:
            raise ValueError(f"loadable with lanes > 1 is not supported yet (lanes = "
                             f"{self._lanes})")
        self._groups = -(-self._out_features // self._lanes)
        self._event_layout, self._result_layout = engine_layouts(
            self._in_features, self._out_features, self._in_max, self._acc_width, self._lanes)
        members = {
            "i": In(stream.Signature(self._event_layout)),
            "o": Out(stream.Signature(self._result_layout)),
            "cycles": Out(CYCLE_COUNTER_WIDTH),
        }
        self._variable_rows = bool(variable_rows)
        self._overlap = bool(overlap)
        if self._variable_rows:
            members["rows"] = In(range(1, self._out_features + 1), init=self._out_features)
        self._loadable = bool(loadable)
        if self._loadable:
            members["load"] = In(load_signature(self.entry_layout, max(self.nnz, 1)))
        super().__init__(members)

    in_features = property(lambda self: self._in_features)
    out_features = property(lambda self: self._out_features)
    in_max = property(lambda self: self._in_max)
    acc_width = property(lambda self: self._acc_width)
    lanes = property(lambda self: self._lanes)
    event_layout = property(lambda self: self._event_layout)
    result_layout = property(lambda self: self._result_layout)

    @property
    def nnz(self) -> int:
        """Number of stored entries (including stored zeros of a dense matrix)."""
        return len(self._row_idx)

    def weight_matrix(self) -> np.ndarray:
        """W as a dense int64 array (out_features x in_features)."""
        return dense_from_csc(self._col_ptr, self._row_idx, self._values, self._out_features,
                              self._in_features)

    def _lane_part(self, lane: int):
        """Lane `lane`'s part of W in CSC form: (col_ptr, local rows, values), int64."""
        if self._lanes == 1:
            return self._col_ptr, self._row_idx, self._values
        keep = self._row_idx % self._lanes == lane
        col_ptr = np.concatenate([[0], np.cumsum(keep)])[self._col_ptr]
        return col_ptr, self._row_idx[keep] // self._lanes, self._values[keep]

    def lane_column_sizes(self) -> np.ndarray:
        """Stored entries per lane and column: int64 array (lanes, in_features), nnz_p(j)
        (the cycle model's `hw.cycles.lane_column_sizes`, the one definition of the split)."""
        return lane_column_sizes(self._col_ptr, self._row_idx, self._lanes)

    def cycles_for(self, indices) -> int:
        """Exact cycle count of one vector whose events name the input columns `indices`."""
        nnz = self.lane_column_sizes().max(axis=0)
        return sum(max(int(nnz[j]), 1) for j in indices) + self._groups + 4

    @property
    def entry_layout(self) -> data.StructLayout:
        """One stored entry of W: its row (local row in its lane with lanes > 1) and value."""
        value_bits = signed_bits(int(self._values.min(initial=0)),
                                 int(self._values.max(initial=0)))
        return data.StructLayout({"row": unsigned(bits_for(self._groups - 1)),
                                  "value": signed(value_bits)})

    def entries_init(self, lane: int = 0) -> list[dict]:
        """The entry table's contents, column after column (what ``load`` writes); with
        lanes > 1, lane `lane`'s table (its entries, local rows)."""
        _, rows, values = self._lane_part(lane)
        return [{"row": int(r), "value": int(v)} for r, v in zip(rows, values)]

    def elaborate(self, platform):
        """The engine, built stage by stage in dataflow order.

        Written for P lanes; with P = 1 every per-lane list has one element and the design is
        the original single-lane one, signal for signal (same names, same memories). The stages
        read one another's registers, so they share one namespace, `dp`, that each fills in.
        Their statements reach the netlist in call order: reordering the calls (or statements
        within one) changes the generated Verilog, even where the behaviour stays the same.
        """
        m = Module()
        dp = SimpleNamespace()
        self._add_tables(m, dp)
        self._add_accumulators(m, dp)
        self._declare_registers(m, dp)
        self._add_event_intake(m, dp)
        self._add_walker(m, dp)
        self._add_update_pipeline(m, dp)
        self._add_drain(m, dp)
        self._add_accumulator_writes(m, dp)
        add_cycle_counter(m, self.cycles, start=dp.accept,
                          stop=dp.transfer & self._is_out_last(dp))
        return m

    def _add_tables(self, m, dp):
        """The column-extent ROM (each column's (start, end) in every lane's entry table) with
        its read port, and one entry table per lane (a ROM, or loaded through ``load``)."""
        P, lanes = self._lanes, range(self._lanes)
        parts = [self._lane_part(p) for p in lanes]
        pointer_shape = unsigned(bits_for(max(len(rows) for _, rows, _ in parts)))
        column_layout = data.StructLayout({"start": pointer_shape, "end": pointer_shape})
        entry_layout = self.entry_layout

        if P == 1:
            extent_layout = column_layout
            extent_init = [{"start": int(self._col_ptr[j]), "end": int(self._col_ptr[j + 1])}
                           for j in range(self._in_features)]
        else:
            extent_layout = data.ArrayLayout(column_layout, P)
            extent_init = [[{"start": int(ptr[j]), "end": int(ptr[j + 1])} for ptr, _, _ in parts]
                           for j in range(self._in_features)]
        m.submodules.columns = columns = Memory(
            shape=extent_layout, depth=self._in_features,
            attrs=block_ram_attrs(extent_layout, self._in_features), init=extent_init)
        dp.entry_addr, dp.entry_en, dp.entry_data = [], [], []
        for p in lanes:
            addr, en, read_data = add_table(
                m, "entries" if P == 1 else f"entries{p}", entry_layout, self.entries_init(p),
                load=self.load if self._loadable else None)
            dp.entry_addr.append(addr)
            dp.entry_en.append(en)
            dp.entry_data.append(read_data)
        column_read = columns.read_port()
        dp.pointer_shape, dp.column_read = pointer_shape, column_read
        dp.extents = [column_read.data] if P == 1 else [column_read.data[p] for p in lanes]

    def _add_accumulators(self, m, dp):
        """One accumulator bank per lane, or two with `overlap`: bank `walk_bank` takes the
        updates of the vector being walked, bank `drain_bank` is read out (and cleared) by the
        drain. dp.acc_write[p][b], dp.acc_read[p][b]: lane p, bank b; each read port is
        transparent to its bank's write port, so back-to-back updates of one row are safe."""
        lanes = range(self._lanes)
        banks = 2 if self._overlap else 1
        acc_write, acc_read = [[] for _ in lanes], [[] for _ in lanes]
        for p in lanes:
            for b in range(banks):
                bank = Memory(shape=signed(self._acc_width), depth=self._groups, init=[],
                              attrs=block_ram_attrs(signed(self._acc_width), self._groups))
                name = f"accumulators{b}" if self._overlap else "accumulators"
                m.submodules[name if self._lanes == 1 else f"{name}_lane{p}"] = bank
                acc_write[p].append(bank.write_port())
                acc_read[p].append(bank.read_port(transparent_for=(acc_write[p][-1],)))
        dp.banks, dp.acc_write, dp.acc_read = banks, acc_write, acc_read

    def _per_lane(self, shape, name: str) -> list[Signal]:
        """One signal per lane, named `name` with one lane and ``<name>_lane<p>`` with P."""
        P = self._lanes
        return [Signal(shape, name=name if P == 1 else f"{name}_lane{p}") for p in range(P)]

    def _declare_registers(self, m, dp):
        """The registers of every stage, declared up front because the stages read one
        another's: the fetch stage, the walker, the read-modify-write pipeline and the drain.
        Also `last_row` (the drain's last row or group, a signal only with ``rows``)."""
        P, lanes, banks = self._lanes, range(self._lanes), dp.banks
        count_shape = self._event_layout["count"].shape
        row_shape = unsigned(bits_for(self._groups - 1))   # a row (P = 1) or a group / local row
        if P == 1 and self._variable_rows:
            dp.last_row = Signal(row_shape)
            m.d.comb += dp.last_row.eq(self.rows - 1)
        else:
            dp.last_row = self._groups - 1       # with P > 1 and `rows`, see drain_base

        # Fetch stage: one accepted event (or end marker) whose column extent the ROM is reading.
        dp.fetch_valid = Signal()
        dp.fetch_count = Signal(count_shape)
        dp.fetch_is_end = Signal()
        # Walker: the column being visited, one stored entry per lane and cycle.
        dp.walk_valid = Signal()
        dp.walk_is_end = Signal()
        dp.walk_pointer = self._per_lane(dp.pointer_shape, "walk_pointer")
        dp.walk_stop = self._per_lane(dp.pointer_shape, "walk_stop")
        dp.walk_count = Signal(count_shape)
        dp.walk_bank = Signal(range(banks))
        # Read-modify-write pipeline: entry read -> accumulator read -> add and write.
        dp.entry_valid = self._per_lane(1, "entry_valid")
        dp.entry_count = Signal(count_shape)
        dp.entry_bank = Signal(range(banks))
        dp.update_valid = self._per_lane(1, "update_valid")
        dp.update_row = self._per_lane(row_shape, "update_row")
        dp.update_term = self._per_lane(
            signed(self.entry_layout["value"].shape.width + count_shape.width + 1), "update_term")
        dp.update_bank = Signal(range(banks))
        # Drain.
        dp.draining = Signal()
        dp.drain_bank = Signal(range(banks))
        dp.end_seen = Signal()
        dp.drain_row = Signal(row_shape)
        dp.drain_issued = Signal()
        dp.out_row = Signal(row_shape)
        # Drain bookkeeping with P > 1: which lanes of the group being issued hold rows to
        # drain (`drain_live`), and whether it is the last group. With `rows`, drain_base
        # (= drain_row * P) counts in rows, so no division by P is needed.
        if P > 1:
            dp.out_live = Signal(P)
            if self._variable_rows:
                dp.drain_base = Signal(range(self._groups * P + 1))
                dp.drain_live = [dp.drain_base + p < self.rows for p in lanes]
                dp.out_last = Signal()
            else:
                tail = self._out_features - (self._groups - 1) * P    # live lanes, last group
                dp.drain_live = [1 if p < tail else dp.drain_row != dp.last_row for p in lanes]

    def _add_event_intake(self, m, dp):
        """``i.ready``, and the fetch stage: an accepted event's column extent is read from the
        ROM while the walker still works on the previous column, and it moves into the walker
        (`walker_load`) as soon as that column's last entry is issued, so columns follow each
        other without a bubble. Events wait while the end marker is in flight (`end_seen`) and,
        with one bank, while the drain runs."""
        lanes = range(self._lanes)
        walk_valid, walk_pointer, walk_stop = dp.walk_valid, dp.walk_pointer, dp.walk_stop
        fetch_valid, end_seen = dp.fetch_valid, dp.end_seen
        walker_free = ~walk_valid | dp.walk_is_end | _all_lanes(
            [walk_pointer[p] + 1 >= walk_stop[p] for p in lanes])
        if self._overlap:
            # an end marker takes its walker turn only once the previous drain has finished
            walker_load = walker_free & fetch_valid & ~(dp.fetch_is_end & dp.draining)
        else:
            walker_load = walker_free & fetch_valid
        dp.walker_free, dp.walker_load = walker_free, walker_load
        dp.walk_issue = [walk_valid & ~dp.walk_is_end & (walk_pointer[p] < walk_stop[p])
                         for p in lanes]
        accept = Signal()
        dp.accept = accept
        idle_for_events = ~end_seen if self._overlap else ~dp.draining & ~end_seen
        m.d.comb += [
            self.i.ready.eq(idle_for_events & (~fetch_valid | walker_load)),
            accept.eq(self.i.valid & self.i.ready),
            dp.column_read.addr.eq(self.i.p.index),
            dp.column_read.en.eq(accept),
        ]

        with m.If(accept):
            m.d.sync += [
                fetch_valid.eq(1),
                dp.fetch_count.eq(self.i.p.count),
                dp.fetch_is_end.eq(self.i.p.end),
            ]
            with m.If(self.i.p.end):
                m.d.sync += end_seen.eq(1)
        with m.Elif(walker_load):
            m.d.sync += fetch_valid.eq(0)

    def _add_walker(self, m, dp):
        """The walker: it takes a column's extent from the fetch stage and steps each lane's
        pointer through its part of the column, one entry per lane and cycle. The end marker's
        turn in it hands the vector's bank over to the drain."""
        P, lanes = self._lanes, range(self._lanes)
        walk_pointer, walk_stop, walk_bank = dp.walk_pointer, dp.walk_stop, dp.walk_bank
        with m.If(dp.walker_load):
            m.d.sync += [dp.walk_valid.eq(1), dp.walk_is_end.eq(dp.fetch_is_end)]
            for p in lanes:
                m.d.sync += [walk_pointer[p].eq(dp.extents[p].start),
                             walk_stop[p].eq(dp.extents[p].end)]
            m.d.sync += dp.walk_count.eq(dp.fetch_count)
        with m.Elif(dp.walker_free):
            m.d.sync += dp.walk_valid.eq(0)
        with m.Else():
            if P == 1:
                m.d.sync += walk_pointer[0].eq(walk_pointer[0] + 1)
            else:
                for p in lanes:                 # a lane done with its part waits at its end
                    with m.If(walk_pointer[p] < walk_stop[p]):
                        m.d.sync += walk_pointer[p].eq(walk_pointer[p] + 1)

        # The end marker's turn in the walker: every entry has been issued, so drain next (and,
        # with two banks, walk the next vector into the other one).
        with m.If(dp.walk_valid & dp.walk_is_end):
            m.d.sync += [dp.draining.eq(1), dp.end_seen.eq(0), dp.drain_row.eq(0),
                         dp.drain_issued.eq(0), dp.drain_bank.eq(walk_bank)]
            if P > 1 and self._variable_rows:
                m.d.sync += dp.drain_base.eq(0)
            if self._overlap:
                m.d.sync += walk_bank.eq(~walk_bank)

    def _add_update_pipeline(self, m, dp):
        """The read-modify-write pipeline up to the add: each lane's entry table is read at its
        walker pointer, then an issued entry's row and term (value * count) are registered while
        that row's accumulator is read (`_add_drain` points the read port there), and
        `_add_accumulator_writes` writes back the sum."""
        lanes = range(self._lanes)
        for p in lanes:
            m.d.comb += [dp.entry_addr[p].eq(dp.walk_pointer[p]), dp.entry_en[p].eq(1)]
        m.d.sync += [dp.entry_valid[p].eq(dp.walk_issue[p]) for p in lanes]
        m.d.sync += [dp.entry_count.eq(dp.walk_count), dp.entry_bank.eq(dp.walk_bank)]
        for p in lanes:
            m.d.sync += [
                dp.update_valid[p].eq(dp.entry_valid[p]),
                dp.update_row[p].eq(dp.entry_data[p].row),
                dp.update_term[p].eq(dp.entry_data[p].value * dp.entry_count),
            ]
        m.d.sync += dp.update_bank.eq(dp.entry_bank)

    def _drain_last(self, dp):
        """Whether the drain is issuing its last row (or group) of the vector."""
        if self._lanes > 1 and self._variable_rows:
            return dp.drain_base + self._lanes >= self.rows
        return dp.drain_row == dp.last_row

    def _is_out_last(self, dp):
        """Whether ``o`` holds the vector's last result."""
        if self._lanes > 1 and self._variable_rows:
            return dp.out_last
        return dp.out_row == dp.last_row

    def _add_drain(self, m, dp):
        """The drain: the drain bank is read in row (group) order and each result goes out on
        ``o``. The drain bank's read port doubles as the output register (it holds on a stall);
        a bank not being drained has its read port on the update pipeline (the row of the entry
        just read). Lanes past the last row send 0."""
        P, lanes, banks = self._lanes, range(self._lanes), dp.banks
        acc_read, draining, drain_row = dp.acc_read, dp.draining, dp.drain_row
        advance = ~self.o.valid | self.o.ready
        drain_issue = draining & ~dp.drain_issued
        transfer = self.o.valid & self.o.ready
        out_bank = Signal(range(banks))
        dp.transfer, dp.out_bank = transfer, out_bank
        for b in range(banks):
            with m.If(draining & (dp.drain_bank == b)):
                for p in lanes:
                    m.d.comb += [acc_read[p][b].addr.eq(drain_row),
                                 acc_read[p][b].en.eq(advance)]
            with m.Else():
                for p in lanes:
                    m.d.comb += [acc_read[p][b].addr.eq(dp.entry_data[p].row),
                                 acc_read[p][b].en.eq(1)]
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(drain_issue), dp.out_row.eq(drain_row),
                         out_bank.eq(dp.drain_bank)]
            if P > 1:
                m.d.sync += [dp.out_live[p].eq(dp.drain_live[p]) for p in lanes]
                if self._variable_rows:
                    m.d.sync += dp.out_last.eq(self._drain_last(dp))
            with m.If(drain_issue):
                m.d.sync += drain_row.eq(drain_row + 1)
                if P > 1 and self._variable_rows:
                    m.d.sync += dp.drain_base.eq(dp.drain_base + P)
                with m.If(self._drain_last(dp)):
                    m.d.sync += dp.drain_issued.eq(1)
        if P == 1:
            m.d.comb += self.o.p.row.eq(dp.out_row)
        else:
            m.d.comb += self.o.p.group.eq(dp.out_row)
        with m.Switch(out_bank):
            for b in range(banks):
                with m.Case(b):
                    if P == 1:
                        m.d.comb += self.o.p.acc.eq(acc_read[0][b].data)
                    else:       # lanes past the last row hold nothing of this vector: 0
                        for p in lanes:
                            with m.If(dp.out_live[p]):
                                m.d.comb += self.o.p.acc[p].eq(acc_read[p][b].data)
        with m.If(transfer & self._is_out_last(dp)):
            m.d.sync += draining.eq(0)

    def _add_accumulator_writes(self, m, dp):
        """One write port per lane and bank: it adds an update's term to the accumulator read
        for it, or else writes 0 behind the drain as each result is transferred (no separate
        clear pass). A bank's last updates of a vector never meet its first drain write, and
        the two banks' roles never overlap."""
        acc_write, acc_read = dp.acc_write, dp.acc_read
        for p in range(self._lanes):
            for b in range(dp.banks):
                with m.If(dp.update_valid[p] & (dp.update_bank == b)):
                    m.d.comb += [
                        acc_write[p][b].addr.eq(dp.update_row[p]),
                        acc_write[p][b].data.eq(acc_read[p][b].data + dp.update_term[p]),
                        acc_write[p][b].en.eq(1),
                    ]
                with m.Else():
                    m.d.comb += [acc_write[p][b].addr.eq(dp.out_row), acc_write[p][b].data.eq(0),
                                 acc_write[p][b].en.eq(dp.transfer & (dp.out_bank == b))]


def _all_lanes(conditions):
    """The AND of every lane's condition, as a chain (one lane: its condition itself)."""
    result = conditions[0]
    for condition in conditions[1:]:
        result = result & condition
    return result


def add_cycle_counter(m: Module, cycles: Signal, *, start, stop) -> None:
    """Count the cycles of one vector in flight: from the cycle `start` first holds (the first
    accepted input) through the cycle `stop` holds (the last result transfer), inclusive."""
    in_flight = Signal()
    with m.If(in_flight):
        m.d.sync += cycles.eq(cycles + 1)
        with m.If(stop):
            m.d.sync += in_flight.eq(0)
    with m.Elif(start):
        m.d.sync += [cycles.eq(1), in_flight.eq(1)]
