"""Streaming datapath components of the stforge accelerator.

Every component is an Amaranth ``wiring.Component`` whose ports are ``stream.Signature`` streams
(payload/valid/ready) with ``data.StructLayout`` payloads, and whose arrays live in
``amaranth.lib.memory.Memory`` instances so that Yosys can map the larger ones to block RAM.
The integer arithmetic is model/intops.py's, bit for bit.

    SparseMatmulEngine   y = W x, event-driven over the active inputs, W stored as CSC
    RankFactoredEngine   y = A (B x), B as CSC (event-driven), A dense (one MAC per cycle)
    SpikingAttention     Q_h (K_h^T V_h) per head over binary Q, K, V
    SlifNeuronArray      the integer sLIF update of model.intops.neuron_step, one per cycle

The matmul engines and the attention block emit one accumulator per transfer in row (channel)
order, the order in which SlifNeuronArray consumes them.

The small parameter checks below are shared by the component constructors. They are defined
before the component imports at the bottom of this file, which use them.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["SlifNeuronArray", "SparseMatmulEngine", "RankFactoredEngine", "SpikingAttention"]


#: Memories above this many bits must live in block RAM (the generator issue's rule; hw/synth.py
#: checks it after synthesis).
BLOCK_RAM_MIN_BITS = 1024


def block_ram_attrs(shape, depth: int) -> dict:
    """Yosys attributes that keep a memory above `BLOCK_RAM_MIN_BITS` in block RAM: without them
    Yosys may build a small-but-wide ROM (a column or parameter table) from LUTs."""
    from amaranth import Shape
    width = Shape.cast(shape).width
    return {"ram_style": "block"} if width * depth > BLOCK_RAM_MIN_BITS else {}


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
