"""L1P masks (exact sparsity, fixed through fine-tuning) and DSP factor counts."""

import pytest
import torch

from model.config import Config, ModelConfig, TrainConfig
from model.errors import ConfigError
from model.pruning import choose_ranks, gradual_sparsities, l1p_prune, sparsity, to_low_rank
from model.train import Tensors, train
from model.transformer import SpikingTransformer

CFG = ModelConfig()          # D = 32, 1 block, MLP 128: six matrices, 12288 weights


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return SpikingTransformer(CFG, **kw)


def tiny_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16
    y = torch.randint(0, 10, (n,), generator=g)
    return Tensors(x, y, x[:16], y[:16])


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_layerwise_sparsity_is_exact_per_matrix(target):
    m = model()
    l1p_prune(m, target, "layer")
    for name, mat in m.block_matrices():
        n = mat.mask.numel()
        assert int((mat.mask == 0).sum()) == round(target * n), name
        assert int((mat.linear.weight == 0).sum()) >= round(target * n)


def test_global_sparsity_is_exact_overall_and_keeps_largest():
    m = model()
    original = {n: mat.linear.weight.detach().abs().clone() for n, mat in m.block_matrices()}
    l1p_prune(m, 0.9, "global")
    assert sparsity(m) == pytest.approx(0.9, abs=1 / 12288)
    kept = torch.cat([original[n][mat.mask == 1] for n, mat in m.block_matrices()])
    dropped = torch.cat([original[n][mat.mask == 0] for n, mat in m.block_matrices()])
    assert kept.min() >= dropped.max()      # one threshold over all matrices
    per_matrix = [float((mat.mask == 0).float().mean()) for _, mat in m.block_matrices()]
    assert max(per_matrix) - min(per_matrix) > 0.01   # not just layer-wise in disguise


def test_masks_and_zeros_survive_fine_tuning():
    m = model(neuron="slif")
    l1p_prune(m, 0.9, "layer")
    masks = {n: mat.mask.clone() for n, mat in m.block_matrices()}
    train(m, tiny_data(), TrainConfig(epochs=1, batch_size=16), progress=False)
    for name, mat in m.block_matrices():
        assert torch.equal(mat.mask, masks[name])
        assert torch.all(mat.linear.weight[mat.mask == 0] == 0)
    assert sparsity(m) >= 0.9 - 1e-9


def test_stem_pruning_masks_spike_fed_convs_only():
    """prune.stem: the second stem conv reaches the target too; the pixel-fed first conv never
    has a mask; without it the conv masks stay all ones."""
    m = model()
    l1p_prune(m, 0.9, "layer")
    assert all(bool(conv.mask.all()) for _, conv in m.stem_matrices())
    l1p_prune(m, 0.9, "layer", stem=True)
    names = [name for name, _ in m.stem_matrices()]
    assert names == ["stem1"] and not hasattr(m.stem_convs[0], "mask")
    conv = m.stem_convs[1]
    assert int((conv.mask == 0).sum()) == round(0.9 * conv.mask.numel())
    assert torch.all(conv.weight[conv.mask == 0] == 0)
    assert sparsity(m, stem=True) == pytest.approx(0.9, abs=1e-3)
    counts = m.param_counts()
    assert counts["params"] - counts["nonzero_params"] == \
        sum(round(0.9 * mat.mask.numel()) for _, mat in m.block_matrices()) + \
        round(0.9 * conv.mask.numel())


def test_stem_masks_survive_fine_tuning():
    m = model(neuron="slif")
    l1p_prune(m, 0.9, "layer", stem=True)
    mask = m.stem_convs[1].mask.clone()
    train(m, tiny_data(), TrainConfig(epochs=1, batch_size=16), progress=False)
    assert torch.equal(m.stem_convs[1].mask, mask)
    assert torch.all(m.stem_convs[1].weight[mask == 0] == 0)


def test_gradual_schedule_is_monotone_and_ends_at_target():
    steps = gradual_sparsities(0.9, 5)
    assert steps == sorted(steps) and steps[-1] == pytest.approx(0.9) and steps[0] > 0
    m = model()
    for s in steps:
        before = {n: mat.mask.clone() for n, mat in m.block_matrices()}
        l1p_prune(m, s, "layer")
        for n, mat in m.block_matrices():   # pruned weights never come back
            assert torch.all(mat.mask <= before[n])
    assert sparsity(m) == pytest.approx(0.9, abs=1e-3)


def test_bad_sparsity_is_rejected():
    with pytest.raises(ConfigError):
        l1p_prune(model(), 1.0)


@pytest.mark.parametrize("rank", [1, 4, 8])
def test_dsp_parameter_counts(rank):
    m = to_low_rank(model(), rank=rank)
    d, h = CFG.dim, CFG.dim * CFG.mlp_ratio
    expected = 4 * rank * (d + d) + 2 * rank * (d + h)
    assert m.param_counts()["block_params"] == expected
    for _, mat in m.block_matrices():
        assert mat.a.weight.shape == (mat.out_features, rank)
        assert mat.b.weight.shape == (rank, mat.in_features)


def test_full_rank_factors_reproduce_the_matrix():
    dense = model()
    m = to_low_rank(dense, rank=CFG.dim)
    for (_, a), (_, b) in zip(dense.block_matrices(), m.block_matrices()):
        assert torch.allclose(a.dense_weight(), b.dense_weight(), atol=1e-5)


def test_energy_criterion_keeps_the_requested_energy():
    dense = model()
    ranks = choose_ranks(dense, energy=0.8)
    for name, mat in dense.block_matrices():
        block, mname = name.split(".")
        r = ranks[int(block[5:])][mname]
        s = torch.linalg.svdvals(mat.dense_weight().detach())
        energy = (s[:r] ** 2).sum() / (s ** 2).sum()
        assert energy >= 0.8 - 1e-6
        assert r == 1 or (s[:r - 1] ** 2).sum() / (s ** 2).sum() < 0.8


def test_impossible_rank_is_rejected():
    with pytest.raises(ConfigError, match="rank 40 is impossible"):
        to_low_rank(model(), rank=40)
