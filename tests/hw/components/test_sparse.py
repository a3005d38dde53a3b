# amaranth: UnusedElaboratable=no
# (constructors that raise leave unused, half-built components behind)
"""Tests for hw/components/sparse.py: SparseMatmulEngine against W @ x, bit for bit and cycle for
cycle, with one lane and with several (rows dealt to lanes round-robin, P rows per result).

W is rebuilt from its CSC form with model.ir.csc.dense_from_csc (the artifact's own rule), and
the accumulator width is derived from the worst case with model.ir.intops.signed_bits, as the
artifact derives widths.acc.
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.components.sparse import SparseMatmulEngine
from hw.components.streams import CycleClock, simulate, stream_get_all, stream_put_all
from model.ir.csc import csc_from_dense, dense_from_csc
from model.ir.intops import signed_bits

pytestmark = pytest.mark.amaranth      # amaranth.sim: seconds per test

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


def lane_sizes(col_ptr: np.ndarray, row_idx: np.ndarray, lanes: int) -> np.ndarray:
    """nnz of every column's part in every lane (lanes x columns), restated independently."""
    return np.array([[np.count_nonzero(row_idx[col_ptr[j]:col_ptr[j + 1]] % lanes == p)
                      for j in range(len(col_ptr) - 1)] for p in range(lanes)],
                    dtype=np.int64).reshape(lanes, len(col_ptr) - 1)


