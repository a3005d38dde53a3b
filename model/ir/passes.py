"""Passes over the exported graph that keep its logits identical bit for bit.

Silent channels. A neuron's membrane starts at 0 and, with a leak in 0..2^K, each step's
``H = V + ((leak (x - V)) >> K)`` lies between V and x (the floor never overshoots), so V never
exceeds ``max(0, x_max)``, where ``x_max = (I_max << F) + bias`` and ``I_max`` is the largest
input current its weights allow over its inputs' ranges. A channel whose threshold lies above
that can never fire, for any input: it is *silent*. Its spikes are 0, which narrows the ranges
downstream, so one pass in graph order finds every channel that is silent because others are.

:func:`silent_channels` is that analysis; :func:`remove_silent_channels` removes each silent
channel of a conv or matmul whose value only convs, matmuls and the head read (through
``to_tokens``), with the columns that read it. A silent channel that feeds a residual add or
attention stays: removing it would change the residual stream's width or break equal head
widths (its neuron updates are still done; :class:`SilentReport` counts them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from model.ir.csc import csc_from_dense
from model.ir.graph import INPUT, Graph
from model.ir.nodes import (Add, Attention, Conv, Head, LowRankMatMul, MatMul, NeuronNode,
                            ToTokens)

__all__ = ["channel_highs", "silent_channels", "remove_silent_channels", "SilentReport",
           "MIN_CHANNELS"]

#: Nodes that read their input through a matrix's columns: a removed channel is a column less.
_COLUMN_READERS = (Conv, MatMul, LowRankMatMul, Head)


def _current_high(node: NeuronNode, highs: list[np.ndarray], graph: Graph) -> np.ndarray:
    """The largest input current I of every output channel over inputs 0..highs (per channel)."""
    if isinstance(node, Conv):
        columns = np.repeat(highs[0], 9)                # columns: in_channel * 9 + tap
        return np.clip(node.matrix(), 0, None) @ columns
    if isinstance(node, MatMul):
        return np.clip(node.matrix(), 0, None) @ highs[0]
    if isinstance(node, LowRankMatMul):
        b = node.b_matrix()
        z_hi = np.clip(b, 0, None) @ highs[0]
        z_lo = np.clip(b, None, 0) @ highs[0]
        return np.maximum(node.a * z_lo[None, :], node.a * z_hi[None, :]).sum(axis=1)
    if isinstance(node, Attention):                 # Q_h (K_h^T V_h): kv[j, c] <= N k_j v_c
        q, k, v = highs
        d = node.head_dim
        qk = (q * k).reshape(node.heads, d).sum(axis=1)
        return graph.model.tokens * np.repeat(qk, d) * v
    raise TypeError(f"no current bound for {type(node).__name__}")


def channel_highs(graph: Graph) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({value: largest count of each channel}, {neuron node: the highest membrane value
    ``max(0, x_max)`` each channel can reach}); a channel fires only if its threshold is at
    most that."""
    F = graph.fixed.frac_bits
    highs = {INPUT: np.full(graph.model.input_shape[0], graph.model.input_max, np.int64)}
    reach = {}
    for node in graph.nodes:
        ins = [highs[s] for s in node.inputs]
        if isinstance(node, NeuronNode):
            x_max = _current_high(node, ins, graph) * (1 << F) + node.bias
            reach[node.name] = np.maximum(x_max, 0)
            highs[node.name] = (node.threshold <= reach[node.name]).astype(np.int64)
        elif isinstance(node, ToTokens):
            highs[node.name] = ins[0]
        elif isinstance(node, Add):
            highs[node.name] = sum(ins[1:], ins[0])
    return highs, reach


def silent_channels(graph: Graph) -> dict[str, np.ndarray]:
    """{neuron node: bool per channel, True where it can never fire for any input}."""
    reach = channel_highs(graph)[1]
    return {n.name: n.threshold > reach[n.name] for n in graph.neurons}


@dataclass(frozen=True)
class SilentReport:
    """What :func:`remove_silent_channels` found and did, in the input graph's channel numbers."""
    silent: dict[str, list[int]]        # every silent channel of every neuron node
    removed: dict[str, list[int]]       # those removed (a subset)

    @property
    def kept_silent(self) -> dict[str, list[int]]:
        return {n: [c for c in cs if c not in self.removed.get(n, [])]
                for n, cs in self.silent.items() if len(cs) > len(self.removed.get(n, []))}


def _readers(graph: Graph, value: str) -> list:
    """The nodes that read `value`'s channels, looking through to_tokens (same channels)."""
    out = []
    for node in graph.nodes:
        if value in node.inputs:
            out.extend(_readers(graph, node.name) if isinstance(node, ToTokens) else [node])
    return out


