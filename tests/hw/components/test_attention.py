# amaranth: UnusedElaboratable=no
# (constructors that raise leave unused, half-built components behind)
"""Tests for hw/components/attention.py: SpikingAttention against model.ir.intops.attention_counts,
bit for bit and cycle for cycle.

Widths follow the artifact: widths.kv = signed_bits(0, tokens) and the accumulator
signed_bits(0, tokens * d). The cases draw the lanes P among the divisors of d (1 and d
included): with P > 1 a transfer carries a group of P channels.
"""

import random

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.lib import data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.components.attention import SpikingAttention
from hw.components.streams import CycleClock, simulate, stream_get_all, stream_put_all
from model.ir.intops import attention_counts, signed_bits

pytestmark = pytest.mark.amaranth      # amaranth.sim: seconds per test

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def packed(row) -> int:
    """A 0/1 row as the payload's bit vector: bit c is channel c."""
    return sum(int(bit) << c for c, bit in enumerate(row))


def expected_cycles(v: np.ndarray, lanes: int = 1) -> int:
    """The documented cycle formula, restated independently of the component."""
    tokens, dim = v.shape
    return sum(max(int(row.sum()), 1) for row in v) + tokens * dim // lanes + 3


def unpack(dut, out):
    """Transfers as their (token, channel or group) order and a tokens x dim array of counts,
    each lane placed at its channel group * P + p (-1 where no transfer landed)."""
    P = dut.lanes
    order, counts = [], np.full((dut.tokens, dut.dim), -1)
    for payload in out:
        token = int(payload.token)
        index = int(payload.channel if P == 1 else payload.group)
        order.append((token, index))
        lanes = [payload.acc] if P == 1 else [payload.acc[p] for p in range(P)]
        for p, acc in enumerate(lanes):
            counts[token, index * P + p] = int(acc)
    return order, counts


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
            out = await stream_get_all(ctx, dut.o, dut.tokens * dut.dim // dut.lanes, idle)
            order, counts = unpack(dut, out)
            results[n].update(order=order, counts=counts, cycles=ctx.get(dut.cycles),
                              span=clock.now - results[n]["started"] + 1)
            done.append(n)

    simulate(dut, producer, consumer, background=[clock.bench])
    return results


@st.composite
def attention_cases(draw):
    tokens = draw(st.integers(1, 6))
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 8))
    lanes = draw(st.sampled_from([p for p in range(1, head_dim + 1) if head_dim % p == 0]))
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
    return {"tokens": tokens, "heads": heads, "dim": heads * head_dim, "lanes": lanes,
            "steps": steps, "orders": [rng.permutation(tokens) for _ in steps]}


def build(case):
    head_dim = case["dim"] // case["heads"]
    return SpikingAttention(case["tokens"], case["dim"], case["heads"],
                            kv_width=signed_bits(0, case["tokens"]),
                            acc_width=signed_bits(0, case["tokens"] * head_dim),
                            lanes=case.get("lanes", 1))


