# amaranth: UnusedElaboratable=no
# (built in __init__, elaborated with the accelerator)
"""The stages: conv/matmul on the shared engine, spiking attention."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.utils import bits_for

from hw.accelerator.feeder import ReplayFeeder
from hw.accelerator.util import copy_accs, payload_index, verilog_name
from hw.components import RankFactoredEngine, SpikingAttention, lane_shape
from model.ir import INPUT, LowRankMatMul

__all__ = ["engine_stage", "attention_stage"]


def engine_stage(top, m, stage, start, done, busy, read, counts, image_r, shared, issuer):
    """A conv or matmul stage (its hw.plan.StagePlan) on the shared issuer, engine and neuron
    array: its source reads, engine -> neuron feed (and, for the static first conv, the replay
    feeder). Returns its collector user."""
    T, P = top.T, top.lanes
    sid, node, name, ident = stage.id, stage.node, stage.name, verilog_name(stage.name)
    widths, c_out, groups = node.widths, stage.channels, stage.groups
    is_conv, src, static_replay = stage.kind == "conv", stage.source, stage.static_replay
    from_image, in_max = src == INPUT, stage.in_max

    # engine (shared by every conv and CSC matmul; a rank-factored one per stage) and the
    # shared neuron array
    if isinstance(node, LowRankMatMul):
        engine = RankFactoredEngine(
            node.in_features, c_out, node.rank, node.b_col_ptr, node.b_row_idx,
            node.b_values, node.a, in_max, widths["z"], widths["acc"], lanes=P)
        m.submodules[f"engine_{ident}"] = engine
    else:
        engine = shared.engine_user(sid, name)
    neuron = shared.neuron_user(sid, name)

    # geometry; the counters are the shared issuer's (`IssueFSM`)
    wd, positions = stage.width, stage.positions
    if is_conv:
        src_pos = (issuer.ny * wd + issuer.nx)[:bits_for(positions)]
    else:
        src_pos = issuer.token
    if from_image:
        addr = (issuer.step * positions + src_pos) if top.time_varying else src_pos
        m.d.comb += image_r.addr.eq(addr)       # only the first conv reads the image
        pixel_words = [image_r.data[c * top.pixel_bits:(c + 1) * top.pixel_bits]
                       for c in range(top.in_c)]
        word_counts, count_bits = pixel_words, top.pixel_bits
    else:
        read(sid, src, issuer.step * positions + src_pos)
        word_counts, count_bits = counts(src)

    neuron_in = neuron.i
    # the step of the vector leaving the engine (the issue FSM may already be ahead)
    out_step = Signal(range(T), name=f"{ident}_out_step")
    engine_done = engine.o.valid & engine.o.ready & (payload_index(engine.o.payload) == groups - 1)
    with m.If(engine_done):
        m.d.sync += out_step.eq(Mux(out_step == T - 1, 0, out_step + 1))
    with m.If(start):
        m.d.sync += out_step.eq(0)
    if static_replay:       # step 0 from the engine, the later steps replayed
        m.submodules[f"feeder_{ident}"] = feeder = ReplayFeeder(
            groups, T, engine.o.payload.shape(), neuron_in.payload.shape(), P,
            replay_shape=lane_shape(signed(widths["acc"]), P))     # this conv's own width
        wiring.connect(m, engine.o, feeder.i)
        m.d.comb += [neuron_in.valid.eq(feeder.o.valid), feeder.o.ready.eq(neuron_in.ready),
                     neuron_in.payload.eq(feeder.o.payload)]
    else:
        m.d.comb += [neuron_in.valid.eq(engine.o.valid), engine.o.ready.eq(neuron_in.ready),
                     payload_index(neuron_in.payload).eq(payload_index(engine.o.payload)),
                     *copy_accs(neuron_in.payload.acc, engine.o.payload.acc, P),
                     neuron_in.payload.first.eq(out_step == 0)]

    m.d.comb += getattr(issuer, f"word{sid}").eq(Cat(*word_counts))
    return SimpleNamespace(node=node, o=neuron.o, busy=busy, done=done, events=engine.i)


def attention_stage(top, m, stage, start, done, busy, run_cycles, mem_r, read, shared):
    """The attention stage (its hw.plan.StagePlan): Q/K/V row reader and SpikingAttention on
    the shared neuron array (time steps outer: tokens x channels membranes). Returns its
    collector user."""
    T, N = top.T, top.N
    sid, node, name, ident = stage.id, stage.node, stage.name, verilog_name(stage.name)
    widths = node.widths
    dim = node.dim
    q_name, k_name, v_name = node.inputs
    P = top.lanes
    attention = SpikingAttention(N, dim, node.heads, widths["kv"], widths["acc"],
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
        payload_index(neuron.i.payload).eq(payload_index(attention.o.payload)),
        *copy_accs(neuron.i.payload.acc, attention.o.payload.acc, P),
    ]
    out_step = Signal(range(T), name=f"{ident}_out_step")
    m.d.comb += neuron.i.payload.first.eq(out_step == 0)
    # which step the attention block is emitting: advance after its last count
    with m.If(attention.o.valid & attention.o.ready & (attention.o.payload.token == N - 1)
              & (payload_index(attention.o.payload) == dim // P - 1)):
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
    return SimpleNamespace(node=node, o=neuron.o, busy=busy, done=done)
