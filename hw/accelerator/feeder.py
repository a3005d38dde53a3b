"""The static first conv's feeder: step 0 from the engine, steps 1..T-1 replayed (see
`ReplayFeeder`)."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw import timing
from hw.accelerator.util import copy_accs, payload_index
from hw.components import block_ram_attrs, check_int

__all__ = ["ReplayFeeder"]


class ReplayFeeder(wiring.Component):
    """Engine results to neuron updates for a conv whose input is the same image every step.

    A static image gives the same accumulators at every time step, so the issue FSM walks
    each position through the engine once (step 0). The feeder passes those results to the
    neuron array (``first`` set: a new position's membranes start at 0) and keeps them in a
    replay memory, one group of accumulators per address; then it offers the stored groups
    again for steps 1..T-1, while the engine already walks the next position.

    Parameters
    ----------
    groups : int
        Transfers per vector (channels, or groups of lanes).
    timesteps : int
        T.
    result_layout, update_layout : data.StructLayout
        The engine's result (``{row | group, acc}``) and the neuron array's update
        (``{..., channel | group, acc, first}``) layouts; ``acc`` of the same shape.
    lanes : int
        Lanes P of the accumulators (``acc`` an array of P with P > 1).
    replay_shape : shape, optional
        What the replay memory keeps of a group of accumulators: by default ``acc``'s shape;
        narrower when the stage's own accumulators are (the engine and the neuron array are
        shared, as wide as the widest stage: a 16-bit block RAM word then still holds one).

    Members
    -------
    i : In(stream.Signature(result_layout))
        Results of step 0, ``groups`` per position in order.
    o : Out(stream.Signature(update_layout))
        Updates: the position's ``groups`` results of step 0, then the same for every later
        step (``first`` 0).

    Cycles (``o`` always ready): step 0 passes through in the cycle it arrives; the replay's
    first update is offered 2 cycles after step 0's last result was accepted (the replay
    memory's read latency and the FSM's turn), then one per cycle, back to back across steps;
    ``i`` is ready again the cycle after the last replayed update was accepted
    (`REPLAY_START`, hw/cycles.py).
    """

    #: Cycles from step 0's last accepted result to the first replayed update (hw.timing)
    REPLAY_START = timing.REPLAY_START

    def __init__(self, groups, timesteps, result_layout, update_layout, lanes=1,
                 replay_shape=None):
        self._groups = check_int(groups, "groups", minimum=1)
        self._timesteps = check_int(timesteps, "timesteps", minimum=2)
        self._lanes = check_int(lanes, "lanes", minimum=1)
        self._acc_shape = update_layout["acc"].shape if replay_shape is None else replay_shape
        super().__init__({"i": In(stream.Signature(result_layout)),
                          "o": Out(stream.Signature(update_layout))})

    groups = property(lambda self: self._groups)
    timesteps = property(lambda self: self._timesteps)

    def elaborate(self, platform):
        m = Module()
        groups, P = self._groups, self._lanes
        m.submodules.replay = replay = Memory(shape=self._acc_shape, depth=groups, init=[],
                                              attrs=block_ram_attrs(self._acc_shape, groups))
        replay_w, replay_r = replay.write_port(), replay.read_port()
        taken = self.i.valid & self.i.ready
        m.d.comb += [replay_w.addr.eq(payload_index(self.i.payload)),
                     *copy_accs(replay_w.data, self.i.payload.acc, P),
                     replay_w.en.eq(taken)]
        last_of_step0 = taken & (payload_index(self.i.payload) == groups - 1)
        with m.FSM(name="feed"):
            with m.State("ENGINE"):
                self._pass_through(m)
                with m.If(last_of_step0):
                    m.next = "REPLAY"
            with m.State("REPLAY"):
                with m.If(self._replay(m, replay_r)):
                    m.next = "ENGINE"
        return m

    def _pass_through(self, m) -> None:
        """Step 0: the engine's results straight to the neuron array."""
        m.d.comb += [self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready),
                     payload_index(self.o.payload).eq(payload_index(self.i.payload)),
                     *copy_accs(self.o.payload.acc, self.i.payload.acc, self._lanes),
                     self.o.payload.first.eq(1)]

    def _replay(self, m, replay_r):
        """Steps 1..T-1 from the replay memory, one group per cycle; returns the condition that
        ends the replay (the last group of step T-1 is taken)."""
        groups, T = self._groups, self._timesteps
        valid = Signal(name="replay_valid")
        current = Signal(range(groups), name="replay_k")          # the group on data
        following = Signal(range(groups), name="replay_next")
        step = Signal(range(T), init=1, name="replay_step")       # the step on data
        m.d.comb += [self.o.valid.eq(valid), payload_index(self.o.payload).eq(current),
                     *copy_accs(self.o.payload.acc, replay_r.data, self._lanes),
                     self.o.payload.first.eq(0)]
        done = Signal(name="replay_done")
        advance = ~valid | self.o.ready
        with m.If(advance):
            m.d.comb += replay_r.addr.eq(following)
            m.d.sync += [valid.eq(1), current.eq(following),
                         following.eq(Mux(following == groups - 1, 0, following + 1))]
            with m.If(valid & (current == groups - 1)):
                m.d.sync += step.eq(step + 1)
                with m.If(step == T - 1):
                    m.d.sync += [valid.eq(0), step.eq(1), following.eq(0)]
                    m.d.comb += done.eq(1)
        with m.Else():
            m.d.comb += replay_r.addr.eq(current)     # hold the data
        return done
