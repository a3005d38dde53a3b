"""The integer sLIF neuron of model.ir.intops.neuron_step as a pipelined array over (token, channel).

Per channel c, with membrane V (signed) and this time step's accumulator I (signed):

    x = (I << F) + bias_c ;  product = leak_c * (x - V) ;  H = V + (product >>> K)
    S = H >= threshold_c  ;  V_next = 0 if S else H

F = frac_bits, K = leak_bits, ``>>>`` the arithmetic shift (floor). Every neuron of a layer shares
one update datapath (or P lanes of it, each with its own multiplier, updating a group of P
channels per cycle); its state lives in RAM and its per-channel constants in ROM.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, MemoryData, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from hw import timing
from hw.components import add_table, block_ram_attrs, check_int, check_int_array, lane_of, \
    lane_shape, load_signature
from model.ir.intops import signed_bits

__all__ = ["SlifNeuronArray"]


class SlifNeuronArray(wiring.Component):
    """Integer sLIF update of ``tokens x channels`` neurons, one update per cycle, pipelined.

    Protocol. Each transfer on ``i`` is one neuron update ``{token, channel, acc, first}``:
    ``acc`` is the neuron's accumulator I for this time step, and ``first`` = 1 marks the first
    time step of an inference (the membrane is taken as 0 instead of read from RAM, so the RAM
    needs no clearing between inferences). Each update produces, in the same order,
    ``{token, channel, spike}`` on ``o``. Updates may come in any order.

    Pipeline (4 stages, one new update per cycle):

        1. accept; read V from the membrane RAM, (bias, threshold) and leak from the channel
           tables
        2. x = (I << F) + bias, d = x - V
        3. product = leak * d                (registered in and out: maps to a DSP multiplier)
        4. H = V + (product >>> K), spike = H >= threshold; write V_next back; register output

    The write of stage 4 and the read of stage 1 meet in a read port transparent to the write
    port. An update whose neuron is still in stage 2 or 3 (the same (token, channel) pair, or
    slot, within the last two accepted updates) waits until it has left them: at most 2 stall cycles, and never with the
    sequencer's order (all channels of a token, token by token), unless tokens * channels <= 2.
    That check makes ``i.ready`` depend combinationally on ``i.payload`` (never the other way).
    Without stalls n updates take n + 4 cycles from the first acceptance through the last
    output transfer, inclusive.

    Lanes. With ``lanes`` = P > 1 a transfer updates a *group* of P channels: the layouts are
    ``{token, group, acc[P], first}`` in and ``{token, group, spike}`` out (spike bit p and
    acc[p]: channel group * P + p), so n group transfers take n + 4 cycles. Each table word (the
    membranes of a (token, group), the constants of a group) holds P lanes, read and written
    together; a missing channel of the last group (channels not a multiple of P) has bias 0,
    threshold 1 and leak 0, which keeps its V at 0 from ``first`` on: it never fires. The pipeline
    and its hazard check are the one-lane ones, with ``group`` for ``channel``.

    Parameters
    ----------
    channels, tokens : int
        Neurons per token and tokens; neuron (token, channel) keeps its membrane at RAM
        address ``token * token_stride + channel`` (P lanes: word
        ``token * token_stride / P + channel // P``, lane ``channel % P``).
    token_stride : int, optional
        Default ``channels`` (rounded up to a multiple of P): every (token, channel) has its own
        membrane. A smaller stride
        lets several users share one array, e.g. per-token channels only at the end of the
        channel range: the caller then sends only pairs whose addresses differ.
    hazard_check : bool
        Default True. False leaves the stall out, for a caller whose order never sends a neuron
        again within two updates (the accelerator: every stage has more than 2 channels, sent
        channel by channel); ``i.ready`` then no longer depends on ``i.payload``.
    lanes : int
        Channels updated per cycle (P, default 1; at most ``channels``).
    membranes : int, optional
        Membrane words (of P lanes each), when they are fewer than the neurons: updates then carry a ``slot``
        and neuron (token, channel) keeps its membrane at ``token * token_stride + slot``
        (< membranes), while ``channel`` still selects the constants. Users of one array whose
        neurons never live at the same time (layers run one after the other) share words.
    bias, threshold, leak : sequences of int, one per channel
        The artifact's integers: any bias, thresholds >= 1, leaks in 0..2^leak_bits.
    frac_bits, leak_bits : int
        F and K of the fixed-point format (the artifact's ``fixed_point``).
    acc_width, membrane_width, product_width : int
        Signed widths of I, V and leak * (x - V), as the artifact's ``widths`` derives them
        from the worst case; the caller guarantees they hold every value (V and H stay within
        the membrane width, the product within the product width).

    Members
    -------
    i : In(stream.Signature(update_layout))
        Updates ``{token, channel, acc, first}`` (P lanes: ``{token, group, acc[P], first}``).
    o : Out(stream.Signature(spike_layout))
        Results ``{token, channel, spike}`` (P lanes: ``{token, group, spike}``, P bits).
    load : In(load_signature(parameter_layout, groups)), only with ``loadable=True``
        The bias/threshold table is then written through this stream (``parameters_init()``,
        one channel, or group, per transfer, always ready) before the first update, instead of being a ROM
        (hw/components `add_table`: on iCE40 the table goes to SPRAM); the leaks stay a ROM.

    Attributes
    ----------
    membrane_data : MemoryData
        The membrane RAM's contents (address token * token_stride + channel; P lanes: words of
        P membranes, see ``channels``), exposed so that simulations and debug views can inspect
        the state.
    """

    #: An update accepted in cycle a leaves in cycle a + LATENCY (hw.timing, the cycle model's)
    LATENCY = timing.NEURON_LATENCY

    def __init__(self, channels, tokens, bias, threshold, leak, frac_bits, leak_bits,
                 acc_width, membrane_width, product_width, token_stride=None, membranes=None,
                 loadable=False, hazard_check=True, lanes=1):
        self._channels = check_int(channels, "channels", minimum=1)
        self._tokens = check_int(tokens, "tokens", minimum=1)
        self._lanes = P = check_int(lanes, "lanes", minimum=1)
        if P > self._channels:
            raise ValueError(f"lanes = {P} exceeds the {self._channels} channels")
        self._groups = -(-self._channels // P)
        self._stride = self._groups * P if token_stride is None else \
            check_int(token_stride, "token_stride", minimum=1)
        if self._stride % P:
            raise ValueError(f"token_stride = {self._stride} must be a multiple of lanes = {P}")
        self._frac_bits = check_int(frac_bits, "frac_bits", minimum=0)
        self._leak_bits = check_int(leak_bits, "leak_bits", minimum=0)
        self._bias = check_int_array(bias, "bias", shape=(self._channels,))
        self._threshold = check_int_array(threshold, "threshold", shape=(self._channels,))
        self._leak = check_int_array(leak, "leak", shape=(self._channels,))
        if self._threshold.min() < 1:
            raise ValueError(f"thresholds must be >= 1 (a neuron at rest must not fire), not "
                             f"{self._threshold.min()}")
        if self._leak.min() < 0 or self._leak.max() > (1 << self._leak_bits):
            raise ValueError(f"leaks must lie in 0..2^leak_bits = {1 << self._leak_bits}, not "
                             f"[{self._leak.min()}, {self._leak.max()}]")
        self._acc_width = check_int(acc_width, "acc_width", minimum=1)
        self._membrane_width = check_int(membrane_width, "membrane_width", minimum=1)
        self._product_width = check_int(product_width, "product_width", minimum=1)

        self._hazard_check = bool(hazard_check)
        self._slots = membranes is not None
        words = self._stride // P            # membrane words from one token to the next
        depth = ((self._tokens - 1) * words + self._groups) if membranes is None else \
            check_int(membranes, "membranes", minimum=1)
        # one lane: a transfer is one channel; P lanes: one group of P channels
        index = "channel" if P == 1 else "group"
        fields = {
            "token": unsigned(bits_for(self._tokens - 1)),
            index: unsigned(bits_for(self._groups - 1)),
            "acc": lane_shape(signed(self._acc_width), P),
            "first": 1,
        }
        if self._slots:
            fields["slot"] = unsigned(bits_for(depth - 1))
        self._update_layout = data.StructLayout(fields)
        self._spike_layout = data.StructLayout({
            "token": unsigned(bits_for(self._tokens - 1)),
            index: unsigned(bits_for(self._groups - 1)),
            "spike": P,
        })
        self.membrane_data = MemoryData(shape=lane_shape(signed(self._membrane_width), P),
                                        depth=depth, init=[])
        members = {
            "i": In(stream.Signature(self._update_layout)),
            "o": Out(stream.Signature(self._spike_layout)),
        }
        self._loadable = bool(loadable)
        if self._loadable:
            members["load"] = In(load_signature(self.parameter_layout, self._groups))
        super().__init__(members)

    channels = property(lambda self: self._channels)
    tokens = property(lambda self: self._tokens)
    lanes = property(lambda self: self._lanes)
    groups = property(lambda self: self._groups)
    token_stride = property(lambda self: self._stride)
    frac_bits = property(lambda self: self._frac_bits)
    leak_bits = property(lambda self: self._leak_bits)
    acc_width = property(lambda self: self._acc_width)
    membrane_width = property(lambda self: self._membrane_width)
    product_width = property(lambda self: self._product_width)
    update_layout = property(lambda self: self._update_layout)
    spike_layout = property(lambda self: self._spike_layout)

    @property
    def parameter_layout(self):
        """One word of the bias/threshold table: a channel's (P lanes: a group's P channels')
        bias and threshold. The leaks have a table of their own, so that the two fit three
        16-bit SPRAMs where the three would not."""
        channel = data.StructLayout({
            "bias": signed(signed_bits(int(self._bias.min()), int(self._bias.max()))),
            "threshold": unsigned(bits_for(int(self._threshold.max()))),
        })
        return lane_shape(channel, self._lanes)

    def _by_group(self, values, pad: int) -> list:
        """Per-channel `values` as one list per group (lane p of group g: channel g P + p);
        the last group's missing channels are `pad`."""
        P = self._lanes
        padded = list(values) + [pad] * (self._groups * P - self._channels)
        return [padded[g * P:(g + 1) * P] for g in range(self._groups)]

    def parameters_init(self) -> list:
        """The bias/threshold table's contents, word by word (what ``load`` writes): channel
        by channel, or with P lanes group by group, a list of P channels each (a missing
        channel of the last group: bias 0, threshold 1)."""
        channels = [{"bias": int(b), "threshold": int(t)}
                    for b, t in zip(self._bias, self._threshold)]
        if self._lanes == 1:
            return channels
        return self._by_group(channels, {"bias": 0, "threshold": 1})

    def elaborate(self, platform):
        """The pipeline of the class docstring, part by part: the memories, the registers
        between the stages, stage 1's acceptance and reads, the arithmetic around the
        registers, and the register transfers (all stages hold while ``o`` waits)."""
        m = Module()
        tables = self._add_constant_tables(m)
        membrane_read, membrane_write = self._add_membrane_ram(m)
        pipe = self._pipeline_registers(tables)
        advance, address, accept = self._accept_and_read(m, pipe, tables, membrane_read)
        x, membrane = self._stage_1_arithmetic(m, pipe, tables, membrane_read)
        spike = self._spike_and_write_back(m, pipe, membrane_write, advance)
        with m.If(advance):
            self._register_stage_1(m, pipe, accept, address)
            self._register_stages_2_and_3(m, pipe, tables, x, membrane)
            self._register_output(m, pipe, spike)
        return m

    def _add_constant_tables(self, m) -> SimpleNamespace:
        """The per-channel constants, read in stage 1 at the update's channel (or group): the
        bias/threshold table (a ROM, or written through ``load``) and the leak ROM. Returns
        their read ports (``parameter_addr``, ``_en``, ``_data``; ``leak_...``) and the leak
        shape. With P lanes a missing channel of the last group gets leak 0, which keeps its V
        at 0 from ``first`` on."""
        P = self._lanes
        parameter_addr, parameter_en, parameter_data = add_table(
            m, "parameters", self.parameter_layout, self.parameters_init(),
            load=self.load if self._loadable else None)
        leak_shape = unsigned(bits_for(int(self._leak.max())))      # always a ROM
        leaks = [int(k) for k in self._leak]
        if P == 1:
            leak_addr, leak_en, leak_data = add_table(m, "leaks", leak_shape, leaks)
        else:
            leak_addr, leak_en, leak_data = add_table(
                m, "leaks", data.ArrayLayout(leak_shape, P), self._by_group(leaks, 0))
        return SimpleNamespace(parameter_addr=parameter_addr, parameter_en=parameter_en,
                               parameter_data=parameter_data, leak_addr=leak_addr,
                               leak_en=leak_en, leak_data=leak_data, leak_shape=leak_shape)

    def _add_membrane_ram(self, m):
        """The membrane RAM's (read, write) ports: stage 4 writes V_next back, and stage 1 reads
        through a port transparent to that write, so it sees a write of the same cycle."""
        m.submodules.membranes = membranes = Memory(
            data=self.membrane_data,
            attrs=block_ram_attrs(self.membrane_data.shape, self.membrane_data.depth))
        membrane_write = membranes.write_port()
        membrane_read = membranes.read_port(transparent_for=(membrane_write,))
        return membrane_read, membrane_write

    def _intermediate_widths(self):
        """Exact signed widths of x, x - V and H: nothing can overflow except by the caller's
        membrane and product widths, which the artifact derives from the worst case."""
        P, parameter_layout = self._lanes, self.parameter_layout
        channel_layout = parameter_layout if P == 1 else parameter_layout.elem_shape
        bias_width = channel_layout["bias"].shape.width
        x_width = max(self._acc_width + self._frac_bits, bias_width) + 1
        diff_width = max(x_width, self._membrane_width) + 1
        h_width = max(self._membrane_width, self._product_width - self._leak_bits, 1) + 1
        return x_width, diff_width, h_width

    def _lane_signals(self, name, shape) -> list:
        """One signal per lane (named as before with one lane)."""
        P = self._lanes
        return [Signal(shape, name=name if P == 1 else f"{name}{p}") for p in range(P)]

    def _pipeline_registers(self, tables) -> SimpleNamespace:
        """The registers between the stages, with the update's index, membrane word and pair:
        ``s1``, ``s2``, ``s3`` hold what travels with an update (valid, token, channel,
        membrane address, pair), the ``s<n>_...`` lists each lane's operands of that stage."""
        P = self._lanes
        index = self.i.p.channel if P == 1 else self.i.p.group
        word = self.i.p.slot if self._slots else index
        address_shape = unsigned(bits_for(self.membrane_data.depth - 1))
        # An update's (token, slot or channel) pair names its membrane as well as its address
        # (callers never send two pairs with one address), without the address's adder: the
        # hazard check compares pairs, so `i.ready` does not wait for token * stride + slot.
        pair = Signal(len(self.i.p.token) + len(word))

        def stage(name):
            """Registers that travel with an update through the pipeline."""
            return {
                "valid": Signal(name=f"{name}_valid"),
                "token": Signal(self._update_layout["token"].shape, name=f"{name}_token"),
                "channel": Signal(len(index), name=f"{name}_channel"),
                "address": Signal(address_shape, name=f"{name}_address"),
                "pair": Signal(len(pair), name=f"{name}_pair"),
            }

        lanes, (_, diff_width, _) = self._lane_signals, self._intermediate_widths()
        membrane_shape = signed(self._membrane_width)
        s1, s2, s3 = stage("read"), stage("diff"), stage("product")
        s1_acc = lanes("s1_acc", signed(self._acc_width))
        s1_first = Signal()
        threshold_shape = Signal.like(lane_of(tables.parameter_data, 0, P).threshold).shape()
        return SimpleNamespace(
            index=index, word=word, address_shape=address_shape, pair=pair,
            s1=s1, s2=s2, s3=s3, s1_acc=s1_acc, s1_first=s1_first,
            s2_membrane=lanes("s2_membrane", membrane_shape),
            s2_diff=lanes("s2_diff", signed(diff_width)),
            s2_leak=lanes("s2_leak", tables.leak_shape),
            s2_threshold=lanes("s2_threshold", threshold_shape),
            s3_membrane=lanes("s3_membrane", membrane_shape),
            s3_product=lanes("s3_product", signed(self._product_width)),
            s3_threshold=lanes("s3_threshold", threshold_shape))

    def _accept_and_read(self, m, pipe, tables, membrane_read):
        """Stage 1: accept an update while the pipeline advances and its neuron has left
        stages 2 and 3 (the hazard check), and read its membrane and constants in the same
        cycle. Returns ``(advance, address, accept)``."""
        advance = ~self.o.valid | self.o.ready
        address = Signal(pipe.address_shape)
        s1, s2, pair = pipe.s1, pipe.s2, pipe.pair
        hazard = ((s1["valid"] & (s1["pair"] == pair)) |
                  (s2["valid"] & (s2["pair"] == pair))) if self._hazard_check else 0
        accept = Signal()
        m.d.comb += [
            address.eq(self.i.p.token * (self._stride // self._lanes) + pipe.word),
            pair.eq(Cat(pipe.word, self.i.p.token)),
            self.i.ready.eq(advance & ~hazard),
            accept.eq(self.i.valid & self.i.ready),
            membrane_read.addr.eq(address),
            membrane_read.en.eq(advance),
            tables.parameter_addr.eq(pipe.index),
            tables.parameter_en.eq(advance),
            tables.leak_addr.eq(pipe.index),
            tables.leak_en.eq(advance),
        ]
        return advance, address, accept

    def _stage_1_arithmetic(self, m, pipe, tables, membrane_read):
        """Stage 1's arithmetic on its reads, per lane: x = (I << F) + bias, and V (0 on
        ``first``: the RAM needs no clearing between inferences). Returns the lanes'
        ``(x, membrane)``, registered by stage 2."""
        F, P = self._frac_bits, self._lanes
        x_width, _, _ = self._intermediate_widths()
        lanes = self._lane_signals
        x = lanes("x", signed(x_width))
        membrane = lanes("membrane", signed(self._membrane_width))
        for p in range(P):
            m.d.comb += [
                x[p].eq(pipe.s1_acc[p].shift_left(F) + lane_of(tables.parameter_data, p, P).bias),
                membrane[p].eq(Mux(pipe.s1_first, 0, lane_of(membrane_read.data, p, P))),
            ]
        return x, membrane

    def _spike_and_write_back(self, m, pipe, membrane_write, advance):
        """Stage 4 per lane: H = V + (product >>> K), spike = H >= threshold, and V_next (0
        after a spike, else H) written back as the pipeline advances. Returns the spikes."""
        K, P = self._leak_bits, self._lanes
        _, _, h_width = self._intermediate_widths()
        h = self._lane_signals("h", signed(h_width))
        spike = self._lane_signals("spike", 1)
        for p in range(P):
            m.d.comb += [
                h[p].eq(pipe.s3_membrane[p] + pipe.s3_product[p].shift_right(K)),
                spike[p].eq(h[p] >= pipe.s3_threshold[p]),
            ]
        m.d.comb += membrane_write.addr.eq(pipe.s3["address"])
        m.d.comb += [lane_of(membrane_write.data, p, P).eq(Mux(spike[p], 0, h[p]))
                     for p in range(P)]
        m.d.comb += membrane_write.en.eq(pipe.s3["valid"] & advance)
        return spike

    def _register_stage_1(self, m, pipe, accept, address):
        """Stage 1's registers take the accepted update (valid only if one was accepted)."""
        P, s1 = self._lanes, pipe.s1
        m.d.sync += [
            s1["valid"].eq(accept),
            s1["token"].eq(self.i.p.token),
            s1["channel"].eq(pipe.index),
            s1["address"].eq(address),
            s1["pair"].eq(pipe.pair),
        ]
        m.d.sync += [pipe.s1_acc[p].eq(lane_of(self.i.p.acc, p, P)) for p in range(P)]
        m.d.sync += pipe.s1_first.eq(self.i.p.first)

    def _register_stages_2_and_3(self, m, pipe, tables, x, membrane):
        """Stage 2 registers V, x - V and the constants; stage 3 the product leak * (x - V),
        registered on both sides of the multiplier so that it maps to a DSP."""
        P = self._lanes
        m.d.sync += [pipe.s2[key].eq(pipe.s1[key]) for key in pipe.s1]
        for p in range(P):
            m.d.sync += [
                pipe.s2_membrane[p].eq(membrane[p]),
                pipe.s2_diff[p].eq(x[p] - membrane[p]),
                pipe.s2_leak[p].eq(lane_of(tables.leak_data, p, P)),
                pipe.s2_threshold[p].eq(lane_of(tables.parameter_data, p, P).threshold),
            ]
        m.d.sync += [pipe.s3[key].eq(pipe.s2[key]) for key in pipe.s2]
        for p in range(P):
            m.d.sync += [
                pipe.s3_membrane[p].eq(pipe.s2_membrane[p]),
                pipe.s3_product[p].eq(pipe.s2_leak[p] * pipe.s2_diff[p]),
                pipe.s3_threshold[p].eq(pipe.s2_threshold[p]),
            ]

    def _register_output(self, m, pipe, spike):
        """Stage 4 registers the output transfer: the update's token, channel (or group) and
        its lanes' spikes."""
        s3 = pipe.s3
        m.d.sync += [
            self.o.valid.eq(s3["valid"]),
            self.o.p.token.eq(s3["token"]),
            (self.o.p.channel if self._lanes == 1 else self.o.p.group).eq(s3["channel"]),
            self.o.p.spike.eq(Cat(*spike)),
        ]
