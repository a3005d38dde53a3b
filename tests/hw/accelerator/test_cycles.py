# amaranth: UnusedElaboratable=no
"""hw/cycles.py, the cycle model, against amaranth.sim of the accelerator on tiny artifacts.

Per layer, the TRACE_CYCLES record of the simulated accelerator must agree with
`expected_cycles` within 5% (it is in fact exact: a separate test pins that down), the whole
inference (result.cycles) with `inference_cycles`, and the ideal cycles never exceed the
measured ones. Model-only tests tie the model to the components' documented formulas.

The simulations come from accelerator_fixtures.simulated, shared with test_hw_accelerator.py
when both run in one pytest process.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelerator_fixtures import KINDS, simulated, tiny_artifact
from hw.components import RankFactoredEngine, SparseMatmulEngine
from hw.cycles import (expected_cycles, head_cycles, ideal_breakdown, ideal_cycles,
                       image_spikes, inference_cycles, load_cycles, summarize, value_counts)
from model.ir import Attention, LowRankMatMul, MatMul

pytestmark = pytest.mark.amaranth      # amaranth.sim: seconds per test

TOLERANCE = 0.05


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-artifacts"


def _ratios(kind, root):
    """[(image, layer, measured, expected)] of one kind's simulation."""
    art, golden, records = simulated(kind, root)
    rows = []
    for i, rec in enumerate(records):
        expected = expected_cycles(art, *image_spikes(golden, i))
        assert set(expected) == set(rec["layer_cycles"])
        rows += [(i, name, rec["layer_cycles"][name], expected[name]) for name in expected]
    return art, golden, records, rows


@pytest.mark.parametrize("kind", KINDS)
def test_layer_cycles_within_tolerance(kind, root):
    """measured / expected per layer within 5%; the ratios are printed (pytest -s)."""
    *_, rows = _ratios(kind, root)
    worst = max(abs(m / e - 1) for _, _, m, e in rows)
    print(f"\n{kind}: " + ", ".join(f"{name}[{i}] {m}/{e}={m / e:.3f}" for i, name, m, e in rows))
    bad = [(i, name, m, e) for i, name, m, e in rows if abs(m / e - 1) > TOLERANCE]
    assert not bad, f"{kind}: layers off by more than 5%: {bad} (worst {worst:.3f})"


@pytest.mark.parametrize("kind", KINDS)
def test_cycles_exact(kind, root):
    """The model reproduces every layer's cycles and result.cycles exactly."""
    art, golden, records, rows = _ratios(kind, root)
    assert [(i, n, m) for i, n, m, e in rows if m != e] == []
    for i, rec in enumerate(records):
        total = inference_cycles(art, *image_spikes(golden, i))["total"]
        assert rec["cycles"] == total, f"{kind} input {i}: {rec['cycles']} != {total}"


def test_chunks_exact_and_bitexact(root):
    """Accelerator(chunk=8): the 16-channel MLP hidden vectors are gathered and written, and
    the 16-channel source words of the next matmul issued, in two chunks of 8 (the value bank
    then writes half a value at a time); every traced vector stays bit-exact and the model,
    told the same chunk, reproduces every layer's cycles and result.cycles. A chunk that would
    leave a remainder too short to outlast the writer is refused."""
    from accelerator_fixtures import run_accelerator
    from hw.accelerator import Accelerator
    from sim.scoreboard import Scoreboard
    art, golden, records = simulated("l1p", root)
    assert max(getattr(n, "out_features", 0) for n in art.nodes) == 16
    got = run_accelerator(Accelerator(art, trace=True, chunk=8), golden.images[:2],
                          Scoreboard(golden))
    for i, rec in enumerate(got):
        assert rec["result"].bitexact
        expected = expected_cycles(art, *image_spikes(golden, i), chunk=8)
        assert rec["layer_cycles"] == expected
        assert rec["cycles"] == sum(expected.values()) + load_cycles(art) + head_cycles(art)
        # the chunked source word costs a mask load per chunk, which the engine may hide: no
        # layer is faster than unchunked
        assert all(rec["layer_cycles"][n] >= records[i]["layer_cycles"][n] for n in expected)
    with pytest.raises(ValueError, match="chunk = 6 splits the 8 channels of stem1 into a chunk of fewer than 5"):
        Accelerator(art, chunk=6)
    # the neuron array runs without its hazard stall: every layer needs 3 channels or more
    import dataclasses
    from model.ir import MatMul
    node = next(n for n in art.nodes if isinstance(n, MatMul))
    narrow = dataclasses.replace(node, out_features=2, bias=node.bias[:2],
                                 threshold=node.threshold[:2], leak=node.leak[:2],
                                 row_idx=node.row_idx % 2)
    graph = dataclasses.replace(art, nodes=tuple(narrow if n is node else n for n in art.nodes))
    assert graph.node(node.name).channels == 2        # unchecked: only the plan's rule
    with pytest.raises(ValueError, match=f"{node.name} has 2 channels; the accelerator needs "
                                         f"at least 3 per layer"):
        Accelerator(graph)


