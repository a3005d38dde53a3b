# amaranth: UnusedElaboratable=no
# (built in __init__, elaborated with the accelerator)
"""The stages: conv/matmul on the shared engine, spiking attention, the head."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth import Mux, Signal, signed
from amaranth.lib import data
from amaranth.lib.memory import Memory
from amaranth.utils import bits_for

from hw.accelerator.util import copy_accs, payload_index, verilog_name
from hw.components import (RankFactoredEngine, SpikingAttention, block_ram_attrs, lane_of,
                           lane_shape, tree_sum)
from model.ir import Conv, INPUT, LowRankMatMul
from model.ir.intops import signed_bits

__all__ = ["engine_stage", "attention_stage", "head_stage"]


def engine_stage(top, m, sid, node, start, done, busy, read, counts, image_r, shared,
                 issuer):
    """A conv or matmul stage on the shared issuer, engine and neuron array: its source
    reads, engine -> neuron feed (and, for the static first conv, the replay feeder).
    Returns its collector user."""
    T = top.T
    name, ident = node.name, verilog_name(node.name)
    widths = node.widths
    c_out = top.channels[name]
    P = top.lanes
    groups = -(-c_out // P)
    is_conv = isinstance(node, Conv)
    src = node.inputs[0]
    from_image = src == INPUT
    static_replay = is_conv and from_image and not top.time_varying and T > 1
    in_max = int(top.bounds[src])

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
    h, wd = (node.height, node.width) if is_conv else (1, top.N)
    positions = h * wd
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

    # replay buffer for the static first conv: accumulators of t = 0, reused for t > 0
    if static_replay:
        replay_w, replay_r = _replay_memory(top, m, ident, widths, groups)

    neuron_in = neuron.i
    # the step of the vector leaving the engine (the issue FSM may already be ahead)
    out_step = Signal(range(T), name=f"{ident}_out_step")
    engine_done = engine.o.valid & engine.o.ready & (payload_index(engine.o.payload) == groups - 1)
    with m.If(engine_done):
        m.d.sync += out_step.eq(Mux(out_step == T - 1, 0, out_step + 1))
    with m.If(start):
        m.d.sync += out_step.eq(0)
    if static_replay:
        _replay_feeder(top, m, ident, groups, engine, neuron_in, engine_done, replay_w,
                       replay_r)
    else:
        m.d.comb += [neuron_in.valid.eq(engine.o.valid), engine.o.ready.eq(neuron_in.ready),
                     payload_index(neuron_in.payload).eq(payload_index(engine.o.payload)),
                     *copy_accs(neuron_in.payload.acc, engine.o.payload.acc, P),
                     neuron_in.payload.first.eq(out_step == 0)]

    issuer.add(sid, SimpleNamespace(
        start=start, busy=busy, ev=engine.i, is_conv=is_conv, static_replay=static_replay,
        col_base=shared.col_base.get(name, 0),      # 0: a rank-factored engine of its own
        h=h, wd=wd, positions=positions, word_counts=word_counts, count_bits=count_bits))
    return SimpleNamespace(node=node, o=neuron.o, busy=busy, done=done, tokens_outer=True,
                           h=h, wd=wd)


def _replay_memory(top, m, ident, widths, groups):
    """The static first conv's replay memory: one group of accumulators per address."""
    P = top.lanes
    replay_shape = lane_shape(signed(widths["acc"]), P)
    m.submodules[f"replay_{ident}"] = replay = Memory(
        shape=replay_shape, depth=groups, init=[],
        attrs=block_ram_attrs(replay_shape, groups))
    replay_w = replay.write_port()
    replay_r = replay.read_port()
    return replay_w, replay_r


