"""The integer golden model: a runner over the graph, in NumPy int64 (no torch).

Each node executes its own golden semantics (model.ir.nodes, rules in model.ir.intops) over all
time steps, for a batch of images at once; the runner feeds the neuron nodes' input currents
through the integer neuron, checks every intermediate against the width the artifact declares
and keeps, on request, every value and every membrane. Everything downstream is compared
against it; the golden data file (:func:`write_golden_data`, read by :class:`GoldenData`) carries
its results to the simulator.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.errors import DataError
from model.ir import files, intops
from model.ir.graph import INPUT, Graph
from model.ir.nodes import Head, NeuronNode, Spatial

__all__ = ["GoldenResult", "run_golden", "write_golden_data", "GoldenData", "node_spikes"]


@dataclass
class GoldenResult:
    logits: np.ndarray                                       # (B, classes) int64
    values: dict[str, np.ndarray] = field(default_factory=dict)     # name -> (T, B, ...)
    membranes: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T, B, ...) V_next

    @property
    def prediction(self) -> np.ndarray:
        return self.logits.argmax(1)      # first maximum on ties, as the hardware does


class _Run:
    """One execution: the graph, what to record, and per-node caches (dense matrices)."""

    def __init__(self, graph: Graph, record: bool):
        self.graph, self.record = graph, record
        self.membranes: dict[str, np.ndarray] = {}
        self._cache: dict = {}

    def cached(self, node, key: str, make):
        k = (node.name, key)
        if k not in self._cache:
            self._cache[k] = make()
        return self._cache[k]

    def neuron(self, node: NeuronNode, accs: list[np.ndarray]) -> np.ndarray:
        """The integer neuron over T accumulators; returns the spikes (T, ...)."""
        shape = [1] * accs[0].ndim
        shape[node.channel_axis] = -1
        bias, threshold, leak = (p.reshape(shape) for p in
                                 (node.bias, node.threshold, node.leak))
        fixed = self.graph.fixed
        v = np.zeros_like(accs[0])
        spikes, membranes = [], []
        for acc in accs:
            node.check_width("acc", acc)
            s, v, h, x, product = intops.neuron_step(v, acc, bias, threshold, leak,
                                                     fixed.frac_bits, fixed.leak_bits)
            for key, value in (("x", x), ("membrane", h), ("product", product)):
                node.check_width(key, value)
            spikes.append(s)
            membranes.append(v)
        if self.record:
            self.membranes[node.name] = np.stack(membranes)
        return np.stack(spikes)


def run_golden(graph: Graph, images, record: bool = True,
               saturate: bool = False) -> GoldenResult:
    """Run the network on `images`: integer pixels (B, C, H, W), or (B, T, C, H, W) for event
    data. `saturate` replaces every value a node produces by its largest possible count (every
    spike active at every step): the adversarial case for the declared widths."""
    x = np.asarray(images, dtype=np.int64)
    T = graph.model.timesteps
    if graph.model.time_varying_input:
        inputs = np.swapaxes(x, 0, 1)                     # (T, B, C, H, W)
    else:
        inputs = np.broadcast_to(x, (T, *x.shape))
    run = _Run(graph, record)
    values = {INPUT: inputs}
    logits = None
    for node in graph.nodes:
        out = node.execute([values[s] for s in node.inputs], run)
        if isinstance(node, Head):
            logits = out
        elif saturate:
            out = np.full_like(out, graph.bounds[node.name])
        values[node.name] = out
    result = GoldenResult(logits=logits, membranes=run.membranes)
    if record:
        result.values = {k: v for k, v in values.items()
                         if k != INPUT and k != graph.head.name}
    return result


def node_spikes(graph: Graph, result: GoldenResult, node: NeuronNode) -> np.ndarray:
    """A neuron node's spikes as (T, B, tokens, channels), tokens as the trace numbers them
    (a conv's: position y * W + x after pooling)."""
    v = result.values[node.name]
    if isinstance(graph.types[node.name], Spatial):           # (T, B, C, H, W) -> tokens
        v = np.swapaxes(v.reshape(*v.shape[:3], -1), 2, 3)
    return v


def write_golden_data(graph: Graph, images, labels, path) -> dict:
    """Golden data for the simulator process (.npz, read with :class:`GoldenData`).

    Holds the input images, labels, integer logits and predicted classes, and for every node
    ending in a neuron its spikes as (T, B, tokens, channels) uint8, tokens in the order of
    the trace port (docs/HARDWARE.md; conv: position y * W + x after pooling)."""
    images = np.asarray(images)
    result = run_golden(graph, images)
    arrays = {"images": images.astype(np.int64), "labels": np.asarray(labels, dtype=np.int64),
              "logits": result.logits, "prediction": result.prediction}
    traced = [(graph.index(n.name), n) for n in graph.neurons]
    for _, node in traced:
        arrays[f"spikes/{node.name}"] = node_spikes(graph, result, node).astype(np.uint8)
    arrays["traced_index"] = np.array([i for i, _ in traced], dtype=np.int64)
    arrays["traced_names"] = np.array([n.name for _, n in traced])
    files.write_npz(Path(path), arrays, compressed=True)
    return {"images": len(images), "traced": [n.name for _, n in traced]}


class GoldenData:
    """The golden .npz: images, labels, logits, predictions and traced spikes."""

    def __init__(self, path):
        try:
            with np.load(path, allow_pickle=False) as npz:
                self.images = npz["images"]
                self.labels = npz["labels"]
                self.logits = npz["logits"]
                self.prediction = npz["prediction"]
                self.traced_index = [int(i) for i in npz["traced_index"]]
                self.traced_names = [str(n) for n in npz["traced_names"]]
                self.spikes = {name: npz[f"spikes/{name}"] for name in self.traced_names}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"golden data {path} cannot be read ({exc}): run "
                            f"`stforge golden-data` again") from None

    def __len__(self) -> int:
        return len(self.images)

    def node_name(self, index: int) -> str:
        return self.traced_names[self.traced_index.index(index)]
