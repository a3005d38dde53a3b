"""Rank-factored matrix-vector product y = A (B x) for DSP-pruned (low-rank) layers.

B (rank x in) is sparse and its input is spike counts, so z = B x is the accumulate-only,
event-driven walk of SparseMatmulEngine. A (out x rank) is dense and multi-bit against the
multi-bit z, so A z runs on one multiplier: rank MACs per output row, one per cycle.
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.components import block_ram_attrs, check_int, check_int_array
from hw.components.sparse import (CYCLE_COUNTER_WIDTH, SparseMatmulEngine, add_cycle_counter,
                                  check_csc)
from model.artifact import dense_from_csc
from model.intops import acc_range, signed_bits

__all__ = ["RankFactoredEngine"]


class RankFactoredEngine(wiring.Component):
    """y = A (B x) for one vector x of spike counts: B sparse (CSC), A dense.

    Protocol. Identical to SparseMatmulEngine: events ``{index, count, end}`` on ``i`` (one per
    active input, then an end marker with ``end`` = 1; an empty vector is the marker alone), then
    ``out_features`` results ``{row, acc}`` on ``o`` in row order. The next vector's events are
    accepted once the last result has been transferred.

    Datapath. Stage 1 is an internal SparseMatmulEngine computing z = B x (rank entries, signed
    ``z_width``); its drain writes z into a small RAM. Stage 2 then streams A row-major from ROM
    and z from that RAM, one product A[i, k] * z[k] per cycle through a registered multiplier
    (a DSP block), and sums the rank products of each row into ``acc``. Stage 2 stalls as a whole
    when ``o`` is not ready.

    Cycles. With events offered every cycle and ``o`` always ready, a vector of events on columns
    j_1..j_E of B takes exactly

        cycles = sum_e max(nnz_B(j_e), 1) + rank + 4      (stage 1, as SparseMatmulEngine)
               + out_features * rank + 3                   (stage 2)

    from the first accepted transfer through the last result transfer, inclusive (`cycles_for`).
    Stage 2 starts the cycle after the last z is written and issues one MAC per cycle; its 3 are
    the A/z read, the product register and the accumulate-and-output register. Stage 2 does not
    yet overlap the next vector's stage 1 (that needs a second z buffer).

    Parameters
    ----------
    in_features, out_features, rank : int
        A is out_features x rank, B is rank x in_features.
    b_col_ptr, b_row_idx, b_values : sequences of int
        B in CSC form, as the artifact stores it.
    a : (out_features, rank) array of int
        The dense factor A.
    in_max : int
        Largest spike count an input can carry (>= 1).
    z_width, acc_width : int
        Signed widths of z = B x and of y = A z; checked against the worst case (the artifact's
        ``widths.z`` and ``widths.acc``).

    Members
    -------
    i : In(stream.Signature(event_layout))
        Events ``{index, count, end}``.
    o : Out(stream.Signature(result_layout))
        Results ``{row, acc}``.
    cycles : Out(32)
        Cycles the current (or last) vector has been in flight, as in SparseMatmulEngine.
    """

    def __init__(self, in_features, out_features, rank, b_col_ptr, b_row_idx, b_values, a,
                 in_max, z_width, acc_width):
        self._in_features = check_int(in_features, "in_features", minimum=1)
        self._out_features = check_int(out_features, "out_features", minimum=1)
        self._rank = check_int(rank, "rank", minimum=1)
        self._b = check_csc(b_col_ptr, b_row_idx, b_values, self._rank, self._in_features,
                            prefix="b_")
        self._a = check_int_array(a, "a", shape=(self._out_features, self._rank))
        self._in_max = check_int(in_max, "in_max", minimum=1)
        self._z_width = check_int(z_width, "z_width", minimum=1)
        self._acc_width = check_int(acc_width, "acc_width", minimum=1)

        # z = B x as the sparse engine bounds it; A z is bounded by |A| max|z|.
        b = dense_from_csc(*self._b, self._rank, self._in_features)
        z_low, z_high = acc_range(b, self._in_max)
        if self._z_width < signed_bits(z_low, z_high):
            raise ValueError(f"z_width {self._z_width} is too narrow: B x can need "
                             f"{signed_bits(z_low, z_high)} bits for inputs up to in_max = "
                             f"{self._in_max}")
        _, acc_high = acc_range(np.abs(self._a), max(-z_low, z_high))
        needed = signed_bits(-acc_high, acc_high)
        if self._acc_width < needed:
            raise ValueError(f"acc_width {self._acc_width} is too narrow: A (B x) can need "
                             f"{needed} bits for inputs up to in_max = {self._in_max}")

        self._stage1 = SparseMatmulEngine(self._in_features, self._rank, *self._b,
                                          in_max=self._in_max, acc_width=self._z_width)
        self._result_layout = data.StructLayout({
            "row": unsigned(bits_for(self._out_features - 1)),
            "acc": signed(self._acc_width),
        })
        super().__init__({
            "i": In(stream.Signature(self._stage1.event_layout)),
            "o": Out(stream.Signature(self._result_layout)),
            "cycles": Out(CYCLE_COUNTER_WIDTH),
        })

    in_features = property(lambda self: self._in_features)
    out_features = property(lambda self: self._out_features)
    rank = property(lambda self: self._rank)
    in_max = property(lambda self: self._in_max)
    z_width = property(lambda self: self._z_width)
    acc_width = property(lambda self: self._acc_width)
    event_layout = property(lambda self: self._stage1.event_layout)
    result_layout = property(lambda self: self._result_layout)

    def weight_matrix(self) -> np.ndarray:
        """A B as a dense int64 array (out_features x in_features)."""
        return self._a @ self._stage1.weight_matrix()

    def cycles_for(self, indices) -> int:
        """Exact cycle count of one vector whose events name the input columns `indices`."""
        return self._stage1.cycles_for(indices) + self._out_features * self._rank + 3

    def elaborate(self, platform):
        m = Module()
        rank, last_row = self._rank, self._out_features - 1
        a_bits = signed_bits(int(self._a.min()), int(self._a.max()))
        m.submodules.stage1 = stage1 = self._stage1
        m.submodules.factor_a = factor_a = Memory(
            shape=signed(a_bits), depth=self._out_features * rank,
            attrs=block_ram_attrs(signed(a_bits), self._out_features * rank),
            init=[int(v) for v in self._a.ravel()])
        m.submodules.z = z_memory = Memory(shape=signed(self._z_width), depth=rank, init=[])
        a_read = factor_a.read_port()
        z_read = z_memory.read_port()
        z_write = z_memory.write_port()

        # Stage 1 runs only while no stage-2 work is pending, so z is never overwritten in use.
        projecting = Signal()       # from the last z write until the last result transfer
        accept = self.i.valid & self.i.ready
        m.d.comb += [
            stage1.i.p.eq(self.i.p),
            stage1.i.valid.eq(self.i.valid & ~projecting),
            self.i.ready.eq(stage1.i.ready & ~projecting),
            stage1.o.ready.eq(1),
            z_write.addr.eq(stage1.o.p.row),
            z_write.data.eq(stage1.o.p.acc),
            z_write.en.eq(stage1.o.valid),
        ]

        # Stage 2: issue (row, k) reads -> multiply -> accumulate; the whole pipe stalls on o.
        advance = ~self.o.valid | self.o.ready
        issuing = Signal()
        row = Signal(range(self._out_features))
        k = Signal(range(rank))
        flat = Signal(range(self._out_features * rank))
        with m.If(stage1.o.valid & (stage1.o.p.row == rank - 1)):
            m.d.sync += [projecting.eq(1), issuing.eq(1), row.eq(0), k.eq(0), flat.eq(0)]
        issue = issuing & advance
        m.d.comb += [
            a_read.addr.eq(flat), a_read.en.eq(advance),
            z_read.addr.eq(k), z_read.en.eq(advance),
        ]
        with m.If(issue):
            m.d.sync += flat.eq(flat + 1)
            with m.If(k == rank - 1):
                m.d.sync += [k.eq(0), row.eq(row + 1)]
                with m.If(row == last_row):
                    m.d.sync += issuing.eq(0)
            with m.Else():
                m.d.sync += k.eq(k + 1)

        def tags(name):
            return {"valid": Signal(name=f"{name}_valid"), "first": Signal(name=f"{name}_first"),
                    "last": Signal(name=f"{name}_last"),
                    "row": Signal(range(self._out_features), name=f"{name}_row")}

        read, multiply = tags("read"), tags("multiply")
        product = Signal(signed(a_bits + self._z_width))
        acc = Signal(signed(self._acc_width))
        acc_next = Signal(signed(self._acc_width))
        m.d.comb += acc_next.eq(Mux(multiply["first"], 0, acc) + product)
        with m.If(advance):
            m.d.sync += [
                read["valid"].eq(issue), read["first"].eq(k == 0),
                read["last"].eq(k == rank - 1), read["row"].eq(row),
            ]
            m.d.sync += [multiply[key].eq(read[key]) for key in read]
            m.d.sync += product.eq(a_read.data * z_read.data)
            with m.If(multiply["valid"]):
                m.d.sync += acc.eq(acc_next)
            m.d.sync += [
                self.o.valid.eq(multiply["valid"] & multiply["last"]),
                self.o.p.row.eq(multiply["row"]),
                self.o.p.acc.eq(acc_next),
            ]
        last_transfer = self.o.valid & self.o.ready & (self.o.p.row == last_row)
        with m.If(last_transfer):
            m.d.sync += projecting.eq(0)

        add_cycle_counter(m, self.cycles, start=accept, stop=last_transfer)
        return m