def _replay_feeder(top, m, ident, groups, engine, neuron_in, engine_done, replay_w, replay_r):
    """The static-conv feeder: engine results to the neuron array for step 0 (kept in the
    replay memory), then the stored accumulators for steps 1..T-1."""
    T, P = top.T, top.lanes
    # The feeder: step 0 of a position comes from the engine (its accumulators are also
    # kept in the replay memory), steps 1..T-1 from the replay memory, one per cycle,
    # while the issue FSM already walks the next position through the engine.
    replay_valid = Signal(name=f"{ident}_replay_valid")
    replay_k = Signal(range(groups), name=f"{ident}_replay_k")    # group on data
    replay_next = Signal(range(groups), name=f"{ident}_replay_next")
    replay_step = Signal(range(T), name=f"{ident}_replay_step")
    m.d.comb += [
        replay_w.addr.eq(payload_index(engine.o.payload)),
        *copy_accs(replay_w.data, engine.o.payload.acc, P),
        replay_w.en.eq(engine.o.valid & engine.o.ready),
    ]
    with m.FSM(name=f"{ident}_feed"):
        with m.State("ENGINE"):
            m.d.comb += [neuron_in.valid.eq(engine.o.valid),
                         engine.o.ready.eq(neuron_in.ready),
                         payload_index(neuron_in.payload).eq(payload_index(engine.o.payload)),
                         *copy_accs(neuron_in.payload.acc, engine.o.payload.acc, P),
                         neuron_in.payload.first.eq(1)]
            with m.If(engine_done):
                m.d.sync += [replay_next.eq(0), replay_valid.eq(0), replay_step.eq(1)]
                m.next = "REPLAY"
        with m.State("REPLAY"):
            m.d.comb += [neuron_in.valid.eq(replay_valid),
                         payload_index(neuron_in.payload).eq(replay_k),
                         *copy_accs(neuron_in.payload.acc, replay_r.data, P),
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


def attention_stage(top, m, sid, node, start, done, busy, run_cycles, mem_r, read,
                    shared):
    """The attention stage: Q/K/V row reader and SpikingAttention on the shared neuron
    array (time steps outer: tokens x channels membranes). Returns its collector user."""
    T, N = top.T, top.N
    name, ident = node.name, verilog_name(node.name)
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
    return SimpleNamespace(node=node, o=neuron.o, busy=busy, done=done, tokens_outer=False,
                           h=1, wd=N)


def head_stage(top, m, sid, start, done, read, counts):
    T, N = top.T, top.N
    node = top.head
    src = node.inputs[0]
    dim = node.in_features
    fbits = node.widths["feature"]
    lbits = top.logit_bits
    bias = node.bias
    P = top.lanes
    D = -(-dim // P)                    # MAC cycles per class
    w_r = _head_weights(top, m, node, D)
    features = [Signal(signed(fbits), name=f"feature_{c}") for c in range(dim)]
    best, best_cls = Signal(signed(lbits)), Signal(8)
    step = Signal(range(T))
    token = Signal(range(N))
    k = Signal(range(top.classes + 1))
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
    i = Signal(range(top.classes * D + 1), name="head_index")
    mac_valid = Signal(name="head_mac_valid")       # w_r.data holds W[mac_k, mac_c]
    mac_k = Signal(range(top.classes), name="head_mac_k")
    mac_c = Signal(range(D), name="head_mac_c")
    m.d.comb += w_r.addr.eq(i)
    logit_valid = Signal(name="head_logit_valid")
    m.d.comb += top.logits.valid.eq(logit_valid)
    with m.If(top.logits.ready):
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
    p_k = Signal(range(top.classes), name="head_p_k")
    p_c = Signal(range(D), name="head_p_c")
    m.d.sync += [products[l].eq(lane_of(w_r.data, l, P) * lane_features[l])
                 for l in range(P)]
    m.d.sync += [p_valid.eq(mac_valid), p_k.eq(mac_k), p_c.eq(mac_c)]
    product = products[0] if P == 1 else tree_sum(products)
    p_bias = Signal(signed(lbits), name="head_bias_p")
    with m.Switch(p_k):
        for ki in range(top.classes):
            with m.Case(ki):
                m.d.comb += p_bias.eq(int(bias[ki]))
    total = Signal(signed(lbits), name="head_total")
    m.d.comb += total.eq(Mux(p_c == 0, p_bias, acc) + product)
    stored = Signal(name="head_stored")             # a logit was stored last cycle
    stored_k = Signal(range(top.classes), name="head_stored_k")
    m.d.sync += [stored.eq(p_valid & (p_c == D - 1)), stored_k.eq(p_k)]
    with m.If(p_valid):
        m.d.sync += acc.eq(total)
        with m.If(p_c == D - 1):
            m.d.sync += [top.logits.payload.eq(total), logit_valid.eq(1)]
    with m.If(stored & ((stored_k == 0) | (acc > best))):
        m.d.sync += [best.eq(acc), best_cls.eq(stored_k)]
    m.d.sync += [summing.eq(0), mac_valid.eq(0)]
    _head_fsm(top, m, start, done, SimpleNamespace(
        step=step, token=token, features=features, summing=summing, i=i, k=k, c=c, D=D,
        mac_valid=mac_valid, mac_k=mac_k, mac_c=mac_c, logit_valid=logit_valid))
    return best_cls


def _head_weights(top, m, node, D):
    """The head's weight memory (P lanes: one word of P weights per (class, group)); returns
    its read port."""
    w = node.weight
    dim = node.in_features
    wbits = signed_bits(int(w.min()), int(w.max()))
    # P lanes: P features of a class per cycle (one word of P weights, P multipliers)
    P = top.lanes
    if P == 1:
        w_shape, w_init = signed(wbits), [int(v) for v in w.reshape(-1)]
    else:
        wp = np.zeros((top.classes, D * P), dtype=np.int64)
        wp[:, :dim] = w
        w_shape = data.ArrayLayout(signed(wbits), P)
        w_init = [[int(v) for v in wp[k, g * P:(g + 1) * P]]
                  for k in range(top.classes) for g in range(D)]
    m.submodules.head_weights = weights = Memory(
        shape=w_shape, depth=top.classes * D, init=w_init,
        attrs=block_ram_attrs(w_shape, top.classes * D))
    w_r = weights.read_port()           # (its signals are named after this variable)
    return w_r


def _head_fsm(top, m, start, done, h):
    """SUM over (step, token), MAC over (class, group), LAST, LAST_ADD, LAST_CMP, DONE."""
    T, N, D = top.T, top.N, h.D
    step, token, features, summing = h.step, h.token, h.features, h.summing
    i, k, c, logit_valid = h.i, h.k, h.c, h.logit_valid
    mac_valid, mac_k, mac_c = h.mac_valid, h.mac_k, h.mac_c
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
            with m.If((c != D - 1) | ~logit_valid | top.logits.ready):
                m.d.sync += [mac_valid.eq(1), mac_k.eq(k), mac_c.eq(c), i.eq(i + 1)]
                with m.If(c == D - 1):
                    m.d.sync += [c.eq(0), k.eq(k + 1)]
                    with m.If(k == top.classes - 1):
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