def _removable(graph: Graph, node) -> bool:
    return (isinstance(node, (Conv, MatMul, LowRankMatMul))
            and all(isinstance(r, _COLUMN_READERS) for r in _readers(graph, node.name)))


def _source_of(graph: Graph, node) -> str:
    """The neuron node whose channels `node`'s (single) input carries, through to_tokens."""
    value = node.inputs[0]
    while isinstance(producer := _producer(graph, value), ToTokens):
        value = producer.inputs[0]
    return value


def _producer(graph: Graph, value: str):
    return None if value == INPUT else graph.node(value)


def _csc_fields(matrix: np.ndarray, dense: bool, prefix: str = "") -> dict:
    ptr, idx, val = csc_from_dense(matrix, keep_zeros=dense)
    return {f"{prefix}col_ptr": ptr, f"{prefix}row_idx": idx, f"{prefix}values": val}


def _keep_rows(node, rows: np.ndarray) -> dict:
    """The fields of conv or low-rank `node` with only output channels `rows`."""
    out = {"bias": node.bias[rows], "threshold": node.threshold[rows], "leak": node.leak[rows]}
    if isinstance(node, Conv):
        out.update(weight=node.weight[rows], out_channels=len(rows))
    else:                                           # LowRankMatMul
        out.update(a=node.a[rows], out_features=len(rows))
    return out


def _keep_columns(node, cols: np.ndarray, fields: dict) -> dict:
    """`fields` (conv, low-rank or head `node`'s changes so far) with only input channels
    `cols` read."""
    if isinstance(node, Conv):
        weight = fields.get("weight", node.weight)
        fields.update(weight=weight[:, cols], in_channels=len(cols))
    elif isinstance(node, LowRankMatMul):
        fields.update(_csc_fields(node.b_matrix()[:, cols], False, "b_"), in_features=len(cols))
    elif isinstance(node, Head):
        fields.update(weight=node.weight[:, cols], in_features=len(cols))
    return fields


#: The fewest channels the export leaves a layer with: the accelerator needs 3 groups of lanes
#: per layer (hw.plan), so 24 keeps every lane count up to 8 open to the model.
MIN_CHANNELS = 24


def remove_silent_channels(graph: Graph, min_channels: int = MIN_CHANNELS) -> \
        tuple[Graph, SilentReport]:
    """The graph without its removable silent channels (see the module's docstring), widths
    derived anew, and what was found. A layer keeps at least `min_channels` channels (or all
    it had, if fewer): the silent ones of lowest index fill it up. The result's
    ``source["silent_channels"]`` records both lists in `graph`'s channel numbers (the trained
    model's, at export), so a trace can be mapped back to the model's channels."""
    silent = silent_channels(graph)
    removed = {}
    for node in graph.neurons:
        dead = np.flatnonzero(silent[node.name])
        if len(dead) and _removable(graph, node):
            spare = node.channels - max(min(min_channels, node.channels), 1)
            dead = dead[len(dead) - min(spare, len(dead)):]
            if len(dead):
                removed[node.name] = dead
    keep = {name: np.setdiff1d(np.arange(graph.node(name).channels), dead)
            for name, dead in removed.items()}
    nodes = []
    for node in graph.nodes:
        rows = keep.get(node.name)
        source = _source_of(graph, node) if isinstance(node, _COLUMN_READERS) else None
        cols = keep.get(source)
        if rows is None and cols is None:
            nodes.append(node)
            continue
        nodes.append(dataclasses.replace(node, **_changes(node, rows, cols)))
    report = SilentReport(
        silent={n: np.flatnonzero(s).tolist() for n, s in silent.items() if s.any()},
        removed={n: d.tolist() for n, d in removed.items()})
    source = {**graph.source, "silent_channels": {"removed": report.removed,
                                                  "kept": report.kept_silent}}
    return Graph.build(graph.model, graph.fixed, nodes, source, derive=True), report


def _changes(node, rows, cols) -> dict:
    """The dataclass fields of `node` with output channels `rows` and input channels `cols`
    kept (either None: all)."""
    if isinstance(node, MatMul):
        matrix = node.matrix()
        matrix = matrix if rows is None else matrix[rows]
        matrix = matrix if cols is None else matrix[:, cols]
        out = _csc_fields(matrix, node.format == "dense")
        out.update(in_features=matrix.shape[1], out_features=matrix.shape[0])
        if rows is not None:
            out.update(bias=node.bias[rows], threshold=node.threshold[rows],
                       leak=node.leak[rows])
        return out
    out = {} if rows is None else _keep_rows(node, rows)
    return out if cols is None else _keep_columns(node, cols, out)
