"""The classifier head: feature sums over steps and tokens, then a serial MAC per class (see
`Head`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw import timing
from hw.components import block_ram_attrs, check_int, check_int_array, lane_of, tree_sum
from model.ir.intops import signed_bits

__all__ = ["Head"]


class Head(wiring.Component):
    """logits = W (sum over time steps and tokens of the input counts) + bias; the class with
    the largest logit (the first on ties).

    SUM reads one (step, token) word per cycle and adds it to the features the cycle after (the
    read latency); MAC walks the classes, ``ceil(in_features / P)`` weight words of P weights
    each (P multipliers), three registered steps per product (multiply, add, compare), and puts
    each class's logit on ``logits`` as soon as it is complete (one register: a class's last
    product waits while the previous logit is still there, which a ready consumer never makes
    happen).

    Parameters
    ----------
    weight : int array (classes, in_features)
    bias : int array (classes,)
    timesteps, tokens : int
        The (step, token) words summed.
    count_bits, feature_bits, logit_bits : int
        Widths of an input count, a feature sum and a logit (the IR's derived widths).
    lanes : int
        P multipliers.

    Members
    -------
    start : In(1)
        Start a new inference's head (a pulse, while idle).
    addr : Out(range(timesteps * tokens))
        The word to read, step * tokens + token; its counts arrive on ``counts`` a cycle later.
    counts : In(ArrayLayout(count_bits, in_features))
    logits : Out(stream.Signature(signed(logit_bits)))
        One logit per class, in class order.
    cls : Out(8)
        The best class, valid from ``done`` on.
    done : Out(1)
        One cycle, once the last logit has been taken. With ``logits`` always ready that is
        `cycles` cycles after ``start`` (the start's own cycle belongs to the stage before,
        as in the cycle model: hw.cycles.head_cycles).
    """

    def __init__(self, weight, bias, timesteps, tokens, count_bits, feature_bits, logit_bits,
                 lanes=1):
        self._weight = check_int_array(weight, "weight")
        if self._weight.ndim != 2:
            raise ValueError(f"weight must be (classes, in_features), not {self._weight.shape}")
        self._classes, self._features = self._weight.shape
        self._bias = check_int_array(bias, "bias", shape=(self._classes,))
        self._T = check_int(timesteps, "timesteps", minimum=1)
        self._N = check_int(tokens, "tokens", minimum=1)
        self._lanes = check_int(lanes, "lanes", minimum=1)
        self._feature_bits = check_int(feature_bits, "feature_bits", minimum=1)
        self._logit_bits = check_int(logit_bits, "logit_bits", minimum=1)
        count_bits = check_int(count_bits, "count_bits", minimum=1)
        super().__init__({
            "start": In(1), "done": Out(1), "cls": Out(8),
            "addr": Out(range(self._T * self._N)),
            "counts": In(data.ArrayLayout(unsigned(count_bits), self._features)),
            "logits": Out(stream.Signature(signed(self._logit_bits))),
        })

    @property
    def words(self) -> int:
        """MAC cycles per class: weight words of P weights."""
        return -(-self._features // self._lanes)

    def cycles(self) -> int:
        """Cycles after ``start`` through ``done`` with ``logits`` always ready:
        T N (SUM) + classes ceil(in_features / P) (MAC) + 4 (the last product's multiply,
        add and compare, and DONE)."""
        return timing.head_cycles(self._T, self._N, self._classes, self._features, self._lanes)

    def elaborate(self, platform):
        m = Module()
        s = self._registers()
        w_r = self._weights(m)
        m.d.comb += [w_r.addr.eq(s.i), self.addr.eq(s.step * self._N + s.token)]
        self._sum(m, s)
        self._mac(m, s, w_r)
        self._fsm(m, s)
        return m

    def _registers(self):
        D, classes = self.words, self._classes
        return SimpleNamespace(
            features=[Signal(signed(self._feature_bits), name=f"feature_{c}")
                      for c in range(self._features)],
            step=Signal(range(self._T), name="step"), token=Signal(range(self._N), name="token"),
            k=Signal(range(classes + 1), name="k"), c=Signal(range(D + 1), name="c"),
            summing=Signal(name="summing"),                 # a read was issued last cycle
            i=Signal(range(classes * D + 1), name="index"),
            mac_valid=Signal(name="mac_valid"),             # the weight read holds W[mac_k, mac_c]
            mac_k=Signal(range(classes), name="mac_k"), mac_c=Signal(range(D), name="mac_c"),
            logit_valid=Signal(name="logit_valid"), best=Signal(signed(self._logit_bits),
                                                                name="best"))

    def _weights(self, m):
        """The weight memory: one word of P weights per (class, group); its read port."""
        P, D, w = self._lanes, self.words, self._weight
        wbits = signed_bits(int(w.min()), int(w.max()))
        if P == 1:
            shape, init = signed(wbits), [int(v) for v in w.reshape(-1)]
        else:
            padded = np.zeros((self._classes, D * P), dtype=np.int64)
            padded[:, :self._features] = w
            shape = data.ArrayLayout(signed(wbits), P)
            init = [[int(v) for v in padded[k, g * P:(g + 1) * P]]
                    for k in range(self._classes) for g in range(D)]
        depth = self._classes * D
        m.submodules.weights = weights = Memory(shape=shape, depth=depth, init=init,
                                                attrs=block_ram_attrs(shape, depth))
        return weights.read_port()

    def _sum(self, m, s):
        """SUM: the word read last cycle is added to the features."""
        with m.If(s.summing):
            m.d.sync += [f.eq(f + self.counts[c]) for c, f in enumerate(s.features)]
        m.d.sync += [s.summing.eq(0), s.mac_valid.eq(0)]

    def _mac(self, m, s, w_r):
        """MAC: lane l multiplies feature mac_c * P + l; products registered, summed with the
        class's bias first, compared with the best as each logit is stored."""
        P, D, lbits = self._lanes, self.words, self._logit_bits
        lane_features = [Signal(signed(self._feature_bits), name="lane_feature" if P == 1 else
                                f"lane_feature{l}") for l in range(P)]
        with m.Switch(s.mac_c):
            for g in range(D):
                with m.Case(g):
                    m.d.comb += [lane_features[l].eq(s.features[g * P + l])
                                 for l in range(P) if g * P + l < self._features]
        products = [Signal(signed(lbits), name="product" if P == 1 else f"product{l}")
                    for l in range(P)]
        m.d.sync += [products[l].eq(lane_of(w_r.data, l, P) * lane_features[l])
                     for l in range(P)]
        p_valid, p_k = Signal(name="p_valid"), Signal(range(self._classes), name="p_k")
        p_c = Signal(range(D), name="p_c")
        m.d.sync += [p_valid.eq(s.mac_valid), p_k.eq(s.mac_k), p_c.eq(s.mac_c)]
        product = products[0] if P == 1 else tree_sum(products)
        bias = Signal(signed(lbits), name="bias_p")
        with m.Switch(p_k):
            for k in range(self._classes):
                with m.Case(k):
                    m.d.comb += bias.eq(int(self._bias[k]))
        acc, total = Signal(signed(lbits), name="acc"), Signal(signed(lbits), name="total")
        m.d.comb += total.eq(Mux(p_c == 0, bias, acc) + product)
        stored, stored_k = Signal(name="stored"), Signal(range(self._classes), name="stored_k")
        m.d.sync += [stored.eq(p_valid & (p_c == D - 1)), stored_k.eq(p_k)]
        m.d.comb += self.logits.valid.eq(s.logit_valid)
        with m.If(self.logits.ready):
            m.d.sync += s.logit_valid.eq(0)
        with m.If(p_valid):
            m.d.sync += acc.eq(total)
            with m.If(p_c == D - 1):
                m.d.sync += [self.logits.payload.eq(total), s.logit_valid.eq(1)]
        with m.If(stored & ((stored_k == 0) | (acc > s.best))):
            m.d.sync += [s.best.eq(acc), self.cls.eq(stored_k)]

    def _fsm(self, m, s):
        """SUM over (step, token), MAC over (class, group), LAST, LAST_ADD, LAST_CMP, DONE."""
        T, N, D = self._T, self._N, self.words
        with m.FSM(name="head"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [s.step.eq(0), s.token.eq(0)] + [f.eq(0) for f in s.features]
                    m.next = "SUM"
            with m.State("SUM"):
                m.d.sync += s.summing.eq(1)
                with m.If(s.token == N - 1):
                    m.d.sync += s.token.eq(0)
                    with m.If(s.step == T - 1):
                        m.d.sync += [s.i.eq(0), s.k.eq(0), s.c.eq(0)]
                        m.next = "MAC"
                    with m.Else():
                        m.d.sync += s.step.eq(s.step + 1)
                with m.Else():
                    m.d.sync += s.token.eq(s.token + 1)
            with m.State("MAC"):
                # the last SUM lands in this state's first cycle; the first product in the next
                with m.If((s.c != D - 1) | ~s.logit_valid | self.logits.ready):
                    m.d.sync += [s.mac_valid.eq(1), s.mac_k.eq(s.k), s.mac_c.eq(s.c),
                                 s.i.eq(s.i + 1)]
                    with m.If(s.c == D - 1):
                        m.d.sync += [s.c.eq(0), s.k.eq(s.k + 1)]
                        with m.If(s.k == self._classes - 1):
                            m.next = "LAST"
                    with m.Else():
                        m.d.sync += s.c.eq(s.c + 1)
            with m.State("LAST"):
                m.next = "LAST_ADD"      # the last product is registered in this cycle
            with m.State("LAST_ADD"):
                m.next = "LAST_CMP"      # ... added and stored as a logit in this one
            with m.State("LAST_CMP"):
                m.next = "DONE"          # ... compared with the best (and on `logits`) here
            with m.State("DONE"):
                with m.If(~s.logit_valid):  # the last logit has been taken
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
