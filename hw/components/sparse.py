"""Event-driven sparse matrix-vector product y = W x over small non-negative spike counts.

W (out x in) is stored column-compressed (CSC), as in the artifact: an input j that did not fire
is never sent, and an input that fired touches only the stored entries of column j. Work is one
stored entry per cycle, so silent inputs and pruned weights both cost nothing. Dense matrices use
the same engine with every entry stored (``csc_from_dense(w, keep_zeros=True)``).
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.components import add_table, block_ram_attrs, check_int, check_int_array, \
    load_signature
from model.artifact import dense_from_csc
from model.intops import acc_range, signed_bits

__all__ = ["SparseMatmulEngine", "check_csc", "add_cycle_counter",
           "CYCLE_COUNTER_WIDTH"]

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

    Cycles. With events offered every cycle and ``o`` always ready, a vector of events on
    columns j_1..j_E takes exactly

        cycles = sum_e max(nnz(j_e), 1) + out_features + 4

    counted from the cycle the first transfer of the vector (event or end marker) is accepted
    through the cycle of its last result transfer, inclusive (see `cycles_for`). Each event
    costs its column's entries (an empty column still occupies the walker for a cycle), the
    drain one cycle per row, and the 4 are the first transfer's acceptance, the column-extent
    ROM read, the end marker's turn in the walker and the last result's read. Stalls on either
    stream add to it cycle for cycle.

    Parameters
    ----------
    in_features, out_features : int
        Shape of W (out_features x in_features).
    col_ptr, row_idx, values : sequences of int
        W in CSC form per input column, as the artifact stores it (`model.artifact.csc_from_dense`).
    in_max : int
        Largest spike count an input can carry (>= 1).
    acc_width : int
        Width of the signed accumulators and of ``o.payload.acc``; it must hold every partial sum
        of ``W x`` for ``0 <= x <= in_max`` (checked).

    Members
    -------
    i : In(stream.Signature(event_layout))
        Events ``{index, count, end}``.
    o : Out(stream.Signature(result_layout))
        Results ``{row, acc}``.
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
        its own rows. Cycles as above with ``rows`` for ``out_features``.
    load : In(load_signature(entry_layout, nnz)), only with ``loadable=True``
        The entry table is then written through this stream (``entries_init()``, one entry per
        transfer, always ready) before the first vector, instead of being a ROM; the engine must
        be idle meanwhile (hw/components `add_table`: on iCE40 the table goes to SPRAM).
    """

    def __init__(self, in_features, out_features, col_ptr, row_idx, values, in_max, acc_width,
                 variable_rows=False, overlap=False, loadable=False):
        self._in_features = check_int(in_features, "in_features", minimum=1)
        self._out_features = check_int(out_features, "out_features", minimum=1)
        self._col_ptr, self._row_idx, self._values = check_csc(
            col_ptr, row_idx, values, self._out_features, self._in_features)
        self._in_max = check_int(in_max, "in_max", minimum=1)
        self._acc_width = check_int(acc_width, "acc_width", minimum=1)
        needed = signed_bits(*acc_range(self.weight_matrix(), self._in_max))
        if self._acc_width < needed:
            raise ValueError(f"acc_width {self._acc_width} is too narrow: W x can need {needed} "
                             f"bits for inputs up to in_max = {self._in_max}")

        self._event_layout = data.StructLayout({
            "index": unsigned(bits_for(self._in_features - 1)),
            "count": unsigned(bits_for(self._in_max)),
            "end": 1,
        })
        self._result_layout = data.StructLayout({
            "row": unsigned(bits_for(self._out_features - 1)),
            "acc": signed(self._acc_width),
        })
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

    def cycles_for(self, indices) -> int:
        """Exact cycle count of one vector whose events name the input columns `indices`."""
        nnz = np.diff(self._col_ptr)
        return sum(max(int(nnz[j]), 1) for j in indices) + self._out_features + 4

    @property
    def entry_layout(self) -> data.StructLayout:
        """One stored entry of W: its row and value."""
        value_bits = signed_bits(int(self._values.min(initial=0)),
                                 int(self._values.max(initial=0)))
        return data.StructLayout({"row": self._result_layout["row"].shape,
                                  "value": signed(value_bits)})

    def entries_init(self) -> list[dict]:
        """The entry table's contents, column after column (what ``load`` writes)."""
        return [{"row": int(r), "value": int(v)} for r, v in zip(self._row_idx, self._values)]

    def elaborate(self, platform):
        m = Module()
        nnz = self.nnz
        pointer_shape = unsigned(bits_for(nnz))
        column_layout = data.StructLayout({"start": pointer_shape, "end": pointer_shape})
        entry_layout = self.entry_layout

        m.submodules.columns = columns = Memory(
            shape=column_layout, depth=self._in_features,
            attrs=block_ram_attrs(column_layout, self._in_features),
            init=[{"start": int(self._col_ptr[j]), "end": int(self._col_ptr[j + 1])}
                  for j in range(self._in_features)])
        entry_addr, entry_en, entry_data = add_table(
            m, "entries", entry_layout, self.entries_init(),
            load=self.load if self._loadable else None)
        # One accumulator bank, or two with `overlap`: bank `walk_bank` takes the updates of
        # the vector being walked, bank `drain_bank` is read out (and cleared) by the drain.
        banks = 2 if self._overlap else 1
        acc_write, acc_read = [], []
        for b in range(banks):
            bank = Memory(shape=signed(self._acc_width), depth=self._out_features, init=[],
                          attrs=block_ram_attrs(signed(self._acc_width), self._out_features))
            m.submodules[f"accumulators{b}" if self._overlap else "accumulators"] = bank
            acc_write.append(bank.write_port())
            acc_read.append(bank.read_port(transparent_for=(acc_write[-1],)))
        column_read = columns.read_port()

        count_shape = self._event_layout["count"].shape
        row_shape = self._result_layout["row"].shape
        if self._variable_rows:
            last_row = Signal(row_shape)
            m.d.comb += last_row.eq(self.rows - 1)
        else:
            last_row = self._out_features - 1

        # Fetch stage: one accepted event (or end marker) whose column extent the ROM is reading.
        fetch_valid = Signal()
        fetch_count = Signal(count_shape)
        fetch_is_end = Signal()
        # Walker: the column being visited, one stored entry per cycle.
        walk_valid = Signal()
        walk_is_end = Signal()
        walk_pointer = Signal(pointer_shape)
        walk_stop = Signal(pointer_shape)
        walk_count = Signal(count_shape)
        walk_bank = Signal(range(banks))
        # Read-modify-write pipeline: entry read -> accumulator read -> add and write.
        entry_valid = Signal()
        entry_count = Signal(count_shape)
        entry_bank = Signal(range(banks))
        update_valid = Signal()
        update_row = Signal(row_shape)
        update_term = Signal(signed(entry_layout["value"].shape.width + count_shape.width + 1))
        update_bank = Signal(range(banks))
        # Drain.
        draining = Signal()
        drain_bank = Signal(range(banks))
        end_seen = Signal()
        drain_row = Signal(row_shape)
        drain_issued = Signal()
        out_row = Signal(row_shape)

        walker_free = ~walk_valid | walk_is_end | (walk_pointer + 1 >= walk_stop)
        if self._overlap:
            # an end marker takes its walker turn only once the previous drain has finished
            walker_load = walker_free & fetch_valid & ~(fetch_is_end & draining)
        else:
            walker_load = walker_free & fetch_valid
        walk_issue = walk_valid & ~walk_is_end & (walk_pointer < walk_stop)
        accept = Signal()
        idle_for_events = ~end_seen if self._overlap else ~draining & ~end_seen
        m.d.comb += [
            self.i.ready.eq(idle_for_events & (~fetch_valid | walker_load)),
            accept.eq(self.i.valid & self.i.ready),
            column_read.addr.eq(self.i.p.index),
            column_read.en.eq(accept),
        ]

        with m.If(accept):
            m.d.sync += [
                fetch_valid.eq(1),
                fetch_count.eq(self.i.p.count),
                fetch_is_end.eq(self.i.p.end),
            ]
            with m.If(self.i.p.end):
                m.d.sync += end_seen.eq(1)
        with m.Elif(walker_load):
            m.d.sync += fetch_valid.eq(0)

        with m.If(walker_load):
            m.d.sync += [
                walk_valid.eq(1),
                walk_is_end.eq(fetch_is_end),
                walk_pointer.eq(column_read.data.start),
                walk_stop.eq(column_read.data.end),
                walk_count.eq(fetch_count),
            ]
        with m.Elif(walker_free):
            m.d.sync += walk_valid.eq(0)
        with m.Else():
            m.d.sync += walk_pointer.eq(walk_pointer + 1)

        # The end marker's turn in the walker: every entry has been issued, so drain next (and,
        # with two banks, walk the next vector into the other one).
        with m.If(walk_valid & walk_is_end):
            m.d.sync += [draining.eq(1), end_seen.eq(0), drain_row.eq(0), drain_issued.eq(0),
                         drain_bank.eq(walk_bank)]
            if self._overlap:
                m.d.sync += walk_bank.eq(~walk_bank)

        m.d.comb += [entry_addr.eq(walk_pointer), entry_en.eq(1)]
        m.d.sync += [entry_valid.eq(walk_issue), entry_count.eq(walk_count),
                     entry_bank.eq(walk_bank)]
        m.d.sync += [
            update_valid.eq(entry_valid),
            update_row.eq(entry_data.row),
            update_term.eq(entry_data.value * entry_count),
            update_bank.eq(entry_bank),
        ]

        # Drain: the drain bank's read port doubles as the output register (it holds on a stall).
        advance = ~self.o.valid | self.o.ready
        drain_issue = draining & ~drain_issued
        transfer = self.o.valid & self.o.ready
        out_bank = Signal(range(banks))
        for b in range(banks):
            with m.If(draining & (drain_bank == b)):
                m.d.comb += [acc_read[b].addr.eq(drain_row), acc_read[b].en.eq(advance)]
            with m.Else():
                m.d.comb += [acc_read[b].addr.eq(entry_data.row), acc_read[b].en.eq(1)]
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(drain_issue), out_row.eq(drain_row),
                         out_bank.eq(drain_bank)]
            with m.If(drain_issue):
                m.d.sync += drain_row.eq(drain_row + 1)
                with m.If(drain_row == last_row):
                    m.d.sync += drain_issued.eq(1)
        m.d.comb += self.o.p.row.eq(out_row)
        with m.Switch(out_bank):
            for b in range(banks):
                with m.Case(b):
                    m.d.comb += self.o.p.acc.eq(acc_read[b].data)
        with m.If(transfer & (out_row == last_row)):
            m.d.sync += draining.eq(0)

        # One write port per bank: a bank's last updates of a vector never meet its first drain
        # write, and the two banks' roles never overlap.
        for b in range(banks):
            with m.If(update_valid & (update_bank == b)):
                m.d.comb += [
                    acc_write[b].addr.eq(update_row),
                    acc_write[b].data.eq(acc_read[b].data + update_term),
                    acc_write[b].en.eq(1),
                ]
            with m.Else():
                m.d.comb += [acc_write[b].addr.eq(out_row), acc_write[b].data.eq(0),
                             acc_write[b].en.eq(transfer & (out_bank == b))]

        add_cycle_counter(m, self.cycles, start=accept,
                          stop=transfer & (out_row == last_row))
        return m


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
