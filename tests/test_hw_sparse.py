# amaranth: UnusedElaboratable=no
# (constructors that raise leave unused, half-built components behind)
"""Tests for hw/components/sparse.py: SparseMatmulEngine against W @ x, bit for bit and cycle for
cycle.

W is rebuilt from its CSC form with model.artifact.dense_from_csc (the artifact's own rule), and
the accumulator width is derived from the worst case with model.intops.signed_bits, as the
artifact derives widths.acc.
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.components.sparse import SparseMatmulEngine
from hw.components.streams import CycleClock, simulate, stream_get_all, stream_put_all
from model.artifact import csc_from_dense, dense_from_csc
from model.intops import signed_bits

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

END_MARKER = {"index": 0, "count": 0, "end": 1}


def worst_case_acc_width(w: np.ndarray, in_max: int) -> int:
    """widths.acc as the artifact derives it: all negative or all positive weights at in_max."""
    low = int(np.clip(w, None, 0).sum(axis=1).min(initial=0)) * in_max
    high = int(np.clip(w, 0, None).sum(axis=1).max(initial=0)) * in_max
    return signed_bits(low, high)


def events_of(x: np.ndarray, order: np.ndarray) -> list[dict]:
    """The event list of one vector: its active inputs in `order`, then the end marker."""
    return ([{"index": int(j), "count": int(x[j]), "end": 0} for j in order if x[j]]
            + [END_MARKER])


def expected_cycles(col_ptr: np.ndarray, x: np.ndarray, out_features: int) -> int:
    """The documented cycle formula, restated independently of the component."""
    nnz = np.diff(col_ptr)
    return sum(max(int(nnz[j]), 1) for j in np.flatnonzero(x)) + out_features + 4


def run_vectors(dut, vectors, orders, *, stall_seed=None, wait=True):
    """Stream each vector through `dut`; return per vector (rows, accs, hw cycles, span).

    The producer waits for each vector's results before sending the next (``wait=False``: it
    sends them back to back). `span` is the cycle
    count measured by the testbench itself: from the first accepted transfer through the last
    result transfer. With `stall_seed`, both streams idle for random cycles.
    """
    clock = CycleClock()
    stalls = None if stall_seed is None else random.Random(stall_seed)
    idle = None if stalls is None else (lambda: stalls.choice([0, 0, 0, 1, 2, 3]))
    done = []
    results = [{} for _ in vectors]

    async def producer(ctx):
        for n, (x, order) in enumerate(zip(vectors, orders)):
            while wait and len(done) < n:
                await ctx.tick()
            events = events_of(x, order)
            await stream_put_all(ctx, dut.i, events[:1], idle)
            results[n]["started"] = clock.now
            await stream_put_all(ctx, dut.i, events[1:], idle)

    async def consumer(ctx):
        for n in range(len(vectors)):
            out = await stream_get_all(ctx, dut.o, dut.out_features, idle)
            results[n].update(rows=[int(p.row) for p in out], accs=[int(p.acc) for p in out],
                              cycles=ctx.get(dut.cycles),
                              span=clock.now - results[n]["started"] + 1, finished=clock.now)
            done.append(n)

    simulate(dut, producer, consumer, background=[clock.bench])
    return results


@st.composite
def sparse_cases(draw):
    in_features = draw(st.integers(1, 24))
    out_features = draw(st.integers(1, 24))
    weight_bits = draw(st.integers(2, 8))
    density = draw(st.sampled_from([0.0, 0.1, 0.3, 0.7, 1.0]))
    in_max = draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    peak = (1 << (weight_bits - 1)) - 1
    if draw(st.booleans()):     # extreme: every kept weight at full magnitude, either sign
        w = peak * rng.choice([-1, 1], size=(out_features, in_features))
    else:
        w = rng.integers(-peak, peak + 1, size=(out_features, in_features))
    w = w * (rng.random((out_features, in_features)) < density)
    vectors = [
        np.full(in_features, in_max),                      # everything fires at the maximum
        np.zeros(in_features, dtype=np.int64),             # nothing fires: empty event list
        rng.integers(1, in_max + 1, size=in_features) * (rng.random(in_features) < 0.4),
        rng.integers(0, in_max + 1, size=in_features),
    ]
    rng.shuffle(vectors)
    orders = [rng.permutation(in_features) for _ in vectors]
    return {"w": w, "keep_zeros": draw(st.booleans()), "in_max": in_max, "vectors": vectors,
            "orders": orders, "extra_width": draw(st.integers(0, 2))}


def build(case, overlap=False):
    col_ptr, row_idx, values = csc_from_dense(case["w"], keep_zeros=case["keep_zeros"])
    out_features, in_features = case["w"].shape
    acc_width = worst_case_acc_width(case["w"], case["in_max"]) + case["extra_width"]
    dut = SparseMatmulEngine(in_features, out_features, col_ptr, row_idx, values,
                             case["in_max"], acc_width, overlap=overlap)
    return dut, col_ptr, dense_from_csc(col_ptr, row_idx, values, out_features, in_features)


@SETTINGS
@given(sparse_cases(), st.booleans())
def test_products_and_cycles_at_full_rate(case, overlap):
    """One vector at a time: the same exact cycles with one accumulator bank or two."""
    dut, col_ptr, w = build(case, overlap)
    results = run_vectors(dut, case["vectors"], case["orders"])
    for x, got in zip(case["vectors"], results):
        assert got["rows"] == list(range(dut.out_features))
        assert got["accs"] == (w @ x).tolist()
        cycles = expected_cycles(col_ptr, x, dut.out_features)
        assert got["cycles"] == cycles == dut.cycles_for(np.flatnonzero(x))
        assert got["span"] == cycles


@settings(SETTINGS, max_examples=20)
@given(sparse_cases(), st.integers(0, 2**32 - 1))
def test_products_under_backpressure(case, stall_seed):
    dut, col_ptr, w = build(case)
    results = run_vectors(dut, case["vectors"], case["orders"], stall_seed=stall_seed)
    for x, got in zip(case["vectors"], results):
        assert got["rows"] == list(range(dut.out_features))
        assert got["accs"] == (w @ x).tolist()
        assert got["cycles"] == got["span"] >= expected_cycles(col_ptr, x, dut.out_features)


@settings(SETTINGS, max_examples=20)
@given(sparse_cases(), st.integers(0, 2**32 - 1))
def test_overlapped_vectors_back_to_back(case, stall_seed):
    """Two banks, vectors sent back to back (walk of one during the drain of the other), with
    and without random stalls on both streams: every product exact, in order."""
    dut, col_ptr, w = build(case, overlap=True)
    for seed in (None, stall_seed):
        results = run_vectors(dut, case["vectors"], case["orders"], stall_seed=seed, wait=False)
        for x, got in zip(case["vectors"], results):
            assert got["rows"] == list(range(dut.out_features))
            assert got["accs"] == (w @ x).tolist()


def test_overlap_hides_the_drain():
    """Back to back at full rate, the second vector's walk runs during the first's drain."""
    w = np.arange(1, 33).reshape(8, 4) % 5 - 2
    col_ptr, row_idx, values = csc_from_dense(w, keep_zeros=True)
    x = np.array([1, 1, 1, 1])
    spans = {}
    for overlap in (False, True):
        dut = SparseMatmulEngine(4, 8, col_ptr, row_idx, values, 1, 8, overlap=overlap)
        results = run_vectors(dut, [x, x], [np.arange(4)] * 2, wait=False)
        assert all(r["accs"] == (w @ x).tolist() for r in results)
        spans[overlap] = results[1]["finished"] - results[0]["started"] + 1
    single = expected_cycles(col_ptr, x, 8)          # 4 x 8 entries + 8 rows + 4
    assert spans[False] >= 2 * single
    assert spans[True] <= 2 * single - 8            # the second walk hid the first drain


def test_variable_rows_drains_only_the_stage_rows():
    """A shared engine (the accelerator's): two matrices side by side, each draining its rows."""
    w = np.array([[1, 2, 0, 3], [0, 1, 1, 0], [2, 0, 0, 1]])        # cols 0-1: 2 rows in use
    w[2, :2] = 0
    col_ptr, row_idx, values = csc_from_dense(w)
    dut = SparseMatmulEngine(4, 3, col_ptr, row_idx, values, 2, 8, variable_rows=True)
    clock = CycleClock()
    got = []

    async def bench(ctx):
        for rows, cols in ((2, [0, 1]), (3, [2, 3])):
            ctx.set(dut.rows, rows)
            x = np.zeros(4, dtype=np.int64)
            x[cols] = 2
            await stream_put_all(ctx, dut.i, events_of(x, np.arange(4)))
            out = await stream_get_all(ctx, dut.o, rows)
            got.append(([int(p.row) for p in out], [int(p.acc) for p in out], (w @ x)[:rows]))

    simulate(dut, bench, background=[clock.bench])
    for rows, accs, want in got:
        assert rows == list(range(len(want))) and accs == want.tolist()


def test_consecutive_events_on_one_row_and_one_output():
    """A single output row updated by every event back to back: the read-modify-write hazard."""
    w = np.array([[5, -3, 7, 1]])
    col_ptr, row_idx, values = csc_from_dense(w)
    dut = SparseMatmulEngine(4, 1, col_ptr, row_idx, values, 3, 8)
    x = np.array([3, 3, 2, 1])
    results = run_vectors(dut, [x, x], [np.arange(4), np.arange(4)[::-1]])
    assert [r["accs"] for r in results] == [(w @ x).tolist()] * 2
    assert [r["cycles"] for r in results] == [4 + 1 + 4] * 2


def test_all_zero_matrix_stores_nothing():
    dut = SparseMatmulEngine(3, 2, [0, 0, 0, 0], [], [], 2, 1)
    results = run_vectors(dut, [np.array([2, 1, 0])], [np.arange(3)])
    assert results[0]["accs"] == [0, 0]
    assert results[0]["cycles"] == 2 + 2 + 4


@pytest.mark.parametrize("kwargs, error, match", [
    ({"in_features": 0}, ValueError, "in_features must be an integer >= 1, not 0"),
    ({"out_features": 2.0}, TypeError, "out_features must be an integer, not 2.0"),
    ({"in_max": True}, TypeError, "in_max must be an integer, not True"),
    ({"acc_width": 3}, ValueError, "acc_width 3 is too narrow"),
    ({"col_ptr": [0, 1, 1]}, ValueError, "col_ptr must have shape"),
    ({"col_ptr": [0, 2, 1, 2]}, ValueError, "col_ptr must rise from 0"),
    ({"row_idx": [0, 2]}, ValueError, "row_idx must lie in 0..1"),
    ({"row_idx": [1, 1], "col_ptr": [0, 2, 2, 2]}, ValueError, "repeats a row within column 0"),
    ({"values": [1.5, 2]}, TypeError, "values must hold integers"),
])
def test_constructor_rejects_bad_parameters(kwargs, error, match):
    params = {"in_features": 3, "out_features": 2, "col_ptr": [0, 1, 1, 2], "row_idx": [0, 1],
              "values": [7, -7], "in_max": 3, "acc_width": 8}
    params.update(kwargs)
    with pytest.raises(error, match=match):
        SparseMatmulEngine(**params)
