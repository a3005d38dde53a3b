"""Cycle model of the generated accelerator (hw/accelerator.py): expected and ideal cycles.

NumPy only (no torch, no amaranth): the inputs are the golden model's spikes of one image,
``node_spikes = {node name: (T, tokens, C) 0/1 array}`` (the ``spikes/<node>`` arrays of the
golden .npz, one image's slice; see `image_spikes`) and that image's pixels ((C, H, W), or
(T, C, H, W) for event data).

Expected cycles
===============

`expected_cycles` reproduces the stage FSMs of hw/accelerator.py transfer by transfer. It is a
timing model over events, not a simulation of the RTL: every handshake is one max() of an offer
time and a ready time. Cycle numbers are relative to the stage's start cycle s (the cycle the
top sequencer raises ``start``); a stage's ``TRACE_CYCLES`` value is the cycle of its CYCLES
state minus s, so consecutive stages chain (the next stage starts in that cycle).

Engine stage (conv, matmul). Vectors run token (conv: position y*W+x, full resolution) outer,
time step inner. The issue FSM, for each vector, per conv tap (a matmul has one "tap"):

    FETCH (1) -> per chunk of `chunk` input channels: LOAD_MASK (1) -> EMIT: one event
    per active input channel of the chunk, lowest first, each held until the engine accepts
    it; the last one's acceptance moves on (a chunk without events costs one EMIT cycle) ->
    next chunk, or next tap (a tap of one chunk without events costs exactly 3 cycles; a conv
    tap outside the image only its FETCH, 1 cycle) ... -> END (end marker, held until
    accepted; it steps the read address on, so the next vector's FETCH overlaps it: its
    acceptance goes to the next vector's LOAD_MASK, or to its FETCH where a conv's first tap
    lies outside the image)

From two lanes on the issue FSM prefetches (`Plan.issue_prefetch`, IssueFSM ``prefetch``): the
address moves on at a word's last LOAD_MASK, so a conv's next tap inside the image is loaded the
cycle after the last event (no FETCH; taps outside the image cost nothing), and the next
vector's first chunk as the END is taken (no LOAD_MASK; where a conv's tap 0 lies outside the
image, one FETCH cycle jumps to its first tap inside and another fetches it).

The engine (hw/components/sparse.py) accepts event e at a_e = max(offer_e, L_{e-1}); its
column-extent ROM read takes a cycle; the walker loads it at L_e = max(a_e + 1, last cycle of
the previous column) and walks max(nnz(column), 1) cycles. The end marker is accepted at
a_end = max(offer, L_last) and loaded into the walker at L_end; it takes its turn at L_end + 1,
the drain starts the next cycle d0 = L_end + 2 and offers row r from d0 + 1 on, one per cycle.
Conv and CSC matmul stages share one two-bank engine (one lane, or P row lanes): L_end = max(a_end + 1, last column cycle,
X_prev + 1), the end marker waiting for the previous vector's drain (last result transfer
X_prev), and the next vector's first event is accepted from L_end + 2 on, so its walk overlaps
this drain. A rank-factored engine (one bank, its own per stage) drains z = B x (rank rows) the
same way into its z RAM, ending at x1 = d0 + rank, then offers row i of A z at
x1 + 3 + rank (i + 1): rank MACs per row, and accepts the next vector's first event only after
its last result transfer X (a_first = max(offer, X + 1)). The issue FSM's FETCH/LOAD_MASK cycles
and empty taps overlap the engine's walk and drain.

Static first conv (pixels, not event data; T > 1): the issue FSM sends step 0 of each position
only. A feeder passes the engine's results to the neuron (and into a replay RAM), and after
step 0's last result X0 replays the stored accumulators for steps 1..T-1, one per cycle from
X0 + 2 on, back to back across steps; it takes engine results again the cycle after the last
replayed one (so the next position's drain waits for it, while its walk does not).

Neuron + collector. The sLIF array (hw/components/neuron.py) accepts one update per cycle and
outputs it 4 cycles later. The collector's gather side takes every output; after a vector's
last one (cycle L) its writer stores and traces it while the next vector is gathered: WRITE,
TRACE (2 cycles; a pooled conv: READ_OLD, MERGE, WRITE_POOLED and, for the last position of a
2x2 cell, TRACE: 3 or 4), so it is free again at L + writer + 1; after the last vector its
CYCLES state, at that cycle, ends the stage. A vector's last output that arrives while the
writer is still busy waits: the whole neuron pipeline (and through back-pressure the engine
drain, the replay or the attention block) freezes until the writer is free; updates already
inside come out that much later, updates offered meanwhile are accepted at the end
(`_Collector`). (Neuron hazards, same channel within two updates, and overlapping freezes need
c_out <= 3: not modelled, and `expected_cycles` refuses such a node.)

Attention stage. Time steps outer. Issue: FETCH, SEND per token, so token n + 1 is accepted
max(popcount(V_n), 2) cycles after token n (phase 1 walks one active V bit per cycle); the
first token of a step waits for the previous step's last count transfer Y (a = Y + 1). Phase 2
starts max(popcount(V_last), 1) cycles after the last token's acceptance (cycle c) and offers
counts from c + 3 on, one per cycle, back to back across tokens.

Head (not traced): SUM reads one (step, token) word per cycle (added the cycle after), MAC one
weight per cycle over all classes (then a registered multiply, add and best-class compare),
LAST, LAST_ADD, LAST_CMP, DONE; each logit leaves on the `logits` stream as it is computed:
    head = T N + classes in_features + 4.
Whole inference, first pixel accepted through the head's end (the ``result.cycles`` value):
    total = pixels + sum(layer cycles) + head,   pixels = C H W (x T for event data).

The model is exact for streams that are always ready (trace, logits); back-pressure on them
adds cycles that it cannot know about.

Lanes (``lanes`` = P, `Accelerator(lanes=P)`). Everything above counts transfers, and with P
lanes a transfer is a group of P channels: a vector of C outputs is ceil(C / P) drain, replay,
neuron and collector transfers (attention dim / P per token), a rank-factored z drain
ceil(rank / P1) with P1 = min(P, rank) stage-1 lanes, the head ceil(in_features / P) MACs per
class. The shared engine on row lanes (plan ``engine`` "rows"): a column costs the most
entries any lane holds (rows r = p mod P, `_column_sizes`), the rest as above. On free walkers
("walkers", the default from two lanes on; hw/components/walkers.py) its handshakes are
`hw.timing.WalkerTiming`: an event is accepted when the one before has left for a walker (the
first free one; a column of n entries keeps it max(n, 1) cycles), a vector's first once the end
marker before it has left and its bank (two vectors back) has drained, and a vector's drain
starts once its end marker has closed its bank, no walker holds it and the drain before has
issued its last result (drains follow each other back to back), offering its first result two
cycles later. A rank-factored engine walks on row lanes.
The issue FSM is the same.

Ideal cycles (docs/REPORTS.md)
=========================

Work that no design can skip, divided by the units this design has for it (P lanes each, the
``lanes`` argument; the terms below are operations, the ideal divides them by P):

* spike-fed matmul / conv: one operation per (active input, i.e. count > 0) x (stored weight of
  that input's column): sum over steps, tokens (conv: positions and taps, inside the image) of
  the active inputs' column sizes. The dense format stores every weight, so a dense matrix
  counts every weight of an active column; so does a dense conv, and a sparse (pruned) conv its
  non-zeros (`model.ir.Conv.columns`).
* pixel-fed first conv: one MAC per (non-zero pixel x weight); for a static image counted ONCE
  (the accumulators of step 0 serve every step), for event data per step.
* rank-factored matmul: the B ops as above (z = B x is spike-fed) plus rank x out MACs per
  vector (the multi-bit stage), on the engine's one walker and one multiplier.
* attention: per step, the active V bits (phase 1: one row update of d counters each) plus
  tokens x dim counts (phase 2: one per cycle); no design can skip either.
* neurons: one update per neuron per time step: T x positions (conv: before pooling) x channels.
* head: classes x in_features MACs (one multiplier).

The engine (or attention block) and the neuron array run concurrently, so a layer's ideal is
max(engine work, neuron updates) / P: a lower bound on any schedule of these units. Pixel loading,
FSM control, memory latency, pipeline fill and drain are overhead. `ideal_breakdown` returns
every term separately.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHUNK", "default_chunk", "lane_column_sizes", "value_counts", "expected_cycles", "ideal_cycles",
           "ideal_breakdown",
           "head_cycles", "load_cycles", "inference_cycles", "image_spikes", "summarize"]

from hw.plan import CHUNK, Plan, StagePlan, default_chunk, lane_column_sizes
from hw.timing import (ENGINE_DRAIN_START, ENGINE_EXTENT_READ, ISSUE_EMPTY_MASK, ISSUE_END,
                       ISSUE_FETCH, ISSUE_LOAD_MASK, NEURON_LATENCY, REPLAY_START,
                       WalkerTiming, collector_writer_cycles,
                       head_cycles as timing_head_cycles)
from model.ir import Conv, Graph, LowRankMatMul, NeuronNode
_NEVER = -(1 << 60)


# ---- inputs -----------------------------------------------------------------------------------

def image_spikes(golden, index: int) -> tuple[dict, np.ndarray]:
    """(node_spikes, image) of image `index` of a sim.scoreboard.GoldenData (or any object with
    ``spikes`` {name: (T, B, tokens, C)} and ``images``)."""
    return ({name: np.asarray(s[:, index]) for name, s in golden.spikes.items()},
            np.asarray(golden.images[index]))


def value_counts(graph: Graph, node_spikes: dict, image=None) -> dict[str, np.ndarray]:
    """Every value as integer counts (T, tokens, C): "input" (pixels; positions y*W+x) and each
    neuron, add and to_tokens node (`Graph.value_counts`)."""
    return graph.value_counts(node_spikes, image)


# ---- neuron array + collector -----------------------------------------------------------------

class _Collector:
    """The sLIF array's output side: the collector's gather and writer (hw/accelerator.py).

    The gather side takes every output, except a vector's last one while the writer still
    works on the previous vector: that output then waits at the neuron's output register and
    freezes the pipeline (frozen cycles [valid, transfer)). Updates already inside come out that
    much later; updates offered meanwhile are accepted when it ends. With more than 3 updates
    per vector a freeze only touches the next vector's first updates, as modelled here."""

    def __init__(self):
        self.freeze = (_NEVER, _NEVER)   # frozen cycles of the last freeze: [from, to)
        self.writer_free = _NEVER        # first cycle the writer can take another vector
        self.last_offer = _NEVER         # the cycle the last vector's last update was offered

    def feed(self, first_offer: int, gap: int, count: int, writer_cycles: int) -> tuple[int, int]:
        """One vector of `count` updates: update 0 offered at `first_offer`, update u + 1 `gap`
        cycles after update u's acceptance (engine drain and replay 1, rank-factored projection
        rank). The writer then needs `writer_cycles` cycles for it. Returns (acceptance of the
        last update, cycle the writer is done: the next vector's writer start, or CYCLES)."""
        f_from, f_to = self.freeze
        stall = f_to - f_from
        a = first_offer
        for u in range(count):
            if u:
                a += gap
            self.last_offer = a             # the vector's last update: offered from here
            if f_from <= a < f_to:
                a = f_to
            valid = a + NEURON_LATENCY + (stall if a < f_from else 0)
        transfer = max(valid, self.writer_free)
        self.freeze = (valid, transfer)
        self.writer_free = transfer + writer_cycles + 1
        return a, self.writer_free


