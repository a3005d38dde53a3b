"""Silent channels (model.ir.passes): the analysis is sound (a channel it calls silent never
fires), exact where its bound is reachable, and removing them keeps every logit and every kept
spike identical."""

import dataclasses

import numpy as np
import pytest

from accelerator_fixtures import ARTIFACTS
from model.ir import Attention, Conv, Graph, load_artifact
from model.ir.golden import run_golden
from model.ir.passes import channel_highs, remove_silent_channels, silent_channels
from model.ir.random_model import random_inputs, random_model

SEEDS = range(6)


def _with_thresholds(graph: Graph, name: str, threshold) -> Graph:
    nodes = [dataclasses.replace(n, threshold=np.asarray(threshold, np.int64))
             if n.name == name else n for n in graph.nodes]
    return Graph.build(graph.model, graph.fixed, nodes, graph.source, derive=True)


def _silenced(seed: int) -> Graph:
    """Random model `seed` with about a third of every layer's channels made silent by a
    threshold one above the highest membrane the channel can reach (the tightest silent one)."""
    rng = np.random.default_rng(1000 + seed)
    graph = random_model(seed)
    for node in graph.neurons:
        reach = channel_highs(graph)[1][node.name]
        chosen = rng.random(node.channels) < 0.35
        graph = _with_thresholds(graph, node.name, np.where(chosen, reach + 1, node.threshold))
    return graph


def _inputs(graph: Graph, seed: int) -> np.ndarray:
    """Random inputs and the all-maximum one (every pixel, every step)."""
    x = random_inputs(np.random.default_rng(seed), graph, 48)
    return np.concatenate([x, np.full_like(x[:1], graph.model.input_max)])


@pytest.mark.parametrize("seed", SEEDS)
def test_a_silent_channel_never_fires(seed):
    graph = _silenced(seed)
    silent = silent_channels(graph)
    result = run_golden(graph, _inputs(graph, seed))
    fired_elsewhere = 0
    for node in graph.neurons:
        spikes = np.moveaxis(result.values[node.name], node.channel_axis, -1)
        assert not spikes[..., silent[node.name]].any(), node.name
        fired_elsewhere += int(spikes[..., ~silent[node.name]].sum())
    assert sum(s.sum() for s in silent.values()) > 0 and fired_elsewhere > 0


def test_the_bound_is_exact_where_it_is_reachable():
    """A first conv fed the all-maximum image, without leak (leak = 2^K), with every weight
    positive: its membrane reaches exactly the bound at an inner position, so a threshold at the
    bound fires and one above it (silent) does not."""
    graph = random_model(3)
    conv = next(n for n in graph.neurons if isinstance(n, Conv) and n.inputs == ("input",))
    K = graph.fixed.leak_bits
    nodes = [dataclasses.replace(n, weight=np.abs(n.weight) + 1, leak=np.full_like(n.leak, 1 << K),
                                 bias=np.zeros_like(n.bias)) if n is conv else n
             for n in graph.nodes]
    graph = Graph.build(graph.model, graph.fixed, nodes, graph.source, derive=True)
    reach = channel_highs(graph)[1][conv.name]
    x = _inputs(graph, 0)[-1:]
    for offset, fires in ((0, True), (1, False)):
        g = _with_thresholds(graph, conv.name, reach + offset)
        spikes = run_golden(g, x).values[conv.name]
        assert silent_channels(g)[conv.name].all() == (not fires)
        assert bool(np.moveaxis(spikes, -3, -1).reshape(-1, conv.channels).any(axis=0).all()) \
            == fires


@pytest.mark.parametrize("seed", SEEDS)
def test_removing_silent_channels_keeps_every_logit_and_kept_spike(seed):
    graph = _silenced(seed)
    pruned, report = remove_silent_channels(graph, min_channels=1)
    assert report.removed, "the silenced model has removable channels (convs, the MLP's hidden)"
    x = _inputs(graph, seed)
    before, after = run_golden(graph, x), run_golden(pruned, x)
    np.testing.assert_array_equal(before.logits, after.logits)
    for node in graph.neurons:
        removed = report.removed.get(node.name, [])
        spikes = before.values[node.name]
        assert not np.take(spikes, removed, axis=node.channel_axis).any()
        np.testing.assert_array_equal(np.delete(spikes, removed, axis=node.channel_axis),
                                      after.values[node.name], err_msg=node.name)
        assert pruned.node(node.name).channels == node.channels - len(removed)
    for name in report.removed:             # only where the structure allows it
        assert not isinstance(graph.node(name), Attention)
    assert pruned.source["silent_channels"]["removed"] == report.removed
    assert remove_silent_channels(pruned, min_channels=1)[1].removed == {}


@pytest.mark.parametrize("floor", [1, 3, 24])
def test_a_layer_keeps_at_least_min_channels(floor):
    """Every channel of the MLP's hidden layer silent: the layer keeps `floor` of them (the
    lowest), or all it had if fewer (the accelerator needs 3 groups of lanes per layer)."""
    graph = random_model(2)
    hidden = next(n for n in graph.neurons if n.name.endswith("mlp1"))
    reach = channel_highs(graph)[1][hidden.name]
    graph = _with_thresholds(graph, hidden.name, reach + 1)
    pruned, report = remove_silent_channels(graph, min_channels=floor)
    kept = min(floor, hidden.channels)
    assert pruned.node(hidden.name).channels == kept
    assert report.removed.get(hidden.name, []) == list(range(kept, hidden.channels))
    assert report.kept_silent[hidden.name] == list(range(kept))


def test_the_shipped_l1p_lost_its_silent_hidden_channels():
    """The committed export of the shipped L1P model: the pass ran (mlp1's 58 silent hidden
    channels removed, with mlp2's columns), and the silent channels it could not remove feed
    attention or the residual stream."""
    graph = load_artifact(ARTIFACTS / "shipped-l1p.json")
    record = graph.source["silent_channels"]
    assert {n: len(c) for n, c in record["removed"].items()} == {"block0.mlp1": 58}
    assert graph.node("block0.mlp1").channels == 128 - 58
    assert graph.node("block0.mlp2").in_features == 128 - 58
    silent = {n: int(s.sum()) for n, s in silent_channels(graph).items() if s.any()}
    assert silent == {n: len(c) for n, c in record["kept"].items()}
    assert silent == {"block0.q": 11, "block0.k": 4, "block0.v": 8, "block0.attn": 8,
                      "block0.o": 1}
