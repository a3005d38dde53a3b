# amaranth: UnusedElaboratable=no
# (constructors that raise leave unused, half-built components behind)
"""Tests for hw/components/neuron.py: SlifNeuronArray against model.ir.intops.neuron_step.

Spikes are compared per time step and the membrane RAM against the golden V, so a membrane that
failed to carry over between steps, or a "first" step that failed to ignore stale RAM contents,
shows up directly. Widths are derived from the worst case as the artifact derives them.
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.components.neuron import SlifNeuronArray
from hw.components.streams import CycleClock, simulate, stream_get_all, stream_put_all
from model.ir.intops import neuron_step, range_of_signed_bits, signed_bits

pytestmark = pytest.mark.amaranth      # amaranth.sim: seconds per test

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def neuron_widths(acc_lo, acc_hi, bias, threshold, frac_bits, leak_bits):
    """(acc, membrane, product) widths from the worst case, as model.ir derives them."""
    x_lo = acc_lo * (1 << frac_bits) + int(bias.min())
    x_hi = acc_hi * (1 << frac_bits) + int(bias.max())
    v_lo, v_hi = min(0, x_lo), max(0, x_hi, int(threshold.max()))
    d = max(x_hi - v_lo, v_hi - x_lo)
    return (signed_bits(acc_lo, acc_hi), signed_bits(v_lo, v_hi),
            signed_bits(-d << leak_bits, d << leak_bits))


def golden(case):
    """Spikes (inference, step, token, channel) and V after every step, from neuron_step."""
    spikes, membranes = [], []
    for accs in case["inferences"]:
        v = np.zeros(accs.shape[1:], dtype=np.int64)
        for acc in accs:
            s, v, *_ = neuron_step(v, acc, case["bias"], case["threshold"], case["leak"],
                                   case["frac_bits"], case["leak_bits"])
            spikes.append(s)
            membranes.append(v)
    return spikes, membranes


def run(dut, case, *, wait_each_step=False, stall_seed=None):
    """Send every step of every inference; return per step the outputs and the membrane RAM.

    The producer waits for an inference's (or, with `wait_each_step`, a step's) last spike
    before sending on, so that the RAM is read at a quiescent point; within that the updates
    go back to back.
    """
    tokens, channels = dut.tokens, dut.channels
    stalls = None if stall_seed is None else random.Random(stall_seed)
    idle = None if stalls is None else (lambda: stalls.choice([0, 0, 0, 1, 2]))
    steps = [(k, t, accs[t]) for k, accs in enumerate(case["inferences"])
             for t in range(len(accs))]
    orders = case["orders"]
    done = []
    outputs, membranes = [], {}

    def quiescent_after(n):
        k, t, _ = steps[n]
        return wait_each_step or n == len(steps) - 1 or steps[n + 1][0] != k

    async def producer(ctx):
        for n, (k, t, acc) in enumerate(steps):
            if n and quiescent_after(n - 1):
                while len(done) < n:
                    await ctx.tick()
            updates = [{"token": int(tok), "channel": int(ch), "acc": int(acc[tok, ch]),
                        "first": int(t == 0)} for tok, ch in orders[n]]
            await stream_put_all(ctx, dut.i, updates, idle)

    async def consumer(ctx):
        for n in range(len(steps)):
            out = await stream_get_all(ctx, dut.o, tokens * channels, idle)
            outputs.append([(int(p.token), int(p.channel), int(p.spike)) for p in out])
            if quiescent_after(n):
                membranes[n] = np.array([ctx.get(dut.membrane_data[a])
                                         for a in range(tokens * channels)]
                                        ).reshape(tokens, channels)
            done.append(n)

    simulate(dut, producer, consumer)
    return outputs, membranes


@st.composite
def neuron_cases(draw):
    # Tiny arrays often: with tokens * channels <= 2 one neuron's updates of consecutive
    # steps follow each other within the pipeline's depth (the read-after-write hazard).
    channels = draw(st.integers(1, 2) | st.integers(1, 24))
    tokens = draw(st.just(1) | st.integers(1, 6))
    frac_bits = draw(st.integers(0, 10))
    leak_bits = draw(st.integers(0, 10))
    acc_bits = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    acc_lo, acc_hi = range_of_signed_bits(acc_bits)
    scale = 1 << (frac_bits + acc_bits)

    bias_span = draw(st.sampled_from([0, 1 << frac_bits, scale]))
    bias = rng.integers(-bias_span, bias_span + 1, size=channels)
    leak_mode = draw(st.sampled_from(["mixed", "zero", "full", "random"]))
    leak = {"zero": np.zeros(channels, dtype=np.int64),
            "full": np.full(channels, 1 << leak_bits),
            "random": rng.integers(0, (1 << leak_bits) + 1, size=channels),
            "mixed": rng.choice([0, 1 << leak_bits, max(1, (1 << leak_bits) // 2)],
                                size=channels)}[leak_mode]
    threshold_mode = draw(st.sampled_from(["mixed", "one", "huge", "random"]))
    threshold = {"one": np.ones(channels, dtype=np.int64),
                 "huge": np.full(channels, scale << 6),
                 "random": rng.integers(1, scale + 2, size=channels),
                 "mixed": rng.choice([1, scale << 6, max(1, scale // 4)], size=channels)
                 }[threshold_mode]

    def accumulators(steps):
        accs = rng.integers(acc_lo, acc_hi + 1, size=(steps, tokens, channels))
        accs[rng.random(steps) < 0.25] = acc_hi      # whole steps at the extremes
        accs[rng.random(steps) < 0.25] = acc_lo
        return accs

    inferences = [accumulators(draw(st.integers(2, 5))) for _ in range(draw(st.integers(1, 2)))]
    row_order = [(tok, ch) for tok in range(tokens) for ch in range(channels)]
    n_steps = sum(len(accs) for accs in inferences)
    shuffle = draw(st.booleans())
    orders = [[row_order[i] for i in rng.permutation(len(row_order))] if shuffle else row_order
              for _ in range(n_steps)]
    return {"channels": channels, "tokens": tokens, "frac_bits": frac_bits,
            "leak_bits": leak_bits, "bias": bias, "threshold": threshold, "leak": leak,
            "acc_range": (acc_lo, acc_hi), "inferences": inferences, "orders": orders}


def build(case):
    widths = neuron_widths(*case["acc_range"], case["bias"], case["threshold"],
                           case["frac_bits"], case["leak_bits"])
    return SlifNeuronArray(case["channels"], case["tokens"], case["bias"], case["threshold"],
                           case["leak"], case["frac_bits"], case["leak_bits"], *widths)


def check(case, outputs, membranes):
    spikes, golden_membranes = golden(case)
    for n, (order, out) in enumerate(zip(case["orders"], outputs)):
        assert [(tok, ch) for tok, ch, _ in out] == [tuple(map(int, o)) for o in order]
        assert [s for _, _, s in out] == [int(spikes[n][tok, ch]) for tok, ch in order], \
            f"spikes of step {n}"
    for n, membrane in membranes.items():
        assert membrane.tolist() == golden_membranes[n].tolist(), f"membranes after step {n}"


@SETTINGS
@given(neuron_cases(), st.booleans())
def test_spikes_and_membranes_match_golden(case, wait_each_step):
    dut = build(case)
    outputs, membranes = run(dut, case, wait_each_step=wait_each_step)
    check(case, outputs, membranes)


@settings(SETTINGS, max_examples=20)
@given(neuron_cases(), st.integers(0, 2**32 - 1))
def test_spikes_under_backpressure(case, stall_seed):
    dut = build(case)
    outputs, membranes = run(dut, case, stall_seed=stall_seed)
    check(case, outputs, membranes)


def fixed_case(channels, tokens, steps, seed=0):
    rng = np.random.default_rng(seed)
    accs = rng.integers(-64, 64, size=(steps, tokens, channels))
    order = [(tok, ch) for tok in range(tokens) for ch in range(channels)]
    return {"channels": channels, "tokens": tokens, "frac_bits": 4, "leak_bits": 3,
            "bias": rng.integers(-20, 20, size=channels),
            "threshold": rng.integers(1, 400, size=channels),
            "leak": rng.integers(0, 9, size=channels), "acc_range": (-64, 63),
            "inferences": [accs], "orders": [order] * steps}


def spans(dut, case):
    """Cycles from the first accepted update through the last spike, measured by the bench."""
    clock = CycleClock()
    marks = {}

    async def producer(ctx):
        for n, acc in enumerate(case["inferences"][0]):
            updates = [{"token": tok, "channel": ch, "acc": int(acc[tok, ch]),
                        "first": int(n == 0)} for tok, ch in case["orders"][n]]
            await stream_put_all(ctx, dut.i, updates[:1])
            marks.setdefault("first", clock.now)
            await stream_put_all(ctx, dut.i, updates[1:])

    async def consumer(ctx):
        outputs = []
        for _ in case["inferences"][0]:
            out = await stream_get_all(ctx, dut.o, dut.tokens * dut.channels)
            outputs.append([(int(p.token), int(p.channel), int(p.spike)) for p in out])
        marks["last"], marks["outputs"] = clock.now, outputs

    simulate(dut, producer, consumer, background=[clock.bench])
    return marks["last"] - marks["first"] + 1, marks["outputs"]


def test_one_update_per_cycle_in_sequencer_order():
    """Distinct neurons back to back: n updates take n + 4 cycles (no hazard stall)."""
    case = fixed_case(channels=4, tokens=2, steps=3)
    dut = build(case)
    cycles, outputs = spans(dut, case)
    check(case, outputs, {})
    assert cycles == 3 * 2 * 4 + SlifNeuronArray.LATENCY          # hw.timing


def test_same_neuron_back_to_back_waits_for_its_write():
    """One neuron, one update per step, back to back: each waits 2 cycles for the previous
    update to leave the multiply stages (3 cycles per update), and the result stays exact."""
    case = fixed_case(channels=1, tokens=1, steps=6, seed=3)
    dut = build(case)
    cycles, outputs = spans(dut, case)
    check(case, outputs, {})
    assert cycles == 3 * (6 - 1) + 1 + SlifNeuronArray.LATENCY


@pytest.mark.parametrize("kwargs, error, match", [
    ({"channels": 0}, ValueError, "channels must be an integer >= 1, not 0"),
    ({"tokens": "2"}, TypeError, "tokens must be an integer, not '2'"),
    ({"frac_bits": -1}, ValueError, "frac_bits must be an integer >= 0, not -1"),
    ({"bias": [1, 2, 3]}, ValueError, r"bias must have shape \(2,\), not \(3,\)"),
    ({"threshold": [1, 0]}, ValueError, "thresholds must be >= 1"),
    ({"leak": [0, 257]}, ValueError, "leaks must lie in 0..2"),
    ({"leak": [-1, 0]}, ValueError, "leaks must lie in 0..2"),
    ({"product_width": 0}, ValueError, "product_width must be an integer >= 1, not 0"),
    ({"membrane_width": None}, TypeError, "membrane_width must be an integer, not None"),
    ({"token_stride": 0}, ValueError, "token_stride must be an integer >= 1, not 0"),
    ({"membranes": 0}, ValueError, "membranes must be an integer >= 1, not 0"),
])
def test_constructor_rejects_bad_parameters(kwargs, error, match):
    params = {"channels": 2, "tokens": 3, "bias": [5, -5], "threshold": [100, 1],
              "leak": [0, 256], "frac_bits": 8, "leak_bits": 8, "acc_width": 8,
              "membrane_width": 20, "product_width": 30}
    params.update(kwargs)
    with pytest.raises(error, match=match):
        SlifNeuronArray(**params)


def test_token_stride_sets_the_membrane_layout():
    """Neuron (token, channel) at token * token_stride + channel: the accelerator's shared array
    keeps per-token membranes for its last (attention) channels only."""
    params = {"channels": 40, "tokens": 16, "bias": [0] * 40, "threshold": [1] * 40,
              "leak": [128] * 40, "frac_bits": 8, "leak_bits": 8, "acc_width": 8,
              "membrane_width": 20, "product_width": 30}
    assert SlifNeuronArray(**params).membrane_data.depth == 16 * 40
    shared = SlifNeuronArray(**params, token_stride=8)
    assert shared.token_stride == 8 and shared.membrane_data.depth == 15 * 8 + 40


def test_membranes_are_shared_by_layers_that_run_one_after_the_other():
    """With `membranes`, updates carry a slot: two layers (channels 0-2 and 3-5, each with its
    own constants) reuse the same three membrane words one after the other and each still
    follows neuron_step exactly; `first` makes the second layer ignore the first one's state."""
    rng = np.random.default_rng(7)
    bias = rng.integers(-300, 300, size=6)
    threshold = rng.integers(1, 400, size=6)
    leak = rng.integers(0, 257, size=6)
    dut = SlifNeuronArray(6, 1, bias, threshold, leak, 4, 8, acc_width=8, membrane_width=20,
                          product_width=32, membranes=3)
    assert dut.membrane_data.depth == 3 and "slot" in dut.update_layout.members
    steps = 4
    layers = [(0, rng.integers(-128, 128, size=(steps, 3))),
              (3, rng.integers(-128, 128, size=(steps, 3)))]
    expected = []
    for base, accs in layers:
        v = np.zeros(3, dtype=np.int64)
        for acc in accs:
            s, v, *_ = neuron_step(v, acc, bias[base:base + 3], threshold[base:base + 3],
                                   leak[base:base + 3], 4, 8)
            expected += [(base + c, int(s[c])) for c in range(3)]
    got = []

    async def producer(ctx):
        for base, accs in layers:
            for t, acc in enumerate(accs):
                await stream_put_all(ctx, dut.i, [
                    {"token": 0, "channel": base + c, "slot": c, "acc": int(acc[c]),
                     "first": int(t == 0)} for c in range(3)])

    async def consumer(ctx):
        out = await stream_get_all(ctx, dut.o, len(expected))
        got.extend((int(p.channel), int(p.spike)) for p in out)

    simulate(dut, producer, consumer)
    assert got == expected


