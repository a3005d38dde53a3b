# amaranth: UnusedElaboratable=no
# (built in __init__, elaborated with the accelerator)
"""The accelerator's top: ports, the image memory, the stage sequencer (see `Accelerator`)."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw.accelerator.collector import CollectedStage, SpikeCollector
from hw.accelerator.issue import IssuedStage, IssueFSM
from hw.accelerator.shared import SharedUnits
from hw.accelerator.head import Head
from hw.accelerator.stages import attention_stage, engine_stage
from hw.accelerator.store import ValueStore
from hw.accelerator.util import or_all, verilog_name
from hw.components import block_ram_attrs, packed_words
from hw.plan import CYCLE_BITS, TRACE_KINDS, Plan
from model.ir import INPUT, Graph

__all__ = ["Accelerator", "TRACE_SPIKES", "TRACE_CYCLES"]

TRACE_SPIKES = TRACE_KINDS["spikes"]
TRACE_CYCLES = TRACE_KINDS["cycles"]


class Accelerator(wiring.Component):
    """Pixels in, logits and class out; optional trace of every spike vector (docs/HARDWARE.md).

    Parameters
    ----------
    artifact : model.ir.Graph
        A loaded (validated) integer model.
    trace : bool
        Add the ``trace`` port.
    lanes : int
        Parallel lanes P (default 1): every unit handles P output channels side by side (the
        shared engine walks P stored weights per cycle, on P free walkers or P row lanes as
        `engine` says; the neuron array updates, the collector gathers, attention counts and
        the head multiplies P at a time). Every layer needs at least 3 groups of P channels,
        attention heads a multiple of P channels; ``loadable`` takes one lane only.
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
    engine : str
        The shared engine's organisation (hw.plan.ENGINES): "rows" or "walkers" (P free walkers,
        each event to the first free one); by default "rows" on one lane, "walkers" on more.
    """

    def __init__(self, artifact: Graph, trace: bool = False, lanes: int = 1,
                 loadable: bool = False, chunk: int | None = None, engine: str | None = None):
        self.plan = plan = Plan.build(artifact, lanes, chunk, loadable, engine)
        chunk, lanes = plan.chunk, plan.lanes
        self.artifact, self.trace_enabled, self.lanes = artifact, trace, lanes
        self.chunk = chunk
        man = artifact.model
        self.T, self.N = man.timesteps, man.tokens
        self.time_varying = bool(man.time_varying_input)
        self.in_c, self.in_h, self.in_w = man.input_shape
        self.pixel_bits = artifact.pixel_bits
        self.sources = artifact.value_sources
        self.stages = artifact.neurons
        self.node_index = {n.name: i for i, n in enumerate(artifact.nodes)}
        self.head = artifact.head
        self.classes = self.head.classes
        self.logit_bits = self.head.widths["logit"]
        self.channels = {n.name: n.channels for n in self.stages}
        self.trace_bits = max(self.channels.values())
        self.trace_layout = data.StructLayout(plan.trace_layout)
        self.result_layout = data.StructLayout({"cls": 8, "cycles": CYCLE_BITS})
        members = {
            "pixels": In(stream.Signature(unsigned(self.pixel_bits))),
            "logits": Out(stream.Signature(signed(self.logit_bits))),
            "result": Out(stream.Signature(self.result_layout)),
        }
        if trace:
            members["trace"] = Out(stream.Signature(self.trace_layout))
        self.loadable = bool(loadable)
        self._shared = SharedUnits(self, self.loadable)
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

    def _count_bits(self, value: str) -> int:
        return bits_for(len(self.sources[value]))

    # ---- elaboration ---------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        stage_count = len(self.stages)
        active = Signal(range(stage_count + 3))      # 0 = load, 1..n stages, n+1 head, n+2 out
        cycles = Signal(CYCLE_BITS)
        running = Signal()
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)
        loader = self._image_memory(m)
        run = self._stages(m, active, loader.image_r)
        self._sequencer(m, active, cycles, running, loader, run)
        return m

    def _image_memory(self, m) -> SimpleNamespace:
        """The input image memory: one word per (step,) position, Cin pixels per word, and the
        loader's counters (order (t,) c, y, x)."""
        T = self.T
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

        return SimpleNamespace(image_w=image_w, image_r=image_r, load_count=load_count,
                               load_c=load_c, load_pos=load_pos, load_t=load_t,
                               in_depth=in_depth, plane=plane)

    def _stages(self, m, active, image_r) -> SimpleNamespace:
        """Every stage and the head on the shared units, the collector, the value store."""
        store, mem_r, read, counts, driven = self._value_access(m, active)
        trace_valid, trace_payload, trace_ready = self._trace_port(m)

        shared = self._shared
        if shared.engine is not None:
            m.submodules.engine = shared.engine
        m.submodules.neurons = shared.neurons

        stage_start = [Signal(name=f"start_{verilog_name(n.name)}") for n in self.stages]
        stage_done = [Signal(name=f"done_{verilog_name(n.name)}") for n in self.stages]
        # the stages share one cycle counter (each restarts it) and one spike collector
        run_cycles = Signal(CYCLE_BITS, name="stage_cycles")
        stage_busy = [Signal(name=f"busy_{verilog_name(n.name)}") for n in self.stages]
        with m.If(or_all(stage_busy)):
            m.d.sync += run_cycles.eq(run_cycles + 1)
        users = {}
        issuer = self._issuer(m, active)
        for stage in self.plan.stages:
            sid = stage.id
            args = (m, stage, stage_start[sid - 1], stage_done[sid - 1], stage_busy[sid - 1])
            if stage.kind == "attention":
                users[sid] = attention_stage(self, *args, run_cycles, mem_r, read, shared)
            else:
                users[sid] = engine_stage(self, *args, read, counts, image_r, shared, issuer)
        if issuer is not None:
            self._connect_issuer(m, issuer, active, users, stage_start, stage_busy, run_cycles)
        shared.connect(m, active)
        collector = self._collector(m, active, users, store, run_cycles, or_all(stage_start))
        m.d.comb += [trace_valid.eq(collector.trace.valid),
                     trace_payload.eq(collector.trace.payload),
                     collector.trace.ready.eq(trace_ready)]

        # ---- head: feature sums, then serial MAC per class
        stage_count = len(self.stages)
        head_node = self.head
        m.submodules.head = head = Head(
            head_node.weight, head_node.bias, self.T, self.N, self._count_bits(head_node.inputs[0]),
            head_node.widths["feature"], self.logit_bits, self.lanes)
        read(stage_count + 1, head_node.inputs[0], head.addr)
        word_counts, _ = counts(head_node.inputs[0])
        m.d.comb += [head.counts[c].eq(v) for c, v in enumerate(word_counts)]
        wiring.connect(m, head.logits, wiring.flipped(self.logits))
        readback = {(s.id, "readback") for s in self.plan.stages if s.pool}   # the collector's
        if store.roles - driven - readback:
            raise AssertionError(f"declared reads without an address: "
                                 f"{sorted(store.roles - driven - readback)}")
        head_start, head_done, best_cls = head.start, head.done, head.cls

        if self.loadable:
            self._connect_load(m)
        return SimpleNamespace(stage_start=stage_start, stage_done=stage_done,
                               head_start=head_start, head_done=head_done, best_cls=best_cls)

    def _value_access(self, m, active):
        """The value store, as the plan places it, and how stages reach it: ``read(stage, value,
        addr)`` drives a stage's declared read addresses, ``counts(value)`` gives a value's
        per-channel counts (a residual's summed once); ``driven`` collects the reads driven."""
        # ---- value storage, as the plan places it; stages drive their declared read addresses
        m.submodules.store = store = ValueStore(self.plan, self.channels, self.chunk)
        m.d.comb += store.active.eq(active)
        mem_r = {v: SimpleNamespace(data=store.data_of(v)) for v in self.channels}
        driven = set()

        def read(stage_id: int, value: str, addr) -> None:
            """Stage `stage_id` reads `value` (every memory behind it) at `addr`."""
            for role in {self.plan.reads[stage_id][s] for s in self.sources[value]}:
                if (stage_id, role) not in driven:
                    driven.add((stage_id, role))
                    m.d.comb += store.address(stage_id, role).eq(addr)

        summed = {}

        def counts(value: str):
            """Per-channel counts of `value` from the read data of its source memories. A
            residual's sums are computed once, into a signal every reader shares: an expression
            would be copied into the netlist at every use (the issue FSM's mask and event
            count, the head), which made a 2-block D = 48 model's Verilog 6 MB."""
            srcs = self.sources[value]
            width = self.channels[srcs[0]]
            bits = self._count_bits(value)
            if len(srcs) == 1:
                return [mem_r[srcs[0]].data[c] for c in range(width)], bits
            if value not in summed:
                total = Signal(data.ArrayLayout(unsigned(bits), width),
                               name=f"{verilog_name(value)}_counts")
                m.d.comb += [total[c].eq(sum((mem_r[s].data[c].as_unsigned() for s in srcs),
                                             Const(0, bits))[:bits]) for c in range(width)]
                summed[value] = [total[c] for c in range(width)]
            return summed[value], bits
        return store, mem_r, read, counts, driven

    def _trace_port(self, m):
        """The trace arbitration: one collector at a time is active, so a mux suffices."""
        trace_valid = Signal()
        trace_payload = Signal(self.trace_layout)
        trace_ready = Signal()
        if self.trace_enabled:
            m.d.comb += [self.trace.valid.eq(trace_valid), self.trace.payload.eq(trace_payload),
                         trace_ready.eq(self.trace.ready)]
        else:
            m.d.comb += trace_ready.eq(1)
        return trace_valid, trace_payload, trace_ready

    def _connect_load(self, m) -> None:
        """The load port to every table's unit (``loadable``)."""
        for table in self.memory_map():
            unit = table.unit
            m.d.comb += [
                unit.load.valid.eq(self.load.valid & self.load.ready &
                                   (self.load.payload.memory == table.id)),
                unit.load.payload.addr.eq(self.load.payload.addr),
                unit.load.payload.data.eq(self.load.payload.data[:table.width]),
            ]

    def _issuer(self, m, active) -> IssueFSM | None:
        """The one issue FSM of the conv and matmul stages (None: there are none)."""
        issued = []
        for s in self.plan.stages:
            if s.kind == "attention":
                continue
            image = s.source == INPUT
            issued.append(IssuedStage(
                s.id, s.kind == "conv", s.static_replay, s.height, s.width,
                self.plan.shared.col_base.get(s.name, 0),    # 0: a rank-factored engine
                self.in_c if image else self.channels[self.sources[s.source][0]],
                self.pixel_bits if image else self._count_bits(s.source)))
        if not issued:
            return None
        m.submodules.issue = issuer = IssueFSM(issued, self.T, self.chunk,
                                                   prefetch=self.plan.issue_prefetch)
        m.d.comb += issuer.active.eq(active)
        return issuer

    def _connect_issuer(self, m, issuer, active, users, stage_start, stage_busy, run_cycles):
        """The issue FSM's events to the active stage's engine; a conv or matmul stage's start
        starts it (the stage is busy from then on, its cycle count restarts)."""
        engine_stages = [sid for sid, user in users.items() if hasattr(user, "events")]
        starts = [stage_start[sid - 1] for sid in engine_stages]
        m.d.comb += issuer.start.eq(or_all(starts))
        with m.If(or_all(starts)):
            m.d.sync += run_cycles.eq(1)
        with m.Switch(active):
            for sid in engine_stages:
                events = users[sid].events
                with m.Case(sid):
                    m.d.comb += [issuer.stage_busy.eq(stage_busy[sid - 1]),
                                 events.valid.eq(issuer.events.valid),
                                 events.payload.index.eq(issuer.events.payload.index),
                                 events.payload.count.eq(issuer.events.payload.count),
                                 events.payload.end.eq(issuer.events.payload.end),
                                 issuer.events.ready.eq(events.ready)]
        for sid in engine_stages:
            with m.If(stage_start[sid - 1]):
                m.d.sync += stage_busy[sid - 1].eq(1)

    def _collector(self, m, active, users, store, run_cycles, starting) -> SpikeCollector:
        """The one spike collector, joined to the active stage's neuron outputs and value."""
        m.submodules.collector = col = SpikeCollector(
            [CollectedStage.of(s, self.node_index[s.name]) for s in self.plan.stages],
            self.T, self.chunk, self.lanes, self.plan.trace_layout)
        m.d.comb += [col.active.eq(active), col.start.eq(starting), col.cycles.eq(run_cycles)]
        m.d.comb += store.word.eq(col.word)      # every value write is this chunk
        with m.Switch(active):
            for stage in self.plan.stages:
                sid, name, user = stage.id, stage.name, users[stage.id]
                with m.Case(sid):
                    m.d.comb += [col.spikes.valid.eq(user.o.valid),
                                 user.o.ready.eq(col.spikes.ready),
                                 col.spikes.payload.spike.eq(user.o.payload.spike)]
                    if stage.pool:      # the cell's partial OR, read back at the write address
                        m.d.comb += [store.address(sid, "readback").eq(col.addr),
                                     col.old.eq(store.data_of(name))]
                    port = store.write_of(name)
                    n_chunks = len(port.en)
                    m.d.comb += [port.addr.eq(col.addr),
                                 port.en.eq(Mux(col.write, Const(1, n_chunks) <<
                                                col.chunk[:bits_for(n_chunks - 1)], 0))]
                    with m.If(col.done):
                        m.d.comb += user.done.eq(1)
                        m.d.sync += user.busy.eq(0)
        return col

    def _sequencer(self, m, active, cycles, running, loader, run) -> None:
        """The top FSM: load the pixels, run the stages in order, then the head, then hand out
        the result."""
        T, stage_count = self.T, len(self.stages)
        image_w, load_count, load_c = loader.image_w, loader.load_count, loader.load_c
        load_pos, load_t = loader.load_pos, loader.load_t
        in_depth, plane = loader.in_depth, loader.plane
        stage_start, stage_done = run.stage_start, run.stage_done
        head_start, head_done, best_cls = run.head_start, run.head_done, run.best_cls
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
