"""`stforge import-spikformer`: synthetic checkpoints laid out as the official Spikformer's
training code (ZK-Zhou/spikformer) saves them, read into stforge's model."""

import re

import pytest
import torch

from model.errors import StforgeError
from model.flows.cli import main
from model.official import import_spikformer

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def official_state(arch: str, dim: int, depth: int, classes: int, in_channels: int,
                   hidden: int, seed: int = 0) -> dict:
    """A state_dict with the official models' keys and shapes (their SPS, SSA, MLP and head
    modules, written out here from the published architecture), random values."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    def bn(prefix, c):
        return {f"{prefix}.weight": 1 + rand(c).abs(), f"{prefix}.bias": rand(c),
                f"{prefix}.running_mean": rand(c), f"{prefix}.running_var": 1 + rand(c).abs(),
                f"{prefix}.num_batches_tracked": torch.tensor(100)}

    state = {}
    chans = [in_channels, dim // 8, dim // 4, dim // 2, dim]
    for i, suffix in enumerate(("", "1", "2", "3")):
        state[f"patch_embed.proj_conv{suffix}.weight"] = rand(chans[i + 1], chans[i], 3, 3)
        state.update(bn(f"patch_embed.proj_bn{suffix}", chans[i + 1]))
    state["patch_embed.rpe_conv.weight"] = rand(dim, dim, 3, 3)
    state.update(bn("patch_embed.rpe_bn", dim))
    conv = arch != "cifar10"
    one = (1, 1) if arch == "imagenet" else (1,)
    for b in range(depth):
        p = f"block.{b}."
        state[p + "norm1.weight"], state[p + "norm1.bias"] = torch.ones(dim), torch.zeros(dim)
        state[p + "norm2.weight"], state[p + "norm2.bias"] = torch.ones(dim), torch.zeros(dim)
        for name, (i, o) in {"q": (dim, dim), "k": (dim, dim), "v": (dim, dim),
                             "proj": (dim, dim)}.items():
            if conv:            # cifar10dvs, imagenet: Conv1d(dim, dim, 1), q/k/v bias=False
                state[p + f"attn.{name}_conv.weight"] = rand(o, i, *one[:1])
                if name == "proj":
                    state[p + "attn.proj_conv.bias"] = rand(o)
            else:
                state[p + f"attn.{name}_linear.weight"] = rand(o, i)
                state[p + f"attn.{name}_linear.bias"] = rand(o)
            state.update(bn(p + f"attn.{name}_bn", o))
        for name, (i, o) in {"fc1": (dim, hidden), "fc2": (hidden, dim)}.items():
            if conv:            # imagenet's MLP: Conv2d(., ., 1)
                state[p + f"mlp.{name}_conv.weight"] = rand(o, i, *one)
                state[p + f"mlp.{name}_conv.bias"] = rand(o)
            else:
                state[p + f"mlp.{name}_linear.weight"] = rand(o, i)
                state[p + f"mlp.{name}_linear.bias"] = rand(o)
            state.update(bn(p + f"mlp.{name}_bn", o))
    state["head.weight"], state["head.bias"] = rand(classes, dim), rand(classes)
    if arch == "cifar10dvs":    # unused by its forward: a final LayerNorm, a position embedding
        state["norm.weight"], state["norm.bias"] = torch.ones(dim), torch.zeros(dim)
        state["pos_embed"] = torch.zeros(1, 64, dim)
    return state


@pytest.mark.parametrize("arch, dim, depth, classes, in_channels", [
    ("cifar10", 64, 2, 10, 3), ("cifar10dvs", 32, 1, 10, 2), ("imagenet", 32, 1, 7, 3)])
def test_every_official_tensor_lands_in_its_place(arch, dim, depth, classes, in_channels,
                                                  tmp_path):
    state = official_state(arch, dim, depth, classes, in_channels, 4 * dim)
    path = tmp_path / "official.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model, config = import_spikformer(path, arch, image_size=32, timesteps=2, heads=4)
    m = config.model
    assert (m.dim, m.depth, m.num_classes, m.in_channels, m.mlp_ratio) == \
        (dim, depth, classes, in_channels, 4)
    assert m.stem_channels == [dim // 8, dim // 4, dim // 2, dim] and m.stem_pool_kernel == 3
    assert m.stem_pool == ([False, False, True, True] if arch == "cifar10" else [True] * 4)
    assert m.rpe and m.linear_bias and m.detach_reset and m.surrogate == "sigmoid"
    assert m.attn_scale == (0.25 if arch == "cifar10dvs" else 0.125)
    kind = "linear" if arch == "cifar10" else "conv"
    stem = [(model.stem_convs[i], model.stem_norms[i], s) for i, s in enumerate(("", "1", "2",
                                                                                 "3"))]
    for conv, norm, s in stem:
        assert torch.equal(conv.weight, state[f"patch_embed.proj_conv{s}.weight"])
        for p in BN:
            assert torch.equal(getattr(norm, p), state[f"patch_embed.proj_bn{s}.{p}"])
    assert torch.equal(model.rpe_conv.weight, state["patch_embed.rpe_conv.weight"])
    assert torch.equal(model.rpe_norm.running_var, state["patch_embed.rpe_bn.running_var"])
    names = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.proj",
             "mlp1": "mlp.fc1", "mlp2": "mlp.fc2"}
    for b, block in enumerate(model.blocks):
        for ours, theirs in names.items():
            mat, norm = block.matrices[ours], block.norms[ours]
            w = state[f"block.{b}.{theirs}_{kind}.weight"]
            assert torch.equal(mat.linear.weight, w.reshape(w.shape[:2])), (b, ours)
            bias = state.get(f"block.{b}.{theirs}_{kind}.bias")
            assert torch.equal(mat.bias, torch.zeros(w.shape[0]) if bias is None else bias)
            assert torch.equal(norm.weight, state[f"block.{b}.{theirs}_bn.weight"])
            assert torch.equal(norm.running_mean, state[f"block.{b}.{theirs}_bn.running_mean"])
    assert torch.equal(model.head.weight, state["head.weight"])
    assert torch.equal(model.head.bias, state["head.bias"])
    x = torch.rand(2, in_channels, 32, 32) if arch != "cifar10dvs" else \
        torch.rand(2, m.timesteps, in_channels, 32, 32)
    assert model(x).shape == (2, classes)


def test_the_cli_writes_a_checkpoint_the_pipeline_takes(tmp_path, capsys):
    """import-spikformer -> a stforge checkpoint that loads as the same function, which L1P
    pruning, the sLIF swap and Brevitas quantization take as any stforge model (the CLI stages
    would then want the CIFAR-10 data, which is not on this machine)."""
    from model.pruning import l1p_prune, to_low_rank
    from model.train import load_checkpoint, rebuild
    path, out = tmp_path / "official.pth", tmp_path / "imported.pt"
    torch.save(official_state("cifar10", 64, 1, 10, 3, 256), path)
    assert main(["import-spikformer", str(path), "--arch", "cifar10", "--out", str(out),
                 "--timesteps", "2", "--heads", "4"]) == 0
    assert "Spikformer-1-64 (4 heads, T = 2" in capsys.readouterr().out
    model, config, meta = load_checkpoint(out)
    assert meta["source"] == "official-spikformer" and config.model.timesteps == 2
    direct, _ = import_spikformer(path, "cifar10", timesteps=2, heads=4)
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model.eval()(x), direct(x))
    l1p = rebuild(model, neuron="slif")
    l1p_prune(l1p, 0.9)
    dsp = to_low_rank(model, rank=4)
    for m in (l1p, dsp):
        q = rebuild(m, weight_bits=8, leak_bits=8).eval()
        assert q(x).shape == (3, 10)
    assert main(["prune", "--in", str(out), "--out", str(tmp_path / "p.pt"), "--method", "l1p",
                 "--sparsity", "0.9"]) == 2     # no CIFAR-10 here: one line, nothing written
    assert "CIFAR-10 data set must be given as a local path" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("head.weight"), "has no 'head.weight'"),
    (lambda s: s.update({"block.0.attn.extra.weight": torch.zeros(1)}),
     "holds 'block.0.attn.extra.weight', which --arch cifar10 does not have"),
    (lambda s: s.update({"block.0.attn.q_linear.weight": torch.zeros(64, 32)}),
     r"block.0.attn.q_linear.weight is \(64, 32\), stforge's"),
])
def test_a_checkpoint_that_is_not_the_architecture_is_refused(tmp_path, capsys, edit, message):
    state = official_state("cifar10", 64, 1, 10, 3, 256)
    edit(state)
    path, out = tmp_path / "bad.pth", tmp_path / "out.pt"
    torch.save(state, path)
    assert main(["import-spikformer", str(path), "--arch", "cifar10", "--out", str(out),
                 "--heads", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stforge: error:")
    assert re.search(message, err), err
    assert not out.exists()
    torch.save(official_state("cifar10", 64, 1, 10, 3, 256), path)
    with pytest.raises(StforgeError, match="--dim 32 disagrees with the checkpoint's 64"):
        import_spikformer(path, "cifar10", dim=32, heads=4)


def test_the_cifar_class_config_is_the_official_architecture():
    """configs/cifar10.toml is the official CIFAR-10 Spikformer's shape at D = 128, 2 blocks,
    8 heads (as `import-spikformer --arch cifar10` would configure it), and its model runs on a
    32x32x3 batch: 64 tokens of 128 channels."""
    from model.config import load_config
    from model.official import official_config
    from model.transformer import SpikingTransformer
    config = load_config("configs/cifar10.toml")
    m = config.model
    official = official_config("cifar10", dim=128, depth=2, classes=10, in_channels=3,
                               mlp_ratio=4, heads=8).model
    assert m == official
    assert (config.data.name, m.tokens, config.prune.sparsity, config.quant.weight_bits,
            config.pipeline.deploy_method) == ("cifar10", 64, 0.9, 8, "l1p")
    model = SpikingTransformer(m, "slif").eval()
    trace = {}
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32), trace).shape == (2, 10)
    assert trace["stem3"].shape[-3:] == (128, 8, 8)


def test_a_wider_convolution_is_refused_not_reshaped(tmp_path):
    """Only 1x1 convolutions become matrices: a kernel-3 Conv1d in a 1x1 place is refused."""
    state = official_state("cifar10dvs", 32, 1, 10, 2, 128)
    state["block.0.attn.q_conv.weight"] = torch.zeros(32, 32, 3)
    path = tmp_path / "dvs.pth"
    torch.save(state, path)
    with pytest.raises(StforgeError, match=r"block.0.attn.q_conv.weight is \(32, 32, 3\)"):
        import_spikformer(path, "cifar10dvs", heads=4)