# ---- stages -----------------------------------------------------------------------------------

def _column_sizes(node: NeuronNode, lanes: int = 1) -> np.ndarray:
    """Stored entries per engine column; with `lanes` P, the walker's cycles per column: the
    most entries any lane holds (`lane_column_sizes`; a rank-factored B has min(P, rank)
    lanes)."""
    ptr, idx, _ = node.columns()
    if isinstance(node, LowRankMatMul):
        lanes = min(lanes, node.rank)
    return lane_column_sizes(ptr, idx, lanes).max(axis=0)


def _tap_masks(node: NeuronNode, counts: np.ndarray, t: int, pos: int):
    """Active input channels (ascending) per tap of vector (t, pos): conv 9 taps, matmul 1;
    None for a conv tap outside the image."""
    if not isinstance(node, Conv):
        return [np.flatnonzero(counts[t, pos])]
    h, w = node.height, node.width
    y, x = divmod(pos, w)
    taps = []
    for k in range(9):
        ny, nx = y + k // 3 - 1, x + k % 3 - 1
        if 0 <= ny < h and 0 <= nx < w:
            taps.append(np.flatnonzero(counts[t, ny * w + nx]))
        else:
            taps.append(None)
    return taps


class _SingleWalkerEngine:
    """An engine with one walker (SparseMatmulEngine, any lanes): event e is accepted at
    a_e = max(offer, L_{e-1}) (a vector's first at max(offer, `ready`)), its extent read for a
    cycle, and loaded at L_e = max(a_e + 1, the previous column's last walker cycle)."""

    def __init__(self, sizes: np.ndarray):
        self.sizes = sizes
        self.ready = _NEVER                 # a vector's first item, at the earliest
        self._new_vector()

    def _new_vector(self):
        self.previous_load, self.column_end = None, _NEVER

    def _accept(self, offer: int) -> int:
        return max(offer, self.ready if self.previous_load is None else self.previous_load)

    def event(self, offer: int, column: int) -> int:
        a = self._accept(offer)
        load = max(a + ENGINE_EXTENT_READ, self.column_end)
        self.column_end = load + max(int(self.sizes[column]), 1)
        self.previous_load = load
        return a


