# amaranth: UnusedElaboratable=no
# (constructors that raise leave unused, half-built components behind)
"""Tests for hw/components/attention.py: SpikingAttention against model.intops.attention_counts,
bit for bit and cycle for cycle.

Widths follow the artifact: widths.kv = signed_bits(0, tokens) and the accumulator
signed_bits(0, tokens * d).
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.components.attention import SpikingAttention
from hw.components.streams import CycleClock, simulate, stream_get_all, stream_put_all
from model.intops import attention_counts, signed_bits

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def packed(row) -> int:
    """A 0/1 row as the payload's bit vector: bit c is channel c."""
    return sum(int(bit) << c for c, bit in enumerate(row))


def expected_cycles(v: np.ndarray) -> int:
    """The documented cycle formula, restated independently of the component."""
    tokens, dim = v.shape
    return sum(max(int(row.sum()), 1) for row in v) + tokens * dim + 3


def run_steps(dut, steps, orders, *, stall_seed=None):
    """Stream each time step's (q, k, v) rows in `order`; collect counts, the hardware cycle
    counter and the span the testbench measures itself."""
    clock = CycleClock()
    stalls = None if stall_seed is None else random.Random(stall_seed)
    idle = None if stalls is None else (lambda: stalls.choice([0, 0, 0, 1, 2, 3]))
    done = []
    results = [{} for _ in steps]

    async def producer(ctx):
        for n, ((q, k, v), order) in enumerate(zip(steps, orders)):
            while len(done) < n:
                await ctx.tick()
            rows = [{"token": int(t), "q": packed(q[t]), "k": packed(k[t]), "v": packed(v[t])}
                    for t in order]
            await stream_put_all(ctx, dut.i, rows[:1], idle)
            results[n]["started"] = clock.now
            await stream_put_all(ctx, dut.i, rows[1:], idle)

    async def consumer(ctx):
        for n in range(len(steps)):
            out = await stream_get_all(ctx, dut.o, dut.tokens * dut.dim, idle)
            results[n].update(
                order=[(int(p.token), int(p.channel)) for p in out],
                counts=np.array([int(p.acc) for p in out]).reshape(dut.tokens, dut.dim),
                cycles=ctx.get(dut.cycles), span=clock.now - results[n]["started"] + 1)
            done.append(n)

    simulate(dut, producer, consumer, background=[clock.bench])
    return results


@st.composite
def attention_cases(draw):
    tokens = draw(st.integers(1, 6))
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (tokens, heads * head_dim)

    def spikes(density):
        return (rng.random(shape) < density).astype(np.int64)

    densities = [draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])) for _ in range(3)]
    steps = [
        tuple(spikes(p) for p in densities),
        (spikes(1.0), spikes(1.0), spikes(1.0)),     # every count at its maximum
        (spikes(0.5), spikes(0.0), spikes(0.0)),     # silent K and V: empty KV
        (spikes(0.3), spikes(0.6), spikes(0.4)),
    ]
    rng.shuffle(steps)
    return {"tokens": tokens, "heads": heads, "dim": heads * head_dim, "steps": steps,
            "orders": [rng.permutation(tokens) for _ in steps]}


def build(case):
    head_dim = case["dim"] // case["heads"]
    return SpikingAttention(case["tokens"], case["dim"], case["heads"],
                            kv_width=signed_bits(0, case["tokens"]),
                            acc_width=signed_bits(0, case["tokens"] * head_dim))


def row_major(tokens, dim):
    return [(t, c) for t in range(tokens) for c in range(dim)]


@SETTINGS
@given(attention_cases())
def test_counts_and_cycles_at_full_rate(case):
    dut = build(case)
    results = run_steps(dut, case["steps"], case["orders"])
    for (q, k, v), got in zip(case["steps"], results):
        assert got["order"] == row_major(dut.tokens, dut.dim)
        assert got["counts"].tolist() == attention_counts(q, k, v, dut.heads).tolist()
        assert got["cycles"] == got["span"] == expected_cycles(v) == dut.cycles_for(v)


@settings(SETTINGS, max_examples=20)
@given(attention_cases(), st.integers(0, 2**32 - 1))
def test_counts_under_backpressure(case, stall_seed):
    dut = build(case)
    results = run_steps(dut, case["steps"], case["orders"], stall_seed=stall_seed)
    for (q, k, v), got in zip(case["steps"], results):
        assert got["order"] == row_major(dut.tokens, dut.dim)
        assert got["counts"].tolist() == attention_counts(q, k, v, dut.heads).tolist()
        assert got["cycles"] == got["span"] >= expected_cycles(v)


def test_minimal_kv_width_saturates_nothing():
    """Unsigned counters of exactly bits_for(tokens) bits hold a count of every token."""
    tokens, dim = 3, 4
    dut = SpikingAttention(tokens, dim, heads=2, kv_width=2, acc_width=4)
    ones = np.ones((tokens, dim), dtype=np.int64)
    results = run_steps(dut, [(ones, ones, ones)] * 2, [np.arange(tokens)] * 2)
    assert [r["counts"].tolist() for r in results] == [np.full((3, 4), 6).tolist()] * 2


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tokens": 0}, ValueError, "tokens must be an integer >= 1, not 0"),
    ({"heads": 3}, ValueError, "dim 8 is not divisible by heads 3"),
    ({"kv_width": 2}, ValueError, "kv_width 2 is too narrow: KV counts reach tokens = 4"),
    ({"acc_width": 4}, ValueError, "acc_width 4 is too narrow: counts reach"),
    ({"dim": 8.0}, TypeError, "dim must be an integer, not 8.0"),
])
def test_constructor_rejects_bad_parameters(kwargs, error, match):
    params = {"tokens": 4, "dim": 8, "heads": 2, "kv_width": 3, "acc_width": 6}
    params.update(kwargs)
    with pytest.raises(error, match=match):
        SpikingAttention(**params)
