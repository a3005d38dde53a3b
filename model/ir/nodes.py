"""The operations of an exported network, one immutable class each, owning all of their facts.

A node knows its manifest fields (read through :class:`~model.ir.fields.Fields`, so a defect is
one ArtifactError line), checks itself against its arrays and its input values (:meth:`infer`),
derives the bit widths its arithmetic needs (:meth:`derive_widths`), executes the golden integer
semantics on NumPy int64 arrays (:meth:`execute`, rules in :mod:`model.ir.intops`) and counts
the work no schedule can skip (:meth:`work`). docs/ARTIFACT.md describes every field.

Values flow between nodes as non-negative integer spike counts, ``(T, B, C, H, W)`` while
:class:`Spatial` and ``(T, B, N, D)`` once :class:`Tokens` (one array per batch of images).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields as dataclass_fields
from typing import ClassVar

import numpy as np

from model.errors import ArtifactError
from model.ir import intops
from model.ir.csc import csc_from_dense, dense_from_csc
from model.ir.fields import Fields, declare

__all__ = ["Spatial", "Tokens", "Logits", "FixedPoint", "Node", "NeuronNode", "Conv",
           "ToTokens", "Add", "MatMul", "LowRankMatMul", "Attention", "Head", "NODE_TYPES",
           "node_type", "WORK_TERMS", "MAX_WIDTH"]

#: Widest intermediate the golden model (NumPy int64) and the generator accept.
MAX_WIDTH = 62
#: The work terms of :meth:`Node.work`, in operations (docs/REPORTS.md, "ideal cycles").
WORK_TERMS = ("synaptic", "mac", "attention", "neuron")


# ---- value types -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spatial:
    """A (channels, height, width) plane per time step; tokens are positions ``y * width + x``."""
    channels: int
    height: int
    width: int

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def features(self) -> int:
        return self.channels

    def __str__(self):
        return f"{self.channels}x{self.height}x{self.width}"


@dataclass(frozen=True)
class Tokens:
    """(tokens, features) per time step."""
    tokens: int
    features: int

    def __str__(self):
        return f"{self.tokens} tokens x {self.features}"


@dataclass(frozen=True)
class Logits:
    classes: int

    def __str__(self):
        return f"{self.classes} logits"


@dataclass(frozen=True)
class FixedPoint:
    """The artifact's global integer parameters (docs/INTEGER.md)."""
    frac_bits: int          # F: membrane fraction bits
    leak_bits: int          # K: leak fraction bits
    weight_bits: int        # signed width of every stored weight (a conv may declare its own)
    rounding: dict = field(default_factory=dict, compare=False)   # how the export rounded

    FIELDS: ClassVar = declare("fixed_point", {
        "frac_bits": "F, fraction bits of the membrane: x = (I << F) + bias (0..32)",
        "leak_bits": "K, fraction bits of the leak: H = V + ((leak (x - V)) >> K) (0..32)",
        "weight_bits": "signed width of the stored weights, 2..32",
        "rounding": "object of strings: how the export rounded each constant (documentation)",
    })

    @classmethod
    def read(cls, f: Fields) -> "FixedPoint":
        rounding = f.get("rounding", {})
        if not isinstance(rounding, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in rounding.items()):
            f.fail("field 'rounding' must be an object of strings")
        return cls(frac_bits=f.int("frac_bits", maximum=32),
                   leak_bits=f.int("leak_bits", maximum=32),
                   weight_bits=f.int("weight_bits", minimum=2, maximum=32), rounding=rounding)

    def write(self) -> dict:
        return {"frac_bits": self.frac_bits, "leak_bits": self.leak_bits,
                "weight_bits": self.weight_bits, "rounding": dict(self.rounding)}


def _fail(node, message: str):
    raise ArtifactError(f"node {node.name}: {message}")


def _in_signed_bits(node, a: np.ndarray, bits: int, what: str) -> None:
    lo, hi = intops.range_of_signed_bits(bits)
    if a.size and (a.min() < lo or a.max() > hi):
        _fail(node, f"{what} holds values in [{a.min()}, {a.max()}], outside its declared "
                    f"{bits}-bit signed range [{lo}, {hi}]")


