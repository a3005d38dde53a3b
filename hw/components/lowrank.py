"""Rank-factored matrix-vector product y = A (B x) for DSP-pruned (low-rank) layers.

B (rank x in) is sparse and its input is spike counts, so z = B x is the accumulate-only,
event-driven walk of SparseMatmulEngine. A (out x rank) is dense and multi-bit against the
multi-bit z, so A z runs on one multiplier per lane: rank MACs per output row, one per cycle.
"""

from __future__ import annotations

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.components import block_ram_attrs, check_int, check_int_array, lane_of, lane_shape
from hw.components.sparse import (CYCLE_COUNTER_WIDTH, SparseMatmulEngine, add_cycle_counter,
                                  check_csc)
from model.ir.csc import dense_from_csc
from model.ir.intops import acc_range, signed_bits

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

    Lanes. With ``lanes`` = P > 1 stage 1 is a SparseMatmulEngine of P1 = min(P, rank) lanes
    (its results, and the z RAM's words, are groups of P1 z values), and stage 2 has P
    multipliers: group g's rows g P .. g P + P - 1 take their rank MACs side by side, reading
    one A word of P values per cycle (rows past out_features multiply zeros). Results are
    ``{group, acc[P]}`` (acc[p]: row group * P + p), ceil(out_features / P) per vector, and

        cycles = stage1.cycles_for(events) + ceil(out_features / P) * rank + 3

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
    lanes : int
        Output rows per transfer and multipliers in stage 2 (P, default 1; at most
        out_features).

    Members
    -------
    i : In(stream.Signature(event_layout))
        Events ``{index, count, end}``.
    o : Out(stream.Signature(result_layout))
        Results ``{row, acc}`` (P lanes: ``{group, acc[P]}``).
    cycles : Out(32)
        Cycles the current (or last) vector has been in flight, as in SparseMatmulEngine.
    """

    def __init__(self, in_features, out_features, rank, b_col_ptr, b_row_idx, b_values, a,
                 in_max, z_width, acc_width, lanes=1):
        self._in_features = check_int(in_features, "in_features", minimum=1)
        self._out_features = check_int(out_features, "out_features", minimum=1)
        self._rank = check_int(rank, "rank", minimum=1)
        self._lanes = check_int(lanes, "lanes", minimum=1)
        if self._lanes > self._out_features:
            raise ValueError(f"lanes = {self._lanes} exceeds out_features = "
                             f"{self._out_features}")
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

        # stage 1 walks B with as many lanes as z has rows, up to P
        self._stage1 = SparseMatmulEngine(self._in_features, self._rank, *self._b,
                                          in_max=self._in_max, acc_width=self._z_width,
                                          lanes=min(self._lanes, self._rank))
        P = self._lanes
        self._groups = -(-self._out_features // P)
        self._result_layout = data.StructLayout({
            "row": unsigned(bits_for(self._out_features - 1)),
            "acc": signed(self._acc_width),
        }) if P == 1 else data.StructLayout({
            "group": unsigned(bits_for(self._groups - 1)),
            "acc": data.ArrayLayout(signed(self._acc_width), P),
        })
        super().__init__({
            "i": In(stream.Signature(self._stage1.event_layout)),
            "o": Out(stream.Signature(self._result_layout)),
            "cycles": Out(CYCLE_COUNTER_WIDTH),
        })

    in_features = property(lambda self: self._in_features)
    out_features = property(lambda self: self._out_features)
    rank = property(lambda self: self._rank)
    lanes = property(lambda self: self._lanes)
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
        return self._stage1.cycles_for(indices) + self._groups * self._rank + 3

    def elaborate(self, platform):
        """Stage 1 (the internal SparseMatmulEngine) writing z, then stage 2 reading A and z
        through the MAC pipeline; the statements reach the netlist in call order."""
        m = Module()
        m.submodules.stage1 = self._stage1
        a_read, z_read, z_write = self._add_memories(m)
        projecting, accept, z_index = self._connect_stage1(m, z_write)
        # Stage 2: issue (group, k) reads -> multiply -> accumulate; the whole pipe stalls on o.
        advance = ~self.o.valid | self.o.ready
        issue, row, k = self._add_issue(m, advance, projecting, z_index, a_read, z_read)
        self._add_mac_pipeline(m, advance, issue, row, k, a_read, z_read)
        out_index = self.o.p.row if self._lanes == 1 else self.o.p.group
        last_transfer = self.o.valid & self.o.ready & (out_index == self._groups - 1)
        with m.If(last_transfer):
            m.d.sync += projecting.eq(0)

        add_cycle_counter(m, self.cycles, start=accept, stop=last_transfer)
        return m

    def _a_bits(self) -> int:
        """Signed width of A's entries (the A ROM's words and the multipliers' first operand)."""
        return signed_bits(int(self._a.min()), int(self._a.max()))

    def _add_memories(self, m):
        """The A ROM and the z RAM; returns the ports (a_read, z_read, z_write).

        A is stored row-major, one word per (group, k): A[g P + p, k] for the P lanes (0 past
        the last row). A z RAM word holds one stage-1 result, P1 z values."""
        rank, P, groups = self._rank, self._lanes, self._groups
        P1 = self._stage1.lanes                 # z values per stage-1 result (and z RAM word)
        if P == 1:
            a_shape, a_init = signed(self._a_bits()), [int(v) for v in self._a.ravel()]
        else:
            a_shape = data.ArrayLayout(signed(self._a_bits()), P)
            padded = np.zeros((groups * P, rank), dtype=np.int64)
            padded[:self._out_features] = self._a
            a_init = [[int(padded[g * P + p, k]) for p in range(P)]
                      for g in range(groups) for k in range(rank)]
        m.submodules.factor_a = factor_a = Memory(
            shape=a_shape, depth=groups * rank,
            attrs=block_ram_attrs(a_shape, groups * rank), init=a_init)
        z_shape = lane_shape(signed(self._z_width), P1)
        m.submodules.z = z_memory = Memory(shape=z_shape, depth=-(-rank // P1), init=[])
        a_read = factor_a.read_port()
        z_read = z_memory.read_port()
        z_write = z_memory.write_port()
        return a_read, z_read, z_write

    def _connect_stage1(self, m, z_write):
        """Events into stage 1 and its results into the z RAM; returns (projecting, accept,
        z_index). Stage 1 runs only while no stage-2 work is pending (`projecting`), so z is
        never overwritten in use."""
        stage1 = self._stage1
        projecting = Signal()       # from the last z write until the last result transfer
        accept = self.i.valid & self.i.ready
        z_index = stage1.o.p.row if stage1.lanes == 1 else stage1.o.p.group
        m.d.comb += [
            stage1.i.p.eq(self.i.p),
            stage1.i.valid.eq(self.i.valid & ~projecting),
            self.i.ready.eq(stage1.i.ready & ~projecting),
            stage1.o.ready.eq(1),
            z_write.addr.eq(z_index),
            z_write.data.eq(stage1.o.p.acc),
            z_write.en.eq(stage1.o.valid),
        ]
        return projecting, accept, z_index

    def _add_issue(self, m, advance, projecting, z_index, a_read, z_read):
        """Stage 2's issue counters: from the last z write, (row, k) steps through every group's
        rank MACs, one per cycle unless ``o`` stalls, addressing A (`flat`) and z. Returns
        (issue, row, k): `issue` holds in a cycle that issues the MAC (row, k)."""
        rank, groups, P1 = self._rank, self._groups, self._stage1.lanes
        issuing = Signal()
        row = Signal(range(groups))
        k = Signal(range(rank))
        flat = Signal(range(groups * rank))
        with m.If(self._stage1.o.valid & (z_index == -(-rank // P1) - 1)):
            m.d.sync += [projecting.eq(1), issuing.eq(1), row.eq(0), k.eq(0), flat.eq(0)]
        issue = issuing & advance
        m.d.comb += [
            a_read.addr.eq(flat), a_read.en.eq(advance),
            z_read.addr.eq(k if P1 == 1 else k // P1), z_read.en.eq(advance),
        ]
        with m.If(issue):
            m.d.sync += flat.eq(flat + 1)
            with m.If(k == rank - 1):
                m.d.sync += [k.eq(0), row.eq(row + 1)]
                with m.If(row == groups - 1):
                    m.d.sync += issuing.eq(0)
            with m.Else():
                m.d.sync += k.eq(k + 1)
        return issue, row, k

    def _add_mac_pipeline(self, m, advance, issue, row, k, a_read, z_read):
        """Stage 2's pipeline behind the issue: the A/z read, the product register (one
        multiplier per lane) and the accumulate-and-output register, which puts a group's sum
        on ``o`` with its last MAC. Tags (valid, first, last, row) travel with each MAC."""
        rank, P, P1 = self._rank, self._lanes, self._stage1.lanes

        def tags(name):
            return {"valid": Signal(name=f"{name}_valid"), "first": Signal(name=f"{name}_first"),
                    "last": Signal(name=f"{name}_last"),
                    "row": Signal(range(self._groups), name=f"{name}_row")}

        read, multiply = tags("read"), tags("multiply")
        if P1 == 1:
            z_value = z_read.data
        else:   # the lane of the word read that holds z[k]
            z_lane = Signal(range(P1))
            with m.If(advance):
                m.d.sync += z_lane.eq(k % P1)
            z_value = z_read.data[z_lane]

        def lanes(name, shape):
            return [Signal(shape, name=name if P == 1 else f"{name}{p}") for p in range(P)]

        product = lanes("product", signed(self._a_bits() + self._z_width))
        acc = lanes("acc", signed(self._acc_width))
        acc_next = lanes("acc_next", signed(self._acc_width))
        for p in range(P):
            m.d.comb += acc_next[p].eq(Mux(multiply["first"], 0, acc[p]) + product[p])
        with m.If(advance):
            m.d.sync += [
                read["valid"].eq(issue), read["first"].eq(k == 0),
                read["last"].eq(k == rank - 1), read["row"].eq(row),
            ]
            m.d.sync += [multiply[key].eq(read[key]) for key in read]
            m.d.sync += [product[p].eq(lane_of(a_read.data, p, P) * z_value) for p in range(P)]
            with m.If(multiply["valid"]):
                m.d.sync += [acc[p].eq(acc_next[p]) for p in range(P)]
            m.d.sync += [
                self.o.valid.eq(multiply["valid"] & multiply["last"]),
                (self.o.p.row if P == 1 else self.o.p.group).eq(multiply["row"]),
            ]
            m.d.sync += [lane_of(self.o.p.acc, p, P).eq(acc_next[p]) for p in range(P)]
