"""hw/engine_study.py: the engine organisations' cycle counts on a hand-made matrix, and the
order they must keep on a real model's layers."""

import numpy as np

from hw.engine_study import ORGANISATIONS, layer_vectors, organisation_cycles
from model.ir import Conv, MatMul
from model.ir.csc import csc_from_dense
from model.ir.golden import node_spikes, run_golden
from model.ir.random_model import random_inputs, random_model


def _matmul(dense):
    ptr, rows, values = csc_from_dense(dense)
    n = dense.shape[0]
    one = np.ones(n, dtype=np.int64)
    return MatMul(name="m", inputs=("x",), in_features=dense.shape[1], out_features=n,
                  matmul_format="sparse", col_ptr=ptr, row_idx=rows, values=values,
                  bias=0 * one, threshold=one, leak=one)


def test_one_vector_by_hand():
    # columns: 0 -> rows 0..3, 1 -> row 0, 2 -> empty, 3 -> rows 1 and 3; 2 lanes, 2 drain cycles
    w = np.zeros((4, 4), dtype=np.int64)
    w[:, 0] = 1
    w[0, 1] = 1
    w[[1, 3], 3] = 1
    cycles = organisation_cycles(_matmul(w), [np.arange(4)], 2)
    assert cycles == {
        "bound": 4,                 # 7 entries on 2 lanes
        "row_lanes": 8,             # fullest lane per column: 2 + 1 + 1 (empty) + 2, drain 2
        "column_walkers": 7,        # walker 0 owns columns 0 and 2: 4 + 1, drain 2
        "free_walkers": 6,          # walkers done at 4 (col 0 | 1, 2, 3), drain 2
        "free_walkers_1_event": 7,  # column 3 leaves the issue side in cycle 3: done at 5
        "free_walkers_barrier": 7,  # the same for one vector
        "free_walkers_2x": 8,       # one walker of two row lanes: row_lanes
    }
    # one lane: one machine, 8 walk cycles and 4 drain cycles; the bound is the 7 entries
    assert organisation_cycles(_matmul(w), [np.arange(4)], 1) == \
        dict.fromkeys(ORGANISATIONS, 12) | {"bound": 7}
    # two vectors: the second is walked while the first drains
    assert organisation_cycles(_matmul(w), [np.arange(4), np.array([1])], 1)["row_lanes"] == 16


def test_the_organisations_keep_their_order_on_a_model():
    """One lane: every organisation is the same machine. More: none beats the bound, free
    walkers beat row lanes, and an issue side of one event per cycle can only slow them."""
    graph = random_model(7)
    x = random_inputs(np.random.default_rng(0), graph, 2)
    result = run_golden(graph, x)
    layers = [n for n in graph.neurons if isinstance(n, (Conv, MatMul)) and n.inputs[0] != "input"]
    assert layers
    for i in range(len(x)):
        spikes = {n.name: node_spikes(graph, result, n)[:, i] for n in graph.neurons}
        counts = graph.value_counts(spikes, x[i:i + 1])
        for node in layers:
            vectors = layer_vectors(graph, node, counts[node.inputs[0]])
            one = organisation_cycles(node, vectors, 1)
            assert len({one[k] for k in ORGANISATIONS if k != "bound"}) == 1
            for P in (1, 2, 4):
                c = organisation_cycles(node, vectors, P)
                assert all(c["bound"] <= c[k] for k in ORGANISATIONS)
                assert c["free_walkers"] <= c["free_walkers_1_event"] <= \
                    c["free_walkers_barrier"]