def _check_csc(node, prefix: str, ptr, idx, values, rows: int, cols: int, weight_bits: int):
    if ptr.shape != (cols + 1,):
        _fail(node, f"{prefix}col_ptr has shape {ptr.shape}, expected ({cols + 1},)")
    if idx.ndim != 1 or values.shape != idx.shape:
        _fail(node, f"{prefix}row_idx and {prefix}values must be vectors of one length, not "
                    f"{idx.shape} and {values.shape}")
    if ptr[0] != 0 or np.any(np.diff(ptr) < 0) or ptr[-1] != len(idx):
        _fail(node, f"{prefix}col_ptr is not a valid CSC column pointer")
    if len(idx) and (idx.min() < 0 or idx.max() >= rows):
        _fail(node, f"{prefix}row_idx has rows outside 0..{rows - 1}")
    for j in range(cols):
        column = idx[ptr[j]:ptr[j + 1]]
        if np.any(np.diff(column) <= 0):
            _fail(node, f"{prefix}row_idx of column {j} is not strictly increasing")
    _in_signed_bits(node, values, weight_bits, f"{prefix}values")


# ---- nodes -------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True, eq=False)
class Node:
    """One step of the graph: reads the values `inputs` and produces the value `name`."""
    op: ClassVar[str]
    format: ClassVar[str | None] = None
    #: manifest fields holding arrays (the npz entry's name, ``<node>.<field>``)
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    #: the keys of ``widths`` this node declares (empty: no widths)
    WIDTHS: ClassVar[tuple[str, ...]] = ()
    #: number of inputs (None: one or more)
    ARITY: ClassVar[int | None] = 1

    name: str
    inputs: tuple[str, ...]
    widths: dict = field(default_factory=dict)

    # -- manifest

    #: its section of the schema (model.ir.fields.SCHEMA); default: the op
    SECTION: ClassVar[str | None] = None

    @classmethod
    def section(cls) -> str:
        return cls.SECTION or cls.op

    @classmethod
    def read(cls, f: Fields, arrays: dict, fixed: FixedPoint) -> "Node":
        """The node in manifest object `f`; `arrays` are the artifact's (int64)."""
        values = {"name": f.name("name"), "inputs": f.names("inputs", cls.ARITY)}
        if cls.WIDTHS:
            values["widths"] = f.int_map("widths", maximum=MAX_WIDTH, default={})
        values.update(cls.read_fields(f, arrays, fixed))
        return cls(**values)

    @classmethod
    def read_fields(cls, f: Fields, arrays: dict, fixed: FixedPoint) -> dict:
        return {}

    def write(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(manifest object, {npz name: array}) of this node."""
        obj = {"name": self.name, "op": self.op}
        if self.format is not None:
            obj["format"] = self.format
        obj["inputs"] = list(self.inputs)
        arrays = {}
        for f in dataclass_fields(self):
            if f.name in ("name", "inputs", "widths"):
                continue
            value = getattr(self, f.name)
            if f.name in self.ARRAYS:
                obj[f.name] = f"{self.name}.{f.name}"
                arrays[obj[f.name]] = value
            else:
                obj[f.name] = value
        if self.WIDTHS:
            obj["widths"] = dict(self.widths)
        return obj, arrays

    def with_widths(self, widths: dict) -> "Node":
        import dataclasses
        return dataclasses.replace(self, widths=dict(widths))

    # -- facts

    def infer(self, ins: list, graph) -> Spatial | Tokens | Logits:
        """The type of this node's value, from its inputs' (ArtifactError if they do not fit)."""
        raise NotImplementedError

    def bound(self, in_bounds: list[int]) -> int | None:
        """Largest count any element of this node's value can hold (1 for spikes)."""
        return 1

    def derive_widths(self, in_bounds: list[int], graph) -> dict[str, int]:
        """The smallest width of every intermediate, for the inputs' bounds."""
        return {}

    def execute(self, ins: list[np.ndarray], run) -> np.ndarray:
        """This node's value for all time steps (golden semantics; see model.ir.golden)."""
        raise NotImplementedError

    def work(self, in_counts: list[np.ndarray], graph) -> dict[str, int]:
        """Operations no schedule can skip, per term of WORK_TERMS (one image:
        `in_counts` are the inputs as (T, tokens, features) counts); empty: no work."""
        return {}

    def check_width(self, key: str, value: np.ndarray) -> None:
        """Refuse a value outside the declared width `key` (a wrong artifact, not a model)."""
        bits = self.widths[key]
        lo, hi = intops.range_of_signed_bits(bits)
        if value.size and (int(value.min()) < lo or int(value.max()) > hi):
            _fail(self, f"{key} reached [{int(value.min())}, {int(value.max())}], outside its "
                        f"declared {bits}-bit width")


NEURON_FIELDS = {
    "bias": "array (channels,): bias of x = (I << F) + bias, membrane units 2^-F",
    "threshold": "array (channels,): firing threshold, >= 1 (a neuron at rest never fires)",
    "leak": "array (channels,): leak in units 2^-K, 0..2^K (2^K: no leak, IF neuron)",
    "widths": "object: declared width of every intermediate (see Widths)",
}


@dataclass(frozen=True, kw_only=True, eq=False)
class NeuronNode(Node):
    """A node ending in the integer sLIF neuron: its spikes are traced by the hardware."""
    ARRAYS = ("bias", "threshold", "leak")
    WIDTHS = ("acc", "x", "membrane", "threshold", "diff", "product")

    bias: np.ndarray
    threshold: np.ndarray
    leak: np.ndarray

    @property
    def channels(self) -> int:
        """Output channels (features): the neuron array's width for this node."""
        return len(self.bias)

    @classmethod
    def read_neuron(cls, f: Fields, arrays: dict, fixed: FixedPoint, channels: int) -> dict:
        leak = f.array("leak", arrays, (channels,))
        bias = f.array("bias", arrays, (channels,))
        threshold = f.array("threshold", arrays, (channels,))
        if leak.min() < 0 or leak.max() > (1 << fixed.leak_bits):
            f.fail(f"leak must lie in 0..2^{fixed.leak_bits}")
        if threshold.min() < 1:
            f.fail("thresholds must be >= 1 (a neuron at rest must not fire)")
        limit = 1 << 40
        if np.abs(bias).max() >= limit or threshold.max() >= limit:
            f.fail("bias and threshold must be below 2^40 in magnitude")
        return {"bias": bias, "threshold": threshold, "leak": leak}

    def accumulators(self, ins: list[np.ndarray], run) -> list[np.ndarray]:
        """The integer input current I of every time step."""
        raise NotImplementedError

    channel_axis: ClassVar[int] = -1

    def execute(self, ins, run):
        return run.neuron(self, self.accumulators(ins, run))

    def neuron_widths(self, graph, acc_lo: int, acc_hi: int) -> dict[str, int]:
        """Worst-case widths of I, x = (I << F) + bias, V, x - V and leak * (x - V).

        V starts at 0 and H lies between V and x (floor never undershoots min(V, x)), so V and
        H stay within hull(0, x range): overflow is impossible by construction."""
        F, K = graph.fixed.frac_bits, graph.fixed.leak_bits
        x_lo = acc_lo * (1 << F) + int(self.bias.min())
        x_hi = acc_hi * (1 << F) + int(self.bias.max())
        th = int(self.threshold.max())
        v_lo, v_hi = min(0, x_lo), max(0, x_hi, th)
        d = max(x_hi - v_lo, v_hi - x_lo)
        sb = intops.signed_bits
        return {"acc": sb(acc_lo, acc_hi), "x": sb(x_lo, x_hi), "membrane": sb(v_lo, v_hi),
                "threshold": sb(0, th), "diff": sb(-d, d), "product": sb(-d << K, d << K)}

    def neuron_work(self, graph, positions: int) -> int:
        return graph.model.timesteps * positions * self.channels


def _matrix_work(sizes: np.ndarray, counts: np.ndarray) -> int:
    """Spike-fed operations: every active input (count > 0) costs its column's stored weights."""
    return int(((counts != 0) * sizes[None, None, :]).sum())


@dataclass(frozen=True, kw_only=True, eq=False)
class Conv(NeuronNode):
    """3x3 same-padding cross-correlation of a plane (or the input image) + neuron, then an
    optional stride-2 OR pool (2x2, or 3x3 with padding 1). "dense" stores every weight,
    "sparse" (L1P) only the non-zeros."""
    op = "conv"
    ARRAYS = ("weight",) + NeuronNode.ARRAYS
    FORMATS: ClassVar = ("dense", "sparse")
    FIELDS: ClassVar = declare("conv", {
        "name": "the node's name and its value's: letters, digits, '_' and '.'",
        "op": '"conv"',
        "inputs": "[value]: a plane of in_channels x height x width (or \"input\")",
        "in_channels": "input channels",
        "out_channels": "output channels",
        "height": "input height, before pooling (the neurons run at this resolution)",
        "width": "input width, before pooling",
        "pool": "true: OR pooling (max of spikes) after the neuron, stride 2; height, width even",
        "pool_kernel": "2 (2x2 windows, the default) or 3 (3x3 windows, padding 1: the official "
                       "SPS's MaxPool2d(3, 2, 1)); written only when 3",
        "format": '"dense" (every weight stored and counted) or "sparse" (non-zeros only)',
        "weight": "array (out_channels, in_channels, 3, 3), applied as cross-correlation",
        "weight_bits": "signed width of this conv's weights (default fixed_point.weight_bits)",
        **NEURON_FIELDS})

    in_channels: int
    out_channels: int
    height: int
    width: int
    pool: bool
    conv_format: str
    weight: np.ndarray
    weight_bits: int
    pool_kernel: int = 2

    @property
    def format(self) -> str:          # noqa: D401 - shadows the ClassVar per instance
        return self.conv_format

    @classmethod
    def read_fields(cls, f, arrays, fixed):
        c_in, c_out = f.int("in_channels", minimum=1), f.int("out_channels", minimum=1)
        h, w = f.int("height", minimum=1), f.int("width", minimum=1)
        pool = f.bool("pool")
        if pool and (h % 2 or w % 2):
            f.fail(f"pooling needs an even height and width, not {h}x{w}")
        kernel = f.int("pool_kernel", minimum=2, maximum=3, default=2)
        if kernel != 2 and not pool:
            f.fail("pool_kernel needs pool = true")
        bits = f.int("weight_bits", minimum=2, maximum=32, default=fixed.weight_bits)
        weight = f.array("weight", arrays, (c_out, c_in, 3, 3))
        out = {"in_channels": c_in, "out_channels": c_out, "height": h, "width": w,
               "pool": pool, "conv_format": f.str("format", choices=cls.FORMATS,
                                                  default="dense"),
               "weight": weight, "weight_bits": bits, "pool_kernel": kernel}
        out.update(cls.read_neuron(f, arrays, fixed, c_out))
        probe = cls(name=f.data["name"], inputs=(), **out)
        _in_signed_bits(probe, weight, bits, "weight")
        return out

    def write(self):
        obj, arrays = super().write()
        obj["format"] = obj.pop("conv_format")
        if obj["pool_kernel"] == 2:     # the default: manifests from before the field unchanged
            del obj["pool_kernel"]
        return obj, arrays

    @property
    def out_height(self) -> int:
        return self.height // 2 if self.pool else self.height

    @property
    def out_width(self) -> int:
        return self.width // 2 if self.pool else self.width

    @property
    def positions(self) -> int:
        """Neuron positions per time step (before pooling)."""
        return self.height * self.width

    @property
    def out_tokens(self) -> int:
        """Tokens of the output value (after pooling), the trace's token numbers."""
        return self.out_height * self.out_width

    def columns(self):
        """The weights as CSC over columns ``in_channel * 9 + tap`` (rows: out channels): every
        weight for "dense", the non-zeros for "sparse" (the engine's and the work's layout)."""
        return csc_from_dense(self.weight.reshape(self.out_channels, -1),
                              keep_zeros=self.conv_format == "dense")

    def matrix(self) -> np.ndarray:
        return self.weight.reshape(self.out_channels, -1)

    def infer(self, ins, graph):
        (src,) = ins
        want = Spatial(self.in_channels, self.height, self.width)
        if src != want:
            _fail(self, f"its input {self.inputs[0]} is {src}, but the conv declares {want}")
        return Spatial(self.out_channels, self.out_height, self.out_width)

    def derive_widths(self, in_bounds, graph):
        lo, hi = intops.acc_range(self.matrix(), in_bounds[0])
        return self.neuron_widths(graph, lo, hi)

    def static(self, graph) -> bool:
        """Pixels of a static image: the accumulators of step 0 serve every time step."""
        return self.inputs[0] == "input" and not graph.model.time_varying_input

    def accumulators(self, ins, run):
        (src,) = ins
        if self.static(run.graph):
            return [intops.conv3x3(src[0], self.weight)] * len(src)
        return [intops.conv3x3(src[t], self.weight) for t in range(len(src))]

    channel_axis = -3

    def execute(self, ins, run):
        spikes = super().execute(ins, run)
        return intops.pool_or(spikes, self.pool_kernel) if self.pool else spikes

    def work(self, in_counts, graph):
        counts = in_counts[0].reshape(len(in_counts[0]), self.height, self.width, -1)
        if self.static(graph):
            counts = counts[:1]
        active = np.moveaxis(counts != 0, -1, 1).astype(np.int64)     # (steps, C, H, W)
        ptr = self.columns()[0]
        sizes = np.diff(ptr).reshape(self.in_channels, 9)
        synaptic = 0
        for tap in range(9):
            shifted = intops.shift2d(active, tap // 3 - 1, tap % 3 - 1)
            synaptic += int(shifted.sum(axis=(0, 2, 3)) @ sizes[:, tap])
        return {"synaptic": synaptic, "neuron": self.neuron_work(graph, self.positions)}


@dataclass(frozen=True, kw_only=True, eq=False)
class ToTokens(Node):
    """(C, H, W) -> (N = H W, C), raster order: tokens y * W + x."""
    op = "to_tokens"
    FIELDS: ClassVar = declare("to_tokens", {"name": "the value's name", "op": '"to_tokens"',
                                             "inputs": "[plane]"})

    def infer(self, ins, graph):
        (src,) = ins
        if not isinstance(src, Spatial):
            _fail(self, f"its input {self.inputs[0]} is {src}, not a plane")
        return Tokens(src.tokens, src.channels)

    def bound(self, in_bounds):
        return in_bounds[0]

    def execute(self, ins, run):
        src = ins[0]
        return np.swapaxes(src.reshape(*src.shape[:3], -1), 2, 3)      # (T, B, N, C)


@dataclass(frozen=True, kw_only=True, eq=False)
class Add(Node):
    """Sum of values of one shape (spike residuals): counts, not spikes."""
    op = "add"
    ARITY = None
    WIDTHS = ("value",)
    FIELDS: ClassVar = declare("add", {
        "name": "the value's name", "op": '"add"',
        "inputs": "[value, value, ...]: two or more values of one shape",
        "widths": "object: {\"value\": width of the sum}"})

    def infer(self, ins, graph):
        if len(ins) < 2:
            _fail(self, "an add needs at least two inputs")
        if any(t != ins[0] for t in ins) or isinstance(ins[0], Logits):
            _fail(self, f"its inputs differ in shape: {', '.join(map(str, ins))}")
        return ins[0]

    def bound(self, in_bounds):
        return sum(in_bounds)

    def derive_widths(self, in_bounds, graph):
        return {"value": intops.signed_bits(0, sum(in_bounds))}

    def execute(self, ins, run):
        out = sum(ins[1:], ins[0])
        self.check_width("value", out)
        return out


MATMUL_FIELDS = {
    "name": "the node's name and its value's", "op": '"matmul"',
    "inputs": "[value]: tokens x in_features", "in_features": "input features",
    "out_features": "output features (neurons per token)",
}


@dataclass(frozen=True, kw_only=True, eq=False)
class MatMul(NeuronNode):
    """y = W x per token and time step + neuron; W (out x in) stored as CSC, one column per
    input feature: "dense" keeps every entry (zeros too), "sparse" (L1P) the non-zeros."""
    op = "matmul"
    ARRAYS = ("col_ptr", "row_idx", "values") + NeuronNode.ARRAYS
    FIELDS: ClassVar = declare("matmul", {
        **MATMUL_FIELDS, "format": '"dense", "sparse" or "lowrank" (see matmul/lowrank)',
        "col_ptr": "array (in_features + 1,): CSC column pointer, col_ptr[0] = 0",
        "row_idx": "array (stored,): output row of each stored weight, increasing per column",
        "values": "array (stored,): the stored weights", **NEURON_FIELDS})

    in_features: int
    out_features: int
    matmul_format: str
    col_ptr: np.ndarray
    row_idx: np.ndarray
    values: np.ndarray

    @property
    def format(self) -> str:
        return self.matmul_format

    @classmethod
    def read_fields(cls, f, arrays, fixed):
        n_in, n_out = f.int("in_features", minimum=1), f.int("out_features", minimum=1)
        out = {"in_features": n_in, "out_features": n_out,
               "matmul_format": f.str("format", choices=("dense", "sparse")),
               "col_ptr": f.array("col_ptr", arrays), "row_idx": f.array("row_idx", arrays),
               "values": f.array("values", arrays)}
        out.update(cls.read_neuron(f, arrays, fixed, n_out))
        probe = cls(name=f.data["name"], inputs=(), **out)
        _check_csc(probe, "", out["col_ptr"], out["row_idx"], out["values"], n_out, n_in,
                   fixed.weight_bits)
        if out["matmul_format"] == "dense" and len(out["row_idx"]) != n_in * n_out:
            f.fail(f"a dense matmul stores every one of its {n_out}x{n_in} weights, not "
                   f"{len(out['row_idx'])}")
        return out

    def write(self):
        obj, arrays = super().write()
        del obj["matmul_format"]
        return obj, arrays

    def matrix(self) -> np.ndarray:
        """The dense integer matrix (out x in)."""
        return dense_from_csc(self.col_ptr, self.row_idx, self.values, self.out_features,
                              self.in_features)

    def columns(self):
        return self.col_ptr, self.row_idx, self.values

    def infer(self, ins, graph):
        (src,) = ins
        if not isinstance(src, Tokens) or src.features != self.in_features:
            _fail(self, f"its input {self.inputs[0]} is {src}, but it declares in_features = "
                        f"{self.in_features} (tokens x features)")
        return Tokens(src.tokens, self.out_features)

    def derive_widths(self, in_bounds, graph):
        lo, hi = intops.acc_range(self.matrix(), in_bounds[0])
        return self.neuron_widths(graph, lo, hi)

    def accumulators(self, ins, run):
        w = run.cached(self, "matrix", self.matrix)
        return [step @ w.T for step in ins[0]]

    def work(self, in_counts, graph):
        sizes = np.diff(self.col_ptr)
        tokens = in_counts[0].shape[1]
        return {"synaptic": _matrix_work(sizes, in_counts[0]),
                "neuron": self.neuron_work(graph, tokens)}


@dataclass(frozen=True, kw_only=True, eq=False)
class LowRankMatMul(NeuronNode):
    """y = A (B x) + neuron (DSP): B (rank x in) stored as CSC, spike-fed; A (out x rank) a
    dense multi-bit matrix applied to the integer z = B x."""
    op = "matmul"
    format = "lowrank"
    SECTION = "matmul/lowrank"
    ARRAYS = ("a", "b_col_ptr", "b_row_idx", "b_values") + NeuronNode.ARRAYS
    WIDTHS = NeuronNode.WIDTHS + ("z",)
    FIELDS: ClassVar = declare("matmul/lowrank", {
        **MATMUL_FIELDS, "format": '"lowrank"', "rank": "inner dimension of A B",
        "a": "array (out_features, rank): dense A",
        "b_col_ptr": "array (in_features + 1,): CSC column pointer of B (rank x in_features)",
        "b_row_idx": "array: row (0..rank-1) of each stored entry of B",
        "b_values": "array: the stored entries of B", **NEURON_FIELDS,
        "widths": "object: the neuron's widths and \"z\", the width of B x"})

    in_features: int
    out_features: int
    rank: int
    a: np.ndarray
    b_col_ptr: np.ndarray
    b_row_idx: np.ndarray
    b_values: np.ndarray

    @classmethod
    def read_fields(cls, f, arrays, fixed):
        n_in, n_out = f.int("in_features", minimum=1), f.int("out_features", minimum=1)
        rank = f.int("rank", minimum=1)
        f.str("format", choices=("lowrank",))
        out = {"in_features": n_in, "out_features": n_out, "rank": rank,
               "a": f.array("a", arrays, (n_out, rank)),
               "b_col_ptr": f.array("b_col_ptr", arrays), "b_row_idx": f.array("b_row_idx",
                                                                               arrays),
               "b_values": f.array("b_values", arrays)}
        out.update(cls.read_neuron(f, arrays, fixed, n_out))
        probe = cls(name=f.data["name"], inputs=(), **out)
        _check_csc(probe, "b_", out["b_col_ptr"], out["b_row_idx"], out["b_values"], rank,
                   n_in, fixed.weight_bits)
        _in_signed_bits(probe, out["a"], fixed.weight_bits, "a")
        return out

    def b_matrix(self) -> np.ndarray:
        return dense_from_csc(self.b_col_ptr, self.b_row_idx, self.b_values, self.rank,
                              self.in_features)

    def matrix(self) -> np.ndarray:
        """The dense integer product A B (out x in)."""
        return self.a @ self.b_matrix()

    def columns(self):
        return self.b_col_ptr, self.b_row_idx, self.b_values

    infer = MatMul.infer

    def derive_widths(self, in_bounds, graph):
        z_lo, z_hi = intops.acc_range(self.b_matrix(), in_bounds[0])
        z_max = max(-z_lo, z_hi)
        _, hi = intops.acc_range(np.abs(self.a), z_max)     # z has either sign: |A| |z|
        widths = self.neuron_widths(graph, -hi, hi)
        widths["z"] = intops.signed_bits(z_lo, z_hi)
        return widths

    def accumulators(self, ins, run):
        b = run.cached(self, "b", self.b_matrix)
        accs = []
        for step in ins[0]:
            z = step @ b.T
            self.check_width("z", z)
            accs.append(z @ self.a.T)
        return accs

    def work(self, in_counts, graph):
        sizes = np.diff(self.b_col_ptr)
        tokens = in_counts[0].shape[1]
        T = graph.model.timesteps
        return {"synaptic": _matrix_work(sizes, in_counts[0]),
                "mac": T * tokens * self.rank * self.out_features,
                "neuron": self.neuron_work(graph, tokens)}


@dataclass(frozen=True, kw_only=True, eq=False)
class Attention(NeuronNode):
    """Spiking self-attention: per head h (a contiguous block of dim / heads channels), the
    counts Q_h (K_h^T V_h) of 0/1 Q, K, V, then a neuron with learned per-channel thresholds."""
    op = "attention"
    ARITY = 3
    WIDTHS = NeuronNode.WIDTHS + ("kv",)
    FIELDS: ClassVar = declare("attention", {
        "name": "the node's name and its value's", "op": '"attention"',
        "inputs": "[q, k, v]: three spike values of tokens x dim (neuron nodes)",
        "heads": "heads; head h holds channels h*dim/heads .. (h+1)*dim/heads - 1",
        "dim": "channels of q, k, v and of the output",
        "scale": "the float scale the counts had in training (documentation; folded into "
                 "bias and threshold)",
        **NEURON_FIELDS,
        "widths": "object: the neuron's widths and \"kv\", the width of a K^T V count"})

    heads: int
    dim: int
    scale: float

    @classmethod
    def read_fields(cls, f, arrays, fixed):
        heads, dim = f.int("heads", minimum=1), f.int("dim", minimum=1)
        if dim % heads:
            f.fail(f"dim {dim} is not divisible by heads {heads}")
        out = {"heads": heads, "dim": dim, "scale": f.number("scale", positive=True)}
        out.update(cls.read_neuron(f, arrays, fixed, dim))
        return out

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def infer(self, ins, graph):
        for name, t in zip(self.inputs, ins):
            if not isinstance(t, Tokens) or t.features != self.dim:
                _fail(self, f"its input {name} is {t}, not tokens x dim = {self.dim}")
            if graph.bounds[name] != 1:
                _fail(self, f"its input {name} must be spikes (a neuron's output), not counts")
        if len({t.tokens for t in ins}) != 1:
            _fail(self, "q, k and v differ in tokens")
        return ins[0]

    def derive_widths(self, in_bounds, graph):
        n = graph.model.tokens
        widths = self.neuron_widths(graph, 0, n * self.head_dim)
        widths["kv"] = intops.signed_bits(0, n)
        return widths

    def accumulators(self, ins, run):
        q, k, v = ins
        return [intops.attention_counts(q[t], k[t], v[t], self.heads) for t in range(len(q))]

    def work(self, in_counts, graph):
        v = in_counts[2]
        T, N = v.shape[0], v.shape[1]
        return {"attention": int((v != 0).sum()) + T * N * self.dim,
                "neuron": T * N * self.dim}


@dataclass(frozen=True, kw_only=True, eq=False)
class Head(Node):
    """logits = W (sum over time steps and tokens of the input counts) + bias."""
    op = "head"
    ARRAYS = ("weight", "bias")
    WIDTHS = ("feature", "logit")
    FIELDS: ClassVar = declare("head", {
        "name": "the node's name", "op": '"head"', "inputs": "[value]: tokens x in_features",
        "classes": "output classes (= model.num_classes)", "in_features": "input features",
        "weight": "array (classes, in_features)",
        "bias": "array (classes,): bias in units of the summed counts (b T N / s)",
        "widths": "object: {\"feature\": width of a summed count, \"logit\": of a logit}"})

    classes: int
    in_features: int
    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def read_fields(cls, f, arrays, fixed):
        classes, n_in = f.int("classes", minimum=1), f.int("in_features", minimum=1)
        out = {"classes": classes, "in_features": n_in,
               "weight": f.array("weight", arrays, (classes, n_in)),
               "bias": f.array("bias", arrays, (classes,))}
        probe = cls(name=f.data["name"], inputs=(), **out)
        _in_signed_bits(probe, out["weight"], fixed.weight_bits, "weight")
        if len(out["bias"]) and np.abs(out["bias"]).max() >= 1 << 40:
            f.fail("bias must be below 2^40 in magnitude")
        return out

    def infer(self, ins, graph):
        (src,) = ins
        if not isinstance(src, Tokens) or src.features != self.in_features:
            _fail(self, f"its input {self.inputs[0]} is {src}, but it declares in_features = "
                        f"{self.in_features}")
        return Logits(self.classes)

    def bound(self, in_bounds):
        return None

    def feature_bound(self, in_bounds, graph) -> int:
        return in_bounds[0] * graph.model.tokens * graph.model.timesteps

    def derive_widths(self, in_bounds, graph):
        top = self.feature_bound(in_bounds, graph)
        lo, hi = intops.acc_range(self.weight, top)
        return {"feature": intops.signed_bits(0, top),
                "logit": intops.signed_bits(lo + int(self.bias.min(initial=0)),
                                            hi + int(self.bias.max(initial=0)))}

    def execute(self, ins, run):
        feature = ins[0].sum(axis=(0, 2))                   # over time steps and tokens
        self.check_width("feature", feature)
        logits = intops.head_logits(feature, self.weight, self.bias)
        self.check_width("logit", logits)
        return logits

    def work(self, in_counts, graph):
        return {"mac": self.classes * self.in_features}


NODE_TYPES: dict[tuple[str, str | None], type[Node]] = {
    ("conv", None): Conv, ("to_tokens", None): ToTokens, ("add", None): Add,
    ("matmul", "dense"): MatMul, ("matmul", "sparse"): MatMul,
    ("matmul", "lowrank"): LowRankMatMul, ("attention", None): Attention, ("head", None): Head,
}
OPS = ("conv", "to_tokens", "add", "matmul", "attention", "head")


def node_type(data: dict, where: str) -> type[Node]:
    """The class of manifest node object `data` (by its op, and a matmul's format)."""
    op = data.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ArtifactError(f"{where}: unknown op {op!r} (known: {', '.join(OPS)})")
    if op != "matmul":
        return NODE_TYPES[op, None]
    fmt = data.get("format")
    if not isinstance(fmt, str) or (op, fmt) not in NODE_TYPES:
        raise ArtifactError(f"{where}: field 'format' must be one of 'dense', 'sparse', "
                            f"'lowrank', not {fmt!r}")
    return NODE_TYPES[op, fmt]
