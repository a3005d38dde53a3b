"""The integer semantics of the deployed network: every arithmetic rule, written once.

These functions use only Python operators (``+ - * >> >=``, indexing, ``@``), so they run unchanged
on NumPy int64 arrays (the hardware unit tests, firmware, sim scoreboards) and on PyTorch int64
tensors (the golden model). No torch import: downstream packages use this module directly.
docs/INTEGER.md explains each rule and how the export derives the integers from the float model.

Neuron update, per channel c, in membrane units of 2^-F accumulator LSBs:

    x      = (I << F) + bias_c                 I: the integer accumulator of this time step
    H      = V + ((leak_c * (x - V)) >> K)     arithmetic shift: floor division by 2^K
    S      = H >= threshold_c
    V_next = 0 where S else H                  hard reset
"""

from __future__ import annotations

__all__ = ["neuron_step", "pool2x2_or", "pool3x3s2_or", "pool_or", "shift2d", "conv3x3",
           "attention_counts", "signed_bits",
           "range_of_signed_bits", "head_logits", "acc_range"]


def neuron_step(v, acc, bias, threshold, leak, frac_bits: int, leak_bits: int):
    """One time step of the integer sLIF/LIF neuron.

    `v`, `acc`: integer arrays; `bias`, `threshold`, `leak`: per-channel integers already shaped
    to broadcast against them. Returns (spikes 0/1, V_next, H, x, leak * (x - V)) so callers can
    check every intermediate against its declared width.
    """
    x = acc * (1 << frac_bits) + bias
    product = leak * (x - v)
    h = v + (product >> leak_bits)
    spikes = (h >= threshold) * 1
    return spikes, h - h * spikes, h, x, product


def pool2x2_or(s):
    """2x2 max-pool of 0/1 spikes (an OR), on (..., C, H, W) with even H and W."""
    a = s[..., 0::2, 0::2]
    b = s[..., 0::2, 1::2]
    c = s[..., 1::2, 0::2]
    d = s[..., 1::2, 1::2]
    m1 = a + b - a * b
    m2 = c + d - c * d
    return m1 + m2 - m1 * m2


def _or(a, b):
    return a + b - a * b


def pool3x3s2_or(s):
    """3x3 max-pool, stride 2, padding 1 (PyTorch's MaxPool2d(3, 2, 1), the official SPS's) of
    0/1 spikes: out[i, j] = OR of s[2i-1..2i+1, 2j-1..2j+1], the padding never firing; on
    (..., C, H, W) with even H and W, out (..., C, H/2, W/2)."""
    rows = _or(_or(s[..., 0::2, :], s[..., 1::2, :]), shift2d(s, -1, 0)[..., 0::2, :])
    return _or(_or(rows[..., 0::2], rows[..., 1::2]), shift2d(rows, 0, -1)[..., 0::2])


def pool_or(s, kernel: int):
    """The stem's pooling of 0/1 spikes: `kernel` 2 (`pool2x2_or`) or 3 (`pool3x3s2_or`)."""
    return pool2x2_or(s) if kernel == 2 else pool3x3s2_or(s)


def shift2d(x, dy: int, dx: int):
    """out[..., y, x] = x[..., y + dy, x + dx], zero outside the plane (same-padding taps)."""
    h, w = x.shape[-2], x.shape[-1]
    out = x * 0
    out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        x[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def conv3x3(x, weight):
    """3x3 same-padding convolution (cross-correlation, as PyTorch) of integer planes.

    `x`: (..., Cin, H, W); `weight`: (Cout, Cin, 3, 3). Returns (..., Cout, H, W).
    """
    h, w = x.shape[-2], x.shape[-1]
    acc = None
    for ky in range(3):
        for kx in range(3):
            tap = shift2d(x, ky - 1, kx - 1)
            flat = tap.reshape(*tap.shape[:-2], h * w)
            part = weight[:, :, ky, kx] @ flat
            acc = part if acc is None else acc + part
    return acc.reshape(*acc.shape[:-1], h, w)


def attention_counts(q, k, v, heads: int):
    """Spiking self-attention counts Q_h (K_h^T V_h) per head, concatenated over heads.

    `q`, `k`, `v`: (..., N, D) 0/1 integers. Returns (..., N, D) non-negative integers; equal to
    (Q_h K_h^T) V_h, since integer arithmetic is exact in either order.
    """
    dim = q.shape[-1]
    d = dim // heads
    out = q * 0
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        kv = k[..., sl].mT @ v[..., sl]             # (d, d) co-activation counts
        out[..., sl] = q[..., sl] @ kv
    return out


def head_logits(feature_sum, weight, bias):
    """Integer logits: W · (sum over time steps and tokens of the final spike counts) + bias."""
    return feature_sum @ weight.T + bias


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi]."""
    lo, hi = int(min(lo, 0)), int(max(hi, 0))
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def range_of_signed_bits(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def acc_range(matrix, in_max: int) -> tuple[int, int]:
    """Range of every row of ``matrix @ x`` and of each of its partial sums, 0 <= x <= in_max.

    The negative entries bound the sums from below and the positive ones from above, whatever
    subset of a row has been added so far: an accumulator this wide never overflows. Both the
    artifact's declared widths and the engines' constructor checks use this one rule.
    """
    import numpy as np
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.size == 0:
        return 0, 0
    low = np.clip(matrix, None, 0).sum(axis=1) * in_max
    high = np.clip(matrix, 0, None).sum(axis=1) * in_max
    return int(min(low.min(), 0)), int(max(high.max(), 0))