def expected_cycles(col_ptr: np.ndarray, row_idx: np.ndarray, x: np.ndarray, rows: int,
                    lanes: int = 1) -> int:
    """The documented cycle formula, restated independently of the component: every active
    column costs its largest lane part (at least 1), the drain ceil(rows / lanes)."""
    sizes = lane_sizes(col_ptr, row_idx, lanes).max(axis=0)
    return sum(max(int(sizes[j]), 1) for j in np.flatnonzero(x)) + -(-rows // lanes) + 4


def expected_outputs(w: np.ndarray, x: np.ndarray, rows: int, lanes: int):
    """(indices, accs) the engine must emit for `rows` rows: rows 0..rows-1 (one lane), or
    groups 0..ceil(rows / P)-1 with the rows past `rows` in the last group as 0."""
    groups = -(-rows // lanes)
    accs = np.zeros(groups * lanes, dtype=np.int64)
    accs[:rows] = (w @ x)[:rows]
    return list(range(groups)), accs.tolist()


def unpack(dut, out) -> tuple[list[int], list[int]]:
    """Transferred payloads as (row or group numbers, accumulators in row order)."""
    if dut.lanes == 1:
        return [int(p.row) for p in out], [int(p.acc) for p in out]
    return ([int(p.group) for p in out],
            [int(p.acc[k]) for p in out for k in range(dut.lanes)])


def run_vectors(dut, vectors, orders, *, stall_seed=None, wait=True, rows=None):
    """Stream each vector through `dut`; return per vector (rows, accs, hw cycles, span).

    ``rows`` holds the row or group numbers of the results, ``accs`` their accumulators in row
    order (`unpack`). The producer waits for each vector's results before sending the next
    (``wait=False``: it sends them back to back). `span` is the cycle
    count measured by the testbench itself: from the first accepted transfer through the last
    result transfer. With `stall_seed`, both streams idle for random cycles. `rows` (with
    ``variable_rows``) gives each vector's rows to drain; the producer sets it before the vector.
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
            if rows is not None:
                ctx.set(dut.rows, rows[n])
            events = events_of(x, order)
            await stream_put_all(ctx, dut.i, events[:1], idle)
            results[n]["started"] = clock.now
            await stream_put_all(ctx, dut.i, events[1:], idle)

    async def consumer(ctx):
        for n in range(len(vectors)):
            drained = dut.out_features if rows is None else rows[n]
            out = await stream_get_all(ctx, dut.o, -(-drained // dut.lanes), idle)
            indices, accs = unpack(dut, out)
            results[n].update(rows=indices, accs=accs, cycles=ctx.get(dut.cycles),
                              span=clock.now - results[n]["started"] + 1, finished=clock.now)
            done.append(n)

    simulate(dut, producer, consumer, background=[clock.bench])
    return results


@st.composite
def sparse_cases(draw):
    in_features = draw(st.integers(1, 24))
    out_features = draw(st.integers(1, 24))
    # 1..4 lanes (at most one per row), or the extreme of one lane per row
    lanes = min(draw(st.one_of(st.integers(1, 4), st.just(out_features))), out_features)
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
    if draw(st.booleans()):     # one column wholly in one lane (imbalance), one column empty
        j, lane = rng.integers(in_features), rng.integers(lanes)
        w[:, j] = 0
        w[lane::lanes, j] = rng.choice([-peak, peak], size=len(range(lane, out_features, lanes)))
        w[:, rng.integers(in_features)] = 0
    vectors = [
        np.full(in_features, in_max),                      # everything fires at the maximum
        np.zeros(in_features, dtype=np.int64),             # nothing fires: empty event list
        rng.integers(1, in_max + 1, size=in_features) * (rng.random(in_features) < 0.4),
        rng.integers(0, in_max + 1, size=in_features),
    ]
    rng.shuffle(vectors)
    orders = [rng.permutation(in_features) for _ in vectors]
    return {"w": w, "keep_zeros": draw(st.booleans()), "in_max": in_max, "vectors": vectors,
            "orders": orders, "extra_width": draw(st.integers(0, 2)), "lanes": lanes}


def build(case, overlap=False, variable_rows=False):
    col_ptr, row_idx, values = csc_from_dense(case["w"], keep_zeros=case["keep_zeros"])
    out_features, in_features = case["w"].shape
    acc_width = worst_case_acc_width(case["w"], case["in_max"]) + case["extra_width"]
    dut = SparseMatmulEngine(in_features, out_features, col_ptr, row_idx, values,
                             case["in_max"], acc_width, overlap=overlap,
                             variable_rows=variable_rows, lanes=case["lanes"])
    assert dut.lanes == case["lanes"]
    assert np.array_equal(dut.lane_column_sizes(), lane_sizes(col_ptr, row_idx, dut.lanes))
    return dut, (col_ptr, row_idx), dense_from_csc(col_ptr, row_idx, values, out_features,
                                                   in_features)


@SETTINGS
@given(sparse_cases(), st.booleans())
def test_products_and_cycles_at_full_rate(case, overlap):
    """One vector at a time: the same exact cycles with one accumulator bank or two."""
    dut, csc, w = build(case, overlap)
    results = run_vectors(dut, case["vectors"], case["orders"])
    for x, got in zip(case["vectors"], results):
        assert (got["rows"], got["accs"]) == expected_outputs(w, x, dut.out_features, dut.lanes)
        cycles = expected_cycles(*csc, x, dut.out_features, dut.lanes)
        assert got["cycles"] == cycles == dut.cycles_for(np.flatnonzero(x))
        assert got["span"] == cycles


@settings(SETTINGS, max_examples=20)
@given(sparse_cases(), st.integers(0, 2**32 - 1))
def test_products_under_backpressure(case, stall_seed):
    dut, csc, w = build(case)
    results = run_vectors(dut, case["vectors"], case["orders"], stall_seed=stall_seed)
    for x, got in zip(case["vectors"], results):
        assert (got["rows"], got["accs"]) == expected_outputs(w, x, dut.out_features, dut.lanes)
        assert got["cycles"] == got["span"] >= expected_cycles(*csc, x, dut.out_features,
                                                               dut.lanes)


@settings(SETTINGS, max_examples=20)
@given(sparse_cases(), st.integers(0, 2**32 - 1))
def test_overlapped_vectors_back_to_back(case, stall_seed):
    """Two banks, vectors sent back to back (walk of one during the drain of the other), with
    and without random stalls on both streams: every product exact, in order."""
    dut, _, w = build(case, overlap=True)
    for seed in (None, stall_seed):
        results = run_vectors(dut, case["vectors"], case["orders"], stall_seed=seed, wait=False)
        for x, got in zip(case["vectors"], results):
            assert (got["rows"], got["accs"]) == expected_outputs(w, x, dut.out_features,
                                                                  dut.lanes)


@settings(SETTINGS, max_examples=25)
@given(sparse_cases(), st.booleans(), st.integers(0, 2**32 - 1), st.data())
def test_variable_rows_with_lanes(case, overlap, stall_seed, data):
    """Two matrices side by side (the accelerator's shared engine): columns 0..split-1 touch
    rows 0..rows_a-1 only, the others rows 0..rows_b-1; each vector fires one matrix's columns
    and drains its rows. Exact products (rows past `rows` in the last group read 0) and exact
    cycles at full rate, then again under random stalls."""
    out_features, in_features = case["w"].shape
    split = data.draw(st.integers(0, in_features))
    rows_of = [data.draw(st.integers(1, out_features)) for _ in range(2)]
    case["w"][rows_of[0]:, :split] = 0
    case["w"][rows_of[1]:, split:] = 0
    dut, csc, w = build(case, overlap, variable_rows=True)
    vectors, rows = [], []
    for n, x in enumerate(case["vectors"]):
        for block in (n % 2, 1 - n % 2):       # each vector once per matrix
            mask = (np.arange(in_features) < split) == (block == 0)
            vectors.append(x * mask)
            rows.append(rows_of[block])
    orders = case["orders"] * 2
    for seed in (None, stall_seed):
        results = run_vectors(dut, vectors, orders, stall_seed=seed, rows=rows)
        for x, r, got in zip(vectors, rows, results):
            assert (got["rows"], got["accs"]) == expected_outputs(w, x, r, dut.lanes)
            cycles = expected_cycles(*csc, x, r, dut.lanes)
            assert cycles == (dut.cycles_for(np.flatnonzero(x)) - -(-out_features // dut.lanes)
                              + -(-r // dut.lanes))
            if seed is None:
                assert got["cycles"] == got["span"] == cycles
            else:
                assert got["cycles"] == got["span"] >= cycles


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_overlap_hides_the_drain(lanes):
    """Back to back at full rate, the second vector's walk runs during the first's drain."""
    w = np.arange(1, 33).reshape(8, 4) % 5 - 2
    col_ptr, row_idx, values = csc_from_dense(w, keep_zeros=True)
    x = np.array([1, 1, 1, 1])
    spans = {}
    for overlap in (False, True):
        dut = SparseMatmulEngine(4, 8, col_ptr, row_idx, values, 1, 8, overlap=overlap,
                                 lanes=lanes)
        results = run_vectors(dut, [x, x], [np.arange(4)] * 2, wait=False)
        assert all((r["rows"], r["accs"]) == expected_outputs(w, x, 8, lanes) for r in results)
        spans[overlap] = results[1]["finished"] - results[0]["started"] + 1
    drain = -(-8 // lanes)
    single = expected_cycles(col_ptr, row_idx, x, 8, lanes)  # 4 x ceil(8/P) + ceil(8/P) + 4
    assert single == 4 * drain + drain + 4
    assert spans[False] >= 2 * single
    assert spans[True] <= 2 * single - drain        # the second walk hid the first drain


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


@pytest.mark.parametrize("lanes", [1, 2])
def test_all_zero_matrix_stores_nothing(lanes):
    dut = SparseMatmulEngine(3, 2, [0, 0, 0, 0], [], [], 2, 1, lanes=lanes)
    results = run_vectors(dut, [np.array([2, 1, 0])], [np.arange(3)])
    assert results[0]["accs"] == [0, 0]
    assert results[0]["cycles"] == 2 + 2 // lanes + 4
    assert dut.lane_column_sizes().tolist() == [[0, 0, 0]] * lanes


def test_lanes_split_rows_round_robin():
    """7 rows on 3 lanes: lane p holds rows p, p+3, p+6 at local rows 0, 1, 2. Column 0 lies
    wholly in lane 0 (3 entries, 3 cycles), column 1 is spread evenly (6 entries, 2 cycles),
    column 2 is empty (1 cycle); results are 3 groups of 3, rows 7 and 8 (past the matrix)
    reading 0."""
    w = np.zeros((7, 3), dtype=np.int64)
    w[[0, 3, 6], 0] = [5, -6, 7]
    w[:6, 1] = [1, 2, 3, 4, 5, 6]
    col_ptr, row_idx, values = csc_from_dense(w)
    dut = SparseMatmulEngine(3, 7, col_ptr, row_idx, values, 3, 8, lanes=3)
    assert dut.lane_column_sizes().tolist() == [[3, 2, 0], [0, 2, 0], [0, 2, 0]]
    assert dut.lane_column_sizes().dtype == np.int64
    assert dut.entries_init(0) == [{"row": 0, "value": 5}, {"row": 1, "value": -6},
                                   {"row": 2, "value": 7}, {"row": 0, "value": 1},
                                   {"row": 1, "value": 4}]
    assert dut.entries_init(1) == [{"row": 0, "value": 2}, {"row": 1, "value": 5}]
    assert list(dut.result_layout.members) == ["group", "acc"]
    assert dut.result_layout["acc"].shape.length == 3
    x = np.array([3, 2, 1])
    results = run_vectors(dut, [x, np.array([0, 0, 1]), x], [np.arange(3)] * 3)
    assert results[0]["rows"] == [0, 1, 2]
    assert results[0]["accs"] == (w @ x).tolist() + [0, 0]
    assert results[1]["accs"] == [0] * 9
    assert [r["cycles"] for r in results] == [3 + 2 + 1 + 3 + 4, 1 + 3 + 4, 3 + 2 + 1 + 3 + 4]
    assert dut.cycles_for([0, 1, 2]) == 3 + 2 + 1 + 3 + 4


def test_a_lane_done_with_its_part_waits():
    """Lane 0 ends its table (7 entries: 3-bit pointers) and has nothing of column 2, while
    lane 1 walks 5 entries there: lane 0's pointer must stay at its end (7), not count on
    through 8 = 0 and revisit its first entry."""
    w = np.zeros((10, 3), dtype=np.int64)
    w[0::2, 0] = [1, 2, 3, 4, 5]
    w[[0, 2], 1] = [6, 7]
    w[1::2, 2] = [-1, -2, -3, -4, -5]
    col_ptr, row_idx, values = csc_from_dense(w)
    dut = SparseMatmulEngine(3, 10, col_ptr, row_idx, values, 1, 8, lanes=2)
    assert dut.lane_column_sizes().tolist() == [[5, 2, 0], [0, 0, 5]]
    vectors = [np.array([0, 0, 1]), np.array([1, 1, 1])]
    results = run_vectors(dut, vectors, [np.arange(3)[::-1]] * 2)
    assert [r["accs"] for r in results] == [(w @ x).tolist() for x in vectors]
    assert [r["cycles"] for r in results] == [5 + 5 + 4, 5 + 2 + 5 + 5 + 4]


def test_one_lane_per_row_and_dense_columns():
    """P = out_features: a dense column has one entry per lane, so costs one cycle, and the
    whole result is one transfer."""
    w = np.array([[1, -2, 3], [4, 5, -6], [-7, 8, 9], [0, 1, 0]])
    col_ptr, row_idx, values = csc_from_dense(w, keep_zeros=True)
    dut = SparseMatmulEngine(3, 4, col_ptr, row_idx, values, 7, 10, lanes=4)
    x = np.array([7, 7, 7])
    results = run_vectors(dut, [x, x], [np.arange(3), np.arange(3)[::-1]])
    assert [r["accs"] for r in results] == [(w @ x).tolist()] * 2
    assert [r["rows"] for r in results] == [[0]] * 2
    assert [r["cycles"] for r in results] == [3 + 1 + 4] * 2


def test_lanes_mask_rows_past_rows():
    """With `rows`, the lanes past the last row of the last group read 0 even if (against the
    protocol) the vector updated them, and the drain clears them for the next vector."""
    w = np.array([[1], [2], [3]])
    col_ptr, row_idx, values = csc_from_dense(w)
    dut = SparseMatmulEngine(1, 3, col_ptr, row_idx, values, 1, 4, variable_rows=True, lanes=3)
    results = run_vectors(dut, [np.array([1]), np.array([0]), np.array([0])], [np.arange(1)] * 3,
                          rows=[2, 3, 3])
    assert [r["accs"] for r in results] == [[1, 2, 0], [0, 0, 0], [0, 0, 0]]


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
    ({"lanes": 0}, ValueError, "lanes must be an integer >= 1, not 0"),
    ({"lanes": True}, TypeError, "lanes must be an integer, not True"),
    ({"lanes": 3}, ValueError, "lanes 3 exceeds out_features 2"),
    ({"lanes": 2, "loadable": True}, ValueError, "loadable with lanes > 1"),
])
def test_constructor_rejects_bad_parameters(kwargs, error, match):
    params = {"in_features": 3, "out_features": 2, "col_ptr": [0, 1, 1, 2], "row_idx": [0, 1],
              "values": [7, -7], "in_max": 3, "acc_width": 8}
    params.update(kwargs)
    with pytest.raises(error, match=match):
        SparseMatmulEngine(**params)


def test_one_lane_keeps_its_layouts():
    """lanes=1 (the accelerator's) keeps the `{row, acc}` results and a loadable table."""
    dut = SparseMatmulEngine(3, 2, [0, 1, 1, 2], [0, 1], [7, -7], 3, 8, loadable=True)
    assert dut.lanes == 1
    assert list(dut.result_layout.members) == ["row", "acc"]
    assert dut.entries_init() == [{"row": 0, "value": 7}, {"row": 1, "value": -7}]
