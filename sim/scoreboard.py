"""Scoreboard: the accelerator's trace, logits and class against the golden model, bit for bit.

Golden data arrives as an .npz written by `stforge golden-data` (model.ir.golden's
`write_golden_data`, read by its `GoldenData`) with NumPy only, so the simulator process never
imports torch. For every image the scoreboard expects, per traced node, one spike vector per (time step,
token) and the integer logits; it compares each value exactly and remembers the first mismatch
with its full location (image, node, time step, token, channel, expected, actual).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.plan import TRACE_KINDS
from model.ir.golden import GoldenData

__all__ = ["GoldenData", "Mismatch", "Scoreboard"]


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
    compared: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    layer_cycles: dict[str, int] = field(default_factory=dict)
    cycles: int | None = None
    predicted: int | None = None

    @property
    def bitexact(self) -> bool:
        return not self.mismatches


class Scoreboard:
    """In-order checker for one image at a time: feed records, then `finish_image`."""

    def __init__(self, golden: GoldenData, trace_kinds: dict | None = None):
        """`trace_kinds`: {"spikes": k, "cycles": k} of the design (its design.json's; by
        default hw.plan.TRACE_KINDS, the one definition)."""
        self.golden = golden
        self.cycles_kind = (trace_kinds or TRACE_KINDS)["cycles"]
        self.results: list[ImageResult] = []
        self._current: ImageResult | None = None
        self._seen: set = set()

    def start_image(self, image: int) -> None:
        self._current = ImageResult(image)
        self._seen = set()

    def _fail(self, **kw) -> None:
        self._current.mismatches.append(Mismatch(self._current.image, **kw))

    def trace(self, kind: int, node: int, step: int, token: int, data: int) -> None:
        """One trace record from the DUT (docs/HARDWARE.md)."""
        r = self._current
        if node not in self.golden.traced_index:
            self._fail(what="extra", node=f"#{node}", step=step, token=token)
            return
        name = self.golden.node_name(node)
        if kind == self.cycles_kind:
            r.layer_cycles[name] = data
            return
        expected = self.golden.spikes[name][:, r.image]          # (T, tokens, C)
        if not (0 <= step < expected.shape[0] and 0 <= token < expected.shape[1]):
            self._fail(what="extra", node=name, step=step, token=token)
            return
        self._seen.add((name, step, token))
        want = expected[step, token]
        got = np.array([(data >> c) & 1 for c in range(len(want))], dtype=want.dtype)
        r.compared += len(want)
        if data >> len(want):
            self._fail(what="spikes", node=name, step=step, token=token, channel=len(want),
                       expected=0, actual=data >> len(want))
        for c in np.flatnonzero(got != want):
            self._fail(what="spikes", node=name, step=step, token=token, channel=int(c),
                       expected=int(want[c]), actual=int(got[c]))

    def finish_image(self, logits: list[int], predicted: int, cycles: int) -> ImageResult:
        r = self._current
        g = self.golden
        for name in g.traced_names:                      # every (node, step, token) must come
            steps, tokens = g.spikes[name].shape[0], g.spikes[name].shape[2]
            for t in range(steps):
                for n in range(tokens):
                    if (name, t, n) not in self._seen:
                        self._fail(what="missing", node=name, step=t, token=n)
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