class _SharedRowEngine(_SingleWalkerEngine):
    """The shared two-bank engine organised as row lanes: the end marker waits for the previous
    drain; the next vector's first event is accepted from L_end + 2 on."""
    gap = 1                                 # cycles between results offered

    def __init__(self, sizes):
        super().__init__(sizes)
        self.drain_free = _NEVER

    def end(self, offer: int) -> tuple[int, int]:
        """(the end marker's acceptance, the cycle the first result is offered)."""
        a = self._accept(offer)
        self.load_end = max(a + 1, self.column_end, self.drain_free)
        return a, self.load_end + ENGINE_DRAIN_START + 1

    def drained(self, last: int, last_offer: int) -> None:
        self.ready, self.drain_free = self.load_end + ENGINE_DRAIN_START, last + 1
        self._new_vector()


class _RankFactoredEngine(_SingleWalkerEngine):
    """A rank-factored engine (its own, one bank): z = B x drains into the z RAM, then row i
    of A z is offered rank (i + 1) cycles later; the next vector waits for the last result."""

    def __init__(self, sizes, rank: int, z_groups: int):
        super().__init__(sizes)
        self.gap, self.rank, self.z_groups = rank, rank, z_groups

    def end(self, offer: int) -> tuple[int, int]:
        a = self._accept(offer)
        d0 = max(a + 1, self.column_end) + ENGINE_DRAIN_START
        return a, d0 + self.z_groups + 3 + self.rank

    def drained(self, last: int, last_offer: int) -> None:
        self.ready = last + 1
        self._new_vector()


