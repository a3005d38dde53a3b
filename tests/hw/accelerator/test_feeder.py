"""ReplayFeeder (hw/accelerator/feeder.py) on its own: a position's step-0 results go through,
then come back T-1 times from the replay memory, in order, with the documented timing, also
under back-pressure and with lanes."""

import random

import pytest
from amaranth import signed, unsigned
from amaranth.lib import data
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.accelerator.feeder import ReplayFeeder
from hw.components import lane_shape
from hw.components.streams import CycleClock, simulate, stream_get_all, stream_put_all

pytestmark = pytest.mark.amaranth


def layouts(groups, lanes, acc_width=9):
    index = "row" if lanes == 1 else "group"
    acc = lane_shape(signed(acc_width), lanes)
    result = data.StructLayout({index: unsigned(max(1, (groups - 1).bit_length())), "acc": acc})
    update = data.StructLayout({"token": unsigned(1), ("channel" if lanes == 1 else "group"):
                                unsigned(max(1, (groups - 1).bit_length())), "acc": acc,
                                "first": 1})
    return result, update


def run(groups, steps, lanes, positions, *, idle_seed=None):
    """Positions of random accumulators through the feeder; returns (updates as tuples,
    cycle of each update's transfer, cycle of each result's transfer)."""
    result, update = layouts(groups, lanes)
    dut = ReplayFeeder(groups, steps, result, update, lanes)
    rng = random.Random(groups * 100 + steps)
    accs = [[[rng.randint(-200, 200) for _ in range(lanes)] for _ in range(groups)]
            for _ in range(positions)]
    index = "row" if lanes == 1 else "group"
    sent = [{index: g, "acc": a if lanes > 1 else a[0]} for pos in accs for g, a in enumerate(pos)]
    clock, put_at, got_at = CycleClock(), [], []
    idle = None if idle_seed is None else (lambda r=random.Random(idle_seed): r.choice([0, 0, 1, 3]))
    got = []

    async def producer(ctx):
        for payload in sent:
            await stream_put_all(ctx, dut.i, [payload])
            put_at.append(clock.now)

    async def consumer(ctx):
        for _ in range(positions * groups * steps):
            (p,) = await stream_get_all(ctx, dut.o, 1, idle)
            got_at.append(clock.now)
            acc = [int(p.acc[k]) for k in range(lanes)] if lanes > 1 else [int(p.acc)]
            got.append((int(getattr(p, "channel" if lanes == 1 else "group")), acc,
                        int(p.first)))

    simulate(dut, producer, consumer, background=[clock.bench])
    want = [(g, a, int(t == 0)) for pos in accs for t in range(steps)
            for g, a in enumerate(pos)]
    return got, want, got_at, put_at


@settings(max_examples=12, deadline=None)
@given(groups=st.integers(1, 6), steps=st.integers(2, 4), lanes=st.integers(1, 3),
       positions=st.integers(1, 3))
def test_every_step_gets_the_step_0_accumulators(groups, steps, lanes, positions):
    got, want, _, _ = run(groups, steps, lanes, positions)
    assert got == want


@pytest.mark.parametrize("idle_seed", [1, 2])
def test_back_pressure_loses_and_reorders_nothing(idle_seed):
    got, want, _, _ = run(4, 3, 2, 3, idle_seed=idle_seed)
    assert got == want


def test_timing_is_the_documented_one():
    """Always ready: step 0 passes in the cycle it arrives; the first replayed update comes
    REPLAY_START cycles after step 0's last result, then one per cycle; the next position's
    first result is taken the cycle after the last replayed update."""
    groups, steps = 5, 3
    got, want, got_at, put_at = run(groups, steps, 1, 2)
    assert got == want
    assert got_at[:groups] == put_at[:groups]
    replay = got_at[groups:groups * steps]
    assert replay[0] == put_at[groups - 1] + ReplayFeeder.REPLAY_START
    assert replay == list(range(replay[0], replay[0] + groups * (steps - 1)))
    assert put_at[groups] == replay[-1] + 1
