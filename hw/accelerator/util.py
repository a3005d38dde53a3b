"""Small gateware helpers of the accelerator's modules."""

from __future__ import annotations

from amaranth import Const

from hw.components import lane_of

__all__ = ["or_all", "payload_index", "copy_accs", "verilog_name"]


def or_all(values):
    """OR of a list of values as a balanced tree (0 for an empty list)."""
    values = list(values)
    if not values:
        return Const(0, 1)
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def payload_index(payload):
    """A result's row or an update's channel (one lane), or its group (P lanes)."""
    members = payload.shape().members
    return next(getattr(payload, f) for f in ("channel", "row", "group") if f in members)


def copy_accs(dst, src, lanes: int) -> list:
    """dst.eq(src) for accumulators of one lane (signed values) or P lanes (arrays whose
    element widths may differ: copied element by element, each sign-extended)."""
    return [lane_of(dst, p, lanes).eq(lane_of(src, p, lanes)) for p in range(lanes)]


def verilog_name(name: str) -> str:
    return name.replace(".", "_")
