# amaranth: UnusedElaboratable=no
"""The whole accelerator (hw/accelerator.py) in amaranth.sim against the integer golden model.

Tiny artifacts of every kind (tests/accelerator_fixtures.py: sparse L1P, dense, DSP low rank,
16 tokens, time-varying event input) run through ``Accelerator(artifact, trace=True)``; a
sim.scoreboard.Scoreboard compares every traced spike vector (node, step, token, channel), the
logits and the class bit for bit. Extremes: an all-max and an all-zero input, run back to back
after a digit (no reset in between). The checker is not blind: a DUT built from an artifact
with one weight or one threshold changed is reported at the right node.

Simulations are shared with tests/test_cycles.py within one pytest process
(accelerator_fixtures.simulated).
"""

import numpy as np
import pytest

from accelerator_fixtures import (KINDS, SIM_INPUTS, golden_data, perturb_threshold,
                                  perturb_weight, run_accelerator, sample_images, simulated,
                                  tiny_artifact)
from hw.accelerator import TRACE_CYCLES, TRACE_SPIKES, Accelerator
from sim.scoreboard import Scoreboard
from model.ir import INPUT, Attention, Conv

pytestmark = pytest.mark.amaranth      # amaranth.sim: seconds per test


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-artifacts"


def _describe(result) -> str:
    return "; ".join(str(m) for m in result.mismatches[:5])


@pytest.mark.parametrize("kind", KINDS)
def test_bitexact(kind, root):
    """Every spike vector of every traced node, the logits and the class equal the golden
    model's; the trace holds each (node, step, token) once and one cycles record per node."""
    art, golden, records = simulated(kind, root)
    assert len(records) == SIM_INPUTS[kind]
    traced = [art.index(n.name) for n in art.neurons]
    for k, rec in enumerate(records):
        result = rec["result"]
        assert result.bitexact, f"{kind} input {k}: {_describe(result)}"
        assert result.compared > 0
        assert rec["logits"] == [int(v) for v in golden.logits[k]]
        assert rec["cls"] == int(golden.prediction[k])
        spikes = [r for r in rec["trace"] if r[0] == TRACE_SPIKES]
        keys = [(node, step, token) for _, node, step, token, _ in spikes]
        assert len(keys) == len(set(keys))
        expected = sum(golden.spikes[art.nodes[i].name].shape[0] *
                       golden.spikes[art.nodes[i].name].shape[2] for i in traced)
        assert len(spikes) == expected
        # nodes are traced in accelerator order, each closed by its cycles record
        cycles_nodes = [r[1] for r in rec["trace"] if r[0] == TRACE_CYCLES]
        assert cycles_nodes == traced
        # result.cycles spans the first pixel accepted through the head's end (last logit taken)
        assert rec["cycles"] == rec["span"] - 1


def test_extreme_inputs_fire_and_silence(root):
    """The all-max and all-zero inputs really are extremes: the first conv fires on more
    positions with every pixel at max than on silence, and both runs stay bit-exact."""
    art, golden, records = simulated("l1p", root)
    first = art.nodes[0].name
    full, zero = golden.images[1], golden.images[2]
    assert (full == art.model.input_max).all() and (zero == 0).all()
    stem = golden.spikes[first]
    assert stem[:, 1].sum() > stem[:, 2].sum()
    assert records[1]["result"].bitexact and records[2]["result"].bitexact
    # on a silent image the first conv costs only its control: less than on the full image
    assert records[2]["layer_cycles"][first] < records[1]["layer_cycles"][first]


def _run_perturbed(art, perturbed, node_name, image, root, tag):
    """Simulate the perturbed DUT on one image up to `node_name`; return the spike mismatches
    against the ORIGINAL golden data and against the perturbed artifact's golden data."""
    images = image[None]
    original = golden_data(art, images, root / f"{tag}-original.npz")
    changed = golden_data(perturbed, images, root / f"{tag}-perturbed.npz")
    records = run_accelerator(Accelerator(perturbed, trace=True), images,
                              stop_after=node_name)
    out = []
    for golden in (original, changed):
        sb = Scoreboard(golden)
        sb.start_image(0)
        for item in records[0]["trace"]:
            sb.trace(*item)
        out.append([m for m in sb._current.mismatches if m.what == "spikes"])
    return out


def test_checker_sees_one_changed_weight(root):
    """One stored weight of block0.mlp1 set to 0: the scoreboard's first mismatch is at
    block0.mlp1 (every earlier node still matches), and the DUT matches the perturbed golden."""
    art = tiny_artifact("l1p", root)
    image = sample_images(art, 1)[0]
    node = "block0.mlp1"
    perturbed, detail = perturb_weight(art, node, image[None])
    against_original, against_changed = _run_perturbed(art, perturbed, node, image, root,
                                                       "weight")
    assert against_original, f"changing {detail} went unnoticed"
    assert against_original[0].node == node, str(against_original[0])
    assert {m.node for m in against_original} == {node}
    assert against_changed == [], str(against_changed[:3])


