"""ValueStore (hw/accelerator/store.py) on its own, placed by real plans: chunk writes land in
their value only (neighbouring lanes of the shared bank untouched), and every stage's declared
reads return the value words, one cycle after the address, against a dict of the values."""

import numpy as np
import pytest

from hw.accelerator.store import ValueStore
from hw.accelerator.util import verilog_name
from hw.components.streams import simulate
from hw.plan import Plan
from tests.accelerator_fixtures import tiny_artifact

pytestmark = pytest.mark.amaranth


@pytest.mark.parametrize("kind, lanes, chunk", [("l1p", 1, None), ("dsp", 1, None),
                                                ("l1p-wide", 2, 12)])
def test_writes_land_in_their_value_and_every_declared_read_returns_it(kind, lanes, chunk):
    plan = Plan.build(tiny_artifact(kind), lanes, chunk)
    channels = {s.name: s.channels for s in plan.stages}
    dut = ValueStore(plan, channels, plan.chunk)
    C = min(plan.chunk, max(channels.values()))
    rng = np.random.default_rng(0)
    values = {v: {} for v in channels}          # the model: value -> {address: word}
    assert plan.values.place, "the plan should share a bank"

    async def bench(ctx):
        for _ in range(300):                     # random chunk writes, one per cycle
            v = str(rng.choice(list(channels)))
            addr = int(rng.integers(plan.values.depth[v]))
            chunk = int(rng.integers(-(-channels[v] // plan.chunk)))
            word = int(rng.integers(1 << C))
            port = dut.write_of(v)
            ctx.set(dut.word, word)
            ctx.set(port.addr, addr)
            ctx.set(port.en, 1 << chunk)
            await ctx.tick()
            ctx.set(port.en, 0)
            width = channels[v]
            lo, hi = chunk * C, min(width, chunk * C + C)
            old = values[v].get(addr, 0)
            keep = old & ~(((1 << (hi - lo)) - 1) << lo)
            values[v][addr] = keep | ((word & ((1 << (hi - lo)) - 1)) << lo)
        for sid, per in plan.reads.items():      # each stage reads what it declared
            ctx.set(dut.active, sid)
            for role in set(per.values()):
                names = [v for v, r in per.items() if r == role]
                for addr in range(min(plan.values.depth[v] for v in names)):
                    ctx.set(dut.address(sid, role), addr)
                    await ctx.tick()
                    for v in names:
                        assert ctx.get(dut.data_of(v)) == values[v].get(addr, 0), \
                            (sid, role, v, addr)

    simulate(dut, bench)


def test_ports_are_the_plans():
    plan = Plan.build(tiny_artifact("l1p"))
    dut = ValueStore(plan, {s.name: s.channels for s in plan.stages}, plan.chunk)
    assert dut.roles == {(sid, role) for sid, per in plan.reads.items() for role in per.values()}
    for s in plan.stages:
        assert len(dut.data_of(s.name)) == s.channels
        assert hasattr(dut, f"write_{verilog_name(s.name)}")
