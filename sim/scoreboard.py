"""Scoreboard: the accelerator's trace, logits and class against the golden model, bit for bit.

Golden data arrives as an .npz written by `stforge golden-data` (model.ir.golden's
`write_golden_data`, read by its `GoldenData`) with NumPy only, so the simulator process never
imports torch. For every image the scoreboard expects, per traced node, one spike vector per
(time step, token) and the integer logits; it compares each value exactly and remembers the
first mismatch with its full location (image, node, time step, token, channel, expected,
actual).

Each record is checked as it arrives (`trace`), missing ones when the image ends
(`finish_image`): a spike vector is compared as one packed integer against the golden vector
packed the same way (bit c = channel c, the trace record's layout), and only a vector that
differs is taken apart channel by channel. A design without the trace port is checked on
its logits and class alone (``traced=False``); the result says what was compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.plan import TRACE_KINDS
from model.ir.golden import GoldenData

__all__ = ["GoldenData", "Mismatch", "ImageResult", "Scoreboard", "pack_vectors"]


@dataclass
class Mismatch:
    image: int
    what: str                       # "spikes", "logit", "class", "missing", "extra"
    node: str | None = None
    step: int | None = None
    token: int | None = None
    channel: int | None = None
    expected: int | None = None
    actual: int | None = None

    def __str__(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in (("node", self.node), ("time step", self.step),
                                                     ("token", self.token),
                                                     ("channel", self.channel)) if v is not None)
        return (f"image {self.image}: {self.what} mismatch at {where or 'output'}: expected "
                f"{self.expected}, got {self.actual}")


@dataclass
class ImageResult:
    image: int
    compared: int = 0               # values compared: spikes, logits and the class
    mismatches: list[Mismatch] = field(default_factory=list)
    layer_cycles: dict[str, int] = field(default_factory=dict)
    cycles: int | None = None
    predicted: int | None = None

    @property
    def bitexact(self) -> bool:
        return not self.mismatches


def pack_vectors(bits: np.ndarray) -> list[int]:
    """0/1 vectors (..., C) as Python ints, bit c = channel c (the trace record's ``data``),
    flattened in C order of the leading axes."""
    bits = np.asarray(bits, dtype=np.uint8).reshape(-1, np.shape(bits)[-1])
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


class Scoreboard:
    """In-order checker for one image at a time: `start_image`, `trace` each record, then
    `finish_image`."""

    def __init__(self, golden: GoldenData, trace_kinds: dict | None = None,
                 traced: bool = True):
        """`trace_kinds`: {"spikes": k, "cycles": k} of the design (its design.json's; by
        default hw.plan.TRACE_KINDS, the one definition). `traced`: the design has the trace
        port (without it only the logits and the class are compared)."""
        self.golden = golden
        self.cycles_kind = (trace_kinds or TRACE_KINDS)["cycles"]
        self.traced = traced
        self.results: list[ImageResult] = []
        self._current: ImageResult | None = None
        self._expected: dict[str, list[int]] = {}
        self._seen: set = set()

    @property
    def compares(self) -> str:
        """What each image is checked on, for reports."""
        return ("every spike vector of every traced layer, the logits and the class"
                if self.traced else "the logits and the class (the design has no trace port)")

    def start_image(self, image: int) -> None:
        self._current = ImageResult(image)
        self._expected, self._seen = {}, set()

    def _fail(self, **kw) -> None:
        self._current.mismatches.append(Mismatch(self._current.image, **kw))

    def trace(self, kind: int, node: int, step: int, token: int, data: int) -> None:
        """One trace record from the DUT (docs/HARDWARE.md), checked as it arrives."""
        r, g = self._current, self.golden
        if node not in g.traced_index:
            self._fail(what="extra", node=f"#{node}", step=step, token=token)
            return
        name = g.node_name(node)
        if kind == self.cycles_kind:
            r.layer_cycles[name] = data
            return
        steps, _, tokens, channels = g.spikes[name].shape
        if not (0 <= step < steps and 0 <= token < tokens) or (name, step, token) in self._seen:
            self._fail(what="extra", node=name, step=step, token=token)
            return
        self._seen.add((name, step, token))
        if name not in self._expected:          # this image's vectors of the node, packed
            self._expected[name] = pack_vectors(g.spikes[name][:, r.image])
        r.compared += channels
        want = self._expected[name][step * tokens + token]
        diff = want ^ data
        while diff:                             # only a differing vector is taken apart
            c = (diff & -diff).bit_length() - 1
            self._fail(what="spikes", node=name, step=step, token=token, channel=c,
                       expected=(want >> c) & 1, actual=(data >> c) & 1)
            diff &= diff - 1

    def _check_missing(self) -> None:
        g = self.golden
        for name in g.traced_names:                      # every (node, step, token) must come
            steps, tokens = g.spikes[name].shape[0], g.spikes[name].shape[2]
            for t in range(steps):
                for n in range(tokens):
                    if (name, t, n) not in self._seen:
                        self._fail(what="missing", node=name, step=t, token=n)

    def finish_image(self, logits: list[int], predicted: int, cycles: int) -> ImageResult:
        r = self._current
        g = self.golden
        if self.traced:
            self._check_missing()
        want = [int(v) for v in g.logits[r.image]]
        r.compared += len(want) + 1
        if len(logits) != len(want):
            self._fail(what="logit", expected=len(want), actual=len(logits))
        for c, (w, a) in enumerate(zip(want, logits)):
            if w != a:
                self._fail(what="logit", channel=c, expected=w, actual=a)
        if predicted != int(g.prediction[r.image]):
            self._fail(what="class", expected=int(g.prediction[r.image]), actual=predicted)
        r.cycles, r.predicted = cycles, predicted
        self.results.append(r)
        self._current = None
        return r

    @property
    def first_mismatch(self) -> Mismatch | None:
        for r in self.results:
            if r.mismatches:
                return r.mismatches[0]
        return None
