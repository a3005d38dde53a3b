# amaranth: UnusedElaboratable=no
# (constructors that raise leave unused, half-built components behind)
"""Tests for hw/components/lowrank.py: RankFactoredEngine against A @ (B @ x), bit for bit and
cycle for cycle.

B is rebuilt from its CSC form with model.ir.csc.dense_from_csc; z and accumulator widths are
derived from the worst case with model.ir.intops.signed_bits, as the artifact derives widths.z and
widths.acc for a low-rank node.
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.components.lowrank import RankFactoredEngine
from hw.components.streams import CycleClock, simulate, stream_get_all, stream_put_all
from model.ir.csc import csc_from_dense, dense_from_csc
from model.ir.intops import signed_bits

pytestmark = pytest.mark.amaranth      # amaranth.sim: seconds per test

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

END_MARKER = {"index": 0, "count": 0, "end": 1}


def worst_case_widths(a: np.ndarray, b: np.ndarray, in_max: int) -> tuple[int, int]:
    """(widths.z, widths.acc) as the artifact derives them for a low-rank matmul."""
    z_lo = int(np.clip(b, None, 0).sum(axis=1).min(initial=0)) * in_max
    z_hi = int(np.clip(b, 0, None).sum(axis=1).max(initial=0)) * in_max
    acc_hi = int(np.abs(a).sum(axis=1).max(initial=0)) * max(-z_lo, z_hi)
    return signed_bits(z_lo, z_hi), signed_bits(-acc_hi, acc_hi)


def expected_cycles(b_col_ptr, x, rank, out_features, lanes=1, b_row_idx=None) -> int:
    """The documented cycle formula, restated independently of the component: stage 1 walks B
    on min(lanes, rank) lanes (a column costs the most entries any lane holds, rows r = p mod
    P1), stage 2 takes rank MACs per group of `lanes` output rows."""
    p1 = min(lanes, rank)
    walk = 0
    for j in np.flatnonzero(x):
        rows = np.asarray(b_row_idx[b_col_ptr[j]:b_col_ptr[j + 1]]) if p1 > 1 else None
        most = max(int((rows % p1 == p).sum()) for p in range(p1)) if p1 > 1 else \
            int(b_col_ptr[j + 1] - b_col_ptr[j])
        walk += max(most, 1)
    stage1 = walk + -(-rank // p1) + 4
    return stage1 + -(-out_features // lanes) * rank + 3


def run_vectors(dut, vectors, orders, *, stall_seed=None):
    """Stream each vector (events in `order`, then the end marker); collect its results, the
    hardware cycle counter and the span the testbench measures itself."""
    clock = CycleClock()
    stalls = None if stall_seed is None else random.Random(stall_seed)
    idle = None if stalls is None else (lambda: stalls.choice([0, 0, 0, 1, 2, 3]))
    done = []
    results = [{} for _ in vectors]

    async def producer(ctx):
        for n, (x, order) in enumerate(zip(vectors, orders)):
            while len(done) < n:
                await ctx.tick()
            events = [{"index": int(j), "count": int(x[j]), "end": 0} for j in order if x[j]]
            events.append(END_MARKER)
            await stream_put_all(ctx, dut.i, events[:1], idle)
            results[n]["started"] = clock.now
            await stream_put_all(ctx, dut.i, events[1:], idle)

    P = dut.lanes
    groups = -(-dut.out_features // P)

    async def consumer(ctx):
        for n in range(len(vectors)):
            out = await stream_get_all(ctx, dut.o, groups, idle)
            if P == 1:
                rows, accs = [int(p.row) for p in out], [int(p.acc) for p in out]
            else:   # group g carries rows g P .. g P + P - 1; past the last row: 0
                rows = [int(p.group) * P + lane for p in out for lane in range(P)]
                accs = [int(p.acc[lane]) for p in out for lane in range(P)]
                assert accs[dut.out_features:] == [0] * (len(accs) - dut.out_features)
                rows, accs = rows[:dut.out_features], accs[:dut.out_features]
            results[n].update(rows=rows, accs=accs, cycles=ctx.get(dut.cycles),
                              span=clock.now - results[n]["started"] + 1)
            done.append(n)

    simulate(dut, producer, consumer, background=[clock.bench])
    return results


@st.composite
def lowrank_cases(draw):
    in_features = draw(st.integers(1, 24))
    out_features = draw(st.integers(1, 24))
    rank = draw(st.integers(1, 6))
    weight_bits = draw(st.integers(2, 8))
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    in_max = draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    peak = (1 << (weight_bits - 1)) - 1
    if draw(st.booleans()):     # extreme: full-magnitude weights of either sign
        b = peak * rng.choice([-1, 1], size=(rank, in_features))
        a = peak * rng.choice([-1, 1], size=(out_features, rank))
    else:
        b = rng.integers(-peak, peak + 1, size=(rank, in_features))
        a = rng.integers(-peak, peak + 1, size=(out_features, rank))
    b = b * (rng.random((rank, in_features)) < density)
    vectors = [
        np.full(in_features, in_max),
        np.zeros(in_features, dtype=np.int64),
        rng.integers(0, in_max + 1, size=in_features),
    ]
    rng.shuffle(vectors)
    lanes = draw(st.just(1) | st.integers(1, min(4, out_features)) | st.just(out_features))
    return {"a": a, "b": b, "in_max": in_max, "vectors": vectors, "lanes": lanes,
            "orders": [rng.permutation(in_features) for _ in vectors]}


def build(case):
    b_col_ptr, b_row_idx, b_values = csc_from_dense(case["b"])
    rank, in_features = case["b"].shape
    z_width, acc_width = worst_case_widths(case["a"], case["b"], case["in_max"])
    dut = RankFactoredEngine(in_features, case["a"].shape[0], rank, b_col_ptr, b_row_idx,
                             b_values, case["a"], case["in_max"], z_width, acc_width,
                             lanes=case.get("lanes", 1))
    b = dense_from_csc(b_col_ptr, b_row_idx, b_values, rank, in_features)
    dut.b_row_idx = b_row_idx           # for expected_cycles with lanes
    return dut, b_col_ptr, b


@SETTINGS
@given(lowrank_cases())
def test_products_and_cycles_at_full_rate(case):
    dut, b_col_ptr, b = build(case)
    results = run_vectors(dut, case["vectors"], case["orders"])
    for x, got in zip(case["vectors"], results):
        assert got["rows"] == list(range(dut.out_features))
        assert got["accs"] == (case["a"] @ (b @ x)).tolist()
        cycles = expected_cycles(b_col_ptr, x, dut.rank, dut.out_features, dut.lanes,
                                 dut.b_row_idx)
        assert got["cycles"] == got["span"] == cycles == dut.cycles_for(np.flatnonzero(x))


@settings(SETTINGS, max_examples=20)
@given(lowrank_cases(), st.integers(0, 2**32 - 1))
def test_products_under_backpressure(case, stall_seed):
    dut, b_col_ptr, b = build(case)
    results = run_vectors(dut, case["vectors"], case["orders"], stall_seed=stall_seed)
    for x, got in zip(case["vectors"], results):
        assert got["rows"] == list(range(dut.out_features))
        assert got["accs"] == (case["a"] @ (b @ x)).tolist()
        assert got["cycles"] == got["span"] >= expected_cycles(b_col_ptr, x, dut.rank,
                                                               dut.out_features, dut.lanes,
                                                               dut.b_row_idx)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rank": 0}, ValueError, "rank must be an integer >= 1, not 0"),
    ({"a": [[1, 2]] * 3}, ValueError, r"a must have shape \(3, 1\), not \(3, 2\)"),
    ({"b_col_ptr": [0, 1]}, ValueError, "b_col_ptr must have shape"),
    ({"b_row_idx": [1]}, ValueError, "b_row_idx must lie in 0..0"),
    ({"z_width": 3}, ValueError, "z_width 3 is too narrow: B x can need 6 bits"),
    ({"acc_width": 6}, ValueError, r"acc_width 6 is too narrow: A \(B x\)"),
    ({"in_max": 0}, ValueError, "in_max must be an integer >= 1, not 0"),
    ({"lanes": 0}, ValueError, "lanes must be an integer >= 1, not 0"),
    ({"lanes": 4}, ValueError, "lanes = 4 exceeds out_features = 3"),
])
def test_constructor_rejects_bad_parameters(kwargs, error, match):
    params = {"in_features": 2, "out_features": 3, "rank": 1, "b_col_ptr": [0, 1, 1],
              "b_row_idx": [0], "b_values": [-7], "a": [[7], [-7], [1]], "in_max": 3,
              "z_width": 6, "acc_width": 9}
    params.update(kwargs)
    with pytest.raises(error, match=match):
        RankFactoredEngine(**params)
