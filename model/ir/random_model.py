"""Random integer models within the space the hardware generator accepts (for fuzzing it).

:func:`random_model` draws an architecture (stem stages, channels and pooling, an optional
relative position embedding, dimension, depth, heads, time steps, MLP ratio, a format per
matrix: dense, sparse at a random density or low-rank at a random rank, weight and leak widths,
static or event input) and random integer weights, biases, thresholds and leaks, and returns the
checked :class:`~model.ir.graph.Graph` (every width derived, as the export does). The thresholds
are calibrated layer by layer on random inputs, so that the neurons fire at random but moderate
rates: a model whose every layer is silent (or always fires) would test little.

Standard library and NumPy only. `make fuzz-hw` (model/flows/fuzz_hw.py) sends such models
through HDL generation and simulation; :func:`random_inputs` draws their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.ir.artifact import FORMAT, VERSION, build_graph
from model.ir.csc import csc_from_dense
from model.ir.golden import _Run, run_golden
from model.ir.graph import INPUT, Graph

__all__ = ["Architecture", "random_architecture", "random_model", "model_of", "random_inputs"]

#: Fewest channels of a layer: the accelerator needs at least 3 groups of lanes per layer and
#: its cycle model more than 3 (hw.plan); with `lanes` P a layer has at least 4 P channels
MIN_GROUPS = 4


@dataclass(frozen=True)
class Architecture:
    """The drawn shape of a random model (everything but the integers)."""
    timesteps: int
    time_varying_input: bool
    input_channels: int
    image_size: int
    input_max: int
    stem: tuple[tuple[int, bool, str], ...]    # (out channels, pool, format) per conv stage
    rpe: str | None                            # the position embedding conv's format, or None
    dim: int
    heads: int
    depth: int
    hidden: int
    formats: tuple[dict, ...]                  # per block: {matrix: format}
    ranks: tuple[dict, ...]                    # per block: {matrix: rank} of low-rank ones
    density: float                             # of the sparse matrices
    weight_bits: int
    frac_bits: int
    leak_bits: int
    classes: int
    lanes: int                                 # the lanes the model is made for (channels)

    @property
    def tokens(self) -> int:
        side = self.image_size >> sum(pool for _, pool, _ in self.stem)
        return side * side

    def describe(self) -> str:
        stem = "-".join(f"{c}{'p' if pool else ''}{'s' if fmt == 'sparse' else ''}"
                        for c, pool, fmt in self.stem)
        blocks = ",".join("".join(f[0] for f in fmts.values()) for fmts in self.formats)
        return (f"T{self.timesteps}{' events' if self.time_varying_input else ''} "
                f"in{self.input_channels}x{self.image_size}^2 stem {stem}"
                f"{' rpe' if self.rpe else ''} D{self.dim} H{self.heads} depth {self.depth} "
                f"hidden {self.hidden} [{blocks}] w{self.weight_bits} F{self.frac_bits} "
                f"K{self.leak_bits} classes {self.classes} lanes {self.lanes}")


MATRICES = ("q", "k", "v", "o", "mlp1", "mlp2")


def random_architecture(rng: np.random.Generator, lanes: int = 1,
                        max_dim: int = 24) -> Architecture:
    """A random architecture whose every layer takes `lanes` lanes (at least MIN_GROUPS groups,
    heads of a multiple of `lanes` channels)."""
    P = lanes
    steps = int(rng.integers(1, 6))
    events = bool(rng.random() < 0.2)
    stages = int(rng.integers(1, 4))
    pools = [bool(rng.random() < 0.6) for _ in range(stages)]
    side = int(rng.integers(1, 5))                 # after the stem: side^2 tokens
    while side << sum(pools) > 8:                  # at most 8 x 8 pixels: short simulations
        pools[pools.index(True)] = False
    image = side << sum(pools)
    heads = int(rng.integers(1, 4))
    head_dim = P * int(rng.integers(1, max(2, max_dim // (heads * P)) + 1))
    dim = heads * head_dim
    while dim < MIN_GROUPS * P:
        dim += heads * P
    channels = [P * int(rng.integers(MIN_GROUPS, max(MIN_GROUPS, 16 // P) + 1))
                for _ in range(stages - 1)] + [dim]
    stem = tuple((c, pool, "sparse" if i > 0 and rng.random() < 0.5 else
                  str(rng.choice(["dense", "sparse"])))
                 for i, (c, pool) in enumerate(zip(channels, pools)))
    depth = int(rng.choice([0, 1, 1, 2, 2]))
    hidden = max(MIN_GROUPS * P, dim * int(rng.integers(1, 5)) // P * P)
    formats, ranks = [], []
    for _ in range(depth):
        fmts, rks = {}, {}
        for name in MATRICES:
            fmt = str(rng.choice(["dense", "sparse", "sparse", "lowrank"]))
            fmts[name] = fmt
            if fmt == "lowrank":
                n_in = hidden if name == "mlp2" else dim
                n_out = hidden if name == "mlp1" else dim
                rks[name] = int(rng.integers(1, min(n_in, n_out, 8) + 1))
        formats.append(fmts)
        ranks.append(rks)
    weight_bits = int(rng.integers(2, 9))
    return Architecture(
        timesteps=steps, time_varying_input=events,
        input_channels=int(rng.integers(1, 4)), image_size=image,
        input_max=int(rng.integers(1, 4)) if events else int(rng.choice([1, 3, 15, 31])),
        stem=stem, rpe=str(rng.choice(["dense", "sparse"])) if rng.random() < 0.25 else None,
        dim=dim, heads=heads, depth=depth, hidden=hidden, formats=tuple(formats),
        ranks=tuple(ranks), density=float(rng.uniform(0.05, 0.9)), weight_bits=weight_bits,
        frac_bits=int(rng.integers(0, 13)), leak_bits=int(rng.integers(0, 11)),
        classes=int(rng.integers(2, 11)), lanes=P)


class _Builder:
    """The manifest's nodes and arrays as they are drawn."""

    def __init__(self, rng, arch: Architecture):
        self.rng, self.arch = rng, arch
        self.nodes: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, name, array) -> str:
        self.arrays[name] = np.ascontiguousarray(np.asarray(array, dtype=np.int64))
        return name

    def weights(self, shape, bits: int, density: float = 1.0) -> np.ndarray:
        top = (1 << (bits - 1)) - 1
        w = self.rng.integers(-top - 1, top + 1, size=shape)
        if density < 1:
            w = np.where(self.rng.random(shape) < density, w, 0)
        return w

    def neuron(self, node: dict, channels: int) -> None:
        """Bias and leak at random; thresholds 1 for now (calibrated later)."""
        F, K = self.arch.frac_bits, self.arch.leak_bits
        name = node["name"]
        node["bias"] = self.put(f"{name}.bias",
                                self.rng.integers(-(1 << F) * 2, (1 << F) * 2 + 1, channels))
        node["threshold"] = self.put(f"{name}.threshold", np.ones(channels))
        node["leak"] = self.put(f"{name}.leak", self.rng.integers(0, (1 << K) + 1, channels))
        self.nodes.append(node)

    def conv(self, name, src, c_in, c_out, side, pool, fmt):
        density = 1.0 if fmt == "dense" else self.arch.density
        w = self.weights((c_out, c_in, 3, 3), self.arch.weight_bits, density)
        self.neuron({"name": name, "op": "conv", "inputs": [src], "in_channels": c_in,
                     "out_channels": c_out, "height": side, "width": side, "pool": pool,
                     "format": fmt, "weight": self.put(f"{name}.weight", w),
                     "weight_bits": self.arch.weight_bits}, c_out)
        return name

    def matmul(self, name, src, n_in, n_out, fmt, rank=None):
        bits = self.arch.weight_bits
        node = {"name": name, "op": "matmul", "inputs": [src], "in_features": n_in,
                "out_features": n_out}
        if fmt == "lowrank":
            b = self.weights((rank, n_in), bits, self.arch.density)
            ptr, idx, val = csc_from_dense(b)
            node.update(format="lowrank", rank=rank,
                        b_col_ptr=self.put(f"{name}.b_col_ptr", ptr),
                        b_row_idx=self.put(f"{name}.b_row_idx", idx),
                        b_values=self.put(f"{name}.b_values", val),
                        a=self.put(f"{name}.a", self.weights((n_out, rank), bits)))
        else:
            w = self.weights((n_out, n_in), bits, 1.0 if fmt == "dense" else self.arch.density)
            ptr, idx, val = csc_from_dense(w, keep_zeros=fmt == "dense")
            node.update(format=fmt, col_ptr=self.put(f"{name}.col_ptr", ptr),
                        row_idx=self.put(f"{name}.row_idx", idx),
                        values=self.put(f"{name}.values", val))
        self.neuron(node, n_out)
        return name

    def manifest(self) -> dict:
        a = self.arch
        return {
            "format": FORMAT, "version": VERSION,
            "model": {"timesteps": a.timesteps, "tokens": a.tokens, "dim": a.dim,
                      "heads": a.heads, "depth": a.depth,
                      "input_shape": [a.input_channels, a.image_size, a.image_size],
                      "time_varying_input": a.time_varying_input, "input_scale": 1.0,
                      "input_max": a.input_max, "num_classes": a.classes, "residual": "spike",
                      "neuron": "slif", "dataset": "random (fuzzing)"},
            "fixed_point": {"frac_bits": a.frac_bits, "leak_bits": a.leak_bits,
                            "weight_bits": a.weight_bits, "rounding": {}},
            "nodes": self.nodes,
            "source": {"random_model": a.describe()},
        }


