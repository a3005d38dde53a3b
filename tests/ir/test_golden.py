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



def _arrays(graph) -> dict:
    """Every integer array of an exported graph, by (node, array)."""
    return {(node.name, a): getattr(node, a) for node in graph.nodes for a in node.ARRAYS}


@pytest.fixture(scope="module")
def biased_variants():
    """{"dense", "l1p", "dsp"} -> quantized sLIF models with ``model.linear_bias`` (the official
    Spikformer's Linear layers): random weights and biases, default BN."""
    from model.config import config_from_dict
    from model.pruning import l1p_prune, to_low_rank
    from model.train import rebuild
    from model.transformer import SpikingTransformer
    config = config_from_dict({"model": {"linear_bias": True}})
    torch.manual_seed(1)
    dense = SpikingTransformer(config.model, "slif")
    with torch.no_grad():
        for n in dense.neurons():
            n.u_th.uniform_(0.3, 1.5)
            n.w_tau.uniform_(-1.5, 1.5)
        for _, mat in dense.block_matrices():
            mat.bias.uniform_(-0.5, 0.5)
    l1p = rebuild(dense)
    l1p_prune(l1p, 0.9)
    dsp = to_low_rank(dense, rank=4)
    return {name: (rebuild(m, weight_bits=8, leak_bits=8).eval(), config)
            for name, m in (("dense", dense), ("l1p", l1p), ("dsp", dsp))}


def _bias_moved_into_norms(model, config):
    """The same model without block-matrix biases, each BatchNorm's shift absorbing gain * c."""
    from model.transformer import SpikingTransformer
    plain = SpikingTransformer(config.model, model.neuron_kind, model.ranks, model.weight_bits,
                               model.leak_bits)
    state = {k: v for k, v in model.state_dict().items()
             if not k.endswith((".linear.bias", ".a.bias"))}
    plain.load_state_dict(state)
    with torch.no_grad():
        for block, plain_block in zip(model.blocks, plain.blocks):
            for name, mat in block.matrices.items():
                norm = plain_block.norms[name]
                norm.bias.add_(norm.weight / torch.sqrt(norm.running_var + norm.eps) * mat.bias)
    return plain.eval()


@pytest.mark.parametrize("variant", ["dense", "l1p", "dsp"])
def test_linear_biases_fold_into_the_neuron_bias(biased_variants, digits, tmp_path, variant):
    """A block matrix's bias c (``model.linear_bias``: the official Spikformer's Linear layers)
    folds with its BatchNorm, BN(W x + c) = gain W x + (gain c + offset): the biased model
    exports, integer for integer, as the unbiased one whose BN shifts absorbed gain c (a
    neuron bias within the float32 rounding of that stored shift), and differently from it
    without that shift; the golden model tracks the biased quantized model
    layer by layer (random weights: rounding is the only difference)."""
    from model.config import config_from_dict
    from model.export import export_model
    model, config = biased_variants[variant]
    plain_config = config_from_dict({"model": {"linear_bias": False}})
    biased = export_model(model, config, digits, tmp_path / "biased")
    moved = export_model(_bias_moved_into_norms(model, plain_config), plain_config, digits,
                         tmp_path / "moved")
    got, want = _arrays(biased), _arrays(moved)
    assert got.keys() == want.keys()
    for key in got:     # the moved shift is stored in float32 (2^-24 of it, relative)
        if key[1] == "bias" and key[0].startswith("block"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1, err_msg=str(key))
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))
    dropped = type(model)(plain_config.model, model.neuron_kind, model.ranks, model.weight_bits,
                          model.leak_bits)
    dropped.load_state_dict({k: v for k, v in model.state_dict().items()
                             if not k.endswith((".linear.bias", ".a.bias"))})
    without = _arrays(export_model(dropped.eval(), plain_config, digits, tmp_path / "without"))
    differ = [key for key in got if key[1] == "bias" and key[0].startswith("block0.")
              and key in without and (got[key].shape != without[key].shape or   # other
                                       np.abs(got[key] - without[key]).max() > 1)]  # silent
    assert len(differ) >= 5, differ
    r = compare_with_model(model, biased, digits.x_test[:60], digits.y_test[:60],
                           digits.input_scale)
    for name, agree in r["layer_spike_agreement"].items():
        assert agree >= 0.99, name
    assert r["agreement"] >= 0.95