def test_without_hazard_check_sequential_order_is_exact():
    """hazard_check=False (the accelerator's array): in the sequencer's order (channel by
    channel, > 2 channels) no neuron comes back within two updates, so the results are exact
    and updates are taken every cycle, whatever the payload."""
    rng = np.random.default_rng(3)
    channels, tokens, steps = 4, 2, 3
    bias = rng.integers(-200, 200, size=channels)
    threshold = rng.integers(1, 300, size=channels)
    leak = rng.integers(0, 257, size=channels)
    dut = SlifNeuronArray(channels, tokens, bias, threshold, leak, 4, 8, acc_width=8,
                          membrane_width=20, product_width=32, hazard_check=False)
    accs = rng.integers(-128, 128, size=(steps, tokens, channels))
    expected = []
    v = np.zeros((tokens, channels), dtype=np.int64)
    for t in range(steps):
        s, v, *_ = neuron_step(v, accs[t], bias, threshold, leak, 4, 8)
        expected += [(n, c, int(s[n, c])) for n in range(tokens) for c in range(channels)]
    got = []

    async def producer(ctx):
        for t in range(steps):
            await stream_put_all(ctx, dut.i, [
                {"token": n, "channel": c, "acc": int(accs[t, n, c]), "first": int(t == 0)}
                for n in range(tokens) for c in range(channels)])

    async def consumer(ctx):
        out = await stream_get_all(ctx, dut.o, len(expected))
        got.extend((int(p.token), int(p.channel), int(p.spike)) for p in out)

    simulate(dut, producer, consumer)
    assert got == expected


