"""Where the values live: the value bank and its proxies (see `ValueStore`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib.memory import Memory

from hw.accelerator.util import verilog_name
from hw.components import block_ram_attrs

if TYPE_CHECKING:
    from hw.accelerator.top import Accelerator

__all__ = ["ValueStore"]


class ValueStore:
    """Where the values (neuron outputs) live: one wide bank for most, own memories for some.

    While the stages are built they see per-value proxies: ``r[v].data`` (read data, one cycle
    after the address) and ``w[v]`` (``addr``, ``data``, ``en``), and register each read with
    `read(stage, value, addr)`. `build` then places the values. Small values in memories of
    their own waste most of each block RAM (a 64 x 32 value fills a quarter of two iCE40
    EBRs), so they share one bank whose word is as wide as the widest group of values read
    together (a residual's sources; attention's Q, K, V): each group sits at one base address
    in lanes side by side, so one bank read serves the whole group, and groups are packed into
    the lanes first-fit (widest first). The write port has one enable per lane (granularity:
    the gcd of the widths), so writing one value leaves its neighbours alone. A value that its
    own stage reads back at another address than the stage's input (a pooled conv's partial
    OR) keeps a memory of its own, since the bank has one read port. Timing is that of
    separate memories: one read and one write per cycle, read data one cycle later.
    """

    def __init__(self, acc: "Accelerator"):
        self.acc = acc
        self.r, self.w, self.reads, self.depth = {}, {}, {}, {}
        self.written = None          # the collector's chunk register (set by the collector)
        for node in acc.stages:
            name, ident = node.name, verilog_name(node.name)
            width, depth = acc.channels[name], acc.T * acc.positions[name]
            self.depth[name] = depth
            self.r[name] = SimpleNamespace(data=Signal(width, name=f"{ident}_rdata"))
            # one write enable per chunk of the value (the collector writes a chunk at a time)
            self.w[name] = SimpleNamespace(addr=Signal(range(depth), name=f"{ident}_waddr"),
                                           data=Signal(width, name=f"{ident}_wdata"),
                                           en=Signal(-(-width // acc.chunk), name=f"{ident}_wen"))

    def read(self, stage_id: int, value: str, addr) -> None:
        """Read `value` (every memory behind it) at `addr` while stage `stage_id` runs."""
        for src in self.acc.sources[value]:
            self.reads.setdefault(stage_id, {})[src] = addr

    def plan(self) -> tuple[dict, dict, int, int]:
        """({value: (base, lane offset)} of the bank, {stage: base}, bank width, granularity)
        from the plan (hw.plan.ValueBank); values not in the first dict get memories of
        their own. The reads the stages registered must be the ones the plan declared."""
        declared = self.acc.plan.reads
        for sid in set(declared) | set(self.reads):
            got, want = self.reads.get(sid, {}), declared.get(sid, {})
            groups = lambda per, key: sorted(sorted(v for v in per if key(v) == k)
                                             for k in {key(v) for v in per})
            if list(got) != list(want) or \
                    groups(got, lambda v: id(got[v])) != groups(want, want.get):
                raise AssertionError(f"stage {sid} reads {list(got)}, the plan declares "
                                     f"{list(want)}")
        bank = self.acc.plan.values
        return bank.place, bank.stage_base, bank.width, bank.granularity

    def _lane_enables(self, value: str, granularity: int):
        """The write enables of `value`'s granules (granularity bits each), from its per-chunk
        enables."""
        width, chunk, en = self.acc.channels[value], self.acc.chunk, self.w[value].en
        return Cat(*[en[k].replicate((min(chunk, width - k * chunk)) // granularity)
                     for k in range(len(en))])

    def build(self, m: Module, active: Signal) -> None:
        widths = self.acc.channels
        place, stage_base, width, granularity = self.plan()
        if place:
            depth = max(base + self.depth[v] for v, (base, _) in place.items())
            shape = unsigned(width)
            m.submodules.values = bank = Memory(shape=shape, depth=depth, init=[],
                                                attrs=block_ram_attrs(shape, depth))
            bank_w = bank.write_port(granularity=granularity)
            bank_r = bank.read_port()
            # A value's write data is the collector's chunk replicated; when every lane starts
            # at a multiple of the chunk, one replicated word serves all of them (no lane mux).
            word = self.written
            aligned = all(lane % len(word) == 0 for _, lane in place.values())
            if aligned:
                m.d.comb += bank_w.data.eq(Cat(*[word] * -(-width // len(word)))[:width])
            for v, (base, lane) in place.items():
                w = self.w[v]
                m.d.comb += self.r[v].data.eq(bank_r.data[lane:lane + widths[v]])
                with m.If(w.en.any()):
                    m.d.comb += [bank_w.addr.eq(base + w.addr),
                                 bank_w.en.eq(self._lane_enables(v, granularity)
                                              << (lane // granularity))]
                    if not aligned:
                        m.d.comb += bank_w.data.eq(w.data << lane)
            with m.Switch(active):
                for sid, per in self.reads.items():
                    addrs = [addr for src, addr in per.items() if src in place]
                    if addrs:
                        with m.Case(sid):
                            m.d.comb += bank_r.addr.eq(stage_base[sid] + addrs[0])
        for v in widths:
            if v in place:
                continue
            shape, depth = unsigned(widths[v]), self.depth[v]
            mem = Memory(shape=shape, depth=depth, init=[], attrs=block_ram_attrs(shape, depth))
            m.submodules[f"value_{verilog_name(v)}"] = mem
            w = self.w[v]
            granularity = int(np.gcd(widths[v], self.acc.chunk)) if len(w.en) > 1 else widths[v]
            wp, rp = mem.write_port(granularity=granularity), mem.read_port()
            m.d.comb += [wp.addr.eq(w.addr), wp.data.eq(w.data),
                         wp.en.eq(self._lane_enables(v, granularity)),
                         self.r[v].data.eq(rp.data)]
            with m.Switch(active):
                for sid, per in self.reads.items():
                    if v in per:
                        with m.Case(sid):
                            m.d.comb += rp.addr.eq(per[v])
