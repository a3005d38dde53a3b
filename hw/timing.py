"""The accelerator's timing facts, one definition each, shared by the gateware and the cycle model.

Each constant is a property of one component, stated here in plain Python (no Amaranth) so
that hw/cycles.py can compose them into per-layer cycle counts. Each component refers to its
constants, and its own test measures them on its RTL (tests/hw/components, tests/hw/accelerator),
so that a change of a component's timing fails its test until the number here changes too;
the cycle model built from them is then checked exact against whole-accelerator simulations.
"""

from __future__ import annotations

__all__ = ["NEURON_LATENCY", "ISSUE_FETCH", "ISSUE_LOAD_MASK", "ISSUE_EMPTY_MASK",
           "ISSUE_END", "ENGINE_EXTENT_READ", "ENGINE_DRAIN_START", "REPLAY_START",
           "COLLECTOR_TRACE", "collector_writer_cycles", "head_cycles", "WalkerTiming"]

#: SlifNeuronArray: an update accepted in cycle a leaves in cycle a + NEURON_LATENCY (n
#: updates back to back: n + NEURON_LATENCY cycles, first acceptance through last output)
NEURON_LATENCY = 4

#: IssueFSM: FETCH per tap (a conv tap outside the image costs this alone; a vector's first tap
#: inside the image, after the first vector, is fetched during END and costs nothing), LOAD_MASK
#: per chunk, the cycle a chunk without events costs in EMIT (a chunk's last event moves on as
#: it is taken), and END after a vector's last tap. With prefetch (two lanes and more) the
#: taps after a vector's first cost no FETCH, and its first chunk no LOAD_MASK after an END
ISSUE_FETCH = 1
ISSUE_LOAD_MASK = 1
ISSUE_EMPTY_MASK = 1
ISSUE_END = 1

#: SparseMatmulEngine: an accepted event's column extent is read for a cycle before the walker
#: loads it; a vector's drain starts this many cycles after its end marker is loaded
ENGINE_EXTENT_READ = 1
ENGINE_DRAIN_START = 2

#: ReplayFeeder: cycles from step 0's last accepted result to the first replayed update
REPLAY_START = 2

#: SpikeCollector: the cycles of a vector's TRACE state (with a ready trace port)
COLLECTOR_TRACE = 1


def collector_writer_cycles(pool: bool, last_in_cell: bool) -> int:
    """SpikeCollector: cycles its writer takes for a vector's last chunk: WRITE and TRACE, or for
    a pooled conv READ_OLD, MERGE, WRITE_POOLED and, at a 2x2 cell's last position, TRACE."""
    return (3 + COLLECTOR_TRACE if last_in_cell else 3) if pool else 1 + COLLECTOR_TRACE


def head_cycles(timesteps: int, tokens: int, classes: int, features: int, lanes: int) -> int:
    """Head: cycles after its start through its end with a ready logits port: one SUM per
    (step, token) word, ceil(features / lanes) MACs per class, then the last product's
    multiply, add and compare, and DONE."""
    return timesteps * tokens + classes * -(-features // lanes) + 4


class WalkerTiming:
    """WalkerMatmulEngine's handshakes (hw/components/walkers.py), one max() each: the cycle
    an offered event or end marker is accepted, and the cycle a vector's first result is
    offered. The one definition of the walker engine's timing: the engine's `schedule` and the
    cycle model (hw/cycles.py) both use it, and tests/hw/components/test_walkers.py checks it
    against the RTL.

    The rules, cycle numbers absolute. An item (event or end marker) enters the fetch stage the
    cycle it is accepted and reads its column's extent there; it leaves the next cycle or
    later: an event once a walker is free (it loads the lowest free one, at L), the end marker
    at once. The next item of a vector is accepted when the one before leaves (at L), a
    vector's first item once the end marker before it has left (a_end + 1) and its bank is open
    again (the cycle after that bank's last result transfer, two vectors back). A walker loaded
    at L walks max(n, 1) cycles for a column of n entries and is free again at L + max(n, 1);
    it holds the vector's bank through that cycle. A bank's drain starts (d) once its end
    marker has closed it (a_end + 2), no walker holds it (one cycle after the last walker of
    its events is free) and the drain before has issued its last result (the cycle before that
    result is offered: drains follow each other back to back); it offers the first result at
    d + FIRST_RESULT, or the cycle after the drain before has its last result taken, then one
    per cycle as the results are taken. Call `event` and `end` in order for each vector, then
    `drained` with its last result's offer and transfer."""

    #: a drain's start to its first result offered
    FIRST_RESULT = 2
    #: a vector's end marker accepted to its bank closed (the earliest drain start)
    END_TO_CLOSED = 2

    def __init__(self, walkers: int, banks: int = 2):
        never = -(1 << 60)
        self._free_at = [never] * walkers       # the cycle each walker can load again
        self._bank_open = [never] * banks       # the cycle each bank takes events again
        self._bank = 0                          # the bank of the vector being sent
        self._last_end = never                  # the last end marker's acceptance
        self._drain_free = never                # the last drain's last issue: the next may start
        self._out_free = never                  # the cycle after the last drain's last transfer
        self._held = never                      # the vector's last walker cycle
        self._previous_load = None              # L of the vector's previous event

    def _accept(self, offer: int) -> int:
        if self._previous_load is not None:
            return max(offer, self._previous_load)
        return max(offer, self._last_end + 1, self._bank_open[self._bank])

    def event(self, offer: int, size: int) -> int:
        """An event on a column of `size` entries, offered from cycle `offer`: its acceptance."""
        accepted = self._accept(offer)
        walker = min(range(len(self._free_at)), key=self._free_at.__getitem__)
        load = max(accepted + 1, self._free_at[walker])
        self._free_at[walker] = load + max(size, 1)
        self._held = max(self._held, self._free_at[walker])
        self._previous_load = load
        return accepted

    def end(self, offer: int) -> tuple[int, int]:
        """The vector's end marker, offered from `offer`: (its acceptance, the cycle the
        vector's first result is offered)."""
        accepted = self._accept(offer)
        start = max(accepted + self.END_TO_CLOSED, self._held + 1, self._drain_free)
        self._last_end, self._previous_load = accepted, None
        return accepted, max(start + self.FIRST_RESULT, self._out_free)

    def drained(self, last_transfer: int, last_offer: int) -> None:
        """The vector's last result was offered from `last_offer` (it was issued the cycle
        before: the next drain may start then) and taken in `last_transfer` (its bank and the
        output register are free the cycle after)."""
        self._bank_open[self._bank] = self._out_free = last_transfer + 1
        self._drain_free = last_offer - 1
        self._bank = (self._bank + 1) % len(self._bank_open)
        self._held = -(1 << 60)