def row_major(dut):
    """Token-major, channels (P lanes: groups) in order."""
    return [(t, g) for t in range(dut.tokens) for g in range(dut.dim // dut.lanes)]


@SETTINGS
@given(attention_cases())
def test_counts_and_cycles_at_full_rate(case):
    dut = build(case)
    results = run_steps(dut, case["steps"], case["orders"])
    for (q, k, v), got in zip(case["steps"], results):
        assert got["order"] == row_major(dut)
        assert got["counts"].tolist() == attention_counts(q, k, v, dut.heads).tolist()
        assert got["cycles"] == got["span"] == expected_cycles(v, dut.lanes) == dut.cycles_for(v)


@settings(SETTINGS, max_examples=30)
@given(attention_cases(), st.integers(0, 2**32 - 1))
def test_counts_under_backpressure(case, stall_seed):
    dut = build(case)
    results = run_steps(dut, case["steps"], case["orders"], stall_seed=stall_seed)
    for (q, k, v), got in zip(case["steps"], results):
        assert got["order"] == row_major(dut)
        assert got["counts"].tolist() == attention_counts(q, k, v, dut.heads).tolist()
        assert got["cycles"] == got["span"] >= expected_cycles(v, dut.lanes)


def test_minimal_kv_width_saturates_nothing():
    """Unsigned counters of exactly bits_for(tokens) bits hold a count of every token."""
    tokens, dim = 3, 4
    dut = SpikingAttention(tokens, dim, heads=2, kv_width=2, acc_width=4)
    ones = np.ones((tokens, dim), dtype=np.int64)
    results = run_steps(dut, [(ones, ones, ones)] * 2, [np.arange(tokens)] * 2)
    assert [r["counts"].tolist() for r in results] == [np.full((3, 4), 6).tolist()] * 2


@pytest.mark.parametrize("tokens, heads, head_dim, lanes", [
    (3, 1, 6, 6),       # one head, P = d = dim: one group per token
    (3, 1, 6, 3),
    (4, 4, 2, 2),       # P = d with several heads: a group is a whole head
    (2, 2, 8, 4),
    (1, 2, 4, 2),       # one token: every KV count is 0 or 1, a lost update shows
])
def test_lanes_extremes_back_to_back(tokens, heads, head_dim, lanes):
    """Fixed extremes, four time steps back to back (the counters must be cleared between
    them): every V bit set (consecutive V bits update the lanes of one word on consecutive
    cycles), no V bit, every count at its maximum again, then a random step."""
    dim = heads * head_dim
    rng = np.random.default_rng(tokens * 1000 + dim * 10 + lanes)
    ones, zeros = np.ones((tokens, dim), np.int64), np.zeros((tokens, dim), np.int64)
    random_rows = [(rng.random((tokens, dim)) < 0.5).astype(np.int64) for _ in range(3)]
    steps = [(ones, ones, ones), (ones, ones, zeros), (ones, ones, ones), tuple(random_rows)]
    case = {"tokens": tokens, "heads": heads, "dim": dim, "lanes": lanes}
    dut = build(case)
    orders = [rng.permutation(tokens) for _ in steps]
    results = run_steps(dut, steps, orders)
    for (q, k, v), got in zip(steps, results):
        assert got["order"] == row_major(dut)
        assert got["counts"].tolist() == attention_counts(q, k, v, heads).tolist()
        assert got["cycles"] == got["span"] == expected_cycles(v, lanes) == dut.cycles_for(v)
    assert results[0]["counts"].tolist() == np.full((tokens, dim), tokens * head_dim).tolist()
    assert results[1]["counts"].tolist() == zeros.tolist()


def test_lanes_layout():
    dut = SpikingAttention(4, 12, 2, kv_width=3, acc_width=6, lanes=3)
    assert dut.lanes == 3
    assert dut.count_layout == data.StructLayout({
        "token": unsigned(2), "group": unsigned(2), "acc": data.ArrayLayout(signed(6), 3)})
    assert dut.cycles_for(np.zeros((4, 12))) == 4 + 4 * 4 + 3
    one = SpikingAttention(4, 12, 2, kv_width=3, acc_width=6)
    assert one.lanes == 1
    assert one.count_layout == data.StructLayout({
        "token": unsigned(2), "channel": unsigned(4), "acc": signed(6)})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tokens": 0}, ValueError, "tokens must be an integer >= 1, not 0"),
    ({"heads": 3}, ValueError, "dim 8 is not divisible by heads 3"),
    ({"kv_width": 2}, ValueError, "kv_width 2 is too narrow: KV counts reach tokens = 4"),
    ({"acc_width": 4}, ValueError, "acc_width 4 is too narrow: counts reach"),
    ({"dim": 8.0}, TypeError, "dim must be an integer, not 8.0"),
    ({"lanes": 0}, ValueError, "lanes must be an integer >= 1, not 0"),
    ({"lanes": 3}, ValueError, r"lanes = 3 does not divide head_dim = dim / heads = 4"),
    ({"lanes": 8}, ValueError, r"lanes = 8 does not divide head_dim = dim / heads = 4"),
    ({"lanes": 16}, ValueError, "lanes = 16 exceeds dim = 8"),
    ({"lanes": 2.0}, TypeError, "lanes must be an integer, not 2.0"),
])
def test_constructor_rejects_bad_parameters(kwargs, error, match):
    params = {"tokens": 4, "dim": 8, "heads": 2, "kv_width": 3, "acc_width": 6}
    params.update(kwargs)
    with pytest.raises(error, match=match):
        SpikingAttention(**params)
