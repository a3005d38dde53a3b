"""Small gateware helpers of the accelerator's modules."""

from __future__ import annotations

from hw.components import lane_of, or_all

__all__ = ["or_all", "payload_index", "copy_accs", "verilog_name"]


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