def test_rank_factoring_keeps_the_linear_bias():
    """DSP's A B keeps the dense matrix's bias c (on A): y = A (B x) + c."""
    from model.config import config_from_dict
    from model.pruning import to_low_rank
    from model.transformer import SpikingTransformer
    torch.manual_seed(2)
    dense = SpikingTransformer(config_from_dict({"model": {"linear_bias": True}}).model, "slif")
    factored = to_low_rank(dense, rank=4)
    for (name, old), (_, new) in zip(dense.block_matrices(), factored.block_matrices()):
        assert new.low_rank and torch.equal(new.bias, old.bias), name


@pytest.mark.parametrize("size", [2, 4, 8])
def test_pool3x3s2_is_torchs_maxpool_3_2_1(size):
    """The official SPS's MaxPool2d(3, 2, 1) on spikes: a 3x3 OR of stride 2 whose padding never
    fires, on NumPy and torch alike."""
    rng = np.random.default_rng(size)
    s = rng.integers(0, 2, (2, 3, size, size))
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(s).double(), 3, 2, 1).numpy()
    np.testing.assert_array_equal(intops.pool3x3s2_or(s), ref.astype(np.int64))
    np.testing.assert_array_equal(intops.pool_or(torch.from_numpy(s), 3).numpy(), ref)
    lone = np.zeros((1, 4, 4), dtype=np.int64)
    lone[0, 1, 1] = 1           # an odd position reaches four outputs, an even one one
    np.testing.assert_array_equal(intops.pool3x3s2_or(lone), [[[1, 1], [1, 1]]])
    lone[0, 1, 1], lone[0, 2, 2] = 0, 1
    np.testing.assert_array_equal(intops.pool3x3s2_or(lone), [[[0, 0], [0, 1]]])


def test_golden_tracks_a_model_with_the_official_pooling(digits, tmp_path):
    """``model.stem_pool_kernel = 3``: the float model pools with MaxPool2d(3, 2, 1), the export
    writes ``pool_kernel`` 3 on the pooled convs (only there), the artifact reloads with it, and
    the golden model tracks the quantized model layer by layer."""
    from model.config import config_from_dict
    from model.export import export_model
    from model.ir import load_artifact
    from model.train import rebuild
    from model.transformer import SpikingTransformer
    config = config_from_dict({"model": {"stem_pool_kernel": 3, "stem_pool": [True, True],
                                         "stem_channels": [16, 32]}})
    torch.manual_seed(3)
    model = SpikingTransformer(config.model, "slif")
    with torch.no_grad():
        for n in model.neurons():
            n.u_th.uniform_(0.3, 1.5)
    model = rebuild(model, weight_bits=8, leak_bits=8).eval()
    graph = export_model(model, config, digits, tmp_path / "pool3")
    convs = [n for n in graph.nodes if n.op == "conv"]
    assert [(n.pool, n.pool_kernel) for n in convs] == [(True, 3), (True, 3)]
    assert load_artifact(tmp_path / "pool3.json").node("stem1").pool_kernel == 3
    r = compare_with_model(model, graph, digits.x_test[:60], digits.y_test[:60],
                           digits.input_scale)
    assert {"stem0", "stem1"} <= set(r["layer_spike_agreement"])
    for name, agree in r["layer_spike_agreement"].items():
        assert agree >= 0.99, name
    assert r["agreement"] >= 0.95
    two = config_from_dict({"model": {"stem_pool": [True, True], "stem_channels": [16, 32]}})
    plain = export_model(rebuild(model).eval(), two, digits, tmp_path / "pool2")
    assert all(n.pool_kernel == 2 for n in plain.nodes if n.op == "conv")
    import json
    nodes = json.loads((tmp_path / "pool2.json").read_text())["nodes"]
    assert not any("pool_kernel" in n for n in nodes)      # the default is not written
