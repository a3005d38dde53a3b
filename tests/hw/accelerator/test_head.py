"""Head (hw/accelerator/head.py) on its own: logits and class of random weights and counts
against model.ir.intops.head_logits, bit for bit, in the documented number of cycles, with
lanes and with a consumer that stalls."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.accelerator.head import Head
from hw.components.streams import CycleClock, simulate, stream_get_all
from model.ir.intops import head_logits, signed_bits

pytestmark = pytest.mark.amaranth


def run(classes, features, T, N, lanes, seed, stall=False):
    rng = np.random.default_rng(seed)
    weight = rng.integers(-8, 8, size=(classes, features))
    bias = rng.integers(-50, 50, size=classes)
    counts = rng.integers(0, 3, size=(T * N, features))              # two sources: 0..2
    feature_bits = signed_bits(0, 2 * T * N)
    top = int(np.abs(weight).sum(axis=1).max()) * 2 * T * N + int(np.abs(bias).max())
    dut = Head(weight, bias, T, N, 2, feature_bits, signed_bits(-top, top), lanes)
    clock, marks = CycleClock(), {}
    waits = random.Random(seed)
    idle = (lambda: waits.choice([0, 0, 2])) if stall else None
    got = []

    async def memory(ctx):            # the value bank: counts[addr] one cycle after addr
        while True:
            addr = ctx.get(dut.addr)
            await ctx.tick()
            for c in range(features):
                ctx.set(dut.counts[c], int(counts[addr, c]))

    async def driver(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        marks["start"] = clock.now
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        marks["done"] = clock.now
        marks["cls"] = ctx.get(dut.cls)

    async def consumer(ctx):
        for p in await stream_get_all(ctx, dut.logits, classes, idle):
            got.append(int(p))

    simulate(dut, driver, consumer, background=[clock.bench, memory])
    want = head_logits(counts.sum(axis=0)[None], weight, bias)[0]
    return dut, got, want, marks


@settings(max_examples=10, deadline=None)
@given(classes=st.integers(1, 5), features=st.integers(1, 7), T=st.integers(1, 3),
       N=st.integers(1, 3), lanes=st.integers(1, 3), seed=st.integers(0, 1000))
def test_logits_and_class_are_exact(classes, features, T, N, lanes, seed):
    dut, got, want, marks = run(classes, features, T, N, lanes, seed)
    assert got == list(want)
    assert marks["cls"] == int(np.argmax(want))
    assert marks["done"] - marks["start"] == dut.cycles()      # after start, through done


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stalling_consumer_loses_no_logit(seed):
    dut, got, want, marks = run(4, 5, 2, 2, 2, seed, stall=True)
    assert got == list(want) and marks["cls"] == int(np.argmax(want))