@pytest.mark.parametrize("kind", KINDS)
def test_ideal_never_above_measured(kind, root):
    art, golden, records, _ = _ratios(kind, root)
    for i, rec in enumerate(records):
        ideal = ideal_cycles(art, *image_spikes(golden, i))
        for name, measured in rec["layer_cycles"].items():
            assert 0 < ideal[name] <= measured, (kind, i, name, ideal[name], measured)
        assert ideal["head"] <= head_cycles(art)
        assert sum(ideal.values()) <= rec["cycles"]


def test_summary_for_sim_json(root):
    """summarize() gives REPORTS.md's sim.json keys, measured numbers from the simulator."""
    art, golden, records = simulated("l1p", root)
    out = summarize(art, golden, [{"cycles": r["cycles"], "layer_cycles": r["layer_cycles"]}
                                  for r in records])
    cycles = [r["cycles"] for r in records]
    assert out["cycles_per_inference"] == {"mean": float(np.mean(cycles)),
                                           "min": min(cycles), "max": max(cycles)}
    assert 0 < out["ideal_cycles_per_inference"] < out["cycles_per_inference"]["min"]
    names = [layer["name"] for layer in out["layers"]]
    assert names == [n.name for n in art.neurons] + ["head"]
    for layer in out["layers"]:
        assert {"name", "cycles", "ideal_cycles"} <= set(layer)
        assert layer["ideal_cycles"] <= layer["cycles"]
    assert out["model_error"] == 0.0
    # the model alone (no measurements) gives the same numbers here
    assert summarize(art, golden)["cycles_per_inference"] == out["cycles_per_inference"]


# ---- model only: ties to the components' own formulas ----------------------------------------

def _engine(art, node, in_max):
    """The node's engine component, only for its documented `cycles_for` (never elaborated)."""
    engine = _build_engine(art, node, in_max)
    for obj in (engine, getattr(engine, "_stage1", None)):
        if obj is not None:
            obj._MustUse__silence = True        # constructed for the formula, not for a design
    return engine


def _build_engine(art, node, in_max):
    if isinstance(node, LowRankMatMul):
        return RankFactoredEngine(node.in_features, node.out_features, node.rank,
                                  node.b_col_ptr, node.b_row_idx, node.b_values, node.a,
                                  in_max, 64, 64)
    return SparseMatmulEngine(node.in_features, node.out_features, node.col_ptr,
                              node.row_idx, node.values, in_max, 64)


def _random_spikes(art, seed, density):
    rng = np.random.default_rng(seed)
    man = art.model
    spikes = {}
    for node in art.neurons:
        spikes[node.name] = (rng.random((man.timesteps, art.tokens_of(node.name),
                                         node.channels)) < density).astype(np.uint8)
    shape = tuple(man.input_shape)
    if man.time_varying_input:
        shape = (man.timesteps,) + shape
    image = rng.integers(0, man.input_max + 1, shape) * (rng.random(shape) < density)
    return spikes, image


