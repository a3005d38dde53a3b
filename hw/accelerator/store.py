"""Where the values live: the value bank and memories of their own (see `ValueStore`)."""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.accelerator.util import verilog_name
from hw.components import block_ram_attrs

__all__ = ["ValueStore"]


class ValueStore(wiring.Component):
    """The values (neuron outputs), placed as the plan says (hw.plan.ValueBank).

    Small values in memories of their own waste most of each block RAM (a 64 x 32 value fills
    a quarter of two iCE40 EBRs), so most share one bank whose word is as wide as the widest
    group of values read together (a residual's sources; attention's Q, K, V): each group sits
    at one base address in lanes side by side, so one bank read serves the whole group. The
    write port has one enable per granule (the gcd of the widths), so writing one value leaves
    its neighbours alone. A value that its own stage reads back at a second address (a pooled
    conv's partial OR) keeps a memory of its own, since the bank has one read port. Timing is
    that of separate memories: one read and one write per cycle, read data one cycle later.

    Every write is the spike collector's chunk (``word``) at a value's address, the chunk's
    lanes enabled; every read is a stage's, at the address of one of its declared reads
    (hw.plan.Plan.reads: a stage's inputs at its "input" address, a pooled conv's own value at
    its "readback" address).

    Members
    -------
    active : In(range(ids))
        The running stage: it selects the read addresses.
    word : In(chunk)
        The collector's chunk, written wherever a value's enables say.
    write_<value> : In({addr, en})
        A value's write: its address (step * tokens + token) and one enable per chunk.
    read<id>_<role> : In(range(depth))
        Stage `id`'s read address of that role.
    data_<value> : Out(channels)
        A value's word at the address read in the previous cycle.
    """

    def __init__(self, plan, channels: dict, chunk: int):
        self._plan, self._channels, self._chunk = plan, dict(channels), chunk
        bank = plan.values
        self._depth = dict(bank.depth)
        depth = max(self._depth.values())
        members = {"active": In(range(plan.head_id + 2)), "word": In(min(chunk,
                                                                     max(channels.values())))}
        for v, width in self._channels.items():
            ident = verilog_name(v)
            members[f"write_{ident}"] = In(data.StructLayout({
                "addr": unsigned(max(1, (self._depth[v] - 1).bit_length())),
                "en": unsigned(-(-width // chunk))}))
            members[f"data_{ident}"] = Out(width)
        self._roles = {(sid, role) for sid, per in plan.reads.items()
                       for role in per.values()}
        for sid, role in sorted(self._roles):
            members[f"read{sid}_{role}"] = In(range(depth))
        super().__init__(members)

    @property
    def roles(self) -> set:
        """{(stage id, role)}: the read addresses the stages must drive."""
        return set(self._roles)

    def address(self, stage_id: int, role: str):
        """The read address port of stage `stage_id`'s reads of `role`."""
        return getattr(self, f"read{stage_id}_{role}")

    def data_of(self, value: str):
        return getattr(self, f"data_{verilog_name(value)}")

    def write_of(self, value: str):
        return getattr(self, f"write_{verilog_name(value)}")

    def _lane_enables(self, value: str, granularity: int):
        """The write enables of `value`'s granules (granularity bits each), from its per-chunk
        enables."""
        width, chunk, en = self._channels[value], self._chunk, self.write_of(value).en
        return Cat(*[en[k].replicate((min(chunk, width - k * chunk)) // granularity)
                     for k in range(len(en))])

    def _stage_address(self, sid: int, value: str):
        return self.address(sid, self._plan.reads[sid][value])

    def elaborate(self, platform):
        m = Module()
        bank = self._plan.values
        if bank.place:
            self._bank(m, bank)
        for v in self._channels:
            if v not in bank.place:
                self._own_memory(m, v)
        return m

    def _bank(self, m, bank) -> None:
        """The shared bank: every placed value in its lanes at its base address."""
        widths, place, word = self._channels, bank.place, self.word
        depth = max(base + self._depth[v] for v, (base, _) in place.items())
        shape = unsigned(bank.width)
        m.submodules.values = memory = Memory(shape=shape, depth=depth, init=[],
                                              attrs=block_ram_attrs(shape, depth))
        bank_w = memory.write_port(granularity=bank.granularity)
        bank_r = memory.read_port()
        # A value's write data is the collector's chunk replicated; when every lane starts at
        # a multiple of the chunk, one replicated word serves all of them (no lane mux).
        aligned = all(lane % len(word) == 0 for _, lane in place.values())
        if aligned:
            m.d.comb += bank_w.data.eq(Cat(*[word] * -(-bank.width // len(word)))[:bank.width])
        for v, (base, lane) in place.items():
            w = self.write_of(v)
            m.d.comb += self.data_of(v).eq(bank_r.data[lane:lane + widths[v]])
            with m.If(w.en.any()):
                m.d.comb += [bank_w.addr.eq(base + w.addr),
                             bank_w.en.eq(self._lane_enables(v, bank.granularity)
                                          << (lane // bank.granularity))]
                if not aligned:
                    replicated = Cat(*[word] * -(-widths[v] // len(word)))[:widths[v]]
                    m.d.comb += bank_w.data.eq(replicated << lane)
        with m.Switch(self.active):
            for sid, per in self._plan.reads.items():
                placed = [v for v in per if v in place]
                if placed:
                    with m.Case(sid):
                        m.d.comb += bank_r.addr.eq(bank.stage_base[sid] +
                                                   self._stage_address(sid, placed[0]))

    def _own_memory(self, m, v: str) -> None:
        """A memory of its own for a value read back at a second address."""
        width, depth = self._channels[v], self._depth[v]
        shape = unsigned(width)
        mem = Memory(shape=shape, depth=depth, init=[], attrs=block_ram_attrs(shape, depth))
        m.submodules[f"value_{verilog_name(v)}"] = mem
        w = self.write_of(v)
        granularity = int(np.gcd(width, self._chunk)) if len(w.en) > 1 else width
        wp, rp = mem.write_port(granularity=granularity), mem.read_port()
        word = self.word
        m.d.comb += [wp.addr.eq(w.addr), wp.data.eq(Cat(*[word] * -(-width // len(word)))[:width]),
                     wp.en.eq(self._lane_enables(v, granularity)), self.data_of(v).eq(rp.data)]
        with m.Switch(self.active):
            for sid, per in self._plan.reads.items():
                if v in per:
                    with m.Case(sid):
                        m.d.comb += rp.addr.eq(self._stage_address(sid, v))
