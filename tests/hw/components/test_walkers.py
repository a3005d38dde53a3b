# amaranth: UnusedElaboratable=no
"""Tests for hw/components/walkers.py: WalkerMatmulEngine against W @ x, bit for bit, and its
cycles against `cycles_for` (the engine's registers replayed in Python), with the streams,
cases and testbench of tests/hw/components/test_sparse.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.components.sparse import SparseMatmulEngine
from hw.components.walkers import WalkerMatmulEngine
from model.ir.csc import csc_from_dense, dense_from_csc
from tests.hw.components.test_sparse import (SETTINGS, expected_outputs, run_vectors,
                                             sparse_cases, worst_case_acc_width)

pytestmark = pytest.mark.amaranth


def build(case, variable_rows=False, banks=2):
    col_ptr, row_idx, values = csc_from_dense(case["w"], keep_zeros=case["keep_zeros"])
    out_features, in_features = case["w"].shape
    acc_width = worst_case_acc_width(case["w"], case["in_max"]) + case["extra_width"]
    dut = WalkerMatmulEngine(in_features, out_features, col_ptr, row_idx, values,
                             case["in_max"], acc_width, walkers=case["lanes"],
                             variable_rows=variable_rows, banks=banks)
    return dut, dense_from_csc(col_ptr, row_idx, values, out_features, in_features)


def active(x, order):
    return [int(j) for j in order if x[j]]


@settings(SETTINGS, max_examples=20)
@given(sparse_cases())
def test_products_and_cycles_at_full_rate(case):
    dut, w = build(case)
    results = run_vectors(dut, case["vectors"], case["orders"])
    for x, order, got in zip(case["vectors"], case["orders"], results):
        assert (got["rows"], got["accs"]) == expected_outputs(w, x, dut.out_features, dut.lanes)
        assert got["cycles"] == got["span"] == dut.cycles_for(active(x, order))


@settings(SETTINGS, max_examples=8)
@given(sparse_cases(), st.integers(0, 2**32 - 1), st.sampled_from([2, 3]))
def test_back_to_back_and_under_backpressure(case, stall_seed, banks):
    """Vectors sent back to back (walkers run ahead into the next bank while the ones before
    drain), two or three banks, at full rate and with random stalls on both streams: every
    product exact, in order; at full rate every vector's first event and last result in the
    cycles `schedule` gives."""
    dut, w = build(case, banks=banks)
    for seed in (None, stall_seed):
        for wait in (True, False):
            results = run_vectors(dut, case["vectors"], case["orders"], stall_seed=seed,
                                  wait=wait)
            for x, got in zip(case["vectors"], results):
                assert (got["rows"], got["accs"]) == expected_outputs(w, x, dut.out_features,
                                                                      dut.lanes)
                if wait:
                    assert got["cycles"] == got["span"]
            if seed is None and not wait:       # back to back at full rate: the schedule
                plan = dut.schedule([active(x, o) for x, o in zip(case["vectors"],
                                                                  case["orders"])])
                origin = results[0]["started"]
                assert [(r["started"] - origin, r["finished"] - origin) for r in results] == \
                    [(a - plan[0][0], b - plan[0][0]) for a, b in plan]


@settings(SETTINGS, max_examples=8)
@given(sparse_cases(), st.integers(0, 2**32 - 1), st.data())
def test_variable_rows(case, stall_seed, data):
    """Two matrices side by side (the accelerator's shared engine), each vector draining its
    matrix's rows: exact products, exact cycles at full rate."""
    out_features, in_features = case["w"].shape
    split = data.draw(st.integers(0, in_features))
    rows_of = [data.draw(st.integers(1, out_features)) for _ in range(2)]
    case["w"][rows_of[0]:, :split] = 0
    case["w"][rows_of[1]:, split:] = 0
    dut, w = build(case, variable_rows=True, banks=data.draw(st.sampled_from([2, 3])))
    vectors, rows, orders = [], [], []
    for n, (x, order) in enumerate(zip(case["vectors"], case["orders"])):
        for block in (n % 2, 1 - n % 2):
            mask = (np.arange(in_features) < split) == (block == 0)
            vectors.append(x * mask)
            rows.append(rows_of[block])
            orders.append(order)
    for seed in (None, stall_seed):
        results = run_vectors(dut, vectors, orders, stall_seed=seed, rows=rows)
        for x, r, order, got in zip(vectors, rows, orders, results):
            assert (got["rows"], got["accs"]) == expected_outputs(w, x, r, dut.lanes)
            if seed is None:
                assert got["cycles"] == got["span"] == dut.cycles_for(active(x, order), r)


@settings(SETTINGS, max_examples=30)
@given(sparse_cases())
def test_one_walker_costs_what_the_row_lane_engine_costs(case):
    """With one walker the engine is SparseMatmulEngine's machine: the same cycles."""
    col_ptr, row_idx, values = csc_from_dense(case["w"], keep_zeros=case["keep_zeros"])
    out_features, in_features = case["w"].shape
    acc = worst_case_acc_width(case["w"], case["in_max"])
    walker = WalkerMatmulEngine(in_features, out_features, col_ptr, row_idx, values,
                                case["in_max"], acc)
    rows = SparseMatmulEngine(in_features, out_features, col_ptr, row_idx, values,
                              case["in_max"], acc)
    for x, order in zip(case["vectors"], case["orders"]):
        assert walker.cycles_for(active(x, order)) == rows.cycles_for(active(x, order))


def test_walkers_take_short_columns_side_by_side():
    """Eight one-entry columns: one walker walks them one per cycle, four walkers still take one
    event per cycle (the intake's rate) but no column waits for a lane's fullest part; rows on
    four lanes: every column costs a cycle anyway. Same drain."""
    w = np.eye(8, dtype=np.int64)
    col_ptr, row_idx, values = csc_from_dense(w)
    order = list(range(8))
    one = WalkerMatmulEngine(8, 8, col_ptr, row_idx, values, 1, 4).cycles_for(order)
    four = WalkerMatmulEngine(8, 8, col_ptr, row_idx, values, 1, 4, walkers=4)
    assert four.cycles_for(order) < one
    # columns of 4 entries each: four walkers walk four columns at once
    w = np.kron(np.eye(2, dtype=np.int64), np.ones((4, 4), dtype=np.int64))
    col_ptr, row_idx, values = csc_from_dense(w)
    one = WalkerMatmulEngine(8, 8, col_ptr, row_idx, values, 1, 6).cycles_for(order)
    four = WalkerMatmulEngine(8, 8, col_ptr, row_idx, values, 1, 6, walkers=4).cycles_for(order)
    assert one == 8 * 4 + 8 + 4 and four <= 8 + 4 + 2 + 4


@pytest.mark.parametrize("kwargs, error, match", [
    ({"walkers": 0}, ValueError, "walkers must be an integer >= 1"),
    ({"walkers": 5}, ValueError, "walkers 5 exceeds out_features 4"),
    ({"acc_width": 2}, ValueError, "acc_width 2 is too narrow"),
    ({"banks": 1}, ValueError, "banks must be an integer >= 2"),
])
def test_constructor_rejects_bad_parameters(kwargs, error, match):
    w = np.full((4, 3), 3)
    col_ptr, row_idx, values = csc_from_dense(w)
    args = {"walkers": 1, "acc_width": 8, "banks": 2, **kwargs}
    with pytest.raises(error, match=match):
        WalkerMatmulEngine(3, 4, col_ptr, row_idx, values, 1, args["acc_width"],
                           walkers=args["walkers"], banks=args["banks"])
