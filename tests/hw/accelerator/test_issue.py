"""IssueFSM (hw/accelerator/issue.py) on its own, against a naive model: the events of a conv
and of a chunked matmul stage (engine column, count, end markers) in order, the read addresses
it walks, a static conv issuing step 0 only, back-pressure, and its documented timing."""

import random

import numpy as np
import pytest

from hw.accelerator.issue import IssuedStage, IssueFSM
from hw.components.streams import CycleClock, simulate

pytestmark = pytest.mark.amaranth

T = 2
CONV = IssuedStage(id=1, is_conv=True, static_replay=False, height=3, width=3, col_base=0,
                   inputs=4, count_bits=2)
MATMUL = IssuedStage(id=2, is_conv=False, static_replay=False, height=1, width=3, col_base=36,
                     inputs=40, count_bits=1)
STATIC = IssuedStage(id=3, is_conv=True, static_replay=True, height=2, width=2, col_base=76,
                     inputs=3, count_bits=2)


def source_counts(stage, rng):
    """counts[step, position, channel] of the stage's source, about half of them zero."""
    top = (1 << stage.count_bits) - 1
    counts = rng.integers(1, top + 1, size=(T, stage.positions, stage.inputs))
    return np.where(rng.random(counts.shape) < 0.5, 0, counts)


def expected(stage, counts, chunk, prefetch=False):
    """[(index, count, end)] and the cycles the FSM takes per the documented timing (always
    ready): FETCH 1 per tap (a tap outside the image costs that alone; a vector's first tap
    inside the image is fetched during the END before, except the first vector's), per chunk
    LOAD_MASK 1 and one per event (one cycle for a chunk without events), then END. With
    `prefetch`, a conv's taps after its first inside the image cost no FETCH, and taps outside
    it none either, except one FETCH where a vector's tap 0 lies outside; and a vector's first
    chunk is loaded as the END before it is taken (its LOAD_MASK costs nothing), except the
    first vector's and where its tap 0 lies outside."""
    events, cycles = [], 0
    n_mask = min(chunk, max(s.inputs for s in (CONV, MATMUL, STATIC)))
    chunks = -(-stage.inputs // n_mask)
    for p in range(stage.positions):
        y, x = divmod(p, stage.width)
        for t in range(1 if stage.static_replay else T):
            leading, after_end = True, bool(events)
            for tap in range(9 if stage.is_conv else 1):
                ny, nx = y + tap // 3 - 1, x + tap % 3 - 1
                inside = not stage.is_conv or (0 <= ny < stage.height and 0 <= nx < stage.width)
                if prefetch and stage.is_conv:
                    if tap == 0 and not (inside and after_end):     # a jump, or the first FETCH
                        cycles += IssueFSM.FETCH_CYCLES
                    if inside and leading and tap > 0:          # the jump's target
                        cycles += IssueFSM.FETCH_CYCLES
                elif not (tap == 0 and inside and after_end):     # else fetched during END
                    cycles += IssueFSM.FETCH_CYCLES
                if not inside:
                    continue
                leading = False
                source = counts[t, ny * stage.width + nx] if stage.is_conv else counts[t, p]
                for c in np.flatnonzero(source):
                    column = c * 9 + tap if stage.is_conv else c
                    events.append((stage.col_base + int(column), int(source[c]), 0))
                for c in range(chunks):     # a chunk's last event moves on as it is taken
                    active = int(np.count_nonzero(source[c * n_mask:(c + 1) * n_mask]))
                    cycles += IssueFSM.LOAD_CYCLES + (active or IssueFSM.EMPTY_CYCLES)
                if prefetch and tap == 0 and after_end:     # loaded as the END before is taken
                    cycles -= IssueFSM.LOAD_CYCLES
            events.append((0, None, 1))
            cycles += IssueFSM.END_CYCLES                           # END
    return events, cycles


def run(stages, chunk, seed, stall=False, prefetch=False):
    rng = np.random.default_rng(seed)
    counts = {s.id: source_counts(s, rng) for s in stages}
    dut = IssueFSM(stages, T, chunk, prefetch=prefetch)
    got, spans, clock = {s.id: [] for s in stages}, {}, CycleClock()
    waits = random.Random(seed)

    async def memory(ctx):           # every stage's source word, a cycle after its address
        while True:                  # the address at the clock edge, as a read port sees it
            _, _, sid, step, token, ny, nx = await ctx.tick().sample(
                dut.active, dut.step, dut.token, dut.ny, dut.nx)
            for s in stages:
                pos = ny * s.width + nx if s.is_conv else token
                inside = 0 <= ny < s.height and 0 <= nx < s.width if s.is_conv else True
                word = 0
                if s.id == sid and inside and 0 <= pos < s.positions:
                    for c, v in enumerate(counts[s.id][step, pos]):
                        word |= int(v) << (c * s.count_bits)
                ctx.set(getattr(dut, f"word{s.id}"), word)

    async def driver(ctx):
        for s in stages:
            ctx.set(dut.start, 1)
            ctx.set(dut.stage_busy, 1)
            await ctx.tick()
            begun = clock.now
            ctx.set(dut.start, 0)
            ctx.set(dut.active, s.id)
            want_ends = s.positions * (1 if s.static_replay else T)
            ends = 0
            while ends < want_ends:
                ready = 0 if stall and waits.random() < 0.3 else 1
                ctx.set(dut.events.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.events.valid,
                                                               dut.events.payload)
                if valid and ready:
                    end = int(payload.end)
                    got[s.id].append((0 if end else int(payload.index),
                                      None if end else int(payload.count), end))
                    ends += end
            ctx.set(dut.events.ready, 0)
            spans[s.id] = clock.now - begun          # through the last END
            ctx.set(dut.stage_busy, 0)
            await ctx.tick()

    simulate(dut, driver, background=[clock.bench, memory])
    return counts, got, spans


@pytest.mark.parametrize("chunk, seed, prefetch", [(32, 1, False), (16, 2, False),
                                                   (40, 3, False), (32, 6, True),
                                                   (16, 7, True), (2, 8, True)])
def test_events_in_order_and_in_the_documented_cycles(chunk, seed, prefetch):
    stages = [CONV, MATMUL, STATIC]
    counts, got, spans = run(stages, chunk, seed, prefetch=prefetch)
    for s in stages:
        events, cycles = expected(s, counts[s.id], chunk, prefetch)
        assert got[s.id] == events, s
        assert spans[s.id] == cycles, s


@pytest.mark.parametrize("seed, prefetch", [(4, False), (5, False), (9, True), (10, True)])
def test_back_pressure_changes_no_event(seed, prefetch):
    stages = [CONV, MATMUL]
    counts, got, _ = run(stages, 32 if seed < 10 else 2, seed, stall=True, prefetch=prefetch)
    for s in stages:
        assert got[s.id] == expected(s, counts[s.id], 32 if seed < 10 else 2, prefetch)[0]