def _draw_nodes(rng, arch: Architecture) -> _Builder:
    bld = _Builder(rng, arch)
    prev, c_in, side = INPUT, arch.input_channels, arch.image_size
    for i, (c_out, pool, fmt) in enumerate(arch.stem):
        prev = bld.conv(f"stem{i}", prev, c_in, c_out, side, pool, fmt)
        c_in, side = c_out, side // 2 if pool else side
    if arch.rpe:
        bld.conv("rpe", prev, arch.dim, arch.dim, side, False, arch.rpe)
        bld.nodes.append({"name": "embed", "op": "add", "inputs": [prev, "rpe"]})
        prev = "embed"
    bld.nodes.append({"name": "tokens", "op": "to_tokens", "inputs": [prev]})
    prev = "tokens"
    D, H = arch.dim, arch.hidden
    for b in range(arch.depth):
        p, fmts, ranks = f"block{b}.", arch.formats[b], arch.ranks[b]
        q, k, v = (bld.matmul(p + n, prev, D, D, fmts[n], ranks.get(n)) for n in "qkv")
        attn = {"name": p + "attn", "op": "attention", "inputs": [q, k, v],
                "heads": arch.heads, "dim": D, "scale": 0.125}
        bld.neuron(attn, D)
        o = bld.matmul(p + "o", p + "attn", D, D, fmts["o"], ranks.get("o"))
        bld.nodes.append({"name": p + "res1", "op": "add", "inputs": [prev, o]})
        h = bld.matmul(p + "mlp1", p + "res1", D, H, fmts["mlp1"], ranks.get("mlp1"))
        y = bld.matmul(p + "mlp2", h, H, D, fmts["mlp2"], ranks.get("mlp2"))
        bld.nodes.append({"name": p + "out", "op": "add", "inputs": [p + "res1", y]})
        prev = p + "out"
    T, N = arch.timesteps, arch.tokens
    bld.nodes.append({"name": "head", "op": "head", "inputs": [prev], "classes": arch.classes,
                      "in_features": D,
                      "weight": bld.put("head.weight", bld.weights((arch.classes, D),
                                                                   arch.weight_bits)),
                      "bias": bld.put("head.bias", rng.integers(-T * N, T * N + 1,
                                                                arch.classes))})
    return bld


