"""Spiking self-attention counts Q_h (K_h^T V_h) per head over binary Q, K, V.

The golden rule is model.ir.intops.attention_counts: for head h of width d = dim / heads,

    out[n, h*d + j] = sum_i Q[n, h*d+i] * KV_h[i, j],    KV_h[i, j] = sum_m K[m, h*d+i] V[m, h*d+j]

Binary operands turn every product into an AND, so the block needs no multiplier: phase 1 counts
co-activations into KV, phase 2 sums the KV counters that Q's active bits select (one output
channel per cycle, or with P lanes a group of P channels: phase 2 dominates the cycles).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.components import block_ram_attrs, check_int, lane_of, or_all, tree_sum
from hw.components.sparse import CYCLE_COUNTER_WIDTH, add_cycle_counter
from model.ir.intops import signed_bits

__all__ = ["SpikingAttention"]


class SpikingAttention(wiring.Component):
    """Attention counts of one time step: Q_h (K_h^T V_h) per head, over binary Q, K, V.

    Protocol. Each transfer on ``i`` carries one token's spike rows ``{token, q, k, v}``
    (``dim`` bits each, bit c = channel c). A time step is exactly ``tokens`` transfers, one per
    token, in any order. The block then emits ``tokens * dim`` counts ``{token, channel, acc}``
    on ``o``, token-major and channels in order (the order SlifNeuronArray consumes), and
    accepts the next time step's rows once the last count has been transferred.

    Datapath. The counters are stored transposed, one RAM row per output channel c = (h, j)
    holding the d counters KVT[c][i] = KV_h[i, j] (``kv_width`` bits each):

    * Phase 1 (per token): for each active bit c = (h, j) of the V row, add the d bits of the
      token's K row for head h to the d counters of row c: one read-modify-write per cycle,
      d counters in parallel, silent V bits skipped. Q rows are stored in a small RAM.
    * Phase 2 (per token n, channel c): read row c, AND its counters with the d Q bits of head h
      and add them in an adder tree: one count per cycle. The last token's pass writes each row
      back to zero, which clears the counters for the next time step without a separate pass.

    Lanes. With ``lanes`` = P > 1 (P divides d, so the P channels of a group share one head)
    phase 2 emits one *group* of P consecutive channels per transfer, ``{token, group, acc[P]}``
    (acc[p]: channel group * P + p), token-major and groups in order: ``tokens * dim / P``
    transfers. One counter RAM word then holds the P rows of a group (``P x d`` counters), so one
    read feeds P adder trees. Phase 1 stays serial, one active V bit per cycle: its
    read-modify-write rewrites the whole word with only lane c % P of word c // P incremented
    (the transparent read port keeps back-to-back updates of one word exact). P = 1 is the
    one-lane block above, unchanged.

    Cycles. With rows offered every cycle and ``o`` always ready, one time step takes exactly

        cycles = sum_n max(popcount(v_n), 1) + tokens * dim / P + 3

    from the first accepted row through the last count transfer, inclusive (`cycles_for`): each
    token costs its active V bits (at least the cycle it occupies the walker), phase 2 one cycle
    per transfer, and the 3 are the first row's acceptance, the counter RAM read and the output
    register.

    Parameters
    ----------
    tokens, dim, heads : int
        N tokens of dim channels, split into heads of d = dim / heads channels.
    kv_width : int
        Width of the unsigned KV counters: they count up to ``tokens`` (checked); the artifact's
        signed ``widths.kv`` is one bit wider than needed and fits too.
    acc_width : int
        Signed width of ``o.payload.acc`` (of each lane); it must hold tokens * d (checked).
    lanes : int
        Channels per output transfer (P, default 1); P must divide d (hence P <= dim).

    Members
    -------
    i : In(stream.Signature(row_layout))
        Token rows ``{token, q, k, v}``.
    o : Out(stream.Signature(count_layout))
        Counts ``{token, channel, acc}`` (P lanes: ``{token, group, acc[P]}``).
    cycles : Out(32)
        Cycles the current (or last) time step has been in flight.
    """

    def __init__(self, tokens, dim, heads, kv_width, acc_width, lanes=1):
        self._tokens = check_int(tokens, "tokens", minimum=1)
        self._dim = check_int(dim, "dim", minimum=1)
        self._heads = check_int(heads, "heads", minimum=1)
        if self._dim % self._heads:
            raise ValueError(f"dim {self._dim} is not divisible by heads {self._heads}")
        self._lanes = P = check_int(lanes, "lanes", minimum=1)
        if P > self._dim:
            raise ValueError(f"lanes = {P} exceeds dim = {self._dim}")
        if self.head_dim % P:
            raise ValueError(f"lanes = {P} does not divide head_dim = dim / heads = "
                             f"{self.head_dim}")
        self._kv_width = check_int(kv_width, "kv_width", minimum=1)
        if self._tokens >= 1 << self._kv_width:
            raise ValueError(f"kv_width {self._kv_width} is too narrow: KV counts reach "
                             f"tokens = {self._tokens}")
        self._acc_width = check_int(acc_width, "acc_width", minimum=1)
        needed = signed_bits(0, self._tokens * self.head_dim)
        if self._acc_width < needed:
            raise ValueError(f"acc_width {self._acc_width} is too narrow: counts reach "
                             f"tokens * dim / heads = {self._tokens * self.head_dim}, "
                             f"which needs {needed} bits")

        token_shape = unsigned(bits_for(self._tokens - 1))
        self._row_layout = data.StructLayout({
            "token": token_shape, "q": self._dim, "k": self._dim, "v": self._dim,
        })
        if P == 1:
            self._count_layout = data.StructLayout({
                "token": token_shape,
                "channel": unsigned(bits_for(self._dim - 1)),
                "acc": signed(self._acc_width),
            })
        else:
            self._count_layout = data.StructLayout({
                "token": token_shape,
                "group": unsigned(bits_for(self._dim // P - 1)),
                "acc": data.ArrayLayout(signed(self._acc_width), P),
            })
        super().__init__({
            "i": In(stream.Signature(self._row_layout)),
            "o": Out(stream.Signature(self._count_layout)),
            "cycles": Out(CYCLE_COUNTER_WIDTH),
        })

    tokens = property(lambda self: self._tokens)
    dim = property(lambda self: self._dim)
    heads = property(lambda self: self._heads)
    kv_width = property(lambda self: self._kv_width)
    acc_width = property(lambda self: self._acc_width)
    lanes = property(lambda self: self._lanes)
    row_layout = property(lambda self: self._row_layout)
    count_layout = property(lambda self: self._count_layout)

    @property
    def head_dim(self) -> int:
        """d = dim / heads, the channels of one head."""
        return self._dim // self._heads

    def cycles_for(self, v_rows) -> int:
        """Exact cycle count of one time step whose V rows (0/1 sequences) are `v_rows`."""
        return (sum(max(int(sum(row)), 1) for row in v_rows)
                + self._tokens * self._dim // self._lanes + 3)

    def elaborate(self, platform):
        """The datapath of the class docstring, part by part: the memories, phase 1's V-row
        walker and its counter updates, phase 2's (token, channel) order, read stage and count
        output, and the memory ports the two phases share."""
        m = Module()
        memories = self._add_memories(m)
        projecting = Signal()       # phase 2, until the last count has been transferred
        received = Signal(range(self._tokens + 1))
        walker = self._phase_1_walker(m, memories, projecting, received)
        update = self._phase_1_update(m, walker)
        # phase 2 stalls as a whole on o
        advance = ~self.o.valid | self.o.ready
        order = self._phase_2_order(m, advance, projecting, received, walker.token_done)
        read = self._phase_2_read(m, advance, order)
        last_transfer = self._phase_2_output(m, advance, projecting, memories, read)
        self._shared_ports(m, advance, projecting, memories, walker, update, order, read)
        add_cycle_counter(m, self.cycles, start=walker.accept, stop=last_transfer)
        return m

    def _add_memories(self, m) -> SimpleNamespace:
        """The counter RAM (one word per channel, or group of P channels: d counters per
        channel) and the Q rows' RAM (one row per token), and their ports. The counters' read
        port is transparent to their write, for back-to-back read-modify-writes of one word."""
        N, dim, d, P = self._tokens, self._dim, self.head_dim, self._lanes
        groups = dim // P                   # counter words, and transfers per token
        counters_layout = data.ArrayLayout(unsigned(self._kv_width), d)
        if P > 1:       # one word per group: the P rows (channels) of d counters each
            counters_layout = data.ArrayLayout(counters_layout, P)
        m.submodules.counters = counters = Memory(shape=counters_layout, depth=groups, init=[],
                                                  attrs=block_ram_attrs(counters_layout, groups))
        m.submodules.q_rows = q_rows = Memory(shape=unsigned(dim), depth=N, init=[],
                                              attrs=block_ram_attrs(unsigned(dim), N))
        counters_write = counters.write_port()
        counters_read = counters.read_port(transparent_for=(counters_write,))
        q_write = q_rows.write_port()
        q_read = q_rows.read_port()
        return SimpleNamespace(counters_read=counters_read, counters_write=counters_write,
                               q_read=q_read, q_write=q_write)

    def _index_signal(self, name):
        """A channel (one lane) or group (P lanes) index, named as before with one lane."""
        return Signal(range(self._dim // self._lanes),
                      name=f"{name}_channel" if self._lanes == 1 else f"{name}_group")

    def _phase_1_walker(self, m, memories, projecting, received) -> SimpleNamespace:
        """Phase 1's input: accept a token's rows while phase 2 is idle and the previous
        token's walk ends (storing its Q row), then walk its V row bit by bit, lowest active
        channel first, selecting each channel's counter word and its head's K bits. With P
        lanes, channel c is lane c % P (one-hot in `channel_lane`) of word c // P."""
        N, dim, d, P = self._tokens, self._dim, self.head_dim, self._lanes
        groups = dim // P
        q_write = memories.q_write
        token_valid = Signal()
        v_remaining = Signal(dim)
        k_row = Signal(dim)
        channel = Signal(range(groups), name="channel" if P == 1 else "channel_group")
        channel_lane = Signal(P) if P > 1 else None
        k_head_bits = Signal(d)
        # the lowest active channel, one-hot (v & -v: a carry chain), encoded by OR trees of
        # log depth (a priority mux over the channels made this the UP5K's critical path)
        lowest = Signal(dim, name="v_lowest")
        m.d.comb += lowest.eq(v_remaining & (~v_remaining + 1))
        width = len(channel)
        m.d.comb += channel.eq(or_all([Const(c // P, width) & lowest[c].replicate(width)
                                       for c in range(P, dim)]))
        m.d.comb += k_head_bits.eq(or_all([k_row[h * d:(h + 1) * d] &
                                           lowest[h * d:(h + 1) * d].any().replicate(d)
                                           for h in range(dim // d)]))
        if P > 1:
            m.d.comb += channel_lane.eq(or_all([Const(1 << (c % P), P) & lowest[c].replicate(P)
                                                for c in range(dim)]))
        token_done = ~token_valid | ((v_remaining & (v_remaining - 1)) == 0)
        issue = token_valid & (v_remaining != 0)
        accept = Signal()
        m.d.comb += [
            self.i.ready.eq(~projecting & (received != N) & token_done),
            accept.eq(self.i.valid & self.i.ready),
            q_write.addr.eq(self.i.p.token),
            q_write.data.eq(self.i.p.q),
            q_write.en.eq(accept),
        ]
        with m.If(accept):
            m.d.sync += [
                token_valid.eq(1),
                v_remaining.eq(self.i.p.v),
                k_row.eq(self.i.p.k),
                received.eq(received + 1),
            ]
        with m.Elif(token_done):
            m.d.sync += token_valid.eq(0)
        with m.Else():
            m.d.sync += v_remaining.eq(v_remaining & (v_remaining - 1))
        return SimpleNamespace(accept=accept, issue=issue, token_done=token_done,
                               channel=channel, channel_lane=channel_lane,
                               k_head_bits=k_head_bits)

    def _phase_1_update(self, m, walker) -> SimpleNamespace:
        """Registers the walker's channel for the read-modify-write of the next cycle, when
        the counter RAM has read its word: the word, the K bits to add, and (P lanes) the
        one-hot lane they go to."""
        update_valid = Signal()
        # the counter word (P lanes: the group)
        update_row = Signal(range(self._dim // self._lanes))
        update_bits = Signal(self.head_dim)
        m.d.sync += [update_valid.eq(walker.issue), update_row.eq(walker.channel),
                     update_bits.eq(walker.k_head_bits)]
        update_lane = None
        if self._lanes > 1:
            update_lane = Signal(self._lanes)
            m.d.sync += update_lane.eq(walker.channel_lane)
        return SimpleNamespace(valid=update_valid, row=update_row, bits=update_bits,
                               lane=update_lane)

    def _phase_2_order(self, m, advance, projecting, received, token_done) -> SimpleNamespace:
        """Phase 2's order: once all N rows are in and the last walk has ended, (token,
        channel or group) in order, one per cycle while ``o`` advances, with the channel's head
        counted alongside (no divider)."""
        N, d, P = self._tokens, self.head_dim, self._lanes
        groups = self._dim // P
        issuing = Signal()
        token = Signal(range(N))
        out_channel = self._index_signal("out")
        head = Signal(range(self._heads))
        within_head = Signal(range(d // P))
        with m.If(~projecting & (received == N) & token_done):
            m.d.sync += [projecting.eq(1), issuing.eq(1), received.eq(0), token.eq(0),
                         out_channel.eq(0), head.eq(0), within_head.eq(0)]
        with m.If(issuing & advance):
            with m.If(out_channel == groups - 1):
                m.d.sync += [out_channel.eq(0), head.eq(0), within_head.eq(0),
                             token.eq(token + 1)]
                with m.If(token == N - 1):
                    m.d.sync += issuing.eq(0)
            with m.Else():
                m.d.sync += out_channel.eq(out_channel + 1)
                with m.If(within_head == d // P - 1):
                    m.d.sync += [within_head.eq(0), head.eq(head + 1)]
                with m.Else():
                    m.d.sync += within_head.eq(within_head + 1)
        return SimpleNamespace(issuing=issuing, token=token, channel=out_channel, head=head)

    def _phase_2_read(self, m, advance, order) -> SimpleNamespace:
        """Phase 2's read stage: the transfer whose counter word and Q row are being read."""
        read_valid = Signal()
        read_token = Signal(range(self._tokens))
        read_channel = self._index_signal("read")
        read_head = Signal(range(self._heads))
        with m.If(advance):
            m.d.sync += [read_valid.eq(order.issuing), read_token.eq(order.token),
                         read_channel.eq(order.channel), read_head.eq(order.head)]
        return SimpleNamespace(valid=read_valid, token=read_token, channel=read_channel,
                               head=read_head)

    def _phase_2_output(self, m, advance, projecting, memories, read):
        """Phase 2's output: per lane, AND the read counters with the head's d Q bits and sum
        them in an adder tree, into the output register; the last transfer ends phase 2.
        Returns that last transfer."""
        N, d, P = self._tokens, self.head_dim, self._lanes
        q_head_bits = Signal(d)
        with m.Switch(read.head):
            for h in range(self._heads):
                with m.Case(h):
                    m.d.comb += q_head_bits.eq(memories.q_read.data[h * d:(h + 1) * d])
        counters = memories.counters_read.data
        counts = [tree_sum(Mux(q_head_bits[i], lane_of(counters, p, P)[i], 0)
                            for i in range(d)) for p in range(P)]
        out_index = self.o.p.channel if P == 1 else self.o.p.group
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(read.valid),
                self.o.p.token.eq(read.token),
                out_index.eq(read.channel),
            ]
            m.d.sync += [lane_of(self.o.p.acc, p, P).eq(counts[p]) for p in range(P)]
        transfer = self.o.valid & self.o.ready
        last_transfer = transfer & (self.o.p.token == N - 1) & (out_index == self._dim // P - 1)
        with m.If(last_transfer):
            m.d.sync += projecting.eq(0)
        return last_transfer

    def _shared_ports(self, m, advance, projecting, memories, walker, update, order, read):
        """The memory ports both phases use. Phase 1's last update may still be writing in
        phase 2's first cycle (the transparent read sees it); the clearing writes of the last
        token's pass start a cycle later. With P lanes an update rewrites its whole word, only
        its own lane incremented: the transparent read has already seen the previous update,
        even one to the same word a cycle before."""
        d, P = self.head_dim, self._lanes
        counters_read, counters_write = memories.counters_read, memories.counters_write
        m.d.comb += [memories.q_read.addr.eq(order.token), memories.q_read.en.eq(advance)]
        with m.If(projecting):
            m.d.comb += [counters_read.addr.eq(order.channel), counters_read.en.eq(advance)]
        with m.Else():
            m.d.comb += [counters_read.addr.eq(walker.channel), counters_read.en.eq(1)]
        with m.If(update.valid):
            m.d.comb += [counters_write.addr.eq(update.row), counters_write.en.eq(1)]
            for p in range(P):
                bits = update.bits if P == 1 else update.bits & update.lane[p].replicate(d)
                old, new = lane_of(counters_read.data, p, P), lane_of(counters_write.data, p, P)
                m.d.comb += [new[i].eq(old[i] + bits[i]) for i in range(d)]
        with m.Else():
            m.d.comb += [
                counters_write.addr.eq(read.channel),
                counters_write.data.eq(0),
                counters_write.en.eq(advance & read.valid & (read.token == self._tokens - 1)),
            ]
