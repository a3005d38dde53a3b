"""SpikeCollector (hw/accelerator/collector.py) on its own, against a naive model: the vectors it
writes and traces (OR-pooled 2x2 cells for a pooled conv, chunked wide vectors, both loop orders,
lanes), the layer-cycles record and ``done``, and that a stream of spikes offered every cycle
is never held up while each vector's chunk outlasts the writer."""

import numpy as np
import pytest

from hw.accelerator.collector import CollectedStage, SpikeCollector
from hw.components.streams import CycleClock, simulate, stream_put
from hw.plan import CYCLE_BITS, TRACE_KINDS

pytestmark = pytest.mark.amaranth

T = 2
TRACE = {"kind": 2, "node": 8, "step": 8, "token": 16, "data": max(40, CYCLE_BITS)}


def stages(lanes):
    return [CollectedStage(id=1, node=3, channels=6 * lanes, height=4, width=4, out_tokens=4,
                           tokens_outer=True, pool=True),
            CollectedStage(id=2, node=5, channels=40, height=1, width=3, out_tokens=3,
                           tokens_outer=False, pool=False)]


def loop_order(stage):
    positions = stage.height * stage.width
    if stage.tokens_outer:
        return [(t, p) for p in range(positions) for t in range(T)]
    return [(t, p) for t in range(T) for p in range(positions)]


def expected_records(stage, spikes):
    """(step, token, vector) traced, in order: every vector, or a pooled conv's cells once
    their last position has come."""
    out = []
    for t, p in loop_order(stage):
        if not stage.pool:
            out.append((t, p, spikes[t, p]))
            continue
        y, x = divmod(p, stage.width)
        if y % 2 and x % 2:
            cell = [(y - 1 + dy) * stage.width + x - 1 + dx for dy in (0, 1) for dx in (0, 1)]
            out.append((t, (y >> 1) * (stage.width // 2) + (x >> 1),
                        np.bitwise_or.reduce(spikes[t, cell], axis=0)))
    return out


def pack(bits):
    return sum(int(b) << c for c, b in enumerate(bits))


def run(lanes, chunk, seed):
    rng = np.random.default_rng(seed)
    dut = SpikeCollector(stages(lanes), T, chunk, lanes, TRACE)
    plans = stages(lanes)
    spikes = {s.id: rng.integers(0, 2, size=(T, s.height * s.width, s.channels))
              for s in plans}
    memory = {s.id: {} for s in plans}
    records, stalls, done_at = [], [], {}
    clock = CycleClock()

    async def value_store(ctx):       # one value memory per stage; read data a cycle late
        while True:
            sid, addr = ctx.get(dut.active), ctx.get(dut.addr)
            write, word, chunk_ = ctx.get(dut.write), ctx.get(dut.word), ctx.get(dut.chunk)
            await ctx.tick()
            mem = memory.get(sid, {})
            ctx.set(dut.old, mem.get(addr, 0))
            if write:
                C = min(40, chunk)
                old = mem.get(addr, 0) & ~(((1 << C) - 1) << (chunk_ * C))
                mem[addr] = old | (word << (chunk_ * C))

    async def trace_sink(ctx):
        ctx.set(dut.trace.ready, 1)
        while True:
            await ctx.tick()
            if ctx.get(dut.trace.valid):
                p = ctx.get(dut.trace.payload)
                records.append((int(p.kind), int(p.node), int(p.step), int(p.token),
                                int(p.data)))

    async def driver(ctx):
        for s in plans:
            ctx.set(dut.active, s.id)
            ctx.set(dut.start, 1)
            ctx.set(dut.cycles, 1000 + s.id)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for t, p in loop_order(s):
                vector = spikes[s.id][t, p]
                for g in range(-(-s.channels // lanes)):
                    group = list(vector[g * lanes:(g + 1) * lanes])
                    group += [0] * (lanes - len(group))
                    before = clock.now
                    await stream_put(ctx, dut.spikes, {"spike": pack(group)})
                    stalls.append(clock.now - before - 1)
            await ctx.tick().until(dut.done)
            done_at[s.id] = clock.now
            await ctx.tick()

    simulate(dut, driver, background=[clock.bench, value_store, trace_sink])
    return plans, spikes, memory, records, stalls, done_at


@pytest.mark.parametrize("lanes, chunk, seed", [(1, 16, 1), (1, 40, 2), (2, 16, 3)])
def test_vectors_are_written_and_traced(lanes, chunk, seed):
    plans, spikes, memory, records, stalls, done_at = run(lanes, chunk, seed)
    for s in plans:
        want = expected_records(s, spikes[s.id])
        got = [r for r in records if r[1] == s.node]
        assert [(r[2], r[3], r[4]) for r in got[:-1]] == \
            [(t, tok, pack(v)) for t, tok, v in want]
        assert got[-1][0] == TRACE_KINDS["cycles"] and got[-1][4] == 1000 + s.id
        for t, tok, v in want:                          # the value as the next layer reads it
            assert memory[s.id][t * s.out_tokens + tok] == pack(v)
        assert [r[0] for r in got[:-1]] == [TRACE_KINDS["spikes"]] * len(want)
    assert set(done_at) == {1, 2}


def test_a_spike_offered_every_cycle_is_never_held_up():
    """Every vector here takes at least 6 transfers, more than the writer's 2-4 cycles: the
    gather side takes one spike per cycle throughout (hw/cycles.py's collector)."""
    *_, stalls, _ = run(1, 40, 4)
    assert stalls and max(stalls) == 0


@pytest.mark.parametrize("pool", [False, True])
def test_a_short_vector_waits_for_the_writer_as_the_cycle_model_says(pool):
    """Vectors of 2 transfers, fewer than the writer's cycles: each vector's last transfer
    waits until the writer is free, so a vector takes writer_cycles + 1 cycles
    (hw.timing.collector_writer_cycles: 2, or pooled 3 and 4 at a cell's last position)."""
    stage = CollectedStage(id=1, node=1, channels=2, height=2, width=2, out_tokens=1 if pool
                           else 4, tokens_outer=True, pool=pool)
    dut = SpikeCollector([stage], T, 32, 1, TRACE)
    clock, taken = CycleClock(), []

    async def driver(ctx):
        ctx.set(dut.active, 1)
        ctx.set(dut.trace.ready, 1)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(stage.height * stage.width * T * stage.channels):
            await stream_put(ctx, dut.spikes, {"spike": 1})
            taken.append(clock.now)

    simulate(dut, driver, background=[clock.bench])
    ends = taken[1::2]                                     # each vector's last transfer
    for n, (t, p) in enumerate(loop_order(stage)[1:], start=1):
        y, x = divmod(loop_order(stage)[n - 1][1], stage.width)   # the vector written before
        writer = SpikeCollector.writer_cycles(pool, pool and y % 2 == 1 and x % 2 == 1)
        assert ends[n] - ends[n - 1] == max(2, writer + 1), (n, t, p)
