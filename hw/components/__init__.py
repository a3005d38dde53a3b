"""Streaming datapath components of the stforge accelerator.

Every component is an Amaranth ``wiring.Component`` whose ports are ``stream.Signature`` streams
(payload/valid/ready) with ``data.StructLayout`` payloads, and whose arrays live in
``amaranth.lib.memory.Memory`` instances so that Yosys can map the larger ones to block RAM.
The integer arithmetic is model/ir/intops.py's, bit for bit.

    SparseMatmulEngine   y = W x, event-driven over the active inputs, W stored as CSC
    WalkerMatmulEngine   the same with P free walkers that take whole columns and run ahead
                         (docs/HARDWARE.md, "Lanes"; not yet used by the accelerator)
    RankFactoredEngine   y = A (B x), B as CSC (event-driven), A dense (one MAC per cycle)
    SpikingAttention     Q_h (K_h^T V_h) per head over binary Q, K, V
    SlifNeuronArray      the integer sLIF update of model.ir.intops.neuron_step, one per cycle

The matmul engines and the attention block emit one accumulator per transfer in row (channel)
order, the order in which SlifNeuronArray consumes them. Every component takes ``lanes`` = P:
then a transfer carries a *group* of P consecutive rows or channels ``{group, acc[P]}`` (a
group's row r belongs to lane r mod P), and each unit does P operations per cycle.

The small parameter checks and helpers below are shared by the components. They are defined
before the component imports at the bottom of this file, which use them.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["SlifNeuronArray", "SparseMatmulEngine", "WalkerMatmulEngine", "RankFactoredEngine",
           "SpikingAttention",
           "tree_sum", "or_all", "lane_of", "lane_shape"]


#: Memories above this many bits must live in block RAM (the generator issue's rule; hw/synth.py
#: checks it after synthesis).
BLOCK_RAM_MIN_BITS = 1024


def block_ram_attrs(shape, depth: int) -> dict:
    """Yosys attributes that keep a memory above `BLOCK_RAM_MIN_BITS` in block RAM: without them
    Yosys may build a small-but-wide ROM (a column or parameter table) from LUTs."""
    from amaranth import Shape
    width = Shape.cast(shape).width
    return {"ram_style": "block"} if width * depth > BLOCK_RAM_MIN_BITS else {}


#: Name prefix of a table written by a loader instead of initialised from the artifact: such
#: memories have no initial contents, so the iCE40 flow can put them in SPRAM (hw/synth.py).
LOADED_PREFIX = "loaded_"


def packed_words(shape, init) -> list[int]:
    """`init` (ints, or dicts of a StructLayout) as the unsigned words a memory of `shape`
    holds: what a loader writes."""
    from amaranth import Const, Shape
    from amaranth.lib import data
    mask = (1 << Shape.cast(shape).width) - 1
    if isinstance(shape, data.Layout):
        return [Const.cast(shape.const(v)).value & mask for v in init]
    return [Const(int(v), shape).value & mask for v in init]


def load_signature(shape, depth: int):
    """The ``load`` stream of a loaded table: ``{addr, data}``, one word per transfer."""
    from amaranth import unsigned
    from amaranth.lib import data, stream
    from amaranth.utils import bits_for
    return stream.Signature(data.StructLayout({"addr": unsigned(bits_for(depth - 1)),
                                               "data": shape}))


def add_table(m, name: str, shape, init, load=None):
    """A read-only table of the artifact's constants; returns its read port's ``(addr, en,
    data)`` (data one cycle after addr, held while ``en`` is low).

    Without `load` it is a ROM initialised with `init`. With `load` (an ``In`` stream of
    :func:`load_signature`) it is the memory ``loaded_<name>``, empty at start-up and written
    through `load` (always ready) before use; reads and writes then share one address and never
    happen in the same cycle (a write wins), so it maps to a single-port RAM: the iCE40 SPRAM.
    """
    from amaranth import Mux, Signal
    from amaranth.lib.memory import Memory
    depth = max(len(init), 1)               # a Memory needs one row even when a table is empty
    addr, en = Signal(range(depth), name=f"{name}_addr"), Signal(name=f"{name}_en")
    if load is None:
        memory = Memory(shape=shape, depth=depth, init=init, attrs=block_ram_attrs(shape, depth))
        m.submodules[name] = memory
        read = memory.read_port()
        m.d.comb += [read.addr.eq(addr), read.en.eq(en)]
        return addr, en, read.data
    memory = Memory(shape=shape, depth=depth, init=[], attrs=block_ram_attrs(shape, depth))
    m.submodules[LOADED_PREFIX + name] = memory
    write, read = memory.write_port(), memory.read_port()
    shared = Signal(range(depth), name=f"{name}_port_addr")
    m.d.comb += [
        load.ready.eq(1),
        shared.eq(Mux(load.valid, load.payload.addr, addr)),
        write.addr.eq(shared), write.data.eq(load.payload.data), write.en.eq(load.valid),
        read.addr.eq(shared), read.en.eq(en & ~load.valid),
    ]
    return addr, en, read.data


def lane_of(value, p: int, lanes: int):
    """Lane p's element of a per-transfer value: the value itself with one lane (a plain
    signal), its element p with P lanes (an ArrayLayout view)."""
    return value if lanes == 1 else value[p]


def lane_shape(shape, lanes: int):
    """The shape of a value carried per lane: `shape` itself with one lane, an ArrayLayout of P
    elements with P lanes."""
    from amaranth.lib import data
    return shape if lanes == 1 else data.ArrayLayout(shape, lanes)


def tree_sum(terms):
    """Balanced adder tree: log2(len(terms)) adders deep instead of a chain."""
    terms = list(terms)
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + terms[len(pairs) * 2:]
    return terms[0]


def or_all(values):
    """OR of a list of values as a balanced tree (0 for an empty list)."""
    from amaranth import Const
    values = list(values)
    if not values:
        return Const(0, 1)
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    """`value` as a Python int, or TypeError/ValueError naming `name` and the value.

    Booleans are refused: ``True`` is an int to Python but never a meaningful size here.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def check_int_array(values, name: str, *, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """`values` (any nested sequence of integers) as an int64 array of the expected shape.

    Raises TypeError when an element is not an integer and ValueError on a shape mismatch.
    """
    array = np.asarray(values)
    if array.dtype == object or array.dtype.kind not in "iu":
        if array.size == 0 and array.dtype.kind == "f":
            array = array.astype(np.int64)      # np.asarray([]) is float64: an empty list is fine
        else:
            raise TypeError(f"{name} must hold integers, not {array.dtype} values "
                            f"({np.asarray(values).ravel()[:4]!r}...)")
    array = array.astype(np.int64)
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, not {tuple(array.shape)}")
    return array


from hw.components.attention import SpikingAttention  # noqa: E402  (uses the checks above)
from hw.components.lowrank import RankFactoredEngine  # noqa: E402
from hw.components.neuron import SlifNeuronArray  # noqa: E402
from hw.components.sparse import SparseMatmulEngine  # noqa: E402
from hw.components.walkers import WalkerMatmulEngine  # noqa: E402
