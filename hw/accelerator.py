# amaranth: UnusedElaboratable=no
# (the shared engine and neuron array are built in __init__, for memory_map; they are
# elaborated only with the accelerator)
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
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.cycles import default_chunk
from hw.components import RankFactoredEngine, SlifNeuronArray, SparseMatmulEngine, \
    SpikingAttention, block_ram_attrs, lane_of, lane_shape, packed_words, tree_sum
from model.artifact import NEURON_OPS, Artifact, conv_columns, dense_from_csc, derive_widths, \
    value_sources
from model.intops import acc_range, signed_bits

__all__ = ["Accelerator", "TRACE_SPIKES", "TRACE_CYCLES", "NEURON_OPS", "value_sources"]

TRACE_SPIKES = 0
TRACE_CYCLES = 1
#: Fewest channels in a collector chunk: its gather outlasts the writer of the previous chunk
#: (at most 4 cycles), so chunk writes never hold the neuron array up
MIN_CHUNK = 5
CYCLE_BITS = 32


class Accelerator(wiring.Component):
    """Pixels in, logits and class out; optional trace of every spike vector (docs/HARDWARE.md).

    Parameters
    ----------
    artifact : Artifact
        A loaded (validated) integer model.
    trace : bool
        Add the ``trace`` port.
    lanes : int
        Parallel lanes P (default 1): every unit handles P output channels side by side (the
        engine walks P stored weights per cycle, one per lane of rows r = p mod P; the neuron
        array updates, the collector gathers, attention counts and the head multiplies P at a
        time). Every layer needs at least 3 groups of P channels, attention heads a multiple
        of P channels; ``loadable`` takes one lane only.
    chunk : int
        Channels per chunk (by default hw.cycles.CHUNK, 32, rounded up to a multiple of lanes:
        `hw.cycles.default_chunk`; a multiple of lanes): the issue FSM loads a source word's
        mask and the collector gathers and writes a spike vector this many channels at a time,
        so neither is as wide as the widest value (an MLP's hidden layer). A wider source word
        costs a cycle or two per extra chunk in the issue FSM, mostly hidden behind the engine;
        the collector's chunk writes cost no cycle, as every chunk takes at least MIN_CHUNK
        transfers (channels, or groups of lanes; checked).
    loadable : bool
        The shared engine's entry table and the neuron constants are not ROMs but written
        through the ``load`` port before the first image (`memory_map` says what to write):
        they then have no initial contents, so the iCE40 flow puts them in SPRAM. Everything
        else, timing included, is the same.
    """

    def __init__(self, artifact: Artifact, trace: bool = False, lanes: int = 1,
                 loadable: bool = False, chunk: int | None = None):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        chunk = default_chunk(lanes) if chunk is None else chunk
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, not {chunk!r}")
        if chunk % lanes:
            raise ValueError(f"chunk = {chunk} must be a multiple of lanes = {lanes} (the "
                             f"collector gathers whole groups of lanes)")
        if loadable and lanes != 1:
            raise ValueError(f"lanes = {lanes}: a loadable accelerator (the iCE40 build, tables "
                             f"written by the host) takes one lane only")
        self.artifact, self.trace_enabled, self.lanes = artifact, trace, lanes
        self.chunk = chunk
        man = artifact.manifest["model"]
        self.T, self.N = man["timesteps"], man["tokens"]
        self.time_varying = bool(man["time_varying_input"])
        self.in_c, self.in_h, self.in_w = man["input_shape"]
        self.pixel_bits = max(1, int(man["input_max"]).bit_length())
        self.sources = value_sources(artifact)
        self.stages = [n for n in artifact.nodes if n["op"] in NEURON_OPS]
        self.node_index = {n["name"]: i for i, n in enumerate(artifact.nodes)}
        self.head = next(n for n in artifact.nodes if n["op"] == "head")
        self.classes = self.head["classes"]
        self.logit_bits = self.head["widths"]["logit"]
        self.channels = {n["name"]: self._out_channels(n) for n in self.stages}
        for name, width in self.channels.items():
            if -(-width // lanes) < 3:
                # the neuron array runs without its hazard stall: a neuron comes back only
                # after every other group of its stage (and the cycle model assumes > 3)
                raise ValueError(f"{name} has {width} channels" + (
                    f", {-(-width // lanes)} groups of {lanes} lanes" if lanes > 1 else "") +
                    f"; the accelerator needs at least 3{' groups' if lanes > 1 else ''} per "
                    f"layer")
            if width > chunk and -(-min(chunk, width % chunk or chunk) // lanes) < MIN_CHUNK:
                # every collector chunk outlasts the writer of the previous one (4 cycles)
                raise ValueError(
                    f"chunk = {chunk} splits the {width} channels of {name} into a chunk of "
                    f"fewer than {MIN_CHUNK} transfers ({lanes} lanes each); choose a chunk of "
                    f"at least {MIN_CHUNK * lanes} that leaves no smaller remainder")
        for node in self.stages:
            if node["op"] == "attention" and (node["dim"] // node["heads"]) % lanes:
                raise ValueError(f"{node['name']}: lanes = {lanes} does not divide its heads' "
                                 f"{node['dim'] // node['heads']} channels")
        self.bounds = derive_widths(artifact)["_bounds"]
        self.positions = {n["name"]: self._positions(n) for n in self.stages}
        self.trace_bits = max(self.channels.values())
        self.trace_layout = data.StructLayout({
            "kind": 2, "node": 8, "step": 8, "token": 16,
            "data": max(self.trace_bits, CYCLE_BITS)})
        self.result_layout = data.StructLayout({"cls": 8, "cycles": CYCLE_BITS})
        members = {
            "pixels": In(stream.Signature(unsigned(self.pixel_bits))),
            "logits": Out(stream.Signature(signed(self.logit_bits))),
            "result": Out(stream.Signature(self.result_layout)),
        }
        if trace:
            members["trace"] = Out(stream.Signature(self.trace_layout))
        self.loadable = bool(loadable)
        self._shared = _SharedUnits(self, self.loadable)
        if self.loadable:
            tables = self.memory_map()
            members["load"] = In(stream.Signature(data.StructLayout({
                "memory": unsigned(bits_for(len(tables) - 1)),
                "addr": unsigned(max(bits_for(len(t.words) - 1) for t in tables)),
                "data": unsigned(max(t.width for t in tables)),
            })))
        super().__init__(members)

    def memory_map(self) -> list[SimpleNamespace]:
        """The tables a loader writes into a ``loadable`` accelerator, by memory id (the
        ``load`` port's ``memory``; the WRITE_MEM command's id): ``name``, ``width`` (bits per
        word), ``words`` (unsigned ints, address 0 first) and ``unit`` (the component holding
        it), from the same components that build them, so host images and hardware cannot
        disagree."""
        tables = []
        engine, neurons = self._shared.engine, self._shared.neurons
        if engine is not None:
            tables.append(SimpleNamespace(name="engine.entries", unit=engine,
                                          width=engine.entry_layout.size,
                                          words=packed_words(engine.entry_layout,
                                                             engine.entries_init())))
        tables.append(SimpleNamespace(name="neurons.parameters", unit=neurons,
                                      width=neurons.parameter_layout.size,
                                      words=packed_words(neurons.parameter_layout,
                                                         neurons.parameters_init())))
        for i, table in enumerate(tables):
            table.id = i
        return tables

    # ---- shapes -------------------------------------------------------------------------------

    @staticmethod
    def _out_channels(node: dict) -> int:
        key = {"conv": "out_channels", "matmul": "out_features", "attention": "dim"}[node["op"]]
        return node[key]

    def _positions(self, node: dict) -> int:
        """Tokens of a node's output value (conv: positions after pooling)."""
        if node["op"] == "conv":
            div = 2 if node["pool"] else 1
            return (node["height"] // div) * (node["width"] // div)
        return self.N

    def _count_bits(self, value: str) -> int:
        return bits_for(len(self.sources[value]))

    # ---- elaboration ---------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        a, T = self.artifact, self.T
        stage_count = len(self.stages)
        active = Signal(range(stage_count + 3))      # 0 = load, 1..n stages, n+1 head, n+2 out
        cycles = Signal(CYCLE_BITS)
        running = Signal()
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- input image memory: one word per (step,) position, Cin pixels per word
        in_depth = self.in_h * self.in_w * (T if self.time_varying else 1)
        image_shape = unsigned(self.pixel_bits * self.in_c)
        m.submodules.image = image = Memory(shape=image_shape, depth=in_depth, init=[],
                                            attrs=block_ram_attrs(image_shape, in_depth))
        image_w = image.write_port(granularity=self.pixel_bits)
        image_r = image.read_port()
        load_count = Signal(range(in_depth * self.in_c + 1))
        # order (t,) c, y, x: split the running count
        plane = self.in_h * self.in_w
        load_c = Signal(range(self.in_c))
        load_pos = Signal(range(plane))
        load_t = Signal(range(T))
        m.d.comb += [
            image_w.addr.eq(load_t * plane + load_pos if self.time_varying else load_pos),
            image_w.data.eq(self.pixels.payload << (load_c * self.pixel_bits)),
        ]

        # ---- value storage: proxies now, memories placed once every read is known
        store = _ValueStore(self)
        mem_r, mem_w, read = store.r, store.w, store.read

        def counts(value: str):
            """Per-channel counts of `value` from the read data of its source memories."""
            srcs = self.sources[value]
            width = self.channels[srcs[0]]
            bits = self._count_bits(value)
            out = []
            for c in range(width):
                total = sum((mem_r[s].data[c].as_unsigned() for s in srcs), Const(0, bits))
                out.append(total[:bits] if len(srcs) > 1 else mem_r[srcs[0]].data[c])
            return out, bits

        # ---- trace arbitration: one collector at a time is active, so a mux suffices
        trace_valid = Signal()
        trace_payload = Signal(self.trace_layout)
        trace_ready = Signal()
        if self.trace_enabled:
            m.d.comb += [self.trace.valid.eq(trace_valid), self.trace.payload.eq(trace_payload),
                         trace_ready.eq(self.trace.ready)]
        else:
            m.d.comb += trace_ready.eq(1)

        shared = self._shared
        if shared.engine is not None:
            m.submodules.engine = shared.engine
        m.submodules.neurons = shared.neurons

        stage_start = [Signal(name=f"start_{_ident(n['name'])}") for n in self.stages]
        stage_done = [Signal(name=f"done_{_ident(n['name'])}") for n in self.stages]
        # the stages share one cycle counter (each restarts it) and one spike collector
        run_cycles = Signal(CYCLE_BITS, name="stage_cycles")
        stage_busy = [Signal(name=f"busy_{_ident(n['name'])}") for n in self.stages]
        with m.If(_or_all(stage_busy)):
            m.d.sync += run_cycles.eq(run_cycles + 1)
        users = {}
        issuer = _Issuer(self, [n for n in self.stages if n["op"] != "attention"])
        for sid, node in enumerate(self.stages, start=1):
            args = (m, sid, node, stage_start[sid - 1], stage_done[sid - 1], stage_busy[sid - 1])
            if node["op"] == "attention":
                users[sid] = self._attention_stage(*args, run_cycles, mem_r, read, shared)
            else:
                users[sid] = self._engine_stage(*args, read, counts, image_r, shared, issuer)
        issuer.build(m, active, run_cycles)
        shared.connect(m, active)
        valid, payload = self._collector(m, active, users, mem_r, mem_w, read, run_cycles,
                                         trace_ready, _or_all(stage_start), store)
        m.d.comb += [trace_valid.eq(valid), trace_payload.eq(payload)]

        # ---- head: feature sums, then serial MAC per class
        head_start, head_done = Signal(), Signal()
        best_cls = self._head_stage(m, stage_count + 1, head_start, head_done, read, counts)

        # every stage has registered its reads: place the values, mux addresses by stage
        store.build(m, active)

        if self.loadable:
            for table in self.memory_map():
                unit = table.unit
                m.d.comb += [
                    unit.load.valid.eq(self.load.valid & self.load.ready &
                                       (self.load.payload.memory == table.id)),
                    unit.load.payload.addr.eq(self.load.payload.addr),
                    unit.load.payload.data.eq(self.load.payload.data[:table.width]),
                ]

        # ---- top sequencer
        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.pixels.ready.eq(1), image_w.en.eq(
                    Mux(self.pixels.valid, 1 << load_c, 0))]
                if self.loadable:       # tables are written only between images
                    m.d.comb += self.load.ready.eq(load_count == 0)
                with m.If(self.pixels.valid):
                    m.d.sync += running.eq(1)
                    with m.If(load_count == 0):
                        m.d.sync += cycles.eq(1)
                    m.d.sync += load_count.eq(load_count + 1)
                    # advance x/y fastest, then c, then t
                    with m.If(load_pos == plane - 1):
                        m.d.sync += load_pos.eq(0)
                        with m.If(load_c == self.in_c - 1):
                            m.d.sync += load_c.eq(0)
                            m.d.sync += load_t.eq(Mux(load_t == T - 1, 0, load_t + 1))
                        with m.Else():
                            m.d.sync += load_c.eq(load_c + 1)
                    with m.Else():
                        m.d.sync += load_pos.eq(load_pos + 1)
                    with m.If(load_count == in_depth * self.in_c - 1):
                        m.d.sync += [load_count.eq(0), active.eq(1)]
                        m.d.comb += stage_start[0].eq(1)
                        m.next = "RUN"
            with m.State("RUN"):
                for sid in range(1, stage_count + 1):
                    with m.If((active == sid) & stage_done[sid - 1]):
                        m.d.sync += active.eq(sid + 1)
                        if sid < stage_count:
                            m.d.comb += stage_start[sid].eq(1)
                        else:
                            m.d.comb += head_start.eq(1)
                # the head has streamed the logits out as it computed them
                with m.If((active == stage_count + 1) & head_done):
                    m.d.sync += [active.eq(stage_count + 2), running.eq(0)]
                    m.next = "RESULT"
            with m.State("RESULT"):
                m.d.comb += [self.result.valid.eq(1), self.result.payload.cls.eq(best_cls),
                             self.result.payload.cycles.eq(cycles)]
                with m.If(self.result.ready):
                    m.d.sync += active.eq(0)
                    m.next = "LOAD"
        return m

    # ---- conv / matmul stage -----------------------------------------------------------------

    def _engine_stage(self, m, sid, node, start, done, busy, read, counts, image_r, shared,
                      issuer):
        """A conv or matmul stage on the shared issuer, engine and neuron array: its source
        reads, engine -> neuron feed (and, for the static first conv, the replay feeder).
        Returns its collector user."""
        a, T = self.artifact, self.T
        name, ident = node["name"], _ident(node["name"])
        widths = node["widths"]
        c_out = self.channels[name]
        P = self.lanes
        groups = -(-c_out // P)
        is_conv = node["op"] == "conv"
        src = node["inputs"][0]
        from_image = src == "input"
        static_replay = is_conv and from_image and not self.time_varying and T > 1
        in_max = int(self.bounds[src])

        # engine (shared by every conv and CSC matmul; a rank-factored one per stage) and the
        # shared neuron array
        if node["op"] == "matmul" and node["format"] == "lowrank":
            engine = RankFactoredEngine(
                node["in_features"], c_out, node["rank"], a.arrays[node["b_col_ptr"]],
                a.arrays[node["b_row_idx"]], a.arrays[node["b_values"]], a.arrays[node["a"]],
                in_max, widths["z"], widths["acc"], lanes=P)
            m.submodules[f"engine_{ident}"] = engine
        else:
            engine = shared.engine_user(sid, name)
        neuron = shared.neuron_user(sid, name)

        # geometry; the counters are the shared issuer's (`_Issuer`)
        h, wd = (node["height"], node["width"]) if is_conv else (1, self.N)
        positions = h * wd
        if is_conv:
            src_pos = (issuer.ny * wd + issuer.nx)[:bits_for(positions)]
        else:
            src_pos = issuer.token
        if from_image:
            addr = (issuer.step * positions + src_pos) if self.time_varying else src_pos
            m.d.comb += image_r.addr.eq(addr)       # only the first conv reads the image
            pixel_words = [image_r.data[c * self.pixel_bits:(c + 1) * self.pixel_bits]
                           for c in range(self.in_c)]
            word_counts, count_bits = pixel_words, self.pixel_bits
        else:
            read(sid, src, issuer.step * positions + src_pos)
            word_counts, count_bits = counts(src)

        # replay buffer for the static first conv: accumulators of t = 0, reused for t > 0
        if static_replay:
            replay_shape = lane_shape(signed(widths["acc"]), P)
            m.submodules[f"replay_{ident}"] = replay = Memory(
                shape=replay_shape, depth=groups, init=[],
                attrs=block_ram_attrs(replay_shape, groups))
            replay_w = replay.write_port()
            replay_r = replay.read_port()

        neuron_in = neuron.i
        # the step of the vector leaving the engine (the issue FSM may already be ahead)
        out_step = Signal(range(T), name=f"{ident}_out_step")
        engine_done = engine.o.valid & engine.o.ready & (_index(engine.o.payload) == groups - 1)
        with m.If(engine_done):
            m.d.sync += out_step.eq(Mux(out_step == T - 1, 0, out_step + 1))
        with m.If(start):
            m.d.sync += out_step.eq(0)
        if static_replay:
            # The feeder: step 0 of a position comes from the engine (its accumulators are also
            # kept in the replay memory), steps 1..T-1 from the replay memory, one per cycle,
            # while the issue FSM already walks the next position through the engine.
            replay_valid = Signal(name=f"{ident}_replay_valid")
            replay_k = Signal(range(groups), name=f"{ident}_replay_k")    # group on data
            replay_next = Signal(range(groups), name=f"{ident}_replay_next")
            replay_step = Signal(range(T), name=f"{ident}_replay_step")
            m.d.comb += [
                replay_w.addr.eq(_index(engine.o.payload)),
                *_copy_accs(replay_w.data, engine.o.payload.acc, P),
                replay_w.en.eq(engine.o.valid & engine.o.ready),
            ]
            with m.FSM(name=f"{ident}_feed"):
                with m.State("ENGINE"):
                    m.d.comb += [neuron_in.valid.eq(engine.o.valid),
                                 engine.o.ready.eq(neuron_in.ready),
                                 _index(neuron_in.payload).eq(_index(engine.o.payload)),
                                 *_copy_accs(neuron_in.payload.acc, engine.o.payload.acc, P),
                                 neuron_in.payload.first.eq(1)]
                    with m.If(engine_done):
                        m.d.sync += [replay_next.eq(0), replay_valid.eq(0), replay_step.eq(1)]
                        m.next = "REPLAY"
                with m.State("REPLAY"):
                    m.d.comb += [neuron_in.valid.eq(replay_valid),
                                 _index(neuron_in.payload).eq(replay_k),
                                 *_copy_accs(neuron_in.payload.acc, replay_r.data, P),
                                 neuron_in.payload.first.eq(0)]
                    advance = ~replay_valid | neuron_in.ready
                    with m.If(advance):
                        m.d.comb += replay_r.addr.eq(replay_next)
                        m.d.sync += [replay_valid.eq(1), replay_k.eq(replay_next),
                                     replay_next.eq(Mux(replay_next == groups - 1, 0,
                                                        replay_next + 1))]
                        with m.If(replay_valid & (replay_k == groups - 1)):
                            m.d.sync += replay_step.eq(replay_step + 1)
                            with m.If(replay_step == T - 1):
                                m.d.sync += replay_valid.eq(0)
                                m.next = "ENGINE"
                    with m.Else():
                        m.d.comb += replay_r.addr.eq(replay_k)     # hold the data
        else:
            m.d.comb += [neuron_in.valid.eq(engine.o.valid), engine.o.ready.eq(neuron_in.ready),
                         _index(neuron_in.payload).eq(_index(engine.o.payload)),
                         *_copy_accs(neuron_in.payload.acc, engine.o.payload.acc, P),
                         neuron_in.payload.first.eq(out_step == 0)]

        issuer.add(sid, SimpleNamespace(
            start=start, busy=busy, ev=engine.i, is_conv=is_conv, static_replay=static_replay,
            col_base=shared.col_base.get(name, 0),      # 0: a rank-factored engine of its own
            h=h, wd=wd, positions=positions, word_counts=word_counts, count_bits=count_bits))
        return SimpleNamespace(node=node, o=neuron.o, busy=busy, done=done, tokens_outer=True,
                               h=h, wd=wd)

    # ---- spike collector (one for all stages) ----------------------------------------------

    def _collector(self, m, active, users, mem_r, mem_w, read, run_cycles, trace_ready,
                   starting, store):
        """The one spike collector: the stages run one after the other, so they take turns on
        it (`users`: {stage id: SimpleNamespace(node, o, busy, done, tokens_outer, h, wd)}; the
        active stage's neuron output stream, constants and value memory are switched in).

        It gathers one spike per channel into a vector; a writer then stores it (OR-pooled for
        pooled convs) and traces it while the next vector is already being gathered; after the
        last vector the writer finishes the stage (plus the layer-cycles record).

        Vectors wider than `chunk` channels are gathered and written a chunk at a time (the
        value's lanes of that chunk are write-enabled; the chunk's bits are replicated across the
        value's word): the gather register is one chunk wide. A chunk that does not end its
        vector costs the writer one cycle (WRITE), far less than the next chunk takes to gather.

        The gather side always takes the neuron's outputs, except a chunk's last channel
        while the writer is still busy with the previous chunk (a vector's last chunk: 2 cycles,
        WRITE, TRACE; pooled 3 or 4: READ_OLD, MERGE, WRITE_POOLED and, for a cell's last
        position, TRACE). Returns the trace stream's (valid, payload)."""
        T = self.T
        names = {sid: u.node["name"] for sid, u in users.items()}
        P = self.lanes
        width = max(self.channels[n] for n in names.values())
        groups_of = {sid: -(-self.channels[n] // P) for sid, n in names.items()}
        tokens_of = {sid: u.h * u.wd for sid, u in users.items()}
        max_tokens = max(tokens_of.values())
        max_h = max(u.h for u in users.values())
        max_wd = max(u.wd for u in users.values())
        any_pool = any(u.node["op"] == "conv" and u.node["pool"] for u in users.values())

        # the active stage's constants and neuron output
        last_ch = Signal(range(max(groups_of.values())), name="col_last_channel")  # or group
        tok_last = Signal(range(max_tokens), name="col_last_token")
        wd_last = Signal(range(max_wd), name="col_last_x")
        tokens_outer = Signal(name="col_tokens_outer")
        pool = Signal(name="col_pool")
        n_index = Signal(8, name="col_node")
        o_valid, o_ready = Signal(name="col_valid"), Signal(name="col_ready")
        o_spike = Signal(P, name="col_spike")
        with m.Switch(active):
            for sid, u in users.items():
                name = names[sid]
                with m.Case(sid):
                    m.d.comb += [
                        last_ch.eq(groups_of[sid] - 1), tok_last.eq(tokens_of[sid] - 1),
                        wd_last.eq(u.wd - 1), tokens_outer.eq(u.tokens_outer),
                        pool.eq(u.node["op"] == "conv" and bool(u.node["pool"])),
                        n_index.eq(self.node_index[name]),
                        o_valid.eq(u.o.valid), u.o.ready.eq(o_ready),
                        o_spike.eq(u.o.payload.spike)]

        C = min(width, self.chunk)          # the gather register's width
        G = -(-C // P)                      # transfers (groups of P channels) per chunk
        chunks = -(-width // C)
        vec = Signal(C, name="col_vec")
        # transfers (channels, or groups of P) gathered of the vector, and the next one's place
        # in vec (its first bit: slot * P)
        got = Signal(range(max(groups_of.values()) + 1), name="col_got")
        slot = Signal(range(G), name="col_slot")
        g_chunk = Signal(range(chunks), name="col_chunk")   # the chunk being gathered
        # gather-side position of the vector being gathered
        c_step = Signal(range(T), name="col_step")
        c_tok = Signal(range(max_tokens + 1), name="col_tok")
        cy = Signal(range(max_h + 1), name="col_y")
        cx = Signal(range(max_wd), name="col_x")
        # writer-side copy: the vector being written and where
        w_step = Signal(range(T), name="col_w_step")
        w_tok = Signal(range(max_tokens + 1), name="col_w_tok")
        w_cy = Signal(range(max_h + 1), name="col_w_y")
        w_cx = Signal(range(max_wd), name="col_w_x")
        w_last = Signal(name="col_w_last")
        w_chunk = Signal(range(chunks), name="col_w_chunk")
        w_final = Signal(name="col_w_final")                # the vector's last chunk
        word = Signal(C, name="col_word")
        store.written = word        # every value write is this chunk, replicated
        trace_word = Signal(width, name="col_trace_word")   # the whole vector, for TRACE
        old = Signal(C, name="col_old")                     # a pooled cell's partial OR
        write = Signal(name="col_write")
        out_pos = Signal(16, name="col_out_pos")
        out_addr = Signal(range(max(T * self.positions[n] for n in names.values())),
                          name="col_out_addr")
        first_in_cell, last_in_cell = Signal(name="col_first_in_cell"), Signal(name="col_last_in_cell")
        with m.Switch(active):
            for sid, u in users.items():
                name = names[sid]
                with m.Case(sid):
                    if u.node["op"] == "conv" and u.node["pool"]:
                        pos = (w_cy >> 1) * (u.wd // 2) + (w_cx >> 1)
                        data, n = mem_r[name].data, -(-self.channels[name] // C)
                        if n > 1:       # the chunk being written
                            data = Cat(data, Const(0, n * C - len(data))).word_select(
                                w_chunk[:bits_for(n - 1)], C)
                        m.d.comb += [first_in_cell.eq((w_cy[0] == 0) & (w_cx[0] == 0)),
                                     last_in_cell.eq((w_cy[0] == 1) & (w_cx[0] == 1)),
                                     old.eq(data)]
                        read(sid, name, out_addr)
                    else:
                        pos = w_tok
                        m.d.comb += [first_in_cell.eq(1), last_in_cell.eq(1)]
                    m.d.comb += [out_pos.eq(pos),
                                 out_addr.eq(w_step * self.positions[name] + pos)]
                    wp, n_chunks = mem_w[name], len(mem_w[name].en)
                    m.d.comb += [wp.addr.eq(out_addr),
                                 wp.data.eq(Cat(*[word] * n_chunks)),
                                 wp.en.eq(Mux(write, Const(1, n_chunks) <<
                                              w_chunk[:bits_for(n_chunks - 1)], 0))]
        trace_valid = Signal(name="col_trace_valid")
        trace_payload = Signal(self.trace_layout, name="col_trace")

        def trace_chunk(k, bits):
            """trace_word's chunk k := bits."""
            with m.Switch(k):
                for i in range(chunks):
                    with m.Case(i):
                        n = min(C, width - i * C)
                        m.d.sync += trace_word[i * C:i * C + n].eq(bits[:n])

        def advance():
            with m.If(tokens_outer):
                with m.If(c_step == T - 1):
                    m.d.sync += c_step.eq(0)
                    m.d.sync += c_tok.eq(c_tok + 1)
                    with m.If(cx == wd_last):
                        m.d.sync += [cx.eq(0), cy.eq(cy + 1)]
                    with m.Else():
                        m.d.sync += cx.eq(cx + 1)
                with m.Else():
                    m.d.sync += c_step.eq(c_step + 1)
            with m.Else():
                with m.If(c_tok == tok_last):
                    m.d.sync += [c_tok.eq(0), c_step.eq(c_step + 1)]
                with m.Else():
                    m.d.sync += c_tok.eq(c_tok + 1)

        last_vector = (c_step == T - 1) & (c_tok == tok_last)
        writer_busy = Signal(name="col_writer_busy")
        last_channel = got == last_ch
        # `chunk_end` (the next output ends a chunk) is a register, computed from the next
        # got/slot, so that the ready path into the neuron array starts at registers: it is the
        # head of the chain neuron array -> feeder -> engine. `last_ch` follows `active` a cycle
        # late at a stage's start, long before the stage's first output.
        chunk_end = Signal(name="col_chunk_end")
        got_next, slot_next = Signal.like(got, name="col_got_next"), \
            Signal.like(slot, name="col_slot_next")
        handover = Signal(name="col_handover")              # a chunk goes to the writer
        m.d.comb += [o_ready.eq(~(chunk_end & writer_busy)),
                     handover.eq(o_valid & o_ready & chunk_end),
                     got_next.eq(got), slot_next.eq(slot)]
        with m.If(o_valid & o_ready):
            spike_vec = vec | (o_spike << (slot if P == 1 else slot * P))
            with m.If(chunk_end):
                m.d.comb += slot_next.eq(0)
                m.d.sync += [vec.eq(0), word.eq(spike_vec), w_chunk.eq(g_chunk),
                             w_final.eq(last_channel), w_step.eq(c_step), w_tok.eq(c_tok),
                             w_cy.eq(cy), w_cx.eq(cx), w_last.eq(last_vector)]
                with m.If(g_chunk == 0):    # the whole vector, for the trace
                    m.d.sync += trace_word.eq(spike_vec)
                with m.Else():
                    trace_chunk(g_chunk, spike_vec)
                with m.If(last_channel):
                    m.d.comb += got_next.eq(0)
                    m.d.sync += g_chunk.eq(0)
                    advance()
                with m.Else():
                    m.d.comb += got_next.eq(got + 1)
                    m.d.sync += g_chunk.eq(g_chunk + 1)
            with m.Else():
                m.d.comb += [got_next.eq(got + 1), slot_next.eq(slot + 1)]
                m.d.sync += vec.eq(spike_vec)
        with m.If(starting):
            m.d.comb += [got_next.eq(0), slot_next.eq(0)]
            m.d.sync += [vec.eq(0), g_chunk.eq(0), c_step.eq(0), c_tok.eq(0), cy.eq(0),
                         cx.eq(0)]
        m.d.sync += [got.eq(got_next), slot.eq(slot_next),
                     chunk_end.eq((got_next == last_ch) | (slot_next == G - 1))]

        with m.FSM(name="collector_write"):
            with m.State("IDLE"):
                with m.If(handover):
                    if any_pool:
                        with m.If(pool):
                            m.next = "READ_OLD"
                        with m.Else():
                            m.next = "WRITE"
                    else:
                        m.next = "WRITE"
            if any_pool:
                with m.State("READ_OLD"):
                    m.d.comb += writer_busy.eq(1)
                    m.next = "MERGE"
                with m.State("MERGE"):
                    m.d.comb += writer_busy.eq(1)
                    merged = Mux(first_in_cell, word, word | old)
                    m.d.sync += word.eq(merged)
                    trace_chunk(w_chunk, merged)
                    m.next = "WRITE_POOLED"
                with m.State("WRITE_POOLED"):
                    m.d.comb += [writer_busy.eq(1), write.eq(1)]
                    with m.If(w_final & last_in_cell):
                        m.next = "TRACE"
                    with m.Elif(w_final & w_last):
                        m.next = "CYCLES"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("WRITE"):
                m.d.comb += [writer_busy.eq(1), write.eq(1)]
                with m.If(w_final):
                    m.next = "TRACE"
                with m.Else():                  # more chunks of this vector to come
                    m.next = "IDLE"
            with m.State("TRACE"):
                m.d.comb += [writer_busy.eq(1), trace_valid.eq(1),
                             trace_payload.kind.eq(TRACE_SPIKES),
                             trace_payload.node.eq(n_index),
                             trace_payload.step.eq(w_step),
                             trace_payload.token.eq(out_pos),
                             trace_payload.data.eq(trace_word)]
                with m.If(trace_ready):
                    with m.If(w_last):
                        m.next = "CYCLES"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("CYCLES"):
                m.d.comb += [writer_busy.eq(1), trace_valid.eq(1),
                             trace_payload.kind.eq(TRACE_CYCLES),
                             trace_payload.node.eq(n_index),
                             trace_payload.data.eq(run_cycles)]
                with m.If(trace_ready):
                    with m.Switch(active):
                        for sid, u in users.items():
                            with m.Case(sid):
                                m.d.comb += u.done.eq(1)
                                m.d.sync += u.busy.eq(0)
                    m.next = "IDLE"
        return trace_valid, trace_payload

    # ---- attention stage --------------------------------------------------------------------

    def _attention_stage(self, m, sid, node, start, done, busy, run_cycles, mem_r, read,
                         shared):
        """The attention stage: Q/K/V row reader and SpikingAttention on the shared neuron
        array (time steps outer: tokens x channels membranes). Returns its collector user."""
        a, T, N = self.artifact, self.T, self.N
        name, ident = node["name"], _ident(node["name"])
        widths = node["widths"]
        dim = node["dim"]
        q_name, k_name, v_name = node["inputs"]
        P = self.lanes
        attention = SpikingAttention(N, dim, node["heads"], widths["kv"], widths["acc"],
                                     lanes=P)
        m.submodules[f"attention_{ident}"] = attention
        neuron = shared.neuron_user(sid, name)
        step = Signal(range(T), name=f"{ident}_step")
        token = Signal(range(N), name=f"{ident}_token")
        addr = step * N + token
        for src in (q_name, k_name, v_name):
            read(sid, src, addr)
        m.d.comb += [
            attention.i.payload.token.eq(token),
            attention.i.payload.q.eq(mem_r[q_name].data),
            attention.i.payload.k.eq(mem_r[k_name].data),
            attention.i.payload.v.eq(mem_r[v_name].data),
            neuron.i.valid.eq(attention.o.valid), attention.o.ready.eq(neuron.i.ready),
            neuron.i.payload.token.eq(attention.o.payload.token),
            _index(neuron.i.payload).eq(_index(attention.o.payload)),
            *_copy_accs(neuron.i.payload.acc, attention.o.payload.acc, P),
        ]
        out_step = Signal(range(T), name=f"{ident}_out_step")
        m.d.comb += neuron.i.payload.first.eq(out_step == 0)
        # which step the attention block is emitting: advance after its last count
        with m.If(attention.o.valid & attention.o.ready & (attention.o.payload.token == N - 1)
                  & (_index(attention.o.payload) == dim // P - 1)):
            m.d.sync += out_step.eq(out_step + 1)
        with m.FSM(name=f"{ident}_issue"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [step.eq(0), token.eq(0), out_step.eq(0), busy.eq(1),
                                 run_cycles.eq(1)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += attention.i.valid.eq(1)
                with m.If(attention.i.ready):
                    with m.If(token == N - 1):
                        m.d.sync += token.eq(0)
                        with m.If(step == T - 1):
                            m.next = "DRAIN"
                        with m.Else():
                            m.d.sync += step.eq(step + 1)
                            m.next = "FETCH"
                    with m.Else():
                        m.d.sync += token.eq(token + 1)
                        m.next = "FETCH"
            with m.State("DRAIN"):
                with m.If(~busy):
                    m.next = "IDLE"
        return SimpleNamespace(node=node, o=neuron.o, busy=busy, done=done, tokens_outer=False,
                               h=1, wd=N)

    # ---- head -------------------------------------------------------------------------------

    def _head_stage(self, m, sid, start, done, read, counts):
        a, T, N = self.artifact, self.T, self.N
        node = self.head
        src = node["inputs"][0]
        dim = node["in_features"]
        fbits = node["widths"]["feature"]
        lbits = self.logit_bits
        w = a.arrays[node["weight"]]
        bias = a.arrays[node["bias"]]
        wbits = signed_bits(int(w.min()), int(w.max()))
        # P lanes: P features of a class per cycle (one word of P weights, P multipliers)
        P = self.lanes
        D = -(-dim // P)                    # MAC cycles per class
        if P == 1:
            w_shape, w_init = signed(wbits), [int(v) for v in w.reshape(-1)]
        else:
            wp = np.zeros((self.classes, D * P), dtype=np.int64)
            wp[:, :dim] = w
            w_shape = data.ArrayLayout(signed(wbits), P)
            w_init = [[int(v) for v in wp[k, g * P:(g + 1) * P]]
                      for k in range(self.classes) for g in range(D)]
        m.submodules.head_weights = weights = Memory(
            shape=w_shape, depth=self.classes * D, init=w_init,
            attrs=block_ram_attrs(w_shape, self.classes * D))
        w_r = weights.read_port()
        features = [Signal(signed(fbits), name=f"feature_{c}") for c in range(dim)]
        best, best_cls = Signal(signed(lbits)), Signal(8)
        step = Signal(range(T))
        token = Signal(range(N))
        k = Signal(range(self.classes + 1))
        c = Signal(range(D + 1))
        acc = Signal(signed(lbits))
        read(sid, src, step * N + token)
        word_counts, _ = counts(src)
        # SUM: one (step, token) word read per cycle, added the cycle after (read latency 1).
        # MAC: one weight read per cycle over k * dim + c, multiplied and added the cycle after;
        # a class's first product starts from its bias, its last one puts the logit on the
        # `logits` stream (one register: a class's last product is not issued while the
        # previous logit still waits there, which with a ready consumer never happens).
        summing = Signal(name="head_summing")           # a read was issued last cycle
        i = Signal(range(self.classes * D + 1), name="head_index")
        mac_valid = Signal(name="head_mac_valid")       # w_r.data holds W[mac_k, mac_c]
        mac_k = Signal(range(self.classes), name="head_mac_k")
        mac_c = Signal(range(D), name="head_mac_c")
        m.d.comb += w_r.addr.eq(i)
        logit_valid = Signal(name="head_logit_valid")
        m.d.comb += self.logits.valid.eq(logit_valid)
        with m.If(self.logits.ready):
            m.d.sync += logit_valid.eq(0)
        with m.If(summing):
            m.d.sync += [f.eq(f + cnt) for f, cnt in zip(features, word_counts)]
        # lane l multiplies feature mac_c * P + l (0 past the last feature)
        lane_features = [Signal(signed(fbits), name="head_feature" if P == 1 else
                                f"head_feature{l}") for l in range(P)]
        with m.Switch(mac_c):
            for g in range(D):
                with m.Case(g):
                    m.d.comb += [lane_features[l].eq(features[g * P + l])
                                 for l in range(P) if g * P + l < dim]
        # three registered steps per product (timing: mux + multiply | add | compare)
        products = [Signal(signed(lbits), name="head_product" if P == 1 else
                           f"head_product{l}") for l in range(P)]
        p_valid = Signal(name="head_p_valid")
        p_k = Signal(range(self.classes), name="head_p_k")
        p_c = Signal(range(D), name="head_p_c")
        m.d.sync += [products[l].eq(lane_of(w_r.data, l, P) * lane_features[l])
                     for l in range(P)]
        m.d.sync += [p_valid.eq(mac_valid), p_k.eq(mac_k), p_c.eq(mac_c)]
        product = products[0] if P == 1 else tree_sum(products)
        p_bias = Signal(signed(lbits), name="head_bias_p")
        with m.Switch(p_k):
            for ki in range(self.classes):
                with m.Case(ki):
                    m.d.comb += p_bias.eq(int(bias[ki]))
        total = Signal(signed(lbits), name="head_total")
        m.d.comb += total.eq(Mux(p_c == 0, p_bias, acc) + product)
        stored = Signal(name="head_stored")             # a logit was stored last cycle
        stored_k = Signal(range(self.classes), name="head_stored_k")
        m.d.sync += [stored.eq(p_valid & (p_c == D - 1)), stored_k.eq(p_k)]
        with m.If(p_valid):
            m.d.sync += acc.eq(total)
            with m.If(p_c == D - 1):
                m.d.sync += [self.logits.payload.eq(total), logit_valid.eq(1)]
        with m.If(stored & ((stored_k == 0) | (acc > best))):
            m.d.sync += [best.eq(acc), best_cls.eq(stored_k)]
        m.d.sync += [summing.eq(0), mac_valid.eq(0)]
        with m.FSM(name="head"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [step.eq(0), token.eq(0)] + [f.eq(0) for f in features]
                    m.next = "SUM"
            with m.State("SUM"):
                m.d.sync += summing.eq(1)
                with m.If(token == N - 1):
                    m.d.sync += token.eq(0)
                    with m.If(step == T - 1):
                        m.d.sync += [i.eq(0), k.eq(0), c.eq(0)]
                        m.next = "MAC"
                    with m.Else():
                        m.d.sync += step.eq(step + 1)
                with m.Else():
                    m.d.sync += token.eq(token + 1)
            with m.State("MAC"):
                # the last SUM lands in this state's first cycle; the first product in the next
                with m.If((c != D - 1) | ~logit_valid | self.logits.ready):
                    m.d.sync += [mac_valid.eq(1), mac_k.eq(k), mac_c.eq(c), i.eq(i + 1)]
                    with m.If(c == D - 1):
                        m.d.sync += [c.eq(0), k.eq(k + 1)]
                        with m.If(k == self.classes - 1):
                            m.next = "LAST"
                    with m.Else():
                        m.d.sync += c.eq(c + 1)
            with m.State("LAST"):
                m.next = "LAST_ADD"      # the last product is registered in this cycle
            with m.State("LAST_ADD"):
                m.next = "LAST_CMP"      # ... added and stored as a logit in this one
            with m.State("LAST_CMP"):
                m.next = "DONE"          # ... compared with the best (and on `logits`) here
            with m.State("DONE"):
                with m.If(~logit_valid):  # the last logit has been taken
                    m.d.comb += done.eq(1)
                    m.next = "IDLE"
        return best_cls


class _Issuer:
    """The one issue FSM of every conv and matmul stage: the stages run one after the other, so
    they take turns on it (`add` registers a stage; the active one's constants, source word and
    engine stream are switched in, as for the collector).

    Loop order tokens outer, time steps inner, the nine taps innermost for a conv. Per
    (token, step, tap): FETCH (the source read's address is valid; a conv tap outside the image
    ends here), then per chunk of `chunk` input channels LOAD_MASK (the chunk's non-zero
    channels into `mask`) and EMIT (one event per set bit, lowest first: isolated as
    mask & -mask, a carry chain, and encoded by OR trees of log depth; one more cycle when the
    mask is empty), then after the last tap END (the end marker) and NEXT. Chunks keep the
    mask, its carry chain and the encoders `chunk` wide, not as wide as the widest
    value (an MLP's hidden layer); the source word stays on the read port meanwhile. A static
    first conv issues step 0 only (its feeder replays the others). hw/cycles.py models it
    cycle for cycle.
    """

    def __init__(self, acc: "Accelerator", nodes: list[dict]):
        self.acc, self.specs = acc, {}
        conv = [n for n in nodes if n["op"] == "conv"]
        h = max([n["height"] for n in conv], default=1)
        wd = max([n["width"] for n in conv] + [acc.N])
        positions = max([n["height"] * n["width"] for n in conv] + [acc.N])
        self.token = Signal(range(positions), name="issue_token")
        self.step = Signal(range(acc.T), name="issue_step")
        self.y = Signal(range(h), name="issue_y")
        self.x = Signal(range(wd), name="issue_x")
        self.tap = Signal(range(10), name="issue_tap")
        self.ny = Signal(signed(bits_for(h) + 2), name="issue_ny")
        self.nx = Signal(signed(bits_for(wd) + 2), name="issue_nx")

    def add(self, sid: int, spec: SimpleNamespace) -> None:
        self.specs[sid] = spec

    def build(self, m: Module, active: Signal, run_cycles: Signal) -> None:
        if not self.specs:
            return
        T, specs, CHUNK = self.acc.T, self.specs, self.acc.chunk
        token, step, y, x, tap, ny, nx = (self.token, self.step, self.y, self.x, self.tap,
                                          self.ny, self.nx)
        widest = max(max(len(s.word_counts) for s in specs.values()), 1)
        n_mask = min(widest, CHUNK)
        chunks = -(-widest // n_mask)
        count_bits = max(s.count_bits for s in specs.values())
        chunk = Signal(range(chunks), name="issue_chunk")
        col_base = Signal(range(max(s.col_base for s in specs.values()) + 1),
                          name="issue_col_base")
        chunk_last = Signal.like(chunk, name="chunk_last")

        def chunked(values, width):
            """The current chunk of a stage's per-channel values (n_mask of them)."""
            n = -(-len(values) // n_mask)
            padded = [v for v in values] + [Const(0, width)] * (n * n_mask - len(values))
            if n == 1:
                return padded
            word = Cat(*padded).word_select(chunk[:bits_for(n - 1)], n_mask * width)
            return [word[i * width:(i + 1) * width] for i in range(n_mask)]

        # the active stage's constants and source word
        is_conv, replay = Signal(name="issue_is_conv"), Signal(name="issue_replay")
        tok_last = Signal.like(token, name="issue_token_last")
        x_last = Signal.like(x, name="issue_x_last")
        h = Signal(len(y) + 1, name="issue_h")
        wd = Signal(len(x) + 1, name="issue_wd")
        nonzero = Signal(n_mask, name="issue_nonzero")
        busy, ev_ready = Signal(name="issue_stage_busy"), Signal(name="issue_ev_ready")
        mask = Signal(n_mask, name="issue_mask")
        lowest = Signal(n_mask, name="issue_lowest")
        low_count = Signal(count_bits, name="issue_low_count")
        m.d.comb += low_count.eq(1)
        with m.Switch(active):
            for sid, s in specs.items():
                with m.Case(sid):
                    m.d.comb += [is_conv.eq(s.is_conv), replay.eq(s.static_replay),
                                 tok_last.eq(s.positions - 1), x_last.eq(s.wd - 1),
                                 h.eq(s.h), wd.eq(s.wd),
                                 chunk_last.eq(-(-len(s.word_counts) // n_mask) - 1),
                                 col_base.eq(s.col_base),
                                 nonzero.eq(Cat(*chunked([c != 0 for c in s.word_counts], 1))),
                                 busy.eq(s.busy), ev_ready.eq(s.ev.ready)]
                    if s.count_bits > 1:    # a mask bit is set only where the count is 1
                        m.d.comb += low_count.eq(_or_all(
                            [c & lowest[i].replicate(s.count_bits)
                             for i, c in enumerate(chunked(s.word_counts, s.count_bits))]))

        dy, dx = Signal(signed(3), name="issue_dy"), Signal(signed(3), name="issue_dx")
        inside = Signal(name="issue_inside")
        with m.Switch(tap):
            for k in range(9):
                with m.Case(k):
                    m.d.comb += [dy.eq(k // 3 - 1), dx.eq(k % 3 - 1)]
        m.d.comb += [ny.eq(y + dy), nx.eq(x + dx),
                     inside.eq((ny >= 0) & (ny < h) & (nx >= 0) & (nx < wd))]

        # event emitter: `lowest` is the lowest set bit of `mask` (x & -x, a carry chain), kept
        # in a register beside it, so the chain sits between registers, not in the event path

        def set_mask(value):
            rest = Signal(n_mask, name="issue_mask_next")
            m.d.comb += rest.eq(value)
            m.d.sync += [mask.eq(rest), lowest.eq(rest & (~rest + 1))]
        # The event's engine column: a base (the stage's first engine column, plus the chunk's
        # first channel and, for a conv, * 9 + tap), registered a cycle ahead of EMIT (tap,
        # chunk and stage change at least a cycle before it), plus the lowest set bit's index
        # (* 9 for a conv): an OR of constants, so one adder sits between mask and engine.
        max_index = max(s.col_base + (9 if s.is_conv else 1) * len(s.word_counts)
                        for s in specs.values())
        index_base = Signal(range(max_index + 1), name="issue_index_base")
        low_scaled = Signal(range(max(9 * n_mask, 2)), name="issue_low_scaled")
        width = len(low_scaled)
        m.d.comb += low_scaled.eq(_or_all(
            [Mux(is_conv, Const(9 * c, width), Const(c, width)) & lowest[c].replicate(width)
             for c in range(1, n_mask)]))
        m.d.sync += index_base.eq(col_base + Mux(is_conv, chunk * (9 * n_mask) + tap,
                                                 chunk * n_mask))
        ev_valid, ev_end = Signal(name="issue_ev_valid"), Signal(name="issue_ev_end")
        ev_index = Signal(bits_for(max_index), name="issue_ev_index")
        for sid, s in specs.items():
            m.d.comb += [s.ev.valid.eq(ev_valid & (active == sid)),
                         s.ev.payload.index.eq(ev_index), s.ev.payload.count.eq(low_count),
                         s.ev.payload.end.eq(ev_end)]

        start = _or_all([s.start for s in specs.values()])

        def begin():
            m.d.sync += [token.eq(0), step.eq(0), y.eq(0), x.eq(0), tap.eq(0), chunk.eq(0),
                         run_cycles.eq(1)]
            for s in specs.values():
                with m.If(s.start):
                    m.d.sync += s.busy.eq(1)
            m.next = "FETCH"

        def next_tap():
            with m.If(tap == 8):
                m.next = "END"
            with m.Else():
                m.d.sync += tap.eq(tap + 1)
                m.next = "FETCH"

        with m.FSM(name="issue"):
            with m.State("IDLE"):
                with m.If(start):
                    begin()
            with m.State("FETCH"):
                # the read address is valid this cycle; data arrives next cycle
                m.next = "LOAD_MASK"
                with m.If(is_conv & ~inside):   # a tap outside the image: 1 cycle, not 3
                    next_tap()
            with m.State("LOAD_MASK"):
                set_mask(nonzero)
                m.next = "EMIT"
            with m.State("EMIT"):
                # the read address is held, so the source word stays valid while emitting
                with m.If(mask != 0):
                    m.d.comb += [ev_valid.eq(1), ev_index.eq(index_base + low_scaled)]
                    with m.If(ev_ready):
                        set_mask(mask & ~lowest)
                with m.Elif(chunk != chunk_last):       # the next chunk of the same word
                    m.d.sync += chunk.eq(chunk + 1)
                    m.next = "LOAD_MASK"
                with m.Else():
                    m.d.sync += chunk.eq(0)
                    with m.If(is_conv):
                        next_tap()
                    with m.Else():
                        m.next = "END"
            with m.State("END"):
                m.d.comb += [ev_valid.eq(1), ev_end.eq(1)]
                with m.If(ev_ready):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += tap.eq(0)
                with m.If((step == T - 1) | replay):
                    m.d.sync += step.eq(0)
                    with m.If(token == tok_last):
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += token.eq(token + 1)
                        with m.If(x == x_last):
                            m.d.sync += [x.eq(0), y.eq(y + 1)]
                        with m.Else():
                            m.d.sync += x.eq(x + 1)
                        m.next = "FETCH"
                with m.Else():
                    m.d.sync += step.eq(step + 1)
                    m.next = "FETCH"
            with m.State("DRAIN"):
                # the collector ends the stage; the next one may start in that very cycle
                with m.If(start):
                    begin()
                with m.Elif(~busy):
                    m.next = "IDLE"


class _ValueStore:
    """Where the values (neuron outputs) live: one wide bank for most, own memories for some.

    While the stages are built they see per-value proxies: ``r[v].data`` (read data, one cycle
    after the address) and ``w[v]`` (``addr``, ``data``, ``en``), and register each read with
    `read(stage, value, addr)`. `build` then places the values. Small values in memories of
    their own waste most of each block RAM (a 64 x 32 value fills a quarter of two iCE40
    EBRs), so they share one bank whose word is as wide as the widest group of values read
    together (a residual's sources; attention's Q, K, V): each group sits at one base address
    in lanes side by side, so one bank read serves the whole group, and groups are packed into
    the lanes first-fit (widest first). The write port has one enable per lane (granularity:
    the gcd of the widths), so writing one value leaves its neighbours alone. A value that its
    own stage reads back at another address than the stage's input (a pooled conv's partial
    OR) keeps a memory of its own, since the bank has one read port. Timing is that of
    separate memories: one read and one write per cycle, read data one cycle later.
    """

    def __init__(self, acc: "Accelerator"):
        self.acc = acc
        self.r, self.w, self.reads, self.depth = {}, {}, {}, {}
        self.written = None          # the collector's chunk register (set by the collector)
        for node in acc.stages:
            name, ident = node["name"], _ident(node["name"])
            width, depth = acc.channels[name], acc.T * acc.positions[name]
            self.depth[name] = depth
            self.r[name] = SimpleNamespace(data=Signal(width, name=f"{ident}_rdata"))
            # one write enable per chunk of the value (the collector writes a chunk at a time)
            self.w[name] = SimpleNamespace(addr=Signal(range(depth), name=f"{ident}_waddr"),
                                           data=Signal(width, name=f"{ident}_wdata"),
                                           en=Signal(-(-width // acc.chunk), name=f"{ident}_wen"))

    def read(self, stage_id: int, value: str, addr) -> None:
        """Read `value` (every memory behind it) at `addr` while stage `stage_id` runs."""
        for src in self.acc.sources[value]:
            self.reads.setdefault(stage_id, {})[src] = addr

    def plan(self) -> tuple[dict, dict, int, int]:
        """({value: (base, lane offset)} of the bank, {stage: base}, bank width, granularity);
        values not in the first dict get memories of their own."""
        widths = self.acc.channels
        own = set()
        names = {sid: node["name"] for sid, node in enumerate(self.acc.stages, start=1)}
        for sid, per in self.reads.items():
            by_addr = {}
            for src, addr in per.items():
                by_addr.setdefault(id(addr), []).append(src)
            if len(by_addr) > 1:        # read back at a second address: its own memory
                extra = [srcs for srcs in by_addr.values() if names.get(sid) in srcs]
                for srcs in extra or list(by_addr.values())[1:]:
                    own.update(srcs)
        banked = [v for v in widths if v not in own]
        # groups: values some stage reads together (union-find over each stage's reads)
        parent = {v: v for v in banked}

        def find(v):
            while parent[v] != v:
                parent[v] = parent[parent[v]]
                v = parent[v]
            return v
        for per in self.reads.values():
            together = [src for src in per if src in parent]
            for other in together[1:]:
                parent[find(other)] = find(together[0])
        groups = {}
        for v in banked:
            groups.setdefault(find(v), []).append(v)
        if not groups:
            return {}, {}, 0, 0
        group_width = {g: sum(widths[v] for v in vs) for g, vs in groups.items()}
        width = max(group_width.values())
        bins = []                       # [lanes used, depth, [groups]]
        for g in sorted(groups, key=lambda g: (-group_width[g], g)):
            depth = max(self.depth[v] for v in groups[g])
            for b in bins:
                if b[0] + group_width[g] <= width:
                    break
            else:
                b = [0, 0, []]
                bins.append(b)
            b[2].append((g, b[0]))
            b[0] += group_width[g]
            b[1] = max(b[1], depth)
        place, base = {}, 0
        for used, depth, members in bins:
            for g, lane in members:
                for v in groups[g]:
                    place[v] = (base, lane)
                    lane += widths[v]
            base += depth
        stage_base = {}
        for sid, per in self.reads.items():
            bases = {place[src][0] for src in per if src in place}
            if len(bases) > 1:
                raise AssertionError(f"stage {sid} reads the value bank at two bases")
            if bases:
                stage_base[sid] = bases.pop()
        chunked = [self.acc.chunk] if any(widths[v] > self.acc.chunk for v in place) else []
        granularity = int(np.gcd.reduce([widths[v] for v in place] + chunked))
        return place, stage_base, width, granularity

    def _lane_enables(self, value: str, granularity: int):
        """The write enables of `value`'s granules (granularity bits each), from its per-chunk
        enables."""
        width, chunk, en = self.acc.channels[value], self.acc.chunk, self.w[value].en
        return Cat(*[en[k].replicate((min(chunk, width - k * chunk)) // granularity)
                     for k in range(len(en))])

    def build(self, m: Module, active: Signal) -> None:
        acc, widths = self.acc, self.acc.channels
        place, stage_base, width, granularity = self.plan()
        if place:
            depth = max(base + self.depth[v] for v, (base, _) in place.items())
            shape = unsigned(width)
            m.submodules.values = bank = Memory(shape=shape, depth=depth, init=[],
                                                attrs=block_ram_attrs(shape, depth))
            bank_w = bank.write_port(granularity=granularity)
            bank_r = bank.read_port()
            # A value's write data is the collector's chunk replicated; when every lane starts
            # at a multiple of the chunk, one replicated word serves all of them (no lane mux).
            word = self.written
            aligned = all(lane % len(word) == 0 for _, lane in place.values())
            if aligned:
                m.d.comb += bank_w.data.eq(Cat(*[word] * -(-width // len(word)))[:width])
            for v, (base, lane) in place.items():
                w = self.w[v]
                m.d.comb += self.r[v].data.eq(bank_r.data[lane:lane + widths[v]])
                with m.If(w.en.any()):
                    m.d.comb += [bank_w.addr.eq(base + w.addr),
                                 bank_w.en.eq(self._lane_enables(v, granularity)
                                              << (lane // granularity))]
                    if not aligned:
                        m.d.comb += bank_w.data.eq(w.data << lane)
            with m.Switch(active):
                for sid, per in self.reads.items():
                    addrs = [addr for src, addr in per.items() if src in place]
                    if addrs:
                        with m.Case(sid):
                            m.d.comb += bank_r.addr.eq(stage_base[sid] + addrs[0])
        for v in widths:
            if v in place:
                continue
            shape, depth = unsigned(widths[v]), self.depth[v]
            mem = Memory(shape=shape, depth=depth, init=[], attrs=block_ram_attrs(shape, depth))
            m.submodules[f"value_{_ident(v)}"] = mem
            w = self.w[v]
            granularity = int(np.gcd(widths[v], self.acc.chunk)) if len(w.en) > 1 else widths[v]
            wp, rp = mem.write_port(granularity=granularity), mem.read_port()
            m.d.comb += [wp.addr.eq(w.addr), wp.data.eq(w.data),
                         wp.en.eq(self._lane_enables(v, granularity)),
                         self.r[v].data.eq(rp.data)]
            with m.Switch(active):
                for sid, per in self.reads.items():
                    if v in per:
                        with m.Case(sid):
                            m.d.comb += rp.addr.eq(per[v])


class _SharedUnits:
    """One SparseMatmulEngine for every conv and CSC matmul, one SlifNeuronArray for every
    stage (attention too): the stages run one after the other, so they take turns on them.

    The engine holds all those matrices side by side (stage s's column j is column
    ``col_base[s] + j``; each stage drains its own ``rows``); the neuron array holds every
    stage's per-channel constants one after the other (stage s's channel c is ``base[s] + c``)
    and one membrane per global channel (a stage's membranes live only across the time steps of
    one token, so reuse needs no clearing: ``first`` takes the membrane as 0). Each stage talks to
    its own proxy streams in its local numbering; `connect` joins the active stage's proxies to
    the shared units. Timing is the unshared design's, cycle for cycle (hw/cycles.py).
    """

    def __init__(self, acc: "Accelerator", loadable: bool = False):
        a, P = acc.artifact, acc.lanes
        self.lanes = P
        self.col_base, self.rows, self.channel_base = {}, {}, {}
        ptrs, idxs, vals, cols, in_max, acc_width = [], [], [], 0, 1, 1
        bias, threshold, leak, channels = [], [], [], 0
        membrane_width = product_width = 1
        # attention stages (time steps outer: one membrane per token and channel) need
        # per_token membranes per token (token_stride below); their constants go last
        order = [n for n in acc.stages if n["op"] != "attention"] + \
            [n for n in acc.stages if n["op"] == "attention"]
        # With P lanes every stage's channels start at a group boundary: its constants are
        # padded to whole groups (bias 0, threshold 1, leak 0: a padding channel never fires).
        def padded(c):
            return -(-c // P) * P
        per_token = max([padded(acc.channels[n["name"]]) for n in order
                         if n["op"] == "attention"], default=0)
        for node in order:
            name, widths, c_out = node["name"], node["widths"], acc.channels[node["name"]]
            acc_width = max(acc_width, widths["acc"])
            membrane_width = max(membrane_width, widths["membrane"])
            product_width = max(product_width, widths["product"])
            self.channel_base[name] = channels
            channels += padded(c_out)
            pad = padded(c_out) - c_out
            bias.append(np.concatenate([a.arrays[node["bias"]], np.zeros(pad, np.int64)]))
            threshold.append(np.concatenate([a.arrays[node["threshold"]],
                                             np.ones(pad, np.int64)]))
            leak.append(np.concatenate([a.arrays[node["leak"]], np.zeros(pad, np.int64)]))
            if node["op"] == "attention" or (node["op"] == "matmul" and
                                             node["format"] == "lowrank"):
                continue
            if node["op"] == "conv":
                ptr, idx, val = conv_columns(node, a.arrays[node["weight"]])
            else:
                ptr, idx, val = (a.arrays[node[k]] for k in ("col_ptr", "row_idx", "values"))
            self.col_base[name], self.rows[name] = cols, c_out
            nnz = sum(len(v) for v in vals)
            ptrs.append(np.asarray(ptr[:-1], np.int64) + nnz)
            idxs.append(np.asarray(idx, np.int64))
            vals.append(np.asarray(val, np.int64))
            cols += len(ptr) - 1
            in_max = max(in_max, int(acc.bounds[node["inputs"][0]]))
        self.engine = None
        if self.col_base:
            nnz = sum(len(v) for v in vals)
            col_ptr = np.concatenate(ptrs + [np.asarray([nnz], np.int64)])
            row_idx, values = np.concatenate(idxs), np.concatenate(vals)
            rows = max(self.rows.values())
            # the side-by-side matrix's partial sums bound every stage's: one width for all
            acc_width = max(acc_width, signed_bits(*acc_range(
                dense_from_csc(col_ptr, row_idx, values, rows, cols), in_max)))
            self.engine = SparseMatmulEngine(cols, rows, col_ptr, row_idx, values, in_max,
                                             acc_width, variable_rows=True, overlap=True,
                                             loadable=loadable, lanes=P)
        # Membranes are reused from stage to stage (a stage's membranes live only while it
        # runs; `first` takes them as 0): neuron (token, local channel c) of a stage sits at
        # token * stride + c, conv/matmul stages at token 0, attention stages at every token
        # with stride = all attention channels. Their constants stay at base + c.
        cat = np.concatenate
        widest = max([padded(acc.channels[n["name"]]) for n in order
                      if n["op"] != "attention"], default=P)
        self.neurons = SlifNeuronArray(channels, acc.N if per_token else 1, cat(bias),
                                       cat(threshold), cat(leak), a.frac_bits, a.leak_bits,
                                       acc_width, membrane_width, product_width,
                                       token_stride=per_token or None,
                                       membranes=max(acc.N * per_token, widest) // P,
                                       loadable=loadable, hazard_check=False, lanes=P)
        self._engine_users, self._neuron_users = {}, {}

    def engine_user(self, sid: int, name: str) -> SimpleNamespace:
        """Proxy streams ``i`` (events, local column index) and ``o`` (results) for stage `sid`."""
        ident = _ident(name)
        user = SimpleNamespace(
            i=stream.Signature(self.engine.event_layout).create(path=(f"{ident}_events",)),
            o=stream.Signature(self.engine.result_layout).create(path=(f"{ident}_results",)))
        self._engine_users[sid] = (name, user)
        return user

    def neuron_user(self, sid: int, name: str) -> SimpleNamespace:
        """Proxy streams ``i`` (updates) and ``o`` (spikes), channels local to stage `sid`."""
        ident = _ident(name)
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
                        _index(n.i.payload).eq(_index(u.i.payload) + base),
                        n.i.payload.slot.eq(_index(u.i.payload)),
                        u.o.valid.eq(n.o.valid), n.o.ready.eq(u.o.ready),
                        u.o.payload.eq(n.o.payload),
                        _index(u.o.payload).eq(_index(n.o.payload) - base),
                    ]


def _or_all(values):
    """OR of a list of values as a balanced tree (0 for an empty list)."""
    values = list(values)
    if not values:
        return Const(0, 1)
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def _index(payload):
    """A result's row or an update's channel (one lane), or its group (P lanes)."""
    members = payload.shape().members
    return next(getattr(payload, f) for f in ("channel", "row", "group") if f in members)


def _copy_accs(dst, src, lanes: int) -> list:
    """dst.eq(src) for accumulators of one lane (signed values) or P lanes (arrays whose
    element widths may differ: copied element by element, each sign-extended)."""
    return [lane_of(dst, p, lanes).eq(lane_of(src, p, lanes)) for p in range(lanes)]


def _ident(name: str) -> str:
    return name.replace(".", "_")
