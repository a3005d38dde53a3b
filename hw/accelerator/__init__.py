# amaranth: UnusedElaboratable=no
# (the shared units are built in __init__, for memory_map; elaborated with the accelerator)
"""The whole-network accelerator, generated from an integer artifact (docs/HARDWARE.md).

One stage per artifact node that ends in a neuron, run one after the other by a static sequencer
(the model is known at generation time, so the schedule is unrolled into the top FSM). Since
only one stage runs at a time, everything is shared: one issue FSM (`_Issuer`) serves every
conv and matmul stage, one spike collector (`_collector`) and one cycle counter every stage,
and (`_SharedUnits`) one SparseMatmulEngine holds every conv and CSC matmul side by side and
one SlifNeuronArray every stage's constants and (reused) membranes, so their memories and the
neuron's multiplier exist once, not once per layer. The issue FSM and the collector work
`chunk` (32) channels at a time, not a whole hidden-layer word:

    conv / matmul  issue FSM -> SparseMatmulEngine | RankFactoredEngine -> SlifNeuronArray
                   -> spike collector -> value bank (+ trace)
    attention      Q/K/V row reader -> SpikingAttention -> SlifNeuronArray -> collector
                   (the same neuron array; tokens x channels membranes)
    head           feature sums over steps and tokens -> serial MAC per class -> logits
                   (streamed as computed), argmax

With `loadable` the engine's entry table and the neurons' biases/thresholds are written
through a `load` port before the first image (the iCE40 build keeps them in SPRAM).

Lanes. With `lanes` = P every unit above works on groups of P channels: the engine walks a
column on P lanes (row r on lane r mod P, a column costing its fullest lane), drains, feeds the
neuron array and the collector one group per cycle; attention emits a group of counts per
cycle; the rank-factored A stage and the head have P multipliers. Stage constants start at
group boundaries (padding channels never fire), so a stage of C channels takes ceil(C / P)
transfers per vector. One lane elaborates to exactly the one-lane design.

Values. Every neuron node's output is one word per (time step, token), bit c = channel c, in
one wide value bank shared by all of them (`_ValueStore`: values read together sit side by side
at one base address, so one read serves them all). `add` and `to_tokens` nodes cost nothing: a
value is a multiset of neuron outputs (a residual is read as the sum of its sources' bits at the
same address). Conv outputs are tokens already (position y * W + x, after pooling).

Loop order. conv/matmul stages run tokens outer, time steps inner: a neuron's membrane only
lives across the time steps of its token, so such a stage needs one membrane per channel.
The attention stage runs time steps outer (K^T V sums over all tokens of a step), so it needs
tokens x channels membranes. The first conv of a static image computes each
position's accumulators once and replays them for the later time steps.

Modules:

    top         Accelerator: ports, image memory, the stage sequencer
    stages      the conv/matmul stage (shared issuer, engine, neuron array), attention, head
    issue       IssueFSM: the one issue FSM of every conv and matmul stage
    collector   the one spike collector (gather, write, trace)
    store       ValueStore: the value bank placed by the plan (hw.plan.ValueBank)
    shared      SharedUnits: one engine and one neuron array for all stages
    util        small gateware helpers

Every decision these modules share with the cycle model lives in the plan (hw.plan.Plan).
"""

from hw.accelerator.top import TRACE_CYCLES, TRACE_SPIKES, Accelerator

__all__ = ["Accelerator", "TRACE_SPIKES", "TRACE_CYCLES"]