class _SharedWalkerEngine:
    """The shared engine organised as free walkers: `hw.timing.WalkerTiming`."""
    gap = 1

    def __init__(self, sizes, walkers: int, banks: int):
        self.sizes, self.timing = sizes, WalkerTiming(walkers, banks)

    def event(self, offer: int, column: int) -> int:
        return self.timing.event(offer, int(self.sizes[column]))

    def end(self, offer: int) -> tuple[int, int]:
        return self.timing.end(offer)

    def drained(self, last: int, last_offer: int) -> None:
        self.timing.drained(last, last_offer)


def _engine_of(plan: Plan, stage: StagePlan):
    """The timing model of the engine `stage` runs on."""
    node, lanes = stage.node, plan.lanes
    if stage.kind == "lowrank":
        rank = node.rank
        return _RankFactoredEngine(_column_sizes(node, lanes), rank,
                                   -(-rank // min(lanes, rank)))     # stage 1's drain
    if plan.engine == "walkers":            # a walker takes the whole column
        return _SharedWalkerEngine(_column_sizes(node, 1), lanes, plan.engine_banks)
    return _SharedRowEngine(_column_sizes(node, lanes))


def _engine_stage(plan: Plan, stage: StagePlan, values) -> int:
    T, chunk, node = plan.graph.model.timesteps, plan.chunk, stage.node
    groups = stage.groups                   # transfers per vector
    if groups <= 3:
        raise ValueError(f"node {node.name}: the cycle model assumes more than 3 output "
                         f"channels, or groups of lanes (neuron hazards, collector freezes)")
    is_conv = stage.kind == "conv"
    positions, pool = stage.positions, stage.pool
    wd = stage.width if is_conv else 1
    counts = values[stage.source]
    counts = counts.reshape(counts.shape[0], positions, -1)   # at the stage's resolution
    replay = stage.static_replay
    prefetch = plan.issue_prefetch
    engine = _engine_of(plan, stage)
    taps_of = (lambda j, k: j * 9 + k) if is_conv else (lambda j, k: j)
    chunks = -(-counts.shape[-1] // chunk)      # the issuer's mask loads per word

    f = ISSUE_FETCH              # FETCH of the first vector (the start cycle is 0)
    fetched = False              # the next vector's first word came during END
    feeder_ready = _NEVER        # static first conv: the feeder takes engine results again
    collector = _Collector()
    x0 = _NEVER                  # step 0's last engine result (static replay)
    done = 0
    for pos in range(positions):
        y, x = divmod(pos, wd)
        writer = collector_writer_cycles(pool, y % 2 == 1 and x % 2 == 1)
        for t in range(T):
            if replay and t > 0:
                # the feeder: first replayed update two cycles after step 0's last result,
                # then one per cycle through step T - 1; engine results again a cycle later
                first = x0 + REPLAY_START if t == 1 else last_acc + 1
                last_acc, done = collector.feed(first, 1, groups, writer)
                if t == T - 1:
                    feeder_ready = last_acc + 1
            else:
                leading = True                      # no tap inside the image yet
                for k, channels in enumerate(_tap_masks(node, counts, t, pos)):
                    if channels is None:            # outside the image: FETCH skips it
                        if not prefetch:            # (prefetch: one jump, to the first inside)
                            f += ISSUE_FETCH
                        elif leading and k == 0:
                            f += ISSUE_FETCH
                        continue
                    if leading:
                        if k == 0 and fetched:      # fetched during the END before
                            f -= ISSUE_FETCH
                            if prefetch:            # and loaded as the END is taken
                                f -= ISSUE_LOAD_MASK
                    elif prefetch:                  # fetched at the LOAD_MASK before
                        f -= ISSUE_FETCH
                    leading = False
                    p = f + ISSUE_LOAD_MASK         # LOAD_MASK of the first chunk
                    for c in range(chunks):         # EMIT; a chunk without events: one cycle
                        in_chunk = channels[channels // chunk == c]
                        if len(in_chunk) == 0:
                            p += ISSUE_LOAD_MASK + ISSUE_EMPTY_MASK
                            continue
                        offer = p + ISSUE_LOAD_MASK
                        for j in in_chunk:
                            a = engine.event(offer, taps_of(int(j), k))
                            offer = a + 1
                        p = a + 1           # the last event's acceptance moves on
                    f = p                           # the next tap's FETCH, or END
                a_end, first = engine.end(f)
                last_acc, done = collector.feed(max(first, feeder_ready), engine.gap, groups,
                                                writer)
                engine.drained(last_acc, collector.last_offer)
                if replay:
                    x0 = last_acc
                f, fetched = a_end + ISSUE_END, True
    return done                  # the CYCLES state


def _attention_stage(plan: Plan, stage: StagePlan, values) -> int:
    node = stage.node
    T, N, groups = plan.graph.model.timesteps, stage.positions, stage.groups
    if groups <= 3:
        raise ValueError(f"node {node.name}: the cycle model assumes more than 3 channels, "
                         f"or groups of lanes")
    v = values[node.inputs[2]]
    pops = (v != 0).sum(axis=2)                          # (T, N) active V bits per token
    offer = 2                                            # FETCH 1, SEND 2
    last_count = _NEVER                                  # Y: last count transfer of a step
    collector = _Collector()
    done = 0
    for t in range(T):
        a = max(offer, last_count + 1)
        for n in range(N - 1):
            a += max(int(pops[t, n]), 2)
        phase2 = a + max(int(pops[t, N - 1]), 1)
        offer = a + 2                                    # next step's first SEND
        first = phase2 + 3
        for n in range(N):
            last_acc, done = collector.feed(first, 1, groups,
                                            collector_writer_cycles(False, True))
            first = last_acc + 1
        last_count = last_acc
    return done


def plan_of(design, lanes: int = 1, chunk: int | None = None, engine: str | None = None) -> Plan:
    """`design` itself if it is a Plan, else the plan of the graph `design` on `lanes` lanes
    (with `chunk` and `engine` as ``Accelerator(...)`` takes them)."""
    return design if isinstance(design, Plan) else \
        Plan.build(design, lanes, chunk, engine=engine)


def expected_cycles(design, node_spikes: dict, image=None, *, chunk: int | None = None,
                    lanes: int = 1, engine: str | None = None) -> dict[str, int]:
    """{node: the cycles its TRACE_CYCLES record reports} for one input, for every conv, matmul
    and attention node, in accelerator order. `design`: the accelerator's hw.plan.Plan (or a
    graph, planned with `lanes`, `chunk` and `engine` as ``Accelerator(...)`` would;
    the collector's chunk writes cost no cycles as long as a chunk takes more transfers than a
    vector's writer needs cycles, at most 4). `node_spikes`: {name: (T, tokens, C)} golden
    spikes of this image; `image`: its pixels (or node_spikes["input"])."""
    plan = plan_of(design, lanes, chunk, engine)
    values = plan.graph.value_counts(node_spikes, image)
    out = {}
    for stage in plan.stages:
        if stage.kind == "attention":
            out[stage.name] = _attention_stage(plan, stage, values)
        else:
            out[stage.name] = _engine_stage(plan, stage, values)
    return out


def head_cycles(graph: Graph, lanes: int = 1) -> int:
    """From the head's start through its end (the last logit taken): `hw.timing.head_cycles`,
    T N + classes ceil(dim / lanes) + 4."""
    m, head = graph.model, graph.head
    return timing_head_cycles(m.timesteps, m.tokens, head.classes, head.in_features, lanes)


def load_cycles(graph: Graph) -> int:
    """Pixel transfers: C H W, times T for event data (one pixel per cycle)."""
    m = graph.model
    c, h, w = m.input_shape
    return c * h * w * (m.timesteps if m.time_varying_input else 1)


# ---- ideal ------------------------------------------------------------------------------------

def ideal_breakdown(graph: Graph, node_spikes: dict, image=None,
                    lanes: int = 1) -> dict[str, dict[str, int]]:
    """{node: {term: operations}} with the terms of `Node.work` (model.ir.nodes): "synaptic"
    (spike-fed accumulate ops, or the first conv's pixel MACs), "mac" (multi-bit MACs:
    rank-factored A stage, head), "attention" (active V bits + counts) and "neuron" (updates);
    plus "ideal", the layer's bound in cycles on `lanes` lanes:
    max(synaptic + mac + attention, neuron) / lanes, rounded up. Includes "head"."""
    out = graph.work(node_spikes, image)
    for terms in out.values():
        terms["ideal"] = -(-max(terms["synaptic"] + terms["mac"] + terms["attention"],
                                terms["neuron"]) // lanes)
    return out


def ideal_cycles(graph: Graph, node_spikes: dict, image=None, lanes: int = 1) -> dict[str, int]:
    """{node: ideal cycles} for every conv, matmul and attention node and "head"."""
    return {name: t["ideal"]
            for name, t in ideal_breakdown(graph, node_spikes, image, lanes).items()}


# ---- totals and reports -----------------------------------------------------------------------

def inference_cycles(design, node_spikes: dict, image=None, lanes: int = 1) -> dict:
    """Expected and ideal cycles of one inference on `lanes` lanes:
    {"layers": {node: cycles}, "load": pixels, "head": head, "total": result.cycles,
     "ideal_layers": {node: ideal}, "ideal": sum of the ideals (layers and head)}."""
    plan = plan_of(design, lanes)
    graph, lanes = plan.graph, plan.lanes
    layers = expected_cycles(plan, node_spikes, image)
    ideal = ideal_cycles(graph, node_spikes, image, lanes)
    load, head = load_cycles(graph), head_cycles(graph, lanes)
    return {"layers": layers, "load": load, "head": head,
            "total": load + sum(layers.values()) + head,
            "ideal_layers": ideal, "ideal": sum(ideal.values())}


def summarize(design, golden, measured: list[dict] | None = None,
              indices=None, lanes: int = 1, expected: list[dict] | None = None) -> dict:
    """The cycle part of sim.json for images `indices` (default: all) of `golden`
    (model.ir.golden.GoldenData).

    `measured`: per image {"cycles": result.cycles, "layer_cycles": {node: TRACE_CYCLES}} from
    the simulator, in the order of `indices` (a design without the trace port reports no
    layer cycles: its layers are then compared on the model alone, its totals measured);
    without it the model's expectation stands in. `design`: the simulated design's Plan, or its
    graph and `lanes`. `expected`: `inference_cycles` of those images, if already computed.
    Returns {"cycles_per_inference": {mean, min, max}, "ideal_cycles_per_inference",
    "expected_cycles_per_inference", "layers": [{name, cycles, ideal_cycles, expected_cycles,
    ...}], "model_error": worst |measured / expected - 1| over layers and totals}."""
    indices = list(range(len(golden.images))) if indices is None else list(indices)
    if measured is not None and len(measured) != len(indices):
        raise ValueError(f"{len(measured)} measured records for {len(indices)} images")
    plan = plan_of(design, lanes)
    per = expected if expected is not None else \
        [inference_cycles(plan, *image_spikes(golden, i)) for i in indices]
    names = list(per[0]["layers"]) + ["head"] if per else []
    totals = [m["cycles"] for m in measured] if measured is not None else \
        [p["total"] for p in per]
    worst = 0.0
    layers = []
    for name in names:
        exp = [p["layers"][name] if name != "head" else p["head"] for p in per]
        ide = [p["ideal_layers"][name] for p in per]
        layer_measured = measured is not None and name != "head" and \
            all(name in m["layer_cycles"] for m in measured)
        got = [m["layer_cycles"][name] for m in measured] if layer_measured else exp
        worst = max([worst] + [abs(g / e - 1) for g, e in zip(got, exp) if e])
        layers.append({"name": name, "cycles": float(np.mean(got)),
                       "ideal_cycles": float(np.mean(ide)),
                       "expected_cycles": float(np.mean(exp)),
                       "ratio_to_ideal": float(np.mean(got) / max(np.mean(ide), 1)),
                       "measured": bool(layer_measured)})
    exp_totals = [p["total"] for p in per]
    worst = max([worst] + [abs(g / e - 1) for g, e in zip(totals, exp_totals) if e])
    return {"cycles_per_inference": {"mean": float(np.mean(totals)), "min": int(min(totals)),
                                     "max": int(max(totals))},
            "ideal_cycles_per_inference": float(np.mean([p["ideal"] for p in per])),
            "expected_cycles_per_inference": float(np.mean(exp_totals)),
            "layers": layers, "model_error": worst}
