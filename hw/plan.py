"""The plan of the accelerator: every decision about the hardware, computed once from the IR.

Pure Python (model.ir and NumPy; no Amaranth): the gateware (hw/accelerator/) is built from a
:class:`Plan`, and the cycle model (hw/cycles.py) and the testbenches read the same one, so
they cannot drift apart. A plan holds

* the stages in sequencer order (one per neuron node; ids 1..n, the head n + 1) with their
  loop order, channels, groups of lanes, positions, source and reads;
* the lanes and the chunk (validated: a configuration the hardware cannot take is refused here,
  with one line);
* the shared units' layout: each conv / CSC matmul's columns in the one shared engine, each
  stage's constants in the one neuron array, the widths these shared units need;
* the value bank: where each neuron node's output lives (base address and lane offset in the
  one wide bank, or a memory of its own), from the reads every stage declares;
* the trace record's layout and kinds, carried to the scoreboard in design.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.ir import INPUT, Attention, Conv, Graph, LowRankMatMul, NeuronNode
from model.ir.csc import dense_from_csc
from model.ir.intops import acc_range, signed_bits

__all__ = ["Plan", "StagePlan", "SharedLayout", "ValueBank", "CHUNK", "MIN_CHUNK",
           "LOADABLE_CHUNK", "CYCLE_BITS", "TRACE_KINDS", "ENGINES", "WALKER_BANKS",
           "default_chunk", "choose_chunk", "lane_column_sizes"]

#: Channels per chunk: the issue FSM's mask loads and the collector's writes (rounded up to
#: whole groups of lanes: `default_chunk`)
CHUNK = 32
#: The chunk of a loadable (iCE40) build: the UP5K is full, and half-width issue masks and
#: collector chunks free about 200 of its 5 280 logic cells for 2 cycles per shipped L1P
#: inference (one more LOAD_MASK per wide source word, mostly hidden behind the engine)
LOADABLE_CHUNK = 16
#: Fewest transfers in a collector chunk: its gather outlasts the writer of the previous chunk
#: (at most 4 cycles), so chunk writes never hold the neuron array up
MIN_CHUNK = 5
#: Width of the cycle counters (result.cycles, the layer-cycles trace records)
CYCLE_BITS = 32
#: The trace record kinds (the ``kind`` field of the trace port)
TRACE_KINDS = {"spikes": 0, "cycles": 1}
#: Organisations of the shared engine's P lanes (docs/HARDWARE.md, "Lanes"): "rows", output
#: rows dealt to P lanes that walk each event's column in lockstep (SparseMatmulEngine; one
#: lane is the single walker), or "walkers", P free walkers that each take a whole event
#: (WalkerMatmulEngine; the default from 2 lanes on)
ENGINES = ("rows", "walkers")
#: Accumulator banks of the walker engine: vectors in flight, one walked while the two before
#: drain or wait for their drain (with two, a vector's walk must wait for the drain two back,
#: and a vector of few events outruns it: q/k/v of the shipped L1P 1.20 x their bound on two
#: lanes with two banks, 1.08 x with three, the cycle model on 20 images; a fourth adds nothing)
WALKER_BANKS = 3


def default_chunk(lanes: int = 1) -> int:
    """The default chunk on `lanes` lanes: CHUNK rounded up to a multiple of lanes (the
    collector gathers whole groups)."""
    return -(-CHUNK // lanes) * lanes


def lane_column_sizes(col_ptr, row_idx, lanes: int) -> np.ndarray:
    """Stored entries per lane and column of a CSC matrix, (lanes, columns): the engines deal
    row r to lane r mod lanes (hw/components/sparse.py), so a column walks in as many cycles as
    its fullest lane holds."""
    ptr = np.asarray(col_ptr, dtype=np.int64)
    lane = np.asarray(row_idx, dtype=np.int64) % lanes
    sizes = []
    for p in range(lanes):
        in_lane = np.concatenate([[0], np.cumsum(lane == p)])
        sizes.append(in_lane[ptr[1:]] - in_lane[ptr[:-1]])
    return np.stack(sizes) if sizes else np.zeros((0, len(ptr) - 1), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class StagePlan:
    """One stage of the sequencer: a neuron node and how the hardware runs it."""
    id: int                     # the sequencer's `active` value while it runs (1..n)
    node: NeuronNode
    kind: str                   # "conv", "matmul", "lowrank" or "attention"
    channels: int               # output channels
    groups: int                 # transfers per vector: ceil(channels / lanes)
    height: int                 # engine geometry: a conv's plane, 1 x tokens otherwise
    width: int
    out_tokens: int             # tokens of its value (a conv's after pooling)
    source: str                 # the value it reads ("input": the image)
    static_replay: bool         # a static first conv: step 0 computed, steps 1.. replayed
    in_max: int                 # largest count of its source
    value_depth: int            # words of its value: T x out_tokens
    #: the values it reads, in order, each with the address it reads them at ("input": the
    #: stage's source position, "readback": its own output, a pooled conv's partial OR)
    reads: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def positions(self) -> int:
        """Vectors per time step (a conv's positions before pooling, else tokens)."""
        return self.height * self.width

    @property
    def tokens_outer(self) -> bool:
        """Loop order: tokens outer, steps inner (conv, matmul; one membrane per channel), or
        steps outer (attention: K^T V sums over the tokens of a step)."""
        return self.kind != "attention"

    @property
    def pool(self) -> bool:
        return isinstance(self.node, Conv) and self.node.pool



@dataclass(frozen=True, eq=False)
class SharedLayout:
    """The shared engine's matrices side by side and the neuron array's constants in a row."""
    col_base: dict              # stage name -> its first column in the shared engine
    rows: dict                  # stage name -> rows it drains
    channel_base: dict          # stage name -> its first channel in the neuron array
    col_ptr: np.ndarray | None  # the side-by-side CSC matrix (None: no shared engine)
    row_idx: np.ndarray | None
    values: np.ndarray | None
    engine_in_max: int
    bias: np.ndarray
    threshold: np.ndarray
    leak: np.ndarray
    channels: int               # neuron array channels (every stage padded to whole groups)
    per_token: int              # attention membranes per token (0: no attention stage)
    widest: int                 # widest non-attention stage, padded
    acc_width: int
    membrane_width: int
    product_width: int


@dataclass(frozen=True, eq=False)
class ValueBank:
    """Where the values live: {value: (base, lane offset)} in the one bank, the bank's width
    and write granularity, each stage's base; values not placed get memories of their own."""
    place: dict
    stage_base: dict
    width: int
    granularity: int
    depth: dict                 # value -> words (T x its tokens)


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything the gateware and the cycle model share (use :meth:`build`)."""
    graph: Graph
    lanes: int
    chunk: int
    loadable: bool
    stages: tuple[StagePlan, ...]
    head_id: int
    shared: SharedLayout
    values: ValueBank
    #: {stage id (the head's too): {value: address role}}: every value bank read, declared
    reads: dict = field(default_factory=dict)
    trace_layout: dict = field(default_factory=dict)   # field -> bits, in order
    engine: str = "rows"        # the shared engine's organisation (ENGINES)

    @property
    def issue_prefetch(self) -> bool:
        """The issue FSM fetches the next word (a conv's next tap inside the image, or the next
        vector) while it emits this one (IssueFSM ``prefetch``): from two lanes on, where the
        engine no longer hides the FETCH and LOAD_MASK cycles (one lane: 0.5 % of the shipped
        L1P's cycles, and no room on the UP5K)."""
        return self.lanes > 1

    @property
    def engine_banks(self) -> int:
        """Accumulator banks of the shared engine: WALKER_BANKS, or the row engine's two."""
        return WALKER_BANKS if self.engine == "walkers" else 2

    @classmethod
    def build(cls, graph: Graph, lanes: int = 1, chunk: int | None = None,
              loadable: bool = False, engine: str | None = None) -> "Plan":
        """The plan of `graph` on `lanes` lanes, its shared engine organised as `engine`
        (ENGINES; by default "rows" on one lane, "walkers" on more); ValueError names a
        configuration the accelerator cannot take."""
        lanes, chunk = _check_configuration(graph, lanes, chunk, loadable)
        engine = ("walkers" if lanes > 1 else "rows") if engine is None else engine
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        if engine == "walkers" and loadable:
            raise ValueError("a loadable accelerator (the iCE40 build) takes the rows engine "
                             "only")
        stages = tuple(_stage(graph, sid, node, lanes)
                       for sid, node in enumerate(graph.neurons, start=1))
        head_id = len(stages) + 1
        shared = _shared_layout(graph, stages, lanes)
        reads = {s.id: dict(s.reads) for s in stages if s.reads}
        reads[head_id] = dict.fromkeys(graph.value_sources[graph.head.inputs[0]], "input")
        values = _value_bank(stages, reads, chunk)
        trace_bits = max(s.channels for s in stages)
        trace_layout = {"kind": 2, "node": 8, "step": 8, "token": 16,
                        "data": max(trace_bits, CYCLE_BITS)}
        return cls(graph, lanes, chunk, bool(loadable), stages, head_id, shared, values, reads,
                   trace_layout, engine)

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)

    def design(self) -> dict:
        """The plan's facts a testbench needs (design.json's ``plan``): trace layout and
        kinds, node ids, stage order."""
        return {"lanes": self.lanes, "chunk": self.chunk, "engine": self.engine,
                "engine_banks": self.engine_banks,
                "trace_layout": dict(self.trace_layout), "trace_kinds": dict(TRACE_KINDS),
                "stages": [{"id": s.id, "name": s.name, "kind": s.kind,
                            "node": self.graph.index(s.name), "channels": s.channels,
                            "tokens": s.out_tokens, "loop": "tokens-outer" if s.tokens_outer
                            else "steps-outer"} for s in self.stages]}


# ---- construction --------------------------------------------------------------------------

def _chunk_fits(width: int, chunk: int, lanes: int) -> bool:
    """Every collector chunk of a `width`-channel vector takes at least MIN_CHUNK transfers
    (or the vector is one chunk)."""
    return width <= chunk or -(-min(chunk, width % chunk or chunk) // lanes) >= MIN_CHUNK


def choose_chunk(graph, lanes: int, loadable: bool = False) -> int:
    """The chunk a plan takes by default: `default_chunk` (LOADABLE_CHUNK for a loadable build)
    when every layer fits it, else the smallest wider multiple of lanes (up to twice as wide)
    that leaves no layer a remainder chunk of fewer than MIN_CHUNK transfers (36 channels: one
    chunk of 36, not 32 + 4)."""
    first = LOADABLE_CHUNK if loadable and lanes == 1 else default_chunk(lanes)
    for chunk in range(first, 2 * first + 1, lanes):
        if all(_chunk_fits(n.channels, chunk, lanes) for n in graph.neurons):
            return chunk
    return first            # refused with the numbers by _check_configuration


def _check_configuration(graph, lanes, chunk, loadable):
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
        raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
    chunk = choose_chunk(graph, lanes, loadable) if chunk is None else chunk
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, not {chunk!r}")
    if chunk % lanes:
        raise ValueError(f"chunk = {chunk} must be a multiple of lanes = {lanes} (the "
                         f"collector gathers whole groups of lanes)")
    if loadable and lanes != 1:
        raise ValueError(f"lanes = {lanes}: a loadable accelerator (the iCE40 build, tables "
                         f"written by the host) takes one lane only")
    for node in graph.neurons:
        name, width = node.name, node.channels
        if isinstance(node, Conv) and node.pool and node.pool_kernel != 2:
            # the collector ORs each position into one pooled word: a 3x3 window overlaps
            raise ValueError(f"{name} pools 3x3 with stride 2 (the official SPS's "
                             f"MaxPool2d(3, 2, 1)); the accelerator pools 2x2 only so far")
        if -(-width // lanes) < 3:
            # the neuron array runs without its hazard stall: a neuron comes back only after
            # every other group of its stage (and the cycle model assumes > 3)
            raise ValueError(f"{name} has {width} channels" + (
                f", {-(-width // lanes)} groups of {lanes} lanes" if lanes > 1 else "") +
                f"; the accelerator needs at least 3{' groups' if lanes > 1 else ''} per layer")
        if not _chunk_fits(width, chunk, lanes):
            # every collector chunk outlasts the writer of the previous one (4 cycles)
            raise ValueError(
                f"chunk = {chunk} splits the {width} channels of {name} into a chunk of "
                f"fewer than {MIN_CHUNK} transfers ({lanes} lanes each); choose a chunk of "
                f"at least {MIN_CHUNK * lanes} that leaves no smaller remainder")
    for node in graph.neurons:
        if isinstance(node, Attention) and node.head_dim % lanes:
            raise ValueError(f"{node.name}: lanes = {lanes} does not divide its heads' "
                             f"{node.head_dim} channels")
    return lanes, chunk


def _kind(node: NeuronNode) -> str:
    if isinstance(node, Attention):
        return "attention"
    if isinstance(node, LowRankMatMul):
        return "lowrank"
    return "conv" if isinstance(node, Conv) else "matmul"


def _stage(graph: Graph, sid: int, node: NeuronNode, lanes: int) -> StagePlan:
    kind = _kind(node)
    is_conv = kind == "conv"
    T = graph.model.timesteps
    source = node.inputs[0]
    from_image = source == INPUT
    if kind == "attention":
        reads = tuple((s, "input") for v in node.inputs for s in graph.value_sources[v])
    else:
        reads = () if from_image else tuple((s, "input") for s in graph.value_sources[source])
    if is_conv and node.pool:           # the partial OR of its 2x2 cell, read back
        reads += ((node.name, "readback"),)
    reads = tuple(dict(reads).items())  # each value once: first position, last address
    height, width = (node.height, node.width) if is_conv else (1, graph.model.tokens)
    return StagePlan(
        id=sid, node=node, kind=kind, channels=node.channels,
        groups=-(-node.channels // lanes), height=height, width=width,
        out_tokens=graph.tokens_of(node.name), source=source,
        static_replay=is_conv and from_image and not graph.model.time_varying_input and T > 1,
        in_max=int(graph.bounds[source]), reads=reads, value_depth=T * graph.tokens_of(node.name))


def _shared_layout(graph: Graph, stages, P: int) -> SharedLayout:
    col_base, rows, channel_base = {}, {}, {}
    ptrs, idxs, vals, cols, in_max, acc_width = [], [], [], 0, 1, 1
    bias, threshold, leak, channels = [], [], [], 0
    membrane_width = product_width = 1
    # attention stages (time steps outer: one membrane per token and channel) need per_token
    # membranes per token; their constants go last
    order = [s for s in stages if s.kind != "attention"] + \
        [s for s in stages if s.kind == "attention"]

    def padded(c):      # every stage's channels start at a group boundary
        return -(-c // P) * P
    per_token = max([padded(s.channels) for s in order if s.kind == "attention"], default=0)
    for s in order:
        node, name, widths, c_out = s.node, s.name, s.node.widths, s.channels
        acc_width = max(acc_width, widths["acc"])
        membrane_width = max(membrane_width, widths["membrane"])
        product_width = max(product_width, widths["product"])
        channel_base[name] = channels
        channels += padded(c_out)
        pad = padded(c_out) - c_out     # bias 0, threshold 1, leak 0: never fires
        bias.append(np.concatenate([node.bias, np.zeros(pad, np.int64)]))
        threshold.append(np.concatenate([node.threshold, np.ones(pad, np.int64)]))
        leak.append(np.concatenate([node.leak, np.zeros(pad, np.int64)]))
        if s.kind in ("attention", "lowrank"):
            continue
        ptr, idx, val = node.columns()
        col_base[name], rows[name] = cols, c_out
        nnz = sum(len(v) for v in vals)
        ptrs.append(np.asarray(ptr[:-1], np.int64) + nnz)
        idxs.append(np.asarray(idx, np.int64))
        vals.append(np.asarray(val, np.int64))
        cols += len(ptr) - 1
        in_max = max(in_max, s.in_max)
    col_ptr = row_idx = values = None
    if col_base:
        nnz = sum(len(v) for v in vals)
        col_ptr = np.concatenate(ptrs + [np.asarray([nnz], np.int64)])
        row_idx, values = np.concatenate(idxs), np.concatenate(vals)
        # the side-by-side matrix's partial sums bound every stage's: one width for all
        acc_width = max(acc_width, signed_bits(*acc_range(
            dense_from_csc(col_ptr, row_idx, values, max(rows.values()), cols), in_max)))
    widest = max([padded(s.channels) for s in order if s.kind != "attention"], default=P)
    cat = np.concatenate
    return SharedLayout(col_base, rows, channel_base, col_ptr, row_idx, values, in_max,
                        cat(bias), cat(threshold), cat(leak), channels, per_token, widest,
                        acc_width, membrane_width, product_width)


def _value_bank(stages, reads: dict, chunk: int) -> ValueBank:
    """Place the values from the declared reads (see hw/accelerator/store.py): values some
    stage reads together share one base address, side by side; a value read back at a second
    address by its own stage keeps a memory of its own."""
    widths = {s.name: s.channels for s in stages}
    depth = {s.name: s.value_depth for s in stages}
    reads = {sid: list(per.items()) for sid, per in reads.items()}
    names = {s.id: s.name for s in stages}
    own = set()
    for sid, per in reads.items():
        by_addr = {}
        for src, addr in per:
            by_addr.setdefault(addr, []).append(src)
        if len(by_addr) > 1:            # read back at a second address: its own memory
            extra = [srcs for srcs in by_addr.values() if names.get(sid) in srcs]
            for srcs in extra or list(by_addr.values())[1:]:
                own.update(srcs)
    banked = [v for v in widths if v not in own]
    parent = {v: v for v in banked}     # groups: values some stage reads together

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v
    for per in reads.values():
        together = [src for src, _ in per if src in parent]
        for other in together[1:]:
            parent[find(other)] = find(together[0])
    groups = {}
    for v in banked:
        groups.setdefault(find(v), []).append(v)
    if not groups:
        return ValueBank({}, {}, 0, 0, depth)
    group_width = {g: sum(widths[v] for v in vs) for g, vs in groups.items()}
    width = max(group_width.values())
    bins = []                           # [lanes used, depth, [groups]]: first fit, widest first
    for g in sorted(groups, key=lambda g: (-group_width[g], g)):
        g_depth = max(depth[v] for v in groups[g])
        for b in bins:
            if b[0] + group_width[g] <= width:
                break
        else:
            b = [0, 0, []]
            bins.append(b)
        b[2].append((g, b[0]))
        b[0] += group_width[g]
        b[1] = max(b[1], g_depth)
    place, base = {}, 0
    for used, b_depth, members in bins:
        for g, lane in members:
            for v in groups[g]:
                place[v] = (base, lane)
                lane += widths[v]
        base += b_depth
    stage_base = {}
    for sid, per in reads.items():
        bases = {place[src][0] for src, _ in per if src in place}
        if len(bases) > 1:
            raise AssertionError(f"stage {sid} reads the value bank at two bases")
        if bases:
            stage_base[sid] = bases.pop()
    chunked = [chunk] if any(widths[v] > chunk for v in place) else []
    granularity = int(np.gcd.reduce([widths[v] for v in place] + chunked))
    return ValueBank(place, stage_base, width, granularity, depth)