def test_checker_sees_one_changed_threshold(root):
    """One threshold of the first conv changed: mismatches at that node only, on the changed
    channel, and none against the perturbed artifact's golden data."""
    art = tiny_artifact("l1p", root)
    image = sample_images(art, 1)[0]
    node = art.nodes[0].name
    perturbed, detail = perturb_threshold(art, node, image[None])
    against_original, against_changed = _run_perturbed(art, perturbed, node, image, root,
                                                       "threshold")
    assert against_original, f"changing {detail} went unnoticed"
    assert {m.node for m in against_original} == {node}
    assert {m.channel for m in against_original} == {detail["channel"]}
    assert against_changed == [], str(against_changed[:3])


@pytest.mark.slow
def test_output_backpressure(root):
    """Trace, logits and result streams not always ready: still bit-exact, and slower.
    (slow: one more full simulation, ~10 s; `make test` leaves it out.)"""
    art, _, reference = simulated("dsp", root)
    images = sample_images(art, 1)[:1]
    golden = golden_data(art, images, root / "dsp-backpressure.npz")
    rng = np.random.default_rng(7)
    sb = Scoreboard(golden)
    records = run_accelerator(Accelerator(art, trace=True), images, sb,
                              idle=lambda: rng.random() < 0.3)
    result = records[0]["result"]
    assert result.bitexact, _describe(result)
    assert records[0]["cycles"] > reference[0]["cycles"]


def test_trace_off_has_no_trace_port(root):
    art = tiny_artifact("l1p", root)
    dut = Accelerator(art, trace=False)
    assert not hasattr(dut, "trace")
    assert dut.classes == art.head.classes


def _value_plan(art):
    """The plan's value placement: (place, stage bases, width, granularity, bank, reads); the
    accelerator elaborates with it (its stages drive every declared read, or it refuses)."""
    from amaranth.hdl import Fragment
    from hw.plan import Plan
    Fragment.get(Accelerator(art), None)
    plan = Plan.build(art)
    bank = plan.values
    return bank.place, bank.stage_base, bank.width, bank.granularity, bank, plan.reads


@pytest.mark.parametrize("kind", ["l1p", "l1p16"])
def test_value_bank_placement(kind, root):
    """Values read together share one base in disjoint lanes; lanes never overlap within a
    word; a pooled conv that reads its own output back (tiny l1p: stem1) keeps its own memory;
    every stage's bank reads use one base."""
    art = tiny_artifact(kind, root)
    place, stage_base, width, gran, store, reads = _value_plan(art)
    widths = {n.name: n.channels for n in art.neurons}
    words = {}
    for v, (base, lane) in place.items():
        assert lane % gran == 0 and widths[v] % gran == 0 and lane + widths[v] <= width
        for a in range(base, base + store.depth[v]):
            for bit in range(lane, lane + widths[v]):
                assert (a, bit) not in words, f"{v} overlaps {words[(a, bit)]}"
                words[(a, bit)] = v
    for sid, per in reads.items():
        bases = {place[src][0] for src in per if src in place}
        assert len(bases) <= 1
    pooled_readback = {n.name for n in art.nodes if isinstance(n, Conv) and n.pool
                       and n.inputs[0] != INPUT}
    assert pooled_readback == ({"stem1"} if kind == "l1p" else set())
    assert pooled_readback.isdisjoint(place)
    assert set(place) | pooled_readback == set(widths)
    attn = next(n for n in art.nodes if isinstance(n, Attention))
    assert len({place[v][0] for v in attn.inputs}) == 1          # Q, K, V: one read


def test_loadable_accelerator_runs_like_the_rom_one_once_loaded(root):
    """Accelerator(loadable=True): the engine entries and neuron constants are written through
    ``load`` (its memory_map) instead of being ROMs; after that every traced vector, the logits,
    the class and every cycle count equal the ROM design's. Not loaded, it computes garbage, so
    the tables really come from the load."""
    art, golden, records = simulated("l1p", root)
    dut = Accelerator(art, trace=True, loadable=True)
    tables = dut.memory_map()
    assert [t.name for t in tables] == ["engine.entries", "neurons.parameters"]
    assert len(tables[1].words) == sum(dut.channels.values())
    images = golden.images[:2]
    loaded = run_accelerator(dut, images, Scoreboard(golden))
    for rec, ref in zip(loaded, records):
        assert rec["result"].bitexact, _describe(rec["result"])
        assert (rec["logits"], rec["cls"], rec["cycles"]) == \
            (ref["logits"], ref["cls"], ref["cycles"])
        assert rec["trace"] == ref["trace"]
    empty = run_accelerator(Accelerator(art, trace=True, loadable=True), images[:1], load=False)
    assert empty[0]["logits"] != records[0]["logits"]
