# amaranth: UnusedElaboratable=no
# (built in __init__, elaborated with the accelerator)
"""The units all stages share: one engine, one neuron array (see `SharedUnits`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from amaranth import Module, Signal
from amaranth.lib import stream

from hw.accelerator.util import payload_index, verilog_name
from hw.components import SlifNeuronArray, SparseMatmulEngine, WalkerMatmulEngine

if TYPE_CHECKING:
    from hw.accelerator.top import Accelerator

__all__ = ["SharedUnits"]


class SharedUnits:
    """One event-driven engine for every conv and CSC matmul (SparseMatmulEngine, or
    WalkerMatmulEngine as the plan's ``engine`` says), one SlifNeuronArray for every stage
    (attention too): the stages run one after the other, so they take turns on them.

    The engine holds all those matrices side by side (stage s's column j is column
    ``col_base[s] + j``; each stage drains its own ``rows``); the neuron array holds every
    stage's per-channel constants one after the other (stage s's channel c is ``base[s] + c``)
    and one membrane per global channel (a stage's membranes live only across the time steps of
    one token, so reuse needs no clearing: ``first`` takes the membrane as 0). Each stage talks to
    its own proxy streams in its local numbering; `connect` joins the active stage's proxies to
    the shared units. Timing is the unshared design's, cycle for cycle (hw/cycles.py).
    """

    def __init__(self, acc: "Accelerator", loadable: bool = False):
        a, P, layout = acc.artifact, acc.lanes, acc.plan.shared
        self.lanes = P
        self.col_base, self.rows = layout.col_base, layout.rows
        self.channel_base = layout.channel_base
        self.engine = None
        if layout.col_ptr is not None:
            matrix = (len(layout.col_ptr) - 1, max(layout.rows.values()), layout.col_ptr,
                      layout.row_idx, layout.values, layout.engine_in_max, layout.acc_width)
            if acc.plan.engine == "walkers":
                self.engine = WalkerMatmulEngine(*matrix, walkers=P, variable_rows=True,
                                                 banks=acc.plan.engine_banks)
            else:
                self.engine = SparseMatmulEngine(*matrix, variable_rows=True, overlap=True,
                                                 loadable=loadable, lanes=P)
        # Membranes are reused from stage to stage (a stage's membranes live only while it
        # runs; `first` takes them as 0): neuron (token, local channel c) of a stage sits at
        # token * stride + c, conv/matmul stages at token 0, attention stages at every token
        # with stride = all attention channels. Their constants stay at base + c.
        per_token = layout.per_token
        self.neurons = SlifNeuronArray(layout.channels, acc.N if per_token else 1, layout.bias,
                                       layout.threshold, layout.leak, a.fixed.frac_bits,
                                       a.fixed.leak_bits, layout.acc_width,
                                       layout.membrane_width, layout.product_width,
                                       token_stride=per_token or None,
                                       membranes=max(acc.N * per_token, layout.widest) // P,
                                       loadable=loadable, hazard_check=False, lanes=P)
        self._engine_users, self._neuron_users = {}, {}

    def engine_user(self, sid: int, name: str) -> SimpleNamespace:
        """Proxy streams ``i`` (events, local column index) and ``o`` (results) for stage `sid`."""
        ident = verilog_name(name)
        user = SimpleNamespace(
            i=stream.Signature(self.engine.event_layout).create(path=(f"{ident}_events",)),
            o=stream.Signature(self.engine.result_layout).create(path=(f"{ident}_results",)))
        self._engine_users[sid] = (name, user)
        return user

    def neuron_user(self, sid: int, name: str) -> SimpleNamespace:
        """Proxy streams ``i`` (updates) and ``o`` (spikes), channels local to stage `sid`."""
        ident = verilog_name(name)
        n = self.neurons
        user = SimpleNamespace(
            i=stream.Signature(n.update_layout).create(path=(f"{ident}_updates",)),
            o=stream.Signature(n.spike_layout).create(path=(f"{ident}_spikes",)))
        self._neuron_users[sid] = (name, user)
        return user

    def connect(self, m: Module, active: Signal) -> None:
        """Join the active stage's proxies to the shared units (idle otherwise)."""
        e, n = self.engine, self.neurons
        with m.Switch(active):
            for sid in sorted(set(self._engine_users) | set(self._neuron_users)):
                with m.Case(sid):
                    if sid in self._engine_users:
                        name, u = self._engine_users[sid]
                        m.d.comb += [
                            e.i.valid.eq(u.i.valid), u.i.ready.eq(e.i.ready),
                            e.i.payload.eq(u.i.payload),
                            e.i.payload.index.eq(u.i.payload.index),    # the issuer's base
                            e.rows.eq(self.rows[name]),
                            u.o.valid.eq(e.o.valid), e.o.ready.eq(u.o.ready),
                            u.o.payload.eq(e.o.payload),
                        ]
                    name, u = self._neuron_users[sid]
                    base = self.channel_base[name] // self.lanes     # in groups
                    m.d.comb += [
                        n.i.valid.eq(u.i.valid), u.i.ready.eq(n.i.ready),
                        n.i.payload.eq(u.i.payload),
                        payload_index(n.i.payload).eq(payload_index(u.i.payload) + base),
                        n.i.payload.slot.eq(payload_index(u.i.payload)),
                        u.o.valid.eq(n.o.valid), n.o.ready.eq(u.o.ready),
                        u.o.payload.eq(n.o.payload),
                        payload_index(u.o.payload).eq(payload_index(n.o.payload) - base),
                    ]
