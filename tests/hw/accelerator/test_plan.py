"""The plan (hw.plan): one description of the hardware for the gateware and the cycle model."""

import numpy as np
import pytest

from hw.plan import TRACE_KINDS, Plan, default_chunk
from model.ir import Attention, Conv, load_artifact


@pytest.fixture(scope="module")
def shipped(shipped_l1p_path):
    return load_artifact(shipped_l1p_path)


def test_stages_follow_the_graph(shipped):
    plan = Plan.build(shipped)
    assert [s.name for s in plan.stages] == [n.name for n in shipped.neurons]
    assert [s.id for s in plan.stages] == list(range(1, len(plan.stages) + 1))
    assert plan.head_id == len(plan.stages) + 1
    for s in plan.stages:
        assert s.tokens_outer == (not isinstance(s.node, Attention))
        assert s.groups == s.channels
        if isinstance(s.node, Conv):
            assert s.positions == s.node.height * s.node.width
            assert s.out_tokens == s.node.out_tokens
    first = plan.stages[0]
    assert first.source == "input" and first.static_replay and first.reads == \
        ((first.name, "readback"),)          # a pooled first conv reads its partial OR back


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_value_bank_places_every_value_once_without_overlap(shipped, lanes):
    plan = Plan.build(shipped, lanes)
    bank, widths = plan.values, {s.name: s.channels for s in plan.stages}
    own = [v for v in widths if v not in bank.place]
    used = {}                                # (word, lane) -> value
    for v, (base, lane) in bank.place.items():
        assert lane + widths[v] <= bank.width
        for word in range(base, base + bank.depth[v]):
            for bit in range(lane, lane + widths[v]):
                assert (word, bit) not in used, (v, used.get((word, bit)))
                used[word, bit] = v
    # values read together (a residual's sources, attention's q, k, v) share one base
    for s in plan.stages:
        bases = {bank.place[v][0] for v, _ in s.reads if v in bank.place}
        assert len(bases) <= 1, s.name
    # the pooled spike-fed conv reads its own value back at another address: own memory
    assert [s.name for s in plan.stages if s.pool and s.source != "input"] == own


def test_the_chunk_and_lanes_are_checked(shipped):
    assert default_chunk(2) == 32 and default_chunk(3) == 33
    # the 70 hidden channels (58 of 128 removed as silent) in chunks of 32 would end in one of
    # 6 (3 transfers on 2 lanes): the chunk widens to 36 (36 + 34)
    assert shipped.node("block0.mlp1").channels == 70
    assert Plan.build(shipped, 2).chunk == Plan.build(shipped, 4).chunk == 36
    for kwargs, message in [({"lanes": 0}, "lanes must be a positive integer"),
                            ({"lanes": 2, "chunk": 31}, "multiple of lanes"),
                            ({"lanes": 2, "loadable": True}, "one lane only"),
                            ({"lanes": 16}, "at least 3 groups"),
                            ({"chunk": 30}, "fewer than 5 transfers"),
                            ({"lanes": 3}, "block0.attn: lanes = 3 does not divide its heads' "
                                           "8 channels"),
                            ({"lanes": 2, "engine": "columns"}, "engine must be one of rows, "
                                                                "walkers, not 'columns'"),
                            ({"loadable": True, "engine": "walkers"}, "rows engine only")]:
        with pytest.raises(ValueError, match=message):
            Plan.build(shipped, **kwargs)


def test_the_shared_engine_is_walkers_from_two_lanes_on(shipped):
    """One lane is the single walker (SparseMatmulEngine, "rows"); from two lanes on the shared
    engine is P free walkers unless the plan is told otherwise, and design.json says which."""
    assert Plan.build(shipped).engine == "rows"
    assert Plan.build(shipped, 2).engine == Plan.build(shipped, 4).engine == "walkers"
    assert Plan.build(shipped, 2, engine="rows").engine == "rows"
    assert Plan.build(shipped, 2).design()["engine"] == "walkers"


def test_design_json_carries_the_trace_definition(shipped):
    design = Plan.build(shipped, 2).design()
    assert design["trace_kinds"] == TRACE_KINDS == {"spikes": 0, "cycles": 1}
    assert list(design["trace_layout"]) == ["kind", "node", "step", "token", "data"]
    assert [s["node"] for s in design["stages"]] == [shipped.index(n.name)
                                                     for n in shipped.neurons]


def test_the_shared_layout_packs_every_stage(shipped):
    plan = Plan.build(shipped, 2)
    layout = plan.shared
    engine_stages = [s for s in plan.stages if s.kind in ("conv", "matmul")]
    assert list(layout.col_base) == [s.name for s in engine_stages]
    bases = sorted(layout.channel_base.values())
    assert bases[0] == 0 and all(b % 2 == 0 for b in bases)        # group boundaries
    assert len(layout.bias) == layout.channels and layout.threshold.min() >= 1
    assert np.all(np.diff(layout.col_ptr) >= 0)


def test_a_3x3_pool_is_refused_with_one_line(shipped_l1p_path):
    """The official SPS's MaxPool2d(3, 2, 1) (``pool_kernel`` 3) is golden-model only so far:
    the plan names the node and what the accelerator takes."""
    import dataclasses
    graph = load_artifact(shipped_l1p_path)
    stem0 = graph.node("stem0")
    assert stem0.pool
    object.__setattr__(graph, "nodes", tuple(dataclasses.replace(n, pool_kernel=3)
                                             if n is stem0 else n for n in graph.nodes))
    with pytest.raises(ValueError, match=r"^stem0 pools 3x3 with stride 2 .* the accelerator "
                                         r"pools 2x2 only so far$"):
        Plan.build(graph)
