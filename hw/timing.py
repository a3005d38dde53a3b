"""The accelerator's timing facts, one definition each, shared by the gateware and the cycle model.

Each constant is a property of one component, stated here in plain Python (no Amaranth) so
that hw/cycles.py can compose them into per-layer cycle counts. Each component refers to its
constants, and its own test measures them on its RTL (tests/hw/components, tests/hw/accelerator),
so that a change of a component's timing fails its test until the number here changes too;
the cycle model built from them is then checked exact against whole-accelerator simulations.
"""

from __future__ import annotations

__all__ = ["NEURON_LATENCY", "ISSUE_FETCH", "ISSUE_LOAD_MASK", "ISSUE_EMPTY_MASK",
           "ISSUE_END_NEXT", "ENGINE_EXTENT_READ", "ENGINE_DRAIN_START", "REPLAY_START",
           "COLLECTOR_TRACE", "collector_writer_cycles", "head_cycles"]

#: SlifNeuronArray: an update accepted in cycle a leaves in cycle a + NEURON_LATENCY (n
#: updates back to back: n + NEURON_LATENCY cycles, first acceptance through last output)
NEURON_LATENCY = 4

#: IssueFSM: FETCH per tap (a conv tap outside the image costs this alone), LOAD_MASK per chunk,
#: the cycle an empty mask costs in EMIT, and END + NEXT after a vector's last tap
ISSUE_FETCH = 1
ISSUE_LOAD_MASK = 1
ISSUE_EMPTY_MASK = 1
ISSUE_END_NEXT = 2

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