# ---- parallel lanes: one transfer per group of P channels -----------------------------------

def run_lanes(dut, case, stall_seed=None):
    """Send every step group by group (``case["group_orders"]``: (token, group) per step),
    waiting for an inference's last output; return per step {(token, channel): spike} and, after
    each inference, the membranes (token, channel) read from the RAM words."""
    P, groups, tokens = dut.lanes, dut.groups, dut.tokens
    stalls = None if stall_seed is None else random.Random(stall_seed)
    idle = None if stalls is None else (lambda: stalls.choice([0, 0, 0, 1, 2]))
    steps = [(k, t, accs[t]) for k, accs in enumerate(case["inferences"])
             for t in range(len(accs))]
    last_of_inference = [n == len(steps) - 1 or steps[n + 1][0] != k
                         for n, (k, _, _) in enumerate(steps)]
    done, outputs, membranes = [], [], {}

    def acc_of(acc, tok, g):
        return [int(acc[tok, g * P + p]) if g * P + p < dut.channels else 0 for p in range(P)]

    async def producer(ctx):
        for n, (k, t, acc) in enumerate(steps):
            if n and last_of_inference[n - 1]:
                while len(done) < n:
                    await ctx.tick()
            await stream_put_all(ctx, dut.i, [
                {"token": tok, "group": g, "acc": acc_of(acc, tok, g), "first": int(t == 0)}
                for tok, g in case["group_orders"][n]], idle)

    async def consumer(ctx):
        for n in range(len(steps)):
            out = await stream_get_all(ctx, dut.o, tokens * groups, idle)
            outputs.append([(int(o.token), int(o.group), int(o.spike)) for o in out])
            if last_of_inference[n]:
                words = [ctx.get(dut.membrane_data[tok * (dut.token_stride // P) + g])
                         for tok in range(tokens) for g in range(groups)]
                membranes[n] = np.array([[int(words[tok * groups + c // P][c % P])
                                          for c in range(dut.channels)] for tok in range(tokens)])
            done.append(n)

    simulate(dut, producer, consumer)
    return outputs, membranes


def check_lanes(dut, case, outputs, membranes):
    P = dut.lanes
    spikes, golden_membranes = golden(case)
    for n, (order, out) in enumerate(zip(case["group_orders"], outputs)):
        assert [(tok, g) for tok, g, _ in out] == [tuple(map(int, o)) for o in order]
        for tok, g, bits in out:
            want = sum(int(spikes[n][tok, g * P + p]) << p for p in range(P)
                       if g * P + p < dut.channels)
            assert bits == want, f"spikes of step {n}, token {tok}, group {g}"
    for n, membrane in membranes.items():
        assert membrane.tolist() == golden_membranes[n].tolist(), f"membranes after step {n}"


@st.composite
def lane_cases(draw):
    case = draw(neuron_cases().filter(lambda c: c["channels"] >= 2))
    lanes = draw(st.integers(2, min(4, case["channels"])) | st.just(case["channels"]))
    groups = -(-case["channels"] // lanes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    order = [(tok, g) for tok in range(case["tokens"]) for g in range(groups)]
    shuffle = draw(st.booleans())
    case["lanes"] = lanes
    case["group_orders"] = [[order[i] for i in rng.permutation(len(order))] if shuffle else order
                            for _ in case["orders"]]
    return case


def build_lanes(case, **kwargs):
    widths = neuron_widths(*case["acc_range"], case["bias"], case["threshold"],
                           case["frac_bits"], case["leak_bits"])
    return SlifNeuronArray(case["channels"], case["tokens"], case["bias"], case["threshold"],
                           case["leak"], case["frac_bits"], case["leak_bits"], *widths,
                           lanes=case["lanes"], **kwargs)


@settings(SETTINGS, max_examples=30)
@given(lane_cases(), st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_lanes_match_golden(case, stall_seed):
    """P lanes: every channel's spikes and membranes equal neuron_step's, in any group order,
    with or without back-pressure; a missing channel of the last group never fires."""
    dut = build_lanes(case)
    outputs, membranes = run_lanes(dut, case, stall_seed)
    check_lanes(dut, case, outputs, membranes)


def test_lanes_take_one_group_per_cycle():
    """n group transfers take n + 4 cycles: P channels per cycle."""
    case = fixed_case(channels=10, tokens=3, steps=2, seed=5)
    case["lanes"] = 4
    case["group_orders"] = [[(tok, g) for tok in range(3) for g in range(3)]] * 2
    dut = build_lanes(case)
    clock, marks = CycleClock(), {}

    async def producer(ctx):
        for t, acc in enumerate(case["inferences"][0]):
            for tok, g in case["group_orders"][t]:
                await stream_put_all(ctx, dut.i, [{"token": tok, "group": g, "first": int(t == 0),
                                                   "acc": [int(acc[tok, g * 4 + p]) if g * 4 + p < 10
                                                           else 0 for p in range(4)]}])
                marks.setdefault("first", clock.now)

    async def consumer(ctx):
        outputs = []
        for _ in range(2):
            out = await stream_get_all(ctx, dut.o, 9)
            outputs.append([(int(o.token), int(o.group), int(o.spike)) for o in out])
        marks["last"], marks["outputs"] = clock.now, outputs

    simulate(dut, producer, consumer, background=[clock.bench])
    check_lanes(dut, case, marks["outputs"], {})
    assert marks["last"] - marks["first"] + 1 == 2 * 3 * 3 + SlifNeuronArray.LATENCY


def test_lanes_loadable_parameters():
    """With lanes and `loadable`, the bias/threshold table holds one group per word and is
    written through `load` before use; the results are the ROM version's."""
    case = fixed_case(channels=7, tokens=2, steps=3, seed=9)
    case["lanes"] = 3
    case["group_orders"] = [[(tok, g) for tok in range(2) for g in range(3)]] * 3
    dut = build_lanes(case, loadable=True)
    words = dut.parameters_init()
    assert len(words) == 3 and len(words[-1]) == 3 and words[-1][1:] == [{"bias": 0,
                                                                          "threshold": 1}] * 2
    outputs = []

    async def loader(ctx):
        for addr, word in enumerate(words):
            await stream_put_all(ctx, dut.load, [{"addr": addr, "data": word}])

    async def producer(ctx):
        await loader(ctx)
        for t, acc in enumerate(case["inferences"][0]):
            await stream_put_all(ctx, dut.i, [
                {"token": tok, "group": g, "first": int(t == 0),
                 "acc": [int(acc[tok, g * 3 + p]) if g * 3 + p < 7 else 0 for p in range(3)]}
                for tok, g in case["group_orders"][t]])

    async def consumer(ctx):
        for _ in range(3):
            out = await stream_get_all(ctx, dut.o, 6)
            outputs.append([(int(o.token), int(o.group), int(o.spike)) for o in out])

    simulate(dut, producer, consumer)
    check_lanes(dut, case, outputs, {})


@pytest.mark.parametrize("kwargs, match", [
    ({"lanes": 0}, "lanes must be an integer >= 1, not 0"),
    ({"lanes": 5}, "lanes = 5 exceeds the 4 channels"),
    ({"lanes": 2, "token_stride": 5}, "token_stride = 5 must be a multiple of lanes = 2"),
])
def test_lanes_bad_parameters(kwargs, match):
    params = {"channels": 4, "tokens": 3, "bias": [5, -5, 0, 1], "threshold": [100, 1, 3, 4],
              "leak": [0, 256, 3, 4], "frac_bits": 8, "leak_bits": 8, "acc_width": 8,
              "membrane_width": 20, "product_width": 30}
    with pytest.raises(ValueError, match=match):
        SlifNeuronArray(**params, **kwargs)