@pytest.mark.parametrize("kind", ["l1p", "dense", "dsp"])
def test_matmul_stages_follow_the_engine_formula(kind, root):
    """A rank-factored matmul stage costs its engine's documented cycles per vector (cycles_for),
    plus a fill of 9-10 cycles (issue, neuron pipeline, collector writer), plus at most one cycle
    per vector (the end marker offered a cycle after a one-entry last column); silent input:
    exactly vectors * (engine cycles of an empty vector) + 10. A CSC matmul runs on the shared two-bank
    engine, whose walks overlap the previous drain: never slower than that serial sum, never
    faster than its walks alone or than the collector (c_out + 3 cycles per vector)."""
    art = tiny_artifact(kind, root)
    for seed, density in ((0, 0.0), (1, 0.2), (2, 0.6), (3, 1.0)):
        spikes, image = _random_spikes(art, seed, density)
        values = value_counts(art, spikes, image)
        expected = expected_cycles(art, spikes, image)
        for node in art.nodes:
            if not isinstance(node, (MatMul, LowRankMatMul)):
                continue
            counts = values[node.inputs[0]]
            engine = _engine(art, node, int(max(counts.max(), 1)))
            vectors = counts.shape[0] * counts.shape[1]
            active = [np.flatnonzero(counts[t, n])
                      for t in range(counts.shape[0]) for n in range(counts.shape[1])]
            engine_sum = sum(engine.cycles_for(j) for j in active)
            extra = expected[node.name] - engine_sum
            if isinstance(node, LowRankMatMul):
                if density == 0.0:
                    assert extra == 10, (node.name, extra)
                else:
                    assert 9 <= extra <= 10 + vectors, (node.name, density, extra)
                continue
            sizes = np.diff(node.col_ptr)
            walks = sum(max(int(sizes[j]), 1) for js in active for j in js)
            floor = max(walks, vectors * (node.out_features + 3))
            assert floor <= expected[node.name] <= engine_sum + 11 + vectors, \
                (node.name, density, floor, expected[node.name], engine_sum)
            if density > 0.0:
                assert expected[node.name] < engine_sum, "the overlap hid no drain"


def test_attention_formula(root):
    """Attention in closed form (dim > 4). Per step: max(active V bits, 2) cycles per token
    (phase 1 / FETCH+SEND), max(., 1) for the last, 3 to start phase 2, then the N dim counts
    back to back (the collector's writer works beside the gather, so nothing freezes them); the
    next step's first token follows its last count. Plus 2 issue cycles before the first token
    and 7 after the last count (neuron 4, writer WRITE + TRACE, CYCLES), minus 1:

        cycles = sum over steps (sum_n<N-1 max(p_n, 2) + max(p_N-1, 1) + N dim + 3) + 8
    """
    art = tiny_artifact("l1p16", root)
    T, N = art.model.timesteps, art.model.tokens
    node = next(n for n in art.nodes if isinstance(n, Attention))
    dim = node.dim
    assert dim > 4
    for seed, density in ((0, 0.0), (1, 0.1), (2, 0.5), (3, 1.0)):
        spikes, image = _random_spikes(art, seed, density)
        v = value_counts(art, spikes, image)[node.inputs[2]]
        pops = (v != 0).sum(axis=2)
        per_step = [int(np.maximum(p[:-1], 2).sum()) + max(int(p[-1]), 1) + N * dim + 3
                    for p in pops]
        assert len(pops) == T
        assert expected_cycles(art, spikes, image)[node.name] == sum(per_step) + 8


SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("kind", ["l1p", "dsp", "events"])
@SETTINGS
@given(seed=st.integers(0, 2**31), density=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]))
def test_ideal_below_expected_on_random_activity(kind, root, seed, density):
    """On arbitrary spike patterns the ideal never exceeds the modelled cycles, layer by layer,
    and the breakdown's terms are consistent."""
    art = tiny_artifact(kind, root)
    spikes, image = _random_spikes(art, seed, density)
    total = inference_cycles(art, spikes, image)
    for name, terms in ideal_breakdown(art, spikes, image).items():
        assert terms["ideal"] == max(terms["synaptic"] + terms["mac"] + terms["attention"],
                                     terms["neuron"])
        if name == "head":
            assert terms["ideal"] <= total["head"]
        else:
            assert terms["ideal"] <= total["layers"][name], (name, terms)
    assert total["ideal"] < total["total"]
    assert total["total"] == load_cycles(art) + sum(total["layers"].values()) + total["head"]


# ---- lanes ------------------------------------------------------------------------------------

