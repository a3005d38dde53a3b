"""The integer golden model: hand traces, declared widths under saturation, agreement with the
quantized PyTorch model."""

import numpy as np
import pytest
import torch

from model.errors import ArtifactError
from model.export import compare_with_model
from model.ir import intops
from model.ir.golden import run_golden


def test_neuron_step_hand_trace():
    # F = 2, K = 2: x = 4 I + bias. leak 2 (k = 1/2). threshold 7.
    v = np.zeros(1, dtype=np.int64)
    spikes = []
    for acc in (1, 1, 1, 3):
        s, v, h, x, p = intops.neuron_step(v, np.array([acc]), np.array([1]), np.array([7]),
                                           np.array([2]), 2, 2)
        spikes.append(int(s[0]))
    # x = 5: H = 0 + (2*5)>>2 = 2; H = 2 + (2*3)>>2 = 3; H = 3 + (2*2)>>2 = 4;
    # x = 13: H = 4 + (2*9)>>2 = 8 >= 7 -> spike, reset.
    assert spikes == [0, 0, 0, 1] and int(v[0]) == 0


def test_neuron_step_floors_negative_products():
    # x - V = -3, leak 1, K = 1: (1 * -3) >> 1 = -2 (floor), not -1 (truncation).
    s, v, h, x, p = intops.neuron_step(np.array([0]), np.array([-3]), np.array([0]),
                                       np.array([100]), np.array([1]), 0, 1)
    assert int(h[0]) == -2


def test_numpy_and_torch_agree_on_every_op():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (2, 3, 6, 6))
    w = rng.integers(-127, 128, (4, 3, 3, 3))
    np.testing.assert_array_equal(intops.conv3x3(x, w),
                                  intops.conv3x3(torch.from_numpy(x), torch.from_numpy(w)).numpy())
    q, k, v = (rng.integers(0, 2, (2, 5, 8)) for _ in range(3))
    ref = intops.attention_counts(q, k, v, 2)
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        np.testing.assert_array_equal(ref[..., sl], (q[..., sl] @ k[..., sl].mT) @ v[..., sl])
    got = intops.attention_counts(*(torch.from_numpy(a) for a in (q, k, v)), 2).numpy()
    np.testing.assert_array_equal(ref, got)


def test_conv_matches_torch_float_conv():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 17, (1, 1, 8, 8))
    w = rng.integers(-127, 128, (3, 1, 3, 3))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                     padding=1)
    np.testing.assert_array_equal(intops.conv3x3(x, w), ref.numpy().astype(np.int64))


def test_pool_is_or():
    s = np.array([[[0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]])
    np.testing.assert_array_equal(intops.pool2x2_or(s), [[[0, 1], [1, 0]]])


@pytest.mark.parametrize("variant", ["dense", "l1p", "dsp"])
def test_saturated_activity_stays_within_declared_widths(exported, digits, variant):
    full = np.full((1, 1, 8, 8), digits.input_max)
    run_golden(exported[variant], full, saturate=True)   # raises if any width is exceeded


def test_width_check_is_not_blind(exported):
    import dataclasses
    a = exported["l1p"]
    node = a.node("block0.mlp1")
    shrunk = dataclasses.replace(node, widths={**node.widths, "acc": 3})
    # bypasses the graph's checks: only the run's own width checks stand in the way
    object.__setattr__(a, "nodes", tuple(shrunk if n is node else n for n in a.nodes))
    try:
        with pytest.raises(ArtifactError, match=r"block0\.mlp1: acc reached"):
            run_golden(a, np.full((1, 1, 8, 8), 16), saturate=True)
    finally:
        object.__setattr__(a, "nodes", tuple(node if n is shrunk else n for n in a.nodes))


@pytest.mark.parametrize("variant", ["dense", "l1p", "dsp"])
def test_golden_tracks_quantized_model_per_layer(quantized_variants, exported, digits, variant):
    model, _ = quantized_variants[variant]
    r = compare_with_model(model, exported[variant], digits.x_test[:60],
                           digits.y_test[:60], digits.input_scale)
    assert set(r["layer_spike_agreement"]) >= {"stem0", "stem1", "block0.q", "block0.attn",
                                                "block0.mlp2"}
    # Untrained weights, default BN: rounding of bias/threshold is the only difference.
    for name, agree in r["layer_spike_agreement"].items():
        assert agree >= 0.99, name
    assert r["agreement"] >= 0.95


def test_a_row_without_weights_gets_a_precise_scale():
    """A fully pruned row: x = b whatever its scale, so the export resolves b and u_th to
    2^-DEAD_ROW_BITS of the larger one instead of 2^-F of one unit (such bias-driven neurons
    sit next to their threshold, and a coarse grid moved their spikes by a step)."""
    from model.export import DEAD_ROW_BITS, _Builder

    class Neuron:
        def threshold(self):
            return torch.tensor([0.343, 0.5])

        def leak(self):
            return torch.tensor([0.5, 0.5])

    bld = _Builder(frac_bits=8, leak_bits=8)
    w = np.array([[0, 0, 0], [3, 0, -2]])
    w, a = bld.orient(w, np.array([0.01, -0.02]))
    assert list(a) == [0.0, 0.02] and list(w[1]) == [-3, 0, 2]
    node = {"name": "n"}
    bld.neuron(node, Neuron(), a, np.array([0.359, 0.1]))
    bias, threshold = bld.arrays[node["bias"]], bld.arrays[node["threshold"]]
    assert bias[0] == 1 << DEAD_ROW_BITS
    assert threshold[0] == int(np.ceil(0.343 / 0.359 * (1 << DEAD_ROW_BITS) - 1e-9))
    assert bias[1] == round(0.1 / 0.02 * 256) and threshold[1] == int(np.ceil(0.5 / 0.02 * 256))