def random_inputs(rng: np.random.Generator, graph: Graph, count: int) -> np.ndarray:
    """`count` random inputs: pixels (count, C, H, W), or frames (count, T, C, H, W) for event
    input; each input with its own share of zeros."""
    m = graph.model
    shape = (count, m.timesteps, *m.input_shape) if m.time_varying_input else \
        (count, *m.input_shape)
    zero = rng.uniform(0.1, 0.9, size=(count,) + (1,) * (len(shape) - 1))
    values = rng.integers(1, m.input_max + 1, size=shape)
    return np.where(rng.random(shape) < zero, 0, values)


def _calibrate(bld: _Builder, rng, inputs) -> Graph:
    """Thresholds layer by layer: each channel's threshold is a random quantile (50..95 %) of
    its inputs x = (I << F) + bias on `inputs` (the layers before it already calibrated), at
    least 1, so that it fires on roughly the top 5..50 % of them."""
    F = bld.arch.frac_bits
    graph = build_graph(bld.manifest(), bld.arrays, derive=True)
    for node in graph.neurons:
        result = run_golden(graph, inputs)
        values = {INPUT: _input_values(graph, inputs), **result.values}
        accs = np.stack(node.accumulators([values[s] for s in node.inputs], _Run(graph, False)))
        axis = node.channel_axis % accs.ndim
        shape = [-1 if a == axis else 1 for a in range(accs.ndim)]
        x = (accs << F) + node.bias.reshape(shape)
        x = np.moveaxis(x, axis, 0).reshape(node.channels, -1)
        threshold = np.maximum(1, np.quantile(x, rng.uniform(0.5, 0.95), axis=1).astype(np.int64))
        bld.arrays[f"{node.name}.threshold"] = threshold
        graph = build_graph(bld.manifest(), bld.arrays, derive=True)
    return graph


def _input_values(graph: Graph, inputs) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.int64)
    if graph.model.time_varying_input:
        return np.swapaxes(x, 0, 1)
    return np.broadcast_to(x, (graph.model.timesteps, *x.shape))


def random_model(seed: int, lanes: int = 1, max_dim: int = 24) -> Graph:
    """The random model of `seed` (reproducible), for `lanes` lanes; see the module docstring."""
    rng = np.random.default_rng(seed)
    return model_of(random_architecture(rng, lanes, max_dim), rng)


def model_of(arch: Architecture, rng: np.random.Generator) -> Graph:
    """A model of the architecture `arch` with random integers (thresholds calibrated)."""
    bld = _draw_nodes(rng, arch)
    graph = build_graph(bld.manifest(), bld.arrays, derive=True)
    return _calibrate(bld, rng, random_inputs(rng, graph, 8))