# the row-lane engine at P > 1 is not the default organisation: its run is slow-marked (`make
# test-all`), keeping `make test` within its 10 minutes
LANES_RUNS = [("l1p-wide", 2, 12, None), ("l1p-wide", 3, None, None),
              ("dsp-wide", 2, None, None),
              pytest.param("l1p-wide", 3, None, "rows", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind, lanes, chunk, engine", LANES_RUNS)
def test_lanes_bitexact_and_cycles_exact(kind, lanes, chunk, engine, root):
    """Accelerator(lanes=P): every traced spike vector, the logits and the class equal the golden
    model's, and the cycle model told the same lanes (and chunk) reproduces every layer's cycles
    and result.cycles. The runs cover P = 2 and 3 (groups that do not divide the 10-channel stem
    conv, nor the rank-3 z of the DSP model at P = 2), a chunked collector (24-channel MLP
    hidden layer in chunks of 12: 6 transfers each) and the static stem's replay, on the
    default shared engine (free walkers) and on row lanes. With more lanes every layer needs
    no more cycles than with one, and most need fewer."""
    from accelerator_fixtures import LANES_KINDS, simulated
    assert kind in LANES_KINDS
    art, golden, records = simulated(kind, root, lanes=lanes, chunk=chunk, engine=engine)
    _, _, single = simulated(kind, root)
    for i, (rec, one) in enumerate(zip(records, single)):
        assert rec["result"].bitexact, "; ".join(str(m) for m in rec["result"].mismatches[:5])
        assert rec["logits"] == [int(v) for v in golden.logits[i]]
        expected = expected_cycles(art, *image_spikes(golden, i), chunk=chunk, lanes=lanes,
                                   engine=engine)
        assert rec["layer_cycles"] == expected
        assert rec["cycles"] == sum(expected.values()) + load_cycles(art) + \
            head_cycles(art, lanes)
        if chunk is None and engine is None:
            assert rec["cycles"] == inference_cycles(art, *image_spikes(golden, i),
                                                     lanes=lanes)["total"]
        ideal = ideal_cycles(art, *image_spikes(golden, i), lanes=lanes)
        assert all(ideal[n] <= rec["layer_cycles"][n] for n in expected)
        assert all(rec["layer_cycles"][n] <= one["layer_cycles"][n] for n in expected)
        assert sum(rec["layer_cycles"][n] < one["layer_cycles"][n] for n in expected) > \
            len(expected) // 2


def test_lanes_model_terms():
    """The lanes terms of the model on their own: the walker's cycles per column are the most
    entries any lane holds (rows r = p mod P), the head takes ceil(dim / P) MACs per class, the
    default chunk is whole groups, and the ideal divides the work by the lanes."""
    from hw.plan import default_chunk, lane_column_sizes
    ptr, rows = np.array([0, 4, 4, 7]), np.array([0, 2, 4, 6, 1, 2, 3])
    walk = lambda lanes: lane_column_sizes(ptr, rows, lanes).max(axis=0).tolist()
    assert walk(1) == [4, 0, 3]
    assert walk(2) == [4, 0, 2]     # rows 0,2,4,6 all in lane 0
    assert walk(3) == [2, 0, 1]
    assert [default_chunk(p) for p in (1, 2, 3, 5)] == [32, 32, 33, 35]


def test_lanes_refused_configurations(root):
    """A lanes configuration the design cannot take is refused before elaboration, naming the
    numbers: too few groups per layer, a chunk that is not whole groups, attention heads that
    the lanes do not divide, and the loadable (iCE40) build, which takes one lane."""
    from accelerator_fixtures import tiny_artifact
    from hw.accelerator import Accelerator
    art = tiny_artifact("l1p-wide", root)          # stem 10, 12; dim 12 in 2 heads of 6
    with pytest.raises(ValueError, match="stem0 has 10 channels, 2 groups of 5 lanes; the "
                                         "accelerator needs at least 3 groups per layer"):
        Accelerator(art, lanes=5)
    with pytest.raises(ValueError, match="chunk = 32 must be a multiple of lanes = 3"):
        Accelerator(art, lanes=3, chunk=32)
    with pytest.raises(ValueError, match="block0.attn: lanes = 4 does not divide its heads' 6 "
                                         "channels"):
        Accelerator(art, lanes=4)
    with pytest.raises(ValueError, match="a loadable accelerator .* takes one lane only"):
        Accelerator(art, lanes=2, loadable=True)
